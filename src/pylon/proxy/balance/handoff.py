"""Hand-off balancing: the supervisor accepts, picks a worker, and passes it the socket.

Used by `exact` and the dispatcher; the policy object (`exact.py`,
`dispatcher.py`) is the only difference between them.

Why the acceptor runs in the supervisor: its event loop is otherwise idle
(admin scrapes only), it already owns the listening sockets and knows which
workers are alive, and a single acceptor is what makes the choice exact across
processes — it is the lock Envoy's exact balancer takes, without a lock. The
cost is one extra hop per connection (accept + sendmsg here, recvmsg in the
worker); accepting every pending connection per wake-up (or the listener's
`max_connections_to_accept_per_socket_event`) and sending each worker's share of
every `MAX_BATCH` in one `sendmsg` keeps that cost per connection small when the
rate is high.

The path of one connection:

1. the supervisor accepts it on the listener's only socket and asks the policy
   for a worker, given each live worker's load: `handed - taken + cx_active`
   connections (handed: counted here on send; taken and cx_active: published
   by the worker in the load table) and its in-flight requests;
2. the fd goes over that worker's unix socketpair with SCM_RIGHTS;
3. the worker wraps it with `loop.connect_accepted_socket` (TLS handshakes
   included) and then counts it as taken; the protocol's `connection_made`
   has already counted it as active, so the sum above never drops it.

A worker that dies: the supervisor keeps its own reference to the worker's end
of the socketpair, so fds sent but not yet read are still queued there. When
the supervisor notices the death (`worker_gone`), it stops choosing that worker,
reads those fds back and hands them to live workers, so no connection accepted
here is lost. (Connections the dead worker had already adopted die with it.)
A send that fails (the worker's queue is full) is retried on another worker;
if every worker is full, accepting pauses and the kernel's backlog holds new
connections until a retry succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections import deque
from typing import Any, Protocol, Sequence

from pylon.proxy.balance.acceptor import accept_pending
from pylon.proxy.balance.adopt import start_adopting
from pylon.proxy.balance.listen_socket import new_listen_socket
from pylon.proxy.balance.loadtable import CX_ACTIVE, RQ_ACTIVE, TAKEN, LoadSlot, LoadTable

log = logging.getLogger("pylon.main")

#: Most fds in one hand-off message (SCM_MAX_FD is 253).
MAX_BATCH = 64
#: How soon to retry hand-offs when every live worker's queue was full.
RETRY_DELAY_S = 0.005


class Policy(Protocol):
    name: str
    uses_inflight: bool

    def pick(self, workers: Sequence[int], connections: Sequence[int], requests: Sequence[int]) -> int: ...


class HandoffBalancer:
    """One listener balanced by hand-off: the supervisor half (accept, pick, send) and the worker half (`serve`)."""

    handoff = True

    def __init__(self, policy: Policy, listener_index: int, backlog: int, accepts_per_event: int | None = None,
                 freebind: bool = False) -> None:
        self.backlog = backlog  # of the one socket the supervisor accepts from
        self.freebind = freebind
        self.accepts_per_event = accepts_per_event or sys.maxsize  # unset: all pending, as Envoy
        self.policy = policy
        self.name = policy.name
        self.uses_inflight = policy.uses_inflight
        self.listener_index = listener_index
        self.sock: socket.socket | None = None
        self.table: LoadTable | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.channels: dict[int, socket.socket] = {}  # our end of each worker's socketpair
        self.worker_ends: dict[int, socket.socket] = {}  # their end, kept to take back what a dead worker left
        self.slots: dict[int, LoadSlot] = {}
        self.handed: dict[int, int] = {}
        self.live: list[int] = []
        self.pending: deque[int] = deque()
        self.accepting = False
        self.closed = False

    # ------------------------------------------------------------------ supervisor: set-up
    def bind(self, host: str, port: int, workers: int) -> None:
        """The listener's one socket, bound now so errors surface before any worker starts."""
        sock = new_listen_socket(host, self.freebind)
        try:
            sock.bind((host, port))
            sock.listen(self.backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def worker_socket(self, worker_id: int) -> socket.socket:
        """A fresh hand-off channel for a (re)starting worker; the returned end goes to the worker by pass_fds."""
        assert self.table is not None, "attach the load table before starting workers"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        theirs.setblocking(False)
        self.channels[worker_id] = ours
        self.worker_ends[worker_id] = theirs
        self.slots[worker_id] = slot = self.table.slot(self.listener_index, worker_id)
        slot.reset()
        self.handed[worker_id] = 0
        return theirs

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._resume_accepting()

    def worker_ready(self, worker_id: int) -> None:
        """The worker is serving: from now on it gets connections."""
        if worker_id not in self.live:
            self.live.append(worker_id)
            self.live.sort()
        if self.pending:
            self._retry_pending()

    def worker_gone(self, worker_id: int) -> None:
        """The worker died: choose it no more, and re-dispatch what was queued to it but never read."""
        if worker_id in self.live:
            self.live.remove(worker_id)
        theirs = self.worker_ends.pop(worker_id, None)
        ours = self.channels.pop(worker_id, None)
        rescued: list[int] = []
        if theirs is not None:
            while True:
                try:
                    data, fds, _flags, _addr = socket.recv_fds(theirs, 1, MAX_BATCH)
                except OSError:
                    break
                rescued.extend(fds)
                if not data:
                    break
            theirs.close()
        if ours is not None:
            ours.close()
        if rescued:
            log.warning("listener %d: re-dispatching %d connection(s) queued to dead worker %d",
                        self.listener_index, len(rescued), worker_id)
            self._dispatch(rescued)

    def close(self) -> None:
        """Stop accepting and let go of everything (drain: the workers finish what they have)."""
        self.closed = True
        self._pause_accepting()
        if self.sock is not None:
            self.sock.close()
        while self.pending:
            os.close(self.pending.popleft())
        for sock in [*self.channels.values(), *self.worker_ends.values()]:
            sock.close()
        self.channels.clear()
        self.worker_ends.clear()
        self.live.clear()

    # ------------------------------------------------------------------ supervisor: the accept path
    def _resume_accepting(self) -> None:
        if not self.accepting and not self.closed and self.loop is not None and self.sock is not None:
            self.loop.add_reader(self.sock.fileno(), self._on_acceptable)
            self.accepting = True

    def _pause_accepting(self) -> None:
        if self.accepting and self.loop is not None and self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
        self.accepting = False

    def _on_acceptable(self) -> None:
        assert self.sock is not None
        fds: list[int] = []
        # sock._accept: the fd without building a Python socket object we would only detach
        for fd in accept_pending(self.sock._accept, self.accepts_per_event, str(self.listener_index)):
            fds.append(fd)
            if len(fds) == MAX_BATCH:
                self._dispatch(fds)
                fds = []
                if not self.accepting:
                    return  # every worker is full: the backlog holds the rest
        if fds:
            self._dispatch(fds)

    def loads(self, workers: Sequence[int]) -> tuple[list[int], list[int]]:
        """Active connections (exact: published + in transit) and in-flight requests of `workers`."""
        connections, requests = [], []
        for worker in workers:
            slot = self.slots[worker]
            connections.append(self.handed[worker] - slot[TAKEN] + slot[CX_ACTIVE])
            requests.append(slot[RQ_ACTIVE] if self.uses_inflight else 0)
        return connections, requests

    def _dispatch(self, fds: list[int]) -> None:
        """Give every fd to a worker; what no worker can take now waits in `pending` (accepting paused)."""
        full: set[int] = set()
        todo = fds
        while todo:
            workers = [w for w in self.live if w not in full]
            if not workers:
                self.pending.extend(todo)
                self._pause_accepting()
                if self.loop is not None:
                    self.loop.call_later(RETRY_DELAY_S, self._retry_pending)
                return
            connections, requests = self.loads(workers)
            shares: dict[int, list[int]] = {}
            for fd in todo:
                worker = self.policy.pick(workers, connections, requests)
                index = workers.index(worker)
                connections[index] += 1
                self.handed[worker] += 1
                shares.setdefault(worker, []).append(fd)
            todo = []
            for worker, share in shares.items():
                if not self._send(worker, share):
                    self.handed[worker] -= len(share)
                    full.add(worker)
                    todo.extend(share)

    def _send(self, worker: int, fds: list[int]) -> bool:
        try:
            socket.send_fds(self.channels[worker], [b"\0"], fds)
        except OSError:  # EAGAIN: the worker's queue is full; anything else: the channel is going away
            return False
        for fd in fds:
            os.close(fd)  # the worker has its own reference now
        return True

    def _retry_pending(self) -> None:
        if self.closed or not self.pending:
            return
        fds = list(self.pending)
        self.pending.clear()
        self._dispatch(fds)
        if not self.pending:
            self._resume_accepting()

    # ------------------------------------------------------------------ worker half
    async def serve(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, runtime: Any,
                    network_namespace: str = "") -> "HandoffReceiver":
        """In the worker: adopt every socket that arrives on `sock`, this worker's end of the channel."""
        return HandoffReceiver(loop, sock, runtime, network_namespace)


class HandoffReceiver:
    """The worker's end of a hand-off channel; `close()` stops taking connections (drain)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, channel: socket.socket, runtime: Any,
                 network_namespace: str = "") -> None:
        self.loop = loop
        self.channel = channel
        self.runtime = runtime
        self.network_namespace = network_namespace  # what its connections' NetworkNamespaceInput reads
        self.slot: LoadSlot = runtime.load_slot
        channel.setblocking(False)
        loop.add_reader(channel.fileno(), self._on_readable)
        self.open = True

    def _on_readable(self) -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.channel, 1, MAX_BATCH)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            for fd in fds:
                start_adopting(self.loop, socket.socket(fileno=fd), self.runtime, self._taken, self.network_namespace)
            if not data:  # the supervisor closed its end: it is draining or gone
                self.close()
                return

    def _taken(self) -> None:
        self.slot[TAKEN] += 1

    def close(self) -> None:
        if self.open:
            self.open = False
            self.loop.remove_reader(self.channel.fileno())
            self.channel.close()
