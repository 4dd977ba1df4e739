"""Integration: a listener's `freebind` (Envoy's configs/freebind/freebind.yaml), through pylon and Envoy alike.

With `freebind: true` the listening socket gets IP_FREEBIND and binds an address this host does not have: here
192.0.2.1 (TEST-NET-1, documentation only), so nothing can reach it and nothing leaves the machine. Without it the
same listener cannot bind and the proxy does not start. Skipped where the kernel lets any process bind non-local
addresses (net.ipv4.ip_nonlocal_bind), since then the option changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, static_cluster, tcp_listener

NON_LOCAL = "192.0.2.1"
TCP_LISTEN = "0A"


def listening_on(host: str, port: int) -> bool:
    """Whether some socket on this host listens on host:port (IPv4), from /proc/net/tcp."""
    wanted = "%08X:%04X" % (int.from_bytes(bytes(map(int, host.split("."))), "little"), port)
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(row.split()[1] == wanted and row.split()[3] == TCP_LISTEN for row in rows)


def freebind_listener(port: int, **fields: Any) -> dict[str, Any]:
    config = tcp_listener("main", port, "up")
    config["address"]["socket_address"]["address"] = NON_LOCAL
    config.update(fields)
    return config


@pytest.fixture(autouse=True)
def kernel_refuses_non_local_binds() -> None:
    if Path("/proc/sys/net/ipv4/ip_nonlocal_bind").read_text().strip() != "0":
        pytest.skip("net.ipv4.ip_nonlocal_bind is on: every socket may bind non-local addresses")


def test_freebind_binds_an_address_the_host_does_not_have(implementation: str, tmp_path: Path) -> None:
    launcher = ProxyLauncher(tmp_path)
    port = free_port()
    try:
        launcher.start([freebind_listener(port, freebind=True)], [static_cluster("up", [free_port()])],
                       implementation=implementation)
        assert listening_on(NON_LOCAL, port)
    finally:
        launcher.close()


def test_without_freebind_the_listener_cannot_bind(implementation: str, tmp_path: Path) -> None:
    launcher = ProxyLauncher(tmp_path)
    try:
        with pytest.raises(RuntimeError, match="exited"):
            launcher.start([freebind_listener(free_port())], [static_cluster("up", [free_port()])],
                           implementation=implementation)
    finally:
        launcher.close()
