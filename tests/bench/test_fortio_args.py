"""Fortio flag spellings: single and double dash, Go booleans, repeatable -H, clear errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pylon.bench.cli import load
from pylon.bench.fortio_args import (
    LoadUsageError, format_go_duration, grpc_target, parse_go_duration, parse_load_args, parse_target,
)

URL = "http://127.0.0.1:8080/x?y=1"


def test_defaults_match_fortio() -> None:
    o = parse_load_args([URL])
    assert (o.qps, o.connections, o.duration, o.exactly, o.timeout, o.resolution) == (8.0, 4, 5.0, 0, 3.0, 0.001)
    assert o.percentiles == (50.0, 75.0, 90.0, 99.0, 99.9)
    assert o.keepalive and not o.insecure and not o.new_connection and o.procs == 1


@pytest.mark.parametrize("dash", ["-", "--"])
def test_single_and_double_dash(dash: str) -> None:
    o = parse_load_args([f"{dash}qps", "100", f"{dash}c", "8", f"{dash}t", "1m30s", f"{dash}p", "50,99",
                         f"{dash}labels", "run a", f"{dash}timeout", "250ms", f"{dash}abort-on", "-1",
                         f"{dash}connection-reuse", "5:10", f"{dash}procs", "2", f"{dash}json", "-", URL])
    assert (o.qps, o.connections, o.duration, o.percentiles, o.labels) == (100.0, 8, 90.0, (50.0, 99.0), "run a")
    assert (o.timeout, o.abort_on, o.connection_reuse, o.procs, o.json_path) == (0.25, -1, (5, 10), 2, "-")


def test_go_equals_syntax_and_booleans() -> None:
    o = parse_load_args(["-qps=0", "-n=100", "-keepalive=false", "-k", "-jitter=true", "-uniform",
                         "--new-connection", URL])
    assert (o.qps, o.exactly, o.keepalive, o.insecure, o.jitter, o.uniform, o.new_connection) == (
        0.0, 100, False, True, True, True, True)
    assert parse_load_args(["-https-insecure=false", URL]).insecure is False


def test_repeatable_headers_method_and_payload() -> None:
    o = parse_load_args(["-H", "Host: example.com", "--H", "X-A:b", "-payload", "hi", "-content-type",
                         "text/plain", URL])
    assert o.headers == (("Host", "example.com"), ("X-A", "b"))
    assert (o.http_method, o.payload, o.content_type) == ("POST", b"hi", "text/plain")
    assert len(parse_load_args(["-payload-size", "64", "-X", "put", URL]).payload) == 64
    assert parse_load_args(["-X", "put", URL]).http_method == "PUT"


@pytest.mark.parametrize("argv", [
    ["-qps", "fast", URL], ["-bogus", URL], ["-c", "0", URL], ["-H", "nocolon", URL], [],
    ["ftp://x/"], ["http://:80/"], ["http://a:99999/"], ["-p", "100", URL], ["-cert", "c.pem", URL],
    ["-connection-reuse", "5:2", URL], ["-t", "5 parsecs", URL], ["-procs", "3", "-c", "2", URL],
])
def test_bad_flags_and_urls_raise(argv: list[str]) -> None:
    with pytest.raises(LoadUsageError):
        parse_load_args(argv)


def test_cli_bad_flag_exits_2_with_a_message() -> None:
    result = CliRunner().invoke(load, ["-qps", "fast", URL])
    assert result.exit_code == 2
    assert "invalid number 'fast'" in result.output
    result = CliRunner().invoke(load, ["gopher://x/"])
    assert result.exit_code == 2 and "scheme must be http or https" in result.output


def test_cli_help_exits_0() -> None:
    result = CliRunner().invoke(load, ["-h"])
    assert result.exit_code == 0 and "-qps" in result.output


def test_targets() -> None:
    t = parse_target("localhost:9000/a?b=c")
    assert (t.scheme, t.host, t.port, t.path, t.authority) == ("http", "localhost", 9000, "/a?b=c", "localhost:9000")
    t = parse_target("https://[::1]/")
    assert (t.tls, t.port, t.authority) == (True, 443, "[::1]")


@pytest.mark.parametrize(("text", "seconds"), [("5s", 5), ("1m30s", 90), ("250ms", 0.25), ("1h", 3600),
                                               ("0", 0), ("2.5", 2.5), ("100us", 1e-4)])
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("seconds", "text"), [(5, "5s"), (60, "1m0s"), (0.25, "250ms"), (3661.5, "1h1m1.5s"),
                                               (0, "0s"), (90, "1m30s")])
def test_go_duration_strings(seconds: float, text: str) -> None:
    assert format_go_duration(seconds) == text


@pytest.mark.parametrize("destination, cacert, expected", [
    ("echo", "", ("http", "echo", 8079, "echo:8079")),
    ("127.0.0.1:9000", "", ("http", "127.0.0.1", 9000, "127.0.0.1:9000")),
    ("http://echo/some/path", "", ("http", "echo", 80, "echo:80")),
    ("https://echo", "", ("https", "echo", 443, "echo:443")),
    ("echo:9000", "ca.pem", ("https", "echo", 9000, "echo:9000")),
    ("[::1]:9000", "", ("http", "::1", 9000, "[::1]:9000")),
])
def test_grpc_destinations_as_fortio_reads_them(destination: str, cacert: str, expected: tuple) -> None:
    target = grpc_target(destination, cacert)
    assert (target.scheme, target.host, target.port, target.url) == expected


def test_grpc_and_h2_flags() -> None:
    options = parse_load_args(["-grpc", "-ping", "-s", "4", "-c", "2", "-grpc-ping-delay", "5ms", "-payload", "x",
                               "echo:8079"])
    assert (options.grpc, options.ping, options.streams, options.threads) == (True, True, 4, 8)
    assert options.grpc_ping_delay == pytest.approx(0.005) and options.target.port == 8079
    options = parse_load_args(["-h2", "-c", "3", "http://h/"])
    assert options.h2 and options.threads == 3 and not options.grpc
    assert parse_load_args(["-grpc", "-healthservice", "ping", "h:1"]).health_service == "ping"
    with pytest.raises(LoadUsageError, match="-healthservice is for health checks"):
        parse_load_args(["-grpc", "-ping", "-healthservice", "x", "h:1"])
    with pytest.raises(LoadUsageError, match="-payload-size is for HTTP"):
        parse_load_args(["-grpc", "-ping", "-payload-size", "10", "h:1"])
