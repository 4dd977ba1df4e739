"""The connection's data inputs (envoy.extensions.matching.common_inputs.network.v3), for any matcher's caller.

Each reads `data.network`, a `NetworkMatchingData` the caller made once per
connection (a listener choosing a filter chain, a UDP session) or shares with
every stream of it (HTTP). Addresses are text without brackets, ports decimal;
a value the connection does not have is absent (None), as in Envoy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from pylon.config import matcher as config

Reader = Callable[[Any], "str | None"]


class NetworkMatchingData:
    """What the network inputs read about one connection. `source` is the client as trusted (for HTTP, after
    x-forwarded-for when the connection manager uses it), `direct_source` the peer socket's."""

    __slots__ = ("local", "source", "direct_source", "server_name", "transport_protocol", "application_protocols",
                 "network_namespace")

    def __init__(self, local: tuple[str, int] | None, source: tuple[str, int] | None,
                 direct_source: tuple[str, int] | None = None, server_name: str = "",
                 transport_protocol: str = "", application_protocols: tuple[str, ...] = (),
                 network_namespace: str = "") -> None:
        self.local = local
        self.source = source
        self.direct_source = direct_source if direct_source is not None else source
        self.server_name = server_name
        self.transport_protocol = transport_protocol
        self.application_protocols = application_protocols
        #: the accepting listener address's network_namespace_filepath ("": the default namespace)
        self.network_namespace = network_namespace

    @property
    def network(self) -> NetworkMatchingData:
        """Itself: a listener's matcher gets this as its data, and the readers read `data.network`."""
        return self


def namespace_input(address: Any) -> str:
    """What NetworkNamespaceInput reads for connections (or datagrams) taken on a listener's socket address (None:
    an internal listener's): its `network_namespace_filepath`, but "" for a wildcard address, as Envoy 1.40 (there
    the connection's local address is the socket's own, which carries no namespace: observed, and read in its
    tcp_listener_impl.cc)."""
    if address is None or ipaddress.ip_address(address.address).is_unspecified:
        return ""
    return address.network_namespace_filepath


def _address(which: str, part: int) -> Callable[[Any], Reader]:
    """A reader factory for part 0 (the IP) or 1 (the port) of one of the connection's addresses."""

    def factory(_: Any) -> Reader:
        def read(data: Any) -> str | None:
            address = getattr(data.network, which)
            return None if address is None else str(address[part])

        return read

    return factory


def _text(which: str) -> Callable[[Any], Reader]:
    def factory(_: Any) -> Reader:
        return lambda data: getattr(data.network, which) or None

    return factory


def _application_protocols(_: Any) -> Reader:
    def read(data: Any) -> str | None:
        offered = data.network.application_protocols
        return ",".join(f"'{p}'" for p in offered) if offered else None  # Envoy quotes each and joins them

    return read


#: decoded input Struct type -> reader factory (a caller's `Vocabulary.inputs` includes these)
NETWORK_READERS: dict[type, Callable[[Any], Reader]] = {
    config.DestinationIPInput: _address("local", 0),
    config.DestinationPortInput: _address("local", 1),
    config.SourceIPInput: _address("source", 0),
    config.SourcePortInput: _address("source", 1),
    config.DirectSourceIPInput: _address("direct_source", 0),
    config.ServerNameInput: _text("server_name"),
    config.TransportProtocolInput: _text("transport_protocol"),
    config.ApplicationProtocolInput: _application_protocols,
    config.NetworkNamespaceInput: _text("network_namespace"),
}
