"""The keyd server: holds private keys, signs for authenticated local proxies, never exports a key. Keys are
loaded at start (`--key`), made here on an agent's request (GENERATE: the key is born in keyd and only
its CSR leaves), or handed over by an agent (IMPORT: a gateway credential's key, which pilot serves inline;
keyd keeps it so the proxy never holds it, and only its public half leaves).

Callers are authenticated by the kernel (SO_PEERCRED on the Unix socket):
only the uids in the allow-list (by default keyd's own uid) may connect;
anyone else is refused with a log line. A raw-RSA signer is an oracle for
whoever reaches it, which is why this check is not optional.

Operations from all connections share one crypto_mb batcher when the CPU
and library allow (so eight proxies' handshakes fill one batch); otherwise
they run inline with OpenSSL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pylon.keys import cryptomb
from pylon.keys.hook import DONE, ECDSA_DIGEST, RSA_RAW, HookedKey, ffi, lib, new_slot
from pylon.identity.certs import KeyType, build_csr, generate_key
from pylon.identity.spiffe import SpiffeError, SpiffeId
from pylon.keys.keyd.protocol import (ERROR, FORGET, GENERATE, IMPORT, OK, FrameReader, ProtocolError, Request, Response,
                                      decode_request, encode_response)  # fmt: skip
from pylon.stats.store import StatsStore

log = logging.getLogger("pylon.keyd")

_PEERCRED = struct.Struct("3i")  # struct ucred {pid, uid, gid}


class _InlineOps:
    """Operations computed at once with OpenSSL (no crypto_mb here), counted as the batcher counts its own."""

    def __init__(self, stats: StatsStore) -> None:
        self.computed = stats.counter("keyd.openssl_ops")
        self.failed = stats.counter("keyd.failed_ops")

    def submit(self, slot: object, done) -> None:  # type: ignore[no-untyped-def]
        lib.pk_slot_run(slot)
        self.computed.inc()
        if slot.state != DONE:  # type: ignore[attr-defined]
            self.failed.inc()
        done()

    def sign_blocking(self, kind: int, key: HookedKey, data: bytes) -> bytes:
        raise RuntimeError("keyd keys are computed by the native hook")


@dataclass
class KeydKey:
    """One served key: its id, the native record (with the private key) and how it is computed."""

    key_id: str
    hooked: HookedKey
    batched: bool


def load_keys(specs: Iterable[tuple[str, bytes]], use_cryptomb: bool = True) -> dict[str, KeydKey]:
    """Keys by id from (id, PEM) pairs; crypto_mb where it can run and supports the key."""
    mb_reason = cryptomb.unavailable_reason() if use_cryptomb else "disabled"
    keys: dict[str, KeydKey] = {}
    for key_id, pem in specs:
        private = serialization.load_pem_private_key(pem, password=None)
        hooked = HookedKey(private.public_key(), None, pem)  # type: ignore[arg-type]  # KeydServer computes
        batched = mb_reason is None and cryptomb.key_unsupported_reason(hooked.public_key) is None
        keys[key_id] = KeydKey(key_id, hooked, batched)
        log.info("key %s: %s %d bits, %s", key_id, hooked.kind, hooked.bits, "crypto_mb" if batched else "OpenSSL")
    return keys


def peer_uid(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket, from the kernel."""
    pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return pid, uid


