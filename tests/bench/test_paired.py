"""pylon.bench.paired: per-rep ratios and when a goal counts as met."""

from __future__ import annotations

import pytest

from pylon.bench.paired import goal_met, goal_text, paired_ratios, ratio_spread, spread_text


def _run(rep: int, proxy: str, value: float | None, variant: str = "plain") -> dict:
    return {"rep": rep, "variant": variant, "proxy": proxy, "req_per_proxy_cpu_s": value}


def test_ratios_pair_the_runs_of_one_rep_whatever_their_order() -> None:
    runs = [_run(1, "pylon", 120.0), _run(1, "envoy", 100.0), _run(2, "envoy", 50.0), _run(2, "pylon", 55.0),
            _run(1, "pylon", 1.0, variant="tls13")]
    assert paired_ratios(runs, "plain", "req_per_proxy_cpu_s") == pytest.approx([1.2, 1.1])


def test_a_rep_missing_a_side_or_a_value_gives_no_ratio() -> None:
    runs = [_run(1, "pylon", 120.0), _run(2, "pylon", 60.0), _run(2, "envoy", None), _run(3, "pylon", 90.0),
            _run(3, "envoy", 100.0)]
    assert paired_ratios(runs, "plain", "req_per_proxy_cpu_s") == pytest.approx([0.9])


def test_spread_and_its_text() -> None:
    spread = ratio_spread([1.181, 1.207, 1.201])
    assert spread == {"median": 1.201, "min": 1.181, "max": 1.207, "reps": 3}
    assert spread_text(spread) == "1.201 (1.181–1.207)"
    assert ratio_spread([]) is None and spread_text(None) == "-"


@pytest.mark.parametrize(("of_medians", "paired_median", "met"), [
    (1.26, 1.25, True),
    (1.30, 1.20, False),  # a kind ratio of medians from a noisy run does not carry the goal
    (1.20, 1.30, False),
    (None, 1.30, False),
])
def test_a_goal_needs_both_readings(of_medians: float | None, paired_median: float, met: bool) -> None:
    spread = {"median": paired_median, "min": paired_median, "max": paired_median, "reps": 1}
    assert goal_met(of_medians, spread, 1.25) is met
    entry = {"ratio_pylon_over_envoy": of_medians, "paired": spread, "goal": 1.25}
    assert goal_text(entry) == (">= 1.25 met" if met else ">= 1.25 NOT met")


def test_proxy_ab_runs_pair_by_their_side_field() -> None:
    runs = [{"rep": 0, "variant": "plain", "side": "this", "v": 103.0},
            {"rep": 0, "variant": "plain", "side": "baseline", "v": 100.0}]
    assert paired_ratios(runs, "plain", "v", numerator="this", denominator="baseline", side="side") == \
        pytest.approx([1.03])
