"""The grpc-timeout arithmetic of grpc_timeout.py (sans-IO): Envoy's parsing, formatting and max_grpc_timeout rules."""

from __future__ import annotations

import pytest

from pylon.proxy.grpc_timeout import (StreamDuration, format_grpc_timeout, max_grpc_timeout_of, parse_grpc_timeout,
                                      stream_duration_ms)

GRPC = (b"content-type", b"application/grpc")


@pytest.mark.parametrize(("value", "ms"), [
    (b"2H", 7_200_000), (b"3M", 180_000), (b"1S", 1000), (b"250m", 250), (b"1500u", 2), (b"1000u", 1), (b"1n", 1),
    (b"0m", 0), (b"99999999m", 99_999_999),
    (b"123456789m", None), (b"5", None), (b"m", None), (b"", None), (b"-5m", None), (b"5s", None), (b"1.5S", None),
])  # fmt: skip
def test_parse_rounds_up_to_milliseconds(value: bytes, ms: int | None) -> None:
    assert parse_grpc_timeout(value) == ms


@pytest.mark.parametrize(("ms", "text"), [
    (200, b"200m"), (99_999_999, b"99999999m"), (100_000_000, b"100000S"), (10**14, b"27777777H"), (10**20, b"99999999H"),
])  # fmt: skip
def test_format_uses_the_smallest_unit_that_fits(ms: int, text: bytes) -> None:
    assert format_grpc_timeout(ms) == text


@pytest.mark.parametrize(("cap_offset", "headers", "seconds"), [  # (max_grpc_timeout, offset) in ms
    ((None, 0), [GRPC, (b"grpc-timeout", b"2S")], 2.0),
    ((1000, 0), [GRPC, (b"grpc-timeout", b"2S")], 1.0),
    ((None, 500), [GRPC, (b"grpc-timeout", b"2S")], 1.5),
    ((1000, 500), [GRPC, (b"grpc-timeout", b"2S")], 1.0),  # the offset first, then the cap
    ((None, 3000), [GRPC, (b"grpc-timeout", b"2S")], 2.0),  # an offset as large as the value is not applied
    ((None, 0), [GRPC], 0.0),  # no header: infinity
    ((None, 0), [GRPC, (b"grpc-timeout", b"bad")], 0.0),
    ((300, 0), [(b"content-type", b"application/grpc;x=y")], 0.3),
    ((300, 0), [(b"content-type", b"application/grpc-web"), (b"grpc-timeout", b"2S")], None),
    ((300, 0), [(b"grpc-timeout", b"2S")], None),
])  # fmt: skip
def test_route_timeout_of_a_grpc_request(cap_offset: tuple[int | None, int], headers: list[tuple[bytes, bytes]],
                                         seconds: float | None) -> None:
    assert max_grpc_timeout_of(cap_offset, headers) == seconds


@pytest.mark.parametrize(("rule", "hcm_ms", "headers", "expected"), [  # StreamDuration in ms
    (StreamDuration(3000, None, None), 0, [GRPC], (3000, b"3000m")),
    (StreamDuration(3000, None, None), 0, [(b"content-type", b"text/plain")], (3000, None)),  # not gRPC: left alone
    (StreamDuration(3000, None, None), 0, [GRPC, (b"grpc-timeout", b"1S")], (3000, b"3000m")),  # no header_max
    (StreamDuration(None, None, None), 2000, [GRPC], (2000, b"2000m")),  # unset: the HCM's
    (StreamDuration(None, None, None), 0, [GRPC, (b"grpc-timeout", b"1S")], (None, None)),
    (StreamDuration(0, None, None), 2000, [GRPC, (b"grpc-timeout", b"1S")], (None, b"")),  # lifted: header dropped
    (StreamDuration(None, 500, 100), 0, [GRPC, (b"grpc-timeout", b"20S")], (400, b"400m")),  # cap, then offset
    (StreamDuration(None, 500, 100), 0, [GRPC, (b"grpc-timeout", b"300m")], (200, b"200m")),
    (StreamDuration(None, 0, None), 0, [GRPC, (b"grpc-timeout", b"20S")], (20000, b"20000m")),  # 0: no cap
    (StreamDuration(None, 500, 600), 0, [GRPC, (b"grpc-timeout", b"20S")], (0, b"0m")),  # offset too large: now
    (StreamDuration(4000, 500, None), 0, [GRPC, (b"grpc-timeout", b"bad")], (4000, b"4000m")),
    (StreamDuration(None, 500, None), 0, [(b"grpc-timeout", b"1S")], (500, None)),  # any request's header counts
])  # fmt: skip
def test_route_max_stream_duration(rule: StreamDuration, hcm_ms: int, headers: list[tuple[bytes, bytes]],
                                   expected: tuple[int | None, bytes | None]) -> None:
    assert stream_duration_ms(rule, hcm_ms, headers) == expected
