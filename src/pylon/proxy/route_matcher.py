"""A virtual host's `matcher`: the route chosen by a matcher tree instead of the `routes` list (sans-IO).

Envoy 1.40's VirtualHostImpl: the tree runs over the request headers (its only
input, `HttpRequestHeaderMatchInput`: config refuses others); its action is a
`Route` or a `RouteList`. The chosen Route's own `match` still applies (path,
headers, query parameters): a tree that picks a Route whose match fails gives
no route, and a RouteList gives its first Route that matches. No action: no
route (404 NR). The Routes are built as the table builds its `routes`, with the
virtual host's header rules, retry policy and per-filter configs around them;
unlike those, their clusters are not checked at load (Envoy builds them with
validate_clusters off), so an unknown one is a 503 NC on the request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pylon.config.envoy import Route, RouteList
from pylon.proxy.matching.engine import INSUFFICIENT, Vocabulary, compile_matcher
from pylon.proxy.matching.http_inputs import HTTP_READERS, HttpMatchingData
from pylon.proxy.matching.input_matchers import INPUT_MATCHERS
from pylon.regex import RegexEngine

if TYPE_CHECKING:
    from pylon.config.matcher import Matcher
    from pylon.proxy.headers import HeaderList
    from pylon.proxy.router import MatchedRoute

#: a Route compiled as the table compiles its routes: (kind, argument, conditions, route)
Entry = tuple[int, Any, Any, "MatchedRoute"]
EntryTest = Callable[[str, "HeaderList", str, str, "str | None", "str | None"], bool]
Choose = Callable[[str, "HeaderList", str, str, "str | None", "str | None"], "MatchedRoute | None"]


def compile_route_matcher(config: Matcher, build: Callable[[Route], Entry],
                          entry_test: Callable[[int, Any, Any], EntryTest], engine: RegexEngine) -> Choose:
    """`choose(p, headers, authority, path, method, scheme)`: the route for a request, or None (404 NR).

    `build` compiles one Route of the virtual host, `entry_test` the check of its own match; `p` is the path
    without query or fragment, `path` the whole request target.
    """

    def action(decoded: Any) -> tuple[tuple[EntryTest, MatchedRoute], ...]:
        routes = decoded.routes if isinstance(decoded, RouteList) else [decoded]
        out = []
        for j, route in enumerate(routes):
            try:
                kind, arg, conditions, matched = build(route)
                out.append((entry_test(kind, arg, conditions), matched))
            except ValueError as exc:
                where = f"RouteList routes[{j}]" if isinstance(decoded, RouteList) else "Route"
                raise ValueError(f"{where}{f' ({route.name})' if route.name else ''}: {exc}") from exc
        return tuple(out)

    match = compile_matcher(config, Vocabulary(inputs=HTTP_READERS, action=action, input_matchers=INPUT_MATCHERS), engine)

    def choose(p: str, headers: HeaderList, authority: str, path: str, method: str | None,
               scheme: str | None) -> MatchedRoute | None:
        routes = match(HttpMatchingData(headers, authority, path, method, scheme))
        if routes is None or routes is INSUFFICIENT:
            return None
        for test, route in routes:
            if test(p, headers, authority, path, method, scheme):
                return route
        return None

    return choose
