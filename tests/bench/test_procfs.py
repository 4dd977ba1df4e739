"""Process trees from /proc: parsing a stat line, walking children, CPU and RSS of a real tree."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from pylon.bench.procfs import (RssSampler, has_argument, parse_stat, proc_table, side_thread_cpu_seconds, tree,
                                tree_cpu, tree_rss)

STAT = "4242 (we ird) name) S 17 4242 4242 0 -1 4194560 1 0 0 0 30 12 5 3 20 0 1 0 100 0 0"


def test_parse_stat_counts_fields_after_the_last_parenthesis() -> None:
    assert parse_stat(STAT) == (17, 50.0)  # utime 30 + stime 12 + cutime 5 + cstime 3


def test_tree_walks_every_descendant() -> None:
    children = {1: [10, 11], 10: [100], 100: [1000]}
    assert sorted(tree(10, children)) == [10, 100, 1000] and tree(7, children) == [7]


def test_a_busy_child_shows_in_its_parents_tree() -> None:
    code = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'while True: pass'])"
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.2)
        before = tree_cpu({"t": parent.pid})["t"]
        sampler = RssSampler({"t": parent.pid}, every=0.1)
        sampler.start()
        time.sleep(1.0)
        rss = sampler.stop()
        after = tree_cpu({"t": parent.pid})["t"]
        assert after - before > 0.2  # the grandchild spins (on a shared, busy machine); the parent only waits
        children, _ = proc_table()
        pids = tree(parent.pid, children)
        assert len(pids) == 2 and has_argument(pids[1], b"while True: pass")
        assert not has_argument(pids[1], b"while")  # whole arguments only
        tree_mib, own_mib = rss["t"]
        assert tree_mib > own_mib > 1
        assert tree_rss({"t": parent.pid})["t"][0] > 1
    finally:
        for pid in reversed(tree(parent.pid, proc_table()[0])):
            os.kill(pid, 9)
        parent.wait()


def test_side_threads_count_only_the_threads_beside_the_main_one() -> None:
    spinning_thread = ("import threading, time; threading.Thread(target=lambda: [0 for _ in iter(int, 1)], daemon=True)"
                       ".start(); time.sleep(30)")
    for code, busy in ((spinning_thread, True), ("while True: pass", False)):
        process = subprocess.Popen([sys.executable, "-c", code])
        try:
            time.sleep(0.2)
            before = side_thread_cpu_seconds(process.pid)
            time.sleep(1.0)
            spent = side_thread_cpu_seconds(process.pid) - before
            assert spent > 0.2 if busy else spent == 0.0  # a spinning main thread is not a side thread
        finally:
            process.kill()
            process.wait()
    assert side_thread_cpu_seconds(process.pid) == 0.0  # gone
