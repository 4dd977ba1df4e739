"""The cpu_utilization resource monitor's readings (sans-IO but for reading the kernel's files).

Envoy's monitor reads, every refresh, the CPU time used since its last reading over the time available, and
smooths it with an exponentially weighted moving average (alpha 0.05, starting from 0, so a sudden spike or
drop moves the pressure slowly). What "used" and "available" are depends on `mode`:

- HOST: `/proc/stat`'s first line: user + nice + system over that plus idle, for the whole host.
- CONTAINER, cgroup v2: `cpu.stat`'s usage_usec over the wall time elapsed times the cores the cgroup may use
  (`cpuset.cpus.effective`, capped by `cpu.max`'s quota/period), clamped to 0..1.
- CONTAINER, cgroup v1: `cpuacct.usage` (ns) scaled by 1000 / `cpu.shares` (millicores) over the wall time,
  not clamped (a cgroup using more cores than its shares reads above 1, as in Envoy).

A reading that fails (a file missing or malformed, time that went backwards) raises `CpuReadError`: the
monitor counts `failed_updates` and keeps its last pressure, as Envoy's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

__all__ = ["CpuReadError", "CpuUtilization", "container_reader", "host_reader"]

#: Envoy's EWMA weight of a new reading.
DAMPENING_ALPHA = 0.05
CGROUP = Path("/sys/fs/cgroup")


class CpuReadError(Exception):
    """A reading could not be taken (the monitor's failed_updates)."""


#: A reading: (work, total) now, in units whose ratio over an interval is the utilization; the cores that ratio
#: is shared by; whether Envoy clamps the result to 0..1 (cgroup v2 only).
Sample = tuple[float, float, float, bool]


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise CpuReadError(f"cannot read {path}: {exc.strerror}") from None


def host_reader(stat: Path = Path("/proc/stat")) -> Callable[[], Sample]:
    def sample() -> Sample:
        line = _read(stat).split("\n", 1)[0]
        fields = line.split()
        if not line.startswith("cpu  ") or len(fields) < 5 or not all(f.isdigit() for f in fields[1:5]):
            raise CpuReadError(f"unexpected format in {stat}")
        user, nice, system, idle = (int(f) for f in fields[1:5])
        work = user + nice + system
        return float(work), float(work + idle), 1.0, False
    return sample


def effective_cpus(text: str) -> int:
    """The CPU count of a cpuset list ("0-3,5")."""
    count = 0
    for token in text.strip().split(","):
        start, dash, end = token.partition("-")
        if not start.isdigit() or (dash and not end.isdigit()):
            raise CpuReadError(f"cannot parse the CPU list {text.strip()!r}")
        count += int(end) - int(start) + 1 if dash else 1
        if dash and int(end) < int(start):
            raise CpuReadError(f"bad CPU range {token!r}")
    if count <= 0:
        raise CpuReadError("no CPUs found")
    return count


def _v2_reader(base: Path, clock: Callable[[], int]) -> Callable[[], Sample]:
    def sample() -> Sample:
        usage = next((line.split()[-1] for line in _read(base / "cpu.stat").splitlines()
                      if line.startswith("usage_usec ")), None)
        if usage is None or not usage.isdigit():
            raise CpuReadError(f"no usage_usec in {base / 'cpu.stat'}")
        cores = float(effective_cpus(_read(base / "cpuset.cpus.effective")))
        quota, _, period = _read(base / "cpu.max").strip().partition(" ")
        if quota != "max":
            if not quota.isdigit() or not period.isdigit() or int(period) <= 0:
                raise CpuReadError(f"cannot parse {base / 'cpu.max'}")
            cores = min(cores, int(quota) / int(period))
        return int(usage) / 1e6, clock() / 1e9, cores, True
    return sample


def _v1_reader(base: Path, clock: Callable[[], int]) -> Callable[[], Sample]:
    def sample() -> Sample:
        shares, usage = _read(base / "cpu" / "cpu.shares").strip(), _read(base / "cpuacct" / "cpuacct.usage").strip()
        if not shares.isdigit() or not usage.isdigit() or int(shares) <= 0:
            raise CpuReadError("cannot parse cpu.shares or cpuacct.usage")
        return int(usage) * 1000 / int(shares) / 1e9, clock() / 1e9, 1.0, False
    return sample


def container_reader(base: Path = CGROUP, clock: Callable[[], int] = time.monotonic_ns) -> Callable[[], Sample]:
    """The reader of the cgroup this process is in: v2 if `cgroup.controllers` is there, else v1."""
    if (base / "cgroup.controllers").exists():
        return _v2_reader(base, clock)
    if (base / "cpu" / "cpu.shares").exists() and (base / "cpuacct" / "cpuacct.usage").exists():
        return _v1_reader(base, clock)
    raise CpuReadError(f"no supported cgroup CPU files under {base}")


class CpuUtilization:
    """One monitor: `pressure()` takes a reading and returns the smoothed utilization (0..1)."""

    def __init__(self, sample: Callable[[], Sample]) -> None:
        self.sample = sample
        self.smoothed = 0.0
        self.previous: Sample | None = None
        try:
            self.previous = sample()  # the baseline, as Envoy's constructor reads once
        except CpuReadError:
            pass

    def pressure(self) -> float:
        current = self.sample()
        previous = self.previous
        if previous is not None and current[:2] == previous[:2]:
            return self.smoothed  # read again within the kernel's tick: nothing new to say (not a failure)
        self.previous = current
        utilization = 0.0
        if previous is not None:
            work, total = current[0] - previous[0], current[1] - previous[1]
            if work < 0 or total <= 0:
                raise CpuReadError("CPU times went backwards")
            utilization = work / (total * current[2])
            if current[3]:
                utilization = min(max(utilization, 0.0), 1.0)
        self.smoothed = utilization * DAMPENING_ALPHA + (1 - DAMPENING_ALPHA) * self.smoothed
        return self.smoothed
