"""envoy.filters.http.header_to_metadata: request and response header (or cookie) values into dynamic metadata.

Why: a header a client or service sends then steers what reads the stream's metadata - `envoy.lb` values pick
the cluster's subset, the access log prints them - without a script. As Envoy 1.40's filter, per rule in order:
the header's values joined with "," (or the cookie's value, quotes dropped; an empty cookie counts as missing)
are taken by `on_header_present` - its own `value` instead when set, else the header's value through
`regex_value_rewrite` (every match replaced) - or, when absent, `on_header_missing`'s `value`; an empty result
adds nothing. The value is base64-decoded first with `encode: BASE64` (a failed or empty decoding adds nothing,
`base64_decode_failed`), then typed: STRING, NUMBER (a double; text that is none adds nothing) or
PROTOBUF_VALUE (a serialized google.protobuf.Value). Values of 8 KiB or more add nothing
(`header_value_too_long`). `remove` drops the header once read (present or not, as Envoy does). The rules' keys
are gathered per namespace (default `envoy.filters.http.header_to_metadata`) and set at the end, each key
replacing the namespace's old one (setDynamicMetadata). Request rules run when the request decodes, response
rules on the response head (local replies included). A route's `typed_per_filter_config` replaces the filter's
config whole (the most specific level); one there needs rules. With `stat_prefix` the filter counts Envoy's
`http_filter_name.<stat_prefix>.*`; without it, nothing.

Refused with Envoy's reasons: both or neither of header and cookie, no on_header_* at all, `value` with
`regex_value_rewrite`, `remove` for a cookie, on_header_missing without a value. Departure: `remove` of a
pseudo-header or `host` is refused (Envoy would take the request's :path or :authority away).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Literal

import msgspec

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, RegexRewrite
from pylon.extensions.filters.common.per_route import MostSpecific
from pylon.proxy.filters.http import register_filter
from pylon.proxy.headers import cookie_value
from pylon.regex import get_engine

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config"
DEFAULT_NAMESPACE = "envoy.filters.http.header_to_metadata"
#: Envoy's MAX_HEADER_VALUE_LEN: a value this long or longer is not added.
MAX_VALUE_LENGTH = 8 * 1024
_COUNTERS = ("request_rules_processed", "response_rules_processed", "request_metadata_added",
             "response_metadata_added", "request_header_not_found", "response_header_not_found",
             "base64_decode_failed", "header_value_too_long", "regex_substitution_failed")
_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf(inity)?|nan)\s*", re.IGNORECASE)


class KeyValuePair(EnvoyStruct, kw_only=True):
    """extensions.filters.http.header_to_metadata.v3.Config.KeyValuePair."""

    metadata_namespace: str = ""
    key: str
    value: str = ""
    regex_value_rewrite: RegexRewrite | None = None
    type: Literal["STRING", "NUMBER", "PROTOBUF_VALUE"] = "STRING"
    encode: Literal["NONE", "BASE64"] = "NONE"

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("key: must not be empty")


class Rule(EnvoyStruct, kw_only=True):
    """extensions.filters.http.header_to_metadata.v3.Config.Rule."""

    header: str = ""
    cookie: str = ""
    on_header_present: KeyValuePair | None = None
    on_header_missing: KeyValuePair | None = None
    remove: bool = False

    def __post_init__(self) -> None:
        for field in ("header", "cookie"):
            if re.search(r"[\x00\r\n]", getattr(self, field)):
                raise ValueError(f"{field}: not a header name")
        if self.header and self.cookie:
            raise ValueError("Cannot specify both header and cookie in the same rule")
        if not self.header and not self.cookie:
            raise ValueError("One of Cookie or Header option needs to be specified")
        if self.on_header_present is None and self.on_header_missing is None:
            raise ValueError(f"rule for {self.header or self.cookie} has neither `on_header_present` nor "
                             "`on_header_missing` set")
        present = self.on_header_present
        if present is not None and present.value and present.regex_value_rewrite is not None:
            raise ValueError("Cannot specify both value and regex_value_rewrite")
        if self.cookie and self.remove:
            raise ValueError("Cannot specify remove for cookie")
        if self.on_header_missing is not None and not self.on_header_missing.value:
            raise ValueError("Cannot specify on_header_missing rule with an empty value")
        name = self.header.lower()
        if self.remove and (name.startswith(":") or name == "host"):
            raise ValueError(f"remove: pylon does not remove {self.header!r} from a message (a pseudo-header or "
                             "host)")


class HeaderToMetadataConfig(EnvoyStruct, kw_only=True, weakref=True):
    """extensions.filters.http.header_to_metadata.v3.Config (the filter's and, per route, its replacement)."""

    request_rules: list[Rule] = msgspec.field(default_factory=list)
    response_rules: list[Rule] = msgspec.field(default_factory=list)
    stat_prefix: str = ""

    def __post_init__(self) -> None:
        for rules in ("request_rules", "response_rules"):
            for i, rule in enumerate(getattr(self, rules)):
                present = rule.on_header_present
                if present is not None and present.regex_value_rewrite is not None:
                    try:  # RE2 and its rewrite string, checked at load as Envoy's RegexReplace::create does
                        get_engine().compile(present.regex_value_rewrite.pattern.regex).sub(
                            present.regex_value_rewrite.substitution, "")
                    except ValueError as exc:
                        raise ValueError(f"{rules}[{i}].on_header_present.regex_value_rewrite: {exc}") from None


class PerRouteConfig(HeaderToMetadataConfig, kw_only=True, weakref=True):
    """The same message as a route's `typed_per_filter_config`, where Envoy requires some rules."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.request_rules and not self.response_rules:
            raise ValueError("header_to_metadata_filter: Per filter configs must at least specify either request "
                             "or response rules")


class _Pair:
    """A KeyValuePair compiled: where the value goes and how it is made."""

    __slots__ = ("namespace", "key", "value", "rewrite", "substitution", "type", "base64")

    def __init__(self, pair: KeyValuePair) -> None:
        self.namespace = pair.metadata_namespace or DEFAULT_NAMESPACE
        self.key = pair.key
        self.value = pair.value
        rewrite = pair.regex_value_rewrite
        self.rewrite = get_engine().compile(rewrite.pattern.regex) if rewrite is not None else None
        self.substitution = rewrite.substitution if rewrite is not None else ""
        self.type = pair.type
        self.base64 = pair.encode == "BASE64"


class _Rule:
    __slots__ = ("header", "cookie", "present", "missing", "remove")

    def __init__(self, rule: Rule) -> None:
        self.header = rule.header.lower().encode("latin-1")
        self.cookie = rule.cookie.encode("latin-1")
        self.present = _Pair(rule.on_header_present) if rule.on_header_present is not None else None
        self.missing = _Pair(rule.on_header_missing) if rule.on_header_missing is not None else None
        self.remove = rule.remove


class _Counters:
    """`http_filter_name.<stat_prefix>.*`, made only for a config with a stat_prefix."""

    def __init__(self, stats: Any, prefix: str) -> None:
        for name in _COUNTERS:
            setattr(self, name, stats.counter(f"http_filter_name.{prefix}.{name}"))

    def inc(self, name: str) -> None:
        getattr(self, name).inc()


class _Compiled:
    __slots__ = ("request", "response", "counters")

    def __init__(self, config: HeaderToMetadataConfig, stats: Any) -> None:
        self.request = [_Rule(rule) for rule in config.request_rules]
        self.response = [_Rule(rule) for rule in config.response_rules]
        self.counters = _Counters(stats, config.stat_prefix) if config.stat_prefix else None

    def count(self, name: str) -> None:
        if self.counters is not None:
            self.counters.inc(name)


def typed_value(raw: str, pair: _Pair, count: Any) -> Any:
    """The metadata value `raw` makes under `pair` (its encoding and type), or None when it makes none."""
    if len(raw) >= MAX_VALUE_LENGTH:
        count("header_value_too_long")
        return None
    data = raw.encode("latin-1")
    if pair.base64:
        data = _base64(data)
        if not data:
            count("base64_decode_failed")
            return None
    if pair.type == "STRING":
        return data.decode("utf-8", "surrogateescape")
    if pair.type == "NUMBER":
        text = data.decode("latin-1")
        return float(text) if _NUMBER.fullmatch(text) else None
    return _protobuf_value(data)


def _base64(data: bytes) -> bytes:
    """Envoy's Base64::decodeWithoutPadding: padding optional (at most two `=`), anything else invalid: b""."""
    bare = data.rstrip(b"=")
    if len(data) - len(bare) > 2:
        return b""
    try:
        return base64.b64decode(bare + b"=" * (-len(bare) % 4), validate=True)
    except (binascii.Error, ValueError):
        return b""


def _protobuf_value(data: bytes) -> Any:
    """A serialized google.protobuf.Value as its JSON-like value; None when the bytes are none."""
    from google.protobuf import json_format, struct_pb2
    from google.protobuf.message import DecodeError

    value = struct_pb2.Value()
    try:
        value.ParseFromString(data)
    except DecodeError:
        return None
    return json_format.MessageToDict(value) if value.WhichOneof("kind") is not None else None


class HeaderToMetadataFilter:
    """One HCM's header_to_metadata filter in one worker; per-route configs compiled once each."""

    def __init__(self, name: str, config: HeaderToMetadataConfig, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        self.configs = MostSpecific(name, config, lambda config: _Compiled(config, stats))

    def decode_headers(self, stream: Any) -> bool:
        compiled = self.configs.of(stream)
        if compiled.request:
            pseudo = {b":path": stream.path, b":method": stream.method, b":authority": stream.authority,
                      b"host": stream.authority, b":scheme": stream.conn.scheme}

            def read(rule: _Rule) -> bytes | None:
                if rule.cookie:
                    return cookie_value(stream.headers, rule.cookie) or None
                found = pseudo.get(rule.header)
                if found is None:
                    found = _joined(stream.headers, rule.header)  # the live list: an earlier rule may have removed
                    if found is not None and rule.remove:
                        stream.edit_request_header("remove", rule.header)
                return found

            self._apply(stream, compiled, compiled.request, read, "request")
        return True

    def encode_headers(self, stream: Any, status: int, headers: Any) -> None:
        compiled = self.configs.of(stream)
        if compiled.response:
            def read(rule: _Rule) -> bytes | None:
                if rule.cookie:
                    return cookie_value(headers.items, rule.cookie) or None
                if rule.header == b":status":
                    return str(status).encode()
                found = _joined(headers.items, rule.header)
                if found is not None and rule.remove:
                    headers.remove(rule.header)
                return found

            self._apply(stream, compiled, compiled.response, read, "response")

    @staticmethod
    def _apply(stream: Any, compiled: _Compiled, rules: list[_Rule], read: Any, direction: str) -> None:
        by_namespace: dict[str, dict[str, Any]] = {}
        count = compiled.count
        for rule in rules:
            found = read(rule)
            count(f"{direction}_rules_processed")
            if found is not None and rule.present is not None:
                pair = rule.present
                value = pair.value
                if not value:
                    value = found.decode("latin-1")
                    if pair.rewrite is not None:
                        rewritten = pair.rewrite.sub(pair.substitution, value)
                        if value and not rewritten:
                            count("regex_substitution_failed")
                        value = rewritten
            elif found is None and rule.missing is not None:
                count(f"{direction}_header_not_found")
                pair, value = rule.missing, rule.missing.value
            else:
                continue
            if value:
                made = typed_value(value, pair, count)
                if made is not None:
                    by_namespace.setdefault(pair.namespace, {})[pair.key] = made
                    count(f"{direction}_metadata_added")
        for namespace, values in by_namespace.items():
            stream.set_dynamic_metadata(namespace, values)


def _joined(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """Every value of `name` joined with "," (Envoy's getAllOfHeaderAsString), None when there is none."""
    values = [value for header, value in headers if header == name]
    if not values:
        return None
    return values[0] if len(values) == 1 else b",".join(values)


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, HeaderToMetadataConfig)
registry.register_typed(registry.HTTP_FILTER_PER_ROUTE, TYPE_URL, PerRouteConfig)
register_filter(HeaderToMetadataConfig, HeaderToMetadataFilter)
