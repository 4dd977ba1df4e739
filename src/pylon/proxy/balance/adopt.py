"""How a worker takes a socket accepted elsewhere (the hand-off balancers' supervisor) into its event loop."""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any, Callable

#: The adoptions in progress. The event loop keeps only weak references to tasks: an adoption parked on
#: its transport's waiter and referenced nowhere else could be garbage collected half-done, leaving the
#: client's request unanswered (Python's documented create_task caveat).
_ADOPTING: set[asyncio.Task[None]] = set()


def start_adopting(loop: asyncio.AbstractEventLoop, sock: socket.socket, runtime: Any,
                   done: Callable[[], None] | None = None, network_namespace: str = "") -> None:
    """Serve an accepted socket with its filter chain's protocol (and TLS); `done` runs however it ends. The
    overload manager may close it first: past the global connections limit, or by reject_incoming_connections.
    `network_namespace`: what the chain matcher's NetworkNamespaceInput reads for it."""
    worker = runtime.worker
    gate = worker.cx_gate
    if gate is not None and not runtime.config.ignore_global_conn_limit:
        if not gate.admit():
            runtime.global_cx_overflow.value += 1
            return _refuse(sock, done)
        done = _then(gate.adopted, done)
    if worker.overload.reject and worker.overload.rejects_connection():
        runtime.cx_overload_reject.value += 1
        return _refuse(sock, done)
    chain = runtime.only_chain
    if chain is not None:
        _spawn(loop, sock, chain.ssl_context, chain.protocol_factory, chain.tls_stats, done)
        return

    def drop() -> None:
        sock.close()
        if done is not None:
            done()

    runtime.find_chain(
        sock, lambda found, detected: _spawn(loop, sock, found.ssl_context, found.protocol_factory_for(detected),
                                             found.tls_stats, done),
        drop, network_namespace=network_namespace)


def _refuse(sock: socket.socket, done: Callable[[], None] | None) -> None:
    sock.close()
    if done is not None:
        done()


def _then(first: Callable[[], None], done: Callable[[], None] | None) -> Callable[[], None]:
    if done is None:
        return first

    def both() -> None:
        first()
        done()
    return both


def _spawn(loop: asyncio.AbstractEventLoop, sock: socket.socket, ssl_context: ssl.SSLContext | None,
           protocol_factory: Callable[[], Any], tls_stats: Any, done: Callable[[], None] | None) -> None:
    task = loop.create_task(_adopt(loop, sock, ssl_context, protocol_factory, tls_stats, done))
    _ADOPTING.add(task)
    task.add_done_callback(_ADOPTING.discard)


async def _adopt(loop: asyncio.AbstractEventLoop, sock: socket.socket, ssl_context: ssl.SSLContext | None,
                 protocol_factory: Callable[[], Any], tls_stats: Any, done: Callable[[], None] | None) -> None:
    try:
        await loop.connect_accepted_socket(protocol_factory, sock, ssl=ssl_context,
                                           ssl_handshake_timeout=10.0 if ssl_context is not None else None)
    except ssl.SSLError as exc:
        sock.close()
        if tls_stats is not None:
            tls_stats.handshake_failed(exc)  # Envoy's ssl.fail_verify_no_cert / fail_verify_error / connection_error
    except (OSError, asyncio.TimeoutError):
        sock.close()  # a peer that left during the handshake (or never finished it): Envoy counts neither
    finally:
        if done is not None:
            done()
