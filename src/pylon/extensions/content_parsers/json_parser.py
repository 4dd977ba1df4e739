"""envoy.content_parsers.json (JsonContentParser): json_to_metadata's rules over a stream of JSON documents.

Why: sse_to_metadata hands it each event's data; one response has many events, so unlike json_to_metadata
(one body, one pass) a rule here remembers across documents whether it ever matched. As Envoy 1.40's parser:
a document that is not JSON is a parse error (remembered); otherwise each rule walks its selectors (objects
on the way; the last key a string, integer, double, boolean, or an object, which is taken as its compact JSON
text with sorted keys; null, a list or a missing key is "not found"). A found value fires `on_present` at once:
its own `value` when set, else the value converted by `type` (PROTOBUF_VALUE: numbers as doubles; STRING:
integers in decimal, doubles as absl::StrCat prints them (`%g`), booleans `true`/`false`; NUMBER: booleans
1/0, strings through absl::SimpleAtod, no value when they do not convert). A rule with
`stop_processing_after_matches: 1` is skipped once it matched; when every rule has that limit and all
matched, the stream's parsing stops. At the end, each rule that never matched gets `on_error` if any
document failed to parse and it has one, else `on_missing` if its selector was ever not found. The default
namespace is `envoy.content_parsers.json`; Envoy's stats prefix for it is `json.`.

A rule here needs one of on_present, on_missing or on_error (Envoy's check); json_to_metadata's own checks
(on_missing and on_error need a value) do not apply.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, NamedTuple

import msgspec

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct
from pylon.extensions.filters.http.json_to_metadata import KeyValuePair, RuleFields, number_from_text

TYPE_URL = "type.googleapis.com/envoy.extensions.content_parsers.json.v3.JsonContentParser"
DEFAULT_NAMESPACE = "envoy.content_parsers.json"
STATS_PREFIX = "json."
_UNSET: Any = msgspec.UNSET


class RuleConfig(EnvoyStruct, kw_only=True):
    """JsonContentParser.RuleConfig."""

    rule: RuleFields
    stop_processing_after_matches: Annotated[int, msgspec.Meta(ge=0, le=1)] = 0

    def __post_init__(self) -> None:
        rule = self.rule
        if rule.on_present is None and rule.on_missing is None and rule.on_error is None:
            raise ValueError("At least one of on_present, on_missing, or on_error must be specified")


class JsonContentParser(EnvoyStruct, kw_only=True, weakref=True):
    """extensions.content_parsers.json.v3.JsonContentParser."""

    stats_prefix: ClassVar[str] = STATS_PREFIX
    rules: Annotated[list[RuleConfig], msgspec.Meta(min_length=1)]

    def factory(self) -> ParserFactory:
        """The rules compiled once; `.parser()` makes each stream's parser (its rules' match state is the stream's)."""
        return ParserFactory(self)


#: (namespace, key, value, preserve existing): one metadata write, in the order the parser asks for them
Action = tuple[str, str, Any, bool]


def _found(document: Any, keys: list[str]) -> Any:
    """The value at `keys` as Envoy's parser reads it (an object as its JSON text), `_UNSET` when not found."""
    node = document
    for key in keys[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return _UNSET
    if not isinstance(node, dict):
        return _UNSET
    value = node.get(keys[-1])
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return msgspec.json.encode(value, order="sorted").decode()
    return _UNSET


def converted(value: Any, kind: str) -> Any:
    """A found value as `kind` makes it (a protobuf Value's content), `_UNSET` when it makes none."""
    if kind == "STRING":
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            return "%g" % value
        return str(value)
    if kind == "NUMBER":
        if isinstance(value, str):
            number = number_from_text(value)
            return _UNSET if number is None else number
        return float(value)
    return value if isinstance(value, (str, bool)) else float(value)


def _action(pair: KeyValuePair, found: Any) -> Action:
    value = pair.value if pair.value is not _UNSET else _UNSET if found is _UNSET else converted(found, pair.type)
    return (pair.metadata_namespace or DEFAULT_NAMESPACE, pair.key, value, pair.preserve_existing_metadata_value)


class _Rule(NamedTuple):
    """A rule as each stream's parser reads it (made once per config)."""

    rule: RuleFields
    keys: list[str]
    limit: int


class ParserFactory:
    """A config's rules, compiled once (Envoy's parser factory); `parser()` per stream."""

    __slots__ = ("rules", "unlimited")

    def __init__(self, config: JsonContentParser) -> None:
        self.rules = tuple(_Rule(rule.rule, [selector.key for selector in rule.rule.selectors],
                                 rule.stop_processing_after_matches) for rule in config.rules)
        #: a rule without a limit: the stream's parsing never stops early
        self.unlimited = any(not rule.limit for rule in self.rules)

    def parser(self) -> JsonParser:
        return JsonParser(self)


class JsonParser:
    """One stream's parser: `parse` per document, `deferred` once at the end (sans-IO). What a stream keeps per rule:
    how often it matched and whether its selector was ever not found."""

    __slots__ = ("factory", "matches", "not_found", "parse_error")

    def __init__(self, factory: ParserFactory) -> None:
        self.factory = factory
        self.matches = [0] * len(factory.rules)
        self.not_found = [False] * len(factory.rules)
        self.parse_error = False

    def parse(self, data: bytes) -> tuple[list[Action], bool] | None:
        """The writes one document asks for now and whether parsing may stop; None when it is not JSON."""
        try:
            document = msgspec.json.decode(data)
        except msgspec.DecodeError:
            self.parse_error = True
            return None
        actions: list[Action] = []
        matches = self.matches
        satisfied = True
        for i, (rule, keys, limit) in enumerate(self.factory.rules):
            if limit and matches[i] >= limit:
                continue
            found = _found(document, keys)
            if found is _UNSET:
                self.not_found[i] = True
            else:
                if rule.on_present is not None:
                    actions.append(_action(rule.on_present, found))
                matches[i] += 1
            if limit and matches[i] < limit:
                satisfied = False
        return actions, satisfied and not self.factory.unlimited

    def deferred(self) -> list[Action]:
        """The end's writes: on_error or on_missing of the rules that never matched."""
        actions: list[Action] = []
        for (rule, _, _), matched, not_found in zip(self.factory.rules, self.matches, self.not_found):
            if matched:
                continue
            if self.parse_error and rule.on_error is not None:
                actions.append(_action(rule.on_error, _UNSET))
            elif not_found and rule.on_missing is not None:
                actions.append(_action(rule.on_missing, _UNSET))
        return actions


registry.register_typed(registry.CONTENT_PARSER, TYPE_URL, JsonContentParser)
