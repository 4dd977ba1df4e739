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

import asyncio
import functools
import ipaddress
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any, Callable, Mapping

import msgspec

from pylon.config import registry
from pylon.config.envoy import FilterChain, HttpConnectionManager, TcpProxy
from pylon.config.secrets import SecretMissing, tls_context
from pylon.proxy.balance.loadtable import CX_ACTIVE, LoadSlot
from pylon.proxy.filter_chain_match import ConnectionFacts, FilterChainSelector
from pylon.proxy.matching.engine import NO_MATCH, Vocabulary, compile_matcher
from pylon.proxy.matching.input_matchers import INPUT_MATCHERS
from pylon.proxy.matching.network_inputs import NETWORK_READERS, NetworkMatchingData
from pylon.proxy.filters.listener import Detected, build_listener_filter
from pylon.proxy.filters.network import build_network_filter, terminal_factory
from pylon.proxy.codec_select import connection_factory
from pylon.proxy.h2_connection import H2Runtime
from pylon.proxy.hcm import HcmRuntime
from pylon.proxy.listener_filters import Inspection, PeekWatcher
from pylon.proxy.tap_socket import socket_tap, tapped_factory
from pylon.proxy.tcp_proxy import TcpProxyRuntime, TcpProxySession
from pylon.proxy.tls import ServerTls, UnavailableTls, server_context
from pylon.proxy.tls_stats import TlsStats
from pylon.proxy.tracing import Tracer

if TYPE_CHECKING:
    from pylon.proxy.worker import Worker

log = logging.getLogger("pylon.proxy.listener")

#: The listener filter a `use_original_dst` listener adds when its config lacks it (Envoy adds it by this name).
ORIGINAL_DST_TYPE = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"

#: Listeners whose `h2` ALPN was already reported (once per process, not per worker or update).
_h2_reported: set[str] = set()


def listener_stat_name(listener: Any) -> str:
    """Envoy's stat name for a listener address: `listener.<ip>_<port>`, colons of IPv6 turned into `_`; an
    internal listener's is `listener.envoy_internal_<name>`."""
    if listener.internal_listener is not None:
        return f"listener.envoy_internal_{listener.name}"
    sa = listener.socket_address
    return "listener.%s_%d" % (sa.address.replace(":", "_"), sa.port_value)


class ChainRuntime:
    """One filter chain of a listener in one worker: what serves the connections it takes."""

    __slots__ = ("name", "tls_config", "tls", "ssl_context", "peer_check", "tls_stats", "app_factory",
                 "protocol_factory", "terminal", "forwards_client_cert")

    def __init__(self, name: str) -> None:
        self.name = name
        self.tls_config: Any = None  # the chain's DownstreamTlsContext (None: plain TCP)
        self.tls: ServerTls | UnavailableTls | None = None
        self.ssl_context: ssl.SSLContext | None = None
        self.peer_check: Callable[[Any], str | None] | None = None
        self.tls_stats: TlsStats | None = None  # the listener's ssl.* stats (shared by its TLS chains)
        # app_factory(detected): the connection's protocol, told what the listener filters found
        self.app_factory: Callable[[Detected | None], Any]
        self.protocol_factory: Callable[[], Any]  # for connections nothing was detected about
        self.terminal: Any = None
        self.forwards_client_cert = False  # XFCC needs the certificate's URI SANs (By=)

    def protocol_factory_for(self, detected: Detected | None) -> Callable[[], Any]:
        """The factory for a connection the listener filters inspected (they may have found its SNI)."""
        if detected is None or isinstance(self.tls, UnavailableTls):
            return self.protocol_factory
        factory = functools.partial(self.app_factory, detected)
        return self.tls.wrap_protocol_factory(factory, self.tls_stats) if self.tls is not None else factory

    def install_tls(self, secrets: Mapping[str, Any], stats: Any) -> None:
        """Build the chain's TLS from its config and the current secrets, for the connections accepted from now
        on (an SDS rotation calls this again; connections already open keep their session, as in Envoy). While
        a secret is missing the chain refuses connections: a TLS chain never serves cleartext."""
        if self.tls_config is None:
            self.protocol_factory = self.app_factory
            return
        try:
            tls: ServerTls | UnavailableTls = server_context(self.tls_config, secrets)
        except SecretMissing as exc:
            tls = UnavailableTls(exc.name)
        self.tls = tls
        terminal = self.terminal
        if isinstance(tls, UnavailableTls):
            self.ssl_context = None
            self.peer_check = terminal.peer_check = None
            tls_stats = self.tls_stats
            self.protocol_factory = lambda: _Refused(tls, tls_stats)
            return
        # None when pylon's own (native) TLS transport terminates TLS: then the protocol factory wraps it.
        self.ssl_context = tls.loop_ssl_context
        self.peer_check = terminal.peer_check = tls.verify_peer
        tls.bind_stats(stats)
        if self.forwards_client_cert:
            terminal.local_uri_sans = tls.uri_sans()
        self.protocol_factory = tls.wrap_protocol_factory(self.app_factory, self.tls_stats)


