"""Envoy's delayed close: after a local reply that ends the connection, wait for the client to close first.

When the proxy closes a socket that still holds unread client bytes (a request
it refused mid-body, a pipelined request after an error), the kernel answers
with a RST, and a RST makes the client's kernel throw away what it had not read
yet - the very reply that explained the refusal. Envoy therefore closes such
connections "with delay": the reply is written, then it waits up to the HCM's
`delayed_close_timeout` (1 s; 0 turns it off) for the client's FIN and closes
when it comes, or when the time is up. Envoy does this after its own local
replies; a proxied response with `connection: close` closes at once (checked
against Envoy 1.40).

The waiting connection gets this small protocol in place of the HTTP one: what
the client still sends is read and dropped (so the final close has nothing
unread to turn into a RST), its FIN closes the socket, and `connection_lost`
goes back to the HTTP connection for its stats.
"""

from __future__ import annotations

import asyncio
from typing import Any


class Lingering(asyncio.Protocol):
    """A connection whose last reply is written, waiting for the client's FIN or the delayed close timeout."""

    def __init__(self, owner: Any, transport: asyncio.Transport, timeout: float) -> None:
        self.owner = owner  # the protocol that served the connection; told when it is finally lost
        self.transport = transport
        self.timer = owner.loop.call_later(timeout, self._timed_out)
        transport.set_protocol(self)
        transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        pass  # dropped: the connection's last reply is written

    def _timed_out(self) -> None:
        """No FIN in time: the proxy closes (Envoy's downstream_cx_delayed_close_timeout)."""
        self.owner.hcm.cx_delayed_close_timeout.value += 1
        self.transport.close()

    def eof_received(self) -> bool:
        self.owner.peer_closed = True  # the client ended it, as Envoy counts a FIN during its delayed close
        self.transport.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()
        self.owner.connection_lost(exc)
