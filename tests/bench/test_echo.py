"""`pylon echo` as a real process: default reply, Fortio query args, /echo, /debug, close, counters."""

from __future__ import annotations

import socket
import ssl
import time

import httpx

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
