"""The `keyd` provider, proxy side: private key operations go to `pylon keyd`; no key bytes here.

One connection per event loop (worker), opened on first use and pipelined.
Each operation has a deadline (`timeout`): keyd down, slow or refusing →
the operation fails, so the handshake fails within that bound, and one log
line says why. The next operation reconnects, so service returns with keyd.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Callable

from pylon.keys.hook import HookedKey, complete_slot, fail_slot, slot_input
from pylon.keys.keyd.protocol import (FORGET, GENERATE, IMPORT, OK, FrameReader, ProtocolError, Request, decode_response,
                                      encode_request)  # fmt: skip

log = logging.getLogger("pylon.keys.keyd")


class KeydOps:
    """`KeyOps` that forward to keyd at `socket_path` for `key_id`."""

    def __init__(self, socket_path: str, key_id: str, timeout: float) -> None:
        self.socket_path = socket_path
        self.key_id = key_id
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._conn: _KeydClient | None = None
        self._connecting: list[tuple[Request, object, Callable[[], None]]] | None = None
        self.failures = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._down_logged = False

    def submit(self, slot: object, done: Callable[[], None]) -> None:
        request = Request(next(self._ids) & 0xFFFFFFFF, int(slot.kind), self.key_id, slot_input(slot))  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (tests, restarts): start over
            self._loop, self._conn, self._connecting = loop, None, None
        conn = self._conn
        if conn is not None and conn.open:
            conn.send(request, slot, done)
            return
        if self._connecting is None:
            self._connecting = []
            loop.create_task(self._connect())
        self._connecting.append((request, slot, done))

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        waiting = self._connecting or []
        try:
            _, conn = await asyncio.wait_for(
                loop.create_unix_connection(lambda: _KeydClient(self), self.socket_path), self.timeout
            )
        except (OSError, asyncio.TimeoutError) as exc:
            self._connecting = None
            self._down(f"cannot connect: {exc or 'timed out'}")
            for _, slot, done in waiting:
                fail_slot(slot)
                done()
            return
        self._connecting = None
        if self._down_logged:
            log.warning("keyd at %s is reachable again", self.socket_path)
            self._down_logged = False
        self._conn = conn
        for request, slot, done in waiting:
            conn.send(request, slot, done)

    def _down(self, why: str) -> None:
        self.failures += 1
        if not self._down_logged:
            log.error("keyd at %s unavailable (%s); TLS handshakes needing key %r fail", self.socket_path, why,
                      self.key_id)
            self._down_logged = True

    def sign_blocking(self, kind: int, key: HookedKey, data: bytes) -> bytes:
        """For handshakes outside pylon's TLS transport: one blocking round trip, bounded by `timeout`."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
            sock.sendall(encode_request(Request(1, kind, self.key_id, data)))
            reader = FrameReader()
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("keyd closed the connection")
                frames = reader.feed(chunk)
                if frames:
                    response = decode_response(frames[0])
                    if response.status != OK:
                        raise RuntimeError(f"keyd refused: {response.data.decode(errors='replace')}")
                    return response.data


class _KeydClient(asyncio.Protocol):
    """One pipelined connection to keyd; requests matched to responses by id."""

    def __init__(self, ops: KeydOps) -> None:
        self.ops = ops
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, tuple[object, Callable[[], None], asyncio.TimerHandle]] = {}
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.open = True

    def send(self, request: Request, slot: object, done: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.ops.timeout, self._timed_out, request.id)
        self.pending[request.id] = (slot, done, timer)
        assert self.transport is not None
        self.transport.write(encode_request(request))

    def _timed_out(self, request_id: int) -> None:
        entry = self.pending.pop(request_id, None)
        if entry is None:
            return
        slot, done, _ = entry
        self.ops._down(f"no answer within {self.ops.timeout:g}s")
        fail_slot(slot)
        done()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except ProtocolError as exc:
            self.ops._down(str(exc))
            assert self.transport is not None
            self.transport.abort()
            return
        for body in frames:
            response = decode_response(body)
            entry = self.pending.pop(response.id, None)
            if entry is None:
                continue  # answered after its deadline: the handshake already failed
            slot, done, timer = entry
            timer.cancel()
            if response.status == OK:
                complete_slot(slot, response.data)
            else:
                log.error("keyd refused an operation for key %r: %s", self.ops.key_id,
                          response.data.decode(errors="replace"))
                fail_slot(slot)
            done()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self.ops._conn is self:
            self.ops._conn = None
        pending, self.pending = self.pending, {}
        if pending:
            self.ops._down(f"connection lost ({exc or 'closed by keyd'}); keyd drops clients whose uid "
                           "is not allowed and ones it cannot parse")
        for slot, done, timer in pending.values():
            timer.cancel()
            fail_slot(slot)
            done()


class KeydError(Exception):
    """keyd refused or could not be reached; the message says why."""


def generate(socket_path: str, key_id: str, identity_uri: str, timeout: float = 10.0) -> str:
    """Ask keyd to make a key under `key_id` (it never leaves keyd); the CSR for `identity_uri` it signed with it.

    Blocking: an agent calls it off its event loop, once per certificate.
    """
    return _call(socket_path, Request(1, GENERATE, key_id, identity_uri.encode()), timeout).decode()


def import_key(socket_path: str, key_id: str, key_pem: bytes, timeout: float = 10.0) -> bytes:
    """Hand the PEM private key `key_pem` to keyd, which keeps it under `key_id` from then on; the public key (PEM)
    keyd answers with, so the caller can check it is the key it sent.

    Blocking: an agent calls it off its event loop, once per credential version.
    """
    return _call(socket_path, Request(1, IMPORT, key_id, key_pem), timeout)


def forget(socket_path: str, key_id: str, timeout: float = 10.0) -> None:
    """Have keyd drop the key under `key_id` (one this agent made or handed over, no longer served).

    Blocking: an agent calls it off its event loop, once per replaced key.
    """
    _call(socket_path, Request(1, FORGET, key_id, b""), timeout)


def _call(socket_path: str, request: Request, timeout: float) -> bytes:
    """One request, one answer, on a connection of its own; KeydError naming the socket and keyd's reason."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(socket_path)
            sock.sendall(encode_request(request))
            reader = FrameReader()
            while True:
                data = sock.recv(65536)
                if not data:
                    raise KeydError(f"keyd at {socket_path} closed the connection (is this uid allowed?)")
                frames = reader.feed(data)
                if frames:
                    break
        except OSError as exc:
            raise KeydError(f"keyd at {socket_path}: {exc.strerror or exc}") from None
    response = decode_response(frames[0])
    if response.status != OK:
        raise KeydError(f"keyd at {socket_path}: {response.data.decode(errors='replace')}")
    return response.data
