"""Integration: HTTP/2 upstreams (issue 16's upstream half), side by side with Envoy 1.40.

Every scenario runs through pylon and Envoy on the same bootstrap, with upstreams nobody here wrote: a
grpcio server (`grpc_upstream.EchoServer`) for gRPC from a grpcio client (h2c downstream, h2c upstream), and
nghttpd (nghttp2-server) for an HTTP/1.1 client's requests translated to HTTP/2. Outcomes (statuses, messages,
trailers, what the upstream saw, the connection counts) must agree between the two proxies.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import grpc
import httpx
import pytest
import ssl

from pylon.identity.certs import make_test_pki
from tests.conftest import free_port
from tests.proxy.conftest import (ENVOY_BIN, UPSTREAM_TLS_TYPE, ProxyLauncher, RunningProxy, http_listener, json_access_log,
                                  read_json_lines, route, static_cluster, wait_until)  # fmt: skip
from tests.proxy.grpc_upstream import EchoServer, ResettingH2Upstream, method
from tests.proxy.upstreams import Upstream

IMPLEMENTATIONS = ("pylon", "envoy")
OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
NGHTTPD = shutil.which("nghttpd") or "/usr/sbin/nghttpd"


def h2_options(**http2: Any) -> dict[str, Any]:
    """A cluster's typed HttpProtocolOptions speaking HTTP/2 upstream with `http2` as its Http2ProtocolOptions."""
    return {"typed_extension_protocol_options": {OPTIONS_KEY: {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": http2}}}}


class Nghttpd:
    """nghttpd --no-tls serving a directory of files (and echoing uploads) on a free port."""

    def __init__(self, directory: Path, *args: str) -> None:
        self.root = directory / "htdocs"
        self.root.mkdir(exist_ok=True)
        (self.root / "hello.txt").write_bytes(b"hello from nghttpd\n")
        (self.root / "big.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
        self.port = free_port()
        self.proc = subprocess.Popen([NGHTTPD, "--no-tls", "--echo-upload", "-d", str(self.root), *args,
                                      str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_until(lambda: _listening(self.port), timeout=10)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class Gateways:
    """pylon and Envoy on one bootstrap: listener `front` (codec AUTO: h2c or HTTP/1.1) routing `/test.Echo/` to
    cluster `echo` (the grpcio server, HTTP/2) and the rest to `web` (nghttpd, HTTP/2); listener `capped` to
    `echo_capped` (max_concurrent_streams 2)."""

    def __init__(self, directory: Path) -> None:
        self.echo = EchoServer()
        # grpcio ends each connection with GOAWAY after 300 ms (then 10 s of grace for the streams it took).
        self.aging = EchoServer(**{"grpc.max_connection_age_ms": 300, "grpc.max_connection_age_grace_ms": 10000})
        self.resetting = ResettingH2Upstream()
        self.pki = make_test_pki(directory / "pki")
        self.secure = EchoServer(tls=(self.pki.server_rsa.key.read_bytes(), self.pki.server_rsa.cert.read_bytes()))
        http1_only = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        http1_only.load_cert_chain(str(self.pki.server_rsa.cert), str(self.pki.server_rsa.key))
        http1_only.set_alpn_protocols(["http/1.1"])
        self.https1 = Upstream(tls=http1_only)  # an HTTPS server whose ALPN picks HTTP/1.1
        self.web = Nghttpd(directory)
        self.launcher = ProxyLauncher(directory)
        self.proxies: dict[str, RunningProxy] = {}
        self.log: dict[str, Path] = {}
        for impl in IMPLEMENTATIONS:
            if impl == "envoy" and not ENVOY_BIN.exists():
                continue
            self.log[impl] = directory / f"{impl}-access.log"
            routes = [route("/test.Echo/", "echo", timeout="20s"), route("/reset", "resetting", timeout="10s"),
                      route("/", "web", timeout="10s")]
            listeners = [
                http_listener("front", free_port(), routes, access_log=json_access_log(self.log[impl])),
                http_listener("capped", free_port(), [route("/", "echo_capped", timeout="20s")]),
                http_listener("aging", free_port(), [route("/", "echo_aging", timeout="20s")]),
                http_listener("follow", free_port(), [route("/", "web_follow", timeout="10s")]),
                http_listener("tls_up", free_port(), [route("/", "echo_tls", timeout="10s")]),
                http_listener("auto_h2", free_port(), [route("/", "auto_h2", timeout="10s")]),
                http_listener("auto_h1", free_port(), [route("/", "auto_h1", timeout="10s")]),
                http_listener("mirrored", free_port(), [route("/", "web", timeout="10s", request_mirror_policies=[
                    {"cluster": "resetting"}])]),
                http_listener("wrong_san", free_port(), [route("/", "echo_tls_wrong_san", timeout="10s")]),
            ]
            follow = {"typed_extension_protocol_options": {OPTIONS_KEY: {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}}}}}
            auto = {"typed_extension_protocol_options": {OPTIONS_KEY: {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "auto_config": {"http_protocol_options": {}, "http2_protocol_options": {}}}}}
            clusters = [static_cluster("echo", [self.echo.port], **h2_options()),
                        static_cluster("echo_capped", [self.echo.port], **h2_options(max_concurrent_streams=2)),
                        static_cluster("echo_aging", [self.aging.port], **h2_options()),
                        static_cluster("resetting", [self.resetting.port], **h2_options()),
                        static_cluster("web", [self.web.port], http2_protocol_options={}),
                        static_cluster("web_follow", [self.web.port], **follow),
                        static_cluster("echo_tls", [self.secure.port], **h2_options(), **self.tls("localhost")),
                        static_cluster("echo_tls_wrong_san", [self.secure.port], **h2_options(),
                                       **self.tls("other.example")),
                        static_cluster("auto_h2", [self.secure.port], **auto, **self.tls("localhost")),
                        static_cluster("auto_h1", [self.https1.port], **auto, **self.tls("localhost"))]
            self.proxies[impl] = self.launcher.start(listeners, clusters, implementation=impl)

    def tls(self, san: str) -> dict[str, Any]:
        """A cluster's TLS to the grpcio TLS server: the test CA, SNI localhost, the server's DNS SAN must be `san`.
        No alpn_protocols: an HTTP/2 cluster offers `h2` by itself, as Envoy's does (grpcio refuses a client that
        does not)."""
        return {"transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": UPSTREAM_TLS_TYPE, "sni": "localhost", "common_tls_context": {"validation_context": {
                "trusted_ca": {"filename": str(self.pki.ca.cert)},
                "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": san}}]}}}}}

    def channel(self, impl: str, listener: str = "front") -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.proxies[impl].ports[listener]}", options=[
            ("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)])

    def close(self) -> None:
        self.launcher.close()
        self.echo.close()
        self.aging.close()
        self.resetting.close()
        self.secure.close()
        self.https1.close()
        self.web.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    gateways = Gateways(tmp_path_factory.mktemp("h2up"))
    try:
        yield gateways
    finally:
        gateways.close()


def each(gw: Gateways) -> list[str]:
    return list(gw.proxies)


def test_grpc_unary_with_trailers(gw: Gateways) -> None:
    outcomes = {}
    for impl in each(gw):
        with gw.channel(impl) as channel:
            reply, call = method(channel, "unary_unary", "Unary").with_call(b"ping", timeout=10)
            outcomes[impl] = (reply, call.code(), dict(call.trailing_metadata()).get("x-trailer"))
    assert outcomes["pylon"] == (b"ping", grpc.StatusCode.OK, "t1")
    assert len(set(outcomes.values())) == 1, outcomes


@pytest.mark.parametrize("request_, code, message", [
    (b"fail:INVALID_ARGUMENT:bad input", grpc.StatusCode.INVALID_ARGUMENT, "bad input"),
    (b"trailers-only", grpc.StatusCode.NOT_FOUND, "nothing here"),
])  # fmt: skip
def test_grpc_errors_and_trailers_only(gw: Gateways, request_: bytes, code: grpc.StatusCode, message: str) -> None:
    outcomes = {}
    for impl in each(gw):
        with gw.channel(impl) as channel, pytest.raises(grpc.RpcError) as info:
            method(channel, "unary_unary", "Unary")(request_, timeout=10)
        outcomes[impl] = (info.value.code(), info.value.details())
    assert outcomes["pylon"] == (code, message)
    assert len(set(outcomes.values())) == 1, outcomes


def test_grpc_streaming_three_ways(gw: Gateways) -> None:
    outcomes = {}
    for impl in each(gw):
        with gw.channel(impl) as channel:
            split = list(method(channel, "unary_stream", "Split")(b"abcdef", timeout=10))
            joined = method(channel, "stream_unary", "Join")(iter([b"x" * 10, b"y" * 100000, b"z"]), timeout=10)
            bidi = list(method(channel, "stream_stream", "Bidi")(iter([b"one", b"two", b"three"]), timeout=10))
            outcomes[impl] = (split, joined, bidi)
    assert outcomes["pylon"] == ([b"a", b"b", b"c", b"d", b"e", b"f"], b"x" * 10 + b"y" * 100000 + b"z",
                                 [b"ONE", b"TWO", b"THREE"])
    assert len({repr(o) for o in outcomes.values()}) == 1


def test_grpc_bidi_interleaves(gw: Gateways) -> None:
    """Each message's answer comes back before the next is sent: the proxy forwards as it goes, both ways."""
    for impl in each(gw):
        with gw.channel(impl) as channel:
            outbox: list[bytes] = []
            ready = threading.Semaphore(0)

            def requests() -> Iterator[bytes]:
                for word in (b"a", b"b", b"c"):
                    outbox.append(word)
                    yield word
                    assert ready.acquire(timeout=10), f"{impl}: no answer to {word!r} before the next message"

            answers = []
            for answer in method(channel, "stream_stream", "Bidi")(requests(), timeout=20):
                answers.append(answer)
                ready.release()
            assert answers == [b"A", b"B", b"C"], impl


def test_grpc_large_messages_both_ways(gw: Gateways) -> None:
    size = 6 * 1024 * 1024
    for impl in each(gw):
        with gw.channel(impl) as channel:
            assert len(method(channel, "unary_unary", "Big")(str(size).encode(), timeout=30)) == size, impl
            assert method(channel, "stream_unary", "Join")(iter([b"q" * size]), timeout=30) == b"q" * size, impl


def test_grpc_deadline_exceeded(gw: Gateways) -> None:
    for impl in each(gw):
        with gw.channel(impl) as channel, pytest.raises(grpc.RpcError) as info:
            method(channel, "unary_unary", "Sleep")(b"5", timeout=0.5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, impl


def test_grpc_client_cancellation_reaches_the_server(gw: Gateways) -> None:
    """No deadline goes with the call: only the proxy's RST_STREAM CANCEL can tell the server it was cancelled."""
    for impl in each(gw):
        token = f"30.{len(gw.echo.cancelled)}{impl == 'envoy':d}".encode()  # distinct per call, still a number
        with gw.channel(impl) as channel:
            future = method(channel, "unary_unary", "Sleep").future(token)
            wait_until(lambda: gw.echo.calls > 0, timeout=10)
            time.sleep(0.3)  # let the call reach the server (its arrival is not observable from here)
            future.cancel()
            wait_until(lambda: token in gw.echo.cancelled, timeout=15)


def test_many_concurrent_calls_share_one_upstream_connection(gw: Gateways) -> None:
    for impl in each(gw):
        proxy = gw.proxies[impl]
        before = proxy.stats().get("cluster.echo.upstream_cx_total", 0)
        with gw.channel(impl) as channel:
            call = method(channel, "unary_unary", "Sleep")
            futures = [call.future(b"0.3", timeout=20) for _ in range(40)]
            assert [f.result() for f in futures] == [b"0.3"] * 40
        stats = proxy.stats()
        assert stats["cluster.echo.upstream_cx_total"] - before <= 1, (impl, stats["cluster.echo.upstream_cx_total"])
        assert stats["cluster.echo.upstream_cx_http2_total"] == stats["cluster.echo.upstream_cx_total"] == 1, impl
        assert stats["cluster.echo.http2.nghttp2_upstream_connections"] == 1, impl  # Envoy's codec stats


def test_max_concurrent_streams_caps_streams_per_connection(gw: Gateways) -> None:
    """Cluster max_concurrent_streams 2: eight concurrent calls need four connections, as Envoy opens them."""
    counts = {}
    for impl in each(gw):
        proxy = gw.proxies[impl]
        with gw.channel(impl, "capped") as channel:
            call = method(channel, "unary_unary", "Sleep")
            futures = [call.future(b"1", timeout=20) for _ in range(8)]
            assert [f.result() for f in futures] == [b"1"] * 8
        counts[impl] = proxy.stats()["cluster.echo_capped.upstream_cx_total"]
    assert counts["pylon"] == 4, counts
    assert len(set(counts.values())) == 1, counts


def test_http1_client_to_nghttpd(gw: Gateways) -> None:
    """An HTTP/1.1 client through the proxy to an HTTP/2-only server: GET of a file, an echoed upload, 404."""
    outcomes = {}
    for impl in each(gw):
        base = gw.proxies[impl].url("front")
        with httpx.Client(timeout=10) as client:
            hello = client.get(base + "hello.txt")
            big = client.get(base + "big.bin")
            upload = client.post(base + "echo", content=b"u" * 300000)
            chunked = client.post(base + "echo", content=iter([b"part1-", b"part2"]))
            missing = client.get(base + "missing")
        outcomes[impl] = (hello.status_code, hello.text, hello.http_version, big.status_code, big.content,
                          upload.status_code, upload.content, chunked.content, missing.status_code)
    assert outcomes["pylon"][:3] == (200, "hello from nghttpd\n", "HTTP/1.1")
    assert outcomes["pylon"][4] == bytes(range(256)) * 4096
    assert outcomes["pylon"][5:8] == (200, b"u" * 300000, b"part1-part2")
    assert outcomes["pylon"][8] == 404
    assert len({repr(o) for o in outcomes.values()}) == 1


def test_access_log_protocol_and_flags(gw: Gateways) -> None:
    for impl in each(gw):
        base = gw.proxies[impl].url("front")
        assert httpx.get(base + "hello.txt?log", timeout=10).status_code == 200
        lines = read_json_lines(gw.log[impl], 1, timeout=10)
        wanted = wait_until(lambda: [line for line in json_lines(gw.log[impl]) if line["path"] == "/hello.txt?log"],
                            timeout=10)
        assert lines and wanted[0]["code"] == 200 and wanted[0]["flags"] == "-", (impl, wanted)


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_goaway_mid_load_loses_no_call(gw: Gateways) -> None:
    """grpcio sends GOAWAY on each upstream connection 300 ms old: calls keep coming for 2 s from 8 threads, and
    every one succeeds (streams the server took finish; any it refused go again on a new connection)."""
    for impl in each(gw):
        proxy = gw.proxies[impl]
        failures: list[Any] = []
        done = [0]
        with gw.channel(impl, "aging") as channel:
            call = method(channel, "unary_unary", "Unary")
            stop = time.monotonic() + 2.0

            def client() -> None:
                while time.monotonic() < stop:
                    try:
                        assert call(b"x", timeout=15) == b"x"
                        done[0] += 1
                    except Exception as exc:  # noqa: BLE001 - collected and reported below
                        failures.append(exc)

            threads = [threading.Thread(target=client) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
        assert not failures, (impl, failures[:3])
        assert done[0] > 20, (impl, done[0])
        assert proxy.stats()["cluster.echo_aging.upstream_cx_total"] > 1, impl  # the connections did go away


def test_upstream_reset_before_the_response(gw: Gateways) -> None:
    outcomes = {}
    for impl in each(gw):
        response = httpx.get(gw.proxies[impl].url("front", "/reset"), timeout=10)
        outcomes[impl] = (response.status_code, response.text)
    assert outcomes["pylon"][0] == 503, outcomes
    assert outcomes["pylon"] == outcomes.get("envoy", outcomes["pylon"]), outcomes
    for impl in each(gw):
        wanted = wait_until(lambda: [line for line in json_lines(gw.log[impl]) if line["path"] == "/reset"],
                            timeout=10)
        assert wanted[0]["flags"] == "UR", (impl, wanted)


def test_upstream_reset_after_the_response_started(gw: Gateways) -> None:
    """The head went out already: the client's connection is reset mid-body, as Envoy does."""
    for impl in each(gw):
        with pytest.raises(httpx.HTTPError):
            httpx.get(gw.proxies[impl].url("front", "/reset-mid"), timeout=10).read()


def test_use_downstream_protocol_config_follows_the_client(gw: Gateways) -> None:
    """nghttpd speaks HTTP/2 only: through `follow`, an h2c client's request reaches it, an HTTP/1.1 one goes
    upstream as HTTP/1.1 and fails, in both proxies. nghttpd answers it with a GOAWAY and closes at once: 502 (UPE)
    when the proxy reads those bytes first, 503 (UC) when the close wins (seen in a fresh run), for either proxy."""
    outcomes = {}
    for impl in each(gw):
        url = gw.proxies[impl].url("follow", "/hello.txt")
        http1 = httpx.get(url, timeout=10)
        http2 = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-w", "\n%{http_code} %{http_version}", url],
                               capture_output=True, timeout=30).stdout.decode()
        outcomes[impl] = (http1.status_code, http2)
    for impl, (http1_status, http2) in outcomes.items():
        assert http1_status in (502, 503) and http2 == "hello from nghttpd\n\n200 2", (impl, outcomes)


def test_tls_upstream_offers_h2_and_checks_the_san(gw: Gateways) -> None:
    """A TLS HTTP/2 cluster: ALPN h2 (grpcio's TLS server requires it), the CA and the SAN matcher apply; a SAN
    that does not match fails the connection (503), as for HTTP/1 clusters."""
    outcomes = {}
    for impl in each(gw):
        with gw.channel(impl, "tls_up") as channel:
            good = method(channel, "unary_unary", "Unary")(b"secure", timeout=10)
        with gw.channel(impl, "wrong_san") as channel, pytest.raises(grpc.RpcError) as info:
            method(channel, "unary_unary", "Unary")(b"secure", timeout=10)
        outcomes[impl] = (good, info.value.code())
    assert outcomes["pylon"] == (b"secure", grpc.StatusCode.UNAVAILABLE), outcomes
    assert len(set(outcomes.values())) == 1, outcomes


def test_a_request_mirrored_to_an_http2_cluster(gw: Gateways) -> None:
    """The shadow copy goes to an HTTP/2 cluster as its own stream (Host suffixed -shadow), body included."""
    for impl in each(gw):
        path = f"/mirror-{impl}"
        response = httpx.post(gw.proxies[impl].url("mirrored", path), content=b"copy me", timeout=10)
        assert (response.status_code, response.content) == (200, b"copy me"), impl  # nghttpd's echo; the copy's
        # answer is dropped
        wait_until(lambda: path.encode() in gw.resetting.paths, timeout=10)


def test_auto_config_speaks_what_alpn_picks(gw: Gateways) -> None:
    """auto_config on TLS clusters: grpcio's server picks h2 (gRPC works, an HTTP/2 connection is counted), an
    HTTPS server whose ALPN picks http/1.1 gets HTTP/1.1 requests (an HTTP/1.1 connection is counted)."""
    outcomes = {}
    for impl in each(gw):
        proxy = gw.proxies[impl]
        with gw.channel(impl, "auto_h2") as channel:
            reply = method(channel, "unary_unary", "Unary")(b"alpn", timeout=10)
        plain = [httpx.get(proxy.url("auto_h1", f"/auto-{impl}-{i}"), timeout=10) for i in range(3)]
        stats = proxy.stats()
        outcomes[impl] = (reply, [r.status_code for r in plain], stats["cluster.auto_h2.upstream_cx_http2_total"],
                          stats["cluster.auto_h1.upstream_cx_http1_total"])
        seen = [r for r in gw.https1.requests if r["path"].startswith(f"/auto-{impl}-")]
        assert len(seen) == 3, (impl, seen)
    assert outcomes["pylon"] == (b"alpn", [200, 200, 200], 1, 1), outcomes
    assert len({repr(o) for o in outcomes.values()}) == 1, outcomes
