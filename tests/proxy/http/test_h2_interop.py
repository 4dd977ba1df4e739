"""The HTTP/2 codec against clients nobody here wrote (nghttp, curl, h2load) over loopback, and beside Envoy 1.40.

The server is a test aid (an asyncio Protocol around a server `H2Connection`, in a thread): `/` answers
"hello", `/echo` returns the request body, `/trailers` adds a trailer after the body.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator

import pytest

from pylon.proxy.http.h2_session import H2Connection
from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, http_listener, route, static_cluster

from .h2_helpers import PREFACE, SETTINGS, WINDOW_UPDATE, Recorder, frames, session

pytestmark = pytest.mark.skipif(not (shutil.which("nghttp") and shutil.which("h2load") and shutil.which("curl")),
                                reason="nghttp2-client and curl are not installed")  # fmt: skip


class _Server(asyncio.Protocol):
    """One h2c connection: the owner of its session; writes once per read."""

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport
        self.conn = H2Connection(self, server=True)
        self.requests: dict[int, tuple[bytes, bytearray]] = {}
        self.flush()

    def data_received(self, data: bytes) -> None:
        self.conn.receive(data)
        self.flush()

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self.transport.write(out)
        if self.conn.closed and not self.conn.want_write:
            self.transport.close()

    def connection_lost(self, exc) -> None:  # type: ignore[no-untyped-def]
        self.conn.close()

    def on_headers(self, stream_id, headers, end_stream) -> None:  # type: ignore[no-untyped-def]
        path = dict(headers)[b":path"]
        self.requests[stream_id] = (path, bytearray())
        if end_stream:
            self.respond(stream_id)

    def on_data(self, stream_id: int, data: bytes) -> None:
        self.requests[stream_id][1].extend(data)
        self.conn.consume(stream_id, len(data))

    def on_trailers(self, stream_id, trailers) -> None:  # type: ignore[no-untyped-def]
        self.respond(stream_id)

    def on_end_stream(self, stream_id: int) -> None:
        self.respond(stream_id)

    def on_stream_closed(self, stream_id: int, error_code: int) -> None:
        self.requests.pop(stream_id, None)

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        pass

    def respond(self, stream_id: int) -> None:
        path, body = self.requests[stream_id]
        if path == b"/echo":
            self.conn.send_response(stream_id, [(b":status", b"200"), (b"content-length", b"%d" % len(body))])
            self.conn.send_data(stream_id, bytes(body), end_stream=True)
        elif path == b"/trailers":
            self.conn.send_response(stream_id, [(b":status", b"200")])
            self.conn.send_data(stream_id, b"with trailers\n")
            self.conn.send_trailers(stream_id, [(b"x-trailer", b"done")])
        else:
            self.conn.send_response(stream_id, [(b":status", b"200"), (b"content-length", b"6"),
                                                (b"content-type", b"text/plain")])  # fmt: skip
            self.conn.send_data(stream_id, b"hello\n", end_stream=True)


@pytest.fixture(scope="module")
def h2c_port() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    port = free_port()
    server = loop.run_until_complete(loop.create_server(_Server, "127.0.0.1", port))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        server.close()
        loop.close()


def connection_preamble(port: int) -> list[str]:
    """What `nghttp -v` shows of a server's first SETTINGS and its connection WINDOW_UPDATE."""
    r = run("nghttp", "-v", f"http://127.0.0.1:{port}/")
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    start = next(i for i, line in enumerate(lines) if "recv SETTINGS frame" in line)
    wanted = [line.strip() for line in lines[start:] if "[SETTINGS_" in line or "window_size_increment" in line]
    return wanted[:5]


def run(*argv: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=60, check=False)


def test_nghttp_get_shows_our_settings_and_response(h2c_port: int) -> None:
    r = run("nghttp", "-v", f"http://127.0.0.1:{h2c_port}/")
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert "[SETTINGS_MAX_CONCURRENT_STREAMS(0x03):1024]" in out
    assert "[SETTINGS_INITIAL_WINDOW_SIZE(0x04):16777216]" in out
    assert ":status: 200" in out and "hello" in out


