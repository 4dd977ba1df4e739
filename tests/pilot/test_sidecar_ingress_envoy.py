"""Interop: a Sidecar's ingress and egress listeners from `pylon pilot`, on a real Envoy 1.40 sidecar.

The Sidecar gives the workload an ingress listener on a port no service has, whose `defaultEndpoint` is the app
on 127.0.0.1, and an egress listener bound to a port of its own (captureMode NONE) importing one service.

- Capture mode (REDIRECT), as Istio runs a pod: pilot, the apps and Envoy share a network namespace of their
  own (`unshare -rn`) whose nftables redirect the ingress port to virtualInbound (15006), as istio-iptables
  does; the client's request reaches the app through virtualInbound's chain for that port, with its original
  destination restored by the original_dst listener filter. Skipped where namespaces or nft are not available.
- Interception mode NONE (no capture rules, Envoy and pylon proxy): the ingress listener is a listener of its own;
  so are an HTTP_PROXY egress port and a unix socket egress listener.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port, wait_for_port
from tests.pilot.builders import SIDECAR_NODE, doc, write_yaml
from tests.pilot.harness import ENVOY, Processes, bootstrap, eventually, needs_envoy, pilot_cmd

pytestmark = needs_envoy

REVIEWS = "reviews.default.svc.cluster.local"
INGRESS_PORT = 9090  # no service has it
EGRESS_PORT = 9080  # reviews' port, bound by the egress listener
METADATA = {"NAMESPACE": "default", "LABELS": {"app": "client"}}


def mesh_docs(app_port: int, reviews_port: int, ingress_port: int = INGRESS_PORT, egress_port: int = EGRESS_PORT,
              bind: str = "", more_egress: tuple[dict[str, Any], ...] = ()) -> list[dict[str, Any]]:  # fmt: skip
    """reviews (another workload), the client's own service (its port 80 is not the ingress port), mTLS off (no
    agent beside Envoy serves SDS), and the client's Sidecar (REGISTRY_ONLY: an unknown host is a 502, not a
    passthrough back to the listener itself)."""
    ingress: dict[str, Any] = {"port": {"number": ingress_port, "protocol": "HTTP", "name": "web"},
                               "defaultEndpoint": f"127.0.0.1:{app_port}"}  # fmt: skip
    if bind:
        ingress["bind"] = bind
    return [
        doc("ServiceEntry", "reviews", {"hosts": [REVIEWS], "location": "MESH_INTERNAL", "resolution": "STATIC",
                                        "ports": [{"number": egress_port, "name": "http", "protocol": "HTTP"}],
                                        "endpoints": [{"address": "127.0.0.1", "ports": {"http": reviews_port}}]}),
        doc("ServiceEntry", "client", {"hosts": ["client.default.svc.cluster.local"], "location": "MESH_INTERNAL",
                                       "resolution": "STATIC", "workloadSelector": {"labels": {"app": "client"}},
                                       "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080}]}),
        doc("PeerAuthentication", "off", {"mtls": {"mode": "DISABLE"}}, namespace="istio-system",
            api_version="security.istio.io/v1"),
        doc("Sidecar", "client", {
            "workloadSelector": {"labels": {"app": "client"}},
            "ingress": [ingress],
            "egress": [{"port": {"number": egress_port, "protocol": "HTTP", "name": "http"}, "bind": "127.0.0.1",
                        "captureMode": "NONE", "hosts": [f"./{REVIEWS}"]}, *more_egress],
            "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}),
    ]  # fmt: skip


def write_config(base: Path, docs: list[dict[str, Any]]) -> Path:
    (base / "config").mkdir()
    write_yaml(base / "config" / "mesh.yaml", *docs)
    (base / "meshconfig.yaml").write_text("enableAutoMtls: false\n")  # no SDS from an agent either
    return base / "config"


def envoy_command(base: Path, proxy: str, metadata: dict[str, Any], admin_port: int, xds_port: int) -> list[str]:
    (base / "envoy.yaml").write_text(yaml.safe_dump(bootstrap(SIDECAR_NODE, "client.default", metadata, admin_port,
                                                              xds_port, api_type="DELTA_GRPC")))  # fmt: skip
    if proxy == "envoy":
        return [str(ENVOY), "-c", str(base / "envoy.yaml"), "--disable-hot-restart", "-l", "error"]
    return [sys.executable, "-m", "pylon.cli", "proxy", "-c", str(base / "envoy.yaml"), "-l", "error"]


# --------------------------------------------------------------------------- capture mode, in a namespace


def namespaces_work() -> bool:
    if not (shutil.which("unshare") and shutil.which("nsenter") and shutil.which("nft")):
        return False
    probe = subprocess.run(["unshare", "-rn", "nft", "list", "ruleset"], capture_output=True, timeout=10)
    return probe.returncode == 0


class Namespace:
    """A network namespace (and the user namespace that owns it) held by a `sleep`, whose nftables redirect
    `redirected` to virtualInbound; processes join it with nsenter."""

    def __init__(self, procs: Processes, redirected: int) -> None:
        setup = ("ip link set lo up && nft add table ip nat && "
                 "nft 'add chain ip nat output { type nat hook output priority -100 ; }' && "
                 f"nft add rule ip nat output tcp dport {redirected} redirect to :15006")  # fmt: skip
        self.holder = procs.start(["unshare", "-rn", "sh", "-c", f"{setup} && echo ready && exec sleep 600"])
        assert self.holder.stdout is not None and self.holder.stdout.readline() == b"ready\n"
        self.procs = procs

    def command(self, args: list[str]) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-U", "-n", "--preserve-credentials", *args]

    def start(self, args: list[str]) -> subprocess.Popen:
        return self.procs.start(self.command(args))

    def get(self, port: int, host: str) -> tuple[int, dict[str, Any]]:
        """GET http://127.0.0.1:port/ from inside: the status (0: no answer) and the upstream's answer with the
        response's server header."""
        result = subprocess.run(self.command(["curl", "-s", "-i", "-m", "2", "-H", f"host: {host}",
                                              f"http://127.0.0.1:{port}/"]), capture_output=True, timeout=10)  # fmt: skip
        head, _, body = result.stdout.decode(errors="replace").partition("\r\n\r\n")
        if result.returncode != 0 or not head.startswith("HTTP/1.1 "):
            return 0, {}
        headers = dict(line.lower().split(": ", 1) for line in head.split("\r\n")[1:])
        status = int(head.split(" ", 2)[1])
        return status, {**json.loads(body), "server": headers.get("server")} if status == 200 else {}

    def stat(self, admin_port: int, name: str) -> int:
        """A counter of the Envoy whose admin is on `admin_port`, inside."""
        result = subprocess.run(self.command(["curl", "-s", "-m", "2", f"http://127.0.0.1:{admin_port}/stats?filter=^{name}$"]),
                                capture_output=True, text=True, timeout=10)  # fmt: skip
        return int(result.stdout.split(": ")[1]) if ": " in result.stdout else 0


