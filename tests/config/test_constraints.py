"""Envoy's proto constraints (PGV rules) on pylon's field types: durations and constrained text.

Each rule here was checked against Envoy 1.40 (`envoy --mode validate`); the
same cases run through Envoy itself in `test_envoy_reference.py`.
"""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.constraints import (
    MAX_DURATION_SECONDS,
    DnsRefreshRate,
    Duration,
    HeaderKey,
    HttpText,
    NonEmptyHttpText,
    NonEmptyStrictHttpText,
    PositiveDuration,
    QueryParameterName,
    SessionTimeout,
    format_duration,
    parse_duration,
)
from pylon.config.errors import ConfigError
from tests.config.builders import ROUTES_PATH, cluster, http_bootstrap, load

# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("0.250s", 0.25), ("1.5s", 1.5), ("0s", 0.0), ("0.000000001s", 1e-9),
     ({"seconds": 2, "nanos": 500_000_000}, 2.5), ({"nanos": 1000}, 1e-6), ({"seconds": "3"}, 3.0),
     ({"seconds": 1, "nanos": "5"}, 1.000000005), (f"{MAX_DURATION_SECONDS}.999999999s", MAX_DURATION_SECONDS + 1)],
)  # fmt: skip
def test_duration_forms(text: Any, seconds: float) -> None:
    value = parse_duration(text)
    assert isinstance(value, Duration) and value == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["5", "1m", "-1s", "1.s", 1, "1.0000000001s", {"minutes": 1}, {"seconds": 1.5}])
def test_bad_durations_are_rejected(bad: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    "bad",
    [f"{MAX_DURATION_SECONDS + 1}s", "315576000000s", "315576000001s", "1" * 400 + "s",
     {"seconds": 10**400}, {"seconds": str(MAX_DURATION_SECONDS + 1)}],
)  # fmt: skip
def test_durations_beyond_envoys_range_are_rejected(bad: Any) -> None:
    """Envoy refuses seconds above 9,223,372,035; a 400-digit value used to raise OverflowError."""
    with pytest.raises(ValueError, match=r"out of range \(at most 9223372035s"):
        parse_duration(bad)


@pytest.mark.parametrize("bad", ["-0.5s", {"seconds": 1, "nanos": -1}, {"seconds": -1, "nanos": 5}])
def test_negative_parts_are_rejected(bad: Any) -> None:
    """Envoy wants both seconds and nanos non-negative ({seconds: 1, nanos: -1} is not 0.999999999s)."""
    with pytest.raises(ValueError, match="must not be negative"):
        parse_duration(bad)


def test_long_values_are_cut_short_in_messages() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("9" * 400 + "s")
    assert len(str(info.value)) < 150


@pytest.mark.parametrize(
    ("kind", "ok", "bad", "message"),
    [(PositiveDuration, "0.000000001s", "0s", "must be greater than 0s"),
     (DnsRefreshRate, "0.001000001s", "0.001s", "must be greater than 0.001s"),
     (SessionTimeout, "4294967295.999999999s", "4294967296s", "must be less than 4294967296s")],
)  # fmt: skip
def test_field_bounds(kind: type[Duration], ok: str, bad: str, message: str) -> None:
    assert isinstance(parse_duration(ok, kind), kind)
    with pytest.raises(ValueError, match=message):
        parse_duration(bad, kind)


def test_format_duration_round_trips() -> None:
    for seconds in (0.0, 1.0, 0.25, 1.5, 3600.0, 0.000001):
        assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)
    assert format_duration(Duration(0.25)) == "0.25s"
    assert format_duration(Duration(15)) == "15s"


def test_range_error_names_file_and_field() -> None:
    with pytest.raises(ConfigError) as info:
        load(http_bootstrap(clusters=[cluster("svc", connect_timeout="100000000000000000000s")]))
    assert str(info.value) == (
        "config error in test.yaml: static_resources.clusters[0].connect_timeout: invalid duration "
        "'100000000000000000000s': out of range (at most 9223372035s, about 292 years)"
    )


# --------------------------------------------------------------------------- text


@pytest.mark.parametrize(
    ("kind", "ok", "bad", "message"),
    [(HttpText, "", "a\nb", "must not contain NUL, CR or LF"),
     (HttpText, "a\x01 b\t", "a\rb", "must not contain NUL, CR or LF"),
     (HttpText, "x", "a\x00b", "must not contain NUL, CR or LF"),
     (NonEmptyHttpText, "x-a", "", "must not be empty"),
     (HeaderKey, "k" * 16384, "k" * 16385, "must be at most 16384 bytes"),
     (HeaderKey, "\u20ac" * 5461, "\u20ac" * 5462, "must be at most 16384 bytes"),  # 3 bytes each: bytes count
     (NonEmptyStrictHttpText, "/a\tb c", "/a\x01", "must not contain control characters other than tab"),
     (NonEmptyStrictHttpText, "/", "/\x7f", "must not contain control characters other than tab"),
     (QueryParameterName, "q" * 1024, "q" * 1025, "must be at most 1024 bytes")],
)  # fmt: skip
def test_text_rules(kind: type[HttpText], ok: str, bad: str, message: str) -> None:
    assert kind.parse(ok) == ok and isinstance(kind.parse(ok), kind)
    with pytest.raises(ValueError, match=message):
        kind.parse(bad)


def test_text_must_be_a_string() -> None:
    with pytest.raises(ValueError, match="Expected `str`, got `int`"):
        HttpText.parse(5)


def test_text_error_names_file_and_field() -> None:
    data = http_bootstrap([{"match": {"prefix": "/"}, "route": {"cluster": "svc", "prefix_rewrite": "/a\r\nX: y"}}])
    with pytest.raises(ConfigError) as info:
        load(data)
    assert str(info.value) == (
        f"config error in test.yaml: {ROUTES_PATH}[0].route.prefix_rewrite: must not contain NUL, CR or LF (found '\\r')"
    )
