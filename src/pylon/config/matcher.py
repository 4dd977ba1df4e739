"""xds.type.matcher.v3.Matcher, Envoy's unified matcher API, as config (the engine is proxy/matching/).

A matcher is a tree: a `matcher_list` (field matchers in order, each a
predicate over data inputs) or a `matcher_tree` (one input's value looked up in
an exact or prefix map), each leaf an `on_match` (an action, or a nested
matcher), with `on_no_match` at every level. What the inputs read and what the
actions are depends on where the matcher sits: a virtual host's leaves are
Routes over request headers, an HTTP filter's are SkipFilter or a composite
filter's ExecuteFilterAction, a listener's are filter chain names. So the tree
is decoded here without its typed extensions, and its owner resolves them with
`resolve(matcher, inputs=..., actions=...)`: each input and action is decoded
through the registry category the owner names (extensions by name, as every
other typed_config), and one outside it is a ConfigError at its path.

Not taken (refused at their path): `keep_matching` (Envoy refuses it too), a
custom tree other than the IPMatcher (`registry.CUSTOM_MATCHER`), an input
matcher other than the Hyperscan one (`registry.INPUT_MATCHER`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import msgspec
import re2
from msgspec.structs import force_setattr

from pylon.config import registry
from pylon.config.envoy import (
    CidrRange, EnvoyStruct, GoogleRe2, NonEmptyStr, RegexMatcher, RegexPattern, StringMatcher, convert, decode_typed,
)
from pylon.config.envoy import _exactly_one as exactly_one
from pylon.config.errors import FieldError, join_path, split_validation_error


class TypedExtension(EnvoyStruct, kw_only=True):
    """core.v3.TypedExtensionConfig: `typed_config` stays raw until the owner resolves it (`resolve`)."""

    name: str = ""
    typed_config: Any


class XdsRegexMatcher(RegexMatcher, kw_only=True):
    """xds.type.matcher.v3.RegexMatcher: unlike Envoy's own it requires its engine (as Envoy 1.40 checks)."""

    google_re2: GoogleRe2


class XdsStringMatcher(StringMatcher, kw_only=True):
    """xds.type.matcher.v3.StringMatcher: Envoy's, with the xds RegexMatcher."""

    safe_regex: XdsRegexMatcher | None = None


class SinglePredicate(EnvoyStruct, kw_only=True):
    input: TypedExtension
    value_match: XdsStringMatcher | None = None
    custom_match: TypedExtension | None = None

    def __post_init__(self) -> None:
        exactly_one(self, "value_match", "custom_match")


class PredicateList(EnvoyStruct, kw_only=True):
    predicate: Annotated[list["Predicate"], msgspec.Meta(min_length=2)]


class Predicate(EnvoyStruct, kw_only=True):
    single_predicate: SinglePredicate | None = None
    or_matcher: PredicateList | None = None
    and_matcher: PredicateList | None = None
    not_matcher: Predicate | None = None

    def __post_init__(self) -> None:
        exactly_one(self, "single_predicate", "or_matcher", "and_matcher", "not_matcher")


class OnMatch(EnvoyStruct, kw_only=True):
    """What a match leads to: an action or a nested matcher. `keep_matching` is refused as Envoy 1.40 refuses it
    wherever pylon takes matchers (only its rate_limit_quota filter takes it)."""

    matcher: Matcher | None = None
    action: TypedExtension | None = None
    keep_matching: bool = False

    def __post_init__(self) -> None:
        exactly_one(self, "matcher", "action")
        if self.keep_matching:
            raise FieldError("keep_matching", "keep_matching is not supported in this context")


class FieldMatcher(EnvoyStruct, kw_only=True):
    predicate: Predicate
    on_match: OnMatch


class MatcherList(EnvoyStruct, kw_only=True):
    matchers: Annotated[list[FieldMatcher], msgspec.Meta(min_length=1)]


class MatchMap(EnvoyStruct, kw_only=True):
    map: Annotated[dict[str, OnMatch], msgspec.Meta(min_length=1)]


