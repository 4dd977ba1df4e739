"""A sidecar's DNS name table (NDS), as istiod's BuildNameTable makes it: every service in the proxy's scope by
hostname with its addresses, for the agent's DNS proxy on :15053 (agent/dns_table.py answers from it).

The rules are Istio's (pkg/dns/server/name_table.go): a service's addresses are its ServiceEntry `addresses`
that are IPs (CIDRs are left out); a service without any is headless, and then only a NONE-resolution
(passthrough) service with ports is named, by its endpoints' addresses, as Kubernetes DNS names a headless
service's pods; any other service without an address is left out (Istio would auto-allocate one; pylon pilot
does not). A hostname is the one service the sidecar's clusters use for it (Snapshot.visible_services). Every
entry is of the `External` registry: pylon's services are ServiceEntries (on Kubernetes, Services are
`Kubernetes` and the agent adds their short names; the mesh's pods get those through the resolver's search path
instead).
"""

from __future__ import annotations

from pylon.pilot.gen.types import Json
from pylon.pilot.istio.networking import is_ip
from pylon.pilot.snapshot import Service

#: Istio's provider.External, the registry of ServiceEntry services.
EXTERNAL_REGISTRY = "External"


def name_table(services: list[Service]) -> Json:
    """The NameTable (proto-JSON) of `services`, the proxy's scoped services."""
    table: dict[str, Json] = {}
    for service in services:
        if addresses := _addresses(service):
            table[service.hostname] = {"ips": addresses, "registry": EXTERNAL_REGISTRY}
    return {"table": table}


def _addresses(service: Service) -> list[str]:
    spec = service.entry.spec
    if spec.addresses:
        return [address for address in spec.addresses if is_ip(address)]
    if spec.resolution != "NONE" or not service.ports:
        return []
    seen: list[str] = []
    for endpoint in service.endpoints:  # headless: the workloads themselves, each once
        if is_ip(endpoint.address) and endpoint.address not in seen:
            seen.append(endpoint.address)
    return seen
