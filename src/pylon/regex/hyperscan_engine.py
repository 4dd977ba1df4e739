"""Hyperscan as a regex engine (`envoy.regex_engines.hyperscan`): all of a route table in one scan.

A route table's patterns go into one block-mode database; one scan of the path
reports every pattern that matches it, whatever the number of patterns (the
measured cost is ~1–4 µs at any N). Choices, each from a measured pitfall
(see shared/reference/regex-facts.md):

- Full match is `^(?:P)\\z`, not `^(?:P)$`: Hyperscan's `$` also matches before
  a trailing newline, and with HS_FLAG_SINGLEMATCH only the first end offset of
  a pattern is reported, so checking "end == len" after a `$` match would miss
  `/a\\n?` on `/a\\n`. RE2-only meanings (`$`, `\\s`, ...) are translated first.
- HS_FLAG_SINGLEMATCH (one callback per pattern), HS_FLAG_ALLOWEMPTY (the
  empty path), HS_FLAG_UTF8 (`.` is a code point, as in RE2; no UCP, so
  `\\w`, `\\d` stay ASCII as in RE2).
- Matches arrive in no particular order: ids are collected and sorted.
- A pattern Hyperscan cannot take (e.g. `(?U)`, case-insensitive Unicode
  folding, `\\C`) is served by RE2 for that pattern, with one warning naming it.
- Compiling is slow (~1 s per 1,000 patterns): databases are cached on disk
  (`hs_cache.py`), so only the first process to see a pattern set pays.
- `sub` (regex_rewrite) needs capture groups, which Hyperscan does not have:
  it is done by RE2, as Envoy's Hyperscan engine does too.
"""

from __future__ import annotations

import logging
import platform
from typing import Any, Sequence

import hyperscan

from pylon.regex import hs_cache
from pylon.regex.base import Regex
from pylon.regex.re2_engine import GoogleRE2Engine, RE2Set
from pylon.regex.translate import translate

ENGINE_NAME = "envoy.regex_engines.hyperscan"

FLAGS = hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_ALLOWEMPTY | hyperscan.HS_FLAG_UTF8
_VERSION = f"hyperscan-py {getattr(hyperscan, '__version__', '?')} {platform.machine()}"

log = logging.getLogger("pylon.regex")


def _collect(pattern_id: int, start: int, end: int, flags: int, found: list[int]) -> None:
    found.append(pattern_id)


def _expression(pattern: str) -> bytes:
    """The full-match Hyperscan expression for an RE2 pattern (Untranslatable if there is none)."""
    return f"^(?:{translate(pattern, 'pcre')})\\z".encode()


def _compile_db(expressions: Sequence[bytes], ids: Sequence[int]) -> Any:
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(expressions=list(expressions), ids=list(ids), elements=len(expressions),
               flags=[FLAGS] * len(expressions))
    return db


class HyperscanSet:
    """Patterns in one Hyperscan database, plus the few RE2 serves; `matches` is one scan."""

    __slots__ = ("fallbacks", "_db", "_scan", "_scratch", "_re2_tests", "_patterns", "_re2_set")

    def __init__(self, db: Any, patterns: Sequence[str], re2_tests: Sequence[tuple[int, Any]],
                 fallbacks: tuple[tuple[int, str], ...]) -> None:
        self.fallbacks = fallbacks
        self._db = db
        self._scan = db.scan if db is not None else None
        self._scratch = hyperscan.Scratch(db) if db is not None else None  # one per worker process
        self._re2_tests = tuple(re2_tests)
        self._patterns = tuple(patterns)
        self._re2_set: RE2Set | None = None

    def matches(self, s: str) -> list[int]:
        try:
            data = s.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates: not UTF-8, which HS_FLAG_UTF8 databases must be given. RE2 answers.
            if self._re2_set is None:
                self._re2_set = RE2Set(self._patterns)
            return self._re2_set.matches(s)
        found: list[int] = []
        if self._scan is not None:
            self._scan(data, match_event_handler=_collect, context=found, scratch=self._scratch)
        if self._re2_tests:
            found.extend(i for i, test in self._re2_tests if test(s))
        if len(found) > 1:
            found.sort()
        return found


