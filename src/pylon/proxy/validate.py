"""Build, once and in the supervisor, every runtime piece that can still fail after the config parsed.

The config model checks each field; building the runtime checks what only
the libraries can: certificates and keys load and match (OpenSSL), regexes
fit RE2's limits, header and access-log operators are known. Doing it here,
before any socket is bound or worker started, keeps "nothing half-started"
true and lets each error name its field path like any other config error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pylon import regex
from pylon.config.envoy import CpuUtilizationConfig, HttpConnectionManager, TcpProxy
from pylon.config.errors import ConfigError
from pylon.config.secrets import secret_names, tls_context, tls_socket_path
from pylon.proxy.access_log import compile_log_format
from pylon.proxy.access_log_filter import compile_filter
from pylon.proxy.balance import Dlb, NoDlbFallback, balance_kind
from pylon.proxy.cpu_utilization import CpuReadError, container_reader
from pylon.proxy.filter_chain_match import DuplicateMatch, FilterChainSelector
from pylon.proxy.filters.http import build_filter
from pylon.proxy.filters.network import is_registered, waits
from pylon.proxy.filters.udp import check_udp_listener_filter
from pylon.proxy.local_reply_mapper import LocalReplyMapper
from pylon.proxy.router import RouteTable
from pylon.proxy.tls import TlsConfigError, check_secret, client_context, server_context
from pylon.proxy.upstream.cluster import build_cluster
from pylon.stats.store import StatsStore

log = logging.getLogger("pylon.main")


def _join(base: str, rel: str) -> str:
    return f"{base}.{rel}" if rel else base


def configure_regex_engine(bootstrap: Any, source: str) -> None:
    """Make the bootstrap's `default_regex_engine` this process's engine (Envoy: a process-wide singleton).

    Every pylon process loads exactly one bootstrap — the supervisor, then each
    worker — and calls this right after, before any route table is built.
    """
    try:
        regex.set_default_engine(bootstrap.regex_engine_name, bootstrap.runtime.re2_max_program_size)
    except ValueError as exc:
        raise ConfigError(source, "default_regex_engine.typed_config", str(exc)) from exc


def validate_runtime(bootstrap: Any, source: str) -> None:
    """Raise ConfigError for the first runtime piece that cannot be built."""
    resources = bootstrap.static_resources
    secrets = {secret.name: secret for secret in resources.secrets}
    for i, secret in enumerate(resources.secrets):
        validate_secret(secret, source, f"static_resources.secrets[{i}]")
    validate_listeners(resources.listeners, source, "static_resources.listeners", secrets)
    validate_clusters(resources.clusters, source, "static_resources.clusters", secrets)
    validate_resource_monitors(bootstrap.overload_manager, source)


def validate_resource_monitors(overload: Any, source: str) -> None:
    """A cpu_utilization monitor in CONTAINER mode needs a cgroup it can read (Envoy refuses to start too)."""
    for i, monitor in enumerate(overload.resource_monitors if overload is not None else []):
        if isinstance(monitor.typed_config, CpuUtilizationConfig) and monitor.typed_config.mode == "CONTAINER":
            try:
                container_reader()
            except CpuReadError as exc:
                raise ConfigError(source, f"overload_manager.resource_monitors[{i}].typed_config.mode",
                                  f"CONTAINER: {exc}; use mode HOST") from None


def validate_secret(secret: Any, source: str, path: str) -> None:
    """ConfigError unless the secret's certificate and key (or CA) load: static, or from SDS."""
    try:
        check_secret(secret)
    except TlsConfigError as exc:
        raise ConfigError(source, _join(path, exc.path), exc.message) from exc


def validate_listeners(listeners: list[Any], source: str, path: str, secrets: Mapping[str, Any]) -> None:
    """ConfigError unless each listener's runtime builds (chains, TLS, routes, logs); static or from LDS.
    TLS contexts are built with the `secrets` known now; those not come yet are left out (the listener warms)."""
    _check_balancers(source, listeners, path)
    for i, listener in enumerate(listeners):
        base = f"{path}[{i}]"
        if listener.is_udp:
            _validate_udp_filter(listener.listener_filters[0].typed_config, source, f"{base}.listener_filters[0]")
            continue
        try:
            if listener.filter_chain_matcher is None:  # with one, the chains' filter_chain_match are ignored
                FilterChainSelector([chain.filter_chain_match for chain in listener.filter_chains])
        except DuplicateMatch as exc:
            chains = listener.filter_chains
            if exc.identical:
                why = (f"filter chain {chains[exc.index].name!r} has the same matching rules defined as "
                       f"filter_chains[{exc.previous}] ({chains[exc.previous].name!r})")
            else:
                which = "itself" if exc.previous == exc.index else f"filter_chains[{exc.previous}]"
                why = f"multiple filter chains with overlapping matching rules are defined (it overlaps {which})"
            raise ConfigError(source, f"{base}.filter_chains[{exc.index}].filter_chain_match", why) from None
        for rel, chain in listener.all_filter_chains():
            _validate_chain(chain, source, f"{base}.{rel}", secrets)


def _validate_udp_filter(config: Any, source: str, filter_path: str) -> None:
    """A UDP listener's filter builds as a worker builds it: its format strings and access logs."""
    try:
        check_udp_listener_filter(config)
    except ValueError as exc:
        raise ConfigError(source, f"{filter_path}.typed_config", str(exc)) from exc
    _check_access_logs(source, f"{filter_path}.typed_config", config)


