"""The machine a benchmark ran on, for its report: ratios against Envoy depend on it.

Two machines of the same kind (2 vCPUs of "AMD EPYC" under KVM) gave Envoy 1.40 44.5 and 29.8 µs of CPU per
proxied request on the same config while pylon's moved only from 35.9 to 33.4: a C++ proxy that makes 6 system
calls per request and a Python one that makes 4 weigh the kernel's and the interpreter's costs differently. So a
report says which machine it is, and measures the two costs that tell such machines apart: one trivial system call
(`getppid`, entry and exit with the host's mitigations) and one step of a Python loop (the interpreter's speed).
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from pylon import compiled


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (a VM may show a generic one), else the architecture."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.machine())


def _hypervisor() -> str:
    """The hypervisor's vendor as lscpu reads it from CPUID ("KVM"), '' on bare metal or without lscpu."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Hypervisor vendor")),
                "")


def _best_ns(step: Callable[[int], None], count: int, rounds: int = 5) -> float:
    """ns per step of `step(count)`, the fastest of `rounds` (the least disturbed by the rest of the machine)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        step(count)
        best = min(best, time.perf_counter() - start)
    return best / count * 1e9


def _syscalls(count: int) -> None:
    getppid = os.getppid
    for _ in range(count):
        getppid()


def _python_steps(count: int) -> None:
    total = 0
    for i in range(count):
        total += i


def compiled_modules() -> str:
    """How the pylon processes a benchmark starts from this tree load the hot modules (pylon.compiled): "23 of 23
    compiled", or how many run interpreted."""
    states = compiled.status()
    done = sum(state == "compiled" for state in states.values())
    return f"{done} of {len(states)} compiled" if done else f"interpreted: {next(iter(states.values()))}"


def host_facts(count: int = 200_000) -> dict[str, Any]:
    """CPUs, model, kernel, hypervisor, Python, and ns per system call and per Python loop step (a loop step is
    part of the system call's figure: compare hosts by both); and whether pylon's hot modules run compiled."""
    return {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "kernel": platform.release(),
            "hypervisor": _hypervisor(), "python": platform.python_version(),
            "syscall_ns": round(_best_ns(_syscalls, count)), "python_step_ns": round(_best_ns(_python_steps, count), 1),
            "pylon_hot_modules": compiled_modules()}


def describe(facts: dict[str, Any]) -> str:
    """One line for a report."""
    under = f" under {facts['hypervisor']}" if facts["hypervisor"] else ""
    return (f"{facts['cpus']} CPUs ({facts['cpu_model']}{under}), Linux {facts['kernel']}, Python {facts['python']}; "
            f"a getppid() call {facts['syscall_ns']} ns, a Python loop step {facts['python_step_ns']} ns"
            + (f"; pylon's hot modules {facts['pylon_hot_modules']}" if "pylon_hot_modules" in facts else ""))
