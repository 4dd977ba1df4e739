"""Listener filters: they read a new connection's first bytes, without consuming them, before a chain is chosen.

Envoy runs its listener filters on an accepted socket before any filter chain
exists: `tls_inspector` finds out whether the client speaks TLS and which SNI
and ALPN it asks for, `http_inspector` whether a plaintext client speaks
HTTP/1.0, HTTP/1.1 or HTTP/2 with prior knowledge. What they find selects the
filter chain (`filter_chain_match.server_names`, `transport_protocol`,
`application_protocols`); the bytes stay in the kernel (MSG_PEEK) for the chain
that takes the connection, a TLS handshake included.

Each filter module (`pylon/extensions/filters/listener/`) registers its config
Struct (`config.registry`, category `envoy.filters.listener`) and a factory
here, in the proxy, which must not import the filters (they import it). A filter is sans-IO: the worker
(`proxy/listener_filters.py`) peeks and calls `inspect(data, detected)` with
every byte the client has sent so far, until it answers DONE or CLOSE; a filter
that reads the socket rather than bytes (`max_bytes` 0) gets `on_accept(sock,
detected)` once, in its turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

#: What `inspect` answers.
MORE = 0  # not decided: call again when more bytes have come
DONE = 1  # decided (what it found is in `detected`); the next filter runs
CLOSE = 2  # the connection must be closed (e.g. a ClientHello over the size limit)


@dataclass(slots=True)
class Detected:
    """What listener filters found out about one connection (Envoy's connection socket properties)."""

    server_name: str = ""
    transport_protocol: str = ""  # "" until a filter sets it; chains see "raw_buffer" then, as in Envoy
    application_protocols: tuple[str, ...] = ()
    original_destination: tuple[str, int] | None = None  # where a redirected connection was going (original_dst)
    #: the client's address a PROXY protocol header named (None: the socket's peer is the client)
    remote_address: tuple[str, int] | None = None
    #: the destination that header named: it becomes `original_destination` if it is not the socket's own
    proxied_destination: tuple[str, int] | None = None
    #: bytes at the stream's start a filter took off it (the PROXY header): read away before the next filter
    drain: int = 0


class ListenerFilter(Protocol):
    #: The most bytes this filter may need to see to decide (the peek size); 0 for a filter that reads the
    #: socket instead (`on_accept(sock, detected)`, e.g. original_dst), which never waits for bytes.
    max_bytes: int

    def inspect(self, data: bytes, detected: Detected) -> int: ...


#: factory(config Struct, worker stats store) -> the filter, built once per listener and worker
ListenerFilterFactory = Callable[[Any, Any], ListenerFilter]
_FACTORIES: dict[type, ListenerFilterFactory] = {}


def register_listener_filter(config_type: type, factory: ListenerFilterFactory) -> None:
    _FACTORIES[config_type] = factory


def build_listener_filter(config: Any, stats: Any) -> ListenerFilter:
    """The filter for one `listener_filters` entry (its config type was registered by its module)."""
    return _FACTORIES[type(config)](config, stats)
