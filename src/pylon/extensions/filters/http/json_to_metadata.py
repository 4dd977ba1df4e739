"""envoy.filters.http.json_to_metadata: values of a JSON request (or response) body into dynamic metadata.

Why: a field of the body (an API version, a tenant) can then steer what reads the stream's metadata - the
subset load balancer's `envoy.lb`, the access log - as a header would through header_to_metadata. As Envoy
1.40's filter does: a message whose content-type is not allowed (`allow_content_types`, exactly as the header
says, default `application/json`, or `allow_content_types_regex`; an absent one only with
`allow_empty_content_type`) gets every rule's `on_error` (`mismatched_content_type`); one without a body every
rule's `on_missing` (`no_body`); a body that is not JSON every `on_error` (`invalid_json_body`); a JSON value that
is not an object every `on_missing` (`success`). Otherwise each rule walks its selectors' keys through objects:
a missing key (or one that is not an object on the way, or not a scalar at the end) takes `on_missing`; a found
value takes `on_present` - its own `value` when set, else the value converted by `type` (PROTOBUF_VALUE as it
is, NUMBER as a double - a string through its text -, STRING as C++'s std::to_string prints it: `1`/`0` for
booleans, six decimals for doubles; an empty string adds nothing); one that cannot be converted, or a string over
8 KiB, takes `on_missing`. As in Envoy, an `on_present` with its own `value` applies whether the last key is
there or not, and a rule without `on_present` applies nothing once the keys before the last were found. A pair with `preserve_existing_metadata_value` leaves a key the stream's metadata
already has. The keys gathered are set per namespace (default `envoy.filters.http.json_to_metadata`) at the end,
each replacing the namespace's old one. The request body is held whole before routing (the connection's buffer
limit, 413 beyond), so `envoy.lb` values reach the subset load balancer; a response's is held before it is sent.
Counters `json_to_metadata.rq.*` and `json_to_metadata.resp.*`. A route's typed_per_filter_config replaces the
filter's config (one there needs rules).

Departures: the proxy's own replies are taken as `text/plain` (the content-type they are sent with, unless
local_reply_config changes it); Envoy's route cache clearing after request metadata changes nothing in pylon,
whose routes do not match on metadata.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

import msgspec

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, RegexMatcher
from pylon.extensions.filters.common.per_route import MostSpecific
from pylon.proxy.filters.http import register_filter
from pylon.regex import get_engine

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata"
DEFAULT_NAMESPACE = "envoy.filters.http.json_to_metadata"
#: Envoy's MAX_PAYLOAD_VALUE_LEN: a string value longer than this is taken as missing.
MAX_VALUE_LENGTH = 8 * 1024
_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf(inity)?|nan)\s*", re.IGNORECASE)
_UNSET: Any = msgspec.UNSET


class KeyValuePair(EnvoyStruct, kw_only=True):
    """JsonToMetadata.KeyValuePair; `value` is a google.protobuf.Value (any JSON value)."""

    metadata_namespace: str = ""
    key: str
    value: Any = _UNSET
    type: Literal["PROTOBUF_VALUE", "STRING", "NUMBER"] = "PROTOBUF_VALUE"
    preserve_existing_metadata_value: bool = False

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("key: must not be empty")


class Selector(EnvoyStruct, kw_only=True):
    """JsonToMetadata.Selector: oneof selector {key}."""

    key: str

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("key: must not be empty")


class RuleFields(EnvoyStruct, kw_only=True):
    """JsonToMetadata.Rule as the proto has it (the JSON content parser takes it so; the filter checks more)."""

    selectors: Annotated[list[Selector], msgspec.Meta(min_length=1)]
    on_present: KeyValuePair | None = None
    on_missing: KeyValuePair | None = None
    on_error: KeyValuePair | None = None


class Rule(RuleFields, kw_only=True):
    """JsonToMetadata.Rule in this filter, with its checks."""

    def __post_init__(self) -> None:
        if self.on_present is None and self.on_missing is None:
            raise ValueError("json to metadata filter: neither `on_present` nor `on_missing` set")
        if self.on_missing is not None and self.on_missing.value is _UNSET:
            raise ValueError("json to metadata filter: cannot specify on_missing rule with empty value")
        if self.on_error is not None and self.on_error.value is _UNSET:
            raise ValueError("json to metadata filter: cannot specify on_error rule with empty value")


class MatchRules(EnvoyStruct, kw_only=True):
    """JsonToMetadata.MatchRules."""

    rules: Annotated[list[Rule], msgspec.Meta(min_length=1)]
    allow_content_types: list[str] = msgspec.field(default_factory=list)
    allow_empty_content_type: bool = False
    allow_content_types_regex: RegexMatcher | None = None

    def __post_init__(self) -> None:
        if not all(self.allow_content_types):
            raise ValueError("allow_content_types: an entry is empty")


class JsonToMetadataConfig(EnvoyStruct, kw_only=True, weakref=True):
    """extensions.filters.http.json_to_metadata.v3.JsonToMetadata."""

    request_rules: MatchRules | None = None
    response_rules: MatchRules | None = None


class PerRouteConfig(JsonToMetadataConfig, kw_only=True, weakref=True):
    """The same message as a route's typed_per_filter_config, where Envoy requires some rules."""

    def __post_init__(self) -> None:
        if self.request_rules is None and self.response_rules is None:
            raise ValueError("json_to_metadata_filter: Per route configs must at least specify one of "
                             "request_rules or response_rules.")


