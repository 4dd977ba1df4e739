"""The regex seam: RE2 full-match and RE2's own global-replace rules."""

from __future__ import annotations

import pytest

from pylon.regex import DEFAULT_ENGINE, GoogleRE2Engine, get_engine, register_engine


@pytest.fixture
def engine():
    return get_engine()


def test_default_engine_is_envoys_google_re2(engine):
    assert DEFAULT_ENGINE == "envoy.regex_engines.google_re2"
    assert isinstance(engine, GoogleRE2Engine)


def test_fullmatch_needs_the_whole_string(engine):
    r = engine.compile(r"/api/v\d+")
    assert r.fullmatch("/api/v2")
    assert not r.fullmatch("/api/v2/users")
    assert not r.fullmatch("x/api/v2")


def test_sub_with_groups_and_escaped_backslash(engine):
    r = engine.compile(r"^/service/([^/]+)(/.*)$")
    assert r.sub(r"\2/instance/\1", "/service/foo/v1/api") == "/v1/api/instance/foo"
    assert engine.compile("a").sub(r"\\", "bab") == "b\\b"
    assert engine.compile("(b)").sub(r"<\0>", "abc") == "a<b>c"


def test_sub_follows_re2_not_python_on_empty_matches(engine):
    # RE2::GlobalReplace forbids an empty match right after the previous match; Python's re.sub allows it.
    assert engine.compile("a*").sub("-", "baac") == "-b-c-"
    assert engine.compile("x*").sub("-", "") == "-"


def test_sub_keeps_anchors_anchored(engine):
    assert engine.compile("^a").sub("-", "aaa") == "-aa"


def test_sub_without_match_returns_input(engine):
    assert engine.compile("zzz").sub("y", "/path") == "/path"


def test_unmatched_optional_group_is_empty(engine):
    assert engine.compile("(a)|b").sub(r"[\1]", "ab") == "[a][]"


@pytest.mark.parametrize("rewrite, reason", [(r"\x", "backslash"), (r"\2", "group")])
def test_invalid_rewrite_is_rejected(engine, rewrite, reason):
    with pytest.raises(ValueError, match=reason):
        engine.compile("(a)").sub(rewrite, "a")


def test_invalid_pattern_names_it(engine):
    with pytest.raises(ValueError, match=r"invalid regex '\(a': missing \)"):
        engine.compile("(a")


def test_program_size_limit_is_envoys_100(engine):
    engine.compile("a{90}")
    with pytest.raises(ValueError, match="program size of .* > max program size of 100"):
        engine.compile("a{200}")
    assert GoogleRE2Engine(max_program_size=1000).compile("a{200}").fullmatch("a" * 200)


def test_unknown_engine_lists_known_ones():
    with pytest.raises(ValueError, match="envoy.regex_engines.google_re2"):
        get_engine("envoy.regex_engines.nope")


def test_registered_engine_is_found_by_name(monkeypatch):
    import pylon.regex

    monkeypatch.setattr(pylon.regex, "_ENGINES", dict(pylon.regex._ENGINES))  # undone after the test

    class Upper(GoogleRE2Engine):
        name = "test.regex_engines.upper"

    register_engine(Upper.name, Upper)
    assert isinstance(get_engine("test.regex_engines.upper"), Upper)


def test_non_ascii_text_is_matched_by_character(engine):
    assert engine.compile("é(.)").sub(r"[\1]", "xéyéz") == "x[y][z]"
    assert engine.compile("").sub("-", "aé") == "-a-é-"  # empty matches step over whole characters
    assert engine.compile(".").fullmatch("é")
