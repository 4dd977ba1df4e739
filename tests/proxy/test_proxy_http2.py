"""Integration: HTTP/2 clients served by pylon's HTTP connection manager, side by side with Envoy 1.40 (issue 16).

The clients are ones nobody here wrote (curl, nghttp, h2load) except where a test needs frames no client
sends on request (a reset in the middle, a flood): there pylon's own codec, in client mode, or frames built by
hand speak. Every scenario runs through pylon and Envoy with the same bootstrap, in front of the same HTTP/1.1
upstreams, and the outcomes (statuses, bodies, what the upstream saw) must agree.
"""

from __future__ import annotations

import re
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from pylon.identity.certs import make_test_pki
from pylon.proxy.http.h2_session import ENHANCE_YOUR_CALM, H2Connection
from tests.conftest import free_port
from tests.proxy.conftest import (DOWNSTREAM_TLS_TYPE, ENVOY_BIN, ProxyLauncher, RunningProxy, http_listener,
                                  read_json_lines, route, static_cluster, json_access_log, wait_until)  # fmt: skip
from tests.proxy.http.h2_helpers import (DATA, END_HEADERS, GOAWAY, HEADERS, POST_BLOCK, Recorder, client_start, frame,
                                         frames, goaway_of, session)  # fmt: skip
from tests.proxy.test_proxy_trailers import TrailerUpstream, cluster_options
from tests.proxy.upstreams import Upstream

IMPLEMENTATIONS = ("pylon", "envoy")
GOAWAY_NOTICE = 2**31 - 1


class BlackHole:
    """An upstream that accepts connections and never reads them: whatever is sent to it backs up."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


class Gateways:
    """pylon and Envoy on the same bootstrap: listener `h2c` (codec AUTO, plaintext), `tls` (AUTO, ALPN h2 and
    http/1.1), `idle` (stream_idle_timeout 0.5 s); cluster `up` (an `Upstream`) and `trail` (a TrailerUpstream,
    trailers enabled) behind them."""

    def __init__(self, directory: Path) -> None:
        self.upstream = Upstream()
        self.trailers = TrailerUpstream()
        self.hole = BlackHole()
        self.launcher = ProxyLauncher(directory)
        self.log = {}
        self.proxies: dict[str, RunningProxy] = {}
        pki = make_test_pki(directory / "pki")
        for impl in IMPLEMENTATIONS:
            if impl == "envoy" and not ENVOY_BIN.exists():
                continue
            self.log[impl] = directory / f"{impl}-access.log"
            routes = [route("/t", "trail", timeout="5s"), route("/hole", "hole", timeout="10s"),
                      route("/", "up", timeout="5s")]
            tls = http_listener("tls", free_port(), routes)
            tls["filter_chains"][0]["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": DOWNSTREAM_TLS_TYPE, "common_tls_context": {
                    "tls_certificates": [{"certificate_chain": {"filename": str(pki.server_rsa.cert)},
                                          "private_key": {"filename": str(pki.server_rsa.key)}}],
                    "alpn_protocols": ["h2", "http/1.1"]}}}
            listeners = [http_listener("h2c", free_port(), routes, access_log=json_access_log(self.log[impl])), tls,
                         http_listener("idle", free_port(), routes, stream_idle_timeout="0.5s"),
                         http_listener("strict", free_port(), routes, common_http_protocol_options={
                             "headers_with_underscores_action": "REJECT_REQUEST"}),
                         http_listener("tuned", free_port(), routes, drain_timeout="1s", common_http_protocol_options={
                             "idle_timeout": "0.5s"}, http2_protocol_options={
                             "max_concurrent_streams": 5, "initial_stream_window_size": 65535,
                             "initial_connection_window_size": 1048576, "hpack_table_size": 0})]
            clusters = [static_cluster("up", [self.upstream.port]),
                        static_cluster("trail", [self.trailers.port], **cluster_options(True)),
                        static_cluster("hole", [self.hole.port])]
            self.proxies[impl] = self.launcher.start(listeners, clusters, implementation=impl)

    def url(self, impl: str, path: str, listener: str = "h2c") -> str:
        scheme = "https" if listener == "tls" else "http"
        return f"{scheme}://127.0.0.1:{self.proxies[impl].ports[listener]}{path}"

    def seen(self, path: str) -> dict[str, Any]:
        """The upstream's record of the one request for `path`."""
        found = [r for r in self.upstream.requests if r["path"] == path]
        assert len(found) == 1, found
        return found[0]

    def close(self) -> None:
        self.launcher.close()
        self.upstream.close()
        self.trailers.close()
        self.hole.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    gateways = Gateways(tmp_path_factory.mktemp("h2"))
    try:
        yield gateways
    finally:
        gateways.close()


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, timeout=timeout)


