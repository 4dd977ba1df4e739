"""Integration: an HTTP connection manager without any HTTP filter, through pylon and Envoy 1.40 alike.

Envoy accepts an empty `http_filters` (Envoy's own configs/proxy_protocol.yaml has one); then nothing, not even the
router, answers a request: it waits for the stream idle timeout, 504 "stream timeout", and the connection stays
open for the next request (the request was read whole). A direct_response route changes nothing: the router is
what would have sent it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from tests.conftest import free_port
from tests.proxy.conftest import RunningProxy, http_listener


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"stream timeout"):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def test_nothing_answers_until_the_stream_idle_timeout(implementation: str,
                                                       run_proxy: Callable[..., RunningProxy]) -> None:
    port = free_port()
    direct = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "OK"}}}
    proxy = run_proxy([http_listener("main", port, [direct], http_filters=[], stream_idle_timeout="1s")], [],
                      implementation=implementation)
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        answers = []
        for path in ("/a", "/b"):  # the second on the same connection: it stayed open
            start = time.monotonic()
            sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
            answers.append((read_response(sock), time.monotonic() - start))
    for response, waited in answers:
        head = response.split(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 504 gateway timeout")
        assert b"connection: close" not in head
        assert waited >= 0.9
    stats = proxy.stats()
    assert stats["http.main.downstream_rq_idle_timeout"] == 2
    assert stats["http.main.downstream_rq_5xx"] == 2
