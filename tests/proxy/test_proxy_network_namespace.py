"""Listeners (TCP and UDP) in network namespaces (`network_namespace_filepath`) and NetworkNamespaceInput, beside
Envoy 1.40.

Each module run makes two namespaces of its own (unique names, `lo` up, deleted at the end even on failure) and
sends only over loopback inside them, from `ip netns exec NAME curl` (independent of the proxy's own setns code).
A listener bound in namespace A is reachable from A and not from the root namespace; one listener on one IP and
port in A, in B and in the root namespace (additional_addresses) routes by NetworkNamespaceInput to A's and B's
chains, the root namespace's connections to the default chain; on a wildcard address the input reads nothing
(Envoy 1.40: the connection's local address is then the socket's own, without a namespace), so the default chain.
A namespace file that does not exist stops both proxies at start, naming the file; validate mode accepts it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import (ENVOY_BIN, ProxyLauncher, RunningProxy, envoy_args, proxy_args, static_cluster,
                                  wait_until, write_bootstrap)
from tests.proxy.test_proxy_filesystem_xds import EFFECT_S, replace_file
from tests.proxy.test_proxy_filter_chain_matcher import chain, network_input
from tests.proxy.test_proxy_filter_chains import free_wildcard_port, http_chain
from tests.proxy.test_proxy_udp import UdpEcho, _route, udp_listener

NETNS_DIR = "/var/run/netns"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"


class Namespaces:
    """Two fresh network namespaces, `a` and `b`, with loopback up; `close()` deletes them."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        try:
            for key in ("a", "b"):
                name = f"pylon-ns17-{os.getpid()}-{key}"
                subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
                self.names[key] = name
                subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
        except BaseException:
            self.close()
            raise

    def path(self, key: str) -> str:
        return f"{NETNS_DIR}/{self.names[key]}"

    def get(self, key: str | None, port: int) -> str:
        """curl http://127.0.0.1:port/ from namespace `key` (None: the root namespace): the body, or `error rc`."""
        command = ["curl", "-s", "--max-time", "5", f"http://127.0.0.1:{port}/"]
        if key is not None:
            command = ["ip", "netns", "exec", self.names[key], *command]
        done = subprocess.run(command, capture_output=True, timeout=30)
        return done.stdout.decode() if done.returncode == 0 else f"error {done.returncode}"

    def close(self) -> None:
        for name in self.names.values():
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture(scope="module")
def namespaces() -> Iterator[Namespaces]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    spaces = Namespaces()
    try:
        yield spaces
    finally:
        spaces.close()


def address(ip: str, port: int, namespace: str | None = None) -> dict[str, Any]:
    socket_address: dict[str, Any] = {"address": ip, "port_value": port}
    if namespace is not None:
        socket_address["network_namespace_filepath"] = namespace
    return {"socket_address": socket_address}


def namespace_matcher(spaces: Namespaces) -> dict[str, Any]:
    """Envoy's docs' shape: the namespace file names the chain."""
    return {"matcher_tree": {"input": network_input("NetworkNamespaceInput"), "exact_match_map": {"map": {
        spaces.path("a"): chain("chain-a"), spaces.path("b"): chain("chain-b")}}}}


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, namespaces: Namespaces
          ) -> Iterator[RunningProxy]:
    only_a, shared, wildcard, exact = free_port(), free_port(), free_wildcard_port(), free_port()
    listeners = [
        {"name": "only-a", "address": address("127.0.0.1", only_a, namespaces.path("a")),
         "filter_chains": [http_chain("in-a")]},
        {"name": "shared", "address": address("127.0.0.1", shared, namespaces.path("a")),
         "additional_addresses": [{"address": address("127.0.0.1", shared, namespaces.path("b"))},
                                  {"address": address("127.0.0.1", shared)}],
         "filter_chain_matcher": namespace_matcher(namespaces),
         "filter_chains": [http_chain("chain-a"), http_chain("chain-b")],
         "default_filter_chain": http_chain("default")},
        {"name": "wildcard", "address": address("0.0.0.0", wildcard, namespaces.path("a")),
         "filter_chain_matcher": namespace_matcher(namespaces),
         "filter_chains": [http_chain("chain-a"), http_chain("chain-b")],
         "default_filter_chain": http_chain("default")},
        # the supervisor accepts (exact balancing) and hands the connection over: the namespace goes with it
        {"name": "exact-b", "address": address("127.0.0.1", exact, namespaces.path("b")),
         "connection_balance_config": {"exact_balance": {}},
         "filter_chain_matcher": namespace_matcher(namespaces),
         "filter_chains": [http_chain("chain-a"), http_chain("chain-b")],
         "default_filter_chain": http_chain("default")},
    ]
    launcher = ProxyLauncher(tmp_path_factory.mktemp(request.param))
    try:
        # two workers: each address has a socket per worker (SO_REUSEPORT), all made in the namespace
        yield launcher.start(listeners, [], implementation=request.param, concurrency=2)
    finally:
        launcher.close()


