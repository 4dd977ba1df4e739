"""A listener with `bind_to_port: false`: no socket of its own; it takes only the connections handed over to it.

Envoy's sidecar shape: iptables sends a workload's outbound connections to
`virtualOutbound` (:15001, `use_original_dst`), which hands each one to the
listener of the address it was going to - `0.0.0.0_8080` and the like, which
bind nothing. The balancer interface is kept so the supervisor and workers
treat every static listener alike; there is simply nothing to bind or accept.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from pylon.proxy.balance.kernel import NoSupervisorHooks


class UnboundBalancer(NoSupervisorHooks):
    name = "unbound"
    handoff = False
    uses_inflight = False

    def bind(self, host: str, port: int, workers: int, listen: bool = True) -> None:
        pass

    def worker_socket(self, worker_id: int) -> socket.socket | None:
        return None

    def close(self) -> None:
        pass

    async def serve(self, loop: asyncio.AbstractEventLoop, sock: socket.socket | None, runtime: Any,
                    network_namespace: str = "") -> "NotAccepting":
        """Nothing to accept (whatever its address's namespace): connections come handed over or by name."""
        return NotAccepting()


class NotAccepting:
    """What a worker holds for an unbound listener: nothing to stop at drain."""

    def close(self, keep_socket: bool = False) -> None:
        pass
