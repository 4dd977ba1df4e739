"""envoy.filters.http.grpc_http1_bridge: gRPC for HTTP/1.1 clients that cannot read trailers.

As Envoy 1.40 does (observed side by side, tests/proxy/test_proxy_grpc_http1_bridge.py): a request whose
content-type is application/grpc (or application/grpc+...) is bridged: its response is held whole, and when it
ends with trailers their grpc-status and grpc-message become response headers, a grpc-status other than 0 turns
the status into 503, and the body goes with a content-length (the trailers themselves are dropped, as Envoy's
HTTP/1 codec drops them). A response without trailers (trailers-only, grpc-status in its head) passes as it
came. With `upgrade_protobuf_to_grpc`, an application/x-protobuf request becomes application/grpc: its body goes
upstream as one gRPC frame (the 5-byte prefix; chunked, its content-length dropped), and the bridged response's
body loses its first frame's prefix (its content-type stays application/grpc, as Envoy's).

What needs HTTP/2: Envoy sends these requests to gRPC servers over HTTP/2. pylon's upstreams are HTTP/1.1 only
yet, so the bridge works with an upstream that speaks gRPC's framing over HTTP/1.1 with trailers (the cluster's
`http_protocol_options.enable_trailers`: without it the trailers never arrive and responses pass unchanged,
also as Envoy). A route to an HTTP/2 (gRPC) cluster is refused at load, as for every route (config/loader.py).

Refused by name: `ignore_query_parameters` (removing the query from an upgraded request's path is not done yet).
Not done: Envoy's per-method gRPC stats of bridged calls (`cluster.<name>.grpc.<service>.<method>.*`).
"""

from __future__ import annotations

from typing import Any

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct
from pylon.config.errors import FieldError
from pylon.proxy.filters.http import register_filter

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.grpc_http1_bridge.v3.Config"
GRPC = b"application/grpc"
PROTOBUF = b"application/x-protobuf"
FRAME_HEADER = 5  # gRPC's message prefix: a compressed flag and a 4-byte big-endian length


class Config(EnvoyStruct, kw_only=True):
    """extensions.filters.http.grpc_http1_bridge.v3.Config."""

    upgrade_protobuf_to_grpc: bool = False
    ignore_query_parameters: bool = False

    def __post_init__(self) -> None:
        if self.ignore_query_parameters:
            raise FieldError("ignore_query_parameters", "not supported yet: pylon does not remove the query from "
                                                        "an upgraded request's path")


def is_grpc(content_type: bytes | None) -> bool:
    """Envoy's gRPC content-type test: application/grpc, or application/grpc+<codec>."""
    return content_type is not None and (content_type == GRPC or content_type.startswith(GRPC + b"+"))


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((value for key, value in headers if key == name), None)


class GrpcHttp1BridgeFilter:
    """One HCM's bridge filter in one worker."""

    def __init__(self, name: str, config: Config, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        self.upgrade = config.upgrade_protobuf_to_grpc
        #: bridged streams -> whether their request was upgraded from protobuf (its frames are ours to undo)
        self.bridged: dict[Any, bool] = {}
        #: upgraded request bodies, piece by piece until their end
        self._pending: dict[Any, list[bytes]] = {}

    # ---------------------------------------------------------------- the request side
    def decode_headers(self, stream: Any) -> bool:
        content_type = _header(stream.headers, b"content-type")
        framing = self.upgrade and content_type == PROTOBUF
        if framing:
            stream.edit_request_header("set", b"content-type", GRPC)  # (Envoy's te: trailers is for HTTP/2)
            content_type = GRPC
        if is_grpc(content_type):
            self.bridged[stream] = framing
            stream.on_finish(lambda: (self.bridged.pop(stream, None), self._pending.pop(stream, None)))
        return True

    def wants_request_data(self, stream: Any) -> bool:
        return self.bridged.get(stream, False)

    def decode_data(self, stream: Any, data: bytes, end_stream: bool) -> bytes:
        """An upgraded body goes as one gRPC frame: held until its end, then prefixed with its length."""
        pending = self._pending.setdefault(stream, [])
        pending.append(data)
        if not end_stream:
            return b""
        body = b"".join(self._pending.pop(stream))
        return b"\x00" + len(body).to_bytes(4, "big") + body

    # ---------------------------------------------------------------- the response side
    def encode_headers(self, stream: Any, status: int, headers: Any) -> None:
        """Nothing to change at the head (what the trailers say decides); being an encoder lets the filter hold
        bridged responses whole."""

    def wants_response_body(self, stream: Any) -> bool:
        return stream in self.bridged

    def encode_body(self, stream: Any, status: int, headers: Any, body: bytes) -> bytes | None:
        trailers = stream.resp_trailers
        if trailers is None:
            return None  # no trailers (trailers-only, or an upstream without enable_trailers): as it came
        grpc_status = _header(trailers, b"grpc-status")
        if grpc_status is not None:
            if grpc_status != b"0":
                stream.status = 503
            headers.set(b"grpc-status", grpc_status)
        grpc_message = _header(trailers, b"grpc-message")
        if grpc_message is not None:
            headers.set(b"grpc-message", grpc_message)
        stream.resp_trailers = None  # the body goes with a length; Envoy's HTTP/1 codec drops the trailers
        if self.bridged.get(stream) and len(body) >= FRAME_HEADER:
            return body[FRAME_HEADER:]
        return None


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, Config)
register_filter(Config, GrpcHttp1BridgeFilter)
