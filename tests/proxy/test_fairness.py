"""The read budget per I/O phase: reads over it wait for the phase's end, in order, and are all served."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import uvloop

from pylon.config.loader import parse_bootstrap
from pylon.proxy import codec_select
from pylon.proxy.dynamic import DynamicConfig
from pylon.proxy.fairness import PhaseBudget
from pylon.proxy.hcm import HttpConnection
from pylon.proxy.worker import Worker
from pylon.stats.store import StatsStore
from tests.proxy.conftest import http_listener


def test_budget_is_spent_then_refilled_when_the_phase_ends() -> None:
    async def phases() -> list[list[bool]]:
        budget = PhaseBudget(asyncio.get_running_loop(), limit=2)
        first = [budget.spend() for _ in range(4)]
        await asyncio.sleep(0)  # the phase's callbacks run: the budget is whole again
        return [first, [budget.spend() for _ in range(3)]]

    assert uvloop.run(phases()) == [[True, True, False, False], [True, True, False]]


def echo_route() -> dict[str, Any]:
    return {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "served"}}}


async def read_answers(reader: asyncio.StreamReader, count: int) -> bytes:
    data = b""
    while data.count(b"HTTP/1.1 200") < count or not data.endswith(b"served"):
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


async def exchange_all(port: int, requests: list[bytes]) -> list[bytes]:
    """One connection per payload, all sent at once; once answered, each sends one more request."""
    streams = [await asyncio.open_connection("127.0.0.1", port) for _ in requests]
    for (_, writer), payload in zip(streams, requests):
        writer.write(payload)
    replies = [await read_answers(reader, payload.count(b"GET ")) for (reader, _), payload in zip(streams, requests)]
    for _, writer in streams:
        writer.write(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")  # read only if a parked connection reads on
    replies = [reply + await read_answers(reader, 1) for (reader, _), reply in zip(streams, replies)]
    for _, writer in streams:
        writer.close()
    return replies


def test_reads_over_the_budget_are_parked_and_served_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a budget of one read per phase, four clients writing at once: three reads wait, none is lost."""
    parked: list[int] = []

    class Counting(HttpConnection):  # (a compiled HttpConnection is an extension type: its methods stay put)
        __slots__ = ()

        def _read_parked(self) -> None:
            parked.append(len(self.parked or ()))
            super()._read_parked()

    monkeypatch.setattr(codec_select, "HttpConnection", Counting)
    listen = socket.socket()
    listen.bind(("127.0.0.1", 0))
    listen.listen(16)
    port = listen.getsockname()[1]
    bootstrap = parse_bootstrap({"static_resources": {"listeners": [http_listener("main", port, [echo_route()])]}},
                                "test")
    pipelined = b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(3))
    requests = [pipelined, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", pipelined, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]

    async def scenario() -> list[bytes]:
        worker = Worker(0, asyncio.get_running_loop())
        worker.read_budget.limit = 1
        await worker.start(bootstrap, [[listen.detach()]], DynamicConfig(bootstrap, StatsStore()).document())
        try:
            return await exchange_all(port, requests)
        finally:
            await worker.drain(0.1)

    replies = uvloop.run(scenario())
    assert [reply.count(b"HTTP/1.1 200") for reply in replies] == [4, 2, 4, 2]
    assert parked, "no read was parked: the budget was not applied"
