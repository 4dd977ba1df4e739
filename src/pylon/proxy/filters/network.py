"""Network filters ahead of a chain's terminal one (tcp_proxy or the HTTP connection manager).

Envoy runs a filter chain's network filters in order on every connection the
chain takes; the last one (tcp_proxy, http_connection_manager) serves it. The
ones before it can refuse the connection - `envoy.filters.network.rbac` is the
one Istio generates, ahead of tcp_proxy on a workload's inbound TCP ports.

Each filter module (`pylon/extensions/filters/network/`) registers its config
Struct (`config.registry`, category `envoy.filters.network`) and a factory
here, in the proxy, which must not import the filters (they import it). A filter is sans-IO: when a
connection is established (its TLS handshake done), the terminal calls
`on_connection(info)` with the connection's `ConnectionInfo`
(`proxy/connection_info.py`); True lets it through, False closes it before a
byte reaches the upstream.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol


class NetworkFilter(Protocol):
    name: str

    def on_connection(self, info: Any) -> bool: ...


#: factory(name, config Struct, worker stats store) -> the filter, built once per chain and worker
NetworkFilterFactory = Callable[[str, Any, Any], NetworkFilter]
_FACTORIES: dict[type, NetworkFilterFactory] = {}


def register_network_filter(config_type: type, factory: NetworkFilterFactory) -> None:
    _FACTORIES[config_type] = factory


def is_registered(config_type: type) -> bool:
    return config_type in _FACTORIES


def build_network_filter(name: str, config: Any, stats: Any) -> NetworkFilter:
    """The filter for one non-terminal `filters` entry of a chain (its config type was registered by its module)."""
    return _FACTORIES[type(config)](name, config, stats)
