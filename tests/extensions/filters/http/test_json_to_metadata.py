"""json_to_metadata's rules over a parsed body (sans-IO), its value conversions and its config refusals."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from pylon.config.errors import ConfigError
from pylon.extensions.filters.http.json_to_metadata import TYPE_URL, KeyValuePair, Rule, extracted, rule_values
from tests.extensions.filters.http.loading import load_filter

MISSING = {"key": "k", "value": "missing"}


def _rule(keys: list[str], present: dict[str, Any] | None, missing: dict[str, Any] | None = MISSING) -> Rule:
    fields: dict[str, Any] = {"selectors": [{"key": key} for key in keys]}
    if present is not None:
        fields["on_present"] = present
    if missing is not None:
        fields["on_missing"] = missing
    return msgspec.convert(fields, Rule)


@pytest.mark.parametrize(("found", "kind", "expected"), [
    ("s", "PROTOBUF_VALUE", "s"), (3, "PROTOBUF_VALUE", 3), (True, "PROTOBUF_VALUE", True),
    (3, "NUMBER", 3.0), (True, "NUMBER", 1.0), (" 2.5 ", "NUMBER", 2.5), ("x", "NUMBER", msgspec.UNSET),
    (True, "STRING", "1"), (False, "STRING", "0"), (1.5, "STRING", "1.500000"), (12, "STRING", "12"),
    ("", "STRING", None), ("y" * 8193, "STRING", msgspec.UNSET), ("y" * 8193, "PROTOBUF_VALUE", msgspec.UNSET),
])
def test_extracted(found: Any, kind: str, expected: Any) -> None:
    assert extracted(found, KeyValuePair(key="k", type=kind)) == expected  # type: ignore[arg-type]


def test_rule_values_walk_objects() -> None:
    document = {"a": {"b": 1}, "s": "x", "o": {}, "n": None, "l": [1]}
    rules = [_rule(["a", "b"], {"key": "ab"}), _rule(["a", "c"], {"key": "ac"}), _rule(["s", "t"], {"key": "st"}),
             _rule(["o"], {"key": "o"}), _rule(["n"], {"key": "n"}), _rule(["l"], {"key": "l"}),
             _rule(["gone"], {"key": "g", "value": "fixed"}), _rule(["gone"], None)]
    values = [(pair.key, value) for pair, value in rule_values(document, rules)]
    assert values == [("ab", 1), ("k", "missing"), ("k", "missing"), ("k", "missing"), ("k", "missing"),
                      ("k", "missing"), ("g", "fixed")]
    assert [(p.key, v) for p, v in rule_values("a string", rules[:2])] == [("k", "missing"), ("k", "missing")]


@pytest.mark.parametrize(("config", "message"), [
    ({"request_rules": {"rules": []}}, "rules"),
    ({"request_rules": {"rules": [{"selectors": [], "on_present": {"key": "k"}}]}}, "selectors"),
    ({"request_rules": {"rules": [{"selectors": [{"key": "a"}]}]}}, "neither `on_present` nor `on_missing`"),
    ({"request_rules": {"rules": [{"selectors": [{"key": "a"}], "on_missing": {"key": "k"}}]}},
     "on_missing rule with empty value"),
    ({"request_rules": {"rules": [{"selectors": [{"key": "a"}], "on_present": {"key": "k"}, "on_error": {"key": "k"}}]}},
     "on_error rule with empty value"),
    ({"request_rules": {"rules": [{"selectors": [{"key": ""}], "on_present": {"key": "k"}}]}}, "key"),
    ({"request_rules": {"rules": [{"selectors": [{"key": "a"}], "on_present": {"key": "k"}}],
                        "allow_content_types": [""]}}, "allow_content_types"),
])
def test_config_errors(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_filter("envoy.filters.http.json_to_metadata", TYPE_URL, config)
