"""header_to_metadata's values (sans-IO): Envoy's base64 without padding, NUMBER as a double, the 8 KiB limit,
serialized protobuf Values; and its config refusals with the field named."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from google.protobuf import struct_pb2

from pylon.config.errors import ConfigError
from pylon.extensions.filters.http.header_to_metadata import TYPE_URL, KeyValuePair, _Pair, typed_value
from tests.extensions.filters.http.loading import load_filter


def _value(raw: str, **pair: Any) -> tuple[Any, list[str]]:
    counted: list[str] = []
    return typed_value(raw, _Pair(KeyValuePair(key="k", **pair)), counted.append), counted


@pytest.mark.parametrize(("raw", "expected"), [
    ("42", 42.0), (" 1.5 ", 1.5), ("-3e2", -300.0), (".5", 0.5), ("abc", None), ("1_0", None), ("", None),
    ("0x10", None),
])
def test_number(raw: str, expected: float | None) -> None:
    assert _value(raw, type="NUMBER")[0] == expected


@pytest.mark.parametrize(("raw", "expected"), [
    ("aGVsbG8", "hello"), ("aGVsbG8=", "hello"), ("aGVsbA==", "hell"), ("aGVsbA===", None), ("!!", None),
])
def test_base64_with_or_without_padding(raw: str, expected: str | None) -> None:
    value, counted = _value(raw, encode="BASE64")
    assert value == expected
    assert counted == ([] if expected is not None else ["base64_decode_failed"])


def test_protobuf_value() -> None:
    serialized = struct_pb2.Value(list_value={"values": [{"string_value": "a"}, {"bool_value": True}]})
    raw = base64.b64encode(serialized.SerializeToString()).decode()
    assert _value(raw, type="PROTOBUF_VALUE", encode="BASE64")[0] == ["a", True]
    assert _value("\xff\xff", type="PROTOBUF_VALUE")[0] is None


def test_values_of_8_kib_are_too_long() -> None:
    assert _value("x" * (8 * 1024 - 1))[0] == "x" * (8 * 1024 - 1)
    assert _value("x" * (8 * 1024)) == (None, ["header_value_too_long"])


@pytest.mark.parametrize(("config", "message"), [
    ({"request_rules": [{"header": ":path", "on_header_present": {"key": "k"}, "remove": True}]}, "remove"),
    ({"request_rules": [{"header": "x", "on_header_present": {"key": ""}}]}, "key"),
    ({"request_rules": [{"header": "x", "on_header_present": {"key": "k", "type": "BYTES"}}]}, "type"),
    ({"request_rules": [{"header": "x", "on_header_present": {"key": "k", "regex_value_rewrite": {
        "pattern": {"regex": "(a"}, "substitution": "b"}}}]}, "regex"),
])
def test_config_errors_name_the_field(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_filter("envoy.filters.http.header_to_metadata", TYPE_URL, config)
