"""A gateway run by `pylon agent`, as Istio's ingress gateway pod: its proxy (real Envoy, or `pylon proxy`) gets
its config through the agent's xDS proxy from pilot's TLS port, authenticated with the pod's token, and with
it the Gateway's `credentialName` secret.

One pilot for the module (Gateways selected by label, a `kubernetes.io/tls` Secret in `--secrets-dir`); each
test starts its own agent and stops it.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pylon.identity.certs import Issued, issue_leaf, make_ca
from tests.conftest import free_port, pylon_cmd, stop_process_group, wait_for_port
from tests.pilot.builders import doc, service_entry, virtual_service, write_yaml
from tests.pilot.harness import ENVOY, eventually, needs_envoy, pilot_cmd

pytestmark = needs_envoy

HOST = "gw.example.com"
BACKEND = "echo.example.com"
NAMESPACE = "istio-system"


@dataclass
class Mesh:
    base: Path
    ca_port: int
    ports: dict[str, int]  # gateway label value -> the port its Gateway listens on
    public_ca: Issued
    pilot_log: Path

    def token(self, namespace: str, account: str = "istio-ingressgateway") -> Path:
        path = self.base / f"token-{namespace}"
        token = subprocess.run(pylon_cmd("pilot", "token", "--ca-dir", str(self.base / "cacerts"), "--namespace",
                                         namespace, "--service-account", account),
                               check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
        path.write_text(token)
        return path

    def get(self, port: int) -> bytes | None:
        """The response head of GET / over TLS (SNI HOST, trusting the Secret's CA); None if TLS fails."""
        context = ssl.create_default_context(cadata=self.public_ca.cert_pem.decode())
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    context.wrap_socket(raw, server_hostname=HOST) as tls:
                tls.sendall(f"GET /hello HTTP/1.1\r\nHost: {HOST}\r\nconnection: close\r\n\r\n".encode())
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
                return data or None
        except (ssl.SSLError, OSError):
            return None


@dataclass
class Agent:
    proc: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    base = Path(tempfile.mkdtemp(prefix="pg-"))  # short: Unix socket paths are limited to 108 bytes
    procs: list[subprocess.Popen] = []
    try:
        backend = free_port()
        procs.append(subprocess.Popen([sys.executable, str(Path(__file__).parents[1] / "pilot" / "upstream.py"),
                                       "backend", str(backend)], start_new_session=True))  # fmt: skip
        wait_for_port(backend, proc=procs[0])
        public_ca = make_ca()
        leaf = issue_leaf(public_ca, common_name=HOST, dns_names=[HOST])
        secrets, config = base / "secrets", base / "config"
        secrets.mkdir()
        config.mkdir()
        (secrets / "gw-cred.yaml").write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "gw-cred", "namespace": NAMESPACE},
            "data": {"tls.crt": base64.b64encode(leaf.cert_pem).decode(),
                     "tls.key": base64.b64encode(leaf.key_pem).decode()}}))  # fmt: skip
        ports = {"ingressgateway": free_port(), "qat-gateway": free_port(), "stranger": free_port()}
        https = {"name": "https", "protocol": "HTTPS"}
        servers = {label: [{"port": {"number": port, **https}, "hosts": [HOST],
                            "tls": {"mode": "SIMPLE", "credentialName": "gw-cred"}}] for label, port in ports.items()}
        # The stranger's gateway is plain HTTP: were it configured, it would listen at once (no secret to wait for).
        servers["stranger"] = [{"port": {"number": ports["stranger"], "name": "http", "protocol": "HTTP"},
                                "hosts": [HOST]}]  # fmt: skip
        gateways = [doc("Gateway", f"gw-{label}", {"selector": {"istio": label}, "servers": servers[label]},
                        namespace=NAMESPACE) for label in ports]  # fmt: skip
        write_yaml(config / "gw.yaml", *gateways, service_entry(BACKEND, [("127.0.0.1", backend, {})]),
                   virtual_service([{"route": [{"destination": {"host": BACKEND}}]}], hosts=[HOST],
                                   gateways=[f"{NAMESPACE}/gw-{label}" for label in ports]))  # fmt: skip
        ca_port = free_port()
        pilot_log = base / "pilot.log"
        with pilot_log.open("wb") as out:
            procs.append(subprocess.Popen(pilot_cmd(config, base, free_port(), free_port(), free_port(),
                                                    "--secrets-dir", str(secrets), ca_port=ca_port),
                                          stdout=out, stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip
        wait_for_port(ca_port, proc=procs[1])
        yield Mesh(base=base, ca_port=ca_port, ports=ports, public_ca=public_ca, pilot_log=pilot_log)
    finally:
        for proc in reversed(procs):
            stop_process_group(proc)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def start_agent(mesh: Mesh) -> Iterator:
    """Starts `pylon agent --type router` for the gateway labelled istio=LABEL; stopped after the test."""
    agents: list[Agent] = []

    def start(proxy: str, label: str, token: Path, *extra: str) -> Agent:
        work = mesh.base / f"{proxy[0]}{label[:3]}"
        work.mkdir()
        log = work / "agent.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(pylon_cmd(
                "agent", "--type", "router", "--namespace", NAMESPACE, "--service-account", "istio-ingressgateway",
                "--pod-name", f"{label}-0", "--labels", f"istio={label}", "--labels", "app=gateway",
                "--ca-address", f"127.0.0.1:{mesh.ca_port}", "--discovery-address", f"127.0.0.1:{mesh.ca_port}",
                "--root-cert", str(mesh.base / "cacerts" / "root-cert.pem"), "--token-file", str(token),
                "--workdir", str(work), "--proxy", proxy, "--envoy-binary", str(ENVOY),
                "--admin-port", str(free_port()), "--health-address", f"127.0.0.1:{free_port()}",
                "--status-address", f"127.0.0.1:{free_port()}",
                "--drain-seconds", "0.2", *extra), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        agents.append(Agent(proc, log))
        return agents[-1]

    yield start
    for agent in agents:
        stop_process_group(agent.proc)


@pytest.mark.parametrize("proxy", ["envoy", "pylon"])
def test_gateway_serves_https_with_its_credential(mesh: Mesh, start_agent, proxy: str) -> None:
    agent = start_agent(proxy, "ingressgateway", mesh.token(NAMESPACE))
    eventually(lambda: mesh.get(mesh.ports["ingressgateway"]) is not None, timeout=30)
    response = mesh.get(mesh.ports["ingressgateway"]) or b""
    assert response.startswith(b"HTTP/1.1 200"), response
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["path"] == "/hello"
    bootstrap = json.loads((mesh.base / f"{proxy[0]}ing" / "etc/istio/proxy/envoy-rev.json").read_text())
    assert bootstrap["node"]["metadata"]["LABELS"] == {"istio": "ingressgateway", "app": "gateway"}
    assert "relayed to" in agent.output()


QAT = "privateKeyProvider:\n  qat: {pollDelay: 2ms, fallback: true}\n"


@pytest.mark.parametrize("proxy", ["envoy", "pylon"])
def test_qat_private_key_provider_from_the_proxy_config(mesh: Mesh, start_agent, tmp_path: Path, proxy: str) -> None:
    """PROXY_CONFIG.privateKeyProvider makes pilot serve the key under Envoy's QAT provider. pylon proxy has no
    QAT device and falls back to the key in software (`fallback: true`), saying so; stock Envoy 1.40 has no QAT
    extension and rejects the secret, so the HTTPS port never completes a handshake."""
    config = tmp_path / "proxy-config.yaml"
    config.write_text(QAT)
    agent = start_agent(proxy, "qat-gateway", mesh.token(NAMESPACE), "--proxy-config", str(config))
    port = mesh.ports["qat-gateway"]
    if proxy == "pylon":
        eventually(lambda: mesh.get(port) is not None, timeout=30)
        assert (mesh.get(port) or b"").startswith(b"HTTP/1.1 200")
        assert "private key provider qat cannot run here" in agent.output()
        assert "using the key file instead (fallback: true)" in agent.output()
    else:
        node = f"router~127.0.0.1~qat-gateway-0.{NAMESPACE}"
        eventually(lambda: any(node in line and "rejected sds" in line and "Failed to load private key provider: qat"
                               in line for line in mesh.pilot_log.read_text().splitlines()), timeout=30)  # fmt: skip
        assert "Secret rejected: Failed to load private key provider: qat" in agent.output()  # Envoy's own log
        assert mesh.get(port) is None
    bootstrap = json.loads((mesh.base / f"{proxy[0]}qat" / "etc/istio/proxy/envoy-rev.json").read_text())
    assert bootstrap["node"]["metadata"]["PROXY_CONFIG"]["privateKeyProvider"] == {
        "qat": {"pollDelay": "0.002s", "fallback": True}}


@pytest.mark.parametrize("proxy", ["envoy", "pylon"])
def test_a_token_of_another_namespace_gets_no_config(mesh: Mesh, start_agent, proxy: str) -> None:
    """The agent says istio-system but holds a token of `other`: pilot refuses the stream (identity namespace is
    not the node's), the agent passes the refusal on, and the proxy never gets a listener."""
    agent = start_agent(proxy, "stranger", mesh.token("other"))
    eventually(lambda: "relayed to" in agent.output(), timeout=30)
    time.sleep(3)  # a proxy that got config would have bound its (plain HTTP) gateway port by now
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", mesh.ports["stranger"]), timeout=1).close()
    assert "ended by pilot" in agent.output()
    assert "authenticated as spiffe://cluster.local/ns/other/sa/istio-ingressgateway" in agent.output()
