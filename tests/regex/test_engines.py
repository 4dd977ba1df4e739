"""Every engine, single patterns and sets, gives RE2's full-match answers (hypothesis + pitfalls)."""

from __future__ import annotations

import logging

import pytest
import re2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pylon import regex
from pylon.regex import hs_cache
from pylon.regex.translate import Untranslatable, translate

ENGINES = [regex.DEFAULT_ENGINE, regex.HYPERSCAN_ENGINE, regex.PYTHON_RE_ENGINE]
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False


@pytest.fixture(autouse=True)
def hyperscan_cache(tmp_path, monkeypatch):
    """Keep each test's Hyperscan databases out of the user's cache (and each test cold)."""
    monkeypatch.setenv("PYLON_HYPERSCAN_CACHE", str(tmp_path / "hs"))
    return tmp_path / "hs"


def reference(pattern: str, s: str) -> bool:
    """Straight RE2 full match through google-re2's public API: what Envoy answers."""
    return re2.compile(pattern, options=_OPTIONS).fullmatch(s) is not None


# Pattern pieces chosen to hit the places engines differ: anchors and `$` before "\n",
# `\s` vs `\v`, classes, non-ASCII literals and `.` over code points, empty matches.
FRAGMENTS = [
    "/", "/api", "/v[0-9]+", r"\d+", r"\w+", "[^/]*", ".*", ".", "é", "日本", "(a|b)", "a?", "x*",
    r"\s", r"\S+", "$", "^", r"\n", r"\n?", r"[\s]", r"\.json", "(?:/[a-z]+)+", r"\z", r"\Qa.b\E",
    "[[:digit:]]", "(?s:.)", "a{,2}",
]
PATH_ALPHABET = st.sampled_from(list("/apivb0123456789.jsonxé日本\n\x0b \t?=&_-") + ["a.b", "/api", "/v1"])
paths = st.lists(PATH_ALPHABET, max_size=12).map("".join)
patterns = st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=5).map("".join).filter(
    lambda p: _re2_accepts(p))


def _re2_accepts(pattern: str) -> bool:
    try:
        regex.get_engine(regex.DEFAULT_ENGINE).compile(pattern)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("name", ENGINES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pattern=patterns, path=paths)
def test_single_pattern_full_match_agrees_with_re2(name, pattern, path):
    assert regex.get_engine(name).compile(pattern).fullmatch(path) == reference(pattern, path)


@pytest.mark.parametrize("name", ENGINES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pats=st.lists(patterns, min_size=1, max_size=8), probes=st.lists(paths, min_size=1, max_size=6))
def test_set_reports_exactly_the_matching_patterns_in_order(name, pats, probes):
    engine = regex.get_engine(name)
    pattern_set = engine.compile_set(pats, [f"p{i}" for i in range(len(pats))])
    for path in probes:
        assert list(pattern_set.matches(path)) == [i for i, p in enumerate(pats) if reference(p, path)]


@pytest.mark.parametrize("name", ENGINES)
@pytest.mark.parametrize("pattern, path, expected", [
    ("/a$", "/a\n", False),         # Hyperscan's and Python's `$` match before a final newline; RE2's does not
    ("/a", "/a\n", False),
    ("/a\\n?$", "/a\n", True),      # SINGLEMATCH reports the first end only: `\z`, not an end-offset check
    ("/a$\\n", "/a\n", False),
    ("/a\\s", "/a\x0b", False),    # RE2's \s has no vertical tab
    ("/a\\v", "/a\x0b", True),
    ("", "", True),
    ("a{,2}", "a{,2}", True),       # a literal in RE2, a quantifier in Python 3.11
    ("[[:alpha:]]+", "abc", True),
])
def test_pitfalls(name, pattern, path, expected):
    engine = regex.get_engine(name)
    assert engine.compile(pattern).fullmatch(path) is expected
    assert list(engine.compile_set([pattern], ["r"]).matches(path)) == ([0] if expected else [])


def test_hyperscan_set_falls_back_to_re2_per_pattern_with_one_warning(caplog):
    engine = regex.get_engine(regex.HYPERSCAN_ENGINE)
    pats = ["/a/[0-9]+", "/b(?U)x+", "(?i)/K", "/c"]
    with caplog.at_level(logging.WARNING, logger="pylon.regex"):
        pattern_set = engine.compile_set(pats, ["r0", "r1", "r2", "r3"])
    assert [i for i, _ in pattern_set.fallbacks] == [1, 2]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert warnings[0].startswith("r1: regex '/b(?U)x+' served by RE2") and "Unrecognised" in warnings[0]
    assert warnings[1].startswith("r2:") and "case-insensitive" in warnings[1]
    assert pattern_set.matches("/bxx") == [1]
    assert pattern_set.matches("/\u212a") == [2]  # RE2 folds the Kelvin sign to k
    assert pattern_set.matches("/a/12") == [0]


