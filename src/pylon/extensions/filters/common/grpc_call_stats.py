"""What Envoy's gRPC context charges for a call (Grpc::Context, shared by grpc_stats and grpc_web; sans-IO).

A call is named by its path, `/<service>/<method>` (exactly two non-empty segments before any query; any other
path is not counted), and its outcome by the grpc-status it ended with: `<prefix><status>` (0..16, else
`other`), `<prefix>success` or `<prefix>failure`, and `<prefix>total`, where the prefix is
`cluster.<c>.<protocol>[.<service>.<method>].` (protocol `grpc`, or `grpc-web` for the gRPC-Web filter's).
"""

from __future__ import annotations

from typing import Any, Callable

_STATUS_NAMES = frozenset(b"%d" % code for code in range(17))


def service_and_method(path: bytes) -> tuple[str, str] | None:
    """A gRPC path's (service, method), as Envoy reads it; None for any other path."""
    parts = [part for part in path.split(b"?", 1)[0].split(b"/") if part]
    if len(parts) != 2:
        return None
    return parts[0].decode("latin-1"), parts[1].decode("latin-1")


def charge_status(counter: Callable[[str], Any], prefix: str, grpc_status: bytes) -> None:
    """Count one finished call with `grpc_status` under `prefix` (counters made on first use, as Envoy's)."""
    code = grpc_status.decode("latin-1") if grpc_status in _STATUS_NAMES else "other"
    counter(prefix + code).inc()
    counter(prefix + ("success" if grpc_status == b"0" else "failure")).inc()
    counter(prefix + "total").inc()
