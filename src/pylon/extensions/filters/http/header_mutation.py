"""envoy.filters.http.header_mutation: ordered request and response header edits, per filter and per route.

Why a filter when routes have `*_headers_to_add`: its edits run in order on the live headers, at its place in
the chain, with `remove_on_match`. Observed beside Envoy 1.40 (tests/proxy/test_proxy_header_mutation.py):
the filter's own `mutations` run first, then each level's HeaderMutationPerRoute (route, virtual host, route
configuration: most specific first, so the least specific has the last word), or, with
`most_specific_header_mutations_wins`, the other way round. Request edits run when the filter decodes (later
filters and the upstream see them; the route stays the one matched before the filters), response edits on every
response head the filter encodes, local replies included. The edits themselves: filters/common/mutation_rules.py.

`query_parameter_mutations` (config.core.v3.KeyValueMutation: `remove`, or `append.record` under its action)
rewrite the query after each level's request headers, as Envoy 1.40 does (observed): the parameters are read by
name, values decoded, mutated in order and written back sorted by name, appended values percent-encoded (all but
letters, digits and `-._*`), the others decoded. Departure: a parameter whose escapes stand for a byte that
would break the request line (space, control, non-ASCII, `#`) or change the query's structure (`&`, `=`, `+`,
`%`) stays as it came; Envoy writes it decoded, so `x=a%26admin%3Dtrue` reaches its upstream as two parameters
(and a second level's edits decode the first level's encoded values again). The route is the one matched before;
its rewrites apply to the new path.

`request_trailers_mutations` and `response_trailers_mutations` edit a message's trailers the same way, level
by level, where the message has trailers (HTTP/1.1 chunked, `enable_trailers` on both sides): none are added to
a message without any, as Envoy's HTTP/1 codec cannot either. Departure: `%REQ(...)%` in a response edit reads the request as the filters left it, not
with the headers the router adds afterwards (x-request-id, x-forwarded-*).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct
from pylon.extensions.filters.common.mutation_rules import (
    HeaderMutation, HeaderMutations, KeyValueMutation, QueryParameterMutations,
)
from pylon.extensions.filters.common.request_edits import replace_request_headers
from pylon.proxy.filters.http import register_filter
from pylon.proxy.filters.upstream import UpstreamHead, register_upstream_filter
from pylon.proxy.headers import HeaderList, request_lookup

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
PER_ROUTE_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute"


class Mutations(EnvoyStruct, kw_only=True):
    """extensions.filters.http.header_mutation.v3.Mutations, compiled on first use (`compiled`)."""

    request_mutations: list[HeaderMutation] = msgspec.field(default_factory=list)
    query_parameter_mutations: list[KeyValueMutation] = msgspec.field(default_factory=list)
    response_mutations: list[HeaderMutation] = msgspec.field(default_factory=list)
    response_trailers_mutations: list[HeaderMutation] = msgspec.field(default_factory=list)
    request_trailers_mutations: list[HeaderMutation] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        self.compiled()  # the formats are checked at load, naming the field

    def compiled(self) -> Compiled:
        return Compiled(HeaderMutations(self.request_mutations, "request_mutations"),
                        QueryParameterMutations(self.query_parameter_mutations, "query_parameter_mutations")
                        if self.query_parameter_mutations else None,
                        HeaderMutations(self.response_mutations, "response_mutations"),
                        HeaderMutations(self.request_trailers_mutations, "request_trailers_mutations"),
                        HeaderMutations(self.response_trailers_mutations, "response_trailers_mutations"))


class Compiled(NamedTuple):
    """One level's edits, compiled: request headers, then the query (None: no query edits), response headers,
    and the trailers of each side."""

    request: HeaderMutations
    query: QueryParameterMutations | None
    response: HeaderMutations
    request_trailers: HeaderMutations
    response_trailers: HeaderMutations


class HeaderMutationConfig(EnvoyStruct, kw_only=True):
    """extensions.filters.http.header_mutation.v3.HeaderMutation, the filter's config."""

    mutations: Mutations | None = None
    most_specific_header_mutations_wins: bool = False


class HeaderMutationPerRoute(EnvoyStruct, kw_only=True):
    """extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute."""

    mutations: Mutations | None = None


_NONE = Mutations()


def _pseudo(stream: Any) -> dict[bytes, bytes]:
    return {b":authority": stream.authority or b"", b":path": stream.path, b":method": stream.method,
            b":scheme": stream.conn.scheme}


class Plan(NamedTuple):
    """A route's edits in Envoy's order, the empty ones left out, and whether any reads the request (%REQ)."""

    request: tuple[tuple[HeaderMutations, QueryParameterMutations | None], ...]
    request_reads: bool
    response: tuple[HeaderMutations, ...]
    response_reads: bool
    request_trailers: tuple[HeaderMutations, ...]
    response_trailers: tuple[HeaderMutations, ...]

    @classmethod
    def of(cls, levels: list[Compiled]) -> Plan:
        request = tuple((level.request, level.query) for level in levels if not level.request.empty or level.query)
        response = tuple(level.response for level in levels if not level.response.empty)
        return cls(request, any(h.reads_request or (q is not None and q.reads_request) for h, q in request),
                   response, any(h.reads_request for h in response),
                   tuple(level.request_trailers for level in levels if not level.request_trailers.empty),
                   tuple(level.response_trailers for level in levels if not level.response_trailers.empty))


