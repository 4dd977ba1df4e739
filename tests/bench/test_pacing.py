"""Intended send times: fixed rate, counts, deadlines, shared budgets, catch-up rules."""

from __future__ import annotations

from pylon.bench.pacing import Pacer, Tickets, split


def drain(pacer: Pacer, now: float = 0.0) -> list[float]:
    times = []
    while (t := pacer.next_time(now)) is not None:
        times.append(t)
    return times


def test_fixed_rate_schedule_is_independent_of_when_calls_finish() -> None:
    p = Pacer(10.0, 0.5, count=4)
    assert drain(p, now=50.0) == [10.0, 10.5, 11.0, 11.5]  # behind schedule: intended times stay


def test_nocatchup_rebases_when_behind() -> None:
    p = Pacer(10.0, 0.5, count=3, nocatchup=True)
    assert p.next_time(12.0) == 12.0
    assert p.next_time(12.1) == 12.5


def test_max_speed_deadline_and_tickets() -> None:
    p = Pacer(0.0, 0.0, end=1.0)
    assert p.next_time(0.3) == 0.3 and p.next_time(1.0) is None
    tickets = Tickets(3)
    a, b = Pacer(0.0, tickets=tickets), Pacer(0.0, tickets=tickets)
    assert [a.next_time(0), b.next_time(0), a.next_time(0), b.next_time(0), a.next_time(0)] == [0, 0, 0, None, None]


def test_uniform_offset_and_jitter_bounds() -> None:
    assert Pacer(0.0, 1.0, count=1, offset=0.25).next_time(0) == 0.25
    p = Pacer(0.0, 1.0, count=2, jitter=True, rand=lambda: 1.0)
    assert drain(p) == [0.1, 1.1]


def test_split() -> None:
    assert split(10, 4) == [3, 3, 2, 2] and sum(split(7, 7)) == 7
