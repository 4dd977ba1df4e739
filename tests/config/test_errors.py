"""ConfigError text and the translation of msgspec errors into field paths."""

from __future__ import annotations

import msgspec
import pytest

from pylon.config.errors import ConfigError, FieldError, join_path, split_validation_error


class Leaf(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    size: int = 0

    def __post_init__(self) -> None:
        if self.size < 0:
            raise FieldError("size", "must not be negative")


class Tree(msgspec.Struct, forbid_unknown_fields=True):
    leaves: list[Leaf] = []


def split(data: object) -> tuple[str, str]:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert(data, Tree)
    return split_validation_error(info.value)


def test_config_error_text() -> None:
    assert str(ConfigError("/x/envoy.yaml", "a.b[0]", "unknown field")) == "config error in /x/envoy.yaml: a.b[0]: unknown field"
    assert str(ConfigError("<config-yaml>", "", "the config is empty")) == "config error in <config-yaml>: the config is empty"


def test_join_path() -> None:
    assert join_path("a.b", "c[0]") == "a.b.c[0]"
    assert join_path("a", "[1]") == "a[1]"
    assert join_path("", "c") == "c" and join_path("a", "") == "a"


def test_split_validation_error() -> None:
    assert split({"leaves": [{"name": "a"}, {"name": "b", "colour": "red"}]}) == ("leaves[1].colour", "unknown field")
    assert split({"leaves": [{}]}) == ("leaves[0].name", "missing required field")
    assert split({"leaves": [{"name": "a", "size": -1}]}) == ("leaves[0].size", "must not be negative")
    assert split({"leaves": [{"name": 3}]}) == ("leaves[0].name", "Expected `str`, got `int`")
    assert split([]) == ("", "Expected `object`, got `array`")