class HeaderMutationFilter:
    """One HCM's header mutation filter in one worker; compiled per-route edits are kept per config."""

    def __init__(self, name: str, config: HeaderMutationConfig, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        self.own = (config.mutations or _NONE).compiled()
        self.most_specific_wins = config.most_specific_header_mutations_wins
        self._compiled: dict[int, tuple[Mutations, Compiled]] = {}
        self._by_route: dict[int, tuple[Any, Plan]] = {}

    def _plan(self, route: Any) -> Plan:
        """The route's plan, kept per route (a route table's routes live as long as it; the entry holds the route,
        so its id stays its own)."""
        known = self._by_route.get(id(route))
        if known is not None and known[0] is route:
            return known[1]
        plan = Plan.of(self._levels(route))
        if len(self._by_route) >= 4096:  # a route table replaced many times over: start again
            self._by_route.clear()
        self._by_route[id(route)] = (route, plan)
        return plan

    def _levels(self, route: Any) -> list[Compiled]:
        """The filter's edits, then each per-route level's in Envoy's order."""
        levels = [self.own]
        configs = route.filter_configs_of(self.name) if route is not None else []
        if self.most_specific_wins:
            configs = configs[::-1]
        for config in configs:
            mutations = config.mutations or _NONE
            known = self._compiled.get(id(mutations))
            if known is None or known[0] is not mutations:
                known = self._compiled[id(mutations)] = (mutations, mutations.compiled())  # held: its id stays
            levels.append(known[1])
        return levels

    def decode_headers(self, stream: Any) -> bool:
        plan = self._plan(stream.route)
        if not plan.request:
            return True
        edited = HeaderList(list(stream.headers))
        lookup = None
        if plan.request_reads:
            pseudo = _pseudo(stream)

            def lookup(name: bytes) -> bytes | None:  # the live headers: earlier edits count
                return request_lookup(edited.items, pseudo)(name)
        path = stream.path
        peer = stream.conn.peer
        for headers, query in plan.request:  # each level's headers, then its query, as Envoy's mutateRequestHeaders
            headers.apply(edited, peer, lookup)
            if query is not None:
                path = query.apply(path, peer, lookup)
        replace_request_headers(stream, edited.items)
        if path != stream.path:
            stream.set_path(path)
        return True

    def encode_headers(self, stream: Any, status: int, headers: HeaderList) -> None:
        plan = self._plan(stream.route)
        if plan.response:
            lookup = request_lookup(stream.headers, _pseudo(stream)) if plan.response_reads else None
            for level in plan.response:
                level.apply(headers, stream.conn.peer, lookup)

    def decode_trailers(self, stream: Any, trailers: list[tuple[bytes, bytes]]) -> None:
        self._edit_trailers(stream, trailers, self._plan(stream.route).request_trailers)

    def encode_trailers(self, stream: Any, trailers: list[tuple[bytes, bytes]]) -> None:
        self._edit_trailers(stream, trailers, self._plan(stream.route).response_trailers)

    @staticmethod
    def _edit_trailers(stream: Any, trailers: list[tuple[bytes, bytes]], levels: tuple[HeaderMutations, ...]) -> None:
        if not levels:
            return
        edited = HeaderList(list(trailers))
        lookup = request_lookup(stream.headers, _pseudo(stream)) if any(l.reads_request for l in levels) else None
        for level in levels:
            level.apply(edited, stream.conn.peer, lookup)
        trailers[:] = edited.items


class UpstreamHeaderMutation:
    """The filter as an upstream HTTP filter (the router's `upstream_http_filters` or a cluster's `http_filters`):
    its edits, and the route's per-route levels for its name (as Envoy 1.40 applies them there too, observed), on
    each attempt's request as the router made it (its headers, then its query, level by level) and on the
    upstream's response before the router reads it."""

    def __init__(self, name: str, config: HeaderMutationConfig, scope: str, stats: Any) -> None:
        self.levels = HeaderMutationFilter(name, config, "", None, None)

    def upstream_request(self, stream: Any, head: UpstreamHead) -> None:
        levels = [level for level in self.levels._levels(stream.route) if not level.request.empty or level.query]
        if levels:
            headers = head.headers
            pseudo = {**_pseudo(stream), b":path": head.path, b":authority": head.authority}
            lookup = (lambda name: request_lookup(headers.items, pseudo)(name)) \
                if any(level.request.reads_request or (level.query and level.query.reads_request)
                       for level in levels) else None
            for level in levels:
                level.request.apply(headers, stream.conn.peer, lookup)
                if level.query is not None:
                    head.path = level.query.apply(head.path, stream.conn.peer, lookup)

    def upstream_response(self, stream: Any, status: int, headers: HeaderList) -> None:
        self.levels.encode_headers(stream, status, headers)


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, HeaderMutationConfig)
registry.register_typed(registry.HTTP_FILTER_PER_ROUTE, PER_ROUTE_TYPE_URL, HeaderMutationPerRoute)
register_filter(HeaderMutationConfig, HeaderMutationFilter)
registry.register_typed(registry.UPSTREAM_HTTP_FILTER, TYPE_URL, HeaderMutationConfig)
register_upstream_filter(HeaderMutationConfig, UpstreamHeaderMutation)
