"""The cryptomb batcher's flush policy: a lone operation goes at once, sustained load fills batches."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pylon.keys import cryptomb
from pylon.keys.hook import DONE, FAILED, RSA_RAW, HookedKey, ffi, install_hooked_key, new_slot
from pylon.keys.signers import PENDING_SIGNERS
from pylon.proxy.tls_transport import tls_protocol_factory
from pylon.stats.store import StatsStore

from .conftest import Reply, client_context, needs_mb

POLL_DELAY = 0.05


@pytest.fixture()
def rsa_key(pki):  # type: ignore[no-untyped-def]
    pem = pki.server_rsa.key.read_bytes()
    private = serialization.load_pem_private_key(pem, password=None)
    return HookedKey(private.public_key(), None, pem), private  # type: ignore[arg-type]


def rsa_slot(hooked: HookedKey) -> object:
    """A raw-RSA operation on a random block below the modulus (leading zero byte)."""
    slot = new_slot()
    slot.kind = RSA_RAW
    slot.key = hooked.native
    slot.in_len = hooked.bits // 8
    ffi.memmove(getattr(slot, "in"), b"\0" + os.urandom(slot.in_len - 1), slot.in_len)
    return slot


def make_busy(ops: cryptomb.CryptoMbOps, now: float) -> None:
    """Feed `ops` a history of operations 0.5 ms apart, ending at `now`."""
    for i in range(80):
        ops._note_arrival(now - (80 - i) * 0.0005)
    assert ops.busy()


def test_busy_follows_the_gap_between_operations() -> None:
    ops = cryptomb.CryptoMbOps(0.010)
    assert not ops.busy()  # nothing seen yet
    for i in range(50):
        ops._note_arrival(i * 0.050)  # 20/s: three more would take 150 ms > poll_delay
    assert not ops.busy()
    now = 2.5
    for _ in range(3):
        now += 0.0001  # a burst after 20/s is not sustained load
        ops._note_arrival(now)
    assert not ops.busy()
    for _ in range(40):
        now += 0.001  # 1000/s: three more arrive within 3 ms <= 10 ms
        ops._note_arrival(now)
    assert ops.busy()
    for _ in range(40):
        now += 0.050
        ops._note_arrival(now)
    assert not ops.busy()  # the average follows the rate back down
    make_busy(ops, now + 60)
    ops._note_arrival(now + 3600)  # an hour idle weighs like one long gap
    assert not ops.busy()


@needs_mb
def test_a_lone_operation_is_computed_at_once(rsa_key) -> None:  # type: ignore[no-untyped-def]
    hooked, private = rsa_key
    stats = StatsStore()
    ops = cryptomb.CryptoMbOps(POLL_DELAY, stats)
    done: list[object] = []

    async def run() -> None:
        slot = rsa_slot(hooked)
        ops.submit(slot, lambda: done.append(slot))
        assert done == [slot] and slot.state == DONE  # no wait for poll_delay

    asyncio.run(run())
    assert stats.histograms["cryptomb.rsa_queue_sizes"].count == 1


@needs_mb
def test_sustained_load_waits_for_a_full_batch(rsa_key) -> None:  # type: ignore[no-untyped-def]
    hooked, private = rsa_key
    stats = StatsStore()
    ops = cryptomb.CryptoMbOps(POLL_DELAY, stats)
    public = private.public_key().public_numbers()
    done: list[object] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        make_busy(ops, loop.time())  # sustained load, though no other handshake is pending
        assert PENDING_SIGNERS.count == 0
        slots = [rsa_slot(hooked) for _ in range(8)]
        for slot in slots[:7]:
            ops.submit(slot, lambda slot=slot: done.append(slot))
        assert done == []  # a partial batch waits for more
        ops.submit(slots[7], lambda: done.append(slots[7]))
        assert done == slots  # the eighth sends the batch
        for slot in slots:
            assert slot.state == DONE
            block = int.from_bytes(ffi.buffer(slot.out, slot.out_len)[:], "big")
            signed = ffi.buffer(getattr(slot, "in"), slot.in_len)[:]
            assert pow(block, public.e, public.n).to_bytes(slot.in_len, "big") == signed

    asyncio.run(run())
    sizes = stats.histograms["cryptomb.rsa_queue_sizes"]
    assert sizes.count == 1 and sizes.sum == 8


@needs_mb
def test_a_partial_batch_goes_after_poll_delay(rsa_key) -> None:  # type: ignore[no-untyped-def]
    hooked, _private = rsa_key
    ops = cryptomb.CryptoMbOps(POLL_DELAY)
    done: list[float] = []

    async def run() -> float:
        loop = asyncio.get_running_loop()
        make_busy(ops, loop.time())
        start = loop.time()
        for _ in range(3):
            ops.submit(rsa_slot(hooked), lambda: done.append(loop.time()))
        await asyncio.sleep(POLL_DELAY * 3)
        return start

    start = asyncio.run(run())
    assert len(done) == 3 and all(POLL_DELAY * 0.9 <= t - start < POLL_DELAY * 3 for t in done)


@needs_mb
def test_a_burst_goes_once_no_handshake_can_add_more(rsa_key) -> None:  # type: ignore[no-untyped-def]
    hooked, _private = rsa_key
    stats = StatsStore()
    ops = cryptomb.CryptoMbOps(POLL_DELAY, stats)
    done: list[object] = []

    async def run() -> None:
        for _ in range(3):
            PENDING_SIGNERS.started()  # three handshakes connected, ClientHellos not read yet
        try:
            for _ in range(3):
                PENDING_SIGNERS.count -= 1  # as tls_transport does when one reaches its signature
                ops.submit(rsa_slot(hooked), lambda: done.append(1))
                if PENDING_SIGNERS.count:
                    assert done == []  # others can still add to the batch
        finally:
            PENDING_SIGNERS.count = 0
        assert done == [1, 1, 1]

    asyncio.run(run())
    sizes = stats.histograms["cryptomb.rsa_queue_sizes"]
    assert sizes.count == 1 and sizes.sum == 3


def faulty_pem(private) -> bytes:  # type: ignore[no-untyped-def]
    """The key with a wrong CRT exponent dp: as if a fault hit it, every CRT result is wrong.

    OpenSSL loads such a key without complaint (pylon's config check would refuse it, so this goes straight
    to the hook); its own RSA then notices the fault and recomputes without CRT, crypto_mb does not.
    """
    numbers = private.private_numbers()
    bad = rsa.RSAPrivateNumbers(numbers.p, numbers.q, numbers.d, numbers.dmp1 ^ 2, numbers.dmq1, numbers.iqmp,
                                numbers.public_numbers)
    return bad.private_key(unsafe_skip_rsa_key_validation=True).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@needs_mb
def test_a_wrong_crypto_mb_result_is_caught(rsa_key) -> None:  # type: ignore[no-untyped-def]
    _hooked, private = rsa_key
    faulty = HookedKey(private.public_key(), None, faulty_pem(private))  # type: ignore[arg-type]
    stats = StatsStore()
    ops = cryptomb.CryptoMbOps(POLL_DELAY, stats)
    done: list[object] = []

    async def run() -> None:
        make_busy(ops, asyncio.get_running_loop().time())
        for slot in [rsa_slot(faulty) for _ in range(8)]:
            ops.submit(slot, lambda slot=slot: done.append(slot))

    asyncio.run(run())
    assert len(done) == 8 and all(slot.state == FAILED for slot in done)  # type: ignore[attr-defined]
    counters = {name: stats.counters[f"cryptomb.rsa_{name}_ops"].value for name in ("crypto_mb", "openssl", "failed")}
    assert counters == {"crypto_mb": 8, "openssl": 0, "failed": 8}


@needs_mb
def test_operations_are_counted_by_who_computed_them(rsa_key) -> None:  # type: ignore[no-untyped-def]
    hooked, _private = rsa_key
    stats = StatsStore()
    ops = cryptomb.CryptoMbOps(POLL_DELAY, stats)

    async def run() -> None:
        ops.submit(rsa_slot(hooked), lambda: None)  # a lone operation: OpenSSL
        make_busy(ops, asyncio.get_running_loop().time())
        for _ in range(8):  # a full batch: crypto_mb
            ops.submit(rsa_slot(hooked), lambda: None)

    asyncio.run(run())
    counters = {name: stats.counters[f"cryptomb.rsa_{name}_ops"].value for name in ("crypto_mb", "openssl", "failed")}
    assert counters == {"crypto_mb": 8, "openssl": 1, "failed": 0}
    assert stats.counters["cryptomb.ecdsa_crypto_mb_ops"].value == 0


async def preconnected(port: int, count: int) -> list[socket.socket]:
    """`count` TCP connections the server has accepted (each one a handshake that will sign), no TLS sent yet.

    Handshakes started on them together reach their signatures together, so they batch whatever the timing.
    """
    start = PENDING_SIGNERS.count
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while PENDING_SIGNERS.count < start + count:
        assert loop.time() < deadline, "the server did not accept the connections"
        await asyncio.sleep(0.01)
    return socks


async def tls_fetch(sock: socket.socket, ctx: ssl.SSLContext) -> bytes:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(sock=sock, ssl=ctx, server_hostname="localhost"), 10)
    writer.write(b"hi")
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


@needs_mb
def test_a_handshake_whose_crypto_mb_result_is_wrong_fails_cleanly(pki, rsa_key) -> None:  # type: ignore[no-untyped-def]
    _hooked, private = rsa_key
    stats = StatsStore()
    ops = cryptomb.CryptoMbOps(1.0, stats)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    install_hooked_key(context, pki.server_rsa.cert.read_bytes(),
                       HookedKey(private.public_key(), ops, faulty_pem(private)))  # type: ignore[arg-type]
    client = client_context(pki)

    async def run() -> tuple[list[object], bytes]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(tls_protocol_factory(context, Reply), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            socks = await preconnected(port, 8)
            results = await asyncio.gather(*(tls_fetch(s, client) for s in socks), return_exceptions=True)
            # A lone handshake goes to OpenSSL, whose RSA catches the same fault and recomputes without CRT.
            lone = await tls_fetch(socket.create_connection(("127.0.0.1", port)), client)
        finally:
            server.close()
        return results, lone

    results, lone = asyncio.run(run())
    for result in results:
        # The handshake ended by the server (an alert or the connection closed), never by the client finding a
        # bad signature: the wrong result was not sent.
        assert isinstance(result, (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)), result
        assert "BAD_SIGNATURE" not in str(result) and "bad signature" not in str(result), result
    assert stats.counters["cryptomb.rsa_crypto_mb_ops"].value == 8
    assert stats.counters["cryptomb.rsa_failed_ops"].value == 8
    assert lone == b"ok:hi" and stats.counters["cryptomb.rsa_openssl_ops"].value == 1
