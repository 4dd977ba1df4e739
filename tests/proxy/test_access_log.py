"""Access log formats (text, JSON, Envoy's default) and the buffered file writer."""

from __future__ import annotations

import asyncio
import calendar
import json
import socket
import time
from pathlib import Path

import msgspec
import pytest

from pylon.config.datasource import DataSource
from pylon.config.envoy import AccessLog, FileAccessLog, StdoutAccessLog, SubstitutionFormatString
from pylon.proxy.access_log import (
    DEFAULT_FORMAT,
    AccessLogRecord,
    AccessLogWriter,
    build_access_loggers,
    compile_json_format,
    compile_log_format,
    compile_text_format,
)

# 2024-03-05T06:07:08.123456Z
START = calendar.timegm((2024, 3, 5, 6, 7, 8)) + 0.123456


def http_record(**overrides: object) -> AccessLogRecord:
    fields: dict[str, object] = dict(
        method="GET", path="/items?id=1", protocol="HTTP/1.1", authority="example.com", scheme="http",
        request_headers=[(b"host", b"example.com"), (b"user-agent", b"curl/8.5.0"),
                         (b"x-request-id", b"4f1c"), (b"x-forwarded-for", b"10.0.0.9")],
        response_code=200, response_code_details="via_upstream", response_flags="",
        response_headers=[(b"content-type", b"text/plain"), (b"x-envoy-upstream-service-time", b"3")],
        bytes_received=12, bytes_sent=345, duration=7.8, request_duration=1.2, response_duration=5.9,
        upstream_host=("10.1.2.3", 8080), upstream_cluster="backend", upstream_local_address=("10.1.2.1", 40000),
        downstream_remote=("192.0.2.7", 51515), downstream_local=("127.0.0.1", 10000),
        route_name="items", connection_id=42,
    )
    fields.update(overrides)
    return AccessLogRecord(START, **fields)  # type: ignore[arg-type]


def text(fmt: str, record: AccessLogRecord, omit_empty_values: bool = False) -> str:
    return compile_text_format(fmt, omit_empty_values)(record).decode()


@pytest.mark.parametrize(
    ("operator", "expected"),
    [
        ("%START_TIME%", "2024-03-05T06:07:08.123Z"),
        ("%REQ(:METHOD)%", "GET"),
        ("%REQ(:PATH)%", "/items?id=1"),
        ("%REQ(:AUTHORITY)%", "example.com"),
        ("%REQ(HOST)%", "example.com"),
        ("%REQ(:SCHEME)%", "http"),
        ("%REQ(User-Agent)%", "curl/8.5.0"),
        ("%RESP(CONTENT-TYPE)%", "text/plain"),
        ("%REQUEST_HEADER(User-Agent)%", "curl/8.5.0"),
        ("%REQUEST_HEADER(X-MISSING?:AUTHORITY):4%", "exam"),
        ("%RESPONSE_HEADER(CONTENT-TYPE)%", "text/plain"),
        ("%RESPONSE_HEADER(X-MISSING)%", "-"),
        ("%PROTOCOL%", "HTTP/1.1"),
        ("%RESPONSE_CODE%", "200"),
        ("%RESPONSE_FLAGS%", "-"),
        ("%RESPONSE_CODE_DETAILS%", "via_upstream"),
        ("%BYTES_RECEIVED%", "12"),
        ("%BYTES_SENT%", "345"),
        ("%DURATION%", "7"),
        ("%REQUEST_DURATION%", "1"),
        ("%RESPONSE_DURATION%", "5"),
        ("%UPSTREAM_HOST%", "10.1.2.3:8080"),
        ("%UPSTREAM_CLUSTER%", "backend"),
        ("%UPSTREAM_LOCAL_ADDRESS%", "10.1.2.1:40000"),
        ("%UPSTREAM_TRANSPORT_FAILURE_REASON%", "-"),
        ("%DOWNSTREAM_REMOTE_ADDRESS%", "192.0.2.7:51515"),
        ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "192.0.2.7"),
        ("%DOWNSTREAM_LOCAL_ADDRESS%", "127.0.0.1:10000"),
        ("%DOWNSTREAM_LOCAL_PORT%", "10000"),
        ("%DOWNSTREAM_REMOTE_PORT%", "51515"),
        ("%ROUTE_NAME%", "items"),
        ("%CONNECTION_ID%", "42"),
        ("%HOSTNAME%", socket.gethostname()),
    ],
)
def test_each_operator(operator: str, expected: str) -> None:
    assert text(operator, http_record()) == expected


