"""The `grpc-timeout` header and the route timeouts it sets, as Envoy 1.40 computes them (sans-IO).

Two generations of route fields read it. The older, `max_grpc_timeout`/`grpc_timeout_offset`, makes a gRPC
request's header its route timeout (`max_grpc_timeout_of`; the expected timeout then goes upstream both as
`x-envoy-expected-rq-timeout-ms` and as a rewritten `grpc-timeout`: `announce_grpc_timeout`). The newer,
`RouteAction.max_stream_duration` (`stream_duration_ms`), replaces the route `timeout` altogether (Envoy's
"new timeouts": the route's `timeout` and `max_grpc_timeout` no longer apply) with a limit on the whole stream,
counted from its start as the HCM's max_stream_duration: the header capped by `grpc_timeout_header_max` less
`grpc_timeout_header_offset` when `grpc_timeout_header_max` is set, else the route's `max_stream_duration`, else
the HCM's; a gRPC request's `grpc-timeout` upstream becomes that limit. Milliseconds throughout, as Envoy counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from pylon.proxy.router import MatchedRoute

def max_grpc_timeout_of(cap_offset: tuple[int | None, int], headers: list[tuple[bytes, bytes]]) -> float | None:
    """A gRPC request's route timeout under max_grpc_timeout, in seconds (0.0: none); None if not gRPC.

    Envoy's order: the `grpc-timeout` header (absent or malformed: 0, infinity), minus
    grpc_timeout_offset when the offset is smaller, then capped by max_grpc_timeout unless that is 0.
    Milliseconds throughout, as Envoy counts them.
    """
    content_type = header_ms = None
    for name, value in headers:
        if name == b"content-type" and content_type is None:
            content_type = value
        elif name == b"grpc-timeout" and header_ms is None:
            header_ms = parse_grpc_timeout(value)
    if content_type is None or not is_grpc_content_type(content_type):
        return None
    cap_ms, offset_ms = cap_offset
    timeout_ms = header_ms or 0
    if offset_ms < timeout_ms:
        timeout_ms -= offset_ms
    if cap_ms is not None and (timeout_ms == 0 or timeout_ms > cap_ms):
        timeout_ms = cap_ms
    return timeout_ms / 1000


def is_grpc_content_type(content_type: bytes) -> bool:
    """Envoy's gRPC content type test: `application/grpc`, alone or followed by `+` or `;`."""
    return content_type.startswith(b"application/grpc") and content_type[16:17] in (b"", b"+", b";")


#: grpc-timeout units as (numerator, denominator) of a millisecond, so rounding up stays exact
_UNIT_MS = {b"H": (3_600_000, 1), b"M": (60_000, 1), b"S": (1000, 1), b"m": (1, 1), b"u": (1, 1000),
            b"n": (1, 1_000_000)}
_MAX_VALUE = 99_999_999  # gRPC: at most 8 digits


def parse_grpc_timeout(value: bytes) -> int | None:
    """`grpc-timeout` (digits + unit) in whole milliseconds, rounded up as Envoy does; None if malformed."""
    unit = _UNIT_MS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or int(digits) > _MAX_VALUE:
        return None
    numerator, denominator = unit
    return -(-int(digits) * numerator // denominator)


def format_grpc_timeout(ms: int) -> bytes:
    """Envoy's toGrpcTimeout: milliseconds, else seconds, minutes, hours while over 8 digits (capped)."""
    value, units = ms, b"mSMH"
    i = 0
    if value > _MAX_VALUE:
        value //= 1000
        i = 1
        while value > _MAX_VALUE:
            if i == 3:
                value = _MAX_VALUE
                break
            value //= 60
            i += 1
    return b"%d%c" % (value, units[i])


def announce_grpc_timeout(forward: list[tuple[bytes, bytes]], timeout: float | None, route: "MatchedRoute"
                          ) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
    """(headers, x-envoy-expected-rq-timeout-ms line) for a gRPC request under max_grpc_timeout.

    As Envoy: the expected timeout is the per-try timeout when it is the tighter bound, else the
    route's; when there is one, it also replaces the request's `grpc-timeout` so the upstream knows it.
    """
    per_try = route.retry.per_try_timeout if route.retry is not None else None
    expected = per_try if per_try is not None and (timeout is None or per_try < timeout) else timeout
    if not expected:
        return forward, None
    ms = round(expected * 1000)
    forward = [p for p in forward if p[0] != b"grpc-timeout"]
    forward.append((b"grpc-timeout", format_grpc_timeout(ms)))
    return forward, b"x-envoy-expected-rq-timeout-ms: %d\r\n" % ms



class StreamDuration(NamedTuple):
    """RouteAction.max_stream_duration in milliseconds; None where a field is unset."""

    max_ms: int | None
    header_max_ms: int | None
    header_offset_ms: int | None

    @classmethod
    def of(cls, config: Any) -> "StreamDuration":
        """From the route's config.route.v3.RouteAction.MaxStreamDuration."""
        def ms(value: float | None) -> int | None:
            return None if value is None else round(value * 1000)

        return cls(ms(config.max_stream_duration), ms(config.grpc_timeout_header_max),
                   ms(config.grpc_timeout_header_offset))


def stream_duration_ms(rule: StreamDuration, hcm_max_ms: int, headers: list[tuple[bytes, bytes]]
                       ) -> tuple[int | None, bytes | None]:
    """(the stream's limit in ms from its start, None for none; the grpc-timeout a gRPC request carries upstream,
    b"" to drop the client's, None to leave it as it came).

    Envoy's order: a `grpc-timeout` (any request: its content-type is not asked here) counts only when
    grpc_timeout_header_max is set; it is capped by that (unless 0), then the offset is taken off, down to 0,
    which ends the stream at once. Without it: the route's max_stream_duration (0: no limit), else the HCM's.
    """
    header_ms = grpc = None
    for name, value in headers:
        if name == b"grpc-timeout" and header_ms is None:
            header_ms = parse_grpc_timeout(value)
        elif name == b"content-type" and grpc is None:
            grpc = is_grpc_content_type(value)
    limit: int | None
    if header_ms is None or rule.header_max_ms is None:
        limit = rule.max_ms if rule.max_ms is not None else hcm_max_ms
        if not limit:  # no limit; Envoy drops the client's grpc-timeout only when an HCM limit was lifted
            return None, b"" if grpc and hcm_max_ms else None
    else:
        limit = header_ms
        if rule.header_max_ms and limit > rule.header_max_ms:
            limit = rule.header_max_ms
        if limit and rule.header_offset_ms is not None:
            limit = limit - rule.header_offset_ms if rule.header_offset_ms < limit else 0
    return limit, format_grpc_timeout(limit) if grpc else None
