"""`pylon echo` over HTTP/2, answered to clients nobody here wrote: curl and nghttp (libnghttp2's own)."""

from __future__ import annotations

import re
import ssl
import subprocess
import time

from tests.bench.conftest import ca_file, tls_args


def curl(*args: str) -> str:
    """curl's output, its CRLFs kept (text mode would turn them into LFs)."""
    return subprocess.run(["curl", "-s", "-S", "--max-time", "10", *args], capture_output=True, timeout=20,
                          check=True).stdout.decode()


def test_prior_knowledge_answers_as_http1_does(start_echo) -> None:
    echo = start_echo()
    out = curl("--http2-prior-knowledge", "-i", f"{echo.url}/")
    assert out.startswith("HTTP/2 200")
    head, _, body = out.partition("\r\n\r\n")
    assert "server: pylon-echo" in head and "content-length: 100" in head and len(body) == 100
    out = curl("--http2-prior-knowledge", "-i", f"{echo.url}/?status=418&header=X-Test:yes&size=7")
    head, _, body = out.partition("\r\n\r\n")
    assert head.startswith("HTTP/2 418") and "x-test: yes" in head and len(body) == 7
    out = curl("--http2-prior-knowledge", "-i", f"{echo.url}/?status=abc")
    assert out.startswith("HTTP/2 400") and "invalid value" in out
    assert curl("--http2-prior-knowledge", "--data-binary", "hello h2", f"{echo.url}/echo") == "hello h2"
    debug = curl("--http2-prior-knowledge", "-H", "X-Seen: 1", f"{echo.url}/debug?x=1")
    assert "GET /debug?x=1 HTTP/2.0" in debug and "x-seen: 1" in debug and f"host: 127.0.0.1:{echo.port}" in debug
    stats = echo.stats()  # over HTTP/1.1, on the same port
    assert stats["downstream_rq_total"] == 5 and stats["downstream_cx_total"] == 1 + 5 + 1  # the port probe, /stats


def test_upgrade_h2c_is_answered_in_http1_as_fortio_does(start_echo) -> None:
    """Go's server (Fortio's) speaks unencrypted HTTP/2 with prior knowledge only; an upgrade stays HTTP/1.1."""
    echo = start_echo()
    out = curl("--http2", "-i", f"{echo.url}/")
    assert out.startswith("HTTP/1.1 200")


def test_nghttp_streams_on_one_connection(start_echo) -> None:
    echo = start_echo()
    urls = [f"{echo.url}/?size={n}" for n in (10, 20, 30)]
    out = subprocess.run(["nghttp", "-v", "-n", "-t", "10", *urls, f"{echo.url}/echo"], capture_output=True,
                         text=True, timeout=30).stdout
    assert len(re.findall(r":status: 200", out)) == 4
    assert "recv SETTINGS frame" in out and "send HEADERS frame <length=" in out
    stats = echo.stats()
    assert stats["downstream_cx_total"] == 1 + 1 + 1 and stats["downstream_rq_total"] == 4  # probe, nghttp, /stats


def test_delay_and_close_over_h2(start_echo) -> None:
    echo = start_echo()
    started = time.monotonic()
    out = curl("--http2-prior-knowledge", "-i", f"{echo.url}/?delay=150ms")
    assert out.startswith("HTTP/2 200") and time.monotonic() - started >= 0.15
    out = subprocess.run(["nghttp", "-v", "-t", "10", f"{echo.url}/?close=true"], capture_output=True, text=True,
                         timeout=30).stdout
    assert ":status: 200" in out and "recv GOAWAY frame" in out


def test_alpn_h2_over_tls(start_echo, pki) -> None:
    echo = start_echo(*tls_args(pki), tls=True)
    out = curl("--http2", "--cacert", str(ca_file(pki)), "-i", f"https://localhost:{echo.port}/")
    assert out.startswith("HTTP/2 200")
    out = curl("--http1.1", "--cacert", str(ca_file(pki)), "-i", f"https://localhost:{echo.port}/")
    assert out.startswith("HTTP/1.1 200")
    assert echo.stats(verify=ssl.create_default_context(cafile=ca_file(pki)))["downstream_rq_total"] == 2
