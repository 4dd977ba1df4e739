"""Fortio bucket and percentile maths against hand-computed data."""

from __future__ import annotations

import math

import pytest

from pylon.bench.histogram import (
    BUCKET_VALUES, NUM_BUCKETS, Histogram, bucket_index, calc_percentile, parse_percentiles, percentile_value,
)


@pytest.mark.parametrize(("scaled", "bucket_end"), [
    (-5.0, 0), (0.0, 0), (0.5, 1), (1.0, 1), (1.0000000000001, 1), (1.01, 2), (12.5, 14), (14.0, 14),
    (999.0, 1000), (1000.0, 1000), (1500.0, 2000), (100000.0, 100000),
])
def test_bucket_intervals_are_open_left_closed_right(scaled: float, bucket_end: int) -> None:
    assert BUCKET_VALUES[bucket_index(scaled)] == bucket_end


def test_values_beyond_the_last_boundary_get_the_overflow_bucket() -> None:
    assert bucket_index(100000.5) == NUM_BUCKETS - 1


def test_three_points_export_and_interpolated_percentiles() -> None:
    h = Histogram(0.0, 1.0)
    for v in (10, 20, 30):
        h.record(v)
    data = h.export([10, 50, 66.666, 90, 99.9])
    assert [(b["Start"], b["End"], b["Count"]) for b in data["Data"]] == [(10, 10, 1), (18, 20, 1), (25, 30, 1)]
    assert [round(b["Percent"], 2) for b in data["Data"]] == [33.33, 66.67, 100.0]
    assert (data["Count"], data["Min"], data["Max"], data["Sum"], data["Avg"]) == (3, 10, 30, 60, 20)
    assert data["StdDev"] == pytest.approx(math.sqrt(200 / 3))
    values = {p["Percentile"]: p["Value"] for p in data["Percentiles"]}
    assert values[10] == 10  # below 1/count: the minimum
    assert values[50] == pytest.approx(19.0)  # halfway through ]18, 20]
    assert values[90] == pytest.approx(25 + (90 - 200 / 3) / (100 - 200 / 3) * 5)
    assert calc_percentile(data, 100) == 30


def test_resolution_scales_buckets_in_seconds() -> None:
    h = Histogram(0.0, 0.001)
    for ms in (0.2, 0.7, 1.5, 1.5, 3.2):
        h.record(ms / 1000)
    data = h.export()
    assert [(round(b["Start"], 6), round(b["End"], 6), b["Count"]) for b in data["Data"]] == [
        (0.0002, 0.001, 2), (0.001, 0.002, 2), (0.003, 0.0032, 1)]
    assert "Percentiles" not in data


def test_percentiles_are_go_style_numbers_for_istio_column_names() -> None:
    h = Histogram()
    h.record(0.001)
    percentiles = h.export([50, 99.9])["Percentiles"]
    assert [type(p["Percentile"]) for p in percentiles] == [int, float]


def test_empty_histogram_exports_zeroes_and_null_data() -> None:
    data = Histogram().export([50])
    assert data == {"Count": 0, "Min": 0.0, "Max": 0.0, "Sum": 0.0, "Avg": 0.0, "StdDev": 0.0, "Data": None}
    assert percentile_value(data, 50) is None


def test_merge_same_scale_equals_recording_everything_once() -> None:
    a, b, both = Histogram(), Histogram(), Histogram()
    for i, v in enumerate([0.0004, 0.002, 0.011, 0.05, 0.0009, 0.3]):
        (a if i % 2 else b).record(v)
        both.record(v)
    a.merge(b)
    assert a.export([50, 90]) == both.export([50, 90])


def test_merge_other_scale_rebuckets_midpoints() -> None:
    coarse, fine = Histogram(0.0, 0.01), Histogram(0.0, 0.001)
    fine.record(0.0035)
    coarse.merge(fine)
    assert coarse.count == 1 and coarse.min == 0.0035
    assert coarse.buckets[bucket_index(0.35)] == 1


def test_state_round_trip() -> None:
    h = Histogram(0.0, 0.001)
    h.record(0.004, 3)
    assert Histogram.from_state(h.to_state()).export([50]) == h.export([50])


def test_parse_percentiles() -> None:
    assert parse_percentiles("50, 75,99.9") == [50.0, 75.0, 99.9]
    for bad in ("", "abc", "0", "100"):
        with pytest.raises(ValueError):
            parse_percentiles(bad)
