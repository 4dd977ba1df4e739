"""The tap transport socket on a connection: the application protocol's reads and writes, seen on their way.

Envoy's tap socket sits between the connection and its inner transport socket (raw_buffer or TLS) and records
the plaintext that socket hands up and takes down. pylon's equivalent point is between the asyncio transport that
carries the plaintext (the TCP transport, uvloop's SSL one, or pylon's TLS transport) and the protocol on top (the
HTTP connection, tcp_proxy, an upstream pool's connection): `TapProtocol` wraps the protocol, handing it a
`TapTransport` that records what it writes. A listener chain or a cluster without a tap never builds either, so
its connections pay nothing. The recording itself is the extension's (extensions/transport_sockets/tap_trace.py),
found by its config's type (`register_socket_tap`), as the proxy imports no extension.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from pylon.extensions.transport_sockets.tap_trace import TapSink


class TapTransport:
    """The transport the tapped protocol writes to: every write is recorded, then passed on; everything else is
    the real transport's."""

    __slots__ = ("transport", "tapper", "owner")

    def __init__(self, transport: asyncio.Transport, owner: TapProtocol) -> None:
        self.transport = transport
        self.tapper = owner.tapper
        self.owner = owner

    def set_protocol(self, protocol: Any) -> None:
        """A protocol hands the connection on (an upgrade, the HTTP/2 switch, lingering): still tapped."""
        self.owner.app = protocol

    def get_protocol(self) -> Any:
        return self.owner.app

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.tapper.on_write(data)
        self.transport.write(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class TapProtocol(asyncio.Protocol):
    """The protocol the transport serves: records reads and, at the close, writes the connection's trace."""

    __slots__ = ("app", "sink", "tapper", "tap_transport", "addresses")

    def __init__(self, app: Any, sink: TapSink) -> None:
        self.app = app
        self.sink = sink
        self.tapper = sink.tapper()
        self.tap_transport: TapTransport | None = None
        self.addresses: tuple[Any, Any] = (None, None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Read now: once the connection is closed its addresses may be gone.
        self.addresses = _addresses(transport)
        self.tap_transport = TapTransport(transport, self)  # type: ignore[arg-type]
        self.app.connection_made(self.tap_transport)

    def data_received(self, data: bytes) -> None:
        self.tapper.on_read(data)
        self.app.data_received(data)

    def eof_received(self) -> bool | None:
        return self.app.eof_received()

    def pause_writing(self) -> None:
        self.app.pause_writing()

    def resume_writing(self) -> None:
        self.app.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.app.connection_lost(exc)
        finally:
            trace_id = getattr(self.app, "connection_id", 0) or self.sink.next_id()
            local, remote = self.addresses
            self.tapper.closed(trace_id, local, remote)

    def closed_unopened(self, raw: asyncio.BaseTransport | None) -> None:
        """pylon's TLS under the tap never opened (a failed handshake): the protocol never saw the connection, but
        Envoy's tap writes its trace anyway, with no event (tls_transport.py tells; uvloop's SSL, used only where
        the native module is not built, does not)."""
        local, remote = _addresses(raw) if raw is not None else (None, None)
        self.tapper.closed(self.sink.next_id(), local, remote)


def _addresses(transport: asyncio.BaseTransport) -> tuple[Any, Any]:
    return transport.get_extra_info("sockname"), transport.get_extra_info("peername")


#: A wrapping transport socket's config type -> what records its connections in one worker,
#: made as `factory(config, stats, worker_id)` (extensions register: extensions/transport_sockets/tap.py).
_TAPS: dict[type, Callable[[Any, Any, int], Any]] = {}


def register_socket_tap(config_type: type, factory: Callable[[Any, Any, int], Any]) -> None:
    _TAPS[config_type] = factory


def socket_tap(transport_socket: Any, stats: Any, worker_id: int) -> TapSink | None:
    """The tap among a listener chain's or a cluster's transport socket and the ones it wraps (a tap under a
    cluster's proxy_protocol socket) in this worker; None without one."""
    while transport_socket is not None:
        factory = _TAPS.get(type(transport_socket.typed_config))
        if factory is not None:
            return factory(transport_socket.typed_config, stats, worker_id)
        transport_socket = getattr(transport_socket.typed_config, "transport_socket", None)
    return None


def tapped_factory(factory: Callable[..., Any], sink: TapSink | None) -> Callable[..., Any]:
    """`factory`, its protocols tapped into `sink` (itself when there is no tap)."""
    if sink is None:
        return factory
    return lambda *args: TapProtocol(factory(*args), sink)
