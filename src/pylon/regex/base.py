"""What every regex engine offers: single patterns and multi-pattern sets, with Envoy's semantics.

Route matching, header matching and path rewriting need three operations:
"does this whole string match" (`Regex.fullmatch`), "replace every match"
(`Regex.sub`, RE2's rewrite rules) and, for route tables, "which of these N
patterns match this whole string" (`PatternSet.matches`), answered in one pass
by engines that can (Hyperscan, RE2::Set). The semantics are Envoy's whatever
the engine: RE2 syntax, full match, RE2's `GlobalReplace`; an engine that cannot
honour them for one pattern serves it with RE2 instead and says why.
"""

from __future__ import annotations

from typing import Protocol, Sequence


class Regex(Protocol):
    """A compiled pattern. Both methods are called per request: keep them cheap."""

    pattern: str

    def fullmatch(self, s: str) -> bool:
        """True when the whole of `s` matches (Envoy's `safe_regex` semantics)."""
        ...

    def sub(self, repl: str, s: str) -> str:
        """Replace every match in `s` by `repl` (RE2 rewrite syntax: `\\1`..`\\9`, `\\0`, `\\\\`)."""
        ...


class PatternSet(Protocol):
    """N patterns compiled together; `matches` answers for all of them at once."""

    #: (index, reason) of each pattern this engine could not take and RE2 serves instead
    fallbacks: tuple[tuple[int, str], ...]

    def matches(self, s: str) -> list[int]:
        """Indices of the patterns that match the whole of `s`, ascending."""
        ...


class RegexEngine(Protocol):
    """Compiles patterns; raises `ValueError` naming the pattern (and its label) when one is invalid."""

    name: str

    def compile(self, pattern: str) -> Regex: ...

    def compile_set(self, patterns: Sequence[str], labels: Sequence[str], background: bool = False) -> PatternSet:
        """All `patterns` as one set; `labels[i]` names pattern i in errors and fallback warnings.

        Errors are raised now whatever `background` says. With `background`, an engine
        whose set takes long to compile may answer from a quicker stand-in with the same
        answers and finish the set in a thread (Hyperscan does): route tables ask for it,
        so that a route update takes effect at once and no event loop waits on a compile.
        """
        ...