class KeydServer:
    """Serves `keys` on a Unix socket to the uids in `allow_uids`."""

    def __init__(self, keys: dict[str, KeydKey], allow_uids: Iterable[int], poll_delay: float = 0.01,
                 use_cryptomb: bool = True) -> None:  # fmt: skip
        self.keys = keys
        self.use_cryptomb = use_cryptomb
        self.allow_uids = frozenset(allow_uids) or frozenset({os.getuid()})
        self.stats = StatsStore()
        self.batcher = cryptomb.CryptoMbOps(poll_delay, self.stats)
        self.inline = _InlineOps(self.stats)
        self.refused = 0
        self.served = 0
        self.given: set[str] = set()  # key ids agents made or handed over (FORGET may drop only these)

    def summary(self) -> str:
        """Who computed the operations served so far (logged when keyd stops: keyd has no admin endpoint)."""
        counters = {name: stat.value for name, stat in self.stats.counters.items()}
        by_mb = counters["cryptomb.rsa_crypto_mb_ops"] + counters["cryptomb.ecdsa_crypto_mb_ops"]
        by_openssl = (counters["cryptomb.rsa_openssl_ops"] + counters["cryptomb.ecdsa_openssl_ops"]
                      + counters["keyd.openssl_ops"])
        failed = counters["cryptomb.rsa_failed_ops"] + counters["cryptomb.ecdsa_failed_ops"] + counters["keyd.failed_ops"]
        return (f"keyd served {self.served} operations: {by_mb} by crypto_mb, {by_openssl} by OpenSSL, "
                f"{failed} failed; refused {self.refused} clients")

    async def serve(self, path: str) -> asyncio.AbstractServer:
        if os.path.exists(path):
            os.unlink(path)  # a stale socket of a previous keyd
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(lambda: _KeydConnection(self), path)
        os.chmod(path, 0o660)
        return server

    def handle(self, body: bytes, reply) -> None:  # type: ignore[no-untyped-def]
        request = decode_request(body)
        if request.kind == GENERATE:
            reply(self.generate(request))
            return
        if request.kind == IMPORT:
            reply(self.import_key(request))
            return
        if request.kind == FORGET:
            reply(self.forget(request))
            return
        key = self.keys.get(request.key_id)
        if key is None:
            reply(Response(request.id, ERROR, f"unknown key id {request.key_id!r}".encode()))
            return
        expected = RSA_RAW if key.hooked.kind == "RSA" else ECDSA_DIGEST
        size_ok = (
            len(request.data) == key.hooked.bits // 8
            if expected == RSA_RAW
            else len(request.data) in (20, 28, 32, 48, 64)
        )
        if request.kind != expected or not size_ok:
            reply(Response(request.id, ERROR, b"operation does not fit the key"))
            return
        slot = new_slot()
        slot.kind = request.kind
        slot.key = key.hooked.native
        slot.in_len = len(request.data)
        ffi.memmove(getattr(slot, "in"), request.data, len(request.data))

        # `done` holds `key`, so a key forgotten meanwhile (and its native half) lives until this operation ends.
        def done(key: KeydKey = key) -> None:
            self.served += 1
            if slot.state == DONE:
                reply(Response(request.id, OK, ffi.buffer(slot.out, slot.out_len)[:]))
            else:
                reply(Response(request.id, ERROR, b"private key operation failed"))

        (self.batcher if key.batched else self.inline).submit(slot, done)


    def generate(self, request: Request) -> Response:
        """A new RSA-2048 key (Istio's workload default) under the request's key id, kept here only; the answer
        is a CSR for the SPIFFE id in the request, signed with it."""
        if not request.key_id or request.key_id in self.keys:
            return Response(request.id, ERROR, f"key id {request.key_id!r} is empty or taken".encode())
        try:
            identity = SpiffeId.parse(request.data.decode())
        except (UnicodeDecodeError, SpiffeError) as exc:
            return Response(request.id, ERROR, f"not a SPIFFE id: {exc}".encode())
        private = generate_key(KeyType.RSA_2048)
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())  # fmt: skip
        self.keys.update(load_keys([(request.key_id, pem)], use_cryptomb=self.use_cryptomb))
        self.given.add(request.key_id)
        log.info("generated key %s for %s", request.key_id, identity)
        return Response(request.id, OK, build_csr(private, identity).encode())


    def import_key(self, request: Request) -> Response:
        """Keep the PEM private key in the request under its key id; the answer is its public key (PEM).

        Importing the same key under the same id again is a success (an agent re-sends a credential after a
        reconnect or a restart of its own); another key under a taken id is refused, never replaced, so one
        caller cannot swap the key another one's certificate names."""
        if not request.key_id:
            return Response(request.id, ERROR, b"empty key id")
        try:
            private = serialization.load_pem_private_key(request.data, password=None)
        except (ValueError, TypeError):
            return Response(request.id, ERROR, b"not an unencrypted PEM private key")
        if not isinstance(private, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            return Response(request.id, ERROR, b"keyd holds RSA and ECDSA keys only")
        public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
        held = self.keys.get(request.key_id)
        if held is not None:
            same = held.hooked.public_key.public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo) == public_pem
            if not same:
                return Response(request.id, ERROR, f"key id {request.key_id!r} holds another key".encode())
            return Response(request.id, OK, public_pem)
        self.keys.update(load_keys([(request.key_id, request.data)], use_cryptomb=self.use_cryptomb))
        self.given.add(request.key_id)
        log.info("imported key %s", request.key_id)
        return Response(request.id, OK, public_pem)

    def forget(self, request: Request) -> Response:
        """Drop a key an agent made (GENERATE) or handed over (IMPORT), once its certificate is no longer served;
        a key loaded at start (`--key`) is the operator's and cannot be dropped this way. Forgetting a key that
        is gone already is a success (the agent may retry after a lost answer)."""
        if request.key_id not in self.given:
            if request.key_id in self.keys:
                return Response(request.id, ERROR, f"key id {request.key_id!r} was loaded at start".encode())
            return Response(request.id, OK, b"")
        self.given.discard(request.key_id)
        del self.keys[request.key_id]
        log.info("forgot key %s", request.key_id)
        return Response(request.id, OK, b"")


class _KeydConnection(asyncio.Protocol):
    def __init__(self, server: KeydServer) -> None:
        self.server = server
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        pid, uid = peer_uid(sock)
        if uid not in self.server.allow_uids:
            self.server.refused += 1
            log.warning("refused keyd client pid %d uid %d: uid not in the allow-list", pid, uid)
            transport.abort()
            return
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        try:
            for body in self.reader.feed(data):
                self.server.handle(body, self._reply)
        except ProtocolError as exc:
            log.warning("closing keyd client: %s", exc)
            self.transport.abort()

    def _reply(self, response: Response) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_response(response))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def run_keyd(path: str, keys: dict[str, KeydKey], allow_uids: Iterable[int],  # type: ignore[no-untyped-def]
                   poll_delay: float = 0.01, ready=None, use_cryptomb: bool = True) -> None:
    """Serve until cancelled; `ready()` is called once the socket accepts connections."""
    server = KeydServer(keys, allow_uids, poll_delay, use_cryptomb)
    listener = await server.serve(path)
    log.info("keyd listening on unix:%s for uids %s", path, sorted(server.allow_uids))
    if ready is not None:
        ready()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)  # type: ignore[union-attr]
    try:
        async with listener:
            await listener.serve_forever()
    except asyncio.CancelledError:
        pass
    finally:
        log.info("%s", server.summary())
