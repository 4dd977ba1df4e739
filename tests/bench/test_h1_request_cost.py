"""benchmarks/h1_request_cost.py: each variant it offers really runs its filter (or the JSON log) on a proxied
request, so the bytecodes it counts are the filter's."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest

from pylon.proxy.access_log import Destination

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports filter_cost beside it
    return importlib.import_module("h1_request_cost")


def test_every_offered_variant_answers_200(script: ModuleType) -> None:
    offered = [v for v in script.filter_cost.VARIANTS if v not in script.UNSUPPORTED]
    assert {"plain", "cors", "rbac", "header_mutation", "stateful_session"} <= set(offered)
    for variant in offered:
        one = script.exchange(variant)
        for _ in range(3):  # the pool's connection is reused
            assert one().startswith(b"HTTP/1.1 200 OK\r\n"), variant


def test_the_filters_act(script: ModuleType) -> None:
    cors = script.exchange("cors")()
    assert b"access-control-allow-origin: http://bench.example\r\n" in cors
    assert b"access-control-allow-origin" not in script.exchange("plain")()


def test_the_json_log_formats_each_request(script: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[bytes] = []
    one = script.exchange("plain", json_log=True)
    monkeypatch.setattr(Destination, "write", lambda destination, line: lines.append(line))
    one()
    one()
    assert len(lines) == 2 and b'"response_code":200' in lines[0]


def test_a_variant_needing_more_than_the_connection_manager_is_refused(script: ModuleType) -> None:
    with pytest.raises(SystemExit, match="ext_authz"):
        script.exchange("ext_authz")


def test_per_connection_each_request_has_a_connection_that_closes(script: ModuleType) -> None:
    """--per-connection: a new connection per request, answered with `connection: close` (the script asserts that
    the connection closed): what the handshake benchmarks' clients cost besides TLS."""
    one = script.exchange("plain", per_connection=True)
    answers = [one() for _ in range(3)]
    for answer in answers:
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 200 ok\r\n") and b"\r\nconnection: close" in head
