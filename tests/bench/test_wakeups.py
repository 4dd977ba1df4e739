"""benchmarks/wakeups.py: wake-ups are counted by the task woken, context switches by the task switched out."""

from __future__ import annotations

from tests.bench.benchmark_scripts import load_benchmark

wakeups = load_benchmark("wakeups")

PERF_SCRIPT = """\
         swapper sched:sched_wakeup: comm=nginx pid=10464 prio=120 target_cpu=000
          python sched:sched_wakeup: comm=wrk pid=10475 prio=120 target_cpu=000
    wrk:worker_0 sched:sched_wakeup: comm=nginx pid=10464 prio=120 target_cpu=001
           nginx sched:sched_switch: prev_comm=nginx prev_pid=10464 prev_prio=120 prev_state=S ==> next_comm=swapper/0
             wrk sched:sched_switch: prev_comm=wrk prev_pid=10475 prev_prio=120 prev_state=S ==> next_comm=nginx
           nginx sched:sched_switch: prev_comm=nginx prev_pid=10464 prev_prio=120 prev_state=S ==> next_comm=wrk
"""


def test_counts_by_the_woken_and_by_the_switched_out() -> None:
    woken, switched = wakeups.count_events(PERF_SCRIPT)
    assert woken == {"nginx": 2, "wrk": 1}
    assert switched == {"nginx": 2, "wrk": 1}