class _Side:
    """One direction's rules, compiled: the content types it reads, its counters."""

    __slots__ = ("rules", "types", "empty_type", "types_regex", "success", "mismatched", "no_body", "invalid")

    def __init__(self, rules: MatchRules, stats: Any, prefix: str) -> None:
        self.rules = rules.rules
        self.types = frozenset(t.encode("latin-1") for t in rules.allow_content_types) or {b"application/json"}
        self.empty_type = rules.allow_empty_content_type
        regex = rules.allow_content_types_regex
        self.types_regex = get_engine().compile(regex.regex) if regex is not None else None
        self.success = stats.counter(f"json_to_metadata.{prefix}.success")
        self.mismatched = stats.counter(f"json_to_metadata.{prefix}.mismatched_content_type")
        self.no_body = stats.counter(f"json_to_metadata.{prefix}.no_body")
        self.invalid = stats.counter(f"json_to_metadata.{prefix}.invalid_json_body")

    def allows(self, content_type: bytes | None) -> bool:
        if not content_type:
            return self.empty_type
        return content_type in self.types or (
            self.types_regex is not None and self.types_regex.fullmatch(content_type.decode("latin-1")))


class _Compiled:
    __slots__ = ("request", "response")

    def __init__(self, config: JsonToMetadataConfig, stats: Any) -> None:
        self.request = _Side(config.request_rules, stats, "rq") if config.request_rules is not None else None
        self.response = _Side(config.response_rules, stats, "resp") if config.response_rules is not None else None


def number_from_text(text: str) -> float | None:
    """A string as absl::SimpleAtod reads a number (spaces around, a sign, inf/nan), None when it is not one."""
    return float(text) if _NUMBER.fullmatch(text) else None


def extracted(found: Any, pair: KeyValuePair) -> Any:
    """`found` (a JSON scalar) as `pair.type` makes it; None when it makes nothing, `_UNSET` when it cannot be
    converted (the rule then takes on_missing)."""
    if pair.type == "PROTOBUF_VALUE":
        if isinstance(found, str) and len(found) > MAX_VALUE_LENGTH:
            return _UNSET
        return found
    if pair.type == "NUMBER":
        if isinstance(found, str):
            number = number_from_text(found)
            return _UNSET if number is None else number
        return float(found)
    if isinstance(found, bool):
        text = "1" if found else "0"
    elif isinstance(found, float):
        text = f"{found:f}"
    else:
        text = str(found)
    if len(text) > MAX_VALUE_LENGTH:
        return _UNSET
    return text or None


