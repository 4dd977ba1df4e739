"""Field types that carry Envoy's proto constraints (protoc-gen-validate rules) msgspec cannot express.

Envoy's .proto files annotate fields with validation rules (`duration.gt`,
`string.max_bytes`, `well_known_regex: HTTP_HEADER_VALUE`, ...) and Envoy refuses
a config that breaks one. pylon states each field's rule in its type, so the rule
sits next to the field in `envoy.py` and is checked while decoding:

- rules msgspec has (numeric `gt`/`gte`/`lte`, string `min_len`, repeated
  `min_items`/`max_items`) are `Annotated[..., msgspec.Meta(...)]` in `envoy.py`;
- the rest live here as small `float`/`str` subclasses whose class attributes
  are the rule, checked by `dec_hook` in `envoy.py` (msgspec cannot put `Meta` on
  a custom type): Durations with Envoy's range and a field's `gt`/`lt`, and text
  with byte lengths and HTTP header character rules.

A violation raises ValueError; msgspec turns it into a ValidationError at the
field's path, which the loader reports as a ConfigError.
"""

from __future__ import annotations

import re
from typing import ClassVar

NANOS_PER_SECOND = 1_000_000_000

#: The largest `seconds` Envoy accepts in any Duration. Envoy converts durations to
#: int64 nanoseconds and refuses seconds from 9,223,372,036 up (measured with Envoy 1.40;
#: protobuf's own limit, 315,576,000,000 s, is looser and is also refused).
MAX_DURATION_SECONDS = 9_223_372_035

_DURATION = re.compile(r"^(?P<sign>-)?(?P<seconds>\d+)(?:\.(?P<frac>\d{1,9}))?s$")
_INTEGER = re.compile(r"^-?\d+$")


class Duration(float):
    """A google.protobuf.Duration in seconds; a float so callers can compute with it directly.

    Every Duration Envoy reads must be non-negative (seconds and nanos alike) and
    at most `MAX_DURATION_SECONDS`; subclasses add a field's PGV bound.
    """

    #: PGV `duration.gt`, in nanoseconds (None: only Envoy's range applies).
    greater_than_ns: ClassVar[int | None] = None
    #: PGV `duration.gte`, in nanoseconds.
    at_least_ns: ClassVar[int | None] = None
    #: PGV `duration.lt`, in nanoseconds.
    less_than_ns: ClassVar[int | None] = None


class PositiveDuration(Duration):
    """PGV `duration: {gt: {}}`: timeouts and intervals where zero means nothing sensible."""

    greater_than_ns = 0


class AtLeastOneMs(Duration):
    """PGV `gte: {nanos: 1000000}` (1 ms or more): tcp_proxy's max_downstream_connection_duration."""

    at_least_ns = 1_000_000


class DnsRefreshRate(Duration):
    """Cluster.dns_refresh_rate: PGV `gt: {nanos: 1000000}` (more than 1 ms)."""

    greater_than_ns = 1_000_000


class StatsFlushInterval(Duration):
    """Bootstrap.stats_flush_interval: PGV `gte: {nanos: 1000000}, lt: {seconds: 300}` (1 ms up to 5 min)."""

    at_least_ns = 1_000_000
    less_than_ns = 300 * NANOS_PER_SECOND


class SessionTimeout(Duration):
    """DownstreamTlsContext.session_timeout: PGV `lt: {seconds: 4294967296}` (fits TLS's 32-bit lifetime)."""

    less_than_ns = 2**32 * NANOS_PER_SECOND


def parse_duration(value: object, kind: type[Duration] = Duration) -> Duration:
    """A `kind` from proto-JSON ("1s", "0.250s") or {seconds, nanos}, within Envoy's range and kind's bounds.

    The bounds are checked on integer nanoseconds before converting to float, so
    a huge value is an error, not an OverflowError, and `gt: 1ms` is exact.
    """
    seconds, nanos = _duration_parts(value)
    if seconds < 0 or nanos < 0:
        raise ValueError(f"invalid duration {_shown(value)}: must not be negative")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(
            f"invalid duration {_shown(value)}: out of range (at most {MAX_DURATION_SECONDS}s, about 292 years)"
        )
    total = seconds * NANOS_PER_SECOND + nanos
    if kind.greater_than_ns is not None and total <= kind.greater_than_ns:
        raise ValueError(f"must be greater than {format_duration(kind.greater_than_ns / NANOS_PER_SECOND)}")
    if kind.at_least_ns is not None and total < kind.at_least_ns:
        raise ValueError(f"must be at least {format_duration(kind.at_least_ns / NANOS_PER_SECOND)}")
    if kind.less_than_ns is not None and total >= kind.less_than_ns:
        raise ValueError(f"must be less than {format_duration(kind.less_than_ns / NANOS_PER_SECOND)}")
    return kind(seconds + nanos / NANOS_PER_SECOND)


