"""Connection balancers: how a listener's new connections reach worker processes.

An extension by name, like Envoy's `connection_balance_config`. A balancer
has two halves: `bind(address, workers)` runs in the supervisor before any
worker starts (so a port conflict fails start-up with nothing running) and
returns one socket per worker; `serve(...)` runs in each worker and starts
accepting on that worker's socket. The kernel balancer (Envoy's default) is
the only one so far; `exact` and a dispatcher plug in here later.
"""

from __future__ import annotations

from pylon.proxy.balance.kernel import KernelBalancer

BALANCERS = {"kernel": KernelBalancer}


def balancer_for(listener: object) -> KernelBalancer:
    """The balancer a listener's `connection_balance_config` asks for."""
    return KernelBalancer(reuse_port=getattr(listener, "enable_reuse_port", True))
