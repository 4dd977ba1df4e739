"""Integration: envoy.filters.http.sse_to_metadata through pylon and Envoy 1.40 alike.

An upstream streams Server-Sent Events as an LLM API does (the model first, token usage last, `[DONE]` at the
end), in pieces cut mid-line and mid-CRLF, with comments; the filter's rules are those of Envoy's docs'
sse-to-metadata-filter.yaml plus fallbacks. The access log (JSON) shows the metadata each proxy wrote, the
stats what they counted; the client must get the upstream's bytes unchanged.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, http_listener, json_access_log, read_json_lines, static_cluster, \
    wait_until
from tests.proxy.upstreams import TcpEcho, request_heads

SSE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.sse_to_metadata.v3.SseToMetadata"
JSON_PARSER_TYPE = "type.googleapis.com/envoy.extensions.content_parsers.json.v3.JsonContentParser"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

LLM_EVENTS = (b': keep-alive\r\n\r\n'
              b'data: {"model": "gpt-x", "choices": [{"delta": "Hel"}]}\r\n\r\n'
              b'event: message\ndata: {"model": "gpt-y", "choices": [{"delta": "lo"}]}\n\n'
              b'data: {"usage": {"prompt_tokens": 5,\ndata: "total_tokens": 42}}\r\r'
              b'data: [DONE]\n\n')

RULES = [
    {"rule": {"selectors": [{"key": "usage"}, {"key": "total_tokens"}],
              "on_present": {"metadata_namespace": "envoy.lb", "key": "tokens", "type": "NUMBER"},
              "on_missing": {"metadata_namespace": "envoy.lb", "key": "tokens", "value": -1}}},
    {"rule": {"selectors": [{"key": "model"}],
              "on_present": {"metadata_namespace": "envoy.lb", "key": "model_name", "type": "STRING"}},
     "stop_processing_after_matches": 1},
    {"rule": {"selectors": [{"key": "usage"}, {"key": "prompt_tokens"}],
              "on_present": {"key": "prompt", "type": "STRING"}}},
    {"rule": {"selectors": [{"key": "missing"}],
              "on_missing": {"key": "missing", "value": "never seen"},
              "on_error": {"key": "error", "value": "a parse error"}}},
]
LOG = {"tokens": "%DYNAMIC_METADATA(envoy.lb:tokens)%", "model": "%DYNAMIC_METADATA(envoy.lb:model_name)%",
       "parser": "%DYNAMIC_METADATA(envoy.content_parsers.json)%"}


class SseUpstream(TcpEcho):
    """Answers each request with a scripted response, written piece by piece (separate sends, TCP_NODELAY)."""

    def __init__(self) -> None:
        self.responses: dict[str, tuple[bytes, list[bytes]]] = {}  # path -> (head, body pieces)
        super().__init__()

    def script(self, path: str, content_type: str, pieces: list[bytes], chunked: bool = True) -> None:
        framing = "transfer-encoding: chunked" if chunked else f"content-length: {sum(map(len, pieces))}"
        head = f"HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\n{framing}\r\n\r\n".encode()
        if chunked:
            pieces = [b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces] + [b"0\r\n\r\n"]
        self.responses[path] = (head, pieces)

    def _echo(self, conn: socket.socket) -> None:  # type: ignore[override]
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            for head in request_heads(conn):
                path = head.split(b" ")[1].decode()
                response_head, pieces = self.responses[path]
                conn.sendall(response_head)
                for piece in pieces:
                    conn.sendall(piece)


def _listener(port: int, log: Path, max_event_size: int | None) -> dict[str, Any]:
    rules: dict[str, Any] = {"content_parser": {"name": "envoy.content_parsers.json", "typed_config": {
        "@type": JSON_PARSER_TYPE, "rules": RULES}}}
    if max_event_size is not None:
        rules["max_event_size"] = max_event_size
    return http_listener("main", port, [{"match": {"prefix": "/"}, "route": {"cluster": "llm"}}],
                         access_log=json_access_log(log, **LOG), http_filters=[
        {"name": "envoy.filters.http.sse_to_metadata", "typed_config": {"@type": SSE_TYPE, "response_rules": rules}},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}},
    ])


@pytest.fixture
def gateway(implementation: str, tmp_path: Path,
            request: pytest.FixtureRequest) -> Iterator[tuple[Any, int, SseUpstream, Path]]:
    upstream = SseUpstream()
    launcher = ProxyLauncher(tmp_path)
    try:
        port, log = free_port(), tmp_path / "access.json"
        max_event_size = getattr(request, "param", None)
        proxy = launcher.start([_listener(port, log, max_event_size)], [static_cluster("llm", [upstream.port])],
                               implementation=implementation)
        yield proxy, port, upstream, log
    finally:
        launcher.close()
        upstream.close()


def _counters(proxy: Any) -> dict[str, int]:
    return {k: v for k, v in proxy.stats().items() if k.startswith("sse_to_metadata.") and v}


def _cut(body: bytes, size: int) -> list[bytes]:
    return [body[i:i + size] for i in range(0, len(body), size)]


def test_token_usage_from_a_streamed_answer(gateway: tuple[Any, int, SseUpstream, Path]) -> None:
    proxy, port, upstream, log = gateway
    upstream.script("/chat/pieces", "text/event-stream; charset=utf-8", _cut(LLM_EVENTS, 7))
    upstream.script("/chat/whole", "Text/Event-Stream", [LLM_EVENTS], chunked=False)
    for path in ("/chat/pieces", "/chat/whole"):
        response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)
        assert response.content == LLM_EVENTS
    whole = httpx.get(f"http://127.0.0.1:{port}/chat/whole", timeout=10)
    assert whole.headers["content-length"] == str(len(LLM_EVENTS))  # passed through, not re-framed
    lines = read_json_lines(log, 3, timeout=10)
    assert [(line["tokens"], line["model"]) for line in lines] == [(42, "gpt-x")] * 3
    # [DONE] is no JSON: the rule that never matched takes on_error, not on_missing.
    assert lines[0]["parser"] == {"prompt": "5", "error": "a parse error"}
    # Per response: model_name, tokens and prompt written as they pass, `error` at the end; the comment-only event
    # has no data.
    expected = {"sse_to_metadata.resp.json.metadata_added": 12, "sse_to_metadata.resp.json.metadata_from_fallback": 3,
                "sse_to_metadata.resp.json.no_data_field": 3, "sse_to_metadata.resp.json.parse_error": 3}
    assert wait_until(lambda: _counters(proxy) == expected, timeout=10), _counters(proxy)


def test_fallbacks_and_other_content_types(gateway: tuple[Any, int, SseUpstream, Path]) -> None:
    proxy, port, upstream, log = gateway
    upstream.script("/plain", "application/json", [b'data: {"model": "m"}\n\n'])
    upstream.script("/nothing", "text/event-stream", [b'data: {"other": 1}\n\n', b'data: {"x": 2}\n\ndata: unfinished'])
    for path in ("/plain", "/nothing"):
        assert httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10).status_code == 200
    plain, nothing = read_json_lines(log, 2, timeout=10)
    assert (plain["tokens"], plain["model"], plain["parser"]) == (None, None, None)
    assert (nothing["tokens"], nothing["model"]) == (-1, None)
    assert nothing["parser"] == {"missing": "never seen"}
    expected = {"sse_to_metadata.resp.json.metadata_added": 2, "sse_to_metadata.resp.json.metadata_from_fallback": 2,
                "sse_to_metadata.resp.json.mismatched_content_type": 1}
    assert wait_until(lambda: _counters(proxy) == expected, timeout=10), _counters(proxy)


@pytest.mark.parametrize("gateway", [24], indirect=True)
def test_an_event_over_max_event_size_is_dropped(gateway: tuple[Any, int, SseUpstream, Path]) -> None:
    proxy, port, upstream, log = gateway
    # 30 bytes that never make an event: however the reads cut them, what is held passes 24 bytes exactly once.
    body = b'data: {"model": "small"}\n\n' + b"data: " + b"m" * 24
    upstream.script("/big", "text/event-stream", _cut(body, 10))
    response = httpx.get(f"http://127.0.0.1:{port}/big", timeout=10)
    assert response.content == body
    [line] = read_json_lines(log, 1, timeout=10)
    assert line["model"] == "small"
    assert wait_until(lambda: _counters(proxy).get("sse_to_metadata.resp.json.event_too_large") == 1, timeout=10), \
        _counters(proxy)
