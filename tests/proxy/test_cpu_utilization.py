"""The cpu_utilization monitor's readings (cpu_utilization.py) from kernel files the test writes: the host's
/proc/stat, cgroup v2 and v1, the EWMA, and the failures the monitor counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from pylon.proxy.cpu_utilization import (
    DAMPENING_ALPHA, CpuReadError, CpuUtilization, container_reader, effective_cpus, host_reader,
)


def write_stat(path: Path, user: int, nice: int, system: int, idle: int) -> None:
    path.write_text(f"cpu  {user} {nice} {system} {idle} 0 0 0 0 0 0\ncpu0 1 2 3 4\n")


def test_host_utilization_is_smoothed_from_zero(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    write_stat(stat, 100, 0, 100, 800)
    monitor = CpuUtilization(host_reader(stat))
    write_stat(stat, 160, 10, 130, 900)  # work +100, total +200: 50%
    assert monitor.pressure() == pytest.approx(0.5 * DAMPENING_ALPHA)
    write_stat(stat, 260, 10, 130, 900)  # all work: 100%
    assert monitor.pressure() == pytest.approx(DAMPENING_ALPHA + (1 - DAMPENING_ALPHA) * 0.5 * DAMPENING_ALPHA)


def test_host_errors(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("intr 1 2 3\n")
    with pytest.raises(CpuReadError):
        host_reader(stat)()
    write_stat(stat, 100, 0, 100, 800)
    monitor = CpuUtilization(host_reader(stat))
    write_stat(stat, 50, 0, 100, 800)  # went backwards
    with pytest.raises(CpuReadError):
        monitor.pressure()
    with pytest.raises(CpuReadError):
        host_reader(tmp_path / "missing")()


@pytest.mark.parametrize(("text", "count"), [("0", 1), ("0-3", 4), ("0,2,4", 3), ("0-2,4", 4), ("0-3,5-7\n", 7)])
def test_effective_cpus(text: str, count: int) -> None:
    assert effective_cpus(text) == count


def test_cgroup_v2_counts_the_cores_it_may_use(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu\n")
    (tmp_path / "cpuset.cpus.effective").write_text("0-3\n")
    (tmp_path / "cpu.max").write_text("200000 100000\n")  # a quota of 2 cores out of 4
    (tmp_path / "cpu.stat").write_text("usage_usec 1000000\nuser_usec 1\n")
    clock = iter([10**9, 2 * 10**9, 3 * 10**9])
    monitor = CpuUtilization(container_reader(tmp_path, lambda: next(clock)))
    (tmp_path / "cpu.stat").write_text("usage_usec 2000000\n")  # 1 s of CPU in 1 s, over 2 cores: 50%
    assert monitor.pressure() == pytest.approx(0.5 * DAMPENING_ALPHA)
    (tmp_path / "cpu.stat").write_text("usage_usec 9000000\n")  # 7 s in 1 s: clamped to 100%
    assert monitor.smoothed < monitor.pressure() <= DAMPENING_ALPHA + (1 - DAMPENING_ALPHA) * 0.5 * DAMPENING_ALPHA


def test_cgroup_v1_is_scaled_by_shares_and_not_clamped(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpuacct").mkdir()
    (tmp_path / "cpu" / "cpu.shares").write_text("500\n")
    (tmp_path / "cpuacct" / "cpuacct.usage").write_text("0\n")
    clock = iter([0, 10**9])
    monitor = CpuUtilization(container_reader(tmp_path, lambda: next(clock)))
    (tmp_path / "cpuacct" / "cpuacct.usage").write_text(f"{10**9}\n")  # 1 core-second at 0.5 cores' shares: 2.0
    assert monitor.pressure() == pytest.approx(2.0 * DAMPENING_ALPHA)


def test_no_cgroup_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CpuReadError, match="no supported cgroup"):
        container_reader(tmp_path)


def test_a_second_reading_within_a_tick_is_no_failure(tmp_path: Path) -> None:
    """The supervisor measures at start and at once again: /proc/stat has not moved, which says nothing new."""
    stat = tmp_path / "stat"
    write_stat(stat, 100, 0, 100, 800)
    monitor = CpuUtilization(host_reader(stat))
    assert monitor.pressure() == 0.0
    write_stat(stat, 150, 0, 150, 900)
    first = monitor.pressure()
    assert monitor.pressure() == first
