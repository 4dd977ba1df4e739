"""Unit: a stream's dynamic metadata (sans-IO) and %DYNAMIC_METADATA(...)% in access-log formats.

The expected renderings were observed with Envoy 1.40 (a set_metadata filter and file access logs): strings as
they are, other values as compact JSON with sorted keys, `-` for a missing value or null, a maximum length that
cuts text but, in a JSON format, only strings.
"""

from __future__ import annotations

import json

import pytest

from pylon.proxy import dynamic_metadata as dm
from pylon.proxy.access_log import AccessLogRecord, compile_json_format, compile_text_format
from pylon.proxy.upstream.subset import criteria_of, merged_over

VALUES = {"s": "hello", "i": 5, "b": True, "l": ["a", 2, {"k": "v"}], "n": {"x": "y", "q": 3.0}, "e": "", "z": None}


def test_merge_replaces_top_level_fields_whole() -> None:
    metadata: dict = {}
    dm.merge(metadata, "ns", {"a": {"x": 1}, "l": [1]})
    dm.merge(metadata, "ns", {"a": {"y": 2}, "b": "new"})
    assert metadata == {"ns": {"a": {"y": 2}, "l": [1], "b": "new"}}


def test_struct_update_merges_structs_appends_lists_and_replaces_kinds() -> None:
    target = {"n": {"a": 1, "deep": {"x": "1"}}, "l": ["a"], "s": "old", "k": 1, "flag": 1}
    update = {"n": {"b": 2, "deep": {"y": "2"}}, "l": ["b", {"c": 1}], "s": "new", "k": "text", "flag": True}
    dm.struct_update(target, update)
    assert target == {"n": {"a": 1, "b": 2, "deep": {"x": "1", "y": "2"}}, "l": ["a", "b", {"c": 1}], "s": "new",
                      "k": "text", "flag": True}
    target["l"][2]["c"] = 99
    assert update["l"][1] == {"c": 1}, "the config's value must never be shared with a stream"


def test_lookup_walks_structs_only() -> None:
    metadata = {"ns": VALUES}
    assert dm.lookup(metadata, "ns", ("n", "x")) == "y"
    assert dm.lookup(metadata, "ns", ()) is VALUES
    assert dm.lookup(metadata, "ns", ("s", "deeper")) is dm.MISSING
    assert dm.lookup(metadata, "other", ()) is dm.MISSING
    assert dm.lookup(None, "ns", ("s",)) is dm.MISSING
    assert dm.lookup(metadata, "ns", ("z",)) is None


@pytest.mark.parametrize(("value", "text"), [
    ("hello", "hello"), ("", ""), (5, "5"), (5.0, "5"), (1.5, "1.5"), (True, "true"), (None, None),
    (["a", 2, {"k": "v"}], '["a",2,{"k":"v"}]'), ({"x": "y", "q": 3}, '{"q":3,"x":"y"}'), (dm.MISSING, None),
])
def test_render_text(value: object, text: str | None) -> None:
    assert dm.render_text(value) == text


def test_text_format() -> None:
    fmt = compile_text_format(
        "A=%DYNAMIC_METADATA(ns)% B=%DYNAMIC_METADATA(ns:s)% C=%DYNAMIC_METADATA(ns:i)% F=%DYNAMIC_METADATA(ns:l)% "
        "G=%DYNAMIC_METADATA(ns:n:x)% H=%DYNAMIC_METADATA(ns:missing)% J=%DYNAMIC_METADATA(ns:s):3% "
        "K=%DYNAMIC_METADATA(ns:e)% L=%DYNAMIC_METADATA(ns:z)% O=%DYNAMIC_METADATA(ns:n):4% "
        "S=%DYNAMIC_METADATA(ns:s:deeper)%")
    line = fmt(AccessLogRecord(dynamic_metadata={"ns": VALUES})).decode()
    assert line == ('A={"b":true,"e":"","i":5,"l":["a",2,{"k":"v"}],"n":{"q":3,"x":"y"},"s":"hello","z":null} '
                    'B=hello C=5 F=["a",2,{"k":"v"}] G=y H=- J=hel K= L=- O={"q" S=-')
    assert fmt(AccessLogRecord()).decode() == "A=- B=- C=- F=- G=- H=- J=- K=- L=- O=- S=-"


def test_json_format_keeps_types() -> None:
    fmt = compile_json_format({
        "a": "%DYNAMIC_METADATA(ns)%", "j": "%DYNAMIC_METADATA(ns:s):3%", "o": "%DYNAMIC_METADATA(ns:n):4%",
        "p": "%DYNAMIC_METADATA(ns:i):1%", "l": "%DYNAMIC_METADATA(ns:z)%", "h": "%DYNAMIC_METADATA(ns:missing)%",
        "q": "x %DYNAMIC_METADATA(ns:i)% %DYNAMIC_METADATA(ns:n)% %DYNAMIC_METADATA(ns:missing)%"})
    line = json.loads(fmt(AccessLogRecord(dynamic_metadata={"ns": VALUES})))
    assert line == {"a": {"b": True, "e": "", "i": 5, "l": ["a", 2, {"k": "v"}], "n": {"q": 3, "x": "y"}, "s": "hello",
                          "z": None},
                    "j": "hel", "o": {"q": 3, "x": "y"}, "p": 5, "l": None, "h": None, "q": 'x 5 {"q":3,"x":"y"} -'}


@pytest.mark.parametrize("spec", ["%DYNAMIC_METADATA()%", "%DYNAMIC_METADATA(ns::k)%", "%DYNAMIC_METADATA%"])
def test_malformed_specifications_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="DYNAMIC_METADATA|metadata specification"):
        compile_text_format(spec)


def test_envoy_lb_metadata_wins_over_the_route_criteria() -> None:
    route = criteria_of({"version": "v1", "stage": "prod"})
    assert merged_over(route, {"version": "v2"}) == criteria_of({"version": "v2", "stage": "prod"})
    assert merged_over(None, {"version": 1}) == criteria_of({"version": 1.0})
