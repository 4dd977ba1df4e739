"""envoy.extensions.common.matching.v3.ExtensionWithMatcher: an HTTP filter run or skipped per stream by a matcher.

The wrapped filter (`extension_config`) is built as if it stood alone, under the outer entry's name (its
per-route configs are found by that name). As Envoy 1.40's match delegate
(source/extensions/filters/http/match_delegate): each stream evaluates the tree (`xds_matcher`, or the
deprecated `matcher`) over what it has seen, first at its request headers, again at its request trailers,
response headers and response trailers until the tree decides (an input not available yet - a response header
while the request is decoded - leaves it undecided, and the filter runs meanwhile). A decision for
`SkipFilter` skips the filter from then on (a match on a response header skips only its encode side, since the
decode side already ran); another action is handed to the filter (`prepare_action` at load, `on_match` per
stream: the composite filter's ExecuteFilterAction); no match runs it. No matcher at all skips it always.

The wrapper has the hooks its filter has (the connection manager finds filters by their hooks), plus
`encode_headers` when the filter encodes at all, so a response input is evaluated before the encode side runs.
"""

from __future__ import annotations

import functools
from typing import Any

from pylon.config import matcher as xds
from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, HttpFilter
from pylon.config.errors import FieldError
from pylon.proxy.filters.http import build_filter, register_filter
from pylon.proxy.headers import HeaderList
from pylon.proxy.matching.engine import INSUFFICIENT, NO_MATCH, Vocabulary, compile_matcher
from pylon.proxy.matching.http_inputs import HTTP_READERS, HttpMatchingData
from pylon.proxy.matching.input_matchers import INPUT_MATCHERS
from pylon.proxy.matching.network_inputs import NetworkMatchingData

TYPE_URL = "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher"
SKIP_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter"


class SkipFilter(EnvoyStruct, kw_only=True):
    """extensions.filters.common.matcher.action.v3.SkipFilter: the action that skips the wrapped filter."""


class ExtensionWithMatcher(EnvoyStruct, kw_only=True):
    """extensions.common.matching.v3.ExtensionWithMatcher (as an HTTP filter)."""

    #: the deprecated config.common.matcher.v3.Matcher: read as the xds one (the same shape)
    matcher: Any = None
    xds_matcher: Any = None
    extension_config: HttpFilter

    def __post_init__(self) -> None:
        if self.matcher is not None and self.xds_matcher is not None:
            raise FieldError("xds_matcher", "at most one of matcher, xds_matcher may be set")
        for field in ("matcher", "xds_matcher"):
            if getattr(self, field) is not None:
                xds.decode_field(self, field, inputs=registry.HTTP_MATCH_INPUT, actions=registry.HTTP_FILTER_MATCH_ACTION)

    @property
    def tree(self) -> xds.Matcher | None:
        return self.xds_matcher if self.xds_matcher is not None else self.matcher


#: what the compiled tree answers for a SkipFilter, and for an action the wrapped filter does not take
_SKIP = object()
_IGNORED = object()


class _State:
    """One stream's view: what its matcher has seen, whether it decided, whether the filter is skipped."""

    __slots__ = ("data", "decided", "skip")

    def __init__(self, data: HttpMatchingData) -> None:
        self.data = data
        self.decided = False
        self.skip = False


#: hooks the wrapper hands straight to the filter: the stream asks them only of a filter that wants the body
_PASSED = ("decode_body", "decode_data", "encode_body", "encode_data")
#: whether the filter wants a body: never while skipped
_WANTS = ("wants_request_body", "wants_request_data", "wants_response_body", "wants_response_data")
#: the trailer hooks, and where the matching data keeps the trailers they see
_TRAILERS = {"decode_trailers": "request_trailers", "encode_trailers": "response_trailers"}
_ENCODE_SIDE = ("encode_headers", "encode_body", "wants_response_body", "encode_data", "wants_response_data",
                "encode_trailers")


