"""The RBAC filters' `matcher` (xds.type.matcher.v3.Matcher with `envoy.config.rbac.v3.Action`s), sans-IO.

The unified matcher API instead of `rules`: a tree whose leaves are RBAC
actions. `MatcherEngine(config).evaluate(facts)` answers the same `Decision` as
the policy engine (`rbac.py`), so the filter counts and denies alike. As Envoy
1.40 evaluates it (the behaviour tests run both):

- `matcher_list`: its field matchers in order; the first whose predicate holds
  gives its `on_match` (an action, or a nested matcher whose own no-match moves
  on to the next field matcher); none: `on_no_match`. The action's `action`
  decides (ALLOW and LOG allow, DENY denies) and its `name` is the matched
  policy (403 details, per-rule stats). No action at all denies, with no policy
  (`[none]`), as Envoy's RBAC defaults to DENY.
- Predicates: `single_predicate` (an input's value against a `value_match`
  StringMatcher; an absent value matches nothing), `and_matcher`, `or_matcher`,
  `not_matcher`.
- Inputs: `HttpRequestHeaderMatchInput` (every value of the header joined with
  ",", Envoy's getAllOfHeaderAsString; absent when the header is), and the
  connection's `DestinationIPInput`, `DestinationPortInput`, `SourceIPInput`
  (the client the connection manager trusts, as `remote_ip`),
  `DirectSourceIPInput` (the peer) and `ServerNameInput` (the SNI; absent when
  there is none). Addresses as text without brackets, ports in decimal.
- With `rules` too, the matcher decides and the rules are ignored (Envoy warns
  the same).

Refused by name: `matcher_tree`, `keep_matching`, `custom_match` and any other
input type.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from pylon.config.envoy import EnvoyStruct, NonEmptyStr, NotSupportedYet, StringMatcher, _exactly_one, convert
from pylon.config.errors import FieldError
from pylon.extensions.filters.common.rbac import Decision, Facts
from pylon.proxy.router import _compile_string_matcher
from pylon.regex import RegexEngine, get_engine

log = logging.getLogger("pylon.rbac")

ACTION_TYPE = "type.googleapis.com/envoy.config.rbac.v3.Action"
HEADER_INPUT = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
_NETWORK = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3."
#: the connection inputs pylon reads, by type URL -> the fact each reads (see `_connection_input`)
CONNECTION_INPUTS = {
    _NETWORK + "DestinationIPInput": "destination_ip",
    _NETWORK + "DestinationPortInput": "destination_port",
    _NETWORK + "SourceIPInput": "source_ip",
    _NETWORK + "DirectSourceIPInput": "direct_source_ip",
    _NETWORK + "ServerNameInput": "server_name",
}


# --------------------------------------------------------------------------- config


class HeaderInput(EnvoyStruct, kw_only=True):
    """type.matcher.v3.HttpRequestHeaderMatchInput."""

    header_name: NonEmptyStr


class EmptyInput(EnvoyStruct, kw_only=True):
    """The connection inputs: no fields."""


class Action(EnvoyStruct, kw_only=True):
    """config.rbac.v3.Action: what a matched leaf does, and the name a decision reports."""

    name: str = ""
    action: Literal["ALLOW", "DENY", "LOG"] = "ALLOW"


def _typed(raw: dict[str, Any], allowed: dict[str, type[msgspec.Struct]], what: str) -> msgspec.Struct:
    """`raw` (a typed_config with its @type) decoded as the type its @type names, or FieldError at `typed_config`."""
    body = dict(raw)
    type_url = body.pop("@type", None)
    struct = allowed.get(type_url) if isinstance(type_url, str) else None
    if struct is None:
        known = ", ".join(sorted(allowed))
        raise FieldError("typed_config.@type", f"{what} {type_url!r} is not supported (supported: {known})")
    try:
        return convert(body, struct)
    except msgspec.ValidationError as exc:
        raise FieldError("typed_config", str(exc)) from exc


_INPUT_TYPES: dict[str, type[msgspec.Struct]] = {HEADER_INPUT: HeaderInput,
                                                **{url: EmptyInput for url in CONNECTION_INPUTS}}


class TypedInput(EnvoyStruct, kw_only=True):
    """SinglePredicate.input: a TypedExtensionConfig naming a data input."""

    name: str = ""
    typed_config: dict[str, Any]

    def __post_init__(self) -> None:
        _typed(self.typed_config, _INPUT_TYPES, "input")

    @property
    def type_url(self) -> str:
        return self.typed_config["@type"]

    @property
    def decoded(self) -> Any:
        return _typed(self.typed_config, _INPUT_TYPES, "input")


class TypedAction(EnvoyStruct, kw_only=True):
    """OnMatch.action: an envoy.config.rbac.v3.Action."""

    name: str = ""
    typed_config: dict[str, Any]

    def __post_init__(self) -> None:
        _typed(self.typed_config, {ACTION_TYPE: Action}, "action")

    @property
    def decoded(self) -> Action:
        return _typed(self.typed_config, {ACTION_TYPE: Action}, "action")  # type: ignore[return-value]


class SinglePredicate(EnvoyStruct, kw_only=True):
    input: TypedInput
    value_match: StringMatcher | None = None
    custom_match: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "value_match", "custom_match")
        regex = self.value_match.safe_regex if self.value_match is not None else None
        if regex is not None and regex.google_re2 is None:
            # xds.type.matcher.v3.RegexMatcher, unlike Envoy's own, requires its engine (as Envoy 1.40 checks)
            raise FieldError("value_match.safe_regex.google_re2", "missing required field (the xds RegexMatcher "
                                                                  "names its engine: google_re2: {})")


class PredicateList(EnvoyStruct, kw_only=True):
    predicate: list[Predicate]

    def __post_init__(self) -> None:
        if len(self.predicate) < 2:
            raise FieldError("predicate", "at least 2 predicates are required")


class Predicate(EnvoyStruct, kw_only=True):
    single_predicate: SinglePredicate | None = None
    or_matcher: PredicateList | None = None
    and_matcher: PredicateList | None = None
    not_matcher: Predicate | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "single_predicate", "or_matcher", "and_matcher", "not_matcher")


class OnMatch(EnvoyStruct, kw_only=True):
    matcher: Matcher | None = None
    action: TypedAction | None = None
    keep_matching: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "matcher", "action")


class FieldMatcher(EnvoyStruct, kw_only=True):
    predicate: Predicate
    on_match: OnMatch


class MatcherList(EnvoyStruct, kw_only=True):
    matchers: list[FieldMatcher]

    def __post_init__(self) -> None:
        if not self.matchers:
            raise FieldError("matchers", "at least one matcher is required")


class Matcher(EnvoyStruct, kw_only=True):
    """xds.type.matcher.v3.Matcher."""

    matcher_list: MatcherList | None = None
    matcher_tree: NotSupportedYet | None = None
    on_no_match: OnMatch | None = None


def header_inputs(matcher: Matcher) -> list[tuple[str, str]]:
    """(field path below `matcher`, lower-case header name) of every header input, for the filter's checks."""
    out: list[tuple[str, str]] = []

    def predicate(p: Predicate, path: str) -> None:
        if p.single_predicate is not None:
            decoded = p.single_predicate.input.decoded
            if isinstance(decoded, HeaderInput):
                out.append((f"{path}.single_predicate.input.typed_config.header_name", decoded.header_name.lower()))
        elif p.not_matcher is not None:
            predicate(p.not_matcher, f"{path}.not_matcher")
        else:
            kind = "or_matcher" if p.or_matcher is not None else "and_matcher"
            for i, inner in enumerate((p.or_matcher or p.and_matcher).predicate):  # type: ignore[union-attr]
                predicate(inner, f"{path}.{kind}.predicate[{i}]")

    def on_match(o: OnMatch | None, path: str) -> None:
        if o is not None and o.matcher is not None:
            tree(o.matcher, f"{path}.matcher")

    def tree(m: Matcher, path: str) -> None:
        if m.matcher_list is not None:
            for i, field in enumerate(m.matcher_list.matchers):
                where = f"{path}.matcher_list.matchers[{i}]" if path else f"matcher_list.matchers[{i}]"
                predicate(field.predicate, f"{where}.predicate")
                on_match(field.on_match, f"{where}.on_match")
        on_match(m.on_no_match, f"{path}.on_no_match" if path else "on_no_match")

    tree(matcher, "")
    return out


