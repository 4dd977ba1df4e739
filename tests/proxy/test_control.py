"""The supervisor <-> worker control channel: replies are matched to their requests by id."""

from __future__ import annotations

import asyncio
import socket

from pylon.proxy import control


async def _slow_first_worker(sock: socket.socket) -> None:
    """Answers every request with its own op; the first answer comes only after 0.3 s."""
    reader, writer = await asyncio.open_connection(sock=sock)
    first = True
    while (message := await control.read_message(reader)) is not None:
        if first:
            await asyncio.sleep(0.3)
            first = False
        writer.write(control.encode({"id": message["id"], "answer": message["op"]}))
        await writer.drain()
    writer.close()


def test_a_late_reply_is_not_taken_by_the_next_request() -> None:
    async def scenario() -> tuple[object, object]:
        ours, theirs = socket.socketpair()
        worker = asyncio.create_task(_slow_first_worker(theirs))
        reader, writer = await asyncio.open_connection(sock=ours)
        client = control.ControlClient(reader, writer)
        timed_out = await client.request({"op": "stats"}, timeout=0.1)
        await asyncio.sleep(0.4)  # the late "stats" reply is now waiting in the channel
        answered = await client.request({"op": "clusters"}, timeout=2.0)
        client.close()
        await worker
        return timed_out, answered

    timed_out, answered = asyncio.run(scenario())
    assert timed_out is None
    assert answered is not None and answered["answer"] == "clusters"
