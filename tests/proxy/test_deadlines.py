"""The deadline wheel without sockets: never early, at most one slot late, superseded entries skipped."""

from __future__ import annotations

from pylon.proxy.deadlines import DeadlineWheel


class Target:
    """A connection stand-in whose deadlines are a list; sweep records when it was looked at."""

    def __init__(self, *deadlines: float) -> None:
        self.wake_at = 0.0
        self.deadlines = sorted(deadlines)
        self.looked: list[float] = []

    def sweep(self, now: float) -> float:
        self.looked.append(now)
        self.deadlines = [d for d in self.deadlines if d > now]
        return self.deadlines[0] if self.deadlines else 0.0


def run(wheel: DeadlineWheel, until: float, step: float = 0.001) -> None:
    now = 0.0
    while now <= until:
        wheel.expire(now)
        now += step


def test_fires_never_early_and_within_one_slot() -> None:
    wheel = DeadlineWheel(0.02)
    target = Target(1.0, 2.5)
    wheel.arm(target, 1.0)
    run(wheel, 3.0)
    assert len(target.looked) == 2
    for looked, deadline in zip(target.looked, (1.0, 2.5)):
        assert deadline <= looked <= deadline + 0.02 + 0.001


def test_an_earlier_arm_wins_and_the_later_entry_is_skipped() -> None:
    wheel = DeadlineWheel(0.02)
    target = Target(0.5)
    wheel.arm(target, 5.0)  # e.g. the idle timeout
    wheel.arm(target, 0.5)  # then a route timeout
    wheel.arm(target, 0.7)  # a later one costs nothing: already armed earlier
    assert target.wake_at == 0.5
    run(wheel, 6.0)
    assert len(target.looked) == 1 and 0.5 <= target.looked[0] <= 0.53
    assert not wheel  # nothing left armed


def test_a_deadline_on_the_edge_is_looked_at_again_later_not_in_a_loop() -> None:
    class Stubborn(Target):
        def sweep(self, now: float) -> float:
            self.looked.append(now)
            return now if len(self.looked) < 3 else 0.0  # "not yet" at exactly now

    wheel = DeadlineWheel(0.02)
    target = Stubborn()
    wheel.arm(target, 0.1)
    assert wheel.expire(0.2) == 1  # one look per expire, never a busy loop
    run(wheel, 1.0)
    assert len(target.looked) == 3


def test_disarmed_by_returning_zero() -> None:
    wheel = DeadlineWheel(0.02)
    target = Target()
    wheel.arm(target, 0.0)
    assert not wheel and target.wake_at == 0.0


def test_a_disarmed_target_is_never_looked_at_nor_held() -> None:
    wheel = DeadlineWheel(0.02)
    gone, kept = Target(3600.0), Target(1.0)
    wheel.arm(gone, 3600.0)  # e.g. an upstream connection's idle timeout, then the server closed it
    wheel.arm(kept, 1.0)
    wheel.disarm(gone)
    wheel.disarm(gone)  # twice is harmless
    assert gone.wake_at == 0.0
    assert all(gone not in entries for entries in wheel._slots.values())  # the wheel no longer refers to it
    run(wheel, 2.0)
    assert gone.looked == [] and len(kept.looked) == 1
    assert not wheel


def test_an_earlier_arm_moves_the_target_out_of_its_later_slot() -> None:
    wheel = DeadlineWheel(0.02)
    target = Target(0.5)
    wheel.arm(target, 3600.0)
    wheel.arm(target, 0.5)
    assert [list(entries) for entries in wheel._slots.values()] == [[target]]


def test_a_sweep_may_disarm_another_target_of_the_same_slot() -> None:
    class Closer(Target):
        def __init__(self, other: Target) -> None:
            super().__init__(1.0)
            self.other = other

        def sweep(self, now: float) -> float:
            wheel.disarm(self.other)  # e.g. closing a connection closes its partner
            return super().sweep(now)

    wheel = DeadlineWheel(0.02)
    partner = Target(1.0)
    closer = Closer(partner)
    wheel.arm(closer, 1.0)
    wheel.arm(partner, 1.0)
    run(wheel, 2.0)
    assert len(closer.looked) == 1 and partner.looked == []
