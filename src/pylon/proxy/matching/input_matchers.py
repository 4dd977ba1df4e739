"""Input matchers (a single predicate's `custom_match`) as predicates over the input's value.

The Hyperscan input matcher (Envoy contrib) on pylon's regex engine: its patterns,
each wrapped to be found anywhere in the value with its flags (config/matcher.py
`HyperscanRegex.searched`), become one `PatternSet` scanned once per value - one
Hyperscan database when the bootstrap's default_regex_engine is Hyperscan, as the
route tables' regex sets (docs/architecture.md "Regex matching").

The Metadata input matcher: a ValueMatcher (`value_matcher`, which RBAC's metadata
matchers use too) over a DynamicMetadataInput's value, then `invert`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pylon.config import matcher as config
from pylon.proxy import dynamic_metadata
from pylon.proxy.router import _compile_string_matcher
from pylon.regex import RegexEngine


def _hyperscan(decoded: config.Hyperscan, engine: RegexEngine) -> Callable[[str], bool]:
    reported = [r for r in decoded.regexes if not r.quiet]
    if not reported:
        return lambda value: False
    patterns = [r.searched for r in reported]
    labels = [f"custom_match regexes (id {r.id}): {r.regex!r}" for r in reported]
    pattern_set = engine.compile_set(patterns, labels, background=True)
    return lambda value: bool(pattern_set.matches(value))


def value_matcher(matcher: config.ValueMatcher, engine: RegexEngine) -> Callable[[Any], bool]:
    """type.matcher.v3.ValueMatcher over a metadata value (`dynamic_metadata.MISSING` when absent), as Envoy's
    matchers: each kind matches only a value of its kind; present_match true matches any value, false none."""
    if matcher.null_match is not None:
        return lambda value: value is None
    if matcher.bool_match is not None:
        wanted = matcher.bool_match
        return lambda value: isinstance(value, bool) and value == wanted
    if matcher.present_match is not None:
        present = matcher.present_match
        return lambda value: present and value is not dynamic_metadata.MISSING
    if matcher.double_match is not None:
        double = matcher.double_match
        if double.exact is not None:
            exact = double.exact
            return lambda value: _number(value) and value == exact
        assert double.range is not None
        start, end = double.range.start, double.range.end
        return lambda value: _number(value) and start <= value < end
    if matcher.string_match is not None:
        text = _compile_string_matcher(matcher.string_match, engine, as_bytes=False)
        return lambda value: isinstance(value, str) and bool(text(value))
    if matcher.list_match is not None:
        element = value_matcher(matcher.list_match.one_of, engine)
        return lambda value: isinstance(value, list) and any(element(item) for item in value)
    assert matcher.or_match is not None
    choices = [value_matcher(choice, engine) for choice in matcher.or_match.value_matchers]
    return lambda value: any(choice(value) for choice in choices)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _metadata(decoded: config.MetadataInputMatcher, engine: RegexEngine) -> Callable[[Any], bool]:
    matches = value_matcher(decoded.value, engine)
    invert = decoded.invert
    return lambda value: matches(value) != invert


#: decoded input matcher Struct type -> predicate factory (a caller's `Vocabulary.input_matchers`)
INPUT_MATCHERS: dict[type, Callable[[Any, RegexEngine], Callable[[Any], bool]]] = {
    config.Hyperscan: _hyperscan,
    config.MetadataInputMatcher: _metadata,
}