def test_a_namespaced_listener_is_reachable_only_in_its_namespace(proxy: RunningProxy, namespaces: Namespaces) -> None:
    port = proxy.ports["only-a"]
    assert namespaces.get("a", port) == "in-a"
    assert namespaces.get("b", port) == "error 7"  # connection refused: nothing listens there
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))


def test_network_namespace_input_names_the_chain(proxy: RunningProxy, namespaces: Namespaces) -> None:
    port = proxy.ports["shared"]
    for _ in range(3):  # several connections: whichever worker's socket takes them
        assert namespaces.get("a", port) == "chain-a"
        assert namespaces.get("b", port) == "chain-b"
        assert namespaces.get(None, port) == "default"  # the root namespace's address: no namespace, no match


def test_a_restarted_worker_serves_the_namespaced_sockets(request: pytest.FixtureRequest, proxy: RunningProxy,
                                                          namespaces: Namespaces) -> None:
    """pylon's workers are processes: one that dies comes back on the supervisor's copies of the same sockets,
    still the namespaces' (Envoy's workers are threads: nothing to restart)."""
    if request.node.callspec.params["proxy"] == "envoy":
        pytest.skip("Envoy has no worker processes")
    old = proxy.worker_pids()
    os.kill(old[0], signal.SIGKILL)
    assert wait_until(lambda: old[0] not in proxy.worker_pids() and len(proxy.worker_pids()) == 2
                      and proxy.admin("/ready").status_code == 200, timeout=30)
    port = proxy.ports["shared"]
    for _ in range(4):  # the kernel hashes connections over both workers' sockets
        assert namespaces.get("a", port) == "chain-a"
        assert namespaces.get("b", port) == "chain-b"


def test_a_handed_over_connection_keeps_its_namespace(proxy: RunningProxy, namespaces: Namespaces) -> None:
    port = proxy.ports["exact-b"]
    assert namespaces.get("b", port) == "chain-b"
    assert namespaces.get("a", port) == "error 7"


def test_a_wildcard_address_gives_the_input_no_namespace(proxy: RunningProxy, namespaces: Namespaces) -> None:
    assert namespaces.get("a", proxy.ports["wildcard"]) == "default"


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_an_lds_listener_binds_in_its_namespace(tmp_path: Path, implementation: str, namespaces: Namespaces) -> None:
    """Bound in the namespace when the update is checked; a modified version takes over the same socket."""
    lds, port = tmp_path / "lds.yaml", free_port()

    def version(number: str, body: str, *more: dict[str, Any]) -> dict[str, Any]:
        listener = {"@type": LISTENER_TYPE, "name": "lds-a",
                    "address": address("127.0.0.1", port, namespaces.path("a")),
                    "filter_chain_matcher": namespace_matcher(namespaces),
                    "filter_chains": [http_chain(body) | {"name": "chain-a"}, http_chain("chain-b")]}
        return {"version_info": number, "resources": [listener, *more]}

    replace_file(lds, version("1", "first"))
    extra = {"node": {"id": "test", "cluster": "test"},
             "dynamic_resources": {"lds_config": {"path_config_source": {"path": str(lds)},
                                                  "resource_api_version": "V3"}}}
    launcher = ProxyLauncher(tmp_path)
    try:
        proxy = launcher.start([], [], implementation=implementation, bootstrap_extra=extra)
        assert wait_until(lambda: namespaces.get("a", port) == "first", timeout=EFFECT_S)
        assert namespaces.get(None, port) == "error 7"
        replace_file(lds, version("2", "second"))
        assert wait_until(lambda: namespaces.get("a", port) == "second", timeout=EFFECT_S)
        assert namespaces.get(None, port) == "error 7"
        # a listener whose namespace file is missing: the update is rejected (Envoy: listener_create_failure too)
        lost = {"@type": LISTENER_TYPE, "name": "lost", "filter_chains": [http_chain("x")],
                "address": address("127.0.0.1", free_port(), f"{NETNS_DIR}/pylon-ns17-missing-{os.getpid()}")}
        replace_file(lds, version("3", "second", lost))
        assert wait_until(lambda: proxy.stats().get("listener_manager.lds.update_rejected") == 1, timeout=EFFECT_S)
        assert namespaces.get("a", port) == "second"
    finally:
        launcher.close()


