"""`pylon pilot validate DIR`, as `istioctl validate` and `istioctl analyze` together, sans-IO.

Schema errors (each naming file, document and field path) make a config that
pilot would refuse to start with: they are errors, exit status 1. References
that resolve to nothing (a VirtualService's gateway, a destination host, a Sidecar's egress proxy, a
subset no DestinationRule defines) are valid config that Istio accepts and then
routes to nowhere (404s, 503s, "no healthy upstream"): they are warnings with
Istio's analyzer code IST0101 (ReferencedResourceNotFound), exit status 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pylon.config.errors import ConfigError
from pylon.pilot.hosts import resolve_short_name
from pylon.pilot.istio.mesh import load_mesh_config
from pylon.pilot.istio.networking import Destination
from pylon.pilot.istio.resources import Resource
from pylon.pilot.snapshot import Snapshot, build_snapshot, gateway_names
from pylon.pilot.source.directory import load_directory

NOT_FOUND = "IST0101"


@dataclass(frozen=True)
class AnalysisWarning:
    code: str
    source: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"Warning [{self.code}] {self.source}: {self.path}: {self.message}"


@dataclass
class Report:
    errors: list[ConfigError]
    warnings: list[AnalysisWarning]


def validate_directory(root: Path, mesh_config: Path | None = None) -> Report:
    """Every schema error, else every dangling-reference warning, for the config below `root`."""
    errors: list[ConfigError] = []
    try:
        mesh = load_mesh_config(mesh_config)
    except ConfigError as exc:
        errors.append(exc)
        mesh = None
    result = load_directory(root)
    errors += result.errors
    if errors:
        return Report(errors=errors, warnings=[])
    try:
        snapshot = build_snapshot(result.resources, version="validate", mesh=mesh)
    except ConfigError as exc:
        return Report(errors=[exc], warnings=[])
    return Report(errors=[], warnings=analyze(snapshot))


def analyze(snapshot: Snapshot) -> list[AnalysisWarning]:
    """Dangling references of every VirtualService as written (delegates too): gateways, delegates, destination
    hosts, subsets (http, tcp and tls routes); and of every Sidecar's egress proxy."""
    known_gateways = {f"{gw.namespace}/{gw.name}" for gw in snapshot.gateways}
    written = [r for r in snapshot.resources if r.kind == "VirtualService"]
    delegates = {(vs.namespace, vs.name) for vs in written if not vs.spec.hosts}
    out: list[AnalysisWarning] = []
    for vs in written:
        for i, name in enumerate(gateway_names(vs)):
            if name != "mesh" and name not in known_gateways:
                out.append(AnalysisWarning(NOT_FOUND, vs.source, f"spec.gateways[{i}]", f"referenced gateway not found: {name!r}"))
        for i, http in enumerate(vs.spec.http):
            if http.delegate is not None:
                key = (http.delegate.namespace or vs.namespace, http.delegate.name)
                if key not in delegates:
                    out.append(AnalysisWarning(NOT_FOUND, vs.source, f"spec.http[{i}].delegate",
                                               f"referenced delegate virtual service not found: {'/'.join(key)!r}"))
            for j, route in enumerate(http.route):
                out += _check_destination(snapshot, vs, route.destination, f"spec.http[{i}].route[{j}].destination")
            if http.mirror is not None:
                out += _check_destination(snapshot, vs, http.mirror, f"spec.http[{i}].mirror")
            for j, mirror in enumerate(http.mirrors):
                out += _check_destination(snapshot, vs, mirror.destination, f"spec.http[{i}].mirrors[{j}].destination")
        for kind, l4_routes in (("tcp", vs.spec.tcp), ("tls", vs.spec.tls)):
            for i, l4 in enumerate(l4_routes):
                for j, route in enumerate(l4.route):
                    out += _check_destination(snapshot, vs, route.destination, f"spec.{kind}[{i}].route[{j}].destination")
    for sidecar in snapshot.sidecars:
        policy = sidecar.spec.outbound_traffic_policy
        if policy is not None and policy.egress_proxy is not None:
            out += _check_destination(snapshot, sidecar, policy.egress_proxy, "spec.outboundTrafficPolicy.egressProxy")
    return out


def _check_destination(snapshot: Snapshot, resource: Resource, destination: Destination,
                       path: str) -> list[AnalysisWarning]:  # fmt: skip
    host = resolve_short_name(destination.host, resource.namespace)
    service = snapshot.service(host, resource.namespace, resource.namespace)
    if service is None:
        return [AnalysisWarning(NOT_FOUND, resource.source, f"{path}.host", f"referenced host not found: {host!r}")]
    if not destination.subset:
        return []
    rule = snapshot.destination_rule(host, resource.namespace, service.namespace)
    if rule is None or all(s.name != destination.subset for s in rule.spec.subsets):
        return [AnalysisWarning(NOT_FOUND, resource.source, f"{path}.subset",
                         f"referenced host+subset in destinationrule not found: {host!r} subset {destination.subset!r}")]
    return []
