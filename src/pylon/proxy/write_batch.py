"""A connection's writes held to the end of the event loop's I/O phase, then made together with every other's.

Why: on this loopback a write to a peer that sleeps (nginx upstream, the load tool) wakes it, and waking a task on
the other CPU of a VM is an interrupt into a halted vCPU: pylon's worker spent 14% of its CPU in that wake-up
(`sock_def_readable` under `write`, perf). Writing each request as the proxy handles it, ~15 µs of Python apart,
let the C peer wake, serve one or two requests and sleep again before the next write: nginx woke 0.44 times per
request and the load tool 0.35, against 0.12 and 0.11 under Envoy. Holding a phase's writes until every ready
socket's callbacks have run wakes each peer once per phase with all of it: 0.06 and 0.06
(benchmarks/wakeups.py; results/wakeups-before-write-batch.md, results/wakeups.md). Measured beside writing at once, same tree and load (wrk -c50,
plain): 32.7 → 28.4 µs of proxy CPU per request; 1.18x requests per CPU-second with the JSON access log, 1.05x
over TLS (benchmarks/results/proxy_ab-write-batch.md).

The held bytes go out in the `call_soon` callbacks, which uvloop runs after the I/O phase (as `fairness.py`'s
parked reads). A writer keeps its own held pieces (`held`), so its bytes stay in order, and sends them before
anything else touches its transport: before a close, or before a tunnel takes the transport over
(`send_held`). A transport already closing (the peer went away) gets nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol
from weakref import WeakKeyDictionary


class HeldWriter(Protocol):
    """A connection whose writes a batch holds: its transport, the batch, the pieces held (None: none), and the
    counter of bytes written (Envoy's downstream_cx_tx_bytes_total or the cluster's upstream_cx_tx_bytes_total)."""

    transport: Any
    batch: "WriteBatch"
    held: list[bytes] | None
    tx_bytes: Any


class WriteBatch:
    """The writers holding bytes in the current phase of one event loop; `run` sends them all."""

    __slots__ = ("loop", "writers")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.writers: list[HeldWriter] = []

    def run(self) -> None:
        writers, self.writers = self.writers, []
        for writer in writers:
            send_held(writer)


def write_later(writer: HeldWriter, data: bytes) -> None:
    """Hold `data` for `writer` until the phase ends (the first piece of a phase schedules the batch's run)."""
    held = writer.held
    if held is None:
        writer.held = [data]
        batch = writer.batch
        if not batch.writers:
            batch.loop.call_soon(batch.run)
        batch.writers.append(writer)
    else:
        held.append(data)


def send_held(writer: HeldWriter) -> None:
    """Write what `writer` holds now, in one write (nothing if its transport is gone or closing)."""
    held = writer.held
    if held is not None:
        writer.held = None
        transport = writer.transport
        if transport is not None and not transport.is_closing():
            data = held[0] if len(held) == 1 else b"".join(held)
            writer.tx_bytes.value += len(data)
            transport.write(data)


_BATCHES: WeakKeyDictionary[Any, WriteBatch] = WeakKeyDictionary()


def write_batch(loop: asyncio.AbstractEventLoop) -> WriteBatch:
    """The batch of `loop` (one per event loop: a worker's, or a test's), made on first use."""
    batch = _BATCHES.get(loop)
    if batch is None:
        batch = _BATCHES[loop] = WriteBatch(loop)
    return batch
