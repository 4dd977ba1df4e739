"""Python's `re` as a regex engine (`pylon.regex_engines.re`): no extra library, backtracking.

Patterns are RE2 syntax translated to Python's dialect with RE2's meaning kept
(`translate.py`) and compiled with `re.ASCII`, since RE2's `\\d`, `\\w`, `\\b`
are ASCII-only. A pattern that cannot be carried over is served by RE2, with
one warning naming it. Python's `re` has no multi-pattern set: a route table's
patterns are tried one by one, lazily, in route order (`LoopSet`); choose
Hyperscan or RE2 for large tables. Own compiled objects are kept because
`re`'s internal cache holds only 512 patterns.
"""

from __future__ import annotations

import logging
import re
from typing import Callable, Iterator, Sequence

from pylon.regex.base import Regex
from pylon.regex.re2_engine import GoogleRE2Engine, _parse_rewrite
from pylon.regex.translate import translate

ENGINE_NAME = "pylon.regex_engines.re"

log = logging.getLogger("pylon.regex")


class _PythonRegex:
    """One pattern under Python's `re`, with RE2's global-replace rules for `sub`."""

    __slots__ = ("pattern", "_compiled", "_fullmatch", "_rewrites")

    def __init__(self, pattern: str, compiled: re.Pattern[str]) -> None:
        self.pattern = pattern
        self._compiled = compiled
        self._fullmatch = compiled.fullmatch
        self._rewrites: dict[str, tuple[str | int, ...]] = {}

    def fullmatch(self, s: str) -> bool:
        return self._fullmatch(s) is not None

    def sub(self, repl: str, s: str) -> str:
        rewrite = self._rewrites.get(repl)
        if rewrite is None:
            pieces = _parse_rewrite(repl, self._compiled.groups, self.pattern)
            rewrite = self._rewrites[repl] = tuple(p.decode() if isinstance(p, bytes) else p for p in pieces)
        search = self._compiled.search
        out: list[str] = []
        pos, last_end, end_of_text, replaced = 0, -1, len(s), False
        while pos <= end_of_text:
            m = search(s, pos)
            if m is None:
                break
            start, end = m.span()
            if pos < start:
                out.append(s[pos:start])
            if start == end and start == last_end:
                # RE2 forbids an empty match right where the previous match ended: step one character.
                out.append(s[pos : pos + 1])
                pos += 1
                continue
            for piece in rewrite:
                if piece.__class__ is str:
                    out.append(piece)  # type: ignore[arg-type]
                else:
                    group = m.group(piece)  # type: ignore[arg-type]
                    if group is not None:
                        out.append(group)
            pos = last_end = end
            replaced = True
        if not replaced:
            return s
        if pos < end_of_text:
            out.append(s[pos:])
        return "".join(out)


class LoopSet:
    """Patterns tried one by one in index order; `matches` is lazy, so the first match stops the work."""

    __slots__ = ("fallbacks", "_tests")

    def __init__(self, tests: Sequence[Callable[[str], object]], fallbacks: tuple[tuple[int, str], ...]) -> None:
        self._tests = tuple(tests)
        self.fallbacks = fallbacks

    def matches(self, s: str) -> Iterator[int]:
        for i, test in enumerate(self._tests):
            if test(s):
                yield i


class PythonReEngine:
    """Python's `re` with RE2's semantics; RE2 serves what `re` cannot."""

    name = ENGINE_NAME

    def __init__(self) -> None:
        self._re2 = GoogleRE2Engine()

    def _compile(self, pattern: str) -> tuple[Regex, str | None]:
        """(compiled regex, None) or (RE2 regex, why `re` cannot serve it); ValueError if RE2 rejects it."""
        checked = self._re2.compile(pattern)  # RE2 is the reference: its errors and limits apply
        try:
            return _PythonRegex(pattern, re.compile(translate(pattern, "python"), re.ASCII)), None
        except (ValueError, re.error) as exc:  # Untranslatable is a ValueError
            return checked, str(exc)

    def compile(self, pattern: str) -> Regex:
        regex, reason = self._compile(pattern)
        if reason is not None:
            log.warning("regex %r: served by RE2, Python's re cannot take it (%s)", pattern, reason)
        return regex

    def compile_set(self, patterns: Sequence[str], labels: Sequence[str], background: bool = False) -> LoopSet:
        tests = []
        fallbacks = []
        for i, (pattern, label) in enumerate(zip(patterns, labels)):
            try:
                regex, reason = self._compile(pattern)
            except ValueError as exc:
                raise ValueError(f"{label}: {exc}") from None
            if reason is not None:
                log.warning("%s: regex %r served by RE2, Python's re cannot take it (%s)", label, pattern, reason)
                fallbacks.append((i, reason))
            tests.append(regex.fullmatch)
        return LoopSet(tests, tuple(fallbacks))
