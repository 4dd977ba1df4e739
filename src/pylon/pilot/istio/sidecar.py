"""networking.istio.io Sidecar: which services a sidecar's proxy may reach (egress hosts `ns/host`).

Field names are istio/api's (`networking/v1alpha3/sidecar.proto`). What the
sidecar generator honours is egress `hosts`, the workloadSelector and the
per-Sidecar outboundTrafficPolicy; bound egress ports, ingress listeners and the
capture modes are `NotImplementedField`s, errors naming the field.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from pylon.config.errors import FieldError
from pylon.pilot.istio.common import IstioStruct, NonEmptyStr, NotImplementedField


class SidecarWorkloadSelector(IstioStruct, kw_only=True):
    labels: dict[str, str] = {}


class IstioEgressListener(IstioStruct, kw_only=True):
    hosts: Annotated[list[NonEmptyStr], msgspec.Meta(min_length=1)]
    port: NotImplementedField | None = None
    bind: NotImplementedField | None = None
    capture_mode: NotImplementedField | None = None

    def __post_init__(self) -> None:
        for i, host in enumerate(self.hosts):
            namespace, slash, name = host.partition("/")
            if not slash or not namespace or not name:
                raise FieldError(f"hosts[{i}]", f"{host!r} must be namespace/dnsName (`*/`, `./` or `~/` for namespaces)")
            if name != "*" and "*" in name[1:]:
                raise FieldError(f"hosts[{i}]", f"{host!r}: a wildcard is only allowed as the first label")


class OutboundTrafficPolicy(IstioStruct, kw_only=True):
    mode: Literal["REGISTRY_ONLY", "ALLOW_ANY"] = "ALLOW_ANY"
    egress_proxy: NotImplementedField | None = None


class SidecarSpec(IstioStruct, kw_only=True):
    workload_selector: SidecarWorkloadSelector | None = None
    egress: list[IstioEgressListener] = []
    ingress: NotImplementedField | None = None
    outbound_traffic_policy: OutboundTrafficPolicy | None = None
    inbound_connection_pool: NotImplementedField | None = None

    def __post_init__(self) -> None:
        if len(self.egress) > 1:
            raise FieldError("egress[1]", "only one egress listener (the catch-all, without port) is supported by pylon pilot yet")
