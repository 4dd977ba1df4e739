"""per_connection_buffer_limit_bytes becomes each connection's write buffer watermarks (Envoy's high/low marks)."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace
from typing import Any

import uvloop

from pylon.proxy.upstream.pool import UpstreamConnection
from pylon.proxy.watermarks import apply_buffer_limit
from pylon.stats.store import Counter
from tests.proxy.test_stream_states import FakeLoop


class RecordingTransport:
    def __init__(self) -> None:
        self.limits: tuple[int, int] | None = None

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.limits = (high, low)

    def get_extra_info(self, name: str) -> Any:
        return None


def test_the_limit_is_the_high_mark_and_half_of_it_the_low_mark_on_a_real_transport() -> None:
    async def main() -> tuple[int, int]:
        left, right = socket.socketpair()
        transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, left)
        apply_buffer_limit(transport, 32768)
        limits = transport.get_write_buffer_limits()
        transport.close()
        right.close()
        return limits

    assert uvloop.run(main()) == (16384, 32768)


def test_zero_turns_the_watermarks_off() -> None:
    transport = RecordingTransport()
    apply_buffer_limit(transport, 0)
    assert transport.limits is not None and transport.limits[0] > 1 << 60


def test_an_upstream_connection_takes_its_clusters_limit() -> None:
    stats = SimpleNamespace(upstream_cx_rx_bytes_total=Counter("rx"), upstream_cx_tx_bytes_total=Counter("tx"))
    cluster = SimpleNamespace(config=SimpleNamespace(per_connection_buffer_limit_bytes=4096), upstream_trailers=False,
                              response_case=None, stats=stats)
    conn = UpstreamConnection(SimpleNamespace(cluster=cluster, limits=SimpleNamespace(max_headers=100),  # type: ignore[arg-type]
                                              loop=FakeLoop()))
    transport = RecordingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    assert transport.limits == (4096, 2048)
