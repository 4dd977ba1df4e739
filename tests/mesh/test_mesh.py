"""Integration: `pylon mesh` on this machine - workloads in network namespaces with injected sidecars.

Real processes, real namespaces, real capture rules: pilot with its CA in its namespace, two workloads
(a `pylon echo` server and an idle client) each with `pylon agent` and its proxy. The client reaches the
server by service name through both sidecars with mTLS, the server sees who called (XFCC), an applied
AuthorizationPolicy denies a path, and `mesh down` leaves nothing behind. Needs root, iproute2,
nftables, setpriv and curl (CI runs as root); it skips with the reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.pilot.harness import eventually

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "nft", "setpriv", "curl")),
    reason="pylon mesh needs root, iproute2, nftables, setpriv and curl (network namespaces of its own)",
)

SERVER = "http://server.default.svc.cluster.local:8080"
QAT_FALLBACK = "privateKeyProvider:\n  qat:\n    pollDelay: 2ms\n    fallback: true\n"


class MeshCli:
    def __init__(self, state: Path) -> None:
        self.env = {**os.environ, "PYLON_MESH_STATE": str(state)}

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "pylon.cli", "mesh", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"pylon mesh {' '.join(args)}: {done.stdout}{done.stderr}")
        return done

    def curl(self, workload: str, url: str) -> tuple[str, str]:
        """(status, body) of GET `url` from inside `workload`."""
        done = self("exec", workload, "--", "curl", "-s", "-m", "5", "-w", "\n%{http_code}", url, check=False)
        body, _, status = done.stdout.rpartition("\n")
        return status, body


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshCli]:
    if subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count("pm-"):
        pytest.skip("a pylon mesh is already up on this machine (pylon mesh down first)")
    base = tmp_path_factory.mktemp("mesh")
    # Unix socket paths (the agents' SDS and xDS sockets under the state) must stay under 108 bytes.
    state = Path(tempfile.mkdtemp(prefix="pm-", dir="/tmp")) / "s"
    state.parent.chmod(0o755)  # Envoy sidecars run as uid 1337 and read their bootstrap below it
    install = base / "install.yaml"
    install.write_text(yaml.safe_dump({"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {
        "components": {"ingressGateways": [{"name": "istio-ingressgateway", "enabled": True, "k8s": {
            "resources": {"requests": {"cpu": "2000m"}},
            "podAnnotations": {"proxy.istio.io/config": QAT_FALLBACK}}}]}}}))  # fmt: skip
    cli = MeshCli(state)
    try:
        up = cli("up", "-f", str(install))
        assert "ignored (Kubernetes only): spec.components.ingressGateways[0].k8s.resources" in up.stderr
        for version, size in (("v1", "100"), ("v2", "222")):  # told apart by their reply's size
            cli("run", f"server-{version}", "--service", "server", "--labels", f"version={version}", "--port", "8080",
                "--", sys.executable, "-m", "pylon.cli", "echo", "--port", "8080", "--body-size", size)
        cli("run", "client", "--port", "9000", "--", "sleep", "600")
        cli("run", "plain", "--no-sidecar", "--port", "8080", "--", sys.executable, "-m", "pylon.cli", "echo",
            "--port", "8080")
        cli("run", "envoy-echo", "--proxy", "envoy", "--port", "8080", "--", sys.executable, "-m", "pylon.cli", "echo",
            "--port", "8080")
        yield cli
    finally:
        cli("down", check=False)
        shutil.rmtree(state.parent, ignore_errors=True)


def test_workloads_talk_by_name_through_both_sidecars_with_mtls(mesh: MeshCli) -> None:
    status, body = mesh.curl("client", f"{SERVER}/debug")
    assert status == "200", body
    assert "request from 127.0.0.6" in body  # the server's sidecar handed it over (inbound passthrough)
    xfcc = next(line for line in body.splitlines() if line.startswith("x-forwarded-client-cert:"))
    assert "URI=spiffe://cluster.local/ns/default/sa/client" in xfcc  # mTLS: the client's identity, verified
    assert "By=spiffe://cluster.local/ns/default/sa/server-v" in xfcc


def test_envoy_and_pylon_sidecars_talk_mtls_both_ways(mesh: MeshCli) -> None:
    """Real Envoy as one pod's sidecar (uid 1337, as in Istio) and pylon proxy as the others': mTLS each way, each
    server-side sidecar reporting the verified SPIFFE id of the other."""
    status, body = mesh.curl("envoy-echo", f"{SERVER}/debug")  # Envoy client sidecar -> pylon server sidecar
    assert status == "200" and "URI=spiffe://cluster.local/ns/default/sa/envoy-echo" in body, body
    status, body = mesh.curl("client", "http://envoy-echo.default.svc.cluster.local:8080/debug")  # pylon -> Envoy
    assert status == "200" and "URI=spiffe://cluster.local/ns/default/sa/client" in body, body


def test_a_pod_without_sidecar_talks_plaintext_both_ways(mesh: MeshCli) -> None:
    """Auto mTLS: the client's sidecar sends plaintext to a workload without one (no tlsMode label); a pod
    outside the mesh reaches a meshed server in plaintext (PERMISSIVE), so its sidecar sees no client identity."""
    status, body = mesh.curl("client", "http://plain.default.svc.cluster.local:8080/debug")
    assert status == "200" and "x-forwarded-client-cert" not in body and "127.0.0.6" not in body
    status, body = mesh.curl("plain", f"{SERVER}/debug")
    assert status == "200" and "URI=spiffe" not in body


def test_names_resolve_through_the_sidecars_dns_proxy(mesh: MeshCli, tmp_path: Path) -> None:
    """The client pod's hosts file holds only localhost: its lookups are captured to its agent's DNS proxy, which
    answers from pilot's name table - the service by its name and, through the search list, its short names, a
    ServiceEntry applied later, and a query sent straight to a resolver address nobody listens on."""
    assert "server" not in mesh("exec", "client", "--", "cat", "/etc/hosts").stdout
    vip = mesh("exec", "client", "--", "getent", "ahostsv4", "server.default.svc.cluster.local").stdout.split()[0]
    assert vip.startswith("10.77.128.")
    for name in ("server", "server.default"):
        assert mesh("exec", "client", "--", "getent", "ahostsv4", name).stdout.split()[0] == vip, name
    late = tmp_path / "late.yaml"
    late.write_text(yaml.safe_dump({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                                    "metadata": {"name": "late", "namespace": "default"},
                                    "spec": {"hosts": ["api.late.test"], "addresses": ["10.77.128.250"],
                                             "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]}}))
    mesh("apply", "-f", str(late))
    eventually(lambda: "10.77.128.250" in mesh("exec", "client", "--", "getent", "ahostsv4", "api.late.test",
                                               check=False).stdout, timeout=10)  # fmt: skip
    ask = ("import dns.message, dns.query; print(dns.query.udp(dns.message.make_query("
           "'server.default.svc.cluster.local', 'A'), '10.77.0.1', timeout=3).answer[0])")
    assert vip in mesh("exec", "client", "--", sys.executable, "-c", ask).stdout  # captured, answered by the agent
    # A pod without a sidecar resolves from its hosts file.
    assert mesh("exec", "plain", "--", "getent", "ahostsv4", "server.default.svc.cluster.local").stdout.split()[0] == vip


def test_an_authorization_policy_denies_a_path(mesh: MeshCli, tmp_path: Path) -> None:
    policy = tmp_path / "deny-admin.yaml"
    policy.write_text(yaml.safe_dump({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-admin", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "server"}}, "action": "DENY",
                 "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}}))  # fmt: skip
    mesh("apply", "-f", str(policy))
    eventually(lambda: mesh.curl("client", f"{SERVER}/admin/x")[0] == "403", timeout=10)
    assert mesh.curl("client", f"{SERVER}/debug")[0] == "200"


def test_apply_refuses_a_bad_resource_naming_the_field(mesh: MeshCli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                                   "metadata": {"name": "v"}, "spec": {"hosts": ["x"], "htp": []}}))
    done = mesh("apply", "-f", str(bad), check=False)
    assert done.returncode == 1 and "htp" in done.stderr and "bad.yaml" in done.stderr


def test_the_ingress_gateway_terminates_tls_with_a_credential_and_routes_to_the_server(mesh: MeshCli,
                                                                                       tmp_path: Path) -> None:
    """The install's gateway, its key provider from the pod annotation (QAT: no device here, so the key is used
    in software, as `fallback: true` asks, with a warning), a Gateway with credentialName and its Secret applied
    as with kubectl, reached from the client pod over TLS."""
    import base64

    from pylon.identity.certs import issue_leaf, make_ca

    ca = make_ca()
    leaf = issue_leaf(ca, common_name="gw.example.com", dns_names=["gw.example.com"])
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
              "metadata": {"name": "gw-cred", "namespace": "istio-system"},
              "data": {"tls.crt": base64.b64encode(leaf.cert_pem).decode(),
                       "tls.key": base64.b64encode(leaf.key_pem).decode()}}  # fmt: skip
    gateway = {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
               "metadata": {"name": "gw", "namespace": "istio-system"},
               "spec": {"selector": {"istio": "ingressgateway"}, "servers": [{
                   "port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["gw.example.com"],
                   "tls": {"mode": "SIMPLE", "credentialName": "gw-cred"}}]}}  # fmt: skip
    route = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
             "metadata": {"name": "via-gw", "namespace": "istio-system"},
             "spec": {"hosts": ["gw.example.com"], "gateways": ["gw"],
                      "http": [{"route": [{"destination": {"host": "server.default.svc.cluster.local",
                                                           "port": {"number": 8080}}}]}]}}  # fmt: skip
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump_all([secret, gateway, route]))
    mesh("apply", "-f", str(tmp_path / "gw.yaml"))
    address = next(line.split("\t")[2] for line in mesh("status").stdout.splitlines()
                   if line.startswith("istio-ingressgateway"))

    def through_gateway() -> str:
        done = mesh("exec", "client", "--", "curl", "-s", "-m", "5", "--cacert", str(tmp_path / "ca.pem"),
                    "--resolve", f"gw.example.com:443:{address}", "-o", "/dev/null", "-w", "%{http_code}",
                    "https://gw.example.com/debug", check=False)  # fmt: skip
        return done.stdout

    eventually(lambda: through_gateway() == "200", timeout=20)
    log = (Path(mesh.env["PYLON_MESH_STATE"]) / "logs" / "istio-ingressgateway-sidecar.log").read_text()
    assert "private key provider qat cannot run here" in log and "fallback: true" in log


def test_a_virtual_service_weight_shift_shows_up_at_once(mesh: MeshCli, tmp_path: Path) -> None:
    """Subsets by version, then all traffic to v1, then all to v2: every request follows within a second."""
    rule = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "server", "namespace": "default"},
            "spec": {"host": "server.default.svc.cluster.local",
                     "subsets": [{"name": v, "labels": {"version": v}} for v in ("v1", "v2")]}}  # fmt: skip

    def route_all_to(subset: str) -> None:
        service = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                   "metadata": {"name": "server", "namespace": "default"},
                   "spec": {"hosts": ["server.default.svc.cluster.local"], "http": [{"route": [
                       {"destination": {"host": "server.default.svc.cluster.local", "subset": subset},
                        "weight": 100}]}]}}  # fmt: skip
        (tmp_path / "routing.yaml").write_text(yaml.safe_dump_all([rule, service]))
        mesh("apply", "-f", str(tmp_path / "routing.yaml"))

    def sizes() -> set[int]:
        return {len(mesh.curl("client", f"{SERVER}/")[1]) for _ in range(6)}

    route_all_to("v1")
    eventually(lambda: sizes() == {100}, timeout=10)
    route_all_to("v2")
    eventually(lambda: sizes() == {222}, timeout=10)


def test_status_shows_every_proxy_synced_and_logs_are_there(mesh: MeshCli) -> None:
    def rows() -> dict[str, list[str]]:
        lines = mesh("status").stdout.splitlines()
        table = lines[lines.index(next(line for line in lines if line.startswith("NAME\t"))) + 1:]
        return {line.split("\t")[0]: line.split("\t")[1:] for line in table if not line.startswith("rejected")}

    def synced() -> bool:
        found = rows()
        pods = {"client-0.default", "server-v1-0.default", "server-v2-0.default", "envoy-echo-0.default",
                "istio-ingressgateway-0.istio-system"}
        return pods <= set(found) and all(status[:4] == ["SYNCED"] * 4 for status in found.values())

    eventually(synced, timeout=10)
    logs = mesh("logs", "server-v1").stdout
    assert "==> server-v1.log <==" in logs and "==> server-v1-sidecar.log <==" in logs
    assert mesh("logs", "nobody", check=False).returncode == 1


def test_down_leaves_nothing_behind(mesh: MeshCli) -> None:
    state = Path(mesh.env["PYLON_MESH_STATE"])
    pids = [int(p) for ns in ("pm-server-v1", "pm-client", "pm-istiod")
            for p in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()]
    assert pids
    mesh("down")
    assert "pm-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not list(Path("/etc/netns").glob("pm-*")) if Path("/etc/netns").exists() else True
    assert not state.exists()
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert "nothing to remove" in mesh("down").stdout  # safe to run twice
