"""Envoy's access log filters as predicates over a record (sans-IO), and the loggers that apply them."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from pylon.config.envoy import AccessLogFilter, convert
from pylon.proxy.access_log import AccessLogger, AccessLogRecord
from pylon.proxy.access_log_filter import compile_filter
from pylon.regex import get_engine


def predicate(spec: dict[str, Any]):
    return compile_filter(convert(spec, AccessLogFilter), get_engine())


def comparison(kind: str, op: str, value: int) -> dict[str, Any]:
    return {kind: {"comparison": {"op": op, "value": {"default_value": value, "runtime_key": "k"}}}}


@pytest.mark.parametrize("op, code, expected", [
    ("EQ", 404, True), ("EQ", 403, False), ("GE", 500, True), ("GE", 399, False),
    ("LE", 400, True), ("LE", 401, False), ("NE", 404, False), ("NE", 200, True),
])
def test_status_code_comparisons(op: str, code: int, expected: bool) -> None:
    value = {"EQ": 404, "GE": 400, "LE": 400, "NE": 404}[op]
    assert predicate(comparison("status_code_filter", op, value))(AccessLogRecord(response_code=code)) is expected


def test_no_response_compares_as_code_zero() -> None:
    assert predicate(comparison("status_code_filter", "EQ", 0))(AccessLogRecord())
    assert not predicate(comparison("status_code_filter", "GE", 1))(AccessLogRecord())


def test_duration_in_whole_milliseconds() -> None:
    at_least_100 = predicate(comparison("duration_filter", "GE", 100))
    assert at_least_100(AccessLogRecord(duration=100.7)) and not at_least_100(AccessLogRecord(duration=99.9))


def test_health_checks_are_told_apart() -> None:
    not_health = predicate({"not_health_check_filter": {}})
    assert not_health(AccessLogRecord()) and not not_health(AccessLogRecord(health_check=True))


def test_response_flags_any_of_the_named_or_any_at_all() -> None:
    named = predicate({"response_flag_filter": {"flags": ["UH", "NR"]}})
    assert named(AccessLogRecord(response_flags="UF,URX,NR")) and not named(AccessLogRecord(response_flags="UF"))
    assert not named(AccessLogRecord(response_flags="-"))
    any_flag = predicate({"response_flag_filter": {}})
    assert any_flag(AccessLogRecord(response_flags="UT")) and not any_flag(AccessLogRecord(response_flags="-"))


def test_header_filter_reads_headers_and_pseudo_headers() -> None:
    tagged = predicate({"header_filter": {"header": {"name": "x-log", "exact_match": "yes"}}})
    assert tagged(AccessLogRecord(request_headers=[(b"x-log", b"yes")]))
    assert not tagged(AccessLogRecord(request_headers=[(b"x-log", b"no")])) and not tagged(AccessLogRecord())
    api = predicate({"header_filter": {"header": {"name": ":path", "prefix_match": "/api/"}}})
    assert api(AccessLogRecord(path="/api/v1")) and not api(AccessLogRecord(path="/web"))


def test_and_or_combine_in_order() -> None:
    error_or_flagged = predicate({"or_filter": {"filters": [comparison("status_code_filter", "GE", 500),
                                                            {"response_flag_filter": {"flags": ["NR"]}}]}})
    assert error_or_flagged(AccessLogRecord(response_code=503))
    assert error_or_flagged(AccessLogRecord(response_code=404, response_flags="NR"))
    assert not error_or_flagged(AccessLogRecord(response_code=404, response_flags="-"))
    both = predicate({"and_filter": {"filters": [comparison("status_code_filter", "GE", 400),
                                                 {"not_health_check_filter": {}}]}})
    assert both(AccessLogRecord(response_code=503)) and not both(AccessLogRecord(response_code=503, health_check=True))


class _Lines:
    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def write(self, line: bytes) -> None:
        self.lines.append(line)


def test_a_logger_writes_only_what_passes_its_filter() -> None:
    out = _Lines()
    logger = AccessLogger(lambda r: b"%d\n" % r.response_code, out,  # type: ignore[arg-type]
                          predicate(comparison("status_code_filter", "GE", 400)))
    for code in (200, 404, 503, 301):
        logger.log(AccessLogRecord(response_code=code))
    assert out.lines == [b"404\n", b"503\n"]


def test_unsupported_kinds_are_refused_by_name() -> None:
    with pytest.raises(msgspec.ValidationError, match="runtime_filter"):
        convert({"runtime_filter": {"runtime_key": "a"}}, AccessLogFilter)
