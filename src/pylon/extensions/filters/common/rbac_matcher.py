"""The RBAC filters' `matcher` (xds.type.matcher.v3.Matcher with `envoy.config.rbac.v3.Action`s), sans-IO.

The unified matcher API instead of `rules`: a tree (config/matcher.py, run by
the shared engine, proxy/matching/) whose leaves are RBAC actions.
`MatcherEngine(config).evaluate(facts)` answers the same `Decision` as the
policy engine (`rbac.py`), so the filter counts and denies alike. As Envoy
1.40 decides (the behaviour tests run both):

- the tree's action decides (ALLOW and LOG allow, DENY denies) and its `name`
  is the matched policy (403 details, per-rule stats). No action at all
  denies, with no policy (`[none]`), as Envoy's RBAC defaults to DENY.
- Inputs (config/matcher.py `RBAC_INPUTS`): `HttpRequestHeaderMatchInput` (every value of the
  header joined with ",", Envoy's getAllOfHeaderAsString; absent when the
  header is), and the connection's `DestinationIPInput`,
  `DestinationPortInput`, `SourceIPInput` (the client the connection manager
  trusts, as `remote_ip`), `DirectSourceIPInput` (the peer) and
  `ServerNameInput` (the SNI; absent when there is none). Addresses as text
  without brackets, ports in decimal. Any other input is refused at its path.
- With `rules` too, the matcher decides and the rules are ignored (Envoy warns
  the same).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pylon.config import matcher as xds
from pylon.config import registry
from pylon.config.envoy import EnvoyStruct
from pylon.config.errors import join_path
from pylon.extensions.filters.common.rbac import Decision, Facts
from pylon.proxy.matching.engine import INSUFFICIENT, NO_MATCH, Vocabulary, compile_matcher
from pylon.proxy.matching.input_matchers import INPUT_MATCHERS
from pylon.regex import RegexEngine

ACTION_TYPE = "type.googleapis.com/envoy.config.rbac.v3.Action"


class Action(EnvoyStruct, kw_only=True):
    """config.rbac.v3.Action: what a matched leaf does, and the name a decision reports."""

    name: str = ""
    action: Literal["ALLOW", "DENY", "LOG"] = "ALLOW"


def decode(raw: Any) -> xds.Matcher:
    """An RBAC matcher tree (FieldError below it, e.g. at an input RBAC does not take)."""
    return xds.decode(raw, inputs=registry.RBAC_MATCH_INPUT, actions=registry.RBAC_MATCH_ACTION)


def decode_field(owner: Any, field: str) -> None:
    """The RBAC filter's `matcher` or `shadow_matcher` decoded in place (FieldError through the field)."""
    xds.decode_field(owner, field, inputs=registry.RBAC_MATCH_INPUT, actions=registry.RBAC_MATCH_ACTION)


def header_inputs(matcher: xds.Matcher) -> list[tuple[str, str]]:
    """(field path below `matcher`, lower-case header name) of every header input, for the filter's checks."""
    return [(join_path(path, "typed_config.header_name"), extension.typed_config.header_name.lower())
            for path, kind, extension in xds.extensions(matcher)
            if kind == "input" and isinstance(extension.typed_config, xds.HttpRequestHeaderMatchInput)]


class MatcherEngine:
    """A compiled RBAC `matcher`, deciding as the policy engine (`rbac.Engine`) does."""

    __slots__ = ("_match",)

    def __init__(self, config: xds.Matcher, regex_engine: RegexEngine | None = None) -> None:
        self._match = compile_matcher(config, Vocabulary(inputs=_READERS, action=lambda action: action,
                                                         input_matchers=INPUT_MATCHERS), regex_engine)

    def evaluate(self, facts: Facts) -> Decision:
        action = self._match(facts)
        if action is NO_MATCH or action is INSUFFICIENT:
            return Decision(False, None)  # Envoy's RBAC: no action is a DENY
        return Decision(action.action != "DENY", action.name)


def _header(decoded: xds.HttpRequestHeaderMatchInput) -> Callable[[Facts], str | None]:
    name = decoded.header_name.lower().encode()

    def read(facts: Facts) -> str | None:
        request = facts.request
        values = request.values(name) if request is not None else []
        return b",".join(values).decode("latin-1") if values else None

    return read


def _fact(read: Callable[[Facts], Any]) -> Callable[[Any], Callable[[Facts], str | None]]:
    def factory(_: Any) -> Callable[[Facts], str | None]:
        def text(facts: Facts) -> str | None:
            value = read(facts)
            return None if value is None or value == "" else str(value)

        return text

    return factory


_READERS: dict[type, Callable[[Any], Callable[[Facts], str | None]]] = {
    xds.HttpRequestHeaderMatchInput: _header,
    xds.DestinationIPInput: _fact(lambda facts: facts.local_ip),
    xds.DestinationPortInput: _fact(lambda facts: facts.local_port),
    xds.SourceIPInput: _fact(lambda facts: facts.remote_ip),
    xds.DirectSourceIPInput: _fact(lambda facts: facts.direct_remote_ip),
    xds.ServerNameInput: _fact(lambda facts: facts.server_name),
}

registry.register_typed(registry.RBAC_MATCH_ACTION, ACTION_TYPE, Action)
