"""Integration: sidecar capture - nft REDIRECT rules send connections to a `use_original_dst` listener, which
hands each to the listener of the address it was going to, and ORIGINAL_DST clusters connect where it was
going; through pylon and Envoy alike.

Everything runs inside a network namespace this test creates (its own loopback, its own nft table), so
nothing touches the host's network and nothing leaves the machine. In the namespace, connections to
127.0.0.1:18080, :18081 and :18083 are redirected to the proxy's :15001 (`virtualOutbound`, as Istio names
it) unless they come from 127.0.0.6, the address the proxy's ORIGINAL_DST cluster connects from (Istio's
rule for its inbound clusters): without `upstream_bind_config` its connections would be captured again and
loop. 18080 has a listener of its own that binds nothing (`bind_to_port: false`): /direct answers
"captured-18080", everything else goes to the ORIGINAL_DST cluster, i.e. to the echo server really on
127.0.0.1:18080. 18081 has no listener, so `virtualOutbound` keeps it and its filter chains match the
original destination port (a chain for 18081 answers "virtual-18081"); 18083 goes to the default chain, a
tcp_proxy through the ORIGINAL_DST cluster to the echo server on 18083. A connection made to :15001 itself
is not redirected and takes the chain for port 15001 (Istio's blackhole chain: passing it through would
connect the proxy to itself).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.proxy.conftest import ENVOY_BIN, HCM_TYPE, ROUTER_TYPE, TCP_PROXY_TYPE, write_bootstrap

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nft"),
                                reason="needs root, iproute2 and nftables (network namespaces of our own)")

ADMIN, CAPTURE, SOURCE = 15000, 15001, "127.0.0.6"
#: The real services behind the captured ports, told apart by the size of their replies.
ECHOES = {18080: 180, 18083: 183}
RULES = f"""
table inet capture {{
  chain output {{
    type nat hook output priority -100;
    ip saddr != {SOURCE} ip daddr 127.0.0.1 tcp dport {{ 18080, 18081, 18083 }} redirect to :{CAPTURE}
  }}
}}
"""


class Namespace:
    """A network namespace of our own with the capture rules; processes started in it die with it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.procs: list[subprocess.Popen] = []
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.run("ip", "link", "set", "lo", "up")
        subprocess.run(["ip", "netns", "exec", name, "nft", "-f", "-"], input=RULES.encode(), check=True)

    def run(self, *cmd: str, timeout: float = 10) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], capture_output=True, timeout=timeout)

    def spawn(self, *cmd: str) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def get(self, url: str) -> str:
        """curl inside the namespace: the body, or "" when the proxy closed the connection."""
        return self.run("curl", "-s", "--max-time", "5", url).stdout.decode()

    def wait_ready(self, url: str, proc: subprocess.Popen) -> None:
        self.wait_ready_from(url, proc, "127.0.0.1")

    def wait_ready_from(self, url: str, proc: subprocess.Popen, source: str) -> None:
        """Until `url` answers 200 to a client at `source` (127.0.0.6 reaches a captured port uncaptured)."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            answer = self.run("curl", "-s", "--interface", source, "-o", "/dev/null", "-w", "%{http_code}", url)
            if answer.stdout == b"200":
                return
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read().decode(errors="replace") if proc.stdout else "exited")
            time.sleep(0.1)
        raise TimeoutError(url)

    def close(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def _hcm(name: str, routes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM_TYPE, "stat_prefix": name,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]}}


def _answer(prefix: str, body: str) -> dict[str, Any]:
    return {"match": {"prefix": prefix}, "direct_response": {"status": 200, "body": {"inline_string": body}}}


def _listeners() -> list[dict[str, Any]]:
    passthrough = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": TCP_PROXY_TYPE, "stat_prefix": "passthrough", "cluster": "passthrough"}}
    return [
        {"name": "virtualOutbound", "address": {"socket_address": {"address": "0.0.0.0", "port_value": CAPTURE}},
         "use_original_dst": True,
         "filter_chains": [
             {"name": "port-18081", "filter_chain_match": {"destination_port": 18081},
              "filters": [_hcm("virtual", [_answer("/", "virtual-18081")])]},
             {"name": "blackhole", "filter_chain_match": {"destination_port": CAPTURE},
              "filters": [_hcm("blackhole", [_answer("/", "blackhole")])]},
         ],
         "default_filter_chain": {"name": "passthrough", "filters": [passthrough]}},
        {"name": "0.0.0.0_18080", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 18080}},
         "bind_to_port": False, "filter_chains": [{"filters": [_hcm("port18080", [
             _answer("/direct", "captured-18080"), {"match": {"prefix": "/"}, "route": {"cluster": "passthrough"}}])]}]},
    ]


def _passthrough_cluster() -> dict[str, Any]:
    return {"name": "passthrough", "connect_timeout": "1s", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
            "upstream_bind_config": {"source_address": {"address": SOURCE, "port_value": 0}}}


@pytest.fixture(params=["pylon", "envoy"])
def captured(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Namespace]:
    if request.param == "envoy" and not ENVOY_BIN.exists():
        pytest.skip(f"Envoy, the reference, is not installed at {ENVOY_BIN}")
    namespace = Namespace(f"pylon-od-{os.getpid()}-{request.param}")
    try:
        for port, size in ECHOES.items():
            echo = namespace.spawn(sys.executable, "-m", "pylon.cli", "echo", "--host", "127.0.0.1", "--port",
                                   str(port), "--body-size", str(size))
            namespace.wait_ready_from(f"http://127.0.0.1:{port}/", echo, SOURCE)
        config = write_bootstrap(tmp_path / "capture.yaml", _listeners(), [_passthrough_cluster()], ADMIN)
        if request.param == "envoy":
            proxy = namespace.spawn(str(ENVOY_BIN), "-c", str(config), "--concurrency", "1", "-l", "warning")
        else:
            proxy = namespace.spawn(sys.executable, "-m", "pylon.cli", "proxy", "-c", str(config), "--concurrency",
                                    "1", "-l", "warning")
        namespace.wait_ready(f"http://127.0.0.1:{ADMIN}/ready", proxy)
        yield namespace
    finally:
        namespace.close()


def test_a_redirected_connection_goes_to_the_listener_of_its_original_destination(captured: Namespace) -> None:
    assert captured.get("http://127.0.0.1:18080/direct") == "captured-18080"


def test_an_original_dst_cluster_connects_where_the_connection_was_going(captured: Namespace) -> None:
    # HTTP: the unbound 18080 listener routes to the ORIGINAL_DST cluster, which reaches the real :18080.
    assert len(captured.get("http://127.0.0.1:18080/")) == ECHOES[18080]
    # TCP: virtualOutbound's default chain passes :18083 through the same cluster.
    assert len(captured.get("http://127.0.0.1:18083/")) == ECHOES[18083]


def test_without_such_a_listener_it_stays_and_chains_match_the_original_port(captured: Namespace) -> None:
    assert captured.get("http://127.0.0.1:18081/") == "virtual-18081"


def test_a_connection_made_to_the_capture_port_itself_stays_there(captured: Namespace) -> None:
    assert captured.get(f"http://127.0.0.1:{CAPTURE}/") == "blackhole"
