"""Integration: envoy.filters.http.grpc_web through pylon and Envoy 1.40, side by side.

gRPC-Web clients speak HTTP/1.1 here (raw sockets, so bodies can be split anywhere), one HTTP/2; the upstream
speaks gRPC's framing over HTTP/1.1 with trailers (tests/proxy/grpc_h1_upstream.py: the method name picks ok, fail or
trailers-only). Compared: what the upstream received, the client's answer (head fields without date and the
proxies' own timing header; body de-chunked) and the grpc-web stats. Expectations are what Envoy 1.40 does.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, http_listener, route, static_cluster, wait_until
from tests.proxy.grpc_h1_upstream import FRAMED, GrpcHttp1Upstream
from tests.proxy.test_proxy_grpc_http1_bridge import TRAILERS
from tests.proxy.test_proxy_http2 import H2Client

WEB_TYPE = "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"
OK_TRAILER = b"\x80\x00\x00\x00\x0fgrpc-status:0\r\n"
FAIL_TRAILER = b"\x80\x00\x00\x00\x22grpc-status:2\r\ngrpc-message:boom\r\n"
SKIP = {"date", "x-envoy-upstream-service-time", "connection"}


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, body = out + body[:size], body[size + 2:]
    return out


class Setup:
    def __init__(self, port: int, upstream: GrpcHttp1Upstream, stats: Any) -> None:
        self.port, self.upstream, self.stats = port, upstream, stats

    def post(self, path: str, content_type: str, pieces: list[bytes], accept: str | None = None
             ) -> tuple[int, dict[str, str], bytes, dict[str, Any] | None]:
        """(status, head fields, body, the request the upstream saw or None) of one request whose body is
        written in `pieces` (one write with the head when it is a single piece)."""
        before = len(self.upstream.requests)
        body = b"".join(pieces)
        head = (f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
                + (f"accept: {accept}\r\n" if accept else "") + "\r\n").encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            if len(pieces) == 1:
                sock.sendall(head + pieces[0])
            else:
                sock.sendall(head)
                for piece in pieces:
                    sock.sendall(piece)
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            raw_head, _, rest = data.partition(b"\r\n\r\n")
            lines = raw_head.decode("latin-1").split("\r\n")
            fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            if fields.get("transfer-encoding") == "chunked":
                while not rest.endswith(b"0\r\n\r\n"):
                    rest += sock.recv(65536)
                rest = _dechunk(rest)
            else:
                while len(rest) < int(fields.get("content-length", "0")):
                    rest += sock.recv(65536)
        requests = self.upstream.requests
        seen = requests[before] if len(requests) > before else None
        return int(lines[0].split()[1]), {k: v for k, v in fields.items() if k not in SKIP}, rest, seen


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp(f"grpc-web-{request.param}")
    upstream = GrpcHttp1Upstream()
    launcher = ProxyLauncher(directory)
    try:
        port = free_port()
        listener = http_listener("main", port, [
            route("/empty.S/", "empty"),
            {"match": {"prefix": "/direct/"}, "direct_response": {"status": 418, "body": {
                "inline_string": "100% t\u00e9a~"}}},
            route("/", "up")])
        listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, {
            "name": "envoy.filters.http.grpc_web", "typed_config": {"@type": WEB_TYPE}})
        empty = {"name": "empty", "connect_timeout": "1s", "type": "STATIC",
                 "load_assignment": {"cluster_name": "empty", "endpoints": []}}
        proxy = launcher.start([listener], [static_cluster("up", [upstream.port],
                                                           typed_extension_protocol_options=TRAILERS), empty],
                               implementation=request.param)
        yield Setup(port, upstream, proxy.stats)
    finally:
        launcher.close()
        upstream.close()


def test_a_binary_call_becomes_grpc_and_its_trailers_the_last_frame(setup: Setup) -> None:
    status, head, body, seen = setup.post("/svc.A/ok", "application/grpc-web+proto", [FRAMED])
    assert seen is not None and seen["body"] == FRAMED
    sent = dict(seen["headers"])
    assert (sent["content-type"], sent["te"], sent["grpc-accept-encoding"]) == ("application/grpc", "trailers",
                                                                                 "identity")
    assert "content-length" not in sent and sent["transfer-encoding"] == "chunked"
    assert (status, head["content-type"], body) == (200, "application/grpc-web+proto", FRAMED + OK_TRAILER)
    assert "grpc-status" not in head
    _, _, body, _ = setup.post("/svc.A/fail", "application/grpc-web", [FRAMED])
    assert body == FRAMED + FAIL_TRAILER


def test_text_calls_are_base64_both_ways(setup: Setup) -> None:
    text = base64.b64encode(FRAMED)
    pieces = [text[:3], text[3:7], text[7:]]  # split inside base64 groups
    status, head, body, seen = setup.post("/svc.A/ok", "application/grpc-web-text", pieces,
                                          accept="application/grpc-web-text")
    assert seen is not None and seen["body"] == FRAMED
    assert (status, head["content-type"]) == (200, "application/grpc-web-text+proto")
    assert body == base64.b64encode(FRAMED) + base64.b64encode(OK_TRAILER)
    assert base64.b64decode(body[:16]) + base64.b64decode(body[16:]) == FRAMED + OK_TRAILER


def test_separately_padded_messages_are_read_and_a_binary_answer_is_the_default(setup: Setup) -> None:
    second = b"\x00\x00\x00\x00\x01a"
    _, head, body, seen = setup.post("/svc.A/ok", "application/grpc-web-text",
                                     [base64.b64encode(FRAMED),
                                      base64.b64encode(second)])  # "...==" then the next run
    assert seen is not None and seen["body"] == FRAMED + second
    assert head["content-type"] == "application/grpc-web+proto" and body == FRAMED + OK_TRAILER


def test_a_trailers_only_answer_keeps_its_status_in_the_head(setup: Setup) -> None:
    status, head, body, _ = setup.post("/svc.A/trailers-only", "application/grpc-web", [FRAMED])
    assert (status, head["grpc-status"], head["content-type"], head["content-length"], body) == (
        200, "14", "application/grpc-web+proto", "0", b"")


@pytest.mark.parametrize("text", [b"!!!!", b"AAAAA"])
def test_bad_base64_is_a_400_with_grpc_status(setup: Setup, text: bytes) -> None:
    status, head, body, seen = setup.post("/svc.A/ok", "application/grpc-web-text", [text])
    assert (status, body) == (400, b"")
    assert (head["content-type"], head["grpc-status"], head["grpc-message"], head["content-length"]) == (
        "application/grpc-web+proto", "13", "Bad gRPC-web request, invalid base64 data.", "0")


def test_the_proxys_own_replies_keep_their_status_and_carry_grpc_status(setup: Setup) -> None:
    status, head, body, _ = setup.post("/empty.S/M", "application/grpc-web", [FRAMED])
    assert (status, head["grpc-status"], head["grpc-message"], head["content-type"], body) == (
        503, "14", "no healthy upstream", "application/grpc-web+proto", b"")
    status, head, body, _ = setup.post("/direct/M", "application/grpc-web", [FRAMED])
    assert (status, head["grpc-status"], head["grpc-message"], body) == (418, "2", "100%25 t%C3%A9a%7E", b"")


def test_other_content_types_pass_untouched(setup: Setup) -> None:
    status, head, body, seen = setup.post("/svc.A/ok", "application/grpc-web+json", [FRAMED])
    assert seen is not None and dict(seen["headers"])["content-type"] == "application/grpc-web+json"
    assert dict(seen["headers"])["content-length"] == str(len(FRAMED)) and "te" not in dict(seen["headers"])
    assert (status, head["content-type"], body) == (200, "application/grpc", FRAMED)


def test_calls_are_counted_per_method_under_grpc_web(setup: Setup) -> None:
    def stats() -> dict[str, int]:
        return {k: v for k, v in setup.stats().items() if ".grpc-web." in k}

    before = stats()
    setup.post("/svc.B/ok", "application/grpc-web", [FRAMED])
    setup.post("/svc.B/fail", "application/grpc-web", [FRAMED])
    setup.post("/svc.B/ok", "application/grpc-web-text", [b"!!!!"])  # answered by the filter: not counted

    def counted() -> dict[str, int] | None:
        now = stats()
        return now if now.get("cluster.up.grpc-web.svc.B.fail.total") else None

    after = wait_until(counted)
    new = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert new == {"cluster.up.grpc-web.svc.B.ok.0": 1, "cluster.up.grpc-web.svc.B.ok.success": 1,
                   "cluster.up.grpc-web.svc.B.ok.total": 1, "cluster.up.grpc-web.svc.B.fail.2": 1,
                   "cluster.up.grpc-web.svc.B.fail.failure": 1, "cluster.up.grpc-web.svc.B.fail.total": 1}
    assert not any(".empty." in k for k in after)


def test_over_http2_the_trailers_are_in_the_body_too(setup: Setup) -> None:
    client = H2Client(setup.port)
    sid = client.get("/svc.A/fail", (b"content-type", b"application/grpc-web"), method=b"POST", end=False)
    client.h2.send_data(sid, FRAMED, end_stream=True)
    client.flush()
    client.pump_until(lambda: client.ended(sid))
    heads = [event for event in client.owner.events if event[0] in ("headers", "trailers") and event[1] == sid]
    assert [event[0] for event in heads] == ["headers"]  # no HTTP/2 trailers: they are the body's last frame
    fields = dict(heads[0][2])
    assert (fields[b":status"], fields[b"content-type"]) == (b"200", b"application/grpc-web+proto")
    assert bytes(client.owner.body[sid]) == FRAMED + FAIL_TRAILER