def rule_values(document: Any, rules: list[Rule]) -> list[tuple[KeyValuePair, Any]]:
    """What each rule sets for a parsed JSON body: (pair, value) in rule order (sans-IO)."""
    if not isinstance(document, dict):
        return [(rule.on_missing, rule.on_missing.value) for rule in rules if rule.on_missing is not None]
    out: list[tuple[KeyValuePair, Any]] = []
    for rule in rules:
        node: Any = document
        keys = [selector.key for selector in rule.selectors]
        for key in keys[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                break
        else:
            present = rule.on_present
            if present is None:
                continue  # as Envoy: the last key is not even looked at, so on_missing never applies here
            if present.value is not _UNSET:
                out.append((present, present.value))  # a fixed value, whether the last key is there or not
                continue
            found = node.get(keys[-1])
            made = extracted(found, present) if found is not None and not isinstance(found, (dict, list)) else _UNSET
            if made is None:
                continue
            if made is not _UNSET:
                out.append((present, made))
                continue
        if rule.on_missing is not None:
            out.append((rule.on_missing, rule.on_missing.value))
    return out


def _all(rules: list[Rule], which: str) -> list[tuple[KeyValuePair, Any]]:
    return [(pair, pair.value) for rule in rules if (pair := getattr(rule, which)) is not None]


class JsonToMetadataFilter:
    """One HCM's json_to_metadata filter in one worker; per-route configs compiled once each."""

    def __init__(self, name: str, config: JsonToMetadataConfig, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        self.configs = MostSpecific(name, config, lambda config: _Compiled(config, stats))

    # ------------------------------------------------------------------ request
    def decode_headers(self, stream: Any) -> bool:
        side = self.configs.of(stream).request
        if side is None:
            return True
        if not side.allows(_content_type(stream.headers)):
            side.mismatched.inc()
            _set(stream, _all(side.rules, "on_error"))
        elif not (stream.req_length or stream.req_chunked):
            side.no_body.inc()
            _set(stream, _all(side.rules, "on_missing"))
        return True

    def wants_request_body(self, stream: Any) -> bool:
        side = self.configs.of(stream).request
        return side is not None and side.allows(_content_type(stream.headers))

    def decode_body(self, stream: Any, body: bytes) -> None:
        side = self.configs.of(stream).request
        assert side is not None
        _process(stream, side, body)
        return None

    # ------------------------------------------------------------------ response
    def encode_headers(self, stream: Any, status: int, headers: Any) -> None:
        side = self.configs.of(stream).response
        if side is None:
            return
        if not side.allows(_response_type(stream, headers.items)):
            side.mismatched.inc()
            _set(stream, _all(side.rules, "on_error"))
        elif stream.is_head or status in (204, 304) or headers.get(b"content-length") == b"0":
            side.no_body.inc()
            _set(stream, _all(side.rules, "on_missing"))

    def wants_response_body(self, stream: Any) -> bool:
        side = self.configs.of(stream).response
        return side is not None and side.allows(_response_type(stream, stream.resp_headers))

    def encode_body(self, stream: Any, status: int, headers: Any, body: bytes) -> None:
        side = self.configs.of(stream).response
        assert side is not None
        if side.allows(_response_type(stream, headers.items)):
            _process(stream, side, body)
        return None


def _content_type(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"content-type":
            return value
    return None


def _response_type(stream: Any, headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The response's content-type; the proxy's own replies are sent as text/plain unless a header says."""
    found = _content_type(headers)
    return found if found is not None or not stream.local_reply else b"text/plain"


def _process(stream: Any, side: _Side, body: bytes) -> None:
    if not body:
        side.no_body.inc()
        _set(stream, _all(side.rules, "on_missing"))
        return
    try:
        document = json.loads(body)
    except ValueError:
        side.invalid.inc()
        _set(stream, _all(side.rules, "on_error"))
        return
    side.success.inc()
    _set(stream, rule_values(document, side.rules))


def _set(stream: Any, values: list[tuple[KeyValuePair, Any]]) -> None:
    """The values gathered, per namespace, into the stream's metadata (preserved keys left alone)."""
    by_namespace: dict[str, dict[str, Any]] = {}
    current = stream.dynamic_metadata or {}
    for pair, value in values:
        namespace = pair.metadata_namespace or DEFAULT_NAMESPACE
        if pair.preserve_existing_metadata_value and pair.key in current.get(namespace, ()):
            continue
        by_namespace.setdefault(namespace, {})[pair.key] = value
    for namespace, fields in by_namespace.items():
        stream.set_dynamic_metadata(namespace, fields)


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, JsonToMetadataConfig)
registry.register_typed(registry.HTTP_FILTER_PER_ROUTE, TYPE_URL, PerRouteConfig)
register_filter(JsonToMetadataConfig, JsonToMetadataFilter)
