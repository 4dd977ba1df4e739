"""Internal listeners (Envoy's `envoy.bootstrap.internal_listener`): listeners reached by name from a cluster
endpoint's `envoy_internal_address`, over an in-process connection (`user_space.py`), never a socket.

Each worker is a process, so this module's table is that worker's internal listeners, as Envoy's thread-local
registry is a worker thread's: a connection never leaves the worker that opened it. The worker registers its
internal listeners as it builds them (`register`); `connect` is what `upstream/connect.py` does for an internal
address, for the HTTP pools and tcp_proxy alike. A name no listener has fails as Envoy's: the connect fails at
once (503 UF for HTTP, `immediate connect error: Invalid argument`).

Addresses print as Envoy prints them: the listener side's local address is `envoy://<listener>/<endpoint_id>`, its
peer (the client side) `envoy://internal_client_address/`, for access logs and filters alike.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from pylon.proxy.user_space import UserSpaceTransport, transport_pair

#: The client side's address, as Envoy names it (%UPSTREAM_LOCAL_ADDRESS%, the internal listener's peer).
CLIENT_ADDRESS = "envoy://internal_client_address/"


class InternalAddress(str):
    """An upstream host that is an internal listener: the text Envoy prints (`envoy://name/endpoint_id`), with
    the listener's name beside it. A str, so it prints, compares and hashes as that text wherever a host's address
    goes."""

    listener: str

    def __new__(cls, listener: str, endpoint_id: str = "") -> "InternalAddress":
        address = super().__new__(cls, f"envoy://{listener}/{endpoint_id}")
        address.listener = listener
        return address


#: How a connect to a name no internal listener has fails (Envoy's transport failure reason, before the address).
NO_INTERNAL_LISTENER = "immediate connect error: Invalid argument"


class NoInternalListener(Exception):
    """No internal listener has the name: Envoy's connect error."""


_listeners: dict[str, Any] = {}  # name -> ListenerRuntime of this worker
_buffer_size = 1024 * 1024  # the extension's buffer_size_kb, in bytes


def configure(buffer_size: int) -> None:
    """The bootstrap extension's buffer size, for the connections made from now on."""
    global _buffer_size
    _buffer_size = buffer_size


def register(runtime: Any) -> None:
    """An internal listener of this worker takes connections under its name."""
    _listeners[runtime.config.name] = runtime


def connect(address: InternalAddress, protocol_factory: Callable[[], Any]) -> tuple[UserSpaceTransport, Any]:
    """Open a connection to the internal listener `address` names: the listener's chain serves its side; the
    caller's protocol gets the other (connected when this returns, as after a socket connect)."""
    runtime = _listeners.get(address.listener)
    if runtime is None or runtime.draining:
        raise NoInternalListener(f"{NO_INTERNAL_LISTENER}|remote address:{address}")
    loop = asyncio.get_running_loop()
    client, server = transport_pair(loop, CLIENT_ADDRESS, str(address), _buffer_size)
    chain = runtime.only_chain  # an internal listener has one chain taking every connection (config/envoy.py)
    server_protocol = chain.protocol_factory()
    server.set_protocol(server_protocol)
    client_protocol = protocol_factory()
    client.set_protocol(client_protocol)
    server_protocol.connection_made(server)
    client_protocol.connection_made(client)
    return client, client_protocol
