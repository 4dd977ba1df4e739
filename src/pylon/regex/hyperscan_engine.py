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
- Compiling is slow (~1 s per 1,000 patterns, ~5 s for 5,000): databases are
  cached on disk (`hs_cache.py`), so only the first process to see a pattern
  set pays; and a route table (`compile_set(..., background=True)`) that is
  not cached yet is served by RE2::Set (same answers, ~35 ms to build) while a
  build thread compiles its database and swaps it in, so a route update takes
  effect at once and never stalls the event loop on a compile (issue 12).
- `sub` (regex_rewrite) needs capture groups, which Hyperscan does not have:
  it is done by RE2, as Envoy's Hyperscan engine does too.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from typing import Any, Callable, Sequence

import hyperscan

from pylon.regex import hs_cache
from pylon.regex.base import Regex
from pylon.regex.re2_engine import GoogleRE2Engine, RE2Set
from pylon.regex.translate import Untranslatable, translate

ENGINE_NAME = "envoy.regex_engines.hyperscan"

FLAGS = hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_ALLOWEMPTY | hyperscan.HS_FLAG_UTF8
_VERSION = f"hyperscan-py {getattr(hyperscan, '__version__', '?')} {platform.machine()}"

log = logging.getLogger("pylon.regex")


def _collect(pattern_id: int, start: int, end: int, flags: int, found: list[int]) -> None:
    found.append(pattern_id)


def _expression(pattern: str) -> bytes:
    """The full-match Hyperscan expression for an RE2 pattern (Untranslatable if there is none).

    Memoized per process: a route update translates every pattern of its table again
    (5,000 patterns: ~18 ms), in the supervisor and in each worker.
    """
    expression = _expressions.get(pattern)
    if expression is None:
        try:
            expression = f"^(?:{translate(pattern, 'pcre')})\\z".encode()
        except Untranslatable as exc:
            expression = str(exc)
        if len(_expressions) >= _EXPRESSIONS_MAX:
            _expressions.clear()
        _expressions[pattern] = expression
    if isinstance(expression, str):
        raise Untranslatable(expression)
    return expression


#: pattern -> its Hyperscan expression, or why it has none
_expressions: dict[str, bytes | str] = {}
_EXPRESSIONS_MAX = 100_000


def _compile_db(expressions: Sequence[bytes], ids: Sequence[int]) -> Any:
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(expressions=list(expressions), ids=list(ids), elements=len(expressions),
               flags=[FLAGS] * len(expressions))
    return db


class _Database:
    """One Hyperscan database plus the few patterns RE2 serves: one scan answers for all of them."""

    __slots__ = ("_scan", "_scratch", "_re2_tests", "_patterns", "_re2_set")

    def __init__(self, db: Any, patterns: Sequence[str], re2_tests: Sequence[tuple[int, Any]]) -> None:
        self._scan = db.scan if db is not None else None
        # Made in whichever thread built the database, used only by the thread that matches.
        self._scratch = hyperscan.Scratch(db) if db is not None else None
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


