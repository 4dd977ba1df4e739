"""envoy.filters.http.grpc_web: gRPC-Web clients (browsers) to gRPC upstreams, as Envoy 1.40 translates.

A request whose content-type is exactly application/grpc-web(+proto) or application/grpc-web-text(+proto) goes
upstream as application/grpc with `te: trailers` and `grpc-accept-encoding: identity`, its length dropped
(chunked); a -text body is base64-decoded piece by piece (separately padded runs too); bad base64 is answered 400
"Bad gRPC-web request, invalid base64 data." (as gRPC-Web: see below). The response becomes
application/grpc-web+proto (application/grpc-web-text+proto, base64 throughout, when the request's `accept` is a
-text type): the body passes, and the upstream's trailers become the body's last frame (flag 0x80,
`name:value\\r\\n` per field) instead of trailers; a trailers-only answer keeps its grpc-status in the head.
A response that is not framed gRPC (a plain-text local reply such as "no healthy upstream", an upstream's error
page, a direct response) keeps its HTTP status but its body becomes `grpc-message` (percent-encoded) and
`grpc-status` the HTTP status's gRPC code, with no body. Each finished gRPC call is counted as Envoy's filter
counts it, for every method: `cluster.<c>.grpc-web.<service>.<method>.{total, success | failure, <status>}`.
CORS preflights are the cors filter's. Observed side by side with Envoy in tests/proxy/test_proxy_grpc_web.py.

The filter has no options (GrpcWeb is an empty message in Envoy 1.40).
"""

from __future__ import annotations

from typing import Any

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct
from pylon.extensions.filters.common.grpc_call_stats import charge_status, service_and_method
from pylon.extensions.filters.common.grpc_web import (BINARY_RESPONSE, PROTO_RESPONSE_TYPES, REQUEST_TYPES,
                                                       TEXT_RESPONSE, TEXT_TYPES, Base64Decoder, Base64Encoder,
                                                       Base64Error, trailer_frame)
from pylon.proxy import local_reply as lr
from pylon.proxy.filters.http import register_filter
from pylon.proxy.grpc_local_reply import http_to_grpc_status, percent_encode

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"
BAD_BASE64 = lr.LocalReply(400, "-", b"Bad gRPC-web request, invalid base64 data.", "grpc_base_64_decode_failed")


class GrpcWeb(EnvoyStruct, kw_only=True):
    """extensions.filters.http.grpc_web.v3.GrpcWeb: no fields."""


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((value for key, value in headers if key == name), None)


class _Call:
    """One gRPC-Web request's translation state."""

    __slots__ = ("names", "decoder", "encoder", "error", "empty", "trailers", "status")

    def __init__(self, names: str | None, text_request: bool, text_response: bool) -> None:
        self.names = names  # "<service>.<method>" for the stats, None if the path names no method
        self.decoder = Base64Decoder() if text_request else None
        self.encoder = Base64Encoder() if text_response else None
        self.error = False  # the response is not framed gRPC: its body becomes grpc-message
        self.empty = False  # the response says it has no body (a trailers-only answer): its length stays
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.status: bytes | None = None  # the call's grpc-status, once known


class GrpcWebFilter:
    """One HCM's gRPC-Web filter in one worker."""

    def __init__(self, name: str, config: GrpcWeb, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        self.stats = stats
        self.calls: dict[Any, _Call] = {}

    # ---------------------------------------------------------------- the request side
    def decode_headers(self, stream: Any) -> bool:
        content_type = _header(stream.headers, b"content-type")
        if content_type not in REQUEST_TYPES:
            return True
        resolved = service_and_method(stream.path)
        call = _Call(None if resolved is None else "%s.%s" % resolved, content_type in TEXT_TYPES,
                     _header(stream.headers, b"accept") in TEXT_TYPES)
        self.calls[stream] = call
        stream.on_finish(lambda: self._finish(stream))
        stream.edit_request_header("set", b"content-type", b"application/grpc")
        stream.edit_request_header("set", b"te", b"trailers")
        stream.edit_request_header("set", b"grpc-accept-encoding", b"identity")
        return True

    def wants_request_data(self, stream: Any) -> bool:
        return stream in self.calls  # the body goes chunked: Envoy drops the gRPC-Web request's length

    def decode_data(self, stream: Any, data: bytes, end_stream: bool) -> bytes:
        decoder = self.calls[stream].decoder
        if decoder is None:
            return data
        try:
            decoded = decoder.feed(data)
            if end_stream:
                decoder.finish()
        except Base64Error:
            stream.local(BAD_BASE64)
            return b""
        return decoded

    # ---------------------------------------------------------------- the response side
    def encode_headers(self, stream: Any, status: int, headers: Any) -> None:
        call = self.calls.get(stream)
        if call is None:
            return
        call.error = headers.get(b"content-type") not in PROTO_RESPONSE_TYPES
        call.empty = headers.get(b"content-length") == b"0"
        headers.set(b"content-type", BINARY_RESPONSE if call.encoder is None else TEXT_RESPONSE)
        call.status = headers.get(b"grpc-status")  # a trailers-only answer's

    def wants_response_data(self, stream: Any) -> bool:
        call = self.calls.get(stream)
        return call is not None and not call.error and not call.empty

    def encode_data(self, stream: Any, data: bytes, end_stream: bool) -> bytes:
        call = self.calls[stream]
        tail = trailer_frame(call.trailers) if end_stream and call.trailers else b""
        if call.encoder is None:
            return data + tail
        return call.encoder.feed(data) + (call.encoder.finish(tail) if end_stream else b"")

    def encode_trailers(self, stream: Any, trailers: list[tuple[bytes, bytes]]) -> None:
        """The trailers go into the body's last frame (written by `encode_data` at the end), none as trailers."""
        call = self.calls.get(stream)
        if call is None or call.error:
            return
        call.trailers = list(trailers)
        call.status = _header(trailers, b"grpc-status")
        trailers.clear()

    def wants_response_body(self, stream: Any) -> bool:
        call = self.calls.get(stream)
        return call is not None and call.error

    def encode_body(self, stream: Any, status: int, headers: Any, body: bytes) -> bytes | None:
        """A response that is not gRPC: its body as grpc-message, its status as grpc-status, nothing left."""
        if body:
            headers.set(b"grpc-message", percent_encode(body))
            headers.set(b"grpc-status", b"%d" % http_to_grpc_status(status))
        return b""

    def _finish(self, stream: Any) -> None:
        call = self.calls.pop(stream)
        if call.status is not None and call.names is not None and not call.error and stream.cluster is not None:
            charge_status(self.stats.counter, f"cluster.{stream.cluster.name}.grpc-web.{call.names}.", call.status)


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, GrpcWeb)
register_filter(GrpcWeb, GrpcWebFilter)
