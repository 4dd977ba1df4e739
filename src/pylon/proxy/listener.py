"""A listener inside one worker: its stats, its filter chains, and how a new connection finds its chain.

Each filter chain ends in the HTTP connection manager or tcp_proxy, optionally
behind a TLS transport socket and network filters that may refuse a connection
(`extensions/filters/network/`, e.g. RBAC). A listener whose every connection goes to one
chain, with no listener filter to run, hands connections straight to it (the
common case costs nothing); otherwise its listener filters inspect the
connection (`listener_filters.py`) and Envoy's FilterChainMatch rules pick the
chain (`filter_chain_match.py`), else the default chain, else the connection is
closed and counted as `no_filter_chain_match`.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
from typing import TYPE_CHECKING, Any, Callable

from cryptography import x509

from pylon.config.datasource import read_bytes
from pylon.config.envoy import FilterChain, HttpConnectionManager, TcpProxy
from pylon.extensions.filters.listener import Detected, build_listener_filter
from pylon.extensions.filters.listener.original_dst import OriginalDst
from pylon.extensions.filters.network import build_network_filter
from pylon.proxy.balance.loadtable import CX_ACTIVE, LoadSlot
from pylon.proxy.connection_info import certificate_sans
from pylon.proxy.filter_chain_match import ConnectionFacts, FilterChainSelector
from pylon.proxy.hcm import HcmRuntime, HttpConnection
from pylon.proxy.listener_filters import Inspection, PeekWatcher
from pylon.proxy.tcp_proxy import TcpProxyRuntime, TcpProxySession
from pylon.proxy.tls import ServerTls, server_context
from pylon.proxy.tls_stats import TlsStats

if TYPE_CHECKING:
    from pylon.proxy.worker import Worker


def listener_stat_name(listener: Any) -> str:
    """Envoy's stat name for a listener address: `listener.<ip>_<port>`, colons of IPv6 turned into `_`."""
    sa = listener.address.socket_address
    return "listener.%s_%d" % (sa.address.replace(":", "_"), sa.port_value)


class ChainRuntime:
    """One filter chain of a listener in one worker: what serves the connections it takes."""

    __slots__ = ("name", "tls", "ssl_context", "peer_check", "tls_stats", "app_factory", "protocol_factory",
                 "terminal")

    def __init__(self, name: str) -> None:
        self.name = name
        self.tls: ServerTls | None = None
        self.ssl_context: ssl.SSLContext | None = None
        self.peer_check: Callable[[Any], str | None] | None = None
        self.tls_stats: TlsStats | None = None  # the listener's ssl.* stats (shared by its TLS chains)
        # app_factory(detected): the connection's protocol, told what the listener filters found
        self.app_factory: Callable[[Detected | None], Any]
        self.protocol_factory: Callable[[], Any]  # for connections nothing was detected about
        self.terminal: Any = None

    def protocol_factory_for(self, detected: Detected | None) -> Callable[[], Any]:
        """The factory for a connection the listener filters inspected (they may have found its SNI)."""
        if detected is None:
            return self.protocol_factory
        factory = functools.partial(self.app_factory, detected)
        return self.tls.wrap_protocol_factory(factory) if self.tls is not None else factory


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
        self.no_filter_chain_match = stats.counter(prefix + "no_filter_chain_match")
        self.pre_cx_active = stats.gauge(prefix + "downstream_pre_cx_active")
        self.pre_cx_timeout = stats.counter(prefix + "downstream_pre_cx_timeout")
        self.listener_filter_remote_close = stats.counter(prefix + "downstream_listener_filter_remote_close")
        self.listener_filter_error = stats.counter(prefix + "downstream_listener_filter_error")
        worker_prefix = f"{prefix}worker_{worker.worker_id}."
        self.worker_cx_total = stats.counter(worker_prefix + "downstream_cx_total")
        self.worker_cx_active = stats.gauge(worker_prefix + "downstream_cx_active")
        # Set when the listener is balanced by hand-off: the supervisor reads this worker's count here.
        self.load_slot: LoadSlot | None = None
        self.chains: list[ChainRuntime] = []
        self.default_chain: ChainRuntime | None = None
        self.selector: FilterChainSelector | None = None
        self.listener_filters: list[Any] = []
        # The chain every connection goes to when there is nothing to inspect or match on.
        self.only_chain: ChainRuntime | None = None

    @property
    def terminals(self) -> list[Any]:
        """The HTTP connection managers and tcp_proxies of every chain."""
        chains = self.chains if self.default_chain is None else [*self.chains, self.default_chain]
        return [chain.terminal for chain in chains]

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

    def find_chain(self, sock: socket.socket, proceed: Callable[[ChainRuntime, Detected | None], None],
                   drop: Callable[[], None], detected: Detected | None = None) -> None:
        """Run the listener filters, then `proceed` with the connection's chain and what the filters found,
        or `drop` it (no chain matched). `detected`: what the listener that handed it over found."""
        if not self.listener_filters:
            self._choose(sock, detected, proceed, drop)
            return
        inspection = Inspection(sock, self, lambda found: self._choose(sock, found, proceed, drop), drop, detected)
        inspection.start(self.worker.loop, self.worker.peek_watcher())

    def _choose(self, sock: socket.socket, detected: Detected | None,
                proceed: Callable[[ChainRuntime, Detected | None], None], drop: Callable[[], None]) -> None:
        original = detected.original_destination if detected is not None else None
        if original is not None and self.config.use_original_dst:
            # Envoy's use_original_dst: the listener of the address the connection was redirected from takes it
            # (its own listener filters run); none, or this one: it stays here.
            target = self.worker.listener_for(original)
            if target is not None and target is not self:
                target.find_chain(sock, proceed, drop, detected)
                return
        chain = self.only_chain
        if chain is None:
            index = None
            if self.selector is not None:
                try:
                    local, peer = original or sock.getsockname(), sock.getpeername()
                except OSError:
                    drop()  # the peer has already gone
                    return
                found = detected or Detected()
                facts = ConnectionFacts(ipaddress.ip_address(local[0]), local[1], ipaddress.ip_address(peer[0]),
                                        peer[1], found.server_name, found.transport_protocol or "raw_buffer",
                                        found.application_protocols)
                index = self.selector.select(facts)
            chain = self.chains[index] if index is not None else self.default_chain
        if chain is None:
            self.no_filter_chain_match.inc()
            drop()
        else:
            proceed(chain, detected)


