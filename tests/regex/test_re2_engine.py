"""GoogleRE2Engine.check: compile's verdicts, memoized per process and per program-size limit."""

from __future__ import annotations

import pytest

from pylon.regex import re2_engine
from pylon.regex.re2_engine import GoogleRE2Engine


@pytest.mark.parametrize("pattern", ["(a", "a{500}", "[z-a]"])
def test_check_rejects_what_compile_rejects_with_the_same_message(pattern):
    engine = GoogleRE2Engine()
    with pytest.raises(ValueError) as compiled:
        engine.compile(pattern)
    for _ in range(2):  # the first verdict, then the memoized one
        with pytest.raises(ValueError) as checked:
            engine.check(pattern)
        assert str(checked.value) == str(compiled.value)


def test_check_accepts_what_compile_accepts():
    GoogleRE2Engine().check("/svc[0-9]+/.*")


def test_verdicts_are_per_program_size_limit():
    with pytest.raises(ValueError, match="program size"):
        GoogleRE2Engine(max_program_size=100).check("b{200}")
    GoogleRE2Engine(max_program_size=1000).check("b{200}")  # not the smaller limit's memoized verdict
    with pytest.raises(ValueError, match="program size"):
        GoogleRE2Engine(max_program_size=100).check("b{200}")


def test_a_pattern_is_compiled_once_per_process_for_every_table_that_checks_it(monkeypatch):
    calls: list[str] = []
    real = GoogleRE2Engine._verdict

    def counting(self, pattern):
        calls.append(pattern)
        return real(self, pattern)

    monkeypatch.setattr(GoogleRE2Engine, "_verdict", counting)
    monkeypatch.setattr(re2_engine, "_verdicts", {})
    patterns = [f"/memo{i}/[0-9]+" for i in range(3)]
    for _ in range(3):  # three route updates of the same table, in two engines of the process
        GoogleRE2Engine().compile_set(patterns, ["a", "b", "c"])
    assert calls == patterns


def test_the_memo_is_bounded(monkeypatch):
    monkeypatch.setattr(re2_engine, "_verdicts", {})
    monkeypatch.setattr(re2_engine, "_VERDICTS_MAX", 2)
    engine = GoogleRE2Engine()
    for i in range(5):
        engine.check(f"/bound{i}")
    assert len(re2_engine._verdicts) <= 2
