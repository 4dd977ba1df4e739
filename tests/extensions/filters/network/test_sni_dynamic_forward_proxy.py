"""envoy.filters.network.sni_dynamic_forward_proxy: its config (Envoy's refusals and pylon's, by field) and its
verdicts on a connection, with the DNS cache's answers made here (no resolver runs). Behaviour through both
proxies: tests/proxy/test_proxy_sni_dynamic_forward_proxy.py."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap
from pylon.extensions.common.dynamic_forward_proxy.dns_cache import HostInfo
from pylon.extensions.filters.network.sni_dynamic_forward_proxy import FilterConfig, SniDynamicForwardProxyFilter
from pylon.proxy.connection_info import ConnectionInfo
from pylon.proxy.filters.network import run_filters
from pylon.proxy.validate import validate_listeners
from pylon.stats.store import StatsStore
from tests.proxy.conftest import HCM_TYPE, ROUTER_TYPE, TCP_PROXY_TYPE

FILTER_CONFIG = "type.googleapis.com/envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3.FilterConfig"
CLUSTER_CONFIG = "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig"
CHAIN = "static_resources.listeners[0].filter_chains[0]"
FILTER = f"{CHAIN}.filters[0].typed_config"
CACHE = {"name": "sni", "dns_lookup_family": "V4_ONLY"}


def bootstrap(**filter_fields: Any) -> dict[str, Any]:
    """A listener whose SNI filter, ahead of tcp_proxy, and the tcp_proxy's cluster name the same cache."""
    fields = {"dns_cache_config": dict(CACHE), "port_value": 443, **filter_fields}
    sni = {"@type": FILTER_CONFIG, **{k: v for k, v in fields.items() if v is not None}}
    return {"static_resources": {
        "listeners": [{"name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
                       "filter_chains": [{"filters": [
                           {"name": "envoy.filters.network.sni_dynamic_forward_proxy", "typed_config": sni},
                           {"name": "envoy.filters.network.tcp_proxy",
                            "typed_config": {"@type": TCP_PROXY_TYPE, "stat_prefix": "sni", "cluster": "sni"}}]}]}],
        "clusters": [{"name": "sni", "lb_policy": "CLUSTER_PROVIDED", "cluster_type": {
            "name": "envoy.clusters.dynamic_forward_proxy",
            "typed_config": {"@type": CLUSTER_CONFIG, "dns_cache_config": dict(CACHE)}}}]}}


def test_envoys_shape_loads() -> None:
    listener = parse_bootstrap(bootstrap(), "test").static_resources.listeners[0]
    config = listener.filter_chains[0].filters[0].typed_config
    assert isinstance(config, FilterConfig) and config.port_value == 443
    validate_listeners([listener], "test", "static_resources.listeners", {})


@pytest.mark.parametrize(("fields", "path", "message"), [
    ({"dns_cache_config": None}, f"{FILTER}.dns_cache_config", "missing required field"),
    ({"port_value": 65536}, f"{FILTER}.port_value", "<= 65535"),
    ({"dns_cache_config": {**CACHE, "max_hosts": 5}}, f"{FILTER}.dns_cache_config",
     "config specified DNS cache 'sni' with different settings"),
    ({"save_upstream_address": True}, f"{FILTER}.save_upstream_address", "not supported yet"),
    ({"dns_cache_config": {**CACHE, "use_tcp_for_dns_lookups": True}},
     f"{FILTER}.dns_cache_config.use_tcp_for_dns_lookups", "not supported yet"),
])  # fmt: skip
def test_config_errors_name_their_field(fields: dict[str, Any], path: str, message: str) -> None:
    data = bootstrap(**fields)
    with pytest.raises(ConfigError) as caught:
        parse_bootstrap(data, "test")
    assert caught.value.path == path and message in caught.value.message


