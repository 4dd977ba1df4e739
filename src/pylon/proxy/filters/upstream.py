"""Upstream HTTP filters: Envoy's filter chain between the router and the upstream codec.

The router's `upstream_http_filters`, or a cluster's own `http_filters` (its HttpProtocolOptions; they take
precedence, as in Envoy), end with `envoy.filters.http.upstream_codec` and run on what goes to and comes from
the upstream: after the router has made the request (x-forwarded-*, x-request-id, the route's header rules,
a rewritten Host and path) and before it reads the response (its retry checks included). Like the HTTP filters
ahead of the router (`filters/http.py`), each filter module registers its config Struct in the category
`envoy.filters.http.upstream` and a factory here; the proxy imports no filter.

As in Envoy, every attempt runs the chain again, once its host is chosen, with that attempt's
`x-envoy-attempt-count` (and `x-envoy-expected-rq-timeout-ms`) set by the router. Envoy's filters edit the one
request the router holds, not a copy per attempt, so a retry's chain starts from what the last attempt's left:
a header a filter appends is there twice on the second attempt, and pylon does the same. Observed with Envoy 1.40
(tests/proxy/test_proxy_upstream_filters.py): a filter that answers (RBAC's 403) ends the request with its reply
- the route's retry policy does not retry it, even for a status it lists, the connection manager's
`local_reply_config` maps it, the access log has the filter's details, no flag, and the chosen host - and the
upstream is never asked.

A filter that wants the request body whole before the upstream sees the request (buffer) has
`body_limit(stream) -> int` (0: not for this request): the first attempt waits for the body, 413 beyond the limit.

A filter has `upstream_request(stream, head) -> Answer | None` (the attempt's `UpstreamHead` to edit, in
chain order; an answer - a proxy `LocalReply` or the filter's own `FilterResponse` - ends the chain and the
request) and `upstream_response(stream, status, headers)` (the
upstream's response headers, a HeaderList to edit, last filter first). Its factory gets the stat scope Envoy
gives it: `http.<stat_prefix>.` for the router's chain, `cluster.<name>.` for a cluster's.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Protocol

from pylon.proxy.headers import HeaderList
from pylon.proxy.http.h1_client import Http1RequestEncoder
from pylon.proxy.local_reply import LocalReply


class UpstreamHead:
    """One attempt's request head as the upstream filters see and edit it (Host is `authority`)."""

    __slots__ = ("method", "path", "authority", "headers")

    def __init__(self, method: bytes, path: bytes, authority: bytes, headers: HeaderList) -> None:
        self.method = method
        self.path = path
        self.authority = authority
        self.headers = headers


class FilterResponse(NamedTuple):
    """A filter's own response to the request (Lua's respond()), as `Stream.respond_from_filter` sends it."""

    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]
    details: str
    content_type: bytes


#: how an upstream filter answers instead of letting the attempt go on
Answer = LocalReply | FilterResponse


class UpstreamFilter(Protocol):
    name: str

    def upstream_request(self, stream: Any, head: UpstreamHead) -> Answer | None: ...

    def upstream_response(self, stream: Any, status: int, headers: Any) -> None: ...


#: config Struct type -> factory(name, config, stat scope, stats) building the filter for one chain in one worker
UpstreamFilterFactory = Callable[[str, Any, str, Any], UpstreamFilter]
_FACTORIES: dict[type, UpstreamFilterFactory] = {}


def register_upstream_filter(config_type: type, factory: UpstreamFilterFactory) -> None:
    _FACTORIES[config_type] = factory


def _holds_no_body(stream: Any) -> int:
    """The `body_limit` of a filter that does not hold bodies."""
    return 0


def build_upstream_filters(entries: list[Any], scope: str, stats: Any) -> list[UpstreamFilter] | None:
    """The chain for an `upstream_http_filters` / `http_filters` list (None when it is empty: not configured);
    the upstream codec at its end is the upstream connection itself. `scope` prefixes the filters' stats."""
    if not entries:
        return None
    return [_FACTORIES[type(entry.typed_config)](entry.name, entry.typed_config, scope, stats)
            for entry in entries[:-1]]


class FilteredRequest:
    """The request the router made, which the upstream filters edit for each attempt in turn (each attempt's
    edits stay for the next, as in Envoy); what they leave is that attempt's encoder (`Http1RequestEncoder`'s
    arguments, kept whole)."""

    __slots__ = ("filters", "method", "path", "authority", "headers", "chunked", "length", "attempt_count", "extra",
                 "trailers", "holding")

    def __init__(self, filters: list[UpstreamFilter], method: bytes, path: bytes, authority: bytes,
                 headers: list[tuple[bytes, bytes]], *, chunked: bool, length: int, attempt_count: bool,
                 extra: bytes | None, trailers: bool) -> None:
        self.filters = filters
        self.method = method
        self.path = path
        self.authority = authority
        self.headers = headers
        self.chunked = chunked
        self.length = length
        self.attempt_count = attempt_count
        self.extra = extra
        self.trailers = trailers
        self.holding = False  # the first attempt waits for the whole body (a filter's `body_limit`)

    def hold(self, stream: Any) -> bool:
        """Whether a filter wants the request's body whole before the first attempt (Envoy's upstream buffer
        filter): then the stream keeps what is still to come, up to the smallest such filter's limit (413 beyond:
        `Stream.on_body`), and starts the attempt once it is in."""
        limits = [limit for f in self.filters if (limit := getattr(f, "body_limit", _holds_no_body)(stream))]
        if not limits:
            return False
        stream.set_decoder_buffer_limit(min(limits))
        self.holding = True
        return True

    def _release(self, stream: Any) -> None:
        """The held body is in: it goes with a content-length (unless trailers follow it). One that was in before
        the route was known is never too large here (Envoy's buffer filter passes a body that comes whole)."""
        self.holding = False
        if stream.req_trailers is None:
            self.chunked, self.length = False, stream.body_size

    def attempt(self, stream: Any, attempt: int) -> Http1RequestEncoder | Answer:
        """Run the chain for attempt number `attempt`: its encoder, or the reply a filter answered with."""
        if self.holding:
            self._release(stream)
        headers = HeaderList(list(self.headers))
        if self.attempt_count:  # the router sets it for each attempt (first after Host, where the encoder puts it)
            headers.remove(b"x-envoy-attempt-count")
            headers.items.insert(0, (b"x-envoy-attempt-count", b"%d" % attempt))
        if self.extra is not None:  # one ready header line (the expected timeout), set for each attempt too
            name, _, value = self.extra.rstrip(b"\r\n").partition(b":")
            headers.remove(name)
            headers.items.append((name, value.strip()))
        head = UpstreamHead(self.method, self.path, self.authority, headers)
        for upstream_filter in self.filters:
            reply = upstream_filter.upstream_request(stream, head)
            if reply is not None:
                return reply
        self.method, self.path, self.authority, self.headers = head.method, head.path, head.authority, headers.items
        return Http1RequestEncoder(head.method, head.path, head.authority, head.headers.items, chunked=self.chunked,
                                   length=self.length, attempt_count=False, trailers=self.trailers)
