# cython: infer_types=False
# (pylon.compiled: an inferred `bytearray` would refuse the extended-slice assignments of bytes below)
"""x-request-id values: random UUID4 strings, made 128 at a time.

A request that comes without an id gets one (Envoy's generate_request_id). Formatting one UUID
(`str(uuid.uuid4())`, or an f-string of slices) costs more than half a microsecond per request; here a
block of 128 is laid out at once with strided slice assignments into one bytearray (36 column copies for
the whole block), and each request only pops a ready value.
"""

from __future__ import annotations

import os

_BATCH = 128
#: The UUID variant nibble (RFC 9562 4.1: binary 10xx) from a random hex digit's low two bits.
_VARIANT = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")
_ready: list[bytes] = []


def _refill() -> None:
    """Lay out _BATCH ids (xxxxxxxx-xxxx-4xxx-Vxxx-xxxxxxxxxxxx) from 16 random bytes each."""
    digits = os.urandom(16 * _BATCH).hex().encode()  # 32 hex digits per id
    out = bytearray(36 * _BATCH)
    column = 0
    for start, stop in ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32)):
        if start:
            out[column::36] = b"-" * _BATCH
            column += 1
        for digit in range(start, stop):
            out[column::36] = digits[digit::32]
            column += 1
    out[14::36] = b"4" * _BATCH  # the version digit (its random digit is dropped)
    out[19::36] = digits[16::32].translate(_VARIANT)
    whole = bytes(out)
    _ready.extend([whole[i:i + 36] for i in range(0, len(whole), 36)])


def new_request_id() -> bytes:
    """A random UUID4 string, as bytes."""
    if not _ready:
        _refill()
    return _ready.pop()
