"""UDP listener filters: what takes a UDP listener's datagrams (Envoy's envoy/network/filter.h UdpListenerReadFilter).

A UDP listener has no connections and no filter chains: every datagram it reads goes to its UDP listener filter,
with the peer's address. Envoy has one without QUIC, the UDP proxy (`envoy.filters.udp_listener.udp_proxy`); its
module (`pylon/extensions/filters/udp/`) registers its config Struct (`config.registry`, category
`envoy.filters.udp_listener`) and a factory here, in the proxy, which does not import the filters (they import it).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol


class UdpListenerFilter(Protocol):
    def on_datagram(self, data: bytes, peer: tuple[Any, ...]) -> None:
        """A datagram the listener read from `peer` (already checked against max_rx_datagram_size)."""

    def close(self) -> None:
        """The listener stops (drain): release what the filter holds (its sessions' sockets)."""


#: factory(config Struct, listener runtime) -> the filter, built once per listener and worker
UdpListenerFilterFactory = Callable[[Any, Any], UdpListenerFilter]
_FACTORIES: dict[type, UdpListenerFilterFactory] = {}
#: check(config Struct): ValueError for what only building the filter finds (format strings), run at validation
_CHECKS: dict[type, Callable[[Any], None]] = {}


def register_udp_listener_filter(config_type: type, factory: UdpListenerFilterFactory,
                                 check: Callable[[Any], None] | None = None) -> None:
    _FACTORIES[config_type] = factory
    if check is not None:
        _CHECKS[config_type] = check


def check_udp_listener_filter(config: Any) -> None:
    """ValueError unless a worker can build the filter of `config` (the supervisor checks before anything binds)."""
    check = _CHECKS.get(type(config))
    if check is not None:
        check(config)


def build_udp_listener_filter(config: Any, listener: Any) -> UdpListenerFilter:
    """The filter of a UDP listener's `listener_filters` entry (its config type was registered by its module)."""
    return _FACTORIES[type(config)](config, listener)
