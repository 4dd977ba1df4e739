"""`per_connection_buffer_limit_bytes` as Envoy applies it: a connection's write buffer watermarks.

Envoy gives each connection a buffer limit (the listener's for downstream
connections, the cluster's for upstream ones): past it the connection is "above
its high watermark" and the peer feeding it is paused; below half it resumes.
pylon's transports have the same mechanism (asyncio's write buffer limits, whose
`pause_writing`/`resume_writing` pause and resume the other side's reads), so the
limit becomes the transport's high-water mark and half of it the low-water mark.
0 turns watermarks off in Envoy (an unbounded buffer); here too.
"""

from __future__ import annotations

from typing import Any

_UNBOUNDED = 1 << 62


def apply_buffer_limit(transport: Any, limit: int) -> None:
    high = limit or _UNBOUNDED
    transport.set_write_buffer_limits(high=high, low=high // 2)
