"""envoy.filters.http.grpc_http1_reverse_bridge: gRPC clients served by a plain HTTP/1.1 upstream.

As Envoy 1.40's filter (tests/proxy/test_proxy_grpc_reverse_bridge.py runs the same calls through both):

- A gRPC request (content-type application/grpc or application/grpc+..., with a body; a route may disable the
  filter with FilterConfigPerRoute) goes upstream with `content_type` as its content-type and accept header. With
  `withhold_grpc_frames` its body loses the 5-byte gRPC prefix (a first piece shorter than that is answered with
  grpc-status 2 "invalid request body") and its content-length shrinks by 5.
- The response must carry `content_type`, else the client gets a trailers-only gRPC error (status 2, "envoy
  reverse bridge: upstream responded with unsupported content-type <ct>, status code <code>", or "... with no
  content-type header ..."). Otherwise it becomes HTTP 200 with the request's own content-type, and trailers with
  grpc-status: 0 for a 200, else the gRPC status of the HTTP status (grpc_local_reply.http_to_grpc_status). With
  `withhold_grpc_frames` the body becomes one gRPC message: held whole and prefixed, or, with
  `response_size_header`, its length taken from that header (missing: status 13 "envoy reverse bridge: upstream
  did not set content length"; a body of another length: status 13 "... upstream set incorrect content length").

Departure: pylon holds every bridged response whole (Envoy streams it when no frame needs computing); the bytes
and headers sent are the same, except that a body whose length is not the `response_size_header`'s gets the
status 13 reply Envoy's code means to send, where Envoy, its head already sent, can only reset the stream.
"""

from __future__ import annotations

from typing import Any

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, NonEmptyStr
from pylon.extensions.filters.http.grpc_http1_bridge import FRAME_HEADER, is_grpc
from pylon.proxy.filters.http import register_filter
from pylon.proxy.grpc_local_reply import http_to_grpc_status, percent_encode
from pylon.proxy.stream_states import RQ_DONE

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.grpc_http1_reverse_bridge.v3.FilterConfig"
PER_ROUTE_TYPE_URL = ("type.googleapis.com/envoy.extensions.filters.http.grpc_http1_reverse_bridge.v3."
                      "FilterConfigPerRoute")
UNKNOWN, INTERNAL = 2, 13


class FilterConfig(EnvoyStruct, kw_only=True):
    """extensions.filters.http.grpc_http1_reverse_bridge.v3.FilterConfig."""

    content_type: NonEmptyStr
    withhold_grpc_frames: bool = False
    response_size_header: str = ""


class FilterConfigPerRoute(EnvoyStruct, kw_only=True):
    """extensions.filters.http.grpc_http1_reverse_bridge.v3.FilterConfigPerRoute."""

    disabled: bool = False


def _frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


class _Call:
    """One bridged request: the client's content-type, and whether its body's prefix is gone yet."""

    __slots__ = ("content_type", "stripped")

    def __init__(self, content_type: bytes) -> None:
        self.content_type = content_type
        self.stripped = False


class ReverseBridgeFilter:
    """One HCM's reverse bridge in one worker."""

    def __init__(self, name: str, config: FilterConfig, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        self.upstream_type = config.content_type.encode()
        self.withhold = config.withhold_grpc_frames
        self.size_header = config.response_size_header.lower().encode() or None
        self.calls: dict[Any, _Call] = {}

    # ---------------------------------------------------------------- the request side
    def decode_headers(self, stream: Any) -> bool:
        if stream.rq_state == RQ_DONE:
            return True  # a request without a body is not bridged (Envoy's decodeHeaders with end_stream)
        route = stream.route
        per_route = route.filter_config(self.name) if route is not None else None
        if per_route is not None and per_route.disabled:
            return True
        content_type = next((value for key, value in stream.headers if key == b"content-type"), None)
        if not is_grpc(content_type):
            return True
        assert content_type is not None
        self.calls[stream] = _Call(content_type)
        stream.on_finish(lambda: self.calls.pop(stream, None))
        stream.edit_request_header("set", b"content-type", self.upstream_type)
        stream.edit_request_header("set", b"accept", self.upstream_type)
        if self.withhold:
            length = next((value for key, value in stream.headers if key == b"content-length"), None)
            if length is not None and length.isdigit() and int(length):
                stream.edit_request_header("set", b"content-length", b"%d" % (int(length) - FRAME_HEADER))
                stream.req_length = int(length) - FRAME_HEADER
        return True

    def wants_request_data(self, stream: Any) -> bool:
        call = self.calls.get(stream)
        return call is not None and self.withhold and not call.stripped

    def decode_data(self, stream: Any, data: bytes, end_stream: bool) -> bytes:
        call = self.calls[stream]
        if call.stripped:
            return data
        if len(data) < FRAME_HEADER:
            stream.respond_from_filter(200, b"invalid request body", [], "grpc_bridge_data_too_small",
                                       grpc_status=UNKNOWN)
            return b""
        call.stripped = True
        return data[FRAME_HEADER:]

    # ---------------------------------------------------------------- the response side
    def encode_headers(self, stream: Any, status: int, headers: Any) -> None:
        """Nothing at the head: the whole response is rewritten in `encode_body`, once its length is known."""

    def wants_response_body(self, stream: Any) -> bool:
        return stream in self.calls

    def encode_body(self, stream: Any, status: int, headers: Any, body: bytes) -> bytes | None:
        call = self.calls[stream]
        content_type = headers.get(b"content-type")
        if content_type != self.upstream_type:
            what = (f"unsupported content-type {content_type.decode('latin-1')}" if content_type is not None
                    else "no content-type header")
            return self._error(stream, headers, UNKNOWN,
                               f"envoy reverse bridge: upstream responded with {what}, status code {status}")
        grpc_status = 0 if status == 200 else http_to_grpc_status(status)
        if self.withhold:
            if self.size_header is not None:
                declared = headers.get(self.size_header)
                size = declared.split(b",", 1)[0] if declared is not None else b""
                if not size.strip().isdigit():
                    return self._error(stream, headers, INTERNAL,
                                       "envoy reverse bridge: upstream did not set content length")
                if int(size) != len(body):
                    return self._error(stream, headers, INTERNAL,
                                       "envoy reverse bridge: upstream set incorrect content length")
            body = _frame(body)
        headers.set(b"content-type", call.content_type)
        if b"content-length" in headers:
            headers.set(b"content-length", b"%d" % len(body))
        stream.status = 200
        trailers = [pair for pair in (stream.resp_trailers or []) if pair[0] != b"grpc-status"]
        stream.resp_trailers = [*trailers, (b"grpc-status", b"%d" % grpc_status)]
        return body

    @staticmethod
    def _error(stream: Any, headers: Any, code: int, message: str) -> bytes:
        """Envoy's local reply to a gRPC call, in place of the response: a trailers-only 200."""
        for name in [name for name, _ in headers.items]:
            headers.remove(name)
        headers.set(b"content-type", b"application/grpc")
        headers.set(b"grpc-status", b"%d" % code)
        headers.set(b"grpc-message", percent_encode(message.encode()))
        stream.status = 200
        stream.resp_trailers = None
        return b""


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, FilterConfig)
registry.register_typed(registry.HTTP_FILTER_PER_ROUTE, PER_ROUTE_TYPE_URL, FilterConfigPerRoute)
register_filter(FilterConfig, ReverseBridgeFilter)
