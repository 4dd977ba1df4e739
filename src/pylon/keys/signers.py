"""How many TLS handshakes in this process may still ask for a signature.

The cryptomb batcher must decide, for a partial batch, whether waiting can
fill it. A handshake signs once (TLS 1.3 CertificateVerify, or the TLS 1.2
ServerKeyExchange), right after the ClientHello, so the only handshakes
that can still add an operation are those that have not signed yet. The TLS
transport reports them here; when none is left, waiting is pointless and the
batch goes at once — which is also what keeps a lone handshake undelayed.
"""

from __future__ import annotations

from collections.abc import Callable


class PendingSigners:
    """Per-process count of handshakes that have not reached their key operation yet."""

    def __init__(self) -> None:
        self.count = 0
        self._on_none_left: list[Callable[[], None]] = []

    def started(self) -> None:
        """A handshake began (it will sign once its ClientHello is in)."""
        self.count += 1

    def finished(self) -> None:
        """A handshake reached its key operation, or ended without one."""
        self.count -= 1
        if self.count == 0:
            for callback in list(self._on_none_left):
                callback()

    def on_none_left(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever the count drops to zero (batchers flush their partial batches)."""
        self._on_none_left.append(callback)


PENDING_SIGNERS = PendingSigners()
