"""Integration: the proxy's own replies to gRPC requests, through pylon and Envoy 1.40 side by side.

A grpcio client over h2c meets no route, a cluster without hosts, a refused connection and a route timeout
against an HTTP/1.1 upstream that never answers: through both proxies it sees the same grpc.StatusCode and
details, the reply is one HEADERS frame with END_STREAM, and the access log has %RESPONSE_CODE% 200 with the
original flag. Over HTTP/1.1 the replies' heads are compared field by field (date aside).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import (ProxyLauncher, http_listener, json_access_log, read_json_lines, route,
                                  static_cluster, wait_until)
from tests.proxy.test_proxy_http2 import BlackHole, H2Client

REQUEST = b"\x0a\x01x"  # a protobuf message; the method is never reached
CONNECT_FAILURE = "upstream connect error or disconnect/reset before headers. reset reason: "


class Setup:
    def __init__(self, impl: str, port: int, log: Path) -> None:
        self.impl, self.port, self.log = impl, port, log

    def call(self, path: str) -> grpc.RpcError:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            method = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.RpcError) as failure:
                method(REQUEST, timeout=20)
        return failure.value

    def http1(self, path: str, content_type: str = "application/grpc", method: str = "POST"
              ) -> tuple[bytes, list[tuple[str, str]], bytes]:
        """(status line, header fields without date, body) of one HTTP/1.1 exchange."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            length = "content-length: 0\r\n" if method == "POST" else ""
            sock.sendall(f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\n{length}\r\n"
                         .encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                assert chunk, data
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            fields = [(k.lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
            if method != "HEAD":
                length_value = dict(fields).get("content-length", "0")
                while len(body) < int(length_value):
                    body += sock.recv(65536)
        return lines[0].encode(), [pair for pair in fields if pair[0] != "date"], body


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp(f"grpc-local-{request.param}")
    silent = BlackHole()
    launcher = ProxyLauncher(directory)
    try:
        port, log = free_port(), directory / "access.log"
        routes: list[dict[str, Any]] = [
            route("/svc.Silent/", "silent", timeout="0.5s"), route("/svc.Empty/", "empty"),
            route("/svc.Refused/", "refused"),
            {"match": {"prefix": "/svc.Direct/"}, "direct_response": {"status": 418, "body": {
                "inline_string": "100% t\u00e9a~\n"}}, "response_headers_to_add": [{"header": {"key": "x-a", "value": "1"}}]},
            {"match": {"prefix": "/svc.Moved/"}, "redirect": {"host_redirect": "example.com"}},
        ]
        listener = http_listener("main", port, routes, access_log=json_access_log(log))
        empty = {"name": "empty", "connect_timeout": "1s", "type": "STATIC",
                 "load_assignment": {"cluster_name": "empty", "endpoints": []}}
        launcher.start([listener], [static_cluster("silent", [silent.port]), static_cluster("refused", [free_port()]),
                                    empty], implementation=request.param)
        yield Setup(request.param, port, log)
    finally:
        launcher.close()
        silent.close()


@pytest.mark.parametrize("path, code, details", [
    ("/svc.Empty/M", grpc.StatusCode.UNAVAILABLE, "no healthy upstream"),
    ("/svc.Silent/M", grpc.StatusCode.UNAVAILABLE, "upstream request timeout"),  # 504 -> UNAVAILABLE, not DEADLINE
    ("/nothing.Here/M", grpc.StatusCode.UNIMPLEMENTED, ""),  # 404, no body: no grpc-message
    ("/svc.Direct/M", grpc.StatusCode.UNKNOWN, "100% t\u00e9a~\n"),  # percent-encoded on the wire, decoded by grpcio
])
def test_a_grpc_client_sees_the_status_and_details(setup: Setup, path: str, code: grpc.StatusCode,
                                                   details: str) -> None:
    error = setup.call(path)
    assert (error.code(), error.details()) == (code, details)


def test_a_refused_connection_is_unavailable(setup: Setup) -> None:
    error = setup.call("/svc.Refused/M")
    assert error.code() == grpc.StatusCode.UNAVAILABLE and error.details().startswith(CONNECT_FAILURE)


def test_over_http2_the_reply_is_one_headers_frame_that_ends_the_stream(setup: Setup) -> None:
    client = H2Client(setup.port)
    sid = client.get("/svc.Empty/M", (b"content-type", b"application/grpc"), method=b"POST")
    client.pump_until(lambda: client.ended(sid))
    heads = [event for event in client.owner.events if event[0] in ("headers", "trailers") and event[1] == sid]
    assert len(heads) == 1 and heads[0][0] == "headers" and heads[0][3] is True  # END_STREAM on the head
    fields = [pair for pair in heads[0][2] if pair[0] != b"date"]
    assert fields == [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"14"),
                      (b"grpc-message", b"no healthy upstream"), (b"server", b"envoy")]
    assert sid not in client.owner.body


def test_over_http1_the_head_is_envoys(setup: Setup) -> None:
    line, fields, body = setup.http1("/svc.Empty/M")
    assert (line, body) == (b"HTTP/1.1 200 OK", b"")
    assert fields == [("content-type", "application/grpc"), ("grpc-status", "14"),
                      ("grpc-message", "no healthy upstream"), ("server", "envoy"), ("content-length", "0")]
    _, fields, _ = setup.http1("/svc.Direct/M")  # the reply's own headers first; the message percent-encoded
    assert fields == [("x-a", "1"), ("content-type", "application/grpc"), ("grpc-status", "2"),
                      ("grpc-message", "100%25 t%C3%A9a%7E%0A"), ("server", "envoy"), ("content-length", "0")]
    _, fields, _ = setup.http1("/svc.Moved/M")  # a redirect too: 200 and grpc-status 2, the location kept
    assert fields[:3] == [("location", "http://example.com/svc.Moved/M"), ("content-type", "application/grpc"),
                          ("grpc-status", "2")]
    _, fields, _ = setup.http1("/svc.Empty/M", content_type="application/grpc+proto")
    assert ("grpc-status", "14") in fields


def test_a_head_request_gets_no_message_and_chunked_framing(setup: Setup) -> None:
    line, fields, _ = setup.http1("/svc.Empty/M", method="HEAD")
    assert line == b"HTTP/1.1 200 OK"
    assert fields == [("content-type", "application/grpc"), ("grpc-status", "14"), ("server", "envoy"),
                      ("transfer-encoding", "chunked")]


@pytest.mark.parametrize("content_type", ["application/grpc-web", "application/grpc;charset=utf-8", "text/plain"])
def test_other_content_types_get_the_plain_reply(setup: Setup, content_type: str) -> None:
    line, fields, body = setup.http1("/svc.Empty/M", content_type=content_type)
    assert (line, body) == (b"HTTP/1.1 503 Service Unavailable", b"no healthy upstream")
    assert "grpc-status" not in dict(fields)


def test_the_access_log_has_200_and_the_original_flag(setup: Setup) -> None:
    setup.call("/svc.Empty/Logged")
    setup.call("/nothing.Here/Logged")

    def logged() -> list[dict[str, Any]]:
        lines = [line for line in read_json_lines(setup.log, 0, timeout=0) if line["path"].endswith("/Logged")]
        return lines if len(lines) == 2 else []

    lines = wait_until(logged, timeout=10)
    assert [(line["path"], line["code"], line["flags"], line["bytes_sent"]) for line in lines] == [
        ("/svc.Empty/Logged", 200, "UH", 0), ("/nothing.Here/Logged", 200, "NR", 0)]
    assert [line["details"] for line in lines] == ["no_healthy_upstream", "route_not_found"]
