"""Hyperscan route-table sets built in the background: RE2::Set stands in, the database swaps in, order holds."""

from __future__ import annotations

import gc
import logging

import pytest
import re2

from pylon import regex
from pylon.regex import hs_cache, hyperscan_engine
from pylon.regex.re2_engine import RE2Set

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False

PATTERNS = ["/svc1/[0-9]+", "/svc[0-9]+/.*", "/b(?U)x+", "/a$", "/a\\n?", ".*", "(?i)/K"]
PROBES = ["/svc1/7", "/svc2/x", "/bxx", "/a", "/a\n", "/zzz", "/\u212a", ""]


@pytest.fixture(autouse=True)
def hyperscan_cache(tmp_path, monkeypatch):
    """A cold cache per test, and builds that start as soon as they are queued."""
    monkeypatch.setenv("PYLON_HYPERSCAN_CACHE", str(tmp_path / "hs"))
    monkeypatch.setattr(hyperscan_engine, "SETTLE_S", 0.0)
    return tmp_path / "hs"


def reference(patterns: list[str], s: str) -> list[int]:
    return [i for i, p in enumerate(patterns) if re2.compile(p, options=_OPTIONS).fullmatch(s) is not None]


def background_set(patterns: list[str]) -> hyperscan_engine.HyperscanSet:
    engine = regex.get_engine(regex.HYPERSCAN_ENGINE)
    return engine.compile_set(patterns, [f"r{i}" for i in range(len(patterns))], background=True)


def test_uncached_set_is_served_by_re2_until_its_database_is_installed(hyperscan_cache):
    pattern_set = background_set(PATTERNS)
    assert isinstance(pattern_set._match.__self__, RE2Set)  # the stand-in, whatever the build thread's progress
    stand_in = {probe: pattern_set._match.__self__.matches(probe) for probe in PROBES}
    assert stand_in == {probe: reference(PATTERNS, probe) for probe in PROBES}
    assert pattern_set.wait(30)
    assert pattern_set.ready and isinstance(pattern_set._match.__self__, hyperscan_engine._Database)
    assert [i for i, _ in pattern_set.fallbacks] == [2, 6]  # known once Hyperscan has seen the patterns
    assert {probe: pattern_set.matches(probe) for probe in PROBES} == stand_in
    assert len(list(hyperscan_cache.glob("*.hsdb"))) == 1


def test_cached_set_is_ready_at_once_without_a_build():
    engine = regex.get_engine(regex.HYPERSCAN_ENGINE)
    engine.compile_set(PATTERNS, [f"r{i}" for i in range(len(PATTERNS))])  # builds now, stores in the cache
    pattern_set = background_set(PATTERNS)
    assert pattern_set.ready and isinstance(pattern_set._match.__self__, hyperscan_engine._Database)
    assert [i for i, _ in pattern_set.fallbacks] == [2, 6]


def test_errors_are_raised_at_once_in_background_mode():
    with pytest.raises(ValueError, match=r"^r1: invalid regex '\(a'"):
        background_set(["/ok", "(a"])
    with pytest.raises(ValueError, match=r"^r0: regex 'a\{500\}': RE2 program size"):
        background_set(["a{500}"])


def test_a_set_dropped_before_its_build_starts_is_never_compiled(hyperscan_cache, monkeypatch):
    with hs_cache.compile_lock(hyperscan_cache):  # the build thread waits here (as for another process)
        dropped = background_set(["/dropped/[0-9]+"])
        del dropped
        gc.collect()
        kept = background_set(["/kept/[0-9]+"])
    assert kept.wait(30)  # jobs run in order: the dropped one was looked at first
    stored = list(hyperscan_cache.glob("*.hsdb"))
    assert len(stored) == 1
    key = hs_cache.cache_key(hyperscan_engine._VERSION, hyperscan_engine.hyperscan.HS_MODE_BLOCK,
                             [hyperscan_engine._expression("/kept/[0-9]+")], [hyperscan_engine.FLAGS], [0])
    assert stored[0].name == f"{key}.hsdb"


def test_a_database_another_process_stored_meanwhile_is_loaded_not_compiled(hyperscan_cache, caplog):
    engine = regex.get_engine(regex.HYPERSCAN_ENGINE)
    with caplog.at_level(logging.INFO, logger="pylon.regex"):
        with hs_cache.compile_lock(hyperscan_cache):  # "another process" holds the lock and compiles
            pattern_set = background_set(PATTERNS)
            assert not pattern_set.wait(0.3)  # cannot finish while the lock is held
            engine.compile_set(PATTERNS, [f"r{i}" for i in range(len(PATTERNS))])  # ... and stores it
        compiled_by_other = [r.getMessage() for r in caplog.records]
        caplog.clear()
        assert pattern_set.wait(30)
    assert [r.getMessage() for r in caplog.records] == []  # loaded: no second compile, no second warning
    assert sum("served by RE2" in m for m in compiled_by_other) == 2
    assert pattern_set.matches("/bxx") == [2, 5] and pattern_set.matches("/svc1/7") == [0, 1, 5]


def test_a_failed_build_leaves_re2_serving(monkeypatch, caplog):
    real = hyperscan_engine._compile

    def broken_for_f(expressions, ids):
        if any(e.startswith(b"^(?:/f/") for e in expressions):
            raise RuntimeError("no")
        return real(expressions, ids)

    monkeypatch.setattr(hyperscan_engine, "_compile", broken_for_f)
    with caplog.at_level(logging.ERROR, logger="pylon.regex"):
        failed = background_set(["/f/[0-9]+"])
        later = background_set(["/g/[0-9]+"])
        assert later.wait(30)  # queued after the failed one: the thread survived it
    assert not failed.ready
    assert failed.matches("/f/12") == [0] and failed.matches("/f/x") == []
    assert any("RE2 keeps serving" in r.getMessage() for r in caplog.records)


def test_compile_lock_without_a_usable_directory_locks_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with hs_cache.compile_lock(blocker / "hs"):
        pass