def test_flags_ipv6_and_failure_reason() -> None:
    record = http_record(response_flags="UF,URX", upstream_host=("::1", 80), downstream_remote=("::1", 5000, 0, 0),
                         upstream_transport_failure_reason="connection refused", response_code=503)
    assert text("%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_HOST% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% "
                "%UPSTREAM_TRANSPORT_FAILURE_REASON%", record) == "503 UF,URX [::1]:80 ::1 connection refused"


def test_header_fallback_and_truncation() -> None:
    assert text("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", http_record()) == "/items?id=1"
    assert text("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", http_record(original_path="/orig")) == "/orig"
    assert text("%REQ(X-MISSING?USER-AGENT)%", http_record()) == "curl/8.5.0"
    assert text("%REQ(USER-AGENT):4%", http_record()) == "curl"
    assert text("%REQ(X-MISSING?USER-AGENT):2%", http_record()) == "cu"
    assert text("%RESP(X-MISSING)%", http_record()) == "-"


def test_first_of_repeated_headers_wins() -> None:
    record = http_record(request_headers=[(b"x-tag", b"one"), (b"x-tag", b"two")])
    assert text("%REQ(X-TAG)%", record) == "one"


def test_start_time_custom_formats() -> None:
    record = http_record()
    assert text("%START_TIME(%Y/%m/%d %H:%M:%S)%", record) == "2024/03/05 06:07:08"
    assert text("%START_TIME(%s)%", record) == str(int(START))
    assert text("%START_TIME(%H:%M:%S.%3f)%", record) == "06:07:08.123"
    assert text("%START_TIME(%6f|%E2S)%", record) == "123456|08.12"


def test_start_time_changes_with_the_second() -> None:
    fmt = compile_text_format("%START_TIME%")
    assert fmt(http_record()) == b"2024-03-05T06:07:08.123Z"
    assert fmt(AccessLogRecord(START + 61.5)) == b"2024-03-05T06:08:09.623Z"


def test_default_format_matches_envoy() -> None:
    line = compile_log_format(None)(http_record())
    assert line == (
        b'[2024-03-05T06:07:08.123Z] "GET /items?id=1 HTTP/1.1" 200 - 12 345 7 3 '
        b'"10.0.0.9" "curl/8.5.0" "4f1c" "example.com" "10.1.2.3:8080"\n'
    )
    assert compile_text_format(DEFAULT_FORMAT)(http_record()) == line


def test_ports_of_a_unix_address_are_unset() -> None:
    record = http_record(downstream_local="/tmp/listener.sock", downstream_remote=None)
    assert text("%DOWNSTREAM_LOCAL_PORT% %DOWNSTREAM_REMOTE_PORT%", record) == "- -"


def test_tcp_record_prints_dashes_for_http_fields() -> None:
    record = AccessLogRecord(START, bytes_received=10, bytes_sent=20, duration=3.0,
                             upstream_host=("10.0.0.1", 5432), downstream_remote=("10.0.0.2", 999))
    assert compile_log_format(None)(record) == (
        b'[2024-03-05T06:07:08.123Z] "- - -" - - 10 20 3 - "-" "-" "-" "-" "10.0.0.1:5432"\n'
    )
    assert text("%PROTOCOL%|%RESPONSE_CODE%", record, omit_empty_values=True) == "|"


def test_record_filled_by_attribute_assignment() -> None:
    record = AccessLogRecord()
    record.start_time = START
    record.upstream_host = "10.9.9.9:80"  # already formatted by the data path
    record.response_code = 204
    assert text("%START_TIME% %UPSTREAM_HOST% %RESPONSE_CODE% %BYTES_SENT%", record) == (
        "2024-03-05T06:07:08.123Z 10.9.9.9:80 204 0"
    )


def test_literal_text_is_kept_as_is() -> None:
    assert text("100% {done} %%PROTOCOL%\n", http_record()) == "100% {done} %HTTP/1.1\n"


JSON_FORMAT = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "code": "%RESPONSE_CODE%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "flags": "%RESPONSE_FLAGS%",
    "upstream": {"host": "%UPSTREAM_HOST%", "cluster": "%UPSTREAM_CLUSTER%"},
    "summary": "%REQ(:METHOD)% %RESPONSE_CODE% %UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "constant": 7,
}


def test_json_keeps_numbers_and_nesting_and_nulls_unset_values() -> None:
    line = compile_json_format(JSON_FORMAT)(http_record())
    assert line.endswith(b"\n")
    assert json.loads(line) == {
        "start_time": "2024-03-05T06:07:08.123Z", "method": "GET", "code": 200, "bytes_sent": 345,
        "duration": 7, "flags": None, "upstream": {"host": "10.1.2.3:8080", "cluster": "backend"},
        "summary": "GET 200 -", "constant": 7,
    }