# --------------------------------------------------------------------------- the engine

_Test = Callable[[Facts], bool]
_Leaf = Callable[[Facts], "Action | None"]


class MatcherEngine:
    """A compiled `Matcher`, deciding as the policy engine (`rbac.Engine`) does."""

    __slots__ = ("_tree",)

    def __init__(self, config: Matcher, regex_engine: RegexEngine | None = None) -> None:
        self._tree = _tree(config, regex_engine if regex_engine is not None else get_engine())

    def evaluate(self, facts: Facts) -> Decision:
        action = self._tree(facts)
        if action is None:
            return Decision(False, None)  # Envoy's RBAC: no action is a DENY
        return Decision(action.action != "DENY", action.name)


def _tree(config: Matcher, engine: RegexEngine) -> _Leaf:
    fields = [(_predicate(f.predicate, engine), _on_match(f.on_match, engine))
              for f in (config.matcher_list.matchers if config.matcher_list is not None else [])]
    otherwise = _on_match(config.on_no_match, engine) if config.on_no_match is not None else None

    def match(facts: Facts) -> Action | None:
        for test, then in fields:
            if test(facts):
                action = then(facts)
                if action is not None:
                    return action
        return otherwise(facts) if otherwise is not None else None

    return match


def _on_match(config: OnMatch, engine: RegexEngine) -> _Leaf:
    if config.action is not None:
        action = config.action.decoded
        return lambda facts: action
    return _tree(config.matcher, engine)  # type: ignore[arg-type]


