"""Names and addresses of a one-machine mesh, sans-IO.

Everything the mesh creates carries the `pm-` prefix (namespaces, /etc/netns entries) or lives in the
hub namespace (the bridge and the host ends of the veths), so `pylon mesh down` can find and remove it
all, also after a crash. Addresses are private and exist only inside namespaces we create: workloads
and pilot are on the hub's bridge (10.77.0.0/24, the hub itself 10.77.0.1), service VIPs come from
10.77.128.0/24 and are only ever captured by sidecars (Istio's ClusterIPs: nothing listens on them).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

PREFIX = "pm-"
HUB = f"{PREFIX}hub"
BRIDGE = "pmbr0"
NETWORK = ipaddress.ip_network("10.77.0.0/24")
HUB_ADDRESS = ipaddress.ip_address("10.77.0.1")
PILOT_ADDRESS = ipaddress.ip_address("10.77.0.2")
FIRST_WORKLOAD = 10
VIPS = ipaddress.ip_network("10.77.128.0/24")
PROXY_UID = 1337  # Istio's istio-proxy user: the capture rules let its traffic through uncaptured
DOMAIN = "svc.cluster.local"

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?")


def check_name(name: str, what: str) -> str:
    """A workload or namespace name: a short DNS label (it becomes part of interface and namespace names)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r} must be a DNS label of at most 22 characters (a-z, 0-9, '-')")
    return name


def state_dir() -> Path:
    """Where the running mesh keeps its state: config, CA, tokens, logs, process ids."""
    return Path(os.environ.get("PYLON_MESH_STATE", "/run/pylon-mesh"))


def netns_name(workload: str) -> str:
    return PREFIX + workload


def veth_name(index: int) -> str:
    """The hub end of a workload's veth pair (interface names are at most 15 characters)."""
    return f"pmv{index}"


@dataclass(frozen=True)
class Allocation:
    """Where a workload sits: its index (veth name), pod IP and service VIP."""

    index: int
    address: ipaddress.IPv4Address
    vip: ipaddress.IPv4Address


def allocate(taken: set[int]) -> Allocation:
    """The lowest free workload slot."""
    index = next(i for i in range(FIRST_WORKLOAD, 250) if i not in taken)
    return Allocation(index=index, address=NETWORK.network_address + index, vip=VIPS.network_address + index)


def service_host(workload: str, namespace: str) -> str:
    """The workload's service name, as Kubernetes names a Service: `<name>.<namespace>.svc.cluster.local`."""
    return f"{workload}.{namespace}.{DOMAIN}"
