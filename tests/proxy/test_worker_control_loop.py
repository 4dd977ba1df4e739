"""A worker's control loop: every order answered, and an order that fails ends the worker instead of leaving the
supervisor waiting (the supervisor restarts a worker that exits; see test_proxy_worker_restart.py)."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest

from pylon.proxy import control
from pylon.proxy.worker import _control_loop


class _Stats:
    def snapshot(self) -> dict[str, Any]:
        return {"counters": {"x": 1}}


class _Worker:
    """What the control loop uses of a Worker; `apply_dynamic` fails when told to."""

    worker_id = 0

    def __init__(self, fail: bool) -> None:
        self.stats = _Stats()
        self.fail = fail
        self.applied: list[dict[str, Any]] = []

    async def apply_dynamic(self, document: dict[str, Any]) -> None:
        if self.fail:
            raise KeyError("a listener socket this worker never got")
        self.applied.append(document)


async def _exchange(worker: _Worker, orders: list[dict[str, Any]]) -> tuple[list[dict[str, Any] | None], Any]:
    """Send `orders` one by one through a real socketpair; the replies (None: the channel ended) and the loop task."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    worker_reader, worker_writer = await asyncio.open_connection(sock=theirs)
    loop_task = asyncio.create_task(_control_loop(worker, worker_reader, worker_writer, 1.0, asyncio.Event()))  # type: ignore[arg-type]
    replies = []
    for order in orders:
        writer.write(control.encode(order))
        await writer.drain()
        done, _ = await asyncio.wait({loop_task, asyncio.ensure_future(control.read_message(reader))}, timeout=5,
                                     return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        reply = next((t.result() for t in done if t is not loop_task), None)
        replies.append(reply)
        if loop_task.done():
            break
    writer.close()
    return replies, loop_task


def test_orders_are_answered_with_their_ids() -> None:
    worker = _Worker(fail=False)

    async def run() -> list[dict[str, Any] | None]:
        replies, task = await _exchange(worker, [{"op": "stats", "id": 1}, {"op": "dynamic", "dynamic": {"v": 2},
                                                                              "id": 2}, {"op": "nope", "id": 3}])
        task.cancel()
        return replies

    replies = asyncio.run(run())
    assert replies == [{"stats": {"counters": {"x": 1}}, "id": 1}, {"ok": True, "id": 2},
                       {"error": "unknown op 'nope'", "id": 3}]
    assert worker.applied == [{"v": 2}]


def test_a_failed_order_ends_the_loop_with_its_error_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Seen in the mesh demo: a worker's `dynamic` order raised, the loop task died silently, and the supervisor
    waited for its reply while every later push queued behind it (the gateway never got its listener)."""

    async def run() -> tuple[list[dict[str, Any] | None], BaseException | None]:
        replies, task = await _exchange(_Worker(fail=True), [{"op": "dynamic", "dynamic": {}, "id": 7}])
        await asyncio.wait({task}, timeout=5)
        return replies, task.exception() if task.done() else None

    with caplog.at_level(logging.CRITICAL, logger="pylon.worker"):
        replies, error = asyncio.run(run())
    assert replies == [None]  # no reply: the worker leaves, the supervisor's read ends at the channel's close
    assert isinstance(error, KeyError)
    assert "the supervisor's 'dynamic' order failed; exiting to be restarted" in caplog.text
