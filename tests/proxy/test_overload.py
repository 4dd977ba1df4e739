"""The overload manager's arithmetic and worker state (overload.py), and the connections table the workers share
(downstream_connections.py), without processes."""

from __future__ import annotations

import random

import msgspec
import pytest

from pylon.config.envoy import OverloadManager, dec_hook
from pylon.proxy.downstream_connections import ConnectionCounts, ConnectionGate
from pylon.proxy.overload import WorkerOverload, action_scales
from pylon.stats.store import Counter

HEAP = "envoy.resource_monitors.fixed_heap"
HEAP_TYPE = "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"


def manager(*actions: dict) -> OverloadManager:
    return msgspec.convert({"resource_monitors": [{"name": HEAP, "typed_config": {
        "@type": HEAP_TYPE, "max_heap_size_bytes": 100}}], "actions": list(actions)}, OverloadManager,
        dec_hook=dec_hook)


def action(name: str, **trigger: dict) -> dict:
    return {"name": f"envoy.overload_actions.{name}", "triggers": [{"name": HEAP, **trigger}]}


def test_threshold_and_scaled_triggers() -> None:
    config = manager(action("stop_accepting_requests", threshold={"value": 0.9}),
                     action("disable_http_keepalive", scaled={"scaling_threshold": 0.5, "saturation_threshold": 0.9}))
    at = {p: action_scales(config, {HEAP: p}) for p in (0.4, 0.5, 0.7, 0.9, 1.5)}
    keepalive = "envoy.overload_actions.disable_http_keepalive"
    requests = "envoy.overload_actions.stop_accepting_requests"
    assert [at[p][requests] for p in at] == [0, 0, 0, 1, 1]
    assert [round(at[p][keepalive], 6) for p in at] == [0, 0, 0.5, 1, 1]
    assert action_scales(config, {}) == {requests: 0.0, keepalive: 0.0}  # not measured yet: off


def test_worker_overload_draws_with_the_scale() -> None:
    overload = WorkerOverload(random.Random(7))
    paused: list[bool] = []
    overload.on_accepting = paused.append
    assert not overload.refuses_request() and not overload.rejects_connection()
    overload.update({"envoy.overload_actions.stop_accepting_requests": 0.25,
                     "envoy.overload_actions.stop_accepting_connections": 1.0})
    refused = sum(overload.refuses_request() for _ in range(4000))
    assert 800 < refused < 1200
    assert paused == [False]
    overload.update({})
    assert paused == [False, True] and not overload.refuses_request()


def test_refused_actions_say_why() -> None:
    with pytest.raises(msgspec.ValidationError, match="reduce_timeouts: not supported yet"):
        manager(action("reduce_timeouts", threshold={"value": 0.9}))


def test_the_limit_holds_across_workers_and_frees_on_close() -> None:
    table = ConnectionCounts.create(2)
    failed = Counter("failed")
    try:
        first, second = ConnectionGate(table, 0, 3, failed), ConnectionGate(table, 1, 3, failed)
        assert first.admit() and second.admit() and first.admit()
        assert not second.admit() and failed.value == 1
        first.adopted()  # an adoption ends: it opens (counted again) or fails (gone)
        first.opened()
        assert table.total() == 3 and not first.admit()
        first.closed()
        assert second.admit() and table.total() == 3
        ConnectionGate(table, 0, 3, failed)  # worker 0 restarted: its connections died with it
        assert table.total() == 2  # worker 1's two
    finally:
        table.close()