def _certificate_uri_sans(downstream_tls: Any) -> list[str]:
    """The URI SANs of the listener's (first) certificate: XFCC's `By=` elements."""
    pem = read_bytes(downstream_tls.common_tls_context.tls_certificates[0].certificate_chain)
    return certificate_sans(x509.load_pem_x509_certificate(pem), x509.UniformResourceIdentifier)


def build_listener(config: Any, worker: "Worker") -> ListenerRuntime:
    """Compile a listener's filter chains and listener filters for this worker."""
    runtime = ListenerRuntime(config, worker)
    runtime.chains = [build_chain(chain, runtime) for chain in config.filter_chains]
    if config.default_filter_chain is not None:
        runtime.default_chain = build_chain(config.default_filter_chain, runtime)
    filter_configs = [f.typed_config for f in config.listener_filters]
    if config.use_original_dst and not any(isinstance(c, OriginalDst) for c in filter_configs):
        filter_configs.insert(0, OriginalDst())  # as Envoy, use_original_dst brings the filter it needs
    runtime.listener_filters = [build_listener_filter(c, worker.stats) for c in filter_configs]
    matches = [chain.filter_chain_match for chain in config.filter_chains]
    if len(matches) == 1 and _matches_everything(matches[0]):
        # Nothing to match on: the default chain (if any) is unreachable, as in Envoy.
        runtime.only_chain = None if runtime.listener_filters else runtime.chains[0]
        runtime.selector = FilterChainSelector(matches)
    elif not matches:
        runtime.only_chain = None if runtime.listener_filters else runtime.default_chain
    else:
        runtime.selector = FilterChainSelector(matches)  # checked for duplicates when the config was validated
    return runtime


def _matches_everything(match: Any) -> bool:
    return match is None or match == type(match)()


def build_chain(chain: FilterChain, listener: ListenerRuntime) -> ChainRuntime:
    """One filter chain's TLS and terminal network filter for this worker."""
    worker = listener.worker
    runtime = ChainRuntime(chain.name)
    tls = None
    if chain.transport_socket is not None:
        tls = runtime.tls = server_context(chain.transport_socket.typed_config)
        # None when a private key provider is hooked in: pylon's own TLS transport then
        # terminates TLS (it can suspend a handshake on a pending key operation).
        runtime.ssl_context = tls.loop_ssl_context
        runtime.peer_check = tls.verify_peer
        runtime.tls_stats = TlsStats(worker.stats, listener_stat_name(listener.config) + ".")
        tls.bind_stats(worker.stats)
    terminal_cfg = chain.filters[-1].typed_config
    network_filters = [build_network_filter(f.name, f.typed_config, worker.stats) for f in chain.filters[:-1]]
    scheme = b"https" if tls is not None else b"http"
    if isinstance(terminal_cfg, HttpConnectionManager):
        hcm = HcmRuntime(terminal_cfg, worker.clusters, worker.pools, worker.stats, worker)
        hcm.peer_check = runtime.peer_check
        hcm.tls_stats = runtime.tls_stats
        hcm.network_filters = network_filters
        hcm.buffer_limit = listener.config.per_connection_buffer_limit_bytes
        if tls is not None and terminal_cfg.forward_client_cert_details != "SANITIZE":
            hcm.local_uri_sans = _certificate_uri_sans(chain.transport_socket.typed_config)
        runtime.terminal = hcm

        def factory(detected: Detected | None = None) -> HttpConnection:
            conn = HttpConnection(hcm, scheme)
            conn.runtime_listener = listener
            conn.detected = detected
            return conn
    elif isinstance(terminal_cfg, TcpProxy):
        tcp = TcpProxyRuntime(terminal_cfg, worker.clusters, worker.stats, worker)
        tcp.peer_check = runtime.peer_check
        tcp.tls_stats = runtime.tls_stats
        tcp.network_filters = network_filters
        runtime.terminal = tcp

        def factory(detected: Detected | None = None) -> TcpProxySession:  # type: ignore[misc]
            session = TcpProxySession(tcp)
            session.runtime_listener = listener
            session.detected = detected
            return session
    else:  # the config loader only lets the two terminal filters through
        raise TypeError(f"unsupported terminal filter {type(terminal_cfg).__name__}")
    runtime.app_factory = factory
    runtime.protocol_factory = tls.wrap_protocol_factory(factory) if tls is not None else factory
    return runtime