class MatcherTree(EnvoyStruct, kw_only=True):
    input: TypedExtension
    exact_match_map: MatchMap | None = None
    prefix_match_map: MatchMap | None = None
    #: a custom tree (registry.CUSTOM_MATCHER: xds.type.matcher.v3.IPMatcher)
    custom_match: TypedExtension | None = None

    def __post_init__(self) -> None:
        exactly_one(self, "exact_match_map", "prefix_match_map", "custom_match")


class IPRangeMatcher(EnvoyStruct, kw_only=True):
    ranges: Annotated[list[CidrRange], msgspec.Meta(min_length=1)]
    on_match: OnMatch
    exclusive: bool = False


class IPMatcher(EnvoyStruct, kw_only=True):
    """xds.type.matcher.v3.IPMatcher: a tree over an address input by CIDR ranges. As Envoy 1.40's ip range
    matcher: the ranges holding the address, longest prefix first (then in order), each tried until one comes
    to a match; after the first, `exclusive` ones are passed over; then `on_no_match`. A value that is no
    address is `on_no_match` at once."""

    range_matchers: list[IPRangeMatcher] = []


class Matcher(EnvoyStruct, kw_only=True):
    """xds.type.matcher.v3.Matcher."""

    matcher_list: MatcherList | None = None
    matcher_tree: MatcherTree | None = None
    on_no_match: OnMatch | None = None

    def __post_init__(self) -> None:
        if self.matcher_list is not None and self.matcher_tree is not None:
            raise FieldError("", "at most one of matcher_list, matcher_tree may be set")


def decode(raw: Any, *, inputs: str, actions: str) -> Matcher:
    """`raw` (parsed YAML/JSON, or a Matcher built in code) as a Matcher with every typed extension resolved.

    FieldError below the matcher on a bad tree, or an input or action outside the categories named.
    """
    if isinstance(raw, Matcher):
        matcher = raw
    else:
        try:
            matcher = convert(raw, Matcher)
        except msgspec.ValidationError as exc:
            path, message = split_validation_error(exc)
            raise FieldError(path, message) from None
    resolve(matcher, inputs=inputs, actions=actions)
    return matcher


#: what each kind of typed extension of a tree is resolved through, besides the owner's inputs and actions
_FIXED_CATEGORIES = {"input_matcher": registry.INPUT_MATCHER, "custom_match": registry.CUSTOM_MATCHER}


def decode_field(owner: msgspec.Struct, field: str, *, inputs: str, actions: str) -> None:
    """Replace the raw tree in `owner.field` by its decoded Matcher (FieldError located through the field)."""
    try:
        decoded = decode(getattr(owner, field), inputs=inputs, actions=actions)
    except FieldError as exc:
        raise FieldError(join_path(field, exc.rel_path), exc.message) from None
    force_setattr(owner, field, decoded)


def resolve(matcher: Matcher, *, inputs: str, actions: str) -> None:
    """Decode every input, input matcher, custom tree and action of `matcher` in place through the registry
    categories (the owner's for inputs and actions)."""
    categories = {**_FIXED_CATEGORIES, "input": inputs, "action": actions}
    found = []
    for path, kind, extension in extensions(matcher):  # lazily: a custom tree's branches come once it is decoded
        _resolve_typed(extension, categories[kind], path)
        found.append((path, kind, extension))
    _check_metadata_pairs(found)


def _check_metadata_pairs(found: list[tuple[str, str, TypedExtension]]) -> None:
    """A DynamicMetadataInput's value is no text: only the Metadata input matcher takes it, and that matcher takes
    nothing else (Envoy refuses either mismatch)."""
    matchers = {path.removesuffix(".custom_match"): ext.typed_config for path, kind, ext in found
                if kind == "input_matcher"}
    for path, kind, extension in found:
        if kind != "input":
            continue
        predicate = path.removesuffix(".input")
        is_metadata = isinstance(extension.typed_config, DynamicMetadataInput)
        if is_metadata != isinstance(matchers.get(predicate), MetadataInputMatcher):
            where = path if is_metadata else join_path(predicate, "custom_match")
            raise FieldError(where, "a DynamicMetadataInput goes with the Metadata input matcher "
                                    "(envoy.extensions.matching.input_matchers.metadata.v3.Metadata), and only it")


