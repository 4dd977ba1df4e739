"""envoy.transport_sockets.tap: a transport socket that records a connection's bytes, its config.

`extensions.transport_sockets.tap.v3.Tap` wraps another transport socket (raw_buffer or TLS) of a listener's
filter chain or of a cluster; what it records is the inner socket's plaintext (tap_trace.py records,
proxy/tap_socket.py wraps the connection). The TLS code sees through it to the TLS it wraps
(config/secrets.py `tls_context`: a socket whose config has a `transport_socket` wraps that one).

What pylon does exactly as Envoy 1.40, and refuses otherwise (naming the field):
- `common_config.static_config` only: `admin_config` (the admin `/tap` endpoint) is not supported yet;
- `match.any_match: true` only: the other predicates are HTTP matchers or combinations pylon does not offer;
- one `file_per_tap` sink in any of the five formats; buffered traces only (`streaming` is refused, and
  `min_streamed_sent_bytes` with it); `tap_enabled` and the deprecated `match_config` are refused.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from pylon.config import registry
from pylon.config.envoy import (
    EnvoyStruct, NonEmptyStr, NotSupportedYet, TransportSocket, UInt32, UpstreamTransportSocket,
)
from pylon.config.errors import FieldError
from pylon.extensions.transport_sockets.tap_trace import TapSink
from pylon.proxy.tap_socket import register_socket_tap

TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tap.v3.Tap"

#: Envoy's DefaultMaxBufferedBytes: what a trace keeps of each direction when output_config says nothing.
DEFAULT_MAX_BUFFERED_BYTES = 1024

SinkFormat = Literal["JSON_BODY_AS_BYTES", "JSON_BODY_AS_STRING", "PROTO_BINARY", "PROTO_BINARY_LENGTH_DELIMITED",
                     "PROTO_TEXT"]


class MatchPredicate(EnvoyStruct, kw_only=True):
    """config.tap.v3.MatchPredicate: of its rules only `any_match` (which must be true, as Envoy validates)."""

    any_match: bool | None = None
    or_match: NotSupportedYet | None = None
    and_match: NotSupportedYet | None = None
    not_match: NotSupportedYet | None = None
    http_request_headers_match: NotSupportedYet | None = None
    http_request_trailers_match: NotSupportedYet | None = None
    http_response_headers_match: NotSupportedYet | None = None
    http_response_trailers_match: NotSupportedYet | None = None
    http_request_generic_body_match: NotSupportedYet | None = None
    http_response_generic_body_match: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if self.any_match is None:
            raise FieldError("any_match", "a match rule is required (pylon offers any_match)")
        if not self.any_match:
            raise FieldError("any_match", "must be true")


class FilePerTapSink(EnvoyStruct, kw_only=True):
    """config.tap.v3.FilePerTapSink: one file per connection, `<path_prefix>_<connection id>.<format's ext>`."""

    path_prefix: NonEmptyStr


class OutputSink(EnvoyStruct, kw_only=True):
    """config.tap.v3.OutputSink: where and how traces are written; pylon has the file_per_tap sink."""

    format: SinkFormat = "JSON_BODY_AS_BYTES"
    file_per_tap: FilePerTapSink | None = None
    streaming_admin: NotSupportedYet | None = None
    buffered_admin: NotSupportedYet | None = None
    streaming_grpc: NotSupportedYet | None = None
    custom_sink: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if self.file_per_tap is None:
            raise FieldError("file_per_tap", "an output sink is required (pylon offers file_per_tap)")


class OutputConfig(EnvoyStruct, kw_only=True):
    """config.tap.v3.OutputConfig: exactly one sink, and how much of each direction a buffered trace keeps."""

    sinks: list[OutputSink]
    max_buffered_rx_bytes: UInt32 | None = None
    max_buffered_tx_bytes: UInt32 | None = None
    streaming: bool = False
    min_streamed_sent_bytes: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if len(self.sinks) != 1:
            raise FieldError("sinks", f"exactly one sink is required (got {len(self.sinks)})")
        if self.streaming:
            raise FieldError("streaming", "streamed traces are not supported yet (buffered ones are)")

    @property
    def rx_limit(self) -> int:
        return DEFAULT_MAX_BUFFERED_BYTES if self.max_buffered_rx_bytes is None else self.max_buffered_rx_bytes

    @property
    def tx_limit(self) -> int:
        return DEFAULT_MAX_BUFFERED_BYTES if self.max_buffered_tx_bytes is None else self.max_buffered_tx_bytes


class TapConfig(EnvoyStruct, kw_only=True):
    """config.tap.v3.TapConfig: what to tap (`match`) and where the traces go (`output_config`)."""

    match: MatchPredicate | None = None
    match_config: NotSupportedYet | None = None
    output_config: OutputConfig | None = None
    tap_enabled: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if self.match is None:
            raise FieldError("match", "missing required field (Envoy: neither match nor match_config is set)")
        if self.output_config is None:
            raise FieldError("output_config", "missing required field")


class CommonExtensionConfig(EnvoyStruct, kw_only=True):
    """extensions.common.tap.v3.CommonExtensionConfig: oneof {admin_config, static_config}."""

    admin_config: NotSupportedYet | None = None
    static_config: TapConfig | None = None

    def __post_init__(self) -> None:
        if self.static_config is None:
            raise FieldError("static_config", "one of admin_config and static_config is required "
                                              "(pylon offers static_config)")


class SocketTapConfig(EnvoyStruct, kw_only=True):
    """extensions.transport_sockets.tap.v3.SocketTapConfig. `set_connection_per_event` only changes streamed
    traces in Envoy (each streamed event carries the addresses); buffered ones, pylon's only kind, carry them
    once either way. `stats_prefix`: the counters are `transport.tap.<prefix>.buffered_submit`."""

    set_connection_per_event: bool = False
    stats_prefix: str = ""


class Tap(EnvoyStruct, kw_only=True):
    """extensions.transport_sockets.tap.v3.Tap on a listener's filter chain: taps `transport_socket`."""

    common_config: CommonExtensionConfig
    transport_socket: TransportSocket
    socket_tap_config: SocketTapConfig = msgspec.field(default_factory=SocketTapConfig)

    @property
    def static_config(self) -> TapConfig:
        assert self.common_config.static_config is not None  # checked when read
        return self.common_config.static_config


class UpstreamTap(Tap, kw_only=True):
    """The same message on a cluster: its inner socket is an upstream one."""

    transport_socket: UpstreamTransportSocket  # type: ignore[assignment]


registry.register_typed(registry.DOWNSTREAM_TRANSPORT_SOCKET, TYPE_URL, Tap)
registry.register_typed(registry.UPSTREAM_TRANSPORT_SOCKET, TYPE_URL, UpstreamTap)
register_socket_tap(Tap, TapSink)
register_socket_tap(UpstreamTap, TapSink)
