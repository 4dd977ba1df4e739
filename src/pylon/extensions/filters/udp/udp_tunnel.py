"""A UDP proxy session tunnelled over HTTP/2: its datagrams on one CONNECT-UDP stream (RFC 9298) to the cluster.

As Envoy 1.40 does it (checked against Envoy as the terminator in tests/proxy/test_proxy_udp_tunnel.py): the
session's first datagram opens a stream on the cluster's HTTP/2 pool, an extended CONNECT with `:protocol
connect-udp`, `:authority` the proxy host (and `proxy_port`), `:path
/.well-known/masque/udp/<target_host>/<default_target_port>/`, `capsule-protocol: ?1` and `headers_to_add`; a 200
establishes it (`sess_tunnel_success`), anything else, a reset or a failed connect tries the next host, up to
`retry_options.max_connect_attempts`, then ends the session (`sess_tunnel_failure`). Until then the session's
datagrams wait within `buffer_options` (without it they are dropped, uncounted, as Envoy drops them), past it
they are dropped (`sess_tunnel_buffer_overflow`); then they go in order. Each datagram is one DATAGRAM capsule
(capsules.py) both ways: the `http_capsule` session filter, which the config requires with a tunnel (Envoy's docs
require it; without it Envoy would send bare bytes, which pylon does not). The stream rides the pool as tcp_proxy's
HTTP/2 tunnels do (tcp_tunneling_h2.py: the request breaker, per-stream flow control); the session ending resets it, the
server ending it ends the session. A cluster that is not HTTP/2 fails every tunnel (Envoy would send an HTTP/1.1
Upgrade: not supported yet).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable

from pylon.extensions.filters.udp.capsules import CapsuleDecoder, CapsuleError, encode_datagram
from pylon.extensions.filters.udp.udp_session import Session
from pylon.proxy.access_log import AccessLogRecord, compile_text_format
from pylon.proxy.tcp_tunneling_h2 import H2TcpTunnel, open_h2_tunnel

if TYPE_CHECKING:
    from pylon.extensions.filters.udp.udp_proxy import UdpProxyFilter, UdpTunnelingConfig

log = logging.getLogger("pylon.udp_proxy")


class TunnelRequest:
    """A tunneling_config compiled once per filter: the CONNECT-UDP request head each session sends (HTTP/1.1 bytes
    with `upgrade: connect-udp`, which the HTTP/2 pool sends as extended CONNECT)."""

    def __init__(self, config: "UdpTunnelingConfig") -> None:
        self.proxy_host: Callable[[AccessLogRecord], bytes] = compile_text_format(config.proxy_host)
        self.target_host: Callable[[AccessLogRecord], bytes] = compile_text_format(config.target_host)
        self.proxy_port = config.proxy_port
        self.target_port = config.default_target_port
        self.headers = [(option.header.key.lower().encode(), compile_text_format(option.header.value))
                        for option in config.headers_to_add]
        buffer = config.buffer_options
        self.buffers = buffer is not None  # without buffer_options, Envoy drops (and counts nothing: observed)
        self.max_datagrams = buffer.max_buffered_datagrams if buffer is not None else 0
        self.max_bytes = buffer.max_buffered_bytes if buffer is not None else 0

    def head(self, facts: AccessLogRecord) -> bytes:
        authority = self.proxy_host(facts)
        if self.proxy_port is not None:
            authority += b":%d" % self.proxy_port
        path = b"/.well-known/masque/udp/%s/%d/" % (self.target_host(facts), self.target_port)
        parts = [b"GET %s HTTP/1.1\r\nhost: %s\r\nupgrade: connect-udp\r\ncapsule-protocol: ?1\r\n" % (path, authority)]
        parts += [b"%s: %s\r\n" % (name, value(facts)) for name, value in self.headers]
        parts.append(b"\r\n")
        return b"".join(parts)


class _NoBackPressure:
    """The session's `downstream` as the tunnel's relaying sees it: a UDP client cannot be paused (Envoy drops)."""

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class UdpTunnelSession(Session):
    """A client's session whose upstream is a CONNECT-UDP stream (what the HTTP/2 tunnel code calls its session)."""

    __slots__ = ("flags", "downstream", "waiting", "waiting_bytes", "tunnel", "decoder", "opening")

    def __init__(self, proxy: "UdpProxyFilter", key: Any, peer: tuple[Any, ...], cluster: Any) -> None:
        super().__init__(proxy, key, peer, cluster, None)
        self.flags = "-"
        self.downstream = _NoBackPressure()
        self.waiting: list[bytes] = []
        self.waiting_bytes = 0
        self.tunnel: H2TcpTunnel | None = None
        self.decoder = CapsuleDecoder()
        self.opening = asyncio.ensure_future(self._open())

    @property
    def runtime(self) -> "UdpProxyFilter":
        """The filter, where open_h2_tunnel reads max_connect_attempts and the worker's pools."""
        return self.proxy

    async def _open(self) -> None:
        if self.cluster.protocol != "http2":
            # Envoy sends an HTTP/1.1 Upgrade then (observed); pylon tunnels UDP over HTTP/2 only
            log.warning("UDP proxy: tunnelling to cluster %r, which is not HTTP/2, is not supported yet",
                        self.cluster.name)
            self.udp.tunnel_failure.value += 1
            self.close()
            return
        tunnel = await open_h2_tunnel(self, self.cluster, None)  # type: ignore[arg-type]
        if self.closed:
            return
        if tunnel is None:
            self.udp.tunnel_failure.value += 1
            self.close()
            return
        self.tunnel = tunnel
        self.host = tunnel.host
        self.udp.tunnel_success.value += 1
        waiting, self.waiting = self.waiting, []
        for data in waiting:
            self.send_up(data)

    # ------------------------------------------------------------------ what open_h2_tunnel asks of a session
    def pick_host(self, cluster: Any, key: bytes | None) -> Any:
        return self.proxy.pick_host(cluster, self.peer)

    def tunnel_head(self, host: Any) -> bytes:
        facts = AccessLogRecord(self.proxy.worker.wall_time(self.start), downstream_remote=self.peer[:2],
                                downstream_local=self.proxy.local_address, upstream_host=host.address,
                                upstream_cluster=self.proxy.cluster_name)
        return self.proxy.tunnel_request.head(facts)  # type: ignore[union-attr]

    # ------------------------------------------------------------------ the datagrams
    def send_up(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is None:
            request = self.proxy.tunnel_request
            assert request is not None
            if not request.buffers:
                return
            if len(self.waiting) >= request.max_datagrams or self.waiting_bytes + len(data) > request.max_bytes:
                self.udp.tunnel_buffer_overflow.value += 1
                return
            self.waiting.append(data)
            self.waiting_bytes += len(data)
            return
        tunnel.send(encode_datagram(data))

    # ------------------------------------------------------------------ what the tunnel's relaying calls
    def from_upstream(self, data: bytes) -> None:
        try:
            payloads = self.decoder.feed(data)
        except CapsuleError:
            self.close()
            return
        for payload in payloads:
            self.udp.rx_datagrams.value += 1
            self.to_downstream(payload)

    def upstream_eof(self) -> None:
        self.close()

    def upstream_closed(self) -> None:
        self.close()

    # ------------------------------------------------------------------ Session
    def release_upstream(self) -> None:
        tunnel = self.tunnel
        if tunnel is not None and tunnel.transport is not None:
            tunnel.transport.close()  # a stream still open is reset (CANCEL)
        # not answered yet: open_h2_tunnel finds the session closed when the answer comes, and lets the stream go

    def upstream_local_address(self) -> Any:
        transport = self.tunnel.transport if self.tunnel is not None else None
        return transport.get_extra_info("sockname")[:2] if transport is not None else None