def test_ahead_of_the_http_connection_manager_it_is_refused() -> None:
    """Only tcp_proxy waits for its answer in pylon."""
    data = copy.deepcopy(bootstrap())
    hcm = {"@type": HCM_TYPE, "stat_prefix": "main", "route_config": {},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]}
    data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][1] = {
        "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
    listener = parse_bootstrap(data, "test").static_resources.listeners[0]
    with pytest.raises(ConfigError) as caught:
        validate_listeners([listener], "test", "static_resources.listeners", {})
    assert caught.value.path == "static_resources.listeners[0].filter_chains[0].filters[0]"
    assert "must come before tcp_proxy" in caught.value.message


class FakeWorker:
    """What the filter uses of a worker: its loop, stats and singletons (the caches)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.stats = StatsStore()
        self.singletons: dict[str, Any] = {}


def sni_filter(worker: FakeWorker, **cache: Any) -> SniDynamicForwardProxyFilter:
    config = parse_bootstrap(bootstrap(dns_cache_config={**CACHE, **cache}), "test").static_resources.listeners[0]
    typed = config.filter_chains[0].filters[0].typed_config
    return SniDynamicForwardProxyFilter("envoy.filters.network.sni_dynamic_forward_proxy", typed, worker)


def answer(flt: SniDynamicForwardProxyFilter, key: str, address: tuple[str, int] | None) -> None:
    """The cache's first answer for `key` (a resolver's work, done here): waiters hear of it."""
    assert flt._cache is not None
    info: HostInfo = flt._cache.hosts[key]
    if info.query is not None:
        info.query.cancel()
        info.query = None
    flt._cache._finish(info, "completed", "cares_success:x" if address else "cares_norecords:x",
                       [address] if address else [], 3600)


def test_a_new_name_holds_the_connection_until_the_answer_whatever_it_is() -> None:
    async def scenario() -> None:
        worker = FakeWorker(asyncio.get_running_loop())
        flt = sni_filter(worker)
        info = ConnectionInfo(1, None, None, server_name="a.localhost")
        verdict = run_filters([flt], info)
        assert isinstance(verdict, asyncio.Future) and not verdict.done()
        assert info.dynamic_port == 443  # what the cluster looks the host up by
        assert flt._cache is not None and flt._cache.pending.count == 1
        answer(flt, "a.localhost:443", None)  # no address: the connection still goes on (to no host)
        assert await verdict is True and flt._cache.pending.count == 0
        again = ConnectionInfo(2, None, None, server_name="a.localhost")
        assert flt.on_connection(again) is True  # in the cache
        assert flt.on_connection(ConnectionInfo(3, None, None)) is True  # no SNI: nothing to resolve
    asyncio.run(scenario())


def test_a_connection_gone_before_the_answer_frees_its_place() -> None:
    async def scenario() -> None:
        worker = FakeWorker(asyncio.get_running_loop())
        flt = sni_filter(worker)
        verdict = flt.on_connection(ConnectionInfo(1, None, None, server_name="localhost"))
        assert isinstance(verdict, asyncio.Future)
        verdict.cancel()  # what tcp_proxy does when the client leaves
        await asyncio.sleep(0)
        assert flt._cache is not None and flt._cache.pending.count == 0
        answer(flt, "localhost:443", ("127.0.0.1", 443))  # a late answer wakes no one
    asyncio.run(scenario())


def test_overflows_close_the_connection() -> None:
    async def scenario() -> None:
        worker = FakeWorker(asyncio.get_running_loop())
        tight = sni_filter(worker, name="tight", dns_cache_circuit_breaker={"max_pending_requests": 0})
        assert tight.on_connection(ConnectionInfo(1, None, None, server_name="localhost")) is False
        small = sni_filter(worker, name="small", max_hosts=1)
        first = small.on_connection(ConnectionInfo(2, None, None, server_name="localhost"))
        assert isinstance(first, asyncio.Future)
        assert small.on_connection(ConnectionInfo(3, None, None, server_name="b.localhost")) is False
        stats = worker.stats
        assert stats.counter("dns_cache.tight.dns_rq_pending_overflow").value == 1
        assert stats.counter("dns_cache.small.host_overflow").value == 1
        first.cancel()
    asyncio.run(scenario())
