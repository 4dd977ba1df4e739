"""A worker's LDS listeners: started, replaced and drained as the supervisor's versions say.

The supervisor checked every listener before a version reaches a worker
(`dynamic.py`) and sent the sockets ahead of it (`listener_sockets.py`), so
applying cannot fail on config. As Envoy's listener manager does:

- a new listener listens and starts accepting on the socket it was sent;
- a modified one (same name and address) is rebuilt and takes over the same
  socket, so no connection attempt is refused in between; the old version
  stops accepting and its connections drain;
- a removed one stops accepting, closes its socket and drains.

Draining, as Envoy's listener drain: the listening socket closes (or passes
to the new version) at once; connections already open go on being served by
the version that accepted them, and whatever is still open when the drain
time (`--drain-time-s`) ends is closed.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pylon.config.envoy import Listener, convert
from pylon.proxy.balance import listen_backlog
from pylon.proxy.balance.acceptor import ListenerAcceptor
from pylon.proxy.listener import ListenerRuntime, build_listener
from pylon.proxy.matching.network_inputs import namespace_input
from pylon.proxy.listener_sockets import receive_listener_fds

if TYPE_CHECKING:
    from pylon.proxy.worker import Worker


@dataclass
class LdsListener:
    data: dict[str, Any]  # as the supervisor sent it: equal data, nothing to do
    runtime: ListenerRuntime
    acceptor: ListenerAcceptor | None  # None for a listener that does not bind (bind_to_port: false)


class LdsListeners:
    """The LDS listeners one worker serves, and the sockets it holds for listeners still warming."""

    def __init__(self, worker: "Worker", channel: socket.socket | None, fds: dict[str, int], drain_time: float) -> None:
        self.worker = worker
        self.channel = channel  # None for a worker of a proxy without LDS
        if channel is not None:
            channel.setblocking(False)
        self.fds = dict(fds)  # sockets received and not serving yet, by listener name
        self.drain_time = drain_time
        self.serving: dict[str, LdsListener] = {}

    def runtimes(self) -> list[ListenerRuntime]:
        """The LDS listeners serving now (not the draining ones: their connections keep their TLS)."""
        return [listener.runtime for listener in self.serving.values()]

    def apply(self, listeners: list[dict[str, Any]], bound: list[str]) -> None:
        """Serve exactly `listeners`; keep the sockets of `bound` (warming ones too), close the others."""
        if self.channel is not None:
            self.fds.update(receive_listener_fds(self.channel))
        wanted = {data["name"]: data for data in listeners}
        for name in [n for n in self.serving if n not in wanted]:
            self._retire(self.serving.pop(name), keep_socket=False)
        for name, data in wanted.items():
            current = self.serving.get(name)
            if current is not None and current.data == data:
                continue
            config = convert(data, Listener)
            runtime = build_listener(config, self.worker)
            self.worker.init_waits.clear()  # departure: an LDS listener serves at once (its fetches go on)
            if current is not None:
                sock = current.acceptor.sock if current.acceptor is not None else None
                self._retire(current, keep_socket=True)
            elif config.bind_to_port:
                sock = socket.socket(fileno=self.fds.pop(name))
                sock.listen(listen_backlog(config))  # bound while it warmed; it accepts from now on
            else:
                sock = None  # bind_to_port false: it only takes connections a use_original_dst listener hands over
            acceptor = None if sock is None else ListenerAcceptor(
                self.worker.loop, sock, runtime, config.max_connections_to_accept_per_socket_event,
                namespace_input(config.socket_address))
            if acceptor is not None and self.worker.overload.stop_accepting:
                acceptor.pause()  # the overload manager's stop_accepting_connections is on
            self.serving[name] = LdsListener(data, runtime, acceptor)
        for name in [n for n in self.fds if n not in bound]:
            socket.socket(fileno=self.fds.pop(name)).close()  # removed while it was warming

    def close(self) -> None:
        """Stop accepting on every LDS listener (the worker's drain)."""
        for entry in self.serving.values():
            if entry.acceptor is not None:
                entry.acceptor.close()

    def _retire(self, entry: LdsListener, keep_socket: bool) -> None:
        if entry.acceptor is not None:
            entry.acceptor.close(keep_socket=keep_socket)
        runtime = entry.runtime
        for terminal in runtime.terminals:
            self.worker.forget_route_subscriber(terminal)
        leaving = [conn for conn in self.worker.connections if conn.runtime_listener is runtime]
        for conn in leaving:
            # As Envoy's drain: each connection's next response says `connection: close`, so clients move to the
            # new version before the drain time ends; what is still open then is closed.
            conn.drain(close_idle=False)
        if leaving:
            self.worker.loop.call_later(self.drain_time, _close_all, leaving)


def _close_all(connections: list[Any]) -> None:
    for conn in connections:
        if not conn.closed:
            conn.close()
