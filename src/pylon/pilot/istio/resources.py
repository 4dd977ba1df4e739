"""Kubernetes-style envelopes (apiVersion, kind, metadata, spec) around Istio specs.

`decode_resource` turns one parsed YAML document into a `Resource` or raises
`ConfigError` naming the file, the document's position in it, the resource and
the field path, e.g.::

    config error in routes.yaml (document 2, VirtualService default/reviews): spec.http[0].timeout: ...

Kinds and apiVersions are Istio's: networking.istio.io v1, v1beta1 and v1alpha3
for the networking kinds, v1beta1 only for ProxyConfig. Istio kinds pylon pilot does not serve yet are named
as such, so a user knows the difference between a typo and a missing feature.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from pylon.config.errors import ConfigError, join_path, split_validation_error
from pylon.pilot.istio.common import IstioStruct, NonEmptyStr, convert
from pylon.pilot.istio.envoyfilter import EnvoyFilterSpec
from pylon.pilot.istio.networking import (
    DestinationRuleSpec,
    GatewaySpec,
    ServiceEntrySpec,
    VirtualServiceSpec,
    WorkloadGroupSpec,
    WorkloadEntrySpec,
)
from pylon.pilot.istio.proxyconfig_resource import ProxyConfigSpec
from pylon.pilot.istio.security import AuthorizationPolicySpec, PeerAuthenticationSpec
from pylon.pilot.istio.sidecar import SidecarSpec

NETWORKING_VERSIONS = ("networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3")
SECURITY_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")

# kind -> (spec type, accepted apiVersions)
KINDS: dict[str, tuple[type[IstioStruct], tuple[str, ...]]] = {
    "Gateway": (GatewaySpec, NETWORKING_VERSIONS),
    "VirtualService": (VirtualServiceSpec, NETWORKING_VERSIONS),
    "DestinationRule": (DestinationRuleSpec, NETWORKING_VERSIONS),
    "ServiceEntry": (ServiceEntrySpec, NETWORKING_VERSIONS),
    "WorkloadEntry": (WorkloadEntrySpec, NETWORKING_VERSIONS),
    "WorkloadGroup": (WorkloadGroupSpec, NETWORKING_VERSIONS),
    "Sidecar": (SidecarSpec, NETWORKING_VERSIONS),
    "AuthorizationPolicy": (AuthorizationPolicySpec, SECURITY_VERSIONS),
    "PeerAuthentication": (PeerAuthenticationSpec, SECURITY_VERSIONS),
    "EnvoyFilter": (EnvoyFilterSpec, ("networking.istio.io/v1alpha3",)),
    "ProxyConfig": (ProxyConfigSpec, ("networking.istio.io/v1beta1",)),
}

# Istio kinds that exist but are not served yet (issue 13 lists them).
NOT_YET_KINDS = frozenset(
    {"RequestAuthentication", "Telemetry", "WasmPlugin"}
)  # fmt: skip

DEFAULT_NAMESPACE = "default"


class ObjectMeta(IstioStruct, kw_only=True):
    """The metadata Istio reads (name, namespace, labels, annotations) and inert Kubernetes bookkeeping."""

    name: NonEmptyStr
    namespace: NonEmptyStr = DEFAULT_NAMESPACE
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    resource_version: str = ""
    uid: str = ""
    generation: int = 0
    creation_timestamp: str | None = None


class _Envelope(IstioStruct, kw_only=True):
    api_version: NonEmptyStr
    kind: NonEmptyStr
    metadata: ObjectMeta
    spec: Any
    status: Any = None


class Resource(msgspec.Struct, frozen=True, kw_only=True):
    """One decoded Istio resource and where it came from."""

    kind: Literal["Gateway", "VirtualService", "DestinationRule", "ServiceEntry", "WorkloadEntry", "WorkloadGroup",
                  "Sidecar", "AuthorizationPolicy", "PeerAuthentication", "EnvoyFilter", "ProxyConfig"]
    api_version: str
    meta: ObjectMeta
    spec: Any
    source: str

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def namespace(self) -> str:
        return self.meta.namespace

    @property
    def key(self) -> tuple[str, str, str]:
        """(kind, namespace, name): unique across a config source, as in Kubernetes."""
        return (self.kind, self.meta.namespace, self.meta.name)


def describe_source(file: str, index: int, data: Any = None) -> str:
    """`file (document N[, Kind ns/name])`, N counted from 1 as editors and kubectl count."""
    where = f"document {index + 1}"
    if isinstance(data, dict):
        kind, meta = data.get("kind"), data.get("metadata")
        if isinstance(kind, str) and isinstance(meta, dict) and isinstance(meta.get("name"), str):
            where += f", {kind} {meta.get('namespace', DEFAULT_NAMESPACE)}/{meta['name']}"
    return f"{file} ({where})"


def decode_resource(data: Any, file: str, index: int) -> Resource:
    """The Resource in one YAML document (`index` counts from 0 within `file`); ConfigError if invalid."""
    source = describe_source(file, index, data)
    if not isinstance(data, dict):
        raise ConfigError(source, "", f"expected a mapping with apiVersion, kind, metadata and spec, got {type(data).__name__}")
    try:
        envelope = convert(data, _Envelope)
    except msgspec.ValidationError as exc:
        path, message = split_validation_error(exc)
        raise ConfigError(source, path, message) from None
    if envelope.kind not in KINDS:
        if envelope.kind in NOT_YET_KINDS:
            raise ConfigError(source, "kind", f"{envelope.kind} is not supported by pylon pilot yet")
        raise ConfigError(source, "kind", f"unknown kind {envelope.kind!r}; supported: {', '.join(sorted(KINDS))}")
    spec_type, versions = KINDS[envelope.kind]
    if envelope.api_version not in versions:
        raise ConfigError(
            source, "apiVersion", f"{envelope.kind} is not served as {envelope.api_version!r}; use one of {', '.join(versions)}"
        )
    if envelope.spec is None:
        raise ConfigError(source, "spec", "missing required field")
    try:
        spec = convert(envelope.spec, spec_type)
    except msgspec.ValidationError as exc:
        path, message = split_validation_error(exc)
        raise ConfigError(source, join_path("spec", path), message) from None
    return Resource(kind=envelope.kind, api_version=envelope.api_version, meta=envelope.metadata, spec=spec, source=source)