class _Refused(asyncio.Protocol):
    """A connection to a TLS chain whose secret has not come: closed at once, nothing read or written, counted
    as a failed handshake (Envoy's `ssl.connection_error`: its handshake finds no certificate)."""

    def __init__(self, tls: UnavailableTls, stats: TlsStats | None) -> None:
        self.tls = tls
        self.stats = stats

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.stats is not None:
            self.stats.connection_error.inc()
        transport.abort()


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
        self.cx_length_ms = stats.histogram(prefix + "downstream_cx_length_ms")
        # Connections closed as accepted: past the global limit, and by reject_incoming_connections (overload.py)
        self.global_cx_overflow = stats.counter(prefix + "downstream_global_cx_overflow")
        self.cx_overload_reject = stats.counter(prefix + "downstream_cx_overload_reject")
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
        # With a filter_chain_matcher: it (data -> chain name or NO_MATCH) and the chains by name, instead
        self.chain_matcher: Callable[[NetworkMatchingData], Any] | None = None
        self.chains_by_name: dict[str, ChainRuntime] = {}
        self.listener_filters: list[Any] = []
        # The chain every connection goes to when there is nothing to inspect or match on.
        self.only_chain: ChainRuntime | None = None
        # Its connections count toward the global downstream connections limit: not with ignore_global_conn_limit,
        # nor an internal listener's (Envoy's limit is its TCP listeners' accept; internal ones accept no socket).
        self.counts_globally = not config.ignore_global_conn_limit and config.internal_listener is None

    @property
    def all_chains(self) -> list[ChainRuntime]:
        """Every filter chain, the default one last."""
        return self.chains if self.default_chain is None else [*self.chains, self.default_chain]

    @property
    def terminals(self) -> list[Any]:
        """The HTTP connection managers and tcp_proxies of every chain."""
        return [chain.terminal for chain in self.all_chains]

    def opened(self) -> None:
        self.cx_total.value += 1
        self.cx_active.value += 1
        self.worker_cx_total.value += 1
        self.worker_cx_active.value += 1
        if self.load_slot is not None:
            self.load_slot[CX_ACTIVE] = self.worker_cx_active.value

    def closed(self, length_ms: float) -> None:
        self.cx_active.value -= 1
        self.cx_destroy.value += 1
        self.cx_length_ms.record(length_ms)
        self.worker_cx_active.value -= 1
        if self.load_slot is not None:
            self.load_slot[CX_ACTIVE] = self.worker_cx_active.value

    def find_chain(self, sock: socket.socket, proceed: Callable[[ChainRuntime, Detected | None], None],
                   drop: Callable[[], None], detected: Detected | None = None, network_namespace: str = "") -> None:
        """Run the listener filters, then `proceed` with the connection's chain and what the filters found,
        or `drop` it (no chain matched). `detected`: what the listener that handed it over found.
        `network_namespace`: what NetworkNamespaceInput reads for the accepting address (`namespace_input`)."""
        if not self.listener_filters:
            self._choose(sock, detected, proceed, drop, network_namespace)
            return
        inspection = Inspection(sock, self, lambda found: self._choose(sock, found, proceed, drop, network_namespace),
                                drop, detected)
        inspection.start(self.worker.loop, self.worker.peek_watcher())

    def _choose(self, sock: socket.socket, detected: Detected | None,
                proceed: Callable[[ChainRuntime, Detected | None], None], drop: Callable[[], None],
                network_namespace: str) -> None:
        original = detected.original_destination if detected is not None else None
        if original is not None:
            network_namespace = ""  # Envoy's restored local address names no namespace
        if original is not None and self.config.use_original_dst:
            # Envoy's use_original_dst: the listener of the address the connection was redirected from takes it
            # (its own listener filters run); none, or this one: it stays here.
            target = self.worker.listener_for(original)
            if target is not None and target is not self:
                target.find_chain(sock, proceed, drop, detected)
                return
        chain = self.only_chain
        if chain is None and (self.selector is not None or self.chain_matcher is not None):
            try:
                local, direct = original or sock.getsockname(), sock.getpeername()
            except OSError:
                drop()  # the peer has already gone
                return
            found = detected or Detected()
            # a PROXY protocol header's source is the client; the socket's peer stays the direct one
            peer = found.remote_address or direct
            transport = found.transport_protocol or "raw_buffer"
            if self.chain_matcher is not None:
                # Envoy: the action names the chain (a name no chain has: none); no match: the default chain
                name = self.chain_matcher(NetworkMatchingData(local[:2], peer[:2], direct[:2], found.server_name,
                                                              transport, found.application_protocols,
                                                              network_namespace))
                chain = self.default_chain if name is NO_MATCH else self.chains_by_name.get(name)
            else:
                index = self.selector.select(ConnectionFacts(  # type: ignore[union-attr]
                    ipaddress.ip_address(local[0]), local[1], ipaddress.ip_address(peer[0]), peer[1],
                    found.server_name, transport, found.application_protocols,
                    ipaddress.ip_address(direct[0]) if found.remote_address is not None else None))
                chain = self.chains[index] if index is not None else self.default_chain
        elif chain is None:
            chain = self.default_chain
        if chain is None:
            self.no_filter_chain_match.inc()
            drop()
        else:
            proceed(chain, detected)


