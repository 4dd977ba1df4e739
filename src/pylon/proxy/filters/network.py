"""Network filters ahead of a chain's terminal one (tcp_proxy or the HTTP connection manager).

Envoy runs a filter chain's network filters in order on every connection the
chain takes; the last one (tcp_proxy, http_connection_manager) serves it. The
ones before it can refuse the connection - `envoy.filters.network.rbac` is the
one Istio generates, ahead of tcp_proxy on a workload's inbound TCP ports - or
hold it until they know more (`envoy.filters.network.sni_dynamic_forward_proxy`
resolves the SNI first, as Envoy's filter stops iterating until its DNS answer).

Each filter module (`pylon/extensions/filters/network/`) registers its config
Struct (`config.registry`, category `envoy.filters.network`) and a factory
here, in the proxy, which must not import the filters (they import it). A filter is sans-IO: when a
connection is established (its TLS handshake done), the terminal calls
`on_connection(info)` with the connection's `ConnectionInfo`
(`proxy/connection_info.py`); True lets it through, False closes it before a
byte reaches the upstream, and a future (registered with `waits=True`) holds the
connection until it is done with one of the two. Only tcp_proxy waits
(`run_filters`); the loader refuses a filter that waits ahead of the HTTP
connection manager (`waits`).
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Protocol, Union

#: A filter's answer: let the connection through, close it, or wait for the answer.
Verdict = Union[bool, "asyncio.Future[bool]"]


class NetworkFilter(Protocol):
    name: str

    def on_connection(self, info: Any) -> Verdict: ...


#: factory(name, config Struct, worker) -> the filter, built once per chain and worker
NetworkFilterFactory = Callable[[str, Any, Any], NetworkFilter]
_FACTORIES: dict[type, NetworkFilterFactory] = {}
_WAITING: set[type] = set()
#: terminal filters of extensions (redis_proxy): factory(config Struct, listener runtime, the chain's filters
#: ahead of it) -> (the chain's terminal runtime, its connections' protocol factory)
TerminalFactory = Callable[[Any, Any, list[NetworkFilter]], tuple[Any, Callable[..., Any]]]
_TERMINALS: dict[type, TerminalFactory] = {}


def register_network_filter(config_type: type, factory: NetworkFilterFactory, *, waits: bool = False) -> None:
    """`waits`: the filter may answer a future (only tcp_proxy can wait for one)."""
    _FACTORIES[config_type] = factory
    if waits:
        _WAITING.add(config_type)


def register_terminal(config_type: type, factory: TerminalFactory) -> None:
    """A terminal network filter beside the core two (http_connection_manager, tcp_proxy)."""
    _TERMINALS[config_type] = factory


def terminal_factory(config_type: type) -> TerminalFactory | None:
    return _TERMINALS.get(config_type)


def is_registered(config_type: type) -> bool:
    return config_type in _FACTORIES


def waits(config_type: type) -> bool:
    return config_type in _WAITING


def build_network_filter(name: str, config: Any, worker: Any) -> NetworkFilter:
    """The filter for one non-terminal `filters` entry of a chain (its config type was registered by its module)."""
    return _FACTORIES[type(config)](name, config, worker)


def run_filters(filters: list[NetworkFilter], info: Any) -> Verdict:
    """The filters' verdict in order: the first False, else True; a future when one of them waits (the ones after
    it run once it let the connection through)."""
    for index, network_filter in enumerate(filters):
        verdict = network_filter.on_connection(info)
        if verdict is True:
            continue
        if verdict is False:
            return False
        return asyncio.ensure_future(_after(verdict, filters[index + 1:], info))
    return True


async def _after(waiting: "asyncio.Future[bool]", rest: list[NetworkFilter], info: Any) -> bool:
    if not await waiting:
        return False
    verdict = run_filters(rest, info)
    return verdict if isinstance(verdict, bool) else await verdict