def _validate_chain(chain: Any, source: str, chain_path: str, secrets: Mapping[str, Any]) -> None:
    for k, network_filter in enumerate(chain.filters[:-1]):
        if not is_registered(type(network_filter.typed_config)):
            raise ConfigError(source, f"{chain_path}.filters[{k}]",
                              f"{network_filter.name} cannot come before the terminal filter in pylon (it only "
                              "serves connections; filters that may refuse them, such as RBAC, can)")
        if waits(type(network_filter.typed_config)) and not isinstance(chain.filters[-1].typed_config, TcpProxy):
            raise ConfigError(source, f"{chain_path}.filters[{k}]",
                              f"{network_filter.name} must come before tcp_proxy in pylon (its connection waits for "
                              "it, which only tcp_proxy can)")
    context = tls_context(chain.transport_socket)
    if context is not None:
        tls_path = f"{chain_path}.{tls_socket_path(chain.transport_socket)}.typed_config"
        try:
            server_context(context, secrets, skip_missing=True)
        except TlsConfigError as exc:
            raise ConfigError(source, _join(tls_path, exc.path), exc.message) from exc
    terminal = chain.filters[-1].typed_config
    filter_path = f"{chain_path}.filters[{len(chain.filters) - 1}].typed_config"
    if isinstance(terminal, HttpConnectionManager):
        for rel_route, route_config in terminal.inline_route_configs():
            validate_route_config(route_config, source, f"{filter_path}.{rel_route}")
        for k, http_filter in enumerate(terminal.http_filters[:-1]):
            try:  # built as a worker builds it (an RBAC regex over RE2's limit fails here, not in the worker)
                build_filter(http_filter.name, http_filter.typed_config, terminal.stat_prefix, StatsStore(), None)
            except ValueError as exc:
                raise ConfigError(source, f"{filter_path}.http_filters[{k}].typed_config", str(exc)) from exc
        if terminal.local_reply_config is not None:
            try:  # its filters' header matchers and its body formats' operators
                LocalReplyMapper(terminal.local_reply_config, regex.get_engine())
            except ValueError as exc:
                raise ConfigError(source, f"{filter_path}.local_reply_config", str(exc)) from exc
    _check_access_logs(source, filter_path, terminal)


def validate_route_config(route_config: Any, source: str, path: str) -> None:
    """ConfigError unless the route table builds (regexes, rewrites, header rules); static or from RDS."""
    try:
        RouteTable(route_config)
    except ValueError as exc:
        raise ConfigError(source, path, str(exc)) from exc


def validate_clusters(clusters: list[Any], source: str, path: str, secrets: Mapping[str, Any],
                      held: Mapping[str, Any] | None = None) -> None:
    """ConfigError unless each cluster's runtime builds as a worker builds it (static or from CDS): `validate`
    and `serve` cannot disagree about a cluster. TLS contexts as in `validate_listeners`. A cluster that is the
    very config `held` has in force (a state-of-the-world response resends every cluster) was checked when it
    came."""
    for j, cluster in enumerate(clusters):
        if cluster.grpc_only or (held is not None and held.get(cluster.name) is cluster):
            continue  # grpcio's (xDS, SDS): no data-plane runtime; or in force already
        failed = False
        try:
            # built, never started: no socket, DNS query, timer
            build_cluster(cluster, StatsStore(), 0, secrets=secrets, singletons={})
        except TlsConfigError:
            failed = True  # which of its contexts: found below, to name the field
        except ValueError as exc:
            raise ConfigError(source, f"{path}[{j}]", str(exc)) from exc
        sockets = [("transport_socket", cluster.transport_socket)]
        sockets += [(f"transport_socket_matches[{k}].transport_socket", match.transport_socket)
                    for k, match in enumerate(cluster.transport_socket_matches)]
        for rel, transport_socket in sockets:
            context = tls_context(transport_socket)
            # A context whose secrets have not come was not built by the Cluster: what they do not bring is checked.
            if context is not None and (failed or secret_names(context.common_tls_context) - secrets.keys()):
                try:
                    client_context(context, secrets, skip_missing=True)
                except TlsConfigError as exc:
                    where = f"{path}[{j}].{tls_socket_path(transport_socket, rel)}.typed_config"
                    raise ConfigError(source, _join(where, exc.path), exc.message) from exc


def _check_balancers(source: str, listeners: list[Any], base: str) -> None:
    """Refuse a DLB config without a fallback; warn once that DLB configs run on their fallback."""
    on_fallback: list[str] = []
    for i, listener in enumerate(listeners):
        path = f"{base}[{i}].connection_balance_config.extend_balance.typed_config"
        try:
            kind = balance_kind(listener)
        except NoDlbFallback as exc:
            raise ConfigError(source, f"{path}.{exc.field}", str(exc)) from exc
        config = listener.connection_balance_config
        if config is not None and config.extend_balance is not None and isinstance(config.extend_balance.typed_config, Dlb):
            on_fallback.append(f"{base}[{i}] ({listener.name or 'unnamed'}) → {kind}")
    if on_fallback:
        log.warning("envoy.network.connection_balance.dlb: no DLB device on this host; using each listener's "
                    "fallback_policy: %s", "; ".join(on_fallback))


def _check_access_logs(source: str, filter_path: str, terminal: Any) -> None:
    """The access logs of an HTTP connection manager, a tcp_proxy or a UDP proxy compile as a worker compiles them."""
    for k, entry in enumerate(getattr(terminal, "access_log", ())):  # redis_proxy has none
        try:
            compile_log_format(entry.typed_config.log_format)
        except ValueError as exc:
            raise ConfigError(source, f"{filter_path}.access_log[{k}].typed_config.log_format", str(exc)) from exc
        if entry.filter is not None:
            try:  # a header_filter's regex over RE2's limits fails here, not in a worker
                compile_filter(entry.filter, regex.get_engine())
            except ValueError as exc:
                raise ConfigError(source, f"{filter_path}.access_log[{k}].filter", str(exc)) from exc
