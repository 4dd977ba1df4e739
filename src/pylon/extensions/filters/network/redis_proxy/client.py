"""One worker's connection to one redis host, shared by every client connection of one redis_proxy filter.

As Envoy's redis connection pool: per worker and filter, one connection per upstream host, pipelined (replies come back in
the order the commands went). A new connection first sends the cluster's AUTH (RedisProtocolOptions) and passes
over its reply, as Envoy does; a wrong password then shows in the replies to the commands themselves. A command
not answered within `op_timeout` closes the connection, and every command still on it fails ("upstream failure").
With `max_buffer_size_before_flush`, commands are written once that many bytes wait or `buffer_flush_timeout`
passed, whichever comes first.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Callable

from pylon.extensions.filters.network.redis_proxy import resp
from pylon.proxy.upstream.connect import ConnectError, ConnectTimeout, open_upstream

#: what a command's sender gets: the reply, or None when the connection failed before one came
OnReply = Callable[[resp.Reply | None], None]


class UpstreamClient(asyncio.Protocol):
    def __init__(self, cluster: Any, host: Any, auth: list[bytes] | None, settings: Any, pools: dict) -> None:
        self.cluster = cluster
        self.host = host
        self.pools = pools
        self.key = (id(cluster), host.address)
        self.op_timeout = float(settings.op_timeout)
        self.flush_size = settings.max_buffer_size_before_flush
        self.flush_timeout = settings.flush_timeout
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.decoder = resp.Decoder()
        self.waiting: deque[tuple[OnReply | None, asyncio.TimerHandle | None]] = deque()
        self.out: list[bytes] = []  # written once connected, or once the flush buffer is full
        self.out_size = 0
        self.flush_timer: asyncio.TimerHandle | None = None
        self.closed = False
        if auth is not None:
            self._queue(resp.encode_command(auth), None)  # its reply is passed over
        self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        cluster, stats = self.cluster, self.cluster.stats
        stats.upstream_cx_total.value += 1
        try:
            await open_upstream(self.host.address, cluster.tls_for(self.host), cluster.connect_timeout,
                                lambda: self, cluster.source, cluster.keepalive, cluster.tap,
                                cluster.preamble_for(self.host, None))
        except ConnectError as exc:
            if isinstance(exc, ConnectTimeout):
                stats.upstream_cx_connect_timeout.value += 1
            stats.upstream_cx_connect_fail.value += 1
            self.host.record_connect_failure()
            self._fail()

    def send(self, args: list[bytes], on_reply: OnReply) -> None:
        self.cluster.stats.upstream_rq_total.value += 1
        timer = self.loop.call_later(self.op_timeout, self._timed_out)
        self._queue(resp.encode_command(args), on_reply, timer)

    def _queue(self, data: bytes, on_reply: OnReply | None, timer: asyncio.TimerHandle | None = None) -> None:
        self.waiting.append((on_reply, timer))
        self.out.append(data)
        self.out_size += len(data)
        if self.transport is None:
            return
        if self.out_size >= self.flush_size:
            self._flush()
        elif self.flush_timer is None:
            self.flush_timer = self.loop.call_later(self.flush_timeout, self._flush)

    def _flush(self) -> None:
        if self.flush_timer is not None:
            self.flush_timer.cancel()
            self.flush_timer = None
        if self.out and self.transport is not None:
            data = b"".join(self.out)
            self.cluster.stats.upstream_cx_tx_bytes_total.value += len(data)
            self.transport.write(data)
            self.out.clear()
            self.out_size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.cluster.stats.upstream_cx_active.value += 1
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.cluster.stats.upstream_cx_rx_bytes_total.value += len(data)
        try:
            replies = self.decoder.feed(data)
        except resp.ProtocolError:
            self.cluster.stats.upstream_cx_protocol_error.value += 1
            self._close()
            return
        for reply in replies:
            if not self.waiting:
                self._close()  # a reply nobody asked for: the stream is out of step
                return
            on_reply, timer = self.waiting.popleft()
            if timer is not None:
                timer.cancel()
            if on_reply is not None:
                on_reply(reply)

    def _timed_out(self) -> None:
        self.cluster.stats.upstream_rq_timeout.value += 1
        self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cluster.stats.upstream_cx_active.value -= 1
        self.cluster.stats.upstream_cx_destroy.value += 1
        self._fail()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._fail()

    def _fail(self) -> None:
        """The connection is gone: its commands fail, and the next command to the host opens a new one."""
        if not self.closed:
            self.closed = True
            if self.pools.get(self.key) is self:
                del self.pools[self.key]
        if self.flush_timer is not None:
            self.flush_timer.cancel()
            self.flush_timer = None
        while self.waiting:
            on_reply, timer = self.waiting.popleft()
            if timer is not None:
                timer.cancel()
            if on_reply is not None:
                on_reply(None)
