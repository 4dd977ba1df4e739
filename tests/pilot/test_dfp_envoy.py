"""Interop: a DYNAMIC_DNS ServiceEntry served by `pylon pilot` to a sidecar - real Envoy 1.40, then `pylon proxy` -
which reaches a local server by the request's host through the dynamic forward proxy.

The ServiceEntry's host is `*.localhost`: c-ares (inside Envoy and pylon alike) answers every `*.localhost` name
with a loopback address itself (RFC 6761), so no query leaves the machine. Without capture rules (interception
mode NONE) the sidecar's outbound listener of the port is bound on 127.0.0.1: the application sends there with the
Host it means. A Host without a port names port 80 (the cluster is plaintext), where the server listens: binding
port 80 needs privileges, the test is skipped without them.

A TLS port of such a ServiceEntry: the sidecar's listener resolves the connection's SNI and passes the connection
through to that name on the listener's own port. The TLS server listens on 127.0.0.1 (where `a.localhost` resolves),
so the listener is bound elsewhere on loopback: a Sidecar egress listener on 127.0.0.2 (capture mode NONE).
"""

from __future__ import annotations

import errno
import socket
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import free_port, wait_for_port
from tests.proxy.upstreams import TlsServer
from tests.pilot.builders import SIDECAR_NODE, doc, write_yaml
from tests.pilot.harness import ENVOY, Processes, bootstrap, eventually, needs_envoy, pilot_cmd

pytestmark = needs_envoy

METADATA = {"NAMESPACE": "default", "LABELS": {"app": "client"}, "INTERCEPTION_MODE": "NONE"}
CACHE = "*.localhost_dfp_dns_cache"


def port_80_free() -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", 80))
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EADDRINUSE):
                return False
            raise
    return True


@dataclass
class Sidecar:
    service_port: int
    debug_port: int
    admin_port: int

    def get(self, host: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.service_port}/dfp", headers={"host": host}, timeout=10)

    def syncz(self) -> dict[str, dict[str, str]]:
        [status] = httpx.get(f"http://127.0.0.1:{self.debug_port}/debug/syncz", timeout=5).json()
        return status["types"]

    def stats(self) -> dict[str, str]:
        text = httpx.get(f"http://127.0.0.1:{self.admin_port}/stats", timeout=5).text
        return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


@pytest.fixture(scope="module", params=["envoy", "pylon"])
def sidecar(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    if not port_80_free():
        pytest.skip("port 80 is taken or needs privileges (a Host without a port names port 80)")
    base = tmp_path_factory.mktemp("dfp-sidecar")
    procs = Processes()
    try:
        wait_for_port(80, proc=procs.start([sys.executable, str(Path(__file__).with_name("upstream.py")), "web", "80"]))
        (base / "config").mkdir()
        xds_port = free_port()
        mesh = Sidecar(service_port=free_port(), debug_port=free_port(), admin_port=free_port())
        write_yaml(base / "config" / "mesh.yaml", doc("ServiceEntry", "local", {
            "hosts": ["*.localhost"], "location": "MESH_EXTERNAL", "resolution": "DYNAMIC_DNS",
            "ports": [{"number": mesh.service_port, "name": "http", "protocol": "HTTP"}]}))
        pilot = procs.start(pilot_cmd(base / "config", base, xds_port, mesh.debug_port, free_port()))
        wait_for_port(xds_port, proc=pilot)
        (base / "proxy.yaml").write_text(yaml.safe_dump(bootstrap(SIDECAR_NODE, "client.default", METADATA,
                                                                  mesh.admin_port, xds_port, api_type="DELTA_GRPC")))
        if request.param == "envoy":
            command = [str(ENVOY), "-c", str(base / "proxy.yaml"), "--disable-hot-restart", "-l", "error"]
        else:
            command = [sys.executable, "-m", "pylon.cli", "proxy", "-c", str(base / "proxy.yaml"), "-l", "error"]
        wait_for_port(mesh.service_port, proc=procs.start(command), timeout=20)
        yield mesh
    finally:
        procs.stop()


def test_wildcard_names_reach_the_local_server_through_the_dynamic_forward_proxy(sidecar: Sidecar) -> None:
    eventually(lambda: sidecar.get("a.localhost").status_code == 200)
    for host in ("a.localhost", "b.localhost"):
        reply = sidecar.get(host)
        assert reply.status_code == 200 and reply.json()["name"] == "web"
        assert reply.json()["headers"]["host"] == host
    status = sidecar.syncz()
    assert {"cds", "lds", "rds"} <= set(status)
    assert all(s["acked"] == s["sent"] and not s["nack"] for s in status.values()), status
    stats = sidecar.stats()
    assert int(stats[f"dns_cache.{CACHE}.host_added"]) >= 2
    assert int(stats[f"dns_cache.{CACHE}.dns_query_failure"]) == 0


@pytest.fixture(scope="module", params=["envoy", "pylon"])
def tls_sidecar(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """(port, CA file): a sidecar listening on 127.0.0.2:port, a TLS server for `a.localhost` on 127.0.0.1:port."""
    base = tmp_path_factory.mktemp("dfp-tls-sidecar")
    port = free_port()
    server = TlsServer(base, ("127.0.0.1", port))
    procs = Processes()
    try:
        (base / "config").mkdir()
        xds_port, admin_port = free_port(), free_port()
        tls_port = {"number": port, "name": "tls", "protocol": "TLS"}
        write_yaml(base / "config" / "mesh.yaml", doc("ServiceEntry", "local", {
            "hosts": ["*.localhost"], "location": "MESH_EXTERNAL", "resolution": "DYNAMIC_DNS", "ports": [tls_port]}),
            doc("Sidecar", "client", {"workloadSelector": {"labels": {"app": "client"}}, "egress": [
                {"port": tls_port, "bind": "127.0.0.2", "captureMode": "NONE", "hosts": ["*/*.localhost"]}]}))
        pilot = procs.start(pilot_cmd(base / "config", base, xds_port, free_port(), free_port()))
        wait_for_port(xds_port, proc=pilot)
        (base / "proxy.yaml").write_text(yaml.safe_dump(bootstrap(SIDECAR_NODE, "client.default", METADATA,
                                                                  admin_port, xds_port, api_type="DELTA_GRPC")))
        if request.param == "envoy":
            command = [str(ENVOY), "-c", str(base / "proxy.yaml"), "--disable-hot-restart", "-l", "error"]
        else:
            command = [sys.executable, "-m", "pylon.cli", "proxy", "-c", str(base / "proxy.yaml"), "-l", "error"]
        wait_for_port(port, host="127.0.0.2", proc=procs.start(command), timeout=20)
        yield port, server.ca_file
    finally:
        procs.stop()
        server.close()


def test_a_tls_port_passes_the_connection_through_to_its_sni(tls_sidecar: tuple[int, str]) -> None:
    port, ca_file = tls_sidecar
    context = ssl.create_default_context(cafile=ca_file)
    for name in ("a.localhost", "a.localhost"):  # the second from the cache
        with socket.create_connection(("127.0.0.2", port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=name) as tls:  # the server's certificate, for the name
            tls.sendall(b"hello")
            assert tls.recv(1024) == f"{name} hello".encode()
