"""Scoped routes (HttpConnectionManager.scoped_routes, inline scopes), sans-IO: a request's headers build its
scope key, and the scope's route configuration routes it.

As Envoy's ScopedConfigImpl: each fragment of `scope_key_builder` reads one request header (its first value),
splits it by `element_separator` and takes the `index`-th element, or the value of the element `key<sep>value`
whose key is `element.key`; a header or element that is not there leaves the request without a scope key. The
key is the fragments in order; the scope whose `key.fragments[].string_key` are exactly those routes the
request. Without a key, or without a scope for it, the request has no route (404, NR), as in Envoy.

`ScopedRouteTable.match` has RouteTable's signature, so the connection manager holds either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pylon.proxy.headers import HeaderList
from pylon.proxy.router import MatchedRoute, RouteTable

__all__ = ["ScopedRouteTable"]

Fragment = Callable[[HeaderList], "str | None"]


def _fragment(extractor: Any) -> Fragment:
    name = extractor.name.lower().encode()
    separator = extractor.element_separator
    element = extractor.element
    index = extractor.index if extractor.index is not None else 0

    def split(value: str) -> list[str]:
        return value.split(separator) if separator else list(value)

    if element is not None:
        key, kv_separator = element.key, element.separator

        def by_key(headers: HeaderList) -> str | None:
            value = headers.get(name)
            if value is None:
                return None
            for item in split(value.decode("latin-1")):
                found, sep, rest = item.partition(kv_separator)
                if sep and found == key:
                    return rest
            return None
        return by_key

    def by_index(headers: HeaderList) -> str | None:
        value = headers.get(name)
        if value is None:
            return None
        elements = split(value.decode("latin-1"))
        return elements[index] if index < len(elements) else None
    return by_index


class ScopedRouteTable:
    """The scopes of one connection manager: key builder and a RouteTable per scope key."""

    def __init__(self, config: Any) -> None:
        self.name = config.name
        self.fragments = [_fragment(f.header_value_extractor) for f in config.scope_key_builder.fragments]
        self.scopes: dict[tuple[str, ...], RouteTable] = {
            scope.key_tuple: RouteTable(scope.route_configuration)
            for scope in config.scoped_route_configurations_list.scoped_route_configurations}

    def scope_key(self, headers: HeaderList) -> tuple[str, ...] | None:
        """The request's scope key, or None when a fragment is missing."""
        key = []
        for fragment in self.fragments:
            value = fragment(headers)
            if value is None:
                return None
            key.append(value)
        return tuple(key)

    def match(self, authority: str, path: str, headers: HeaderList, method: str | None = None,
              scheme: str | None = None) -> MatchedRoute | None:
        key = self.scope_key(headers)
        table = self.scopes.get(key) if key is not None else None
        return table.match(authority, path, headers, method, scheme) if table is not None else None
