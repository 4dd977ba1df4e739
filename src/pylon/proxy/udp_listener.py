"""A UDP listener inside one worker: its socket's datagrams, each handed to the listener's UDP listener filter.

Envoy's raw UDP listener (no QUIC): there are no connections, no filter chains, no accepting; every datagram read
from the socket goes to the UDP listener filter (the UDP proxy) with the peer's address, and what the filter sends
back to a peer leaves from this same socket, so the client sees its answers come from the address it wrote to. A
datagram longer than the listener's `max_rx_datagram_size` (default 1500; with `prefer_gro`, 64 KiB) is dropped and
counted as Envoy counts the datagrams its receive buffer truncated
(`listener.<address>.udp.downstream_rx_datagram_dropped`).

The socket is read through uvloop's datagram endpoint (`asyncio.DatagramProtocol`); which worker reads which
peer's datagrams is the balancer's (`balance/udp.py`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from pylon.proxy.filters.udp import UdpListenerFilter, build_udp_listener_filter
from pylon.proxy.listener import listener_stat_name

if TYPE_CHECKING:
    from pylon.proxy.worker import Worker

log = logging.getLogger("pylon.proxy.udp_listener")


class UdpListenerRuntime(asyncio.DatagramProtocol):
    """One UDP listener in one worker: the protocol of its datagram endpoint, and what its filter sends through."""

    def __init__(self, config: Any, worker: "Worker") -> None:
        self.config = config
        self.worker = worker
        self.draining = False
        self.transport: asyncio.DatagramTransport | None = None
        self.max_rx_datagram_size = config.udp_config.downstream_socket_config.rx_limit(gro_by_default=False)
        prefix = listener_stat_name(config) + ".udp."
        self.rx_dropped = worker.stats.counter(prefix + "downstream_rx_datagram_dropped")
        self.filter: UdpListenerFilter = build_udp_listener_filter(config.listener_filters[0].typed_config, self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if len(data) > self.max_rx_datagram_size:
            self.rx_dropped.value += 1
            return
        self.filter.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP listener %s: %s", self.config.name, exc)

    def send_to(self, data: bytes, peer: tuple[Any, ...]) -> bool:
        """Send `data` to `peer` from the listener's socket; False if the listener is closed."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        transport.sendto(data, peer)
        return True

    def close(self, keep_socket: bool = False) -> None:
        """Drain: stop reading and end the filter's sessions (a datagram has nothing in flight to wait for)."""
        self.draining = True
        self.filter.close()
        if self.transport is not None:
            self.transport.close()