def extensions(matcher: Matcher, path: str = "") -> Iterator[tuple[str, str, TypedExtension]]:
    """(field path, kind, extension) of every typed extension of the tree, in order; kind is `input`,
    `input_matcher`, `custom_match` or `action`. A generator: a custom tree's own branches are read after the
    consumer took (and resolved) the tree's extension."""
    if matcher.matcher_list is not None:
        for i, field in enumerate(matcher.matcher_list.matchers):
            where = join_path(path, f"matcher_list.matchers[{i}]")
            yield from _predicate_extensions(field.predicate, join_path(where, "predicate"))
            yield from _on_match_extensions(field.on_match, join_path(where, "on_match"))
    if matcher.matcher_tree is not None:
        tree = matcher.matcher_tree
        where = join_path(path, "matcher_tree")
        yield join_path(where, "input"), "input", tree.input
        if tree.custom_match is not None:
            yield join_path(where, "custom_match"), "custom_match", tree.custom_match
            custom = join_path(where, "custom_match.typed_config")
            for i, ranges in enumerate(tree.custom_match.typed_config.range_matchers):
                yield from _on_match_extensions(ranges.on_match, join_path(custom, f"range_matchers[{i}].on_match"))
        else:
            kind = "exact_match_map" if tree.exact_match_map is not None else "prefix_match_map"
            for key, on_match in getattr(tree, kind).map.items():
                yield from _on_match_extensions(on_match, join_path(where, f"{kind}.map[{key}]"))
    if matcher.on_no_match is not None:
        yield from _on_match_extensions(matcher.on_no_match, join_path(path, "on_no_match"))


def _on_match_extensions(on_match: OnMatch, path: str) -> Iterator[tuple[str, str, TypedExtension]]:
    if on_match.action is not None:
        yield join_path(path, "action"), "action", on_match.action
    else:
        yield from extensions(on_match.matcher, join_path(path, "matcher"))  # type: ignore[arg-type]


def _predicate_extensions(predicate: Predicate, path: str) -> Iterator[tuple[str, str, TypedExtension]]:
    single = predicate.single_predicate
    if single is not None:
        yield join_path(path, "single_predicate.input"), "input", single.input
        if single.custom_match is not None:
            yield join_path(path, "single_predicate.custom_match"), "input_matcher", single.custom_match
    elif predicate.not_matcher is not None:
        yield from _predicate_extensions(predicate.not_matcher, join_path(path, "not_matcher"))
    else:
        kind = "or_matcher" if predicate.or_matcher is not None else "and_matcher"
        for i, inner in enumerate(getattr(predicate, kind).predicate):
            yield from _predicate_extensions(inner, join_path(path, f"{kind}.predicate[{i}]"))


def _resolve_typed(extension: TypedExtension, category: str, path: str) -> None:
    try:
        decoded = decode_typed(category, extension.typed_config)
    except FieldError as exc:
        raise FieldError(join_path(join_path(path, "typed_config"), exc.rel_path), exc.message) from None
    force_setattr(extension, "typed_config", decoded)


# --------------------------------------------------------------------------- data inputs


class _HeaderInput(EnvoyStruct, kw_only=True):
    """An HTTP header input: every value of the header joined with "," (absent: none)."""

    header_name: NonEmptyStr


class HttpRequestHeaderMatchInput(_HeaderInput, kw_only=True):
    """type.matcher.v3.HttpRequestHeaderMatchInput."""


class HttpResponseHeaderMatchInput(_HeaderInput, kw_only=True):
    """type.matcher.v3.HttpResponseHeaderMatchInput."""


class HttpRequestTrailerMatchInput(_HeaderInput, kw_only=True):
    """type.matcher.v3.HttpRequestTrailerMatchInput."""


class HttpResponseTrailerMatchInput(_HeaderInput, kw_only=True):
    """type.matcher.v3.HttpResponseTrailerMatchInput."""


class HttpRequestQueryParamMatchInput(EnvoyStruct, kw_only=True):
    """type.matcher.v3.HttpRequestQueryParamMatchInput: the first value of the parameter, percent-decoded."""

    query_param: NonEmptyStr


