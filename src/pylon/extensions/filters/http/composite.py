"""envoy.filters.http.composite: the filter a stream's matcher picks (ExecuteFilterAction), run as if configured.

On its own the composite filter does nothing. Wrapped in an ExtensionWithMatcher (match_delegate.py), each
`ExecuteFilterAction` of the tree names a filter (`typed_config`, any HTTP filter pylon has): it is built once at
load (`prepare_action`, under the action's filter name, which its per-route configs are found by), and a stream
whose tree decides for it runs it in the composite's place from then on (`on_match`; a decision at the request
headers runs it on the whole stream, one at the response headers only on the encode side), as Envoy 1.40's
composite filter; each delegation counts `http.<stat_prefix>.composite.filter_delegation_success`.

Refused by name: the composite's own `matcher` and `named_filter_chains`, and an action's `dynamic_config`
(ECDS), `filter_chain`, `filter_chain_name` and `sample_percent`.
"""

from __future__ import annotations

import functools
from typing import Any

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, HttpFilter, NotSupportedYet, _exactly_one
from pylon.proxy.filters.http import build_filter, register_filter

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.composite.v3.Composite"
ACTION_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.composite.v3.ExecuteFilterAction"


class Composite(EnvoyStruct, kw_only=True):
    """extensions.filters.http.composite.v3.Composite."""

    named_filter_chains: NotSupportedYet | None = None
    matcher: NotSupportedYet | None = None


class ExecuteFilterAction(EnvoyStruct, kw_only=True):
    """extensions.filters.http.composite.v3.ExecuteFilterAction: the filter to run."""

    typed_config: HttpFilter | None = None
    dynamic_config: NotSupportedYet | None = None
    filter_chain: NotSupportedYet | None = None
    filter_chain_name: NotSupportedYet | None = None
    sample_percent: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "typed_config")


#: the hooks a delegated filter may have besides decode_headers (the connection manager finds filters by them)
_HOOKS = ("encode_headers", "decode_body", "wants_request_body", "decode_data", "wants_request_data",
          "encode_body", "wants_response_body", "encode_data", "wants_response_data", "decode_trailers",
          "encode_trailers")
_WANTS = {"wants_request_body", "wants_request_data", "wants_response_body", "wants_response_data"}


class CompositeFilter:
    """Runs, per stream, the filter its matcher chose (none: the stream passes through)."""

    def __init__(self, name: str, config: Composite, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        self._build = functools.partial(_build_action, stat_prefix=stat_prefix, stats=stats, loop=loop)
        self.delegated: dict[Any, Any] = {}
        self.success = stats.counter(f"http.{stat_prefix}.composite.filter_delegation_success")
        # Every hook: which ones a stream needs is known only once its tree decides (the wrapper keeps only
        # those this filter has, so all are offered).
        for hook in _HOOKS:
            setattr(self, hook, functools.partial(_delegate, self, hook))

    def prepare_action(self, action: Any) -> Any:
        """An ExecuteFilterAction's filter, built at load; another action type is not the composite's."""
        return self._build(action) if isinstance(action, ExecuteFilterAction) else None

    def on_match(self, stream: Any, delegated: Any) -> None:
        if stream not in self.delegated:
            stream.on_finish(functools.partial(self.delegated.pop, stream, None))
        self.delegated[stream] = delegated
        self.success.inc()

    def decode_headers(self, stream: Any) -> bool:
        delegated = self.delegated.get(stream)
        return True if delegated is None else delegated.decode_headers(stream)


def _build_action(action: ExecuteFilterAction, stat_prefix: str, stats: Any, loop: Any) -> Any:
    extension = action.typed_config
    assert extension is not None
    return build_filter(extension.name, extension.typed_config, stat_prefix, stats, loop)


def _delegate(composite: CompositeFilter, hook: str, stream: Any, *args: Any) -> Any:
    """`hook` of the stream's delegated filter; without one (or without that hook), what passing through is."""
    method = getattr(composite.delegated.get(stream), hook, None)
    if method is not None:
        return method(stream, *args)
    if hook in _WANTS:
        return False
    if hook in ("decode_data", "encode_data"):
        return args[0]
    return None


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, Composite)
registry.register_typed(registry.HTTP_FILTER_MATCH_ACTION, ACTION_TYPE_URL, ExecuteFilterAction)
register_filter(Composite, CompositeFilter)
