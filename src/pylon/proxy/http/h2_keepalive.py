"""HTTP/2 connection keepalive: PINGs that find a dead peer (Http2ProtocolOptions.connection_keepalive).

A connection through a NAT or a stateful firewall can die without a FIN: the
next request on it would wait for a response that never comes. Envoy's codec
sends a PING every `interval` (plus a random share of it up to
`interval_jitter` percent, 15 by default, so a fleet's PINGs do not line up)
and, when no ACK came within `timeout`, closes the connection and counts
`http2.keepalive_timeout`. No new PING goes out while one is unanswered; any
frame received meanwhile extends the wait by another `timeout` (the ACK may be
queued behind other frames), and an ACK starts the next interval. A client
with `connection_idle_interval` also sends a PING before a new stream on a
connection it has received nothing on for that long.

`H2Keepalive` holds one connection's timers; the connection (a pool's or the
HCM's) calls `received` when bytes arrive, `acked` on a PING ACK,
`before_stream` when a stream starts, and `stop` when it closes. It sends
through the `ping` and `expire` callables it was given, so it knows no socket.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, Callable

__all__ = ["H2Keepalive"]


class H2Keepalive:
    """One HTTP/2 connection's keepalive timers (see the module docstring)."""

    __slots__ = ("loop", "interval", "timeout", "jitter", "idle_interval", "ping", "expire", "rng",
                 "send_timer", "timeout_timer", "last_received")

    def __init__(self, loop: asyncio.AbstractEventLoop, settings: Any, ping: Callable[[], None],
                 expire: Callable[[], None], rng: random.Random | None = None) -> None:
        self.loop = loop
        self.interval = float(settings.interval) if settings.interval is not None else 0.0
        self.timeout = float(settings.timeout)
        self.jitter = settings.interval_jitter.value if settings.interval_jitter is not None else 15.0
        self.idle_interval = (float(settings.connection_idle_interval)
                              if settings.connection_idle_interval is not None else 0.0)
        self.ping, self.expire = ping, expire
        self.rng = rng if rng is not None else random.Random()
        self.send_timer: asyncio.TimerHandle | None = None
        self.timeout_timer: asyncio.TimerHandle | None = None
        self.last_received = loop.time()
        self.acked()  # the first interval

    def acked(self) -> None:
        """A PING ACK came (or the connection began): stop waiting, and schedule the next PING."""
        if self.timeout_timer is not None:
            self.timeout_timer.cancel()
            self.timeout_timer = None
        if self.interval:
            if self.send_timer is not None:
                self.send_timer.cancel()
            # Envoy's jitter: whole milliseconds, a random number modulo jitter% of the interval.
            interval_ms = int(self.interval * 1000)
            spread = int(self.jitter * interval_ms / 100)
            if spread > 0:
                interval_ms += self.rng.randrange(spread)
            self.send_timer = self.loop.call_later(interval_ms / 1000, self._send)

    def received(self) -> None:
        """Bytes arrived: while an ACK is awaited, the wait starts again."""
        self.last_received = self.loop.time()
        if self.timeout_timer is not None:
            self.timeout_timer.cancel()
            self.timeout_timer = self.loop.call_later(self.timeout, self._timed_out)

    def before_stream(self) -> None:
        """A client's new stream: PING first if nothing was received for `connection_idle_interval`."""
        if self.idle_interval and self.loop.time() - self.last_received > self.idle_interval:
            self._send()

    def stop(self) -> None:
        """The connection closed: no more timers."""
        for timer in (self.send_timer, self.timeout_timer):
            if timer is not None:
                timer.cancel()
        self.send_timer = self.timeout_timer = None

    def _send(self) -> None:
        self.send_timer = None
        if self.timeout_timer is not None:
            return  # a PING is still unanswered
        self.ping()
        self.timeout_timer = self.loop.call_later(self.timeout, self._timed_out)

    def _timed_out(self) -> None:
        self.timeout_timer = None
        self.stop()
        self.expire()
