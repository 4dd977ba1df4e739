"""Interop: `pylon pilot` configuring a sidecar (node `sidecar~…`, labels and namespace in its metadata,
bootstrap as Istio's agent writes it): real Envoy 1.40, and `pylon proxy` on the same bootstrap.

Without capture rules the sidecar runs in Istio's interception mode NONE, where
istiod binds the per-port outbound listeners on 127.0.0.1: the test sends to the
service port directly with the service's Host header, as the application would
once iptables sent it there. The capture-mode (REDIRECT) config, whose
virtualOutbound/virtualInbound bind 0.0.0.0, goes through `--mode validate` (of Envoy and of pylon)
instead of being bound.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pylon.pilot.gen.sidecar import SidecarGenerator
from pylon.pilot.gen.types import CLUSTER, LISTENER
from pylon.pilot.snapshot import build_snapshot
from pylon.pilot.source.directory import load_directory
from tests.conftest import free_port, stop_process_group, wait_for_port
from tests.pilot.builders import SIDECAR_NODE, doc, sidecar_proxy, subsets_rule, write_yaml
from tests.pilot.harness import ENVOY, bootstrap, eventually, needs_envoy, pilot_cmd

pytestmark = needs_envoy

HOST = "reviews.default.svc.cluster.local"
METADATA = {"NAMESPACE": "default", "LABELS": {"app": "client"}, "INTERCEPTION_MODE": "NONE"}


@dataclass
class Sidecar:
    config_dir: Path
    service_port: int
    debug_port: int
    monitoring_port: int
    upstreams: dict[str, int]
    base: Path
    dns_port: int
    admin_port: int
    api_type: str
    proxy: str

    def get(self, path: str = "/", host: str = HOST, **headers: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.service_port}{path}", headers={"host": host, **headers}, timeout=5)

    def syncz(self) -> dict[str, Any]:
        [status] = httpx.get(f"http://127.0.0.1:{self.debug_port}/debug/syncz", timeout=5).json()
        return status["types"]

    def metric(self, name: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.monitoring_port}/metrics", timeout=5).text
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def envoy_clusters(self) -> set[str]:
        text = httpx.get(f"http://127.0.0.1:{self.admin_port}/clusters", timeout=5).text
        return {line.split("::", 1)[0] for line in text.splitlines()}

    def write(self, http: list[dict[str, Any]], v2_port: int | None = None, subsets: tuple[str, ...] = ("v1", "v2")) -> None:
        """reviews (a ServiceEntry selecting two WorkloadEntries), its subsets, and a mesh VirtualService."""
        workloads = [doc("WorkloadEntry", f"reviews-{name}", {"address": "127.0.0.1", "labels": {"app": "reviews", "version": name},
                                                               "ports": {"http": v2_port if name == "v2" and v2_port else port}})
                     for name, port in self.upstreams.items()]  # fmt: skip
        entry = doc("ServiceEntry", "reviews", {
            "hosts": [HOST], "location": "MESH_INTERNAL", "resolution": "STATIC",
            "ports": [{"number": self.service_port, "name": "http", "protocol": "HTTP"}],
            "workloadSelector": {"labels": {"app": "reviews"}}})  # fmt: skip
        client = doc("ServiceEntry", "client", {
            "hosts": ["client.default.svc.cluster.local"], "location": "MESH_INTERNAL", "resolution": "STATIC",
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080}],
            "workloadSelector": {"labels": {"app": "client"}}})  # fmt: skip
        dns = doc("ServiceEntry", "dns", {
            "hosts": ["dns.example.com"], "resolution": "DNS", "ports": [{"number": self.dns_port, "name": "http", "protocol": "HTTP"}],
            "endpoints": [{"address": "localhost", "ports": {"http": self.upstreams["v1"]}}]})  # fmt: skip
        vs = doc("VirtualService", "reviews", {"hosts": ["reviews"], "http": http})
        write_yaml(self.config_dir / "mesh.yaml", entry, client, dns, *workloads, subsets_rule(HOST, list(subsets)), vs)

    def apply(self, http: list[dict[str, Any]], v2_port: int | None = None, changed: str = "rds",
              subsets: tuple[str, ...] = ("v1", "v2")) -> None:
        before = self.syncz()[changed]["acked"]
        self.write(http, v2_port, subsets)
        eventually(lambda: self.syncz()[changed]["acked"] != before)


BY_HEADER = [{"match": [{"headers": {"x-version": {"exact": "v2"}}}], "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
             {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}]  # fmt: skip


@pytest.fixture(scope="module", params=[("envoy", "GRPC"), ("envoy", "DELTA_GRPC"), ("pylon", "GRPC"),
                                        ("pylon", "DELTA_GRPC")], ids="-".join)
def sidecar(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    """One pilot and one sidecar proxy (Envoy, then pylon), speaking state-of-the-world ADS, then (Istio's
    default) delta."""
    proxy, api_type = request.param
    base = tmp_path_factory.mktemp("sidecar")
    procs: list[subprocess.Popen] = []

    def start(args: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        upstreams = {"v1": free_port(), "v2": free_port()}
        for name, port in upstreams.items():
            wait_for_port(port, proc=start([sys.executable, str(Path(__file__).with_name("upstream.py")), name, str(port)]))
        (base / "config").mkdir()
        xds_port, admin_port = free_port(), free_port()
        mesh = Sidecar(config_dir=base / "config", service_port=free_port(), debug_port=free_port(),
                       monitoring_port=free_port(), upstreams=upstreams, base=base, dns_port=free_port(),
                       admin_port=admin_port, api_type=api_type, proxy=proxy)  # fmt: skip
        mesh.write(BY_HEADER)
        # No agent beside this Envoy: auto mTLS clusters would wait forever for SDS secrets from `sds-grpc`
        # (the mTLS config is checked by envoy --mode validate in gen/test_mtls.py).
        (base / "mesh.yaml").write_text("enableAutoMtls: false\n")
        pilot = start(pilot_cmd(mesh.config_dir, base, xds_port, mesh.debug_port, mesh.monitoring_port,
                                "--mesh-config", str(base / "mesh.yaml")))
        wait_for_port(xds_port, proc=pilot)
        (base / "envoy.yaml").write_text(yaml.safe_dump(bootstrap(SIDECAR_NODE, "client.default", METADATA, admin_port, xds_port,
                                                                   api_type=api_type)))
        if proxy == "envoy":
            command = [str(ENVOY), "-c", str(base / "envoy.yaml"), "--disable-hot-restart", "-l", "error",
                       "--drain-strategy", "immediate"]  # fmt: skip
        else:
            command = [sys.executable, "-m", "pylon.cli", "proxy", "-c", str(base / "envoy.yaml"), "-l", "error"]
        wait_for_port(mesh.service_port, proc=start(command), timeout=20)
        eventually(lambda: mesh.get().status_code == 200)
        yield mesh
    finally:
        for proc in procs:
            stop_process_group(proc)


def test_outbound_routes_by_virtual_service_and_envoy_acks_everything(sidecar: Sidecar) -> None:
    assert sidecar.get().json()["name"] == "v1"
    assert sidecar.get(**{"x-version": "v2"}).json()["name"] == "v2"
    assert sidecar.get(host=f"{HOST}:{sidecar.service_port}").json()["name"] == "v1"
    sidecar.apply([{"route": [{"destination": {"host": "reviews", "subset": "v2"}}],
                    "headers": {"response": {"set": {"x-routed": "mesh"}}}}])  # fmt: skip
    response = sidecar.get()
    assert response.json()["name"] == "v2" and response.headers["x-routed"] == "mesh"
    assert {t: (s["acked"] == s["sent"], s["nack"]) for t, s in sidecar.syncz().items()} == {
        "cds": (True, ""), "eds": (True, ""), "lds": (True, ""), "rds": (True, "")}
    sidecar.apply(BY_HEADER)


def test_workload_address_change_is_pushed_as_eds_alone(sidecar: Sidecar) -> None:
    pushes = {t: sidecar.metric(f'pilot_xds_pushes_total{{type="{t}"}}') for t in ("cds", "eds", "lds", "rds")}
    sidecar.apply(BY_HEADER, v2_port=sidecar.upstreams["v1"], changed="eds")  # subset v2 now lands on v1's server
    eventually(lambda: sidecar.get(**{"x-version": "v2"}).json()["name"] == "v1")
    after = {t: sidecar.metric(f'pilot_xds_pushes_total{{type="{t}"}}') for t in pushes}
    assert {t: after[t] - pushes[t] for t in pushes} == {"cds": 0, "eds": 1, "lds": 0, "rds": 0}
    assert sidecar.metric("pilot_proxy_convergence_time_count") >= 1
    assert sidecar.metric('pilot_xds_push_time_count{type="eds"}') >= after["eds"]
    sidecar.apply(BY_HEADER, changed="eds")
    assert sidecar.get(**{"x-version": "v2"}).json()["name"] == "v2"


def test_dns_resolution_service_entry(sidecar: Sidecar) -> None:
    """A ServiceEntry with resolution DNS: Envoy resolves the endpoint's name (STRICT_DNS) itself."""
    eventually(lambda: httpx.get(f"http://127.0.0.1:{sidecar.dns_port}/", headers={"host": "dns.example.com"},
                                 timeout=5).json()["name"] == "v1")  # fmt: skip


