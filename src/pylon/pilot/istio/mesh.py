"""Istio's MeshConfig (`mesh/v1alpha1/config.proto`), read from the `--mesh-config` YAML file.

Only the fields pylon pilot acts on decode; MeshConfig fields Istio has that are
not implemented yet are named as such, anything else is an unknown field, so a
mesh setting is never silently ignored. Defaults are istiod's
(`pkg/config/mesh/mesh.go` DefaultMeshConfig), and the checks are those of its
`ValidateMeshConfig` (trust domains, connectTimeout) plus, where Istio would
log and carry on (an accessLogFormat that is not JSON under JSON encoding), an
error: a mesh that asked for a format must not silently log another.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from pylon.config.errors import FieldError
from pylon.pilot.istio.common import GoDuration, IstioStruct, NotImplementedField, camel, load_struct_file
from pylon.pilot.istio.proxyconfig import ProxyConfig

# Istio's ValidateTrustDomain: dot-separated DNS-1123 labels, an optional trailing dot.
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_TRUST_DOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*\.?")
Namespace = Annotated[str, msgspec.Meta(pattern=f"^{_DNS_LABEL}$")]
CONNECT_TIMEOUT_RANGE = (0.001, 3600.0)  # Istio's connectTimeoutMin / connectTimeoutMax


class MeshOutboundTrafficPolicy(IstioStruct, kw_only=True):
    """MeshConfig's outbound policy: ALLOW_ANY unless set (istiod's default mesh), no egress proxy (a Sidecar's)."""

    mode: Literal["REGISTRY_ONLY", "ALLOW_ANY"] = "ALLOW_ANY"


class MeshConfig(IstioStruct, kw_only=True):
    outbound_traffic_policy: MeshOutboundTrafficPolicy = MeshOutboundTrafficPolicy()
    default_config: ProxyConfig = ProxyConfig()
    trust_domain: str = "cluster.local"
    trust_domain_aliases: list[str] = []
    access_log_file: str = ""
    access_log_encoding: Literal["TEXT", "JSON"] = "TEXT"
    access_log_format: str = ""
    enable_auto_mtls: bool = True
    root_namespace: Namespace = "istio-system"
    connect_timeout: GoDuration = GoDuration(10.0)
    default_destination_rule_export_to: list[str] = []
    default_virtual_service_export_to: list[str] = []
    default_service_export_to: list[str] = []
    enable_tracing: NotImplementedField | None = None
    extension_providers: NotImplementedField | None = None
    ca_certificates: NotImplementedField | None = None

    def __post_init__(self) -> None:
        for field, domain in [("trustDomain", self.trust_domain),
                              *((f"trustDomainAliases[{i}]", d) for i, d in enumerate(self.trust_domain_aliases))]:  # fmt: skip
            if not _TRUST_DOMAIN.fullmatch(domain):
                raise FieldError(field, f"trust domain name {domain!r} invalid: expected DNS labels such as example.org")
        low, high = CONNECT_TIMEOUT_RANGE
        millis = self.connect_timeout * 1000
        if not low <= self.connect_timeout <= high or abs(millis - round(millis)) > 1e-6:
            raise FieldError("connectTimeout", "must be between 1ms and 1h, in whole milliseconds")
        for field in ("default_service_export_to", "default_virtual_service_export_to",
                      "default_destination_rule_export_to"):  # fmt: skip
            _check_export_to(camel(field), getattr(self, field))
        if self.access_log_encoding == "JSON" and self.access_log_format:
            json_access_log_format(self.access_log_format)

    @property
    def trust_domains(self) -> tuple[str, ...]:
        """Istio's trust domain bundle: the trust domain, then its aliases (identities treated as the same)."""
        return (self.trust_domain, *self.trust_domain_aliases)


def json_access_log_format(text: str) -> dict[str, Any]:
    """accessLogFormat under JSON encoding: a JSON object whose values hold the command operators."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FieldError("accessLogFormat", f"not valid JSON under accessLogEncoding JSON: {exc}") from None
    if not isinstance(value, dict) or not value:
        raise FieldError("accessLogFormat", "under accessLogEncoding JSON it must be a non-empty JSON object")
    return value


def _check_export_to(name: str, targets: list[str]) -> None:
    """Istio's exportTo values: `*`, `.`, `~` (alone) or a namespace name."""
    for i, target in enumerate(targets):
        if target not in ("*", ".", "~") and not re.fullmatch(_DNS_LABEL, target):
            raise FieldError(f"{name}[{i}]", f"{target!r} is not `*`, `.`, `~` or a namespace name")
    if "~" in targets and len(targets) > 1:
        raise FieldError(name, "`~` (exported nowhere) cannot be combined with other values")


def load_mesh_config(path: Path | None) -> MeshConfig:
    """The MeshConfig in `path` (Istio's defaults without one); ConfigError naming the file and field."""
    return MeshConfig() if path is None else load_struct_file(path, MeshConfig, "MeshConfig")
