"""The transform filter's JSON body reading and writing and its body commands in formats (sans-IO)."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.extensions.filters.http.transform import (
    COMMANDS, _BodyRecord, as_text, body_value, parse_object, serialized,
)
from pylon.proxy.access_log import compile_json_format, compile_text_format

BODY = parse_object(b'{"a": {"b": {"c": 1}, "s": "x", "n": null, "l": [1, 2.5]}, "t": true, "big": 12345678901}')


@pytest.mark.parametrize(("path", "found"), [
    ("a:b:c", 1.0), ("a:s", "x"), ("a:n", None), ("a:l", [1.0, 2.5]), ("t", True), ("a:b", {"c": 1.0}),
    ("a:s:deeper", None), ("nope", None), ("a:nope:c", None), ("", None), (None, None),
])
def test_paths(path: str | None, found: Any) -> None:
    assert body_value(BODY, path) == found


def test_text() -> None:
    assert [as_text(body_value(BODY, path)) for path in ("a:b:c", "a:s", "a:l", "a:b", "t", "big", "nope")] == [
        "1", "x", "[1,2.5]", '{"c":1}', "true", "12345678901", None]


def test_bodies_as_a_struct_reads_and_writes_them() -> None:
    assert parse_object(b"[1]") is None and parse_object(b"not json") is None and parse_object(b"") is None
    assert parse_object(b'{"x": NaN}') is None
    assert serialized(parse_object(b'{"b": 1, "a": {"d": 2.0, "c": [true, null]}}')) == \
        b'{"a":{"c":[true,null],"d":2},"b":1}'


def test_the_commands_in_formats() -> None:
    record = _BodyRecord(None, BODY, parse_object(b'{"usage": {"total": 3.0}}'))
    text = compile_text_format("%REQUEST_BODY(a:s)% %RESPONSE_BODY(usage:total)% %REQUEST_BODY(nope)%",
                               commands=COMMANDS)
    assert text(record) == b"x 3 -"
    as_json = compile_json_format({"m": "%REQUEST_BODY(a:b)%", "n": "%RESPONSE_BODY(usage:total)%",
                                   "z": "%REQUEST_BODY(nope)%", "mixed": "n=%REQUEST_BODY(a:b:c)%"}, commands=COMMANDS)
    assert as_json(record) == b'{"m":{"c":1},"n":3,"z":null,"mixed":"n=1"}\n'
    with pytest.raises(ValueError, match="REQUEST_BODY"):
        compile_text_format("%REQUEST_BODY(a)%")  # only where the filter adds them
