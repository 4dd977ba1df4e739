"""tcp_proxy's `tunneling_config` to an HTTP/2 cluster: the connection's bytes on one stream of the pool.

As Envoy 1.40 does it: the stream opens with `:method CONNECT` and `:authority <hostname>` (with `use_post`,
`POST <post_path>` with `:scheme`; then `headers_to_add`), on a pooled connection that other tunnels and
requests to the host share (the cluster's stream limits and breakers apply: the stream takes a `max_requests`
slot, as any HTTP/2 stream). Only a `200` establishes the tunnel over HTTP/2 (Envoy's check; HTTP/1.1 takes any
2xx); anything else, a reset, a refused stream or a failed connect fails the attempt (UF, the next of
`max_connect_attempts`). Then the stream is the session's upstream transport (`h2_stream_transport.py`): DATA
both ways, the client's EOF as END_STREAM and the server's END_STREAM as the client's EOF, a reset as a close,
and flow control per stream (a client that does not read stops crediting only this stream's DATA).

Why through the pool rather than a connection per session as over HTTP/1.1: over HTTP/2 Envoy multiplexes
tunnels, and the stream's own flow control gives each tunnel the back-pressure a socket would.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pylon.proxy.h2_stream_transport import H2StreamTransport, TunnelStream
from pylon.proxy.http.h2_session import Headers
from pylon.proxy.tcp_upstream import TcpUpstream, UpstreamBytes

if TYPE_CHECKING:
    from pylon.proxy.tcp_proxy import TcpProxySession
    from pylon.proxy.upstream.cluster import Cluster, Host
    from pylon.proxy.upstream.h2_pool import H2UpstreamStream


class H2TcpTunnel(TcpUpstream):
    """One session's tunnel: the pool's exchange until the server answers, then the stream's protocol (relaying
    as any tcp_proxy upstream does).

    The session sees the upstream it knows (`transport`, `send`, `send_eof`); `transport` stays None until the
    tunnel is established, so what the client sends meanwhile waits in the session's early buffer.
    """

    is_head = False
    upgrade_accepted = False  # the answer is read here, not by an HTTP/1 decoder

    def __init__(self, session: "TcpProxySession", cluster: "Cluster", host: "Host", head: bytes) -> None:
        super().__init__(session)
        self.bytes = UpstreamBytes(None)  # the HTTP/2 connection under the stream counts them, framed, as Envoy's
        self.cluster = cluster
        self.host = host
        self.head = head
        self.method = head[:head.index(b" ")]
        # an upgrade goes as extended CONNECT (the UDP proxy's CONNECT-UDP): it waits for the server's SETTINGS
        self.extended_connect = b"\r\nupgrade: " in head
        self.established: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.stream: TunnelStream | None = None
        self.overflow = False  # the pool's pending queue was full (UO, not UF)
        self.holds_slot = True  # the request breaker's slot, taken before the pool was asked
        self.counted = False  # the stream counts in upstream_rq_active and the host's active requests

    # ------------------------------------------------------------------ the pool's exchange
    def on_upstream_ready(self, stream: "H2UpstreamStream") -> None:
        if self.session.closed:
            stream.abandon()
            self._fail()
            return
        self.stream = tunnel = TunnelStream.taking_over(stream)
        stats = self.cluster.stats
        stats.upstream_rq_total.value += 1
        stats.upstream_rq_active.value += 1
        self.host.active_requests += 1
        self.counted = True
        if tunnel.send_head(None, self.head, False) is not None:  # type: ignore[arg-type]
            tunnel.write(b"")

    def on_upstream_connect_failure(self, reason: str) -> None:
        self._fail()

    def on_upstream_overflow(self) -> None:
        self.overflow = True
        self._fail()

    def on_upstream_headers(self, status: int, headers: Headers, keep_alive: bool) -> None:
        stream = self.stream
        assert stream is not None
        if status != 200 or self.session.closed:
            stream.abandon()  # refused: RST_STREAM, as Envoy resets a tunnel it will not use
            self._fail()
            return
        self.transport = H2StreamTransport(stream, self)
        self.established.set_result(True)

    def on_upstream_reset(self, reason: str, stale: bool = False) -> None:
        self._fail()

    def on_upstream_body(self, data: bytes) -> None:
        """Only a refused answer's body comes here, after it was abandoned: nothing to relay."""

    def on_upstream_trailers(self, trailers: Headers) -> None:
        """As the body."""

    def on_upstream_complete(self) -> None:
        """As the body."""

    def on_upstream_flush(self) -> None:
        """As the body."""

    def on_upstream_pause(self, paused: bool) -> None:
        """The head alone cannot fill the buffer; DATA only flows once the transport took over."""

    def _fail(self) -> None:
        self.release()
        if not self.established.done():
            self.established.set_result(False)

    def release(self) -> None:
        """Give back the breaker slot and the counts (once)."""
        if self.holds_slot:
            self.holds_slot = False
            self.cluster.circuit_breakers.requests.release()
        if self.counted:
            self.counted = False
            self.cluster.stats.upstream_rq_active.value -= 1
            self.host.active_requests -= 1

    # ------------------------------------------------------------------ asyncio.Protocol (the stream's)
    def connection_lost(self, exc: Exception | None) -> None:
        self.release()
        super().connection_lost(exc)


async def open_h2_tunnel(session: "TcpProxySession", cluster: "Cluster", key: bytes | None) -> H2TcpTunnel | None:
    """Open the session's tunnel, trying up to max_connect_attempts hosts; None (the session's flags say why)
    when no attempt was answered 200 or the client left meanwhile."""
    rt = session.runtime
    for _ in range(rt.max_connect_attempts):
        host = session.pick_host(cluster, key)
        if host is None:
            return None
        if not cluster.circuit_breakers.requests.try_acquire():
            session.flags = "UO"
            return None
        tunnel = H2TcpTunnel(session, cluster, host, session.tunnel_head(host))
        # the session stands for a request: a PROXY protocol cluster's pool is this client's
        rt.worker.pools.get(cluster, host, session).acquire(tunnel)  # type: ignore[arg-type]
        if await tunnel.established:
            if not session.closed:
                return tunnel
            assert tunnel.transport is not None
            tunnel.transport.close()
            return None
        session.flags = "UO" if tunnel.overflow else "UF"
        if session.closed:
            return None
    return None