class _HyperscanRegex:
    """One pattern in its own database; `sub` is RE2's (Hyperscan has no capture groups)."""

    __slots__ = ("pattern", "_scan", "_scratch", "_re2")

    def __init__(self, pattern: str, db: Any, re2_regex: Regex) -> None:
        self.pattern = pattern
        self._scan = db.scan
        self._scratch = hyperscan.Scratch(db)
        self._re2 = re2_regex

    def fullmatch(self, s: str) -> bool:
        try:
            data = s.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates are not UTF-8: RE2 answers
            return self._re2.fullmatch(s)
        found: list[int] = []
        self._scan(data, match_event_handler=_collect, context=found, scratch=self._scratch)
        return bool(found)

    def sub(self, repl: str, s: str) -> str:
        return self._re2.sub(repl, s)


class HyperscanEngine:
    """Hyperscan with RE2's semantics; RE2 serves the patterns Hyperscan cannot."""

    name = ENGINE_NAME

    def __init__(self) -> None:
        self._re2 = GoogleRE2Engine()

    def compile(self, pattern: str) -> Regex:
        checked = self._re2.compile(pattern)  # RE2 is the reference: its errors and limits apply
        try:
            db = _compile_db([_expression(pattern)], [0])
        except (ValueError, hyperscan.error) as exc:  # Untranslatable is a ValueError
            log.warning("regex %r: served by RE2, Hyperscan cannot take it (%s)", pattern, _reason(exc))
            return checked
        return _HyperscanRegex(pattern, db, checked)

    def compile_set(self, patterns: Sequence[str], labels: Sequence[str]) -> HyperscanSet:
        re2_regexes: dict[int, Regex] = {}
        for i, (pattern, label) in enumerate(zip(patterns, labels)):
            try:
                re2_regexes[i] = self._re2.compile(pattern)
            except ValueError as exc:
                raise ValueError(f"{label}: {exc}") from None
        rejected: dict[int, str] = {}
        expressions: list[bytes] = []
        ids: list[int] = []
        for i, pattern in enumerate(patterns):
            try:
                expressions.append(_expression(pattern))
                ids.append(i)
            except ValueError as exc:
                rejected[i] = str(exc)
        db, hs_rejected, from_cache = self._database(expressions, ids)
        rejected.update(hs_rejected)
        fallbacks = tuple(sorted(rejected.items()))
        if not from_cache:  # a cached database was already explained by the process that built it
            for i, reason in fallbacks:
                log.warning("%s: regex %r served by RE2, Hyperscan cannot take it (%s)",
                            labels[i], patterns[i], reason)
        re2_tests = [(i, re2_regexes[i].fullmatch) for i, _ in fallbacks]
        return HyperscanSet(db, patterns, re2_tests, fallbacks)

    def _database(self, expressions: list[bytes], ids: list[int]) -> tuple[Any, dict[int, str], bool]:
        """(database or None, {id: reason} Hyperscan rejected, loaded from the cache?)."""
        if not expressions:
            return None, {}, False
        key = hs_cache.cache_key(_VERSION, hyperscan.HS_MODE_BLOCK, expressions, [FLAGS], ids)
        cached = hs_cache.load(key, lambda blob: hyperscan.loadb(blob, hyperscan.HS_MODE_BLOCK))
        if cached is not None:
            db, meta = cached
            return db, {int(i): reason for i, reason in meta.get("rejected", {}).items()}, True
        rejected: dict[int, str] = {}
        try:
            db = _compile_db(expressions, ids)
        except hyperscan.error:
            # The error does not say which pattern: find them one by one (paid once, then cached).
            keep_expr, keep_ids = [], []
            for expression, i in zip(expressions, ids):
                try:
                    _compile_db([expression], [i])
                except hyperscan.error as exc:
                    rejected[i] = _reason(exc)
                else:
                    keep_expr.append(expression)
                    keep_ids.append(i)
            db = _compile_db(keep_expr, keep_ids) if keep_expr else None
        if db is not None:
            hs_cache.store(key, hyperscan.dumpb(db), {"rejected": {str(i): r for i, r in rejected.items()}})
        return db, rejected, False


def _reason(exc: BaseException) -> str:
    detail = exc.args[0] if exc.args else exc
    return detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
