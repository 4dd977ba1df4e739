"""The one way pylon connects to an upstream host: the HTTP pools, tcp_proxy and health checks all use it.

A cluster's `transport_socket` is not a detail of HTTP: when the three callers
each opened connections their own way, only the HTTP pool applied it, so
`tcp_proxy` to a TLS cluster sent the client's bytes in cleartext and the HTTP
health checks of an HTTPS cluster spoke plaintext to a TLS port and failed.
Here every connection gets the cluster's connect timeout, its TLS origination
(SNI only when configured, as Envoy; client certificate; trusted CA) and the
post-handshake SAN check, and fails with Envoy's transport failure reason.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any, Callable

from pylon.proxy import internal_listener
from pylon.proxy.internal_listener import InternalAddress
from pylon.proxy.tap_socket import tapped_factory
from pylon.proxy.tls import UnavailableTls
from pylon.proxy.upstream.proxy_protocol import HeaderError

if TYPE_CHECKING:
    from pylon.config.envoy import TcpKeepalive
    from pylon.extensions.transport_sockets.tap_trace import TapSink
    from pylon.proxy.tls import ClientTls


class ConnectError(Exception):
    """Connecting to an upstream host failed; the message is Envoy's transport failure reason."""


class ConnectTimeout(ConnectError):
    """The connection (TCP and TLS handshake) did not complete within the cluster's connect_timeout."""


def set_keepalive(sock: socket.socket, keepalive: "TcpKeepalive") -> None:
    """The cluster's upstream_connection_options.tcp_keepalive: SO_KEEPALIVE, and the settings it gives."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in ((socket.TCP_KEEPIDLE, keepalive.keepalive_time),
                          (socket.TCP_KEEPINTVL, keepalive.keepalive_interval),
                          (socket.TCP_KEEPCNT, keepalive.keepalive_probes)):
        if value is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


async def open_upstream(address: tuple[str, int] | InternalAddress, tls: "ClientTls | UnavailableTls | None",
                        timeout: float, protocol_factory: Callable[[], Any],
                        source: tuple[str, int] | None = None,
                        keepalive: "TcpKeepalive | None" = None,
                        tap: "TapSink | None" = None,
                        preamble: "Callable[[Any, Any], bytes] | None" = None) -> tuple[asyncio.Transport, Any]:
    """Connect (from `source`, the cluster's upstream_bind_config, if any; and handshake, and check the peer's
    SANs) within `timeout`; ConnectError otherwise. `keepalive`: the cluster's TCP keepalive, set on the socket.
    `tap`: the cluster's tap transport socket, recording the connection (tap_socket.py); the caller gets its own
    protocol back and the transport it writes to. `preamble`: called with the connected socket's (local, remote)
    addresses, what goes first, before TLS (the cluster's PROXY protocol header: upstream/proxy_protocol.py).
    An internal listener's address connects inside the worker (internal_listener.py; its clusters have no TLS,
    source address or socket options: config/envoy.py)."""
    if isinstance(address, InternalAddress):
        try:
            return internal_listener.connect(address, protocol_factory)
        except internal_listener.NoInternalListener as exc:
            raise ConnectError(str(exc)) from None
    if isinstance(tls, UnavailableTls):
        raise ConnectError(f"TLS error: {tls.reason}")  # fail closed: never cleartext to a TLS cluster
    loop = asyncio.get_running_loop()
    host, port = address
    factory = tapped_factory(protocol_factory, tap)
    ssl_context = tls.context if tls else None
    server_hostname = (tls.server_hostname or "") if tls else None  # Envoy sends SNI only when configured
    try:
        if preamble is None:
            connecting = loop.create_connection(factory, host, port, ssl=ssl_context,
                                                server_hostname=server_hostname, local_addr=source)
        else:
            connecting = _connect_after_preamble(loop, factory, address, source, preamble, ssl_context,
                                                 server_hostname)
        transport, protocol = await asyncio.wait_for(connecting, timeout)
    except asyncio.TimeoutError:
        raise ConnectTimeout("connection timeout") from None
    except HeaderError as exc:
        raise ConnectError(f"proxy protocol: {exc}") from None
    except OSError as exc:
        raise ConnectError(f"delayed connect error: {exc.errno}" if exc.errno else str(exc)) from None
    if keepalive is not None:
        set_keepalive(transport.get_extra_info("socket"), keepalive)
    if tls is not None:
        try:
            problem = tls.verify_peer(transport.get_extra_info("ssl_object"))
        except ValueError:
            # The TLS layer was torn down as the connect returned: over TLS 1.3 a server refusing the client
            # certificate sends its alert after the client's handshake is done, and the peer certificate is gone.
            problem = "connection closed by the server after the handshake"
        if problem:
            transport.close()
            raise ConnectError(f"TLS error: {problem}")
    if tap is not None:
        return protocol.tap_transport, protocol.app
    return transport, protocol  # type: ignore[return-value]


async def _connect_after_preamble(loop: asyncio.AbstractEventLoop, factory: Callable[[], Any],
                                  address: tuple[str, int], source: tuple[str, int] | None,
                                  preamble: Callable[[Any, Any], bytes], ssl_context: Any,
                                  server_hostname: str | None) -> tuple[asyncio.Transport, Any]:
    """Connect a socket, send the preamble on it, then hand it to the transport (and its TLS handshake): what
    the preamble says needs the connected socket's own address, and it must precede the TLS bytes."""
    host, port = address
    family, kind, proto, _, sockaddr = (await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        if source is not None:
            sock.bind(source)
        await loop.sock_connect(sock, sockaddr)
        await loop.sock_sendall(sock, preamble(sock.getsockname(), sock.getpeername()))
        return await loop.create_connection(factory, sock=sock, ssl=ssl_context, server_hostname=server_hostname)
    except BaseException:
        sock.close()
        raise


async def open_stream(address: tuple[str, int] | InternalAddress, tls: "ClientTls | UnavailableTls | None", timeout: float,
                      source: tuple[str, int] | None = None,
                      keepalive: "TcpKeepalive | None" = None,
                      tap: "TapSink | None" = None,
                      preamble: "Callable[[Any, Any], bytes] | None" = None,
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """`open_upstream` as asyncio streams (for health checks, where a few extra objects cost nothing)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    transport, protocol = await open_upstream(address, tls, timeout,
                                              lambda: asyncio.StreamReaderProtocol(reader, loop=loop), source,
                                              keepalive, tap, preamble)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