class DestinationIPInput(EnvoyStruct, kw_only=True):
    """The connection's local address (text, no brackets)."""


class DestinationPortInput(EnvoyStruct, kw_only=True):
    """The connection's local port (decimal)."""


class SourceIPInput(EnvoyStruct, kw_only=True):
    """The client's address (for HTTP: the one the connection manager trusts)."""


class SourcePortInput(EnvoyStruct, kw_only=True):
    """The client's port (decimal)."""


class DirectSourceIPInput(EnvoyStruct, kw_only=True):
    """The peer's address."""


class ServerNameInput(EnvoyStruct, kw_only=True):
    """The TLS SNI (absent without one)."""


class TransportProtocolInput(EnvoyStruct, kw_only=True):
    """`tls` or `raw_buffer`, as the listener filters found."""


class ApplicationProtocolInput(EnvoyStruct, kw_only=True):
    """The ALPN protocols offered, each quoted, joined with "," (absent: none)."""


class NetworkNamespaceInput(EnvoyStruct, kw_only=True):
    """The network namespace file of the listener address that accepted the connection (absent: the default
    namespace). Network matchers only (a UDP proxy's route matcher reads nothing, as Envoy 1.40's: a datagram's
    local address carries no namespace); pylon's HTTP matchers do not take it yet."""


class DoubleRange(EnvoyStruct, kw_only=True):
    """type.v3.DoubleRange."""

    start: float = 0.0
    end: float = 0.0


class DoubleMatcher(EnvoyStruct, kw_only=True):
    """type.matcher.v3.DoubleMatcher."""

    range: DoubleRange | None = None
    exact: float | None = None

    def __post_init__(self) -> None:
        exactly_one(self, "range", "exact")


class NullMatch(EnvoyStruct, kw_only=True):
    """type.matcher.v3.ValueMatcher.NullMatch (no fields)."""


class ValueMatcher(EnvoyStruct, kw_only=True):
    """type.matcher.v3.ValueMatcher (`_value_matcher`). Against an absent value none of its kinds matches."""

    null_match: NullMatch | None = None
    double_match: DoubleMatcher | None = None
    string_match: StringMatcher | None = None
    bool_match: bool | None = None
    present_match: bool | None = None
    list_match: ListMatcher | None = None
    or_match: OrMatcher | None = None

    def __post_init__(self) -> None:
        exactly_one(self, "null_match", "double_match", "string_match", "bool_match", "present_match",
                     "list_match", "or_match")  # fmt: skip


class ListMatcher(EnvoyStruct, kw_only=True):
    """type.matcher.v3.ListMatcher."""

    one_of: ValueMatcher


class OrMatcher(EnvoyStruct, kw_only=True):
    """type.matcher.v3.OrMatcher."""

    value_matchers: Annotated[list[ValueMatcher], msgspec.Meta(min_length=2)]


class PathSegment(EnvoyStruct, kw_only=True):
    """type.matcher.v3.MetadataMatcher.PathSegment."""

    key: NonEmptyStr


class DynamicMetadataInput(EnvoyStruct, kw_only=True):
    """matching.common_inputs.network.v3.DynamicMetadataInput: a value of the stream's dynamic metadata, for the
    Metadata input matcher only (it is no text)."""

    filter: NonEmptyStr
    path: Annotated[list[PathSegment], msgspec.Meta(min_length=1)]


# --------------------------------------------------------------------------- input matchers


