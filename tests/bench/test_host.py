"""The machine a benchmark report names: its facts are read, not assumed, and the report line carries them."""

from __future__ import annotations

import os
import platform

import pytest

from pylon.bench.host import cpu_model, describe, host_facts


def test_facts_are_this_machine() -> None:
    facts = host_facts(count=2_000)
    assert facts["cpus"] == os.cpu_count() and facts["kernel"] == platform.release()
    assert facts["python"] == platform.python_version() and facts["cpu_model"] == cpu_model() != ""
    assert facts["syscall_ns"] > 0 and facts["python_step_ns"] > 0
    assert facts["syscall_ns"] > facts["python_step_ns"]  # a call into the kernel costs more than a loop step


def test_the_report_line_names_every_fact() -> None:
    facts = {"cpus": 2, "cpu_model": "AMD EPYC", "kernel": "6.1.0", "hypervisor": "KVM", "python": "3.11.2",
             "syscall_ns": 170, "python_step_ns": 16.4}
    line = describe(facts)
    assert line == ("2 CPUs (AMD EPYC under KVM), Linux 6.1.0, Python 3.11.2; a getppid() call 170 ns, "
                    "a Python loop step 16.4 ns")
    assert "under" not in describe({**facts, "hypervisor": ""})


def test_the_report_says_how_pylons_hot_modules_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ratio measured with the hot modules interpreted is not one measured compiled (pylon.compiled)."""
    monkeypatch.setenv("PYLON_PURE_PYTHON", "1")
    facts = host_facts(count=1_000)
    assert facts["pylon_hot_modules"] == "interpreted: python (PYLON_PURE_PYTHON is set)"
    assert describe(facts).endswith("; pylon's hot modules interpreted: python (PYLON_PURE_PYTHON is set)")
