"""CPU and memory of process trees from /proc, for every benchmark that measures the processes it runs.

A measured thing is a process tree: a proxy and its workers (targets.py), a mesh sidecar as `pylon agent` and
its children, as Istio's `istio-proxy` container holds pilot-agent and Envoy (mesh_runs/). Its CPU is the
tree's utime+stime plus cutime+cstime (the CPU of children it has reaped), so a run is the difference of two
readings.
"""

from __future__ import annotations

import os
import resource
import statistics
import threading
from pathlib import Path

CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def parse_stat(text: str) -> tuple[int, float]:
    """(parent pid, utime+stime+cutime+cstime in clock ticks) of one /proc/PID/stat line; the command name may
    hold spaces and parentheses, so fields are counted from the last ')' (after it: state ppid ... utime(14)
    stime(15) cutime(16) cstime(17), 1-based in proc(5))."""
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), float(sum(int(f) for f in fields[11:15]))


def proc_table() -> tuple[dict[int, list[int]], dict[int, float]]:
    """Children of every process, and every process's CPU in seconds."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            parent, ticks = parse_stat(Path(f"/proc/{entry.name}/stat").read_text())
        except (OSError, IndexError, ValueError):  # exited while we were looking
            continue
        pid = int(entry.name)
        children.setdefault(parent, []).append(pid)
        cpu[pid] = ticks / CLK
    return children, cpu


def side_thread_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid`'s threads other than its main one (e.g. a proxy worker's access-log
    writer), from /proc/PID/task: what work moved off the event loop costs. 0.0 when `pid` is gone."""
    ticks = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        if task.name == str(pid):
            continue
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (a thread's cutime/cstime are its process's)
    return ticks / CLK


def tree(root: int, children: dict[int, list[int]]) -> list[int]:
    """`root` and every descendant."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_cpu(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named tree."""
    children, cpu = proc_table()
    return {name: sum(cpu.get(p, 0.0) for p in tree(pid, children)) for name, pid in roots.items()}


def rss_mib(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


def tree_rss(roots: dict[str, int]) -> dict[str, tuple[float, float]]:
    """(tree RSS, the root's own RSS) in MiB: with the agent as root, tree minus own is the proxy's."""
    children, _ = proc_table()
    return {name: (sum(rss_mib(p) for p in tree(pid, children)), rss_mib(pid)) for name, pid in roots.items()}


class RssSampler(threading.Thread):
    """Samples the trees' RSS every `every` seconds while a run lasts; `stop()` gives the averages."""

    def __init__(self, roots: dict[str, int], every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.roots, self.every = roots, every
        self.samples: list[dict[str, tuple[float, float]]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.samples.append(tree_rss(self.roots))
            self.stopping.wait(self.every)

    def stop(self) -> dict[str, tuple[float, float]]:
        self.stopping.set()
        self.join()
        if not self.samples:
            return {}
        return {name: (statistics.fmean(s[name][0] for s in self.samples),
                       statistics.fmean(s[name][1] for s in self.samples)) for name in self.roots}  # fmt: skip


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children (the `mesh exec` processes and what they ran)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def has_argument(pid: int, argument: bytes) -> bool:
    """Whether the process's command line holds `argument` as one whole argument."""
    try:
        return b"\0" + argument + b"\0" in b"\0" + Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
