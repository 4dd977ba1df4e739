"""A listener's `filter_chain_matcher` (the chain named by a matcher tree), beside Envoy 1.40.

The docs' scenarios (matching/_include/listener_tls.yaml, listener_complicated.yaml) with certificates of our
own: TLS or plain text by `TransportProtocolInput` (tls_inspector), then the SNI; the destination port, then
the client's address through an `xds.type.matcher.v3.IPMatcher` (longest range first, a nested miss going on to
shorter ranges, `exclusive` ranges passed over after the first). No match takes the default chain; an action
naming no chain closes the connection and counts `no_filter_chain_match`. The chains' own filter_chain_match
are ignored. Chains answer with their names.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from pylon.identity.certs import PemFiles, issue_leaf, make_ca, write_pem_files
from tests.conftest import free_port
from tests.proxy.conftest import ENVOY_BIN, ProxyLauncher, RunningProxy, proxy_args, wait_until, write_bootstrap
from tests.proxy.test_proxy_filter_chains import TLS_INSPECTOR, cidr, http_chain, http_get, listener, tls_http

NETWORK = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3."
STRING = "type.googleapis.com/google.protobuf.StringValue"
IP_MATCHER = "type.googleapis.com/xds.type.matcher.v3.IPMatcher"


def network_input(name: str) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": NETWORK + name}}


def chain(name: str) -> dict[str, Any]:
    return {"action": {"name": name, "typed_config": {"@type": STRING, "value": name}}}


def transport_matcher() -> dict[str, Any]:
    return {"matcher_tree": {"input": network_input("TransportProtocolInput"), "exact_match_map": {"map": {
        "tls": {"matcher": {"matcher_tree": {"input": network_input("ServerNameInput"),
                                             "exact_match_map": {"map": {"b.example": chain("sni-b")}}},
                            "on_no_match": chain("tls")}}}}},
            "on_no_match": chain("plaintext")}


def source_matcher(port: int) -> dict[str, Any]:
    ranges = [
        {"ranges": [cidr("127.0.0.1", 32)], "on_match": {"matcher": {"matcher_tree": {
            "input": network_input("DirectSourceIPInput"),
            "exact_match_map": {"map": {"127.0.0.9": chain("never")}}}}}},  # a nested miss: shorter ranges next
        {"ranges": [cidr("127.0.0.0", 24)], "exclusive": True, "on_match": chain("exclusive")},
        {"ranges": [cidr("127.0.0.0", 16)], "on_match": chain("sixteen")},
        {"ranges": [cidr("127.0.0.3", 32)], "on_match": chain("nosuch")},
    ]
    return {"matcher_tree": {"input": network_input("DestinationPortInput"), "exact_match_map": {"map": {
        str(port): {"matcher": {"matcher_tree": {"input": network_input("SourceIPInput"), "custom_match": {
            "name": "ip", "typed_config": {"@type": IP_MATCHER, "range_matchers": ranges}}}}}}}}}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PemFiles]:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca()
    return {cn: write_pem_files(directory, cn, issue_leaf(ca, common_name=cn, dns_names=dns), ca)
            for cn, dns in (("a-cert", ["a.example"]), ("b-cert", ["b.example"]))}


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, certs: dict[str, PemFiles]
          ) -> Iterator[RunningProxy]:
    sources_port = free_port()
    # filter_chain_match on a chain is ignored with a matcher: this one would never match a loopback client
    ignored = {"source_prefix_ranges": [cidr("10.0.0.0", 8)]}
    listeners = [
        listener("transport", free_port(), [http_chain("tls", tls=certs["a-cert"]),
                                            http_chain("sni-b", tls=certs["b-cert"]),
                                            http_chain("plaintext", ignored)],
                 filters=[TLS_INSPECTOR], filter_chain_matcher=transport_matcher()),
        listener("sources", sources_port, [http_chain(name) for name in ("sixteen", "exclusive", "never")],
                 default_filter_chain=http_chain("default"), filter_chain_matcher=source_matcher(sources_port)),
    ]
    launcher = ProxyLauncher(tmp_path_factory.mktemp(request.param))
    try:
        yield launcher.start(listeners, [], implementation=request.param)
    finally:
        launcher.close()


def plain_get(port: int, source: str = "127.0.0.1") -> str | None:
    """The body of `GET /` from `source`, or None when the proxy closed the connection."""
    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        try:
            return http_get(sock)[1]
        except (AssertionError, ConnectionResetError):
            return None


def test_transport_protocol_then_server_name(proxy: RunningProxy, certs: dict[str, PemFiles]) -> None:
    port = proxy.ports["transport"]
    ca = certs["a-cert"].ca
    assert plain_get(port) == "plaintext"
    assert tls_http(port, ca, "a.example") == ("a-cert", "tls")
    assert tls_http(port, ca, "b.example") == ("b-cert", "sni-b")
    assert tls_http(port, ca, None) == ("a-cert", "tls")


@pytest.mark.parametrize(("source", "expected"), [
    ("127.0.0.1", "sixteen"),  # /32's nested matcher misses, the /24 is exclusive: passed over
    ("127.0.0.2", "exclusive"),  # the /24 is the first range holding it: taken although exclusive
    ("127.1.0.1", "default"),  # no range holds it: no match, the default chain
])
def test_destination_port_then_source_ranges(proxy: RunningProxy, source: str, expected: str) -> None:
    assert plain_get(proxy.ports["sources"], source) == expected


def test_an_unknown_chain_name_closes_the_connection(proxy: RunningProxy) -> None:
    port = proxy.ports["sources"]
    stat = f"listener.127.0.0.1_{port}.no_filter_chain_match"
    before = proxy.stats().get(stat, 0)
    assert plain_get(port, "127.0.0.3") is None
    wait_until(lambda: proxy.stats().get(stat, 0) == before + 1, timeout=10)


@pytest.mark.parametrize(("names", "error"), [
    (["a", ""], '"name" field is required when using a listener matcher'),
    (["a", "a"], '"name" field is duplicated with value'),
])
def test_chains_must_have_unique_names(tmp_path: Path, names: list[str], error: str) -> None:
    """Both proxies refuse a matcher over chains without a name, or with one name twice."""
    chains = [http_chain("x") | {"name": name} for name in names]
    config = listener("l", free_port(), chains, filter_chain_matcher={"on_no_match": chain("a")})
    path = write_bootstrap(tmp_path / "names.yaml", [config], [], free_port())
    commands = [[*proxy_args(path)[:4], "--mode", "validate", "-c", str(path)]]
    if ENVOY_BIN.exists():
        commands.append([str(ENVOY_BIN), "--mode", "validate", "-c", str(path)])
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and error in done.stdout + done.stderr, command[0]