@dataclass
class Captured:
    ns: Namespace
    admin_port: int


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Captured]:
    if not namespaces_work():
        pytest.skip("needs unshare, nsenter and nftables in a user and network namespace (unshare -rn)")
    base = tmp_path_factory.mktemp("captured")
    procs = Processes()
    try:
        ns = Namespace(procs, INGRESS_PORT)
        upstream = str(Path(__file__).with_name("upstream.py"))
        app_port, reviews_port, xds_port = free_port(), free_port(), free_port()
        ns.start([sys.executable, upstream, "app", str(app_port)])
        ns.start([sys.executable, upstream, "reviews", str(reviews_port)])
        config_dir = write_config(base, mesh_docs(app_port, reviews_port))
        ns.start(pilot_cmd(config_dir, base, xds_port, free_port(), free_port(), "--mesh-config", str(base / "meshconfig.yaml")))
        admin_port = free_port()
        ns.start(envoy_command(base, "envoy", METADATA, admin_port, xds_port))
        eventually(lambda: ns.get(INGRESS_PORT, "client.default")[0] == 200, timeout=30)
        yield Captured(ns, admin_port)
    finally:
        procs.stop()


def test_traffic_to_an_ingress_port_reaches_the_app_through_virtual_inbound(captured: Captured) -> None:
    accepted = captured.ns.stat(captured.admin_port, "listener.0.0.0.0_15006.downstream_cx_total")
    status, answer = captured.ns.get(INGRESS_PORT, "client.default")
    # the app answered, behind the sidecar's inbound connection manager (its server name, a request id)
    assert (status, answer["name"], answer["server"]) == (200, "app", "istio-envoy")
    assert "x-request-id" in answer["headers"]
    assert captured.ns.stat(captured.admin_port, "listener.0.0.0.0_15006.downstream_cx_total") == accepted + 1