def _single_listener_bootstrap(path: Path, namespace: str) -> Path:
    listener = {"name": "lost", "address": address("127.0.0.1", free_port(), namespace),
                "filter_chains": [http_chain("x")]}
    return write_bootstrap(path, [listener], [], free_port())


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_a_missing_namespace_file_stops_the_proxy(tmp_path: Path, implementation: str) -> None:
    """Validate mode accepts the file unseen (as Envoy's); serving, the listener cannot be created and the proxy
    exits, saying which file (pylon: and which listener)."""
    missing = f"{NETNS_DIR}/pylon-ns17-missing-{os.getpid()}"
    config = _single_listener_bootstrap(tmp_path / "missing.yaml", missing)
    if implementation == "envoy":
        if not ENVOY_BIN.exists():
            pytest.skip("Envoy is not installed")
        serve, validate = envoy_args(config), [str(ENVOY_BIN), "--mode", "validate", "-c", str(config)]
    else:
        serve = proxy_args(config)
        validate = [*serve[:4], "--mode", "validate", "-c", str(config)]
    checked = subprocess.run(validate, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    served = subprocess.run(serve, capture_output=True, text=True, timeout=60)
    output = served.stdout + served.stderr
    assert served.returncode != 0
    assert f"failed to open netns file {missing}: No such file or directory" in output
    if implementation == "pylon":
        assert "static_resources.listeners[0] (lost)" in output


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_an_endpoint_cannot_name_a_namespace(tmp_path: Path, implementation: str) -> None:
    cluster = {"name": "c", "type": "STATIC", "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": address("127.0.0.1", 80, f"{NETNS_DIR}/x")}}]}]}}
    config = write_bootstrap(tmp_path / "endpoint.yaml", [], [cluster], free_port())
    if implementation == "envoy":
        if not ENVOY_BIN.exists():
            pytest.skip("Envoy is not installed")
        command = [str(ENVOY_BIN), "--mode", "validate", "-c", str(config)]
    else:
        command = [*proxy_args(config)[:4], "--mode", "validate", "-c", str(config)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "Invalid host configuration: hosts cannot specify network namespaces with their address" in \
        done.stdout + done.stderr


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_a_udp_listener_in_a_namespace(tmp_path: Path, implementation: str, namespaces: Namespaces) -> None:
    """A UDP proxy listener in A takes A's datagrams and answers from its namespaced socket (the upstream socket is
    the proxy's own, in the root namespace). Its route matcher's NetworkNamespaceInput reads nothing, as Envoy
    1.40's (observed: a datagram's local address carries no namespace), so on_no_match's route is taken."""
    echoes = [UdpEcho(b"a:"), UdpEcho(b"b:")]
    port = free_port()
    matcher = {"matcher_tree": {"input": network_input("NetworkNamespaceInput"), "exact_match_map": {"map": {
        namespaces.path("a"): _route("a")}}}, "on_no_match": _route("b")}
    listener = udp_listener(port, matcher=matcher)
    listener["address"]["socket_address"]["network_namespace_filepath"] = namespaces.path("a")
    del listener["listener_filters"][0]["typed_config"]["cluster"]
    launcher = ProxyLauncher(tmp_path)
    try:
        launcher.start([listener], [static_cluster(name, [echo.port]) for name, echo in zip("ab", echoes)],
                       implementation=implementation)
        client = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5); "
                  f"s.sendto(b'hi', ('127.0.0.1', {port})); print(s.recvfrom(100)[0].decode(), end='')")
        done = subprocess.run(["ip", "netns", "exec", namespaces.names["a"], sys.executable, "-c", client],
                              capture_output=True, text=True, timeout=30)
        assert done.stdout == "b:hi", done.stderr
    finally:
        launcher.close()
        for echo in echoes:
            echo.close()