class MatchDelegateFilter:
    """The wrapped filter, run or skipped per stream by its matcher."""

    def __init__(self, name: str, config: ExtensionWithMatcher, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        inner = self.inner = build_filter(name, config.extension_config.typed_config, stat_prefix, stats, loop)
        prepare = getattr(inner, "prepare_action", None)

        def action(decoded: Any) -> Any:
            if isinstance(decoded, SkipFilter):
                return _SKIP
            prepared = prepare(decoded) if prepare is not None else None
            return _IGNORED if prepared is None else prepared

        tree = config.tree
        self.match = None if tree is None else compile_matcher(
            tree, Vocabulary(inputs=HTTP_READERS, action=action, input_matchers=INPUT_MATCHERS))
        self.streams: dict[Any, _State] = {}
        self.keeps_length = getattr(inner, "keeps_length", False)
        for hook in _PASSED:
            if hasattr(inner, hook):
                setattr(self, hook, getattr(inner, hook))
        for hook in _WANTS:
            if hasattr(inner, hook):
                setattr(self, hook, functools.partial(self._wants, getattr(inner, hook)))
        for hook, side in _TRAILERS.items():
            if hasattr(inner, hook):
                setattr(self, hook, functools.partial(self._trailers, hook, side))
        if any(hasattr(inner, hook) for hook in _ENCODE_SIDE):
            self.encode_headers = self._encode_headers

    # -- the matcher

    def _state(self, stream: Any, request_seen: bool) -> _State:
        state = self.streams.get(stream)
        if state is None:
            state = self.streams[stream] = _State(_matching_data(stream, request_seen))
            stream.on_finish(functools.partial(self.streams.pop, stream, None))
        return state

    def _evaluate(self, stream: Any, state: _State) -> None:
        if state.decided:
            return
        if self.match is None:
            state.decided = state.skip = True  # Envoy: no match tree is a skip
            return
        result = self.match(state.data)
        if result is INSUFFICIENT:
            return
        state.decided = True
        if result is _SKIP:
            state.skip = True
        elif result is not NO_MATCH and result is not _IGNORED:
            self.inner.on_match(stream, result)

    # -- hooks

    def decode_headers(self, stream: Any) -> bool:
        state = self._state(stream, True)
        self._evaluate(stream, state)
        return True if state.skip else self.inner.decode_headers(stream)

    def _trailers(self, hook: str, side: str, stream: Any, trailers: list[tuple[bytes, bytes]]) -> None:
        state = self._state(stream, side == "request_trailers")
        setattr(state.data, side, HeaderList(trailers))
        self._evaluate(stream, state)
        if not state.skip:
            getattr(self.inner, hook)(stream, trailers)

    def _encode_headers(self, stream: Any, status: int, headers: HeaderList) -> None:
        state = self._state(stream, False)
        state.data.status, state.data.response_headers = status, headers
        self._evaluate(stream, state)
        if not state.skip and hasattr(self.inner, "encode_headers"):
            self.inner.encode_headers(stream, status, headers)

    def _wants(self, inner_wants: Any, stream: Any) -> bool:
        state = self.streams.get(stream)
        return (state is None or not state.skip) and inner_wants(stream)


def _matching_data(stream: Any, request_seen: bool) -> HttpMatchingData:
    """The stream's matching data; without its request headers when the filter never decoded them (an earlier
    filter answered: Envoy's match data then has no request headers either)."""
    conn = stream.conn
    info = conn.connection_info()
    client = stream.hcm.trusted_client(stream)
    source = (client, 0) if isinstance(client, str) else info.remote_address
    network = NetworkMatchingData(info.local_address, source, info.remote_address, info.requested_server_name)
    if not request_seen:
        data = HttpMatchingData(None, network=network)
    else:
        data = HttpMatchingData(HeaderList(stream.headers), stream.authority.decode("latin-1"),
                                stream.path.decode("latin-1"), stream.method.decode("latin-1"),
                                conn.scheme.decode("latin-1"), network)
    data.metadata = lambda: stream.dynamic_metadata  # read when matched: earlier filters may set it meanwhile
    return data


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, ExtensionWithMatcher)
registry.register_typed(registry.HTTP_FILTER_MATCH_ACTION, SKIP_TYPE_URL, SkipFilter)
register_filter(ExtensionWithMatcher, MatchDelegateFilter)
