"""security.istio.io: AuthorizationPolicy and PeerAuthentication (istio/api `security/v1beta1`).

Field names are Istio's. What Istio's validation refuses is refused here,
naming the field: an unknown `when` key, an ipBlock that is not an IP or CIDR,
a port outside 1-65535, CUSTOM policies (ext_authz providers: pylon pilot has
no extension providers yet), `targetRefs` (Gateway API attachment).
"""

from __future__ import annotations

import ipaddress
from typing import Literal

import msgspec

from pylon.config.errors import FieldError
from pylon.pilot.istio.common import IstioStruct, NonEmptyStr, NotImplementedField, camel

# `when` keys Istio accepts and where each applies (the source side: principals; the destination side: permissions).
PRINCIPAL_KEYS = ("source.ip", "remote.ip", "source.namespace", "source.principal", "request.auth.principal",
                  "request.auth.audiences", "request.auth.presenter")  # fmt: skip
PERMISSION_KEYS = ("destination.ip", "destination.port", "connection.sni")
HEADER_KEY = "request.headers"


class PolicySelector(IstioStruct, kw_only=True):
    match_labels: dict[str, str] = {}


def _check_blocks(values: list[str], field: str) -> None:
    for i, value in enumerate(values):
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise FieldError(f"{field}[{i}]", f"{value!r} is not an IP address or CIDR block") from None


class Source(IstioStruct, kw_only=True):
    principals: list[NonEmptyStr] = []
    not_principals: list[NonEmptyStr] = []
    request_principals: list[NonEmptyStr] = []
    not_request_principals: list[NonEmptyStr] = []
    namespaces: list[NonEmptyStr] = []
    not_namespaces: list[NonEmptyStr] = []
    ip_blocks: list[NonEmptyStr] = []
    not_ip_blocks: list[NonEmptyStr] = []
    remote_ip_blocks: list[NonEmptyStr] = []
    not_remote_ip_blocks: list[NonEmptyStr] = []
    service_accounts: NotImplementedField | None = None
    not_service_accounts: NotImplementedField | None = None

    def __post_init__(self) -> None:
        for field in ("ip_blocks", "not_ip_blocks", "remote_ip_blocks", "not_remote_ip_blocks"):
            _check_blocks(getattr(self, field), camel(field))


class Operation(IstioStruct, kw_only=True):
    hosts: list[NonEmptyStr] = []
    not_hosts: list[NonEmptyStr] = []
    ports: list[NonEmptyStr] = []
    not_ports: list[NonEmptyStr] = []
    methods: list[NonEmptyStr] = []
    not_methods: list[NonEmptyStr] = []
    paths: list[NonEmptyStr] = []
    not_paths: list[NonEmptyStr] = []

    def __post_init__(self) -> None:
        for field in ("ports", "not_ports"):
            for i, port in enumerate(getattr(self, field)):
                if not port.isdigit() or not 1 <= int(port) <= 65535:
                    raise FieldError(f"{camel(field)}[{i}]", f"{port!r} is not a port number (1-65535)")
        for field in ("paths", "not_paths"):
            for i, path in enumerate(getattr(self, field)):
                if "{" in path:
                    raise FieldError(f"{camel(field)}[{i}]", "path templates ({*}, {**}) are not supported by pylon pilot yet")


class RuleFrom(IstioStruct, kw_only=True):
    source: Source


class RuleTo(IstioStruct, kw_only=True):
    operation: Operation


class Condition(IstioStruct, kw_only=True):
    key: NonEmptyStr
    values: list[NonEmptyStr] = []
    not_values: list[NonEmptyStr] = []

    def __post_init__(self) -> None:
        if not self.values and not self.not_values:
            raise ValueError("at least one of values or notValues must be set")
        if self.key.startswith(HEADER_KEY):
            name = self.key[len(HEADER_KEY):]
            if not (name.startswith("[") and name.endswith("]") and len(name) > 2):
                raise FieldError("key", f"{self.key!r}: expected request.headers[<header name>]")
        elif self.key not in PRINCIPAL_KEYS + PERMISSION_KEYS:
            raise FieldError("key", f"unknown or unsupported key {self.key!r}; supported: request.headers[...], "
                                    f"{', '.join(PRINCIPAL_KEYS + PERMISSION_KEYS)}")  # fmt: skip
        if self.key == "destination.port":
            for i, port in enumerate(self.values + self.not_values):
                if not port.isdigit() or not 1 <= int(port) <= 65535:
                    raise FieldError(f"values[{i}]", f"{port!r} is not a port number (1-65535)")
        if self.key in ("source.ip", "remote.ip", "destination.ip"):
            _check_blocks(self.values, "values")
            _check_blocks(self.not_values, "notValues")


class Rule(IstioStruct, kw_only=True):
    from_: list[RuleFrom] = msgspec.field(default_factory=list, name="from")
    to: list[RuleTo] = []
    when: list[Condition] = []


class ExtensionProvider(IstioStruct, kw_only=True):
    name: NonEmptyStr


class AuthorizationPolicySpec(IstioStruct, kw_only=True):
    selector: PolicySelector | None = None
    target_ref: NotImplementedField | None = None
    target_refs: NotImplementedField | None = None
    rules: list[Rule] = []
    action: Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"] = "ALLOW"
    provider: ExtensionProvider | None = None  # decoded so that CUSTOM, not provider, is the error

    def __post_init__(self) -> None:
        if self.action == "CUSTOM":
            raise FieldError("action", "CUSTOM (an ext_authz extension provider) is not supported by pylon pilot yet")
        if self.provider is not None:
            raise FieldError("provider", "only used with action CUSTOM")


MtlsMode = Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]


class MutualTls(IstioStruct, kw_only=True):
    mode: MtlsMode = "UNSET"


class PeerAuthenticationSpec(IstioStruct, kw_only=True):
    selector: PolicySelector | None = None
    mtls: MutualTls | None = None
    port_level_mtls: dict[str, MutualTls] = {}

    def __post_init__(self) -> None:
        for port in self.port_level_mtls:
            if not port.isdigit() or not 1 <= int(port) <= 65535:
                raise FieldError(f"portLevelMtls.{port}", "not a port number (1-65535)")
        if self.port_level_mtls and self.selector is None:
            # Istio's validation: port-level settings need a workload whose ports they name
            raise FieldError("portLevelMtls", "requires a selector (port-level mTLS applies to one workload's ports)")