def each(gw: Gateways) -> list[str]:
    return list(gw.proxies)


def _forwarded(record: dict[str, Any]) -> list[tuple[str, str]]:
    """What the upstream saw, less what differs by nature between two proxies (ids, ports, timings)."""
    varying = {"x-request-id", "x-envoy-expected-rq-timeout-ms", "host"}
    return sorted((name, value) for name, value in record["header_list"] if name not in varying)


def test_curl_prior_knowledge_get_and_post_as_envoy(gw: Gateways) -> None:
    outcomes = {}
    for impl in each(gw):
        get = run("curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                  gw.url(impl, f"/status/404?{impl}"))  # fmt: skip
        post = run("curl", "-sS", "--http2-prior-knowledge", "--data-binary", "hello",
                   gw.url(impl, f"/echo?{impl}"))  # fmt: skip
        assert get.returncode == 0 and post.returncode == 0, get.stderr + post.stderr
        record = gw.seen(f"/echo?{impl}")
        assert record["headers"]["host"] == f"127.0.0.1:{gw.proxies[impl].ports['h2c']}"  # from :authority
        outcomes[impl] = (get.stdout, post.stdout, record["method"], _forwarded(record))
    assert outcomes["pylon"][:2] == (b"2 404", b"hello")
    assert outcomes.get("envoy", outcomes["pylon"]) == outcomes["pylon"]


def test_cookies_joined_and_te_trailers_kept_as_envoy(gw: Gateways) -> None:
    seen = {}
    for impl in each(gw):
        r = run("nghttp", "-H", "cookie: a=1", "-H", "cookie: b=2", "-H", "te: trailers", "-H", "x-one: 1",
                gw.url(impl, f"/hdrs?{impl}"))  # fmt: skip
        assert r.returncode == 0, r.stderr
        seen[impl] = _forwarded(gw.seen(f"/hdrs?{impl}"))
    assert ("cookie", "a=1; b=2") in seen["pylon"]
    assert seen.get("envoy", seen["pylon"]) == seen["pylon"]


def test_curl_http2_over_tls_by_alpn_and_http11_beside_it(gw: Gateways) -> None:
    for impl in each(gw):
        versions = []
        for flag in ("--http2", "--http1.1"):
            r = run("curl", "-sSk", flag, "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                    gw.url(impl, "/x", "tls"))  # fmt: skip
            assert r.returncode == 0, r.stderr
            versions.append(r.stdout)
        assert versions == [b"2 200", b"1.1 200"], impl
        stats = gw.proxies[impl].stats()
        assert stats["http.tls.downstream_cx_http2_total"] >= 1
        assert stats["http.tls.downstream_rq_http1_total"] >= 1


def _codes(nghttp_stats: str) -> dict[str, int]:
    """{path: status} from `nghttp -s`'s table."""
    rows = re.findall(r"^\s*\d+\s+\S+\s+\S+\s+\S+\s+(\d{3})\s+\S+\s+(\S+)$", nghttp_stats, re.M)
    return {path: int(code) for code, path in rows}


def test_nghttp_concurrent_streams_large_upload_and_trailers(gw: Gateways, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"z" * 3_000_000)
    body = tmp_path / "small"
    body.write_bytes(b"hello world")
    results = {}
    for impl in each(gw):
        r = run("nghttp", "-n", "-s", *(gw.url(impl, p) for p in ("/a", "/b", "/status/503", "/chunked/50")))
        assert r.returncode == 0, r.stderr
        codes = _codes(r.stdout.decode())
        upload = run("nghttp", "-d", str(big), gw.url(impl, "/sink"))
        echo = run("nghttp", "-d", str(big), gw.url(impl, "/echo"))
        count = len(gw.trailers.requests)
        trail = run("nghttp", "-v", "--no-content-length", "--trailer", "x-checksum: abc123", "-d", str(body),
                    gw.url(impl, "/t"))  # fmt: skip
        out = trail.stdout.decode()
        request = gw.trailers.requests[count]
        results[impl] = (codes, upload.stdout, echo.stdout == big.read_bytes(),
                         re.findall(r"recv \(stream_id=\d+\) (grpc-status: 0|x-resp-trailer: yes)", out),
                         request.body, request.trailers)
    assert results["pylon"] == ({"/a": 200, "/b": 200, "/status/503": 503, "/chunked/50": 200}, b"3000000", True,
                                ["grpc-status: 0", "x-resp-trailer: yes"], b"hello world",
                                [(b"x-checksum", b"abc123")])  # fmt: skip
    assert results.get("envoy", results["pylon"]) == results["pylon"]


def test_h2load_every_request_succeeds(gw: Gateways) -> None:
    for impl in each(gw):
        r = run("h2load", "-n", "2000", "-c", "4", "-m", "10", gw.url(impl, "/"), timeout=120)
        out = r.stdout.decode()
        assert r.returncode == 0, out
        assert "2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored" in out, (impl, out)


def test_stream_idle_timeout_is_per_stream(gw: Gateways) -> None:
    for impl in each(gw):
        r = run("nghttp", "-n", "-s", gw.url(impl, "/slow/2", "idle"), gw.url(impl, "/quick", "idle"))
        assert _codes(r.stdout.decode()) == {"/slow/2": 504, "/quick": 200}, (impl, r.stdout.decode())


class H2Client:
    """pylon's own codec as a client over a blocking socket: for the frames no stock client sends on request."""

    def __init__(self, port: int, *, consume: bool = True, split: int = 0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.owner = Recorder(auto_consume=consume)
        self.h2: H2Connection = session(self.owner, server=False)
        self.closed = False
        self.raw = b""  # everything received (the server's frames from the start)
        if split:  # the preface in two writes: the server must wait for the rest before choosing HTTP/2
            first = self.h2.data_to_send()
            self.sock.sendall(first[:split])
            time.sleep(0.2)
            self.sock.sendall(first[split:])
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def get(self, path: str, *fields: tuple[bytes, bytes], method: bytes = b"GET", end: bool = True) -> int:
        sid = self.h2.send_request([(b":method", method), (b":scheme", b"http"), (b":authority", b"gw"),
                                    (b":path", path.encode()), *fields], end_stream=end)  # fmt: skip
        self.flush()
        return sid

    def goaways(self) -> list[tuple[int, int]]:
        """(last stream id, error code) of every GOAWAY received, read off the wire: once a GOAWAY leaves it no
        stream, this client's session reads nothing more."""
        return [(struct.unpack(">I", p[:4])[0] & 0x7FFFFFFF, struct.unpack(">I", p[4:8])[0])
                for kind, _flags, _sid, p in frames(self.raw) if kind == GOAWAY]

    def ended(self, sid: int) -> bool:
        return any(e[0] == "closed" and e[1] == sid for e in self.owner.events)

    def status(self, sid: int) -> int | None:
        for event in self.owner.events:
            if event[0] == "headers" and event[1] == sid:
                return int(dict(event[2])[b":status"])
        return None

    def pump_until(self, done: Any, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                break
            if not data:
                self.closed = True
                break
            self.raw += data
            self.h2.receive(data)
            self.flush()

    def close(self) -> None:
        self.sock.close()


def test_a_reset_stream_cancels_only_its_upstream_request(gw: Gateways) -> None:
    for impl in each(gw):
        before = gw.proxies[impl].stats().get("http.h2c.downstream_rq_rx_reset", 0)
        client = H2Client(gw.proxies[impl].ports["h2c"])
        try:
            slow = client.get(f"/slow/1?reset-{impl}")
            wait_until(lambda: any(r["path"] == f"/slow/1?reset-{impl}" for r in gw.upstream.requests))
            quick = client.get(f"/quick?{impl}")
            client.h2.reset_stream(slow)
            client.flush()
            client.pump_until(lambda: client.status(quick) is not None and ("closed", quick, 0) in client.owner.events)
            assert client.status(quick) == 200, impl
            assert client.status(slow) is None
            assert not client.closed
            after = wait_until(lambda: gw.proxies[impl].stats()["http.h2c.downstream_rq_rx_reset"] > before)
            assert after, impl
        finally:
            client.close()
    reset = wait_until(lambda: [line for line in read_json_lines(gw.log["pylon"], 0)
                                if line["path"] == "/slow/1?reset-pylon"])  # fmt: skip
    assert reset and reset[0]["flags"] == "DC" and reset[0]["protocol"] == "HTTP/2"


def test_a_flood_ends_only_its_connection(gw: Gateways) -> None:
    """Consecutive empty DATA frames (Envoy's max_consecutive_inbound_frames_with_empty_payload, default 1): that
    connection ends (pylon says why first: GOAWAY(ENHANCE_YOUR_CALM); Envoy closes without one), while a request in
    flight on another goes on."""
    for impl in each(gw):
        port = gw.proxies[impl].ports["h2c"]
        other = H2Client(port)
        try:
            sid = other.get("/slow/0.5")
            attacker = socket.create_connection(("127.0.0.1", port), timeout=5)
            with attacker:
                attacker.sendall(client_start() + frame(HEADERS, END_HEADERS, 1, POST_BLOCK)
                                 + frame(DATA, 0, 1) + frame(DATA, 0, 1))  # fmt: skip
                received, ended = b"", False
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and not ended:
                    try:
                        chunk = attacker.recv(65536)
                    except ConnectionResetError:
                        chunk = b""
                    ended = not chunk
                    received += chunk
            assert ended, impl
            if impl == "pylon":
                assert goaway_of(received) == (1, ENHANCE_YOUR_CALM)
            other.pump_until(lambda: other.status(sid) is not None)
            assert other.status(sid) == 200, impl
            assert gw.proxies[impl].stats()["http2.inbound_empty_frames_flood"] >= 1
        finally:
            other.close()


def test_drain_sends_graceful_goaway(tmp_path: Path) -> None:
    """SIGTERM: a shutdown notice (last stream 2^31-1) at once, the stream in flight answered, then the final
    GOAWAY naming it, and the connection ends."""
    upstream = Upstream()
    launcher = ProxyLauncher(tmp_path)
    try:
        port = free_port()
        proxy = launcher.start([http_listener("h2c", port, [route("/", "up")])],
                               [static_cluster("up", [upstream.port])])
        client = H2Client(port)
        sid = client.get("/slow/0.5")
        wait_until(lambda: upstream.requests)
        proxy.proc.send_signal(signal.SIGTERM)
        client.pump_until(lambda: client.closed, timeout=8)
        assert client.status(sid) == 200
        assert client.goaways() == [(GOAWAY_NOTICE, 0), (sid, 0)]
        assert client.closed
        client.close()
    finally:
        launcher.close()
        upstream.close()


def test_codec_type_http1_never_speaks_h2_and_http2_always_does(tmp_path: Path) -> None:
    upstream = Upstream()
    launcher = ProxyLauncher(tmp_path)
    try:
        h1, h2 = free_port(), free_port()
        launcher.start([http_listener("h1", h1, [route("/", "up")], codec_type="HTTP1"),
                        http_listener("h2", h2, [route("/", "up")], codec_type="HTTP2")],
                       [static_cluster("up", [upstream.port])])
        r = run("curl", "-sS", "--http2-prior-knowledge", f"http://127.0.0.1:{h1}/", timeout=10)
        assert r.returncode != 0  # the preface is no HTTP/1.1 request
        r = run("curl", "-sS", "-w", "%{http_version}", "-o", "/dev/null", "--http2-prior-knowledge",
                f"http://127.0.0.1:{h2}/", timeout=10)  # fmt: skip
        assert r.stdout == b"2"
        r = run("curl", "-sS", "--http1.1", f"http://127.0.0.1:{h2}/", timeout=10)
        assert r.returncode != 0
    finally:
        launcher.close()
        upstream.close()



def test_the_preface_split_across_reads_still_chooses_http2(gw: Gateways) -> None:
    """pylon's departure: it waits for the whole preface. Envoy 1.40 (AUTO) takes the first 5 bytes for HTTP/1
    and resets the connection (seen here)."""
    client = H2Client(gw.proxies["pylon"].ports["h2c"], split=5)
    try:
        sid = client.get("/split")
        client.pump_until(lambda: client.ended(sid))
        assert client.status(sid) == 200
    finally:
        client.close()


def test_underscored_names_refused_by_resetting_the_stream(gw: Gateways) -> None:
    """headers_with_underscores_action REJECT_REQUEST: the stream is reset and counted; the connection lives on."""
    for impl in each(gw):
        client = H2Client(gw.proxies[impl].ports["strict"])
        try:
            refused = client.get("/u", (b"x_bad", b"1"))
            client.pump_until(lambda: client.ended(refused))
            fine = client.get("/u")
            client.pump_until(lambda: client.ended(fine))
            assert client.status(refused) is None and client.status(fine) == 200, impl
            assert ("closed", refused, 2) in client.owner.events  # RST_STREAM(INTERNAL_ERROR), as Envoy 1.40
            assert gw.proxies[impl].stats()["http2.requests_rejected_with_underscores_in_headers"] >= 1
        finally:
            client.close()


def test_an_upload_the_upstream_does_not_take_stalls_only_its_stream(gw: Gateways) -> None:
    """Per-stream back-pressure: a 32 MiB upload to an upstream that never reads stops being credited (its window
    runs out, the client cannot send more) while another stream on the same connection is served."""
    for impl in each(gw):
        client = H2Client(gw.proxies[impl].ports["h2c"])
        try:
            upload = client.get("/hole", method=b"POST", end=False)
            client.h2.send_data(upload, b"u" * (32 << 20), end_stream=True)
            client.flush()
            client.pump_until(lambda: False, timeout=1.5)
            assert client.h2.pending(upload) > 0, impl  # not all of it could be sent: the stream is stalled
            quick = client.get("/quick")
            client.pump_until(lambda: client.ended(quick))
            assert client.status(quick) == 200, impl
        finally:
            client.close()


def test_a_response_the_client_does_not_read_stops_only_its_upstream(gw: Gateways) -> None:
    """The client never credits a 64 MiB response: pylon stops reading that upstream (it never finishes writing)
    and still serves another stream on the same connection. (Envoy 1.40 was seen reading all of it here.)"""
    for impl in each(gw):
        gw.upstream.bytes_done.clear()
        client = H2Client(gw.proxies[impl].ports["h2c"], consume=False)
        try:
            big = client.get("/bytes/67108864")
            client.pump_until(lambda: False, timeout=1.5)
            quick = client.get("/quick")
            client.pump_until(lambda: client.ended(quick), timeout=20)  # loaded machines: the big one flows too
            assert client.status(big) == 200 and client.status(quick) == 200, impl
            if impl == "pylon":
                assert not gw.upstream.bytes_done.is_set()
        finally:
            client.close()


def test_http2_protocol_options_are_what_the_client_is_told(gw: Gateways) -> None:
    for impl in each(gw):
        out = run("nghttp", "-v", gw.url(impl, "/", "tuned")).stdout.decode()
        settings = out[out.index("recv SETTINGS"):]
        settings = settings[:settings.index("recv ", 5)]
        assert "[SETTINGS_MAX_CONCURRENT_STREAMS(0x03):5]" in settings, (impl, settings)
        assert "[SETTINGS_INITIAL_WINDOW_SIZE(0x04):65535]" in settings
        assert "[SETTINGS_HEADER_TABLE_SIZE(0x01):0]" in settings
        window = r"recv WINDOW_UPDATE frame <length=4, flags=0x00, stream_id=0>\s+\(window_size_increment=983041\)"
        assert re.search(window, out), (impl, out)  # a 1 MiB connection window, up from the default 65535


def test_an_idle_connection_is_drained_and_closed(gw: Gateways) -> None:
    for impl in each(gw):
        before = gw.proxies[impl].stats().get("http.tuned.downstream_cx_idle_timeout", 0)
        client = H2Client(gw.proxies[impl].ports["tuned"])
        try:
            sid = client.get("/")
            client.pump_until(lambda: client.ended(sid))
            client.pump_until(lambda: client.closed, timeout=5)
            assert client.closed, (impl, client.owner.events)
            # Envoy's drain sequence: the shutdown notice, drain_timeout, the final GOAWAY, the close
            assert client.goaways() == [(GOAWAY_NOTICE, 0), (sid, 0)], impl
        finally:
            client.close()
        stats = gw.proxies[impl].stats()
        assert stats["http.tuned.downstream_cx_idle_timeout"] == before + 1
        assert wait_until(lambda: gw.proxies[impl].stats()["http.tuned.downstream_cx_http2_active"] == 0)


def test_an_http1_request_that_starts_like_the_preface_is_served_as_http1(gw: Gateways) -> None:
    """AUTO on plaintext: "P" could begin the preface, "PO" cannot; the held byte goes to the HTTP/1 codec."""
    for impl in each(gw):
        with socket.create_connection(("127.0.0.1", gw.proxies[impl].ports["h2c"]), timeout=5) as sock:
            sock.sendall(b"P")
            time.sleep(0.2)
            sock.sendall(b"OST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi")
            data = b""
            while b"\r\n\r\n" not in data or not data.endswith(b"hi"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"hi"), (impl, data)


def test_te_keeps_only_trailers_over_http1_too(gw: Gateways) -> None:
    """Envoy sanitises TE to its `trailers` token whatever the client's protocol (seen with Envoy 1.40)."""
    for impl in each(gw):
        for te, path in (("gzip, trailers", f"/x-te1?{impl}"), ("gzip", f"/x-te2?{impl}")):
            assert run("curl", "-sS", "-o", "/dev/null", "-H", f"te: {te}", gw.url(impl, path)).returncode == 0
        assert gw.seen(f"/x-te1?{impl}")["headers"].get("te") == "trailers", impl
        assert "te" not in gw.seen(f"/x-te2?{impl}")["headers"], impl