def test_json_omit_empty_values_drops_unset_keys() -> None:
    record = AccessLogRecord(START, bytes_sent=0)
    assert json.loads(compile_json_format(JSON_FORMAT, omit_empty_values=True)(record)) == {
        "start_time": "2024-03-05T06:07:08.123Z", "bytes_sent": 0, "upstream": {}, "summary": "  ", "constant": 7,
    }


def test_log_format_config_structs() -> None:
    text_config = msgspec.convert(
        {"text_format_source": {"inline_string": "%RESPONSE_CODE% %ROUTE_NAME%\n"}, "omit_empty_values": True},
        SubstitutionFormatString,
    )
    assert compile_log_format(text_config)(http_record(route_name=None)) == b"200 \n"
    json_config = SubstitutionFormatString(json_format={"code": "%RESPONSE_CODE%"})
    assert compile_log_format(json_config)(http_record()) == b'{"code":200}\n'


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("%NOT_AN_OPERATOR%", "%NOT_AN_OPERATOR%"),
        ("%PROTOCOL(x)%", "takes no argument"),
        ("%REQ%", "needs an argument"),
        ("%BYTES_SENT:3%", "maximum length"),
        ("%REQ(A?B?C)%", "A?B?C"),
    ],
)
def test_bad_operators_fail_at_build_time(fmt: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        compile_text_format(fmt)
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        compile_json_format({"nested": {"key": fmt}})


def test_formatting_is_cheap() -> None:
    fmt = compile_json_format({k: v for k, v in JSON_FORMAT.items() if k != "summary"})
    record = http_record()
    rounds = 20000
    best = min(_time(fmt, record, rounds) for _ in range(3))
    assert best < 10e-6  # measured ~1.5 µs; the bound only catches a regression to per-line parsing


def _time(fmt, record, rounds):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for _ in range(rounds):
        fmt(record)
    return (time.perf_counter() - start) / rounds


def test_file_logger_writes_lines_after_flush(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    writer = AccessLogWriter(buffer_limit=1 << 20)
    entry = AccessLog(typed_config=FileAccessLog(path=str(path), log_format=SubstitutionFormatString(
        text_format_source=DataSource(inline_string="%REQ(:PATH)% %RESPONSE_CODE%\n"))))
    (logger,) = build_access_loggers([entry], writer)
    logger.log(http_record(path="/a"))
    logger.log(http_record(path="/b", response_code=404))
    assert path.read_bytes() == b""  # buffered, nothing written yet
    writer.close()
    assert path.read_text() == "/a 200\n/b 404\n"


def test_loggers_of_one_path_share_the_file_and_full_buffers_are_written(tmp_path: Path) -> None:
    path = tmp_path / "shared.log"
    writer = AccessLogWriter(buffer_limit=64)
    entries = [AccessLog(typed_config=FileAccessLog(path=str(path))) for _ in range(2)]
    first, second = build_access_loggers(entries, writer)
    assert first.destination is second.destination
    first.log(http_record())  # one default-format line is over 64 bytes: handed off at once
    deadline = time.monotonic() + 5
    while not path.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert path.read_bytes().startswith(b"[2024-03-05T06:07:08.123Z]")
    writer.close()


def test_timer_flushes_on_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "timed.log"
    writer = AccessLogWriter(flush_interval=0.05)
    (logger,) = build_access_loggers([AccessLog(typed_config=FileAccessLog(path=str(path)))], writer)

    async def main() -> None:
        writer.start(asyncio.get_running_loop())
        logger.log(http_record())
        for _ in range(100):
            await asyncio.sleep(0.02)
            if path.read_bytes():
                return

    asyncio.run(main())
    assert path.read_bytes().count(b"\n") == 1
    writer.close()


def test_stdout_logger(capfd: pytest.CaptureFixture[str]) -> None:
    writer = AccessLogWriter()
    config = StdoutAccessLog(log_format=SubstitutionFormatString(json_format={"code": "%RESPONSE_CODE%"}))
    (logger,) = build_access_loggers([AccessLog(typed_config=config)], writer)
    logger.log(http_record())
    writer.close()
    assert capfd.readouterr().out == '{"code":200}\n'


def test_writer_drops_instead_of_growing_without_bound(tmp_path: Path) -> None:
    writer = AccessLogWriter(buffer_limit=1 << 20, max_pending=10)
    (logger,) = build_access_loggers([AccessLog(typed_config=FileAccessLog(path=str(tmp_path / "x.log")))], writer)
    logger.log(http_record())
    writer.flush()
    assert writer.dropped_bytes > 10
    writer.close()
    assert (tmp_path / "x.log").read_bytes() == b""
