"""The Istio resources a workload started by `pylon mesh run` brings with it (sans-IO).

On Kubernetes a Deployment's pods get a Service (a ClusterIP and a name) and endpoints; here each
workload gets the equivalent Istio resources: a ServiceEntry `<name>.<ns>.svc.cluster.local` on its VIP
(MESH_INTERNAL, resolution STATIC, selecting the workload by its `app` label) and a WorkloadEntry with
its pod IP, labels and service account. The `security.istio.io/tlsMode: istio` label tells pilot the
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

    @property
    def all_labels(self) -> dict[str, str]:
        return {"app": self.name, **self.labels, TLS_MODE_LABEL: "istio"}


def workload_documents(spec: WorkloadSpec) -> list[dict[str, Any]]:
    """The ServiceEntry and WorkloadEntry of one workload, as YAML documents."""
    ports = [{"number": port, "name": f"http-{port}", "protocol": "HTTP"} for port in spec.ports]
    meta = {"name": spec.name, "namespace": spec.namespace}
    service = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": meta, "spec": {
        "hosts": [service_host(spec.name, spec.namespace)], "addresses": [spec.vip], "ports": ports,
        "location": "MESH_INTERNAL", "resolution": "STATIC", "workloadSelector": {"labels": {"app": spec.name}}}}
    entry = {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry", "metadata": meta, "spec": {
        "address": spec.address, "labels": spec.all_labels, "serviceAccount": spec.service_account,
        "ports": {f"http-{port}": port for port in spec.ports}}}  # fmt: skip
    return [service, entry]


def hosts_file(workloads: list[WorkloadSpec]) -> str:
    """/etc/hosts for every workload namespace: each service's names on its VIP (ip netns exec bind-mounts
    /etc/netns/<ns>/hosts over /etc/hosts), the equivalent of Kubernetes' DNS for Services."""
    lines = ["127.0.0.1 localhost", "::1 localhost"]
    for spec in workloads:
        host = service_host(spec.name, spec.namespace)
        address = spec.vip or spec.address  # a gateway has no VIP: its pod is its service
        lines.append(f"{address} {host} {spec.name}.{spec.namespace}.svc {spec.name}.{spec.namespace}")
    return "\n".join(lines) + "\n"
