"""The supervisor's half of the overload manager: it measures the resource monitors every `refresh_interval`,
publishes Envoy's `overload.*` stats and sends the workers each action's scale when one changes (the workers'
half, and the triggers' arithmetic, are in `overload.py`).

The monitors:
- `envoy.resource_monitors.fixed_heap` (FixedHeapConfig): pressure is memory in use over `max_heap_size_bytes`.
  Envoy reads tcmalloc's heap in use; pylon has no such heap (CPython's allocator and every C library's
  `malloc` share the processes), so it reads the resident set size of the proxy's processes, the supervisor and
  every worker, from `/proc/<pid>/statm`. RSS counts what the processes hold from the system, including memory
  an allocator keeps free; on the same traffic it reads higher than Envoy's heap.
- `envoy.resource_monitors.cpu_utilization` (CpuUtilizationConfig): the host's or the container's CPU use,
  smoothed as Envoy's (`cpu_utilization.py`).
- `envoy.resource_monitors.global_downstream_max_connections` (DownstreamConnectionsConfig): the workers refuse
  connections past the limit as they accept them (`downstream_connections.py`); its pressure is the open
  connections over the limit. Envoy 1.40's deprecated runtime key `overload.global_downstream_max_connections`
  sets the same limit when there is no such monitor (Envoy then has no monitor and no `overload.*` stats for it).

Stats, as Envoy names them: `overload.<monitor>.pressure` (percent, a gauge), `.failed_updates` (a reading that
failed; the workers count each refused connection there for the connections monitor, as Envoy does) and
`.skipped_updates`; `overload.<action>.active` (1 while saturated) and `.scale_percent`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Awaitable, Callable

from pylon.config.envoy import SHRINK_HEAP, CpuUtilizationConfig, DownstreamConnectionsConfig, FixedHeapConfig
from pylon.proxy.cpu_utilization import CpuReadError, CpuUtilization, container_reader, host_reader
from pylon.proxy.downstream_connections import ConnectionCounts
from pylon.proxy.overload import HEAP_SHRINK_INTERVAL, action_scales, release_free_memory
from pylon.stats.store import StatsStore

log = logging.getLogger("pylon.proxy.overload")

_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes(pid: int) -> int:
    """A process's resident set size (OSError when it is gone)."""
    with open(f"/proc/{pid}/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE


class OverloadMonitor:
    """Built from the bootstrap; `run` measures and publishes until cancelled."""

    def __init__(self, bootstrap: Any, stats: StatsStore, workers: int) -> None:
        config = bootstrap.overload_manager
        self.config = config
        self.refresh_interval = float(config.refresh_interval) if config is not None else 1.0
        self.heap_monitor: tuple[str, int] | None = None  # (name, max bytes)
        self.cpu_monitor: tuple[str, CpuUtilization] | None = None
        self.connections_monitor: str | None = None
        limit: int | None = None
        for monitor in config.resource_monitors if config is not None else []:
            typed = monitor.typed_config
            if isinstance(typed, FixedHeapConfig):
                self.heap_monitor = (monitor.name, typed.max_heap_size_bytes)
            elif isinstance(typed, CpuUtilizationConfig):  # validate.py checked a CONTAINER has a cgroup to read
                reader = host_reader() if typed.mode == "HOST" else container_reader()
                self.cpu_monitor = (monitor.name, CpuUtilization(reader))
            elif isinstance(typed, DownstreamConnectionsConfig):
                self.connections_monitor = monitor.name
                limit = typed.max_active_downstream_connections
        if limit is None:
            limit = bootstrap.runtime.global_downstream_max_connections
        self.connections_limit = limit
        self.connections = ConnectionCounts.create(workers) if limit is not None else None
        self.pressures: dict[str, float] = {}
        self.scales: dict[str, float] = {action.name: 0.0 for action in config.actions} if config is not None else {}
        self._pressure_gauges: dict[str, Any] = {}
        self._failed: dict[str, Any] = {}
        for name in [m.name for m in config.resource_monitors] if config is not None else []:
            self._pressure_gauges[name] = stats.gauge(f"overload.{name}.pressure")
            self._failed[name] = stats.counter(f"overload.{name}.failed_updates")
            if name != self.connections_monitor:  # Envoy's proactive monitor has no skipped updates
                stats.counter(f"overload.{name}.skipped_updates")
        self._active = {name: stats.gauge(f"overload.{name}.active") for name in self.scales}
        #: shrink_heap's rounds (only when the action is configured, as Envoy registers it)
        self.shrink_count = stats.counter(f"overload.{SHRINK_HEAP}.shrink_count") if SHRINK_HEAP in self.scales else None
        self._scale_percent = {name: stats.gauge(f"overload.{name}.scale_percent") for name in self.scales}

    @classmethod
    def of(cls, bootstrap: Any, stats: StatsStore, workers: int) -> "OverloadMonitor | None":
        """The monitor a bootstrap asks for: an overload_manager, or the runtime's connections limit; else None."""
        if bootstrap.overload_manager is None and bootstrap.runtime.global_downstream_max_connections is None:
            return None
        return cls(bootstrap, stats, workers)

    def fds(self) -> list[int]:
        """What a worker's process inherits."""
        return [self.connections.fd] if self.connections is not None else []

    def worker_init(self) -> dict[str, Any]:
        """A worker's part of the init message: the connections table and limit, the actions' current scales."""
        return {"connections_fd": self.connections.fd if self.connections is not None else None,
                "connections_limit": self.connections_limit, "connections_monitor": self.connections_monitor,
                "scales": dict(self.scales)}

    def measure(self, pids: list[int]) -> bool:
        """Read the monitors and recompute the actions; whether any action's scale changed."""
        if self.heap_monitor is not None:
            name, limit = self.heap_monitor
            try:
                used = sum(resident_bytes(pid) for pid in [os.getpid(), *pids])
            except (OSError, ValueError, IndexError):
                self._failed[name].value += 1  # a worker restarting: keep the last pressure, as Envoy on failure
            else:
                self.pressures[name] = used / limit
        if self.cpu_monitor is not None:
            name, cpu = self.cpu_monitor
            try:
                self.pressures[name] = cpu.pressure()
            except CpuReadError:
                self._failed[name].value += 1  # the last pressure stays, as Envoy's on a failed update
        if self.connections_monitor is not None and self.connections is not None and self.connections_limit:
            self.pressures[self.connections_monitor] = self.connections.total() / self.connections_limit
        for name, pressure in self.pressures.items():
            self._pressure_gauges[name].value = int(pressure * 100)
        scales = action_scales(self.config, self.pressures) if self.config is not None else {}
        for name, scale in scales.items():
            self._active[name].value = 1 if scale >= 1.0 else 0
            self._scale_percent[name].value = int(scale * 100)
        changed = scales != self.scales
        self.scales = scales
        return changed

    async def run(self, pids: Callable[[], list[int]], send: Callable[[dict[str, float]], Awaitable[None]]) -> None:
        """Measure every refresh_interval; send the scales to the workers when they change."""
        while True:
            if self.measure(pids()):
                log.info("overload actions now %s", self.scales)
                await send(dict(self.scales))
            await asyncio.sleep(self.refresh_interval)

    async def shrink_heap(self, tell_workers: Callable[[], Awaitable[None]]) -> None:
        """Every HEAP_SHRINK_INTERVAL while shrink_heap is saturated: release free heap memory here and in every
        worker, one count per round (Envoy's HeapShrinker)."""
        assert self.shrink_count is not None
        while True:
            await asyncio.sleep(HEAP_SHRINK_INTERVAL)
            if self.scales.get(SHRINK_HEAP, 0.0) >= 1.0:
                release_free_memory()
                await tell_workers()
                self.shrink_count.value += 1

    def close(self) -> None:
        if self.connections is not None:
            self.connections.close()