def test_nghttp_upload_and_trailers(h2c_port: int, tmp_path) -> None:
    body = tmp_path / "body"
    body.write_bytes(b"z" * 300_000)
    r = run("nghttp", f"http://127.0.0.1:{h2c_port}/echo", "-d", str(body))
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"z" * 300_000
    r = run("nghttp", "-v", f"http://127.0.0.1:{h2c_port}/trailers")
    assert r.returncode == 0
    assert re.search(r"recv \(stream_id=\d+\) x-trailer: done", r.stdout.decode())


def test_curl_prior_knowledge(h2c_port: int) -> None:
    r = run("curl", "-sS", "--http2-prior-knowledge", f"http://127.0.0.1:{h2c_port}/")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"hello\n"
    big = bytes(range(256)) * 8192  # 2 MiB: past curl's and our first windows
    r = run("curl", "-sS", "--http2-prior-knowledge", "--data-binary", "@-", f"http://127.0.0.1:{h2c_port}/echo",
            stdin=big)  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == big


def test_h2load_all_requests_succeed(h2c_port: int) -> None:
    r = run("h2load", "-n", "2000", "-c", "4", "-m", "10", f"http://127.0.0.1:{h2c_port}/")
    out = r.stdout.decode()
    assert r.returncode == 0, out
    assert "2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored" in out
    assert "status codes: 2000 2xx" in out


def test_first_frames_match_envoys(h2c_port: int, launcher: ProxyLauncher) -> None:
    """Envoy 1.40 with an HTTP/2 listener and default http2_protocol_options: the same SETTINGS, same window."""
    port = free_port()
    listener = http_listener("main", port, [{"match": {"prefix": "/"},
                                             "direct_response": {"status": 200, "body": {"inline_string": "hello\n"}}}],
                             codec_type="HTTP2")  # fmt: skip
    launcher.start([listener], [], implementation="envoy")
    envoy = connection_preamble(port)
    assert envoy == connection_preamble(h2c_port)
    assert envoy[-1] == "(window_size_increment=25100289)"


def _settings_and_window(data: bytes) -> tuple[list[tuple[int, int]], int]:
    """The entries of the first SETTINGS and the first connection WINDOW_UPDATE's increment in `data`."""
    out = frames(data)
    payload = next(f[3] for f in out if f[0] == SETTINGS)
    update = next(f[3] for f in out if f[0] == WINDOW_UPDATE and f[2] == 0)
    return [struct.unpack(">HI", payload[i:i + 6]) for i in range(0, len(payload), 6)], struct.unpack(">I", update)[0]


def test_client_first_frames_match_envoys_upstream_codec(launcher: ProxyLauncher) -> None:
    """Envoy 1.40 toward an HTTP/2 cluster: the frames after its preface, captured raw, equal our client's."""
    capture_port, port = free_port(), free_port()
    listening = socket.create_server(("127.0.0.1", capture_port))
    listening.settimeout(20)
    captured = bytearray()

    def capture() -> None:
        conn, _ = listening.accept()
        conn.settimeout(5)
        with conn:
            while len(captured) < len(PREFACE) + 60:
                data = conn.recv(65536)
                if not data:
                    break
                captured.extend(data)

    thread = threading.Thread(target=capture, daemon=True)
    thread.start()
    h2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}  # fmt: skip
    launcher.start([http_listener("main", port, [route("/", "up")])],
                   [static_cluster("up", [capture_port], typed_extension_protocol_options=h2)], implementation="envoy")
    run("curl", "-s", "-m", "3", f"http://127.0.0.1:{port}/")  # answered 503 once the capture hangs up
    thread.join(20)
    listening.close()
    assert bytes(captured[:len(PREFACE)]) == PREFACE
    ours = session(Recorder(), server=False).data_to_send()
    assert ours[:len(PREFACE)] == PREFACE
    assert _settings_and_window(bytes(captured[len(PREFACE):])) == _settings_and_window(ours[len(PREFACE):])
