"""Send a closing connection's FIN at once instead of at the event loop's next turn.

uvloop's `transport.close()` stops reading and schedules the socket's close(2)
for the loop's next iteration. A client that already has its whole response
(HTTP/1 `Connection: close`) closes its own side in between, and the kernel then
runs both halves of the TCP teardown inside the proxy's late close(2): the
client's FIN, its TIME_WAIT socket, the last ACK. On loopback that made pylon's
close(2) cost about 10 µs of CPU per connection against Envoy's 5: Envoy closes
right after its last write, so its FIN reaches a client that has not closed yet,
and the client's own close finishes the teardown.

`shutdown(SHUT_WR)` right after the last write does what Envoy's immediate close
does on the wire: the FIN follows the response at once. The socket itself is
still closed by uvloop, at the next turn, as before. Only a plain uvloop TCP
transport whose written bytes all left is shut down here; a transport still
holding bytes (a slow reader) closes the usual way, after they are sent.
Wrappers (the TLS transport, taps) just close: a TLS client takes longer to
decrypt the response than the proxy takes to reach its close(2), so there the
FIN already went first, and the extra shutdown(2) cost more kernel time than it
saved (perf under `h2load -H 'Connection: close'`, TLS 1.3: shutdown 4.6 µs +
close 3.4 µs per connection in a run with it, the close alone 5.0 µs without).
"""

from __future__ import annotations

import _socket
import asyncio

from uvloop.loop import TCPTransport


def close_promptly(transport: asyncio.BaseTransport) -> None:
    """`transport.close()`, with the FIN sent now when `transport` is a uvloop TCP transport with nothing queued."""
    if type(transport) is TCPTransport and not transport.get_write_buffer_size():
        shutdown_write(transport.get_extra_info("socket").fileno())
    transport.close()


def shutdown_write(fd: int) -> None:
    """shutdown(fd, SHUT_WR), ignoring a peer that is already gone; the descriptor stays open (uvloop owns it)."""
    if fd < 0:
        return
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM, 0, fd)  # family unused: shutdown needs only the fd
    try:
        sock.shutdown(_socket.SHUT_WR)
    except OSError:
        pass  # ENOTCONN: the peer reset it; the close that follows cleans up
    finally:
        sock.detach()
