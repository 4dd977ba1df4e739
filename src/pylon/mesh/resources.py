"""The Istio resources a workload started by `pylon mesh run` brings with it (sans-IO).

On Kubernetes a Deployment's pods get a Service (a ClusterIP and a name) and endpoints; here each
workload gets the equivalent Istio resources: its service's ServiceEntry `<service>.<ns>.svc.cluster.local`
on the service's VIP (MESH_INTERNAL, resolution STATIC, selecting workloads by `app: <service>`, Istio's
convention) and a WorkloadEntry with its pod IP, labels and service account. Several workloads may back
one service (e.g. `version: v1` and `version: v2`, for DestinationRule subsets). The `security.istio.io/tlsMode: istio` label tells pilot the
workload has a sidecar, so clients' sidecars use mTLS to it (auto mTLS), as Istio's injector labels pods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pylon.mesh.layout import service_host

TLS_MODE_LABEL = "security.istio.io/tlsMode"


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    namespace: str
    service_account: str
    address: str
    vip: str
    ports: tuple[int, ...]
    labels: dict[str, str] = field(default_factory=dict)
    service: str = ""  # the service it backs ("" for a gateway, which has none)
    sidecar: bool = True
    proxy: str = ""  # its sidecar's proxy, pylon or envoy ("": the mesh's default)
    cert_ttl: int = 0  # seconds its certificate lives (Istio's SECRET_TTL; 0: the agent's default, 24 h)
    dns_capture: bool = False  # its sidecar answers its DNS (ISTIO_META_DNS_CAPTURE)

    @property
    def all_labels(self) -> dict[str, str]:
        """The service's `app`, its own labels, and the tlsMode label of a workload with a sidecar (which makes
        clients' sidecars use mTLS to it; without one they send plaintext, as Istio's auto mTLS)."""
        labels = {"app": self.service, **self.labels}
        return {**labels, TLS_MODE_LABEL: "istio"} if self.sidecar else labels


def service_document(spec: WorkloadSpec) -> dict[str, Any]:
    """The ServiceEntry of the workload's service (the first workload of a service defines its ports)."""
    ports = [{"number": port, "name": f"http-{port}", "protocol": "HTTP"} for port in spec.ports]
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": spec.service, "namespace": spec.namespace}, "spec": {
                "hosts": [service_host(spec.service, spec.namespace)], "addresses": [spec.vip], "ports": ports,
                "location": "MESH_INTERNAL", "resolution": "STATIC",
                "workloadSelector": {"labels": {"app": spec.service}}}}  # fmt: skip


def workload_document(spec: WorkloadSpec) -> dict[str, Any]:
    """The workload's WorkloadEntry: where it is, its labels (the service's `app`, its own, tlsMode) and identity."""
    return {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
            "metadata": {"name": spec.name, "namespace": spec.namespace}, "spec": {
                "address": spec.address, "labels": spec.all_labels, "serviceAccount": spec.service_account,
                "ports": {f"http-{port}": port for port in spec.ports}}}  # fmt: skip


LOCALHOST = ["127.0.0.1 localhost", "::1 localhost"]


def hosts_file(workloads: list[WorkloadSpec]) -> str:
    """/etc/hosts for a workload namespace whose sidecar does not answer its DNS: each service's names on its VIP
    (ip netns exec bind-mounts /etc/netns/<ns>/hosts over /etc/hosts), the equivalent of Kubernetes' DNS for
    Services; a gateway, which has no VIP, by its pod address."""
    lines = list(LOCALHOST)
    seen: set[tuple[str, str]] = set()
    for spec in workloads:
        name = spec.service or spec.name
        if (name, spec.namespace) in seen:
            continue
        seen.add((name, spec.namespace))
        host = service_host(name, spec.namespace)
        lines.append(f"{spec.vip or spec.address} {host} {name}.{spec.namespace}.svc {name}.{spec.namespace}")
    return "\n".join(lines) + "\n"


def resolv_conf(namespace: str, resolver: str) -> str:
    """/etc/resolv.conf of a pod: Kubernetes' search list for its namespace (so `server` and `server.default`
    find `server.default.svc.cluster.local`), and `resolver`."""
    return (f"search {namespace}.svc.cluster.local svc.cluster.local cluster.local\n"
            f"nameserver {resolver}\noptions timeout:1 attempts:2\n")  # fmt: skip


def pod_hosts_file(spec: WorkloadSpec, workloads: list[WorkloadSpec]) -> str:
    """A pod's /etc/hosts: localhost alone when its sidecar answers its DNS from pilot's table (every service,
    and ServiceEntries applied later, by name), else every service's names (`hosts_file`)."""
    return "\n".join(LOCALHOST) + "\n" if spec.dns_capture else hosts_file(workloads)
