"""Ratios of side-by-side runs paired by repetition: the figure that survives a noisy machine.

The comparisons beside Envoy interleave their repetitions (pylon, Envoy, pylon, ...), so a rep's two runs share
whatever the host was doing then. On these 2 shared cores a busy minute can move both sides' CPU per request by a
third; the ratio of the two medians then mixes runs from different minutes, while the ratio within each rep cancels
most of it. Reports show both: the ratio of medians, and the median of the per-rep ratios with its range, which
says at a glance whether the run was quiet enough to read (a range of a few percent) or not.
"""

from __future__ import annotations

import statistics
from typing import Any, Iterable, Mapping


def paired_ratios(runs: Iterable[Mapping[str, Any]], variant: str, key: str, *, numerator: str = "pylon",
                  denominator: str = "envoy", side: str = "proxy") -> list[float]:
    """`numerator`'s `key` over `denominator`'s, one ratio per repetition in which both ran with a value; a run
    names its side in `side` ("proxy" beside Envoy, "side" in proxy_ab's this/baseline)."""
    by_rep: dict[int, dict[str, float]] = {}
    for run in runs:
        value = run.get(key)
        if run["variant"] == variant and value:
            by_rep.setdefault(run["rep"], {})[run[side]] = value
    return [sides[numerator] / sides[denominator] for _, sides in sorted(by_rep.items())
            if numerator in sides and denominator in sides]


def ratio_spread(ratios: list[float]) -> dict[str, float] | None:
    """Median, lowest and highest of per-rep ratios (None without any)."""
    if not ratios:
        return None
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "reps": len(ratios)}


def paired_spread(runs: Iterable[Mapping[str, Any]], variant: str, key: str, **sides: str
                  ) -> dict[str, float] | None:
    """`ratio_spread` of `paired_ratios` (same arguments): what each report prints beside its ratio of medians."""
    return ratio_spread(paired_ratios(runs, variant, key, **sides))


def spread_text(spread: Mapping[str, float] | None) -> str:
    """`1.201 (1.181–1.207)`, or `-`."""
    if spread is None:
        return "-"
    return f"{spread['median']:.3f} ({spread['min']:.3f}–{spread['max']:.3f})"


def goal_met(ratio_of_medians: float | None, spread: Mapping[str, float] | None, goal: float) -> bool:
    """Both readings reach `goal`: a goal is not claimed on the kinder of two figures."""
    return ratio_of_medians is not None and spread is not None and ratio_of_medians >= goal \
        and spread["median"] >= goal


def goal_text(entry: Mapping[str, Any]) -> str:
    """`>= 1.25 met` / `NOT met` for a summary entry with `ratio_pylon_over_envoy`, `paired` and `goal`."""
    met = goal_met(entry["ratio_pylon_over_envoy"], entry["paired"], entry["goal"])
    return f">= {entry['goal']:g} " + ("met" if met else "NOT met")