def test_removed_subset_is_removed_from_envoy(sidecar: Sidecar) -> None:
    v2 = f"outbound|{sidecar.service_port}|v2|{HOST}"
    assert v2 in sidecar.envoy_clusters()
    only_v1 = [{"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}]
    sidecar.apply(only_v1, subsets=("v1",), changed="cds")
    eventually(lambda: v2 not in sidecar.envoy_clusters())
    assert sidecar.get(**{"x-version": "v2"}).json()["name"] == "v1"
    sidecar.apply(BY_HEADER, changed="cds")
    eventually(lambda: v2 in sidecar.envoy_clusters() and sidecar.get(**{"x-version": "v2"}).json()["name"] == "v2")


def test_capture_mode_config_passes_validation(sidecar: Sidecar) -> None:
    """The REDIRECT-mode resources (virtualOutbound, virtualInbound, inbound|8080||, passthrough) as the proxy sees
    them."""
    snapshot = build_snapshot(load_directory(sidecar.config_dir).resources)
    out = SidecarGenerator().generate(sidecar_proxy(), snapshot)
    assert {"virtualOutbound", "virtualInbound"} <= set(out[LISTENER]) and "inbound|8080||" in out[CLUSTER]
    config = bootstrap(SIDECAR_NODE, "client.default", {"NAMESPACE": "default"}, free_port(), free_port())
    config["static_resources"]["listeners"] = list(out[LISTENER].values())
    config["static_resources"]["clusters"] += list(out[CLUSTER].values())
    path = sidecar.base / "redirect.yaml"
    path.write_text(yaml.safe_dump(config))
    validate = ([str(ENVOY)] if sidecar.proxy == "envoy" else [sys.executable, "-m", "pylon.cli", "proxy"])
    result = subprocess.run([*validate, "--mode", "validate", "-c", str(path), "-l", "error"],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
