"""Connection balancers: how a listener's new connections reach worker processes.

Chosen by the listener's `connection_balance_config`, as in Envoy:

- none → `kernel` (kernel.py): one SO_REUSEPORT socket per worker, the kernel hashes;
- `exact_balance` → `exact` (exact.py): fewest active connections;
- `extend_balance` with pylon's Dispatcher → `dispatcher` (dispatcher.py):
  fewest active connections, then fewest in-flight requests;
- `extend_balance` with Envoy's Dlb → its `fallback_policy` (dlb.py);
- a UDP listener → `udp.py`: one SO_REUSEPORT datagram socket per worker (the kernel keeps a peer on one).

`exact` and the dispatcher share one mechanism (handoff.py): the supervisor
accepts and passes each socket to a worker, reading load from a shared-memory
table the workers write (loadtable.py).

A balancer has a supervisor half — `bind` (before any worker starts, so a port
conflict fails start-up with nothing running), `worker_socket(worker_id)` (what
a starting worker gets by pass_fds), `start`, `worker_ready`, `worker_gone`,
`close` — and a worker half, `serve(loop, sock, runtime)`. dispatcher.py and
dlb.py register the Dispatcher and Dlb typed configs; config imports them by
name when a listener names one (`config.registry.EXTENSION_MODULES`).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from pylon.proxy.balance.acceptor import ListenerAcceptor
from pylon.proxy.balance.dispatcher import Dispatcher, DispatcherPolicy
from pylon.proxy.balance.dlb import Dlb, NoDlbFallback, fallback_kind
from pylon.proxy.balance.exact import ExactPolicy
from pylon.proxy.balance.handoff import HandoffBalancer, HandoffReceiver
from pylon.proxy.balance.kernel import KernelBalancer
from pylon.proxy.balance.udp import DatagramServing, UdpBalancer
from pylon.proxy.balance.unbound import NotAccepting, UnboundBalancer
from pylon.proxy.netns import in_network_namespace

BALANCERS = ("kernel", "exact", "dispatcher")

Balancer = KernelBalancer | HandoffBalancer | UnboundBalancer | UdpBalancer
#: What a worker's `serve` returns: it takes connections (a UDP listener's runtime: datagrams) until `close()` (drain).
Accepting = ListenerAcceptor | HandoffReceiver | NotAccepting | DatagramServing


def balance_kind(listener: Any) -> str:
    """"kernel", "exact" or "dispatcher" for a listener; NoDlbFallback for a DLB config without a fallback.

    The path of the failing field, relative to `connection_balance_config`, is
    `extend_balance.typed_config.` + `NoDlbFallback.field`.
    """
    config = listener.connection_balance_config
    if config is None:
        return "kernel"
    if config.exact_balance is not None:
        return "exact"
    typed = config.extend_balance.typed_config
    if isinstance(typed, Dispatcher):
        return "dispatcher"
    if isinstance(typed, Dlb):
        return fallback_kind(typed)
    raise TypeError(f"no balancer for {type(typed).__qualname__}")  # the registry only lets the above through


def balancer_for(listener: Any, listener_index: int = 0) -> Balancer:
    """A fresh balancer for the listener at `listener_index` of static_resources.listeners."""
    if not listener.bind_to_port or listener.internal_listener is not None:
        return UnboundBalancer()
    if listener.is_udp:
        return UdpBalancer(reuse_port=listener.enable_reuse_port, freebind=listener.freebind)
    kind = balance_kind(listener)
    backlog = listen_backlog(listener)
    per_event = listener.max_connections_to_accept_per_socket_event
    freebind = listener.freebind
    if kind == "exact":
        return HandoffBalancer(ExactPolicy(), listener_index, backlog, per_event, freebind)
    if kind == "dispatcher":
        return HandoffBalancer(DispatcherPolicy(), listener_index, backlog, per_event, freebind)
    return KernelBalancer(backlog, reuse_port=listener.enable_reuse_port, accepts_per_event=per_event,
                          freebind=freebind)


def bind_address(balancer: Balancer, address: Any, workers: int, listen: bool = True) -> None:
    """Bind `balancer`'s sockets to one of a listener's socket addresses, in its network namespace when it names
    one (the sockets stay that namespace's wherever they are used; a NetworkNamespaceError if it cannot be
    entered). `listen=False`: bound only (a warming LDS listener, kernel balancing)."""

    def bind() -> None:
        if listen:
            balancer.bind(address.address, address.port_value, workers)
        else:
            balancer.bind(address.address, address.port_value, workers, listen=False)  # type: ignore[call-arg]

    if address.network_namespace_filepath:
        in_network_namespace(address.network_namespace_filepath, bind)
    else:
        bind()


def spell_address(address: Any) -> str:
    """A socket address as logs and errors show it: `ip:port`, `[ip6]:port`, and its network namespace if any."""
    host = f"[{address.address}]" if ":" in address.address else address.address
    namespace = address.network_namespace_filepath
    return f"{host}:{address.port_value}" + (f" in network namespace {namespace}" if namespace else "")


def listen_backlog(listener: Any) -> int:
    """The listener's `tcp_backlog_size`, else the system's somaxconn, as Envoy does.

    A burst of new connections larger than the backlogs can hold loses SYNs,
    and a client waits a second or more to retransmit: under a flood of
    thousands of connections that is what turns into client timeouts.
    """
    if listener.tcp_backlog_size is not None:
        return listener.tcp_backlog_size
    return system_somaxconn()


@cache
def system_somaxconn() -> int:
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return 128  # Envoy's default where the kernel does not tell


__all__ = ["BALANCERS", "Accepting", "Balancer", "Dispatcher", "Dlb", "NoDlbFallback", "balance_kind", "balancer_for",
           "bind_address", "listen_backlog", "spell_address"]
