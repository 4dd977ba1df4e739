"""The `offload` provider: private key operations run on a thread pool, off the event loop.

This is the pattern of Envoy's QAT provider (submit, get a completion later,
resume the handshake) with threads in place of an accelerator: the loop keeps
serving other connections while a signature is computed. There is no QAT
hardware here and pylon claims none. The C operation releases the GIL (cffi
does on every call), so the pool really runs beside the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from pylon.keys.hook import HookedKey, lib


class OffloadOps:
    """`KeyOps` for in-process keys, computed by a thread pool."""

    def __init__(self, threads: int = 2) -> None:
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None

    def submit(self, slot: object, done: Callable[[], None]) -> None:
        if self._pool is None:  # created lazily: contexts are also built in processes that never serve
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="pylon-key-offload")
        loop = asyncio.get_running_loop()
        future = self._pool.submit(lib.pk_slot_run, slot)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(done))

    def sign_blocking(self, kind: int, key: HookedKey, data: bytes) -> bytes:
        # The native hook computes in-process keys inline and never asks for this.
        raise RuntimeError("offload keys are computed by the native hook")
