"""The JSON content parser's lookups, conversions and per-stream rule state (sans-IO), as Envoy 1.40's."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from pylon.config.envoy import convert
from pylon.extensions.content_parsers.json_parser import JsonContentParser, converted


def _parser(*rules: dict[str, Any]) -> Any:
    config = convert({"rules": list(rules)}, JsonContentParser)
    return config.factory().parser()


def _rule(keys: list[str], limit: int = 0, **kinds: Any) -> dict[str, Any]:
    return {"rule": {"selectors": [{"key": key} for key in keys], **kinds}, "stop_processing_after_matches": limit}


def test_lookups_through_objects() -> None:
    parser = _parser(_rule(["usage", "total"], on_present={"metadata_namespace": "ns", "key": "t"}),
                     _rule(["obj"], on_present={"key": "o"}), _rule(["list"], on_present={"key": "l"}),
                     _rule(["null"], on_present={"key": "n"}),
                     _rule(["usage", "total", "deeper"], on_present={"key": "d"}))
    actions, stop = parser.parse(b'{"usage": {"total": 42}, "obj": {"b": [1], "a": "x"}, "list": [1], "null": null}')
    assert actions == [("ns", "t", 42.0, False), ("envoy.content_parsers.json", "o", '{"a":"x","b":[1]}', False)]
    assert stop is False
    assert parser.not_found == [False, False, True, True, True]


@pytest.mark.parametrize(("value", "kind", "made"), [
    (7, "STRING", "7"), (1.5, "STRING", "1.5"), (1234567.0, "STRING", "1.23457e+06"), (True, "STRING", "true"),
    ("x", "STRING", "x"), (True, "NUMBER", 1.0), (" 2.5 ", "NUMBER", 2.5), ("x", "NUMBER", msgspec.UNSET),
    (3, "NUMBER", 3.0), (3, "PROTOBUF_VALUE", 3.0), (False, "PROTOBUF_VALUE", False), ("s", "PROTOBUF_VALUE", "s"),
])
def test_conversions(value: Any, kind: str, made: Any) -> None:
    assert converted(value, kind) == made and type(converted(value, kind)) is type(made)


def test_stop_after_every_limited_rule_matched() -> None:
    parser = _parser(_rule(["model"], 1, on_present={"key": "m"}), _rule(["id"], 1, on_present={"key": "i"}))
    assert parser.parse(b'{"model": "a"}') == ([("envoy.content_parsers.json", "m", "a", False)], False)
    assert parser.parse(b'{"model": "b", "id": 1}') == ([("envoy.content_parsers.json", "i", 1.0, False)], True)
    unlimited = _parser(_rule(["model"], 1, on_present={"key": "m"}), _rule(["x"], on_present={"key": "x"}))
    assert unlimited.parse(b'{"model": "a", "x": 1}')[1] is False


def test_deferred_actions_for_rules_that_never_matched() -> None:
    parser = _parser(_rule(["a"], on_present={"key": "a"}, on_missing={"key": "a", "value": "missing"},
                           on_error={"key": "a", "value": "error"}),
                     _rule(["b"], on_missing={"key": "b", "value": "missing"}),
                     _rule(["c"], on_present={"key": "c"}, on_error={"key": "c", "value": "error"}),
                     _rule(["d"], on_error={"key": "d", "value": "error"}))
    assert parser.parse(b'{"c": 1}') == ([("envoy.content_parsers.json", "c", 1.0, False)], False)
    assert [action[1:3] for action in parser.deferred()] == [("a", "missing"), ("b", "missing")]
    assert parser.parse(b"[DONE]") is None
    assert [action[1:3] for action in parser.deferred()] == [("a", "error"), ("b", "missing"), ("d", "error")]
    assert _parser(_rule(["x"], on_missing={"key": "x", "value": 1})).parse(b"NaN") is None


def test_a_rule_needs_an_action() -> None:
    with pytest.raises(msgspec.ValidationError, match="At least one of on_present, on_missing, or on_error"):
        _parser(_rule(["a"]))
    with pytest.raises(msgspec.ValidationError):
        _parser(_rule(["a"], 2, on_present={"key": "a"}))
