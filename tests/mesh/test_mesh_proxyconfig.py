"""Integration: a ProxyConfig resource reaches the sidecars `pylon mesh run` starts after it, as Istio's injector
applies it - the proxy runs with the resource's concurrency (its worker processes counted) and its
environmentVariables (read from /proc/PID/environ) - while a proxy started before it keeps what it had until
restarted. Root, network namespaces; skips with the reason otherwise (as test_mesh.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.mesh.test_mesh import MeshCli

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "nft", "setpriv", "curl")),
    reason="pylon mesh needs root, iproute2, nftables, setpriv and curl (network namespaces of its own)",
)

VARIABLE = "PYLON_PROXYCONFIG_PROBE"


@pytest.fixture(scope="module")
def mesh() -> Iterator[tuple[MeshCli, Path]]:
    if subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count("pm-"):
        pytest.skip("a pylon mesh is already up on this machine (pylon mesh down first)")
    state = Path(tempfile.mkdtemp(prefix="pm-", dir="/tmp")) / "s"  # short: Unix socket paths live below it
    state.parent.chmod(0o755)
    cli = MeshCli(state)
    try:
        cli("up")
        yield cli, state
    finally:
        cli("down", check=False)
        shutil.rmtree(state.parent, ignore_errors=True)


def children(pid: int) -> list[int]:
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]  # fmt: skip


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def proxy_of(state: Path, workload: str) -> int:
    """The pid of the proxy the workload's agent runs (the agent's child `pylon.cli proxy`)."""
    recorded = json.loads((state / "state.json").read_text())["workloads"][workload]["processes"]
    agent = next(p["pid"] for p in recorded if p["name"] == "sidecar")
    pending = [agent]
    while pending:  # the agent may sit below `ip netns exec` and setpriv, which exec in place
        pid = pending.pop()
        if "proxy" in cmdline(pid) and "pylon.cli" in cmdline(pid):
            return pid
        pending += children(pid)
    raise AssertionError(f"no proxy process below the agent {agent} of {workload}")


def workers(proxy: int) -> int:
    return sum(1 for child in children(proxy) if "pylon.proxy.worker" in cmdline(child))


def environ(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(entry.partition("=")[::2] for entry in entries if entry)


def test_a_proxyconfig_reaches_pods_started_after_it(mesh: tuple[MeshCli, Path], tmp_path: Path) -> None:
    cli, state = mesh
    idle = ["--", sys.executable, "-c", "import time; time.sleep(600)"]
    cli("run", "before", "--port", "8080", *idle)
    resources = tmp_path / "proxyconfig.yaml"
    resources.write_text(yaml.safe_dump_all([
        {"apiVersion": "networking.istio.io/v1beta1", "kind": "ProxyConfig",
         "metadata": {"name": "mesh-wide", "namespace": "istio-system"},
         "spec": {"concurrency": 3, "environmentVariables": {VARIABLE: "mesh", "PYLON_MESH_WIDE": "yes"}}},
        {"apiVersion": "networking.istio.io/v1beta1", "kind": "ProxyConfig",
         "metadata": {"name": "after", "namespace": "default"},
         "spec": {"selector": {"matchLabels": {"app": "after"}}, "concurrency": 1,
                  "environmentVariables": {VARIABLE: "workload"}, "image": {"imageType": "distroless"}}},
    ]))  # fmt: skip
    cli("apply", "-f", str(resources))
    run = cli("run", "after", "--port", "8080", *idle)
    assert "ignored (Kubernetes only): ProxyConfig default/after: spec.image" in run.stderr
    assert "ignored (Kubernetes only): ProxyConfig istio-system/mesh-wide" not in run.stderr  # it sets no image

    after = proxy_of(state, "after")
    assert workers(after) == 1  # the workload resource's concurrency, over the mesh-wide 3
    assert cmdline(after)[cmdline(after).index("--concurrency") + 1] == "1"
    env = environ(after)
    assert env[VARIABLE] == "workload" and env["PYLON_MESH_WIDE"] == "yes"  # merged variable by variable

    before = proxy_of(state, "before")  # started before the resources: unchanged until restarted, as in Istio
    assert workers(before) == 2 and VARIABLE not in environ(before)
