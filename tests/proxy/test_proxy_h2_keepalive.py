"""Integration: HTTP/2 connection_keepalive, upstream and downstream, through pylon and Envoy 1.40 alike.

A peer that stops answering (here: one that never acknowledges a PING, as a host behind a dead NAT entry would
look) is found by the PINGs and its connection closed (`http2.keepalive_timeout`); a live peer (nghttpd, which
answers PINGs) keeps its connection through many intervals.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import RunningProxy, http_listener, route, static_cluster, wait_until
from tests.proxy.test_proxy_http2_upstream import Nghttpd, h2_options

SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
KEEPALIVE = {"interval": "0.3s", "timeout": "1s", "interval_jitter": {"value": 0}}


class SilentH2Peer:
    """An h2c server that sends its SETTINGS and acknowledges the client's, then reads and answers nothing:
    no response, no PING ACK."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.closed_by_peer = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.sendall(SETTINGS + SETTINGS_ACK)
            while True:
                try:
                    if not conn.recv(65536):
                        break
                except OSError:
                    break
            self.closed_by_peer.set()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[SilentH2Peer]:
    peer = SilentH2Peer()
    yield peer
    peer.close()


def test_an_upstream_that_never_acks_is_closed(implementation: str, run_proxy: Callable[..., RunningProxy],
                                              silent: SilentH2Peer) -> None:
    cluster = static_cluster("h2", [silent.port], **h2_options(connection_keepalive=KEEPALIVE))
    proxy = run_proxy([http_listener("main", free_port(), [route("/", "h2", timeout="20s")])], [cluster],
                      implementation=implementation)
    began = time.monotonic()
    reply = httpx.get(proxy.url("main", "/x"), timeout=30)
    assert reply.status_code == 503 and time.monotonic() - began < 15
    assert silent.closed_by_peer.wait(5)
    wait_until(lambda: proxy.stats().get("cluster.h2.http2.keepalive_timeout") == 1, timeout=10)


@pytest.mark.skipif(not shutil.which("nghttpd") and not Path("/usr/sbin/nghttpd").exists(), reason="needs nghttpd")
def test_a_live_upstream_keeps_its_connection(implementation: str, run_proxy: Callable[..., RunningProxy],
                                              tmp_path: Path) -> None:
    web = Nghttpd(tmp_path)
    try:
        cluster = static_cluster("h2", [web.port], **h2_options(connection_keepalive=KEEPALIVE))
        proxy = run_proxy([http_listener("main", free_port(), [route("/", "h2")])], [cluster],
                          implementation=implementation)
        assert httpx.get(proxy.url("main", "/hello.txt")).status_code == 200
        time.sleep(2.5)  # several intervals, each PING answered
        assert httpx.get(proxy.url("main", "/hello.txt")).status_code == 200
        stats = proxy.stats()
        assert stats["cluster.h2.upstream_cx_total"] == 1 and stats["cluster.h2.http2.keepalive_timeout"] == 0
    finally:
        web.close()


def test_a_downstream_client_that_never_acks_is_closed(implementation: str,
                                                       run_proxy: Callable[..., RunningProxy]) -> None:
    listener = http_listener("main", free_port(), [route("/", "none")], codec_type="HTTP2",
                             http2_protocol_options={"connection_keepalive": KEEPALIVE})
    proxy = run_proxy([listener], [static_cluster("none", [free_port()])], implementation=implementation)
    with socket.create_connection(("127.0.0.1", proxy.ports["main"]), timeout=15) as sock:
        sock.sendall(PREFACE + SETTINGS)
        began = time.monotonic()
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        elapsed = time.monotonic() - began
    assert received.startswith(b"\x00") and 0.5 < elapsed < 10
    assert b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" in received  # the PING the proxy sent (8 bytes, no ACK flag)
    wait_until(lambda: proxy.stats().get("http2.keepalive_timeout") == 1, timeout=10)


def test_keepalive_settings_are_checked() -> None:
    from pylon.config.envoy import KeepaliveSettings, convert

    with pytest.raises(Exception, match="timeout"):
        convert({"interval": "1s"}, KeepaliveSettings)
    with pytest.raises(Exception, match="interval"):
        convert({"interval": "0s", "timeout": "1s"}, KeepaliveSettings)