def _duration_parts(value: object) -> tuple[int, int]:
    """(seconds, nanos) of a proto-JSON Duration, signs kept; ValueError on any other shape."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f'invalid duration {_shown(value)}: expected a string like "1s" or "0.250s"')
        sign = -1 if match["sign"] else 1
        return sign * int(match["seconds"]), sign * int((match["frac"] or "0").ljust(9, "0"))
    if isinstance(value, dict) and value and set(value) <= {"seconds", "nanos"}:
        parts = [value.get("seconds", 0), value.get("nanos", 0)]
        for i, part in enumerate(parts):
            if isinstance(part, str) and _INTEGER.match(part):
                parts[i] = int(part)  # proto-JSON may quote integers
            elif isinstance(part, bool) or not isinstance(part, int):
                raise ValueError(f"invalid duration {_shown(value)}: seconds and nanos must be integers")
        seconds, nanos = parts
        if not -999_999_999 <= nanos <= 999_999_999:
            raise ValueError(f"invalid duration {_shown(value)}: nanos must be within ±999999999")
        return seconds, nanos
    raise ValueError(f'invalid duration {_shown(value)}: expected a string like "1s" or {{seconds, nanos}}')


def _shown(value: object, limit: int = 60) -> str:
    """repr of a value for an error message, cut short (a mutated config may hold a 400-digit number)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_duration(seconds: float) -> str:
    """Proto-JSON text of a Duration: 1.0 -> "1s", 0.25 -> "0.25s"."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{seconds:.9f}".rstrip("0") + "s"


# --------------------------------------------------------------------------- text

# PGV's well-known regexes. Non-strict (`strict: false`, what Envoy uses for most
# header fields) only forbids the bytes that would split a header: NUL, CR, LF.
# Strict HTTP_HEADER_VALUE forbids every control character but horizontal tab.
_HEADER_BREAKING = re.compile(r"[\x00\r\n]")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class ConstrainedStr(str):
    """Text with a PGV string rule: a minimum length, a maximum in UTF-8 bytes, forbidden characters."""

    min_length: ClassVar[int] = 0
    max_bytes: ClassVar[int | None] = None
    forbidden: ClassVar[re.Pattern[str] | None] = None
    forbidden_text: ClassVar[str] = ""

    @classmethod
    def parse(cls, value: object) -> ConstrainedStr:
        """`value` as this type, or ValueError saying which rule it breaks."""
        if not isinstance(value, str):
            raise ValueError(f"Expected `str`, got `{type(value).__name__}`")
        if len(value) < cls.min_length:
            raise ValueError("must not be empty")
        if cls.max_bytes is not None and len(value.encode("utf-8", "surrogatepass")) > cls.max_bytes:
            raise ValueError(f"must be at most {cls.max_bytes} bytes (UTF-8)")
        if cls.forbidden is not None and (bad := cls.forbidden.search(value)) is not None:
            raise ValueError(f"must not contain {cls.forbidden_text} (found {bad.group()!r})")
        return cls(value)


class HttpText(ConstrainedStr):
    """PGV non-strict HTTP_HEADER_NAME / HTTP_HEADER_VALUE: anything but NUL, CR and LF."""

    forbidden = _HEADER_BREAKING
    forbidden_text = "NUL, CR or LF"


class NonEmptyHttpText(HttpText):
    """HttpText with `min_len: 1` (header names to match, hash or remove)."""

    min_length = 1


class HeaderKey(NonEmptyHttpText):
    """HeaderValue.key: `min_len: 1`, `max_bytes: 16384`, non-strict HTTP_HEADER_NAME."""

    max_bytes = 16384


class HeaderValueText(HttpText):
    """HeaderValue.value: `max_bytes: 16384`, non-strict HTTP_HEADER_VALUE."""

    max_bytes = 16384


class StrictHttpText(ConstrainedStr):
    """PGV strict HTTP_HEADER_VALUE: no control characters except horizontal tab."""

    forbidden = _CONTROL
    forbidden_text = "control characters other than tab"


class NonEmptyStrictHttpText(StrictHttpText):
    """StrictHttpText with `min_len: 1` (a health check's path)."""

    min_length = 1


class QueryParameterName(ConstrainedStr):
    """QueryParameterMatcher.name: `min_len: 1`, `max_bytes: 1024`."""

    min_length = 1
    max_bytes = 1024