class HyperscanRegex(EnvoyStruct, kw_only=True):
    """One pattern of the Hyperscan input matcher, in RE2 syntax (pylon's regex engines take RE2's): a value
    matches when the pattern is found anywhere in it, as Hyperscan scans."""

    regex: RegexPattern
    id: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)] = 0
    caseless: bool = False
    dot_all: bool = False
    multiline: bool = False
    allow_empty: bool = False
    utf8: bool = False  # values are text already
    ucp: bool = False
    combination: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.combination:
            raise FieldError("combination", "logical combinations of patterns are not supported")
        if self.ucp:
            raise FieldError("ucp", "Unicode properties for \\w, \\d, \\s are not supported (RE2's are ASCII)")
        if not self.allow_empty and re2.search(self.regex, "") is not None:
            # Hyperscan refuses such a pattern unless told (HS_FLAG_ALLOWEMPTY)
            raise FieldError("regex", f"pattern {self.regex!r} matches the empty string; set allow_empty")

    @property
    def searched(self) -> str:
        """The pattern with its flags, as a whole-value match that finds it anywhere."""
        flags = "i" * self.caseless + "s" * self.dot_all + "m" * self.multiline
        inner = f"(?{flags}:{self.regex})" if flags else f"(?:{self.regex})"
        return f"(?s:.*){inner}(?s:.*)"


class Hyperscan(EnvoyStruct, kw_only=True):
    """extensions.matching.input_matchers.hyperscan.v3alpha.Hyperscan (Envoy contrib): any of the patterns found
    in the value (a `quiet` one never reports a match), run on pylon's regex engine (Hyperscan, if configured,
    scans them all at once)."""

    regexes: Annotated[list[HyperscanRegex], msgspec.Meta(min_length=1)]


class MetadataInputMatcher(EnvoyStruct, kw_only=True):
    """matching.input_matchers.metadata.v3.Metadata: a ValueMatcher over a DynamicMetadataInput's value."""

    value: ValueMatcher
    invert: bool = False


registry.register_typed(registry.INPUT_MATCHER,
                        "type.googleapis.com/envoy.extensions.matching.input_matchers.hyperscan.v3alpha.Hyperscan",
                        Hyperscan)
registry.register_typed(registry.INPUT_MATCHER,
                        "type.googleapis.com/envoy.extensions.matching.input_matchers.metadata.v3.Metadata",
                        MetadataInputMatcher)
registry.register_typed(registry.CUSTOM_MATCHER, "type.googleapis.com/xds.type.matcher.v3.IPMatcher", IPMatcher)


_HTTP = "type.googleapis.com/envoy.type.matcher.v3."
_NETWORK = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3."
HTTP_INPUTS: tuple[tuple[str, type], ...] = tuple(
    (_HTTP + cls.__name__, cls) for cls in (
        HttpRequestHeaderMatchInput, HttpResponseHeaderMatchInput, HttpRequestTrailerMatchInput,
        HttpResponseTrailerMatchInput, HttpRequestQueryParamMatchInput))
NETWORK_INPUTS: tuple[tuple[str, type], ...] = tuple(
    (_NETWORK + cls.__name__, cls) for cls in (
        DestinationIPInput, DestinationPortInput, SourceIPInput, SourcePortInput, DirectSourceIPInput,
        ServerNameInput, TransportProtocolInput, ApplicationProtocolInput))

for _url, _struct in HTTP_INPUTS + NETWORK_INPUTS:
    registry.register_typed(registry.HTTP_MATCH_INPUT, _url, _struct)
#: the stream's dynamic metadata: an HTTP filter's matcher reads it (no connection-level metadata in pylon)
registry.register_typed(registry.HTTP_MATCH_INPUT, _NETWORK + "DynamicMetadataInput", DynamicMetadataInput)
for _url, _struct in NETWORK_INPUTS:
    registry.register_typed(registry.NETWORK_MATCH_INPUT, _url, _struct)
registry.register_typed(registry.NETWORK_MATCH_INPUT, _NETWORK + "NetworkNamespaceInput", NetworkNamespaceInput)
registry.register_typed(registry.ROUTE_MATCH_INPUT, _HTTP + "HttpRequestHeaderMatchInput", HttpRequestHeaderMatchInput)
#: the RBAC filters' (extensions/filters/common/rbac_matcher.py): request headers and the connection's
RBAC_INPUTS = (HttpRequestHeaderMatchInput, DestinationIPInput, DestinationPortInput, SourceIPInput,
               DirectSourceIPInput, ServerNameInput)
for _url, _struct in HTTP_INPUTS + NETWORK_INPUTS:
    if _struct in RBAC_INPUTS:
        registry.register_typed(registry.RBAC_MATCH_INPUT, _url, _struct)

