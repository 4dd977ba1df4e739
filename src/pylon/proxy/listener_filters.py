"""A worker runs a listener's filters on a new connection: peek until they decide, then pick its filter chain.

Bytes are read with MSG_PEEK, so they stay in the kernel for the chain's own
transport (a TLS handshake reads the ClientHello the inspector saw). Peeking
returns the same bytes until more arrive, so waiting on an ordinary
(level-triggered) reader would spin; a per-worker epoll set in edge-triggered
mode wakes an inspection only when new bytes (or the peer's FIN) arrive, and
that epoll's one descriptor is what the event loop watches.

Envoy's rules: `listener_filters_timeout` (15 s; 0 for none) bounds the wait,
after which the connection is closed (`downstream_pre_cx_timeout`), or, with
`continue_on_listener_filters_timeout`, goes on with what was found so far; a
peer that leaves meanwhile counts `downstream_listener_filter_remote_close`; a
filter that refuses the connection (a ClientHello too large) counts
`downstream_listener_filter_error`. `downstream_pre_cx_active` gauges the
connections under inspection.
"""

from __future__ import annotations

import asyncio
import select
import socket
from typing import Any, Callable

from pylon.proxy.filters.listener import CLOSE, MORE, Detected

_EDGE_EVENTS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET


class PeekWatcher:
    """Edge-triggered readiness for the sockets one worker is inspecting."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.epoll = select.epoll()
        self.waiting: dict[int, Callable[[int], None]] = {}
        loop.add_reader(self.epoll.fileno(), self._on_ready)

    def watch(self, fd: int, callback: Callable[[int], None]) -> None:
        self.waiting[fd] = callback
        self.epoll.register(fd, _EDGE_EVENTS)  # reported once at once if bytes are already waiting

    def forget(self, fd: int) -> None:
        if self.waiting.pop(fd, None) is not None:
            self.epoll.unregister(fd)

    def _on_ready(self) -> None:
        for fd, events in self.epoll.poll(0):
            callback = self.waiting.get(fd)
            if callback is not None:
                callback(events)


class Inspection:
    """One connection under a listener's filters; `proceed(detected)` or `drop()` runs exactly once."""

    __slots__ = ("sock", "fd", "runtime", "filters", "current", "detected", "peek_size", "seen", "timer",
                 "proceed", "drop", "watcher", "ended")

    def __init__(self, sock: socket.socket, runtime: Any, proceed: Callable[[Detected], None],
                 drop: Callable[[], None], detected: Detected | None = None) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.runtime = runtime
        self.filters = runtime.listener_filters
        self.current = 0
        self.detected = detected or Detected()  # a hand-off brings what the first listener found
        self.peek_size = max(f.max_bytes for f in self.filters)
        self.seen = -1
        self.proceed, self.drop = proceed, drop
        self.watcher: PeekWatcher | None = None  # set while waiting for bytes
        self.ended = False
        self.timer: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop, watcher: PeekWatcher) -> None:
        self.runtime.pre_cx_active.inc()
        if self._run(None):
            return  # decided at once: socket filters only, or the bytes were already there
        self.watcher = watcher
        watcher.watch(self.fd, self._on_readable)
        timeout = self.runtime.config.listener_filters_timeout
        if timeout > 0:
            self.timer = loop.call_later(timeout, self._timed_out)

    def _on_readable(self, events: int) -> None:
        self._run(None, events)

    def _run(self, data: bytes | None, events: int = 0) -> bool:
        """Run the filters from the current one on; True once the inspection is over (either way)."""
        filters = self.filters
        while self.current < len(filters):
            listener_filter = filters[self.current]
            if listener_filter.max_bytes == 0:
                verdict = listener_filter.on_accept(self.sock, self.detected)  # type: ignore[attr-defined]
            else:
                if data is None:
                    data = self._peek(events)
                    if data is None:
                        return self.ended  # nothing new yet (or the peer left: ended)
                verdict = listener_filter.inspect(data, self.detected)
            if verdict == MORE:
                return False
            if verdict == CLOSE:
                return self._end(False, self.runtime.listener_filter_error)
            if self.detected.drain:
                if not self._drain():
                    return True
                data = None  # what follows the header is peeked afresh
            self.current += 1
        return self._end(True)

    def _drain(self) -> bool:
        """Read away the bytes a filter took off the stream (they were peeked, so they are there); the next
        filter peeks what follows. A destination the header named is restored if it is not the socket's own."""
        detected = self.detected
        try:
            self.sock.recv(detected.drain, socket.MSG_DONTWAIT)
        except OSError:
            self._end(False, self.runtime.listener_filter_remote_close)
            return False
        detected.drain = 0
        self.seen = -1
        named = detected.proxied_destination
        if named is not None and named != self.sock.getsockname()[:2]:
            detected.original_destination = named
        return True

    def _peek(self, events: int) -> bytes | None:
        """Every byte the client has sent so far, or None when there is nothing new (or the peer left)."""
        try:
            data = self.sock.recv(self.peek_size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            self._end(False, self.runtime.listener_filter_remote_close)
            return None
        if not data or (len(data) == self.seen and events & select.EPOLLRDHUP):
            self._end(False, self.runtime.listener_filter_remote_close)  # left before the filters decided
            return None
        if len(data) == self.seen:
            return None
        self.seen = len(data)
        return data

    def _timed_out(self) -> None:
        self.timer = None
        self.runtime.pre_cx_timeout.inc()  # counted either way, as Envoy does
        if self.runtime.config.continue_on_listener_filters_timeout:
            self._end(True)
        else:
            self._end(False)

    def _end(self, go_on: bool, failure: Any = None) -> bool:
        """Stop watching; go on to the chain, or drop the connection counting `failure` (if any)."""
        self.ended = True
        if self.watcher is not None:
            self.watcher.forget(self.fd)
            self.watcher = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.runtime.pre_cx_active.dec()
        if go_on:
            self.proceed(self.detected)
        else:
            if failure is not None:
                failure.inc()
            self.drop()
        return True
