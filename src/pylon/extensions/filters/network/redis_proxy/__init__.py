"""envoy.filters.network.redis_proxy: a terminal network filter that proxies RESP2 clients to redis clusters.

The modules: `resp` (the codec), `commands` (Envoy's command set), `splitter` (a command -> upstream commands and
back), `faults`, `client` (a worker's connection to one host), `session` (a client connection), `config`.
"""

from __future__ import annotations

from typing import Any

from pylon.extensions.filters.network.redis_proxy.config import RedisProxy
from pylon.extensions.filters.network.redis_proxy.session import RedisRuntime, RedisSession
from pylon.proxy.filters.network import register_terminal


def build(config: RedisProxy, listener: Any, network_filters: list[Any]) -> tuple[RedisRuntime, Any]:
    """The chain's terminal runtime and its connections' protocol factory."""
    runtime = RedisRuntime(config, listener.worker)
    runtime.network_filters = network_filters

    def factory(detected: Any = None) -> RedisSession:
        session = RedisSession(runtime)
        session.runtime_listener = listener
        session.detected = detected
        return session

    return runtime, factory


register_terminal(RedisProxy, build)
