"""A listener inside one worker: its stats, its filter chain and the protocol factory it accepts with.

pylon supports one filter chain per listener (no filter_chain_match yet)
whose terminal network filter is the HTTP connection manager or tcp_proxy,
optionally behind a TLS transport socket.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any, Callable

from cryptography import x509

from pylon.config.datasource import read_bytes
from pylon.config.envoy import HttpConnectionManager, TcpProxy
from pylon.proxy.balance.loadtable import CX_ACTIVE, LoadSlot
from pylon.proxy.hcm import HcmRuntime, HttpConnection
from pylon.proxy.tcp_proxy import TcpProxyRuntime, TcpProxySession
from pylon.proxy.tls import server_context
from pylon.proxy.xfcc import uri_sans

if TYPE_CHECKING:
    from pylon.proxy.worker import Worker


def listener_stat_name(listener: Any) -> str:
    """Envoy's stat name for a listener address: `listener.<ip>_<port>`, colons of IPv6 turned into `_`."""
    sa = listener.address.socket_address
    return "listener.%s_%d" % (sa.address.replace(":", "_"), sa.port_value)


class ListenerRuntime:
    """Per-worker state of one listener."""

    def __init__(self, config: Any, worker: "Worker") -> None:
        self.config = config
        self.worker = worker
        self.draining = False
        stats = worker.stats
        prefix = listener_stat_name(config) + "."
        self.cx_total = stats.counter(prefix + "downstream_cx_total")
        self.cx_active = stats.gauge(prefix + "downstream_cx_active")
        self.cx_destroy = stats.counter(prefix + "downstream_cx_destroy")
        worker_prefix = f"{prefix}worker_{worker.worker_id}."
        self.worker_cx_total = stats.counter(worker_prefix + "downstream_cx_total")
        self.worker_cx_active = stats.gauge(worker_prefix + "downstream_cx_active")
        # Set when the listener is balanced by hand-off: the supervisor reads this worker's count here.
        self.load_slot: LoadSlot | None = None
        self.ssl_context: ssl.SSLContext | None = None
        self.peer_check: Callable[[Any], str | None] | None = None
        self.protocol_factory: Callable[[], Any]
        self.terminal: Any = None

    def opened(self) -> None:
        self.cx_total.value += 1
        self.cx_active.value += 1
        self.worker_cx_total.value += 1
        self.worker_cx_active.value += 1
        if self.load_slot is not None:
            self.load_slot[CX_ACTIVE] = self.worker_cx_active.value

    def closed(self) -> None:
        self.cx_active.value -= 1
        self.cx_destroy.value += 1
        self.worker_cx_active.value -= 1
        if self.load_slot is not None:
            self.load_slot[CX_ACTIVE] = self.worker_cx_active.value


def _certificate_uri_sans(downstream_tls: Any) -> list[str]:
    """The URI SANs of the listener's (first) certificate: XFCC's `By=` elements."""
    pem = read_bytes(downstream_tls.common_tls_context.tls_certificates[0].certificate_chain)
    return uri_sans(x509.load_pem_x509_certificate(pem))


def build_listener(config: Any, worker: "Worker") -> ListenerRuntime:
    """Compile a listener's (single) filter chain for this worker."""
    runtime = ListenerRuntime(config, worker)
    chain = config.filter_chains[0]
    tls = None
    if chain.transport_socket is not None:
        tls = server_context(chain.transport_socket.typed_config)
        # None when a private key provider is hooked in: pylon's own TLS transport then
        # terminates TLS (it can suspend a handshake on a pending key operation).
        runtime.ssl_context = tls.loop_ssl_context
        runtime.peer_check = tls.verify_peer
        tls.bind_stats(worker.stats)
    terminal_cfg = chain.filters[-1].typed_config
    scheme = b"https" if tls is not None else b"http"
    if isinstance(terminal_cfg, HttpConnectionManager):
        hcm = HcmRuntime(terminal_cfg, worker.clusters, worker.pools, worker.stats, worker)
        hcm.peer_check = runtime.peer_check
        hcm.buffer_limit = config.per_connection_buffer_limit_bytes
        if tls is not None and terminal_cfg.forward_client_cert_details != "SANITIZE":
            hcm.local_uri_sans = _certificate_uri_sans(chain.transport_socket.typed_config)
        runtime.terminal = hcm

        def factory() -> HttpConnection:
            conn = HttpConnection(hcm, scheme)
            conn.runtime_listener = runtime
            return conn
    elif isinstance(terminal_cfg, TcpProxy):
        tcp = TcpProxyRuntime(terminal_cfg, worker.clusters, worker.stats, worker)
        tcp.peer_check = runtime.peer_check
        runtime.terminal = tcp

        def factory() -> TcpProxySession:  # type: ignore[misc]
            session = TcpProxySession(tcp)
            session.runtime_listener = runtime
            return session
    else:  # the config loader only lets the two terminal filters through
        raise TypeError(f"unsupported terminal filter {type(terminal_cfg).__name__}")
    runtime.protocol_factory = tls.wrap_protocol_factory(factory) if tls is not None else factory
    return runtime

