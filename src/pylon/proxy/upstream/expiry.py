"""When a pooled upstream connection must go: Envoy's idle timeout and max connection duration (sans-IO).

Envoy keeps a timer per upstream connection for each; pylon's pool instead
puts the connection in the worker's deadline wheel (`deadlines.py`) at the
earliest of its deadlines, and `verdict` recomputes them from the connection's
state whenever the wheel looks: activity never has to re-arm anything. As in
Envoy 1.40 (observed, see tests/proxy/test_proxy_upstream_pool.py):

- idle timeout: a connection with no request for `idle_timeout` closes
  (`upstream_cx_idle_timeout`); the clock starts again each time it goes idle;
- max connection duration: a connection `max_duration` old stops taking
  requests (`upstream_cx_max_duration_reached`); idle, it closes at once, busy,
  after the response it is serving;
- max requests per connection: the request that reaches the limit is counted
  when it is given the connection (`upstream_cx_max_requests`), and the
  connection closes after its response.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """A cluster's limits on its upstream connections, in seconds and counts; 0 is no limit."""

    idle_timeout: float = 3600.0
    max_duration: float = 0.0
    max_requests: int = 0
    max_headers: int = 100
    max_stream_duration: float = 0.0  # of each request on a connection, from when it is given one

    @classmethod
    def of(cls, config: Any) -> "ConnectionLimits":
        """From a config Cluster, wherever Envoy lets it say them (typed options or the deprecated fields)."""
        options = config.http_protocol_options
        return cls(
            idle_timeout=float(options.idle_timeout),
            max_duration=float(options.max_connection_duration or 0),
            max_requests=config.requests_per_connection_limit,
            max_headers=options.max_headers_count,
            max_stream_duration=float(options.max_stream_duration or 0),
        )


class Expiry(Enum):
    """Why a connection has to go now."""

    IDLE_TIMEOUT = "upstream_cx_idle_timeout"
    MAX_DURATION = "upstream_cx_max_duration_reached"


def verdict(limits: ConnectionLimits, now: float, opened_at: float, idle_since: float,
            draining: bool) -> tuple[Expiry | None, float]:
    """What is due for a connection at `now`: (why it must go, or None; when to look again, 0.0 for never).

    `idle_since` is when the connection last went idle (0.0 while it serves a
    request); `draining` says it already stopped taking requests, so its age no
    longer matters. When both deadlines have passed (the wheel looks at most
    one slot late) the earlier one is the reason, as Envoy's first timer to
    fire would be.
    """
    aged = opened_at + limits.max_duration if limits.max_duration and not draining else 0.0
    quiet = idle_since + limits.idle_timeout if limits.idle_timeout and idle_since else 0.0
    due = [(deadline, why) for deadline, why in ((aged, Expiry.MAX_DURATION), (quiet, Expiry.IDLE_TIMEOUT))
           if deadline]
    if not due:
        return None, 0.0
    deadline, why = min(due, key=lambda item: item[0])
    if now >= deadline:
        return why, 0.0
    return None, deadline