class HyperscanSet:
    """A route table's patterns: one Hyperscan scan, or RE2::Set until the database is built.

    `matches` asks whichever matcher is installed; both give RE2's answers (the
    engine's contract), so a request cannot tell them apart except by cost. The
    swap is one attribute assignment from the build thread, atomic under the GIL.
    """

    __slots__ = ("fallbacks", "_match", "_ready", "__weakref__")

    def __init__(self, matcher: _Database | RE2Set, fallbacks: tuple[tuple[int, str], ...] = (),
                 ready: bool = True) -> None:
        #: (index, reason) of the patterns Hyperscan cannot take; () while RE2::Set serves everything
        self.fallbacks = fallbacks
        self._match = matcher.matches
        self._ready = threading.Event()
        if ready:
            self._ready.set()

    def matches(self, s: str) -> list[int]:
        return self._match(s)

    @property
    def ready(self) -> bool:
        """True once the Hyperscan database serves (False while RE2::Set stands in)."""
        return self._ready.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the database serves (tests, benchmarks); `ready` after at most `timeout` seconds."""
        return self._ready.wait(timeout)

    def _install(self, database: _Database, fallbacks: tuple[tuple[int, str], ...]) -> None:
        self.fallbacks = fallbacks
        self._match = database.matches
        self._ready.set()


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

    def compile_set(self, patterns: Sequence[str], labels: Sequence[str], background: bool = False
                    ) -> HyperscanSet:
        """All `patterns` in one database: loaded from the disk cache when there, else compiled.

        With `background` (route tables in the proxy), a database that is not cached
        is compiled by this process's build thread while RE2::Set serves: compiling
        5,000 patterns takes seconds, RE2::Set ~35 ms, and a route update must take
        effect at once without blocking the event loop (see `_Builder`).
        """
        for pattern, label in zip(patterns, labels):
            try:
                self._re2.check(pattern)  # RE2 is the reference: its errors and limits apply
            except ValueError as exc:
                raise ValueError(f"{label}: {exc}") from None
        untranslatable: dict[int, str] = {}
        expressions: list[bytes] = []
        ids: list[int] = []
        for i, pattern in enumerate(patterns):
            try:
                expressions.append(_expression(pattern))
                ids.append(i)
            except ValueError as exc:
                untranslatable[i] = str(exc)

        def finish(db: Any, rejected: dict[int, str], from_cache: bool
                   ) -> tuple[_Database, tuple[tuple[int, str], ...]]:
            fallbacks = tuple(sorted({**untranslatable, **rejected}.items()))
            if not from_cache:  # a cached database was already explained by the process that built it
                for i, reason in fallbacks:
                    log.warning("%s: regex %r served by RE2, Hyperscan cannot take it (%s)",
                                labels[i], patterns[i], reason)
            re2_tests = [(i, self._re2.compile(patterns[i]).fullmatch) for i, _ in fallbacks]
            return _Database(db, patterns, re2_tests), fallbacks

        if not expressions:
            return HyperscanSet(*finish(None, {}, False))
        key = hs_cache.cache_key(_VERSION, hyperscan.HS_MODE_BLOCK, expressions, [FLAGS], ids)
        directory = hs_cache.cache_dir()  # now: the environment may change before a background build runs

        def build() -> tuple[_Database, tuple[tuple[int, str], ...]]:
            cached = _load(key, directory)
            if cached is not None:
                return finish(*cached, True)
            started = time.perf_counter()
            db, rejected = _compile(expressions, ids)
            log.info("hyperscan: compiled a database of %d patterns in %.1f s", len(expressions),
                     time.perf_counter() - started)
            built = finish(db, rejected, False)
            if db is not None:  # stored last: once the file is there, its warnings were logged
                hs_cache.store(key, hyperscan.dumpb(db), {"rejected": {str(i): r for i, r in rejected.items()}},
                               directory)
            return built

        if not background:
            return HyperscanSet(*build())
        cached = _load(key, directory)
        if cached is not None:
            return HyperscanSet(*finish(*cached, True))
        pattern_set = HyperscanSet(RE2Set(patterns), ready=False)
        _builder.submit(pattern_set, build, directory)
        return pattern_set


def _load(key: str, directory: Path) -> tuple[Any, dict[int, str]] | None:
    """(database, {id: reason} Hyperscan rejected) from the disk cache, or None."""
    cached = hs_cache.load(key, lambda blob: hyperscan.loadb(blob, hyperscan.HS_MODE_BLOCK), directory)
    if cached is None:
        return None
    db, meta = cached
    return db, {int(i): reason for i, reason in meta.get("rejected", {}).items()}


def _compile(expressions: list[bytes], ids: list[int]) -> tuple[Any, dict[int, str]]:
    """(database or None, {id: reason} Hyperscan rejected)."""
    rejected: dict[int, str] = {}
    try:
        return _compile_db(expressions, ids), rejected
    except hyperscan.error:
        pass
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
    return (_compile_db(keep_expr, keep_ids) if keep_expr else None), rejected


#: Seconds a queued build waits before it starts: a burst of route updates leaves only its last
#: table alive, and only live tables are compiled (one compile of 5,000 patterns is ~5 s of CPU).
SETTLE_S = 1.0


class _Builder:
    """This process's Hyperscan build thread: compiles the databases of sets still in use, in order.

    Why a thread: Hyperscan's compiler releases the GIL, so the event loop keeps
    serving (requests meanwhile see RE2::Set, same answers). Why one: builds
    queue behind each other, and `hs_cache.compile_lock` makes the processes
    sharing a cache directory take turns, so the supervisor's workers compile a
    database once between them (the first to take the lock; the others load its
    file). A set is held weakly: a table replaced before its build starts is
    never compiled (see `SETTLE_S`).
    """

    def __init__(self) -> None:
        self._jobs: deque[tuple[float, weakref.ref[HyperscanSet], Callable[[], Any], Path]] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, target: HyperscanSet, build: Callable[[], tuple[_Database, tuple[tuple[int, str], ...]]],
               directory: Path) -> None:
        with self._wake:
            self._jobs.append((time.monotonic(), weakref.ref(target), build, directory))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pylon-hyperscan-build", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._jobs:
                    self._wake.wait()
                queued, target, build, directory = self._jobs.popleft()
            time.sleep(max(0.0, queued + SETTLE_S - time.monotonic()))
            if target() is None:
                continue
            try:
                with hs_cache.compile_lock(directory):
                    if target() is None:  # replaced while another process held the lock
                        continue
                    database, fallbacks = build()
            except Exception:  # never lose the thread: that set keeps RE2::Set, which is correct
                log.exception("hyperscan: building a route table's database failed; RE2 keeps serving it")
                continue
            pattern_set = target()
            if pattern_set is not None:
                pattern_set._install(database, fallbacks)


_builder = _Builder()


def _reason(exc: BaseException) -> str:
    detail = exc.args[0] if exc.args else exc
    return detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
