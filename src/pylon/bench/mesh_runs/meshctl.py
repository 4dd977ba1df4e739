"""`pylon mesh` driven through its command line, as a user drives it, with every command logged.

The kit runs the mesh's CLI in subprocesses rather than importing it: what is measured is the mesh as it
is run. `down()` is the one way a run ends, and it survives a second Ctrl-C: the cleanup runs in its own
session (the terminal's SIGINT does not reach it) and is waited for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PYTHON = sys.executable


class MeshCli:
    """Runs `pylon mesh ...` with the mesh state in `state`; appends each command and its output to `log`."""

    def __init__(self, state: Path, log: Path) -> None:
        self.state_dir = state
        self.env = {**os.environ, "PYLON_MESH_STATE": str(state)}
        self.log = log

    def __call__(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([PYTHON, "-m", "pylon.cli", "mesh", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip
        self.record(f"pylon mesh {' '.join(args)}", done.returncode, done.stdout + done.stderr)
        if check and done.returncode != 0:
            raise RuntimeError(f"pylon mesh {' '.join(args[:3])}... failed ({done.returncode}): "
                               f"{done.stdout[-2000:]}{done.stderr[-2000:]}")  # fmt: skip
        return done

    def record(self, command: str, code: int | None, output: str) -> None:
        with self.log.open("a") as log:
            log.write(f"$ {command}\n-> {code}\n{output}\n")

    def exec_command(self, workload: str, command: list[str]) -> list[str]:
        """The command line running `command` inside `workload`'s pod."""
        return [PYTHON, "-m", "pylon.cli", "mesh", "exec", workload, "--", *command]

    def state(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "state.json").read_text())

    def pids(self, kind: str) -> dict[str, int]:
        """workload -> pid of its process named `kind` ('sidecar': the agent, 'app')."""
        return {name: p["pid"] for name, w in self.state()["workloads"].items()
                for p in w["processes"] if p["name"] == kind}  # fmt: skip

    def curl_code(self, client: str, url: str, ca: Path) -> str:
        """The HTTP status `url` answers from inside `client` ('000' when nothing answered)."""
        done = self("exec", client, "--", "curl", "-s", "-m", "3", "--cacert", str(ca), "-o", "/dev/null",
                    "-w", "%{http_code}", url, check=False, timeout=30)  # fmt: skip
        return done.stdout.strip()

    def wait_for(self, client: str, url: str, ca: Path, timeout: float) -> bool:
        """Until `url` answers 200 from `client` (config pushed, certificates issued), or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.curl_code(client, url, ca) == "200":
                return True
            time.sleep(0.5)
        return False

    def rejections(self) -> list[str]:
        """What a proxy refused of its config, as `pylon mesh status` shows it."""
        done = self("status", check=False, timeout=30)
        return [line for line in done.stdout.splitlines() if line.startswith("rejected:")]

    def down(self, timeout: float = 180) -> str:
        """`pylon mesh down`, carried to its end even through Ctrl-C (which it does not receive)."""
        proc = subprocess.Popen([PYTHON, "-m", "pylon.cli", "mesh", "down"], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                output, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
                break
            except KeyboardInterrupt:
                print("still removing the mesh (pylon mesh down) ...", file=sys.stderr, flush=True)
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
                break
        self.record("pylon mesh down", proc.returncode, output)
        return output.strip()


def mesh_namespaces() -> list[str]:
    """The `pm-` namespaces that exist: a mesh is up, or a crashed one is left over."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("pm-")]