def test_hyperscan_database_is_cached_on_disk_and_reloaded(hyperscan_cache, caplog):
    engine = regex.get_engine(regex.HYPERSCAN_ENGINE)
    pats = [f"/svc{i}/[0-9]+" for i in range(50)] + ["/x(?U)y+"]
    with caplog.at_level(logging.WARNING, logger="pylon.regex"):
        first = engine.compile_set(pats, [f"r{i}" for i in range(len(pats))])
    files = list(hyperscan_cache.glob("*.hsdb"))
    assert len(files) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pylon.regex"):
        second = engine.compile_set(pats, [f"r{i}" for i in range(len(pats))])
    assert not caplog.records  # the process that compiled it already explained the fallback
    assert second.fallbacks == first.fallbacks == ((50, second.fallbacks[0][1]),)
    assert second.matches("/svc49/7") == [49] and second.matches("/xyy") == [50]
    files[0].write_bytes(b"garbage")
    third = engine.compile_set(pats, [f"r{i}" for i in range(len(pats))])  # damaged: recompiled
    assert third.matches("/svc3/1") == [3]
    assert files[0].read_bytes().startswith(b"pylon-hsdb-1\n")


def test_cache_key_changes_with_patterns_and_flags():
    base = hs_cache.cache_key("v", 1, [b"a", b"b"], [0], [0, 1])
    assert base != hs_cache.cache_key("v", 1, [b"ab", b""], [0], [0, 1])
    assert base != hs_cache.cache_key("v", 1, [b"a", b"b"], [1], [0, 1])
    assert base != hs_cache.cache_key("w", 1, [b"a", b"b"], [0], [0, 1])


def test_unwritable_cache_is_skipped(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("PYLON_HYPERSCAN_CACHE", str(blocker / "hs"))
    pattern_set = regex.get_engine(regex.HYPERSCAN_ENGINE).compile_set(["/a+"], ["r"])
    assert pattern_set.matches("/aa") == [0]


@pytest.mark.parametrize("name", ENGINES)
def test_invalid_pattern_in_a_set_names_its_label(name):
    with pytest.raises(ValueError, match=r"^routes\[1\]: invalid regex '\(a'"):
        regex.get_engine(name).compile_set(["/ok", "(a"], ["routes[0]", "routes[1]"])


@pytest.mark.parametrize("name", ENGINES)
def test_envoys_program_size_limit_applies_to_every_engine(name):
    with pytest.raises(ValueError, match="program size"):
        regex.get_engine(name).compile_set(["a{500}"], ["r"])


@pytest.mark.parametrize("name", ENGINES)
def test_sub_follows_re2_rules_in_every_engine(name):
    engine = regex.get_engine(name)
    assert engine.compile("^/service/([^/]+)(/.*)$").sub(r"\2/instance/\1", "/service/foo/v1") == "/v1/instance/foo"
    assert engine.compile("a*").sub("-", "baac") == "-b-c-"


def test_python_re_falls_back_for_syntax_it_reads_differently(caplog):
    engine = regex.get_engine(regex.PYTHON_RE_ENGINE)
    with caplog.at_level(logging.WARNING, logger="pylon.regex"):
        compiled = engine.compile(r"\p{Greek}")
    assert compiled.fullmatch("α") and not compiled.fullmatch("a") and "served by RE2" in caplog.text


@pytest.mark.parametrize("pattern, reason", [
    ("(?i)a", "case-insensitive"), ("(?m)a$", "multi-line"), (r"[\S]", r"\\S inside"), (r"\C", "any byte"),
])
def test_untranslatable_constructs(pattern, reason):
    with pytest.raises(Untranslatable, match=reason):
        translate(pattern, "pcre")


def test_translation_keeps_classes_and_escapes():
    assert translate(r"[$]$", "pcre") == r"[$]\z"
    assert translate(r"[]a]\s", "python") == r"[]a][\t\n\f\r ]"
    assert translate(r"\Qa.b\E", "python") == r"a\x2eb"


def test_default_engine_is_process_wide_and_settable():
    try:
        assert regex.set_default_engine(regex.HYPERSCAN_ENGINE) is regex.get_engine()
        assert regex.get_engine().name == regex.HYPERSCAN_ENGINE
        with pytest.raises(ValueError, match="unknown regex engine 'nope'; known: envoy.regex_engines.google_re2"):
            regex.set_default_engine("nope")
        assert regex.get_engine().name == regex.HYPERSCAN_ENGINE  # unchanged by the failure
    finally:
        regex.set_default_engine(None)
    assert regex.get_engine().name == regex.DEFAULT_ENGINE
