"""The `cryptomb` provider: Intel crypto_mb multi-buffer RSA and ECDSA P-256, eight at a time.

crypto_mb (from the `ipp-crypto` wheel, its runtime from `intel-cmplr-lib-rt`)
computes eight private operations in one AVX-512 IFMA pass for about the cost
of two or three single ones, so operations are queued per worker (per event
loop) and sent in batches, as Envoy's CryptoMB provider does. Batches go:

* at once when eight are queued (`MULTIBUFF_BATCH`);
* at once when waiting cannot fill the batch: operations arrive too seldom
  for `MIN_MB_BATCH` of them to gather within `poll_delay` (a moving average
  of the gaps between them), and no other handshake in this process can
  still add one (`pylon.keys.signers`: every handshake signs once, right
  after its ClientHello). So a lone handshake is not delayed, a burst of
  handshakes is signed together, and under sustained load — where the
  next handshakes have not even connected yet when an operation arrives —
  batches still fill;
* never later than `poll_delay` after its first operation (Envoy's timer,
  here an upper bound rather than the usual wait).

A batch costs crypto_mb about the same whatever its size (~4 single OpenSSL
operations for RSA-2048 on this CPU), so batches smaller than `MIN_MB_BATCH`
are computed by OpenSSL one by one instead: cryptomb is never slower than the
file key, and faster once batches fill.

Every RSA result is re-encrypted with the public key (e = 65537, in the same
multi-buffer pass) and compared with the input before it is used, so a CRT
fault cannot leak a factor (keyhook.c: mb_rsa_batch). Batch sizes are
recorded in Envoy's histograms `cryptomb.rsa_queue_sizes` and
`cryptomb.ecdsa_queue_sizes`. Those count every batch, also the small ones
OpenSSL computes, so operations are also counted by who computed them
(`cryptomb.<rsa|ecdsa>_crypto_mb_ops`, `cryptomb.<rsa|ecdsa>_openssl_ops`) and
the ones that failed, a wrong crypto_mb result among them
(`cryptomb.<rsa|ecdsa>_failed_ops`): the histograms alone cannot show
whether crypto_mb ever ran.
"""

from __future__ import annotations

import asyncio
import pathlib
import sys
import time
from collections.abc import Callable
from functools import cache

from pylon.keys.hook import DONE, ECDSA_DIGEST, RSA_RAW, HookedKey, check_runtime, ffi, lib
from pylon.keys.signers import PENDING_SIGNERS
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pylon.stats.store import StatsStore

BATCH = 8
#: Below this many queued operations OpenSSL's single operations are cheaper than one crypto_mb pass.
MIN_MB_BATCH = 4
RSA_SIZES = (2048, 3072, 4096)
#: Weight of the newest gap in the moving average of the time between operations.
GAP_WEIGHT = 0.125
#: The moving average starts here (and a longer idle gap counts as this): "operations are rare".
IDLE_GAP = 1.0
#: Envoy's (Intel's) bucket bounds for the queue-size histograms.
QUEUE_SIZE_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8)

#: CPU features crypto_mb's AVX-512 code path needs, as /proc/cpuinfo spells them, with the
#: name a person would look for.
REQUIRED_CPU_FLAGS = {
    "avx512f": "AVX-512 F",
    "avx512dq": "AVX-512 DQ",
    "avx512bw": "AVX-512 BW",
    "avx512ifma": "AVX-512 IFMA",
    "avx512_vbmi2": "AVX-512 VBMI2",
    "bmi2": "BMI2",
}

#: The shared objects to dlopen, dependencies first (libcrypto_mb has no RPATH to find them).
_LIBRARIES = ("libintlc.so.5", "libirng.so", "libimf.so", "libsvml.so", "libcrypto_mb.so.13")


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first CPU in a /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def missing_cpu_features(flags: set[str]) -> list[str]:
    """The crypto_mb prerequisites absent from `flags` (empty when all are there)."""
    return [flag for flag in REQUIRED_CPU_FLAGS if flag not in flags]


def library_dir() -> pathlib.Path:
    """Where the ipp-crypto and intel-cmplr-lib-rt wheels put their shared objects."""
    return pathlib.Path(sys.prefix) / "lib"


@cache
def unavailable_reason() -> str | None:
    """None when crypto_mb can run in this process, else what is missing (for error messages)."""
    try:
        flags = cpu_flags(pathlib.Path("/proc/cpuinfo").read_text())
    except OSError:
        flags = set()
    missing = missing_cpu_features(flags)
    if missing:
        names = ", ".join(REQUIRED_CPU_FLAGS[f] for f in missing)
        return f"cryptomb needs {names}; this CPU has no {', '.join(missing)}"
    try:
        check_runtime()
    except RuntimeError as exc:
        return str(exc)
    directory = library_dir()
    paths = [directory / name for name in _LIBRARIES]
    absent = [p.name for p in paths if not p.exists()]
    if absent:
        return (
            f"cryptomb needs Intel crypto_mb; {', '.join(absent)} not found in {directory} "
            "(pip install ipp-crypto intel-cmplr-lib-rt)"
        )
    keep = [ffi.new("char[]", str(p).encode()) for p in paths]
    code = lib.mb_load(ffi.new("const char *[]", keep), len(keep))
    if code == 1:
        return f"cryptomb: loading crypto_mb from {directory} failed"
    if code == 2:
        return "cryptomb: this crypto_mb lacks the mbx_*_ssl_mb8 functions pylon uses"
    if code == 3:
        return "cryptomb: crypto_mb reports that this CPU cannot run its multi-buffer code"
    return None


