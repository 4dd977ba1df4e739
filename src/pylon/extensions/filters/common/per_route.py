"""A filter's config compiled once, and each route's replacement (typed_per_filter_config) compiled on first use.

Why: filters whose per-route config replaces their own whole (Envoy's resolveMostSpecificPerFilterConfig) need the
compiled form of whichever applies to a stream, without compiling it per request. Compiled forms are kept by the
config's identity, the config held beside them so its id cannot be reused while the entry lives.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

Compiled = TypeVar("Compiled")


class MostSpecific(Generic[Compiled]):
    """The compiled config for a stream: its route's most specific per-route config for `name`, else the filter's."""

    __slots__ = ("name", "own", "compile", "_per_route")

    def __init__(self, name: str, config: Any, compile: Callable[[Any], Compiled]) -> None:
        self.name = name
        self.compile = compile
        self.own = compile(config)
        self._per_route: dict[int, tuple[Any, Compiled]] = {}

    def of(self, stream: Any) -> Compiled:
        route = stream.route
        config = route.filter_config(self.name) if route is not None else None
        if config is None:
            return self.own
        known = self._per_route.get(id(config))
        if known is None or known[0] is not config:
            known = self._per_route[id(config)] = (config, self.compile(config))
        return known[1]