def build_listener(config: Any, worker: "Worker") -> ListenerRuntime:
    """Compile a listener's filter chains and listener filters for this worker."""
    runtime = ListenerRuntime(config, worker)
    runtime.chains = [build_chain(chain, runtime) for chain in config.filter_chains]
    if config.default_filter_chain is not None:
        runtime.default_chain = build_chain(config.default_filter_chain, runtime)
    filter_configs = [f.typed_config for f in config.listener_filters]
    if config.use_original_dst:
        # As Envoy, use_original_dst brings the filter it needs, found by name (the proxy imports no extension).
        original_dst = registry.lookup(registry.LISTENER_FILTER, ORIGINAL_DST_TYPE)
        assert original_dst is not None  # config/registry.py names its module
        if not any(isinstance(c, original_dst) for c in filter_configs):
            filter_configs.insert(0, original_dst())
    runtime.listener_filters = [build_listener_filter(c, worker.stats) for c in filter_configs]
    if config.filter_chain_matcher is not None:
        # The chains' filter_chain_match are ignored (as Envoy ignores them): the matcher names the chain.
        runtime.chains_by_name = {chain.name: runtime for chain, runtime in zip(config.filter_chains, runtime.chains)}
        runtime.chain_matcher = compile_matcher(config.filter_chain_matcher, Vocabulary(
            inputs=NETWORK_READERS, action=lambda value: value.value, input_matchers=INPUT_MATCHERS))
        return runtime
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


