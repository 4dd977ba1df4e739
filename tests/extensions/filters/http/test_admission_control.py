"""admission_control's config and its window (sans-IO parts)."""

from __future__ import annotations

import pytest

from pylon.config.errors import ConfigError
from pylon.extensions.filters.http.admission_control import Window
from tests.extensions.filters.http.loading import load_filter

NAME = "envoy.filters.http.admission_control"
TYPE = "type.googleapis.com/envoy.extensions.filters.http.admission_control.v3.AdmissionControl"
CRITERIA = {"http_criteria": {"http_success_status": [{"start": 100, "end": 400}, {"start": 404, "end": 404}]},
            "grpc_criteria": {"grpc_success_status": [0, 1]}}


def test_what_loads_and_what_envoy_refuses() -> None:
    load_filter(NAME, TYPE, {"enabled": {"default_value": True}, "success_criteria": CRITERIA})
    for config, field in [({}, "success_criteria"),
                          ({"success_criteria": {"http_criteria": {"http_success_status": [{"start": 99, "end": 200}]}}},
                           "http_success_status[0]"),
                          ({"success_criteria": {"grpc_criteria": {"grpc_success_status": [17]}}},
                           "grpc_success_status[0]"),
                          ({"success_criteria": CRITERIA, "sr_threshold": {"default_value": {"value": 0.5}}},
                           "sr_threshold")]:
        with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
            load_filter(NAME, TYPE, config)


def test_the_window_forgets_and_averages() -> None:
    now = [100.0]
    window = Window(10, lambda: now[0])
    for success in (True, False, False):
        window.record(success)
    assert window.counts() == (3, 1) and window.average_rps() == 0  # 3 requests over a 10 s window
    now[0] += 5
    for _ in range(20):
        window.record(True)
    assert window.counts() == (23, 21) and window.average_rps() == 2
    now[0] += 5.5  # the first second's bucket is older than the window now
    assert window.counts() == (20, 20)
