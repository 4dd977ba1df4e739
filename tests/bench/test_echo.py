"""`pylon echo` as a real process: default reply, Fortio query args, /echo, /debug, close, counters."""

from __future__ import annotations

import socket
import ssl
import time
from types import SimpleNamespace
from typing import Callable

import httpx

from pylon.bench.echo import EchoProtocol

from tests.bench.conftest import tls_args


def raw_exchange(port: int, payload: bytes, wait: float = 2.0) -> bytes:
    """Send raw bytes and read until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(payload)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except socket.timeout:
            chunks.append(b"<open>")
    return b"".join(chunks)


def test_default_reply_and_query_args(start_echo) -> None:
    echo = start_echo()
    with httpx.Client(base_url=echo.url) as client:
        r = client.get("/")
        assert r.status_code == 200 and len(r.content) == 100 and r.headers["server"] == "pylon-echo"
        assert client.get("/?status=503").status_code == 503
        assert client.get("/?size=5000").content == client.get("/echo?size=5000").content
        assert len(client.get("/?size=5000").content) == 5000
        assert client.get("/?header=X-Test:%20yes").headers["x-test"] == "yes"
        started = time.monotonic()
        assert client.get("/?delay=300ms").status_code == 200
        assert time.monotonic() - started >= 0.3
        codes = [client.get("/?status=500:50").status_code for _ in range(60)]
        assert 0 < codes.count(500) < 60 and set(codes) == {200, 500}
        assert client.get("/?status=abc").status_code == 400


class _EarlyTimers:
    """A loop whose timers fire at once, as a libuv timer fires early on a stale clock."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable, tuple]] = []

    def call_later(self, delay: float, callback: Callable, *args: object) -> None:
        self.pending.append((delay, callback, args))

    def fire(self) -> float:
        delay, callback, args = self.pending.pop(0)
        callback(*args)
        return delay


class _Written:
    def __init__(self) -> None:
        self.data: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.data.append(data)

    def is_closing(self) -> bool:
        return False


def test_delay_is_never_served_early() -> None:
    """Fortio's delay is a minimum: a timer that fires early is re-armed for the rest."""
    worker = SimpleNamespace(loop=_EarlyTimers())
    protocol = EchoProtocol(worker)  # type: ignore[arg-type]
    protocol.transport = transport = _Written()  # type: ignore[assignment]
    protocol._send(b"reply", 0.2, close=False)
    assert worker.loop.fire() == 0.2 and transport.data == []
    assert 0.1 < worker.loop.pending[0][0] <= 0.2  # re-armed for what is left
    time.sleep(0.2)
    worker.loop.fire()
    assert transport.data == [b"reply"]


def test_echo_and_debug(start_echo) -> None:
    echo = start_echo()
    with httpx.Client(base_url=echo.url) as client:
        assert client.post("/echo", content=b"hello pylon").content == b"hello pylon"
        text = client.post("/debug?x=1", content=b"the body", headers={"X-Probe": "42"}).text
        assert "POST /debug?x=1 HTTP/1.1" in text and "X-Probe: 42" in text and "the body" in text


def test_close_and_pipelining_order(start_echo) -> None:
    echo = start_echo()
    reply = raw_exchange(echo.port, b"GET /?close=true HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"Connection: close" in reply and not reply.endswith(b"<open>")
    # a delayed reply holds back the ones pipelined after it, and close applies after it is sent
    reply = raw_exchange(echo.port, b"GET /?delay=200ms&header=N:1 HTTP/1.1\r\nHost: x\r\n\r\n"
                                    b"GET /?header=N:2 HTTP/1.1\r\nHost: x\r\n\r\n"
                                    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.count(b"HTTP/1.1 200 OK") == 3 and reply.index(b"N: 1") < reply.index(b"N: 2")
    assert not reply.endswith(b"<open>")
    reply = raw_exchange(echo.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", wait=0.5)
    assert reply.endswith(b"<open>")  # keep-alive by default
    assert b"400 Bad Request" in raw_exchange(echo.port, b"NOT HTTP\r\n\r\n")


def test_counters_via_stats_and_on_exit(start_echo) -> None:
    echo = start_echo("--concurrency", "2")
    for _ in range(10):
        httpx.get(f"{echo.url}/")  # a new connection each time: the kernel spreads them over workers
    stats = echo.stats()
    # connections: the readiness probe, ten GETs, and the /stats request
    assert stats["downstream_rq_total"] == 10 and stats["downstream_cx_total"] == 12
    assert "downstream_rq_total 10" in echo.stop()


def test_tls_and_mtls(start_echo, pki) -> None:
    echo = start_echo(*tls_args(pki, mtls=True), tls=True)
    with_cert = ssl.create_default_context(cafile=str(pki.ca.cert))
    with_cert.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    good = dict(verify=with_cert)
    assert httpx.get(f"{echo.url}/", **good).status_code == 200
    try:
        httpx.get(f"{echo.url}/", verify=ssl.create_default_context(cafile=str(pki.ca.cert)))
        raise AssertionError("a client without a certificate was served")
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, ssl.SSLError):
        pass
    stats = echo.stats(**good)
    assert stats["ssl.handshake"] == 2 and stats["downstream_rq_total"] == 1
