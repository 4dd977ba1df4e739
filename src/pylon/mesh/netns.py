"""Network namespaces, veths and capture rules of the mesh, through iproute2 and nftables.

Layout (mesh-facts A1): the hub namespace holds the bridge; each pod namespace has `eth0` on it and a
default route via the hub. Nothing is added to the root namespace: it has no route to the mesh's
addresses, so the mesh is reached only from inside its namespaces, and nothing a workload sends can
leave the machine through the host's default route (`check_route` asserts that before use).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from pylon.mesh.capture import TABLE, ruleset
from pylon.mesh.layout import BRIDGE, HUB, HUB_ADDRESS, NETWORK, PREFIX, PROXY_UID

ETC_NETNS = Path("/etc/netns")
REQUIRED_TOOLS = ("ip", "nft", "setpriv")


class MeshError(Exception):
    """Something the mesh needs is missing or failed; the message says what and what to do."""


def check_host() -> None:
    """Root and the tools the mesh drives, or a MeshError saying what is missing."""
    if os.geteuid() != 0:
        raise MeshError("pylon mesh creates network namespaces: run it as root")
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise MeshError(f"missing {', '.join(missing)}: install iproute2, nftables and util-linux")


def run(*command: str, input_text: str | None = None) -> str:
    """Run a command; its stdout, or MeshError with its stderr."""
    done = subprocess.run(command, input=input_text, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise MeshError(f"{' '.join(command)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout


def mesh_namespaces() -> list[str]:
    """The namespaces of ours that exist (also those a crashed mesh left)."""
    names = [line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()]
    return [name for name in names if name.startswith(PREFIX)]


def create_hub() -> None:
    run("ip", "netns", "add", HUB)
    run("ip", "-n", HUB, "link", "set", "lo", "up")
    run("ip", "-n", HUB, "link", "add", BRIDGE, "type", "bridge")
    run("ip", "-n", HUB, "addr", "add", f"{HUB_ADDRESS}/{NETWORK.prefixlen}", "dev", BRIDGE)
    run("ip", "-n", HUB, "link", "set", BRIDGE, "up")
    # A host with bridge-nf-call-iptables and a FORWARD DROP policy would drop bridged pod traffic (A6).
    if Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
        run("ip", "netns", "exec", HUB, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")


def create_pod(netns: str, veth: str, address: ipaddress.IPv4Address) -> None:
    """A pod namespace with `eth0` (address/24) on the hub's bridge and a default route via the hub."""
    run("ip", "netns", "add", netns)
    run("ip", "-n", HUB, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
    run("ip", "-n", HUB, "link", "set", veth, "master", BRIDGE, "up")
    run("ip", "-n", netns, "addr", "add", f"{address}/{NETWORK.prefixlen}", "dev", "eth0")
    run("ip", "-n", netns, "link", "set", "lo", "up")
    run("ip", "-n", netns, "link", "set", "eth0", "up")
    run("ip", "-n", netns, "route", "add", "default", "via", str(HUB_ADDRESS))


def check_route(netns: str, destination: ipaddress.IPv4Address, device: str = "eth0") -> None:
    """MeshError unless traffic from `netns` to `destination` goes out of our own `device` (a pod's eth0, the
    hub's bridge), never elsewhere."""
    route = run("ip", "-n", netns, "route", "get", str(destination))
    if f" dev {device} " not in f" {route} ":
        raise MeshError(f"refusing to use {destination} from {netns}: its route is not our {device} ({route.strip()})")


def load_capture(netns: str, dns: bool = False) -> None:
    """Istio's capture rules in `netns` (`dns`: DNS too), checked after loading (nft -f installs all or nothing)."""
    run("ip", "netns", "exec", netns, "nft", "-f", "-", input_text=ruleset(dns=dns))
    listing = run("ip", "netns", "exec", netns, "nft", "list", "table", "inet", TABLE)
    expected = ["redirect to :15001", "redirect to :15006", *(["redirect to :15053"] if dns else [])]
    if not all(rule in listing for rule in expected):
        raise MeshError(f"capture rules did not load in {netns}: {listing}")


def load_rules(netns: str, script: str) -> None:
    """Load an nft script in `netns` (atomic: all of it or nothing)."""
    run("ip", "netns", "exec", netns, "nft", "-f", "-", input_text=script)


def write_etc(netns: str, name: str, text: str) -> None:
    """A file `ip netns exec` shows as /etc/<name> in `netns` (replaced in place, so running processes see it)."""
    directory = ETC_NETNS / netns
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text)


def spawn(netns: str, command: list[str], log: Path, proxy_group: bool = False,
          env: dict[str, str] | None = None) -> subprocess.Popen:  # fmt: skip
    """Start `command` in `netns`, its output appended to `log`; with `proxy_group`, in the proxy's group 1337
    (the capture rules let that group's traffic through: the sidecar agent's, which then runs the proxy itself
    as uid 1337)."""
    prefix = ["setpriv", f"--regid={PROXY_UID}", "--clear-groups"] if proxy_group else []
    with log.open("ab") as out:
        return subprocess.Popen(["ip", "netns", "exec", netns, *prefix, *command], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, **(env or {})})  # fmt: skip


def start_ticks(pid: int) -> int:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with the pid, an identity
    that a recycled pid does not share."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[19])


def stop(pid: int, ticks: int, grace: float = 5.0) -> None:
    """SIGTERM the process if it is still the one we started, SIGKILL it after `grace` seconds."""
    if start_ticks(pid) != ticks:
        return
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and start_ticks(pid) == ticks:
        time.sleep(0.05)
    if start_ticks(pid) == ticks:
        _signal(pid, signal.SIGKILL)


def delete_namespace(netns: str) -> None:
    """Kill what still runs in `netns` (else it outlives its name, A5), then delete it and its /etc/netns files.

    A namespace gone meanwhile (another `mesh down`, a test's cleanup that raced this one) is not an error: it
    is what this was for."""
    try:
        pids = [int(p) for p in run("ip", "netns", "pids", netns).split()]
    except MeshError:
        if netns in mesh_namespaces():
            raise
        shutil.rmtree(ETC_NETNS / netns, ignore_errors=True)
        return
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    for pid in pids:
        deadline = time.monotonic() + 2
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    try:
        run("ip", "netns", "del", netns)
    except MeshError:
        if netns in mesh_namespaces():
            raise
    shutil.rmtree(ETC_NETNS / netns, ignore_errors=True)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