def _without_h2(tls_config: Any, listener_name: str) -> Any:
    """The chain's TLS context without `h2` in its ALPN list, said once: an HCM with codec_type HTTP1 speaks
    HTTP/1 only, so a client that negotiated `h2` (as curl and browsers do when offered it) would send frames the
    connection cannot read. Not offering it makes such clients use HTTP/1.1. (Envoy offers it and then fails
    such clients; serving them HTTP/1.1 is pylon's departure.)"""
    common = tls_config.common_tls_context
    if "h2" not in common.alpn_protocols:
        return tls_config
    if listener_name not in _h2_reported:
        _h2_reported.add(listener_name)
        log.warning("listener %s: its HTTP connection manager has codec_type HTTP1, so its TLS chains do not "
                    "offer 'h2' in ALPN and HTTP/2 clients use HTTP/1.1", listener_name or "(unnamed)")
    alpn = [protocol for protocol in common.alpn_protocols if protocol != "h2"]
    return msgspec.structs.replace(tls_config, common_tls_context=msgspec.structs.replace(common, alpn_protocols=alpn))


def build_chain(chain: FilterChain, listener: ListenerRuntime) -> ChainRuntime:
    """One filter chain's TLS and terminal network filter for this worker."""
    worker = listener.worker
    runtime = ChainRuntime(chain.name)
    runtime.tls_config = tls_context(chain.transport_socket)  # None: plain TCP (none, or raw_buffer)
    if runtime.tls_config is not None:
        runtime.tls_stats = TlsStats(worker.stats, listener_stat_name(listener.config) + ".")
    terminal_cfg = chain.filters[-1].typed_config
    if isinstance(terminal_cfg, HttpConnectionManager) and runtime.tls_config is not None \
            and terminal_cfg.codec_type == "HTTP1":
        runtime.tls_config = _without_h2(runtime.tls_config, listener.config.name)
    network_filters = [build_network_filter(f.name, f.typed_config, worker) for f in chain.filters[:-1]]
    scheme = b"https" if runtime.tls_config is not None else b"http"
    if isinstance(terminal_cfg, HttpConnectionManager):
        hcm = HcmRuntime(terminal_cfg, worker.clusters, worker.pools, worker.stats, worker,
                         listener_stat_name(listener.config))
        hcm.tls_stats = runtime.tls_stats
        hcm.network_filters = network_filters
        hcm.buffer_limit = listener.config.per_connection_buffer_limit_bytes
        if terminal_cfg.tracing is not None:
            router = terminal_cfg.http_filters[-1].typed_config
            hcm.tracer = Tracer(terminal_cfg.tracing, listener.config.traffic_direction == "OUTBOUND",
                                router.start_child_span, hcm)
        runtime.forwards_client_cert = terminal_cfg.forward_client_cert_details != "SANITIZE"
        runtime.terminal = hcm
        if terminal_cfg.codec_type != "HTTP1":
            hcm.h2 = H2Runtime(hcm, worker.stats)
        factory = connection_factory(hcm, scheme, runtime.tls_config is not None, listener)
    elif isinstance(terminal_cfg, TcpProxy):
        tcp = TcpProxyRuntime(terminal_cfg, worker.clusters, worker.stats, worker)
        tcp.tls_stats = runtime.tls_stats
        tcp.network_filters = network_filters
        runtime.terminal = tcp

        def factory(detected: Detected | None = None) -> TcpProxySession:  # type: ignore[misc]
            session = TcpProxySession(tcp)
            session.runtime_listener = listener
            session.detected = detected
            return session
    else:  # an extension's terminal filter (the config loader lets only registered ones through)
        build = terminal_factory(type(terminal_cfg))
        if build is None:
            raise TypeError(f"unsupported terminal filter {type(terminal_cfg).__name__}")
        runtime.terminal, factory = build(terminal_cfg, listener, network_filters)
        runtime.terminal.tls_stats = runtime.tls_stats
    runtime.app_factory = tapped_factory(factory, socket_tap(chain.transport_socket, worker.stats, worker.worker_id))
    runtime.install_tls(worker.secrets, worker.stats)
    return runtime
