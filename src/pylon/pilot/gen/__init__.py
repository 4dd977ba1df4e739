"""Envoy resources per proxy, with Istio's names and shapes; one generator per proxy type.

A generator is a pure function of (proxy, snapshot) returning Envoy v3 resources
as proto-JSON dicts keyed by type URL and resource name. Gateways (`router~…`)
are served by `gateway.GatewayGenerator`, sidecars (`sidecar~…`) by
`sidecar.SidecarGenerator` (virtualOutbound/virtualInbound); both share
`routes`, `clusters` and `endpoints`.
"""

from __future__ import annotations

from typing import Protocol

from pylon.pilot.gen.accesslog import add_access_logs
from pylon.pilot.gen.envoyfilter import apply_envoy_filters
from pylon.pilot.gen.gateway import GatewayGenerator
from pylon.pilot.gen.sidecar import SidecarGenerator
from pylon.pilot.gen.types import Resources
from pylon.pilot.proxy import Proxy
from pylon.pilot.snapshot import Snapshot


class Generator(Protocol):
    def generate(self, proxy: Proxy, snapshot: Snapshot) -> Resources:
        """Every resource of every type this proxy should have."""
        ...


class Patched:
    """A generator whose output gets the mesh's access logs (gen/accesslog.py), then the proxy's EnvoyFilter
    patches, istiod's last step (so a patch sees, and may change, the access logs as in Istio)."""

    def __init__(self, inner: Generator) -> None:
        self.inner = inner

    def generate(self, proxy: Proxy, snapshot: Snapshot) -> Resources:
        resources = add_access_logs(self.inner.generate(proxy, snapshot), snapshot.mesh)
        return apply_envoy_filters(proxy, snapshot, resources)


GENERATORS: dict[str, Generator] = {"router": Patched(GatewayGenerator()), "sidecar": Patched(SidecarGenerator())}


def generator_for(proxy: Proxy) -> Generator:
    """The generator for the proxy's type; ValueError naming the type if pylon pilot cannot serve it yet."""
    try:
        return GENERATORS[proxy.type]
    except KeyError:
        raise ValueError(
            f"{proxy.type} proxies are not supported by pylon pilot yet (supported: {', '.join(sorted(GENERATORS))})"
        ) from None
