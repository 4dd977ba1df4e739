"""Input matchers (a single predicate's `custom_match`) as predicates over the input's value.

The Hyperscan input matcher (Envoy contrib) on pylon's regex engine: its patterns,
each wrapped to be found anywhere in the value with its flags (config/matcher.py
`HyperscanRegex.searched`), become one `PatternSet` scanned once per value - one
Hyperscan database when the bootstrap's default_regex_engine is Hyperscan, as the
route tables' regex sets (docs/architecture.md "Regex matching").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pylon.config import matcher as config
from pylon.regex import RegexEngine


def _hyperscan(decoded: config.Hyperscan, engine: RegexEngine) -> Callable[[str], bool]:
    reported = [r for r in decoded.regexes if not r.quiet]
    if not reported:
        return lambda value: False
    patterns = [r.searched for r in reported]
    labels = [f"custom_match regexes (id {r.id}): {r.regex!r}" for r in reported]
    pattern_set = engine.compile_set(patterns, labels, background=True)
    return lambda value: bool(pattern_set.matches(value))


#: decoded input matcher Struct type -> predicate factory (a caller's `Vocabulary.input_matchers`)
INPUT_MATCHERS: dict[type, Callable[[Any, RegexEngine], Callable[[str], bool]]] = {
    config.Hyperscan: _hyperscan,
}
