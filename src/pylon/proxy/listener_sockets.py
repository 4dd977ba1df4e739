"""The supervisor's sockets of LDS listeners: bound when an update is checked, handed to each worker once.

Why bind while checking: a port that cannot be bound (in use, not local)
must reject the LDS update — a NACK naming the listener's address — rather
than fail later in every worker. Bound only: the workers listen once the
listener is warm, so a warming listener refuses connections, as in Envoy. Why the supervisor: it already owns the
static listeners' sockets, so a worker that restarts inherits every socket
it serves, and a listener's kernel backlog survives the restart.

A worker started after a listener was bound gets its socket by `pass_fds`
(`spawn_fds`); a running worker gets new ones over its listener channel, a
SOCK_SEQPACKET socketpair (message boundaries keep each batch of fds with
the JSON list of names it belongs to), always before the control message that
names them, so they are queued for the worker by the time it applies that
version (`lds.py`). A listener removed and added again is bound afresh.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from pylon.config.errors import ConfigError
from pylon.proxy.balance import bind_address, listen_backlog, spell_address
from pylon.proxy.balance.kernel import KernelBalancer
from pylon.proxy.netns import NetworkNamespaceError

#: fds per message: below the kernel's SCM_MAX_FD (253).
FDS_PER_MESSAGE = 200


class ListenerSockets:
    """Bound LDS listener sockets by listener name, and which worker has which."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.bound: dict[str, KernelBalancer] = {}
        self.sent: dict[int, set[str]] = {}  # worker id -> the names whose socket it holds

    def bind_new(self, listeners: dict[str, Any], source: str) -> None:
        """Bind what is not bound yet; ConfigError at `resources[i].address` (nothing of this call kept) if one fails."""
        fresh: list[str] = []
        try:
            for i, (name, listener) in enumerate(listeners.items()):
                if name in self.bound or not listener.bind_to_port:
                    continue  # same name, same address (DynamicConfig refuses a move): the socket stays
                sa = listener.socket_address
                balancer = KernelBalancer(listen_backlog(listener), reuse_port=listener.enable_reuse_port,
                                          accepts_per_event=listener.max_connections_to_accept_per_socket_event,
                                          freebind=listener.freebind)
                try:
                    bind_address(balancer, sa, self.workers, listen=False)
                except NetworkNamespaceError as exc:
                    raise ConfigError(source, f"resources[{i}].address.socket_address.network_namespace_filepath",
                                      f"listener {name!r}: {exc.strerror}") from exc
                except OSError as exc:
                    raise ConfigError(source, f"resources[{i}].address", f"listener {name!r}: cannot bind "
                                      f"{spell_address(sa)}: {exc.strerror or exc}") from exc
                self.bound[name] = balancer
                fresh.append(name)
        except ConfigError:
            for name in fresh:
                self.bound.pop(name).close()
            raise

    def release(self, name: str) -> None:
        """Close the supervisor's copies; the port is free once the workers have closed theirs too."""
        balancer = self.bound.pop(name, None)
        if balancer is not None:
            balancer.close()
        for names in self.sent.values():
            names.discard(name)

    def spawn_fds(self, worker_id: int) -> dict[str, int]:
        """Name -> fd of every bound listener, for a worker being started (they go by pass_fds)."""
        self.sent[worker_id] = set(self.bound)
        return {name: balancer.worker_socket(worker_id).fileno() for name, balancer in self.bound.items()}

    def send_missing(self, worker_id: int, channel: socket.socket) -> None:
        """Send the worker the sockets it does not hold yet, over its listener channel."""
        held = self.sent.setdefault(worker_id, set())
        missing = [name for name in self.bound if name not in held]
        for start in range(0, len(missing), FDS_PER_MESSAGE):
            names = missing[start:start + FDS_PER_MESSAGE]
            fds = [self.bound[name].worker_socket(worker_id).fileno() for name in names]
            socket.send_fds(channel, [json.dumps(names).encode()], fds)
            held.update(names)

    def close(self) -> None:
        for name in list(self.bound):
            self.release(name)


def receive_listener_fds(channel: socket.socket) -> dict[str, int]:
    """In the worker: every (name -> fd) queued on the listener channel (non-blocking)."""
    received: dict[str, int] = {}
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(channel, 65536, FDS_PER_MESSAGE)
        except (BlockingIOError, InterruptedError):
            return received
        if not data:
            return received  # the supervisor is gone
        received.update(zip(json.loads(data), fds))
