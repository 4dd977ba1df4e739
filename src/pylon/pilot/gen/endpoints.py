"""ClusterLoadAssignments (EDS) for outbound clusters: a service's endpoints, narrowed to a subset's labels.

As istiod writes them: endpoints grouped by locality ("region/zone/subzone"),
each with its weight (0 means 1) and HEALTHY status, each locality weighted by
the sum of its endpoints' weights.
"""

from __future__ import annotations

from pylon.pilot.gen.mtls import endpoint_metadata
from pylon.pilot.gen.names import sni_dnat_key, subset_key
from pylon.pilot.gen.types import Json
from pylon.pilot.istio.networking import DestinationRuleSpec, ServicePort
from pylon.pilot.istio.resources import Resource
from pylon.pilot.snapshot import Endpoint, Service, Snapshot


def outbound_assignments(snapshot: Snapshot, service: Service, rule: Resource | None,
                         sni_dnat: bool = False) -> list[Json]:  # fmt: skip
    """`build_load_assignments` of the service under its DestinationRule, built once for every proxy and snapshot
    with the same service and rule objects (shared: not to be changed; pieces.py). An endpoint change makes a new
    Service, so only the changed service's assignments are built again."""
    return snapshot.pieces.get("assignments", (service, rule), (sni_dnat,), lambda: build_load_assignments(
        service, rule.spec if rule is not None else None, sni_dnat))


def build_load_assignments(service: Service, rule: DestinationRuleSpec | None, sni_dnat: bool = False) -> list[Json]:
    """One CLA per EDS cluster `build_clusters` makes for the same service and rule (STATIC resolution only:
    DNS clusters carry their endpoints, NONE has none); `sni_dnat`: for a gateway's SNI-DNAT clusters."""
    if service.entry.spec.resolution != "STATIC":
        return []
    key = sni_dnat_key if sni_dnat else subset_key
    # SNI-DNAT clusters pass TLS through unseen: only mTLS workloads may be reached that way (istiod's
    # EndpointsWithMTLSFilter), so plaintext endpoints are left out.
    endpoints = [ep for ep in service.endpoints if not sni_dnat or endpoint_metadata(ep.labels) is not None]
    out = []
    for port in service.ports:
        if sni_dnat and port.protocol.upper() == "UDP":
            continue
        out.append(assignment(key(service.hostname, port.number), endpoints, port))
        for subset in rule.subsets if rule is not None else []:
            chosen = [ep for ep in endpoints if all(ep.labels.get(k) == v for k, v in subset.labels.items())]
            out.append(assignment(key(service.hostname, port.number, subset.name), chosen, port))
    return out


def assignment(cluster_name: str, endpoints: tuple[Endpoint, ...] | list[Endpoint], port: ServicePort) -> Json:
    """A ClusterLoadAssignment: for EDS, or inline in a DNS cluster."""
    by_locality: dict[str, list[Json]] = {}
    weights: dict[str, int] = {}
    for endpoint in endpoints:
        weight = endpoint.weight or 1
        lb_endpoint: Json = {
            "endpoint": {"address": {"socket_address": {"address": endpoint.address,
                                                        "port_value": endpoint.port_for(port)}}},
            "health_status": "HEALTHY",
            "load_balancing_weight": weight,
        }  # fmt: skip
        metadata = endpoint_metadata(endpoint.labels)
        if metadata is not None:
            lb_endpoint["metadata"] = metadata  # auto mTLS picks the TLS transport socket by it
        by_locality.setdefault(endpoint.locality, []).append(lb_endpoint)
        weights[endpoint.locality] = weights.get(endpoint.locality, 0) + weight
    groups = []
    for locality, lb_endpoints in by_locality.items():
        group: Json = {"lb_endpoints": lb_endpoints, "load_balancing_weight": weights[locality]}
        if locality:
            region, zone, sub_zone = (locality.split("/") + ["", "", ""])[:3]
            group["locality"] = {"region": region, "zone": zone, "sub_zone": sub_zone}
        groups.append(group)
    return {"cluster_name": cluster_name, "endpoints": groups}