def key_unsupported_reason(public: object) -> str | None:
    """Why crypto_mb cannot serve this public key's private half (RSA 2048/3072/4096 with e = 65537, P-256)."""
    if isinstance(public, rsa.RSAPublicKey):
        if public.key_size not in RSA_SIZES:
            return f"cryptomb supports RSA keys of {'/'.join(map(str, RSA_SIZES))} bits, not {public.key_size}"
        if public.public_numbers().e != 65537:
            return "cryptomb supports RSA keys with public exponent 65537 only"
        return None
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1":
        return None
    return "cryptomb supports RSA and ECDSA P-256 keys only"


class _Queue:
    """Operations of one kind and size waiting for a batch."""

    __slots__ = ("kind", "slots", "dones", "timer")

    def __init__(self, kind: int) -> None:
        self.kind = kind
        self.slots: list[object] = []
        self.dones: list[Callable[[], None]] = []
        self.timer: asyncio.TimerHandle | None = None


class CryptoMbOps:
    """`KeyOps` batching in-process keys through crypto_mb, one batcher per event loop (worker)."""

    def __init__(self, poll_delay: float, stats: StatsStore | None = None) -> None:
        self.poll_delay = poll_delay
        self._queues: dict[tuple[int, int], _Queue] = {}
        self.bind_stats(stats or StatsStore())
        self._last_arrival: float | None = None
        self._mean_gap = IDLE_GAP  # moving average of the seconds between operations
        PENDING_SIGNERS.on_none_left(self._flush_unless_busy)

    def bind_stats(self, stats: StatsStore) -> None:
        """Record batch sizes in this store (the worker's, so they show on the admin endpoint)."""
        self.stats = stats
        self._rsa_sizes = stats.histogram("cryptomb.rsa_queue_sizes", QUEUE_SIZE_BUCKETS)
        self._ecdsa_sizes = stats.histogram("cryptomb.ecdsa_queue_sizes", QUEUE_SIZE_BUCKETS)
        # (crypto_mb, OpenSSL, failed) operation counters by kind.
        self._counts = {
            kind: tuple(stats.counter(f"cryptomb.{name}_{who}_ops") for who in ("crypto_mb", "openssl", "failed"))
            for kind, name in ((RSA_RAW, "rsa"), (ECDSA_DIGEST, "ecdsa"))
        }

    def submit(self, slot: object, done: Callable[[], None]) -> None:
        kind = int(slot.kind)  # type: ignore[attr-defined]
        bucket = (kind, int(slot.key.bits))  # type: ignore[attr-defined]
        queue = self._queues.get(bucket)
        if queue is None:
            queue = self._queues[bucket] = _Queue(kind)
        queue.slots.append(slot)
        queue.dones.append(done)
        loop = asyncio.get_running_loop()
        self._note_arrival(loop.time())
        if len(queue.slots) >= BATCH:
            self._flush(queue)
        elif PENDING_SIGNERS.count == 0 and not self.busy():
            self._flush_all()
        elif queue.timer is None:
            queue.timer = loop.call_later(self.poll_delay, self._flush, queue)

    def _note_arrival(self, now: float) -> None:
        if self._last_arrival is not None:
            gap = min(now - self._last_arrival, IDLE_GAP)
            self._mean_gap += GAP_WEIGHT * (gap - self._mean_gap)
        self._last_arrival = now

    def busy(self) -> bool:
        """Whether operations arrive often enough for a worthwhile batch to gather within `poll_delay`."""
        return self._mean_gap * (MIN_MB_BATCH - 1) <= self.poll_delay

    def _flush_unless_busy(self) -> None:
        """No handshake in this process can add an operation any more; unless more are expected
        from new connections soon, send every partial batch now."""
        if not self.busy():
            self._flush_all()

    def _flush_all(self) -> None:
        for queue in self._queues.values():
            if queue.slots:
                self._flush(queue)

    def _flush(self, queue: _Queue) -> None:
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        slots, dones = queue.slots[:BATCH], queue.dones[:BATCH]
        del queue.slots[:BATCH], queue.dones[:BATCH]
        if not slots:
            return
        by_mb, by_openssl, failed = self._counts[queue.kind]
        if len(slots) >= MIN_MB_BATCH:
            good = run_batch(queue.kind, slots)
            by_mb.inc(len(slots))
        else:
            good = 0
            for slot in slots:
                lib.pk_slot_run(slot)
                good += slot.state == DONE  # type: ignore[attr-defined]
            by_openssl.inc(len(slots))
        failed.inc(len(slots) - good)
        (self._rsa_sizes if queue.kind == RSA_RAW else self._ecdsa_sizes).record(len(slots))
        for done in dones:
            done()
        if queue.slots:  # more than a batch was queued (cannot happen with flush at 8; kept exact)
            self._flush(queue)

    def sign_blocking(self, kind: int, key: HookedKey, data: bytes) -> bytes:
        # The native hook computes in-process keys inline (OpenSSL) and never asks for this.
        raise RuntimeError("cryptomb keys are computed by the native hook")


def run_batch(kind: int, slots: list[object]) -> int:
    """One crypto_mb pass over up to eight slots of one kind and key size; returns the successes."""
    array = ffi.new("pk_slot *[]", slots)
    if kind == RSA_RAW:
        return int(lib.mb_rsa_batch(array, len(slots)))
    if kind == ECDSA_DIGEST:
        return int(lib.mb_ecdsa_batch(array, len(slots)))
    raise ValueError(f"unknown operation kind {kind}")


def batch_timing(kind: int, slots: list[object]) -> float:
    """Seconds one `run_batch` takes (for the benchmark's crypto-only line)."""
    start = time.perf_counter()
    run_batch(kind, slots)
    return time.perf_counter() - start