def _predicate(config: Predicate, engine: RegexEngine) -> _Test:
    if config.single_predicate is not None:
        single = config.single_predicate
        read = _input(single.input)
        test = _compile_string_matcher(single.value_match, engine, as_bytes=False)  # type: ignore[arg-type]

        def matches(facts: Facts) -> bool:
            value = read(facts)
            return value is not None and test(value)

        return matches
    if config.not_matcher is not None:
        inner = _predicate(config.not_matcher, engine)
        return lambda facts: not inner(facts)
    listed = config.or_matcher if config.or_matcher is not None else config.and_matcher
    tests = [_predicate(p, engine) for p in listed.predicate]  # type: ignore[union-attr]
    if config.or_matcher is not None:
        return lambda facts: any(t(facts) for t in tests)
    return lambda facts: all(t(facts) for t in tests)


def _input(config: TypedInput) -> Callable[[Facts], str | None]:
    decoded = config.decoded
    if isinstance(decoded, HeaderInput):
        name = decoded.header_name.lower().encode()

        def header(facts: Facts) -> str | None:
            request = facts.request
            values = request.values(name) if request is not None else []
            return b",".join(values).decode("latin-1") if values else None

        return header
    return _connection_input(CONNECTION_INPUTS[config.type_url])


def _connection_input(kind: str) -> Callable[[Facts], str | None]:
    def read(facts: Facts) -> str | None:
        if kind == "server_name":
            return facts.server_name or None
        if kind == "destination_port":
            port = facts.local_port
            return None if port is None else str(port)
        ip = facts.local_ip if kind == "destination_ip" else (
            facts.remote_ip if kind == "source_ip" else facts.direct_remote_ip)
        return None if ip is None else str(ip)

    return read