def test_an_egress_listener_bound_to_its_port_routes_to_its_hosts(captured: Captured) -> None:
    eventually(lambda: captured.ns.get(EGRESS_PORT, REVIEWS)[1].get("name") == "reviews")
    assert captured.ns.get(EGRESS_PORT, "elsewhere.example.com")[0] == 502  # block_all: REGISTRY_ONLY


# --------------------------------------------------------------------------- interception mode NONE


@pytest.mark.parametrize("proxy", ["envoy", "pylon"])
def test_ingress_and_egress_listeners_of_their_own_without_capture(proxy: str, tmp_path: Path) -> None:
    """Besides the ingress and the egress port: an HTTP proxy port, and (Envoy: pylon proxy listens on IP
    addresses only) a unix socket, each serving the service by its `host:port`."""
    procs = Processes()
    try:
        app_port, reviews_port, xds_port = procs.upstream("app"), procs.upstream("reviews"), free_port()
        ingress_port, egress_port, proxy_port = free_port(), free_port(), free_port()
        socket = tmp_path / "egress.sock"
        more = [{"port": {"number": proxy_port, "protocol": "HTTP_PROXY"}, "hosts": [f"./{REVIEWS}"]}]
        if proxy == "envoy":
            more.append({"port": {"number": 0, "protocol": "HTTP"}, "bind": f"unix://{socket}", "hosts": [f"./{REVIEWS}"]})
        docs = mesh_docs(app_port, reviews_port, ingress_port, egress_port, bind="127.0.0.1", more_egress=tuple(more))
        config_dir = write_config(tmp_path, docs)
        pilot = procs.start(pilot_cmd(config_dir, tmp_path, xds_port, free_port(), free_port(),
                                      "--mesh-config", str(tmp_path / "meshconfig.yaml")))  # fmt: skip
        wait_for_port(xds_port, proc=pilot)
        command = envoy_command(tmp_path, proxy, {**METADATA, "INTERCEPTION_MODE": "NONE"}, free_port(), xds_port)
        wait_for_port(ingress_port, proc=procs.start(command), timeout=20)
        response = httpx.get(f"http://127.0.0.1:{ingress_port}/", headers={"host": "client.default"}, timeout=5)
        assert (response.json()["name"], response.headers["server"]) == ("app", "istio-envoy")
        for port in (egress_port, proxy_port):
            wait_for_port(port)
        response = httpx.get(f"http://127.0.0.1:{egress_port}/", headers={"host": REVIEWS}, timeout=5)
        assert response.json()["name"] == "reviews"
        url = f"http://{REVIEWS}:{egress_port}/"
        assert httpx.get(url, proxy=f"http://127.0.0.1:{proxy_port}", timeout=5).json()["name"] == "reviews"
        if proxy == "envoy":
            eventually(socket.exists)
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), timeout=5) as client:
                assert client.get(url).json()["name"] == "reviews"
    finally:
        procs.stop()
