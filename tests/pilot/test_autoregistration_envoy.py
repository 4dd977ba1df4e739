"""Interop: a workload registers itself through a WorkloadGroup and a real Envoy 1.40 gateway routes to it.

The "VM" is an ADS client connecting to pilot's TLS port with its service-account token and
`AUTO_REGISTER_GROUP` in its node metadata, as Istio's agent on a VM does. pilot creates its
WorkloadEntry, a ServiceEntry's workloadSelector picks it, and the gateway's endpoints follow (EDS):
requests reach the VM's server. When the VM goes away its entry outlives it by the grace period (1 s
here), then the gateway has no endpoint left (503).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import grpc
import httpx
import pytest
import yaml
from google.protobuf import struct_pb2

from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest
from pylon.identity.authority import CaMaterial, SERVING_DNS_NAMES, load_or_create_token_key
from pylon.identity.tokens import TokenAuthority
from pylon.pilot.gen.types import CLUSTER
from tests.conftest import free_port, wait_for_port
from tests.pilot.builders import GATEWAY_NODE, doc, gateway, virtual_service, write_yaml
from tests.pilot.harness import ENVOY, Processes, bootstrap, eventually, needs_envoy, pilot_cmd

pytestmark = needs_envoy

HOST = "vm.example.com"


class VirtualMachine:
    """An agent-like ADS stream held open to pilot's TLS port until `leave()`."""

    def __init__(self, ca_port: int, root_pem: bytes, token: str, namespace: str, account_labels: dict[str, str]) -> None:
        credentials = grpc.ssl_channel_credentials(root_certificates=root_pem)
        self.channel = grpc.secure_channel(f"127.0.0.1:{ca_port}", credentials,
                                           options=[("grpc.ssl_target_name_override", SERVING_DNS_NAMES[0])])
        metadata = struct_pb2.Struct()
        metadata.update({"NAMESPACE": namespace, "AUTO_REGISTER_GROUP": "vms", "LABELS": account_labels})
        node = Node(id=f"sidecar~127.0.0.1~vm-1.{namespace}~{namespace}.svc.cluster.local", metadata=metadata)
        self.requests: queue.Queue[DiscoveryRequest | None] = queue.Queue()
        self.requests.put(DiscoveryRequest(type_url=CLUSTER, node=node))
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel).StreamAggregatedResources(
            iter(self.requests.get, None), metadata=(("authorization", f"Bearer {token}"),))
        self.responses = 0
        self.error: str | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for _ in self.call:
                self.responses += 1
        except grpc.RpcError as exc:
            self.error = exc.details() if exc.code() != grpc.StatusCode.CANCELLED else None

    def leave(self) -> None:
        self.call.cancel()
        self.channel.close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    base = tmp_path_factory.mktemp("autoreg")
    processes = Processes()
    start = processes.start
    try:
        vm_port = processes.upstream("vm")
        gateway_port, xds_port, ca_port = free_port(), free_port(), free_port()
        config_dir = base / "config"
        config_dir.mkdir()
        entry = doc("ServiceEntry", "vm-svc", {
            "hosts": [HOST], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}], "resolution": "STATIC",
            "workloadSelector": {"labels": {"app": "vm"}}})  # fmt: skip
        group = doc("WorkloadGroup", "vms", {"metadata": {"labels": {"app": "vm"}},
                                             "template": {"serviceAccount": "vm-sa", "ports": {"http": vm_port}}})
        write_yaml(config_dir / "mesh.yaml", gateway(gateway_port, bind="127.0.0.1"), entry, group,
                   virtual_service([{"route": [{"destination": {"host": HOST}}]}]))
        material = CaMaterial.load_or_create(base / "cacerts")
        tokens = TokenAuthority(load_or_create_token_key(base / "cacerts"))
        pilot = start(pilot_cmd(config_dir, base, xds_port, free_port(), free_port(),
                                "--workload-entry-grace-period", "1", ca_port=ca_port))  # fmt: skip
        wait_for_port(ca_port, proc=pilot)
        (base / "envoy.yaml").write_text(yaml.safe_dump(bootstrap(
            GATEWAY_NODE, "istio-ingressgateway.istio-system",
            {"NAMESPACE": "istio-system", "LABELS": {"istio": "ingressgateway"}}, free_port(), xds_port)))
        envoy = start([str(ENVOY), "-c", str(base / "envoy.yaml"), "--disable-hot-restart", "-l", "error",
                       "--use-dynamic-base-id"])
        wait_for_port(gateway_port, proc=envoy, timeout=20)
        yield {"gateway": gateway_port, "ca_port": ca_port, "root": material.root_pem.encode(), "tokens": tokens}
    finally:
        processes.stop()


def status(mesh: dict) -> int:
    return httpx.get(f"http://127.0.0.1:{mesh['gateway']}/", timeout=5).status_code


def test_a_registered_workload_is_routed_to_until_it_leaves(mesh: dict) -> None:
    assert status(mesh) == 503  # no workload yet
    machine = VirtualMachine(mesh["ca_port"], mesh["root"], mesh["tokens"].issue("default", "vm-sa"), "default",
                             {"version": "v1"})  # fmt: skip
    try:
        eventually(lambda: status(mesh) == 200)
        assert machine.error is None and machine.responses >= 1
    finally:
        machine.leave()
    eventually(lambda: status(mesh) == 503, timeout=10)  # the grace period (1 s), then EDS without it


def test_a_workload_of_another_service_account_does_not_register(mesh: dict) -> None:
    machine = VirtualMachine(mesh["ca_port"], mesh["root"], mesh["tokens"].issue("default", "intruder"), "default", {})
    try:
        eventually(lambda: machine.responses >= 1)  # it is served its config, but not registered
        assert status(mesh) == 503
    finally:
        machine.leave()
