"""benchmarks/generic_lookups.py: what it reads of perf's output."""

from __future__ import annotations

from tests.bench.benchmark_scripts import load_benchmark

lookups = load_benchmark("generic_lookups")


def test_a_probe_line_gives_its_event_type_and_attribute() -> None:
    line = '   pylon_lookups:getmethod: (50f1c0) tp="pylon.proxy.stream.Stream" name="on_upstream_headers"'
    match = lookups._LINE.search(line)
    assert match is not None
    assert match.groups() == ("getmethod", "pylon.proxy.stream.Stream", "on_upstream_headers")
    assert lookups._LINE.search('   probe_other:getattr: (50e0a0) tp="dict" name="get"') is None
