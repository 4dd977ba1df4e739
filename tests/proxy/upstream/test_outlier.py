"""Outlier detection with a fake clock: detection, enforcement, ejection timing, max_ejection_percent."""

from __future__ import annotations

import random

from pylon.proxy.upstream.host import FAILED_ACTIVE_HC, FAILED_OUTLIER_CHECK, Host
from pylon.proxy.upstream.outlier import OutlierDetector
from pylon.stats.store import StatsStore


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def setup(n_hosts: int = 2, **settings):
    clock = Clock()
    stats = StatsStore()
    settings.setdefault("max_ejection_percent", 100)
    detector = OutlierDetector(stats, "cluster.c.", now=clock, rng=random.Random(1), **settings)
    hosts = [Host((f"10.0.0.{i + 1}", 80)) for i in range(n_hosts)]
    for h in hosts:
        detector.add_host(h)
    return detector, hosts, clock, stats


def stat(stats: StatsStore, name: str) -> int:
    full = f"cluster.c.outlier_detection.{name}"
    return (stats.counters.get(full) or stats.gauges[full]).value


def test_consecutive_5xx_ejects_at_threshold():
    detector, (a, b), clock, stats = setup()
    for _ in range(4):
        a.record_response(500)
    assert a.healthy
    a.record_response(500)
    assert not a.healthy and a.health_flags_str() == "/failed_outlier_check"
    assert b.healthy
    assert stat(stats, "ejections_active") == 1
    assert stat(stats, "ejections_enforced_total") == 1
    assert stat(stats, "ejections_total") == 1
    assert stat(stats, "ejections_consecutive_5xx") == 1
    assert stat(stats, "ejections_detected_consecutive_5xx") == 1
    assert stat(stats, "ejections_enforced_consecutive_5xx") == 1


def test_a_success_resets_the_count():
    detector, (a, _), clock, stats = setup()
    for _ in range(4):
        a.record_response(503)
    a.record_response(200)
    for _ in range(4):
        a.record_response(500)
    assert a.healthy


def test_connect_failures_count_as_5xx():
    detector, (a, _), clock, stats = setup(consecutive_5xx=3)
    a.record_response(500)
    a.record_connect_failure()
    a.record_timeout()
    assert not a.healthy
    assert a.cx_connect_fail == 1 and a.rq_timeout == 1


def test_gateway_failure_detected_but_not_enforced_by_default():
    detector, (a, _), clock, stats = setup(consecutive_5xx=100, consecutive_gateway_failure=3)
    for _ in range(3):
        a.record_response(502)
    assert a.healthy  # enforcing_consecutive_gateway_failure defaults to 0
    assert stat(stats, "ejections_detected_consecutive_gateway_failure") == 1
    assert stat(stats, "ejections_enforced_consecutive_gateway_failure") == 0


def test_gateway_failure_enforced_when_configured_and_500_breaks_the_streak():
    detector, (a, _), clock, stats = setup(
        consecutive_5xx=100, consecutive_gateway_failure=3, enforcing_consecutive_gateway_failure=100,
    )
    a.record_response(502)
    a.record_response(504)
    a.record_response(500)  # a 5xx but not a gateway error: restarts the gateway count
    a.record_response(503)
    a.record_connect_failure()
    assert a.healthy
    a.record_response(504)
    assert not a.healthy
    assert stat(stats, "ejections_enforced_consecutive_gateway_failure") == 1


def test_enforcing_zero_detects_without_ejecting():
    detector, (a, _), clock, stats = setup(enforcing_consecutive_5xx=0)
    for _ in range(5):
        a.record_response(500)
    assert a.healthy
    assert stat(stats, "ejections_detected_consecutive_5xx") == 1
    assert stat(stats, "ejections_enforced_total") == 0


def test_unejection_after_base_time_and_longer_second_ejection():
    detector, (a, _), clock, stats = setup(base_ejection_time=30, interval=10)
    for _ in range(5):
        a.record_response(500)
    clock.t += 29
    detector.on_interval()
    assert not a.healthy
    clock.t += 1
    detector.on_interval()
    assert a.healthy
    assert stat(stats, "ejections_active") == 0
    # Failing again right away: ejected for 2 × base.
    for _ in range(5):
        a.record_response(500)
    assert not a.healthy
    clock.t += 59
    detector.on_interval()
    assert not a.healthy
    clock.t += 1
    detector.on_interval()
    assert a.healthy
    assert a.outlier.num_ejections == 2


def test_counters_restart_after_unejection():
    detector, (a, _), clock, stats = setup(base_ejection_time=1)
    for _ in range(5):
        a.record_response(500)
    for _ in range(3):
        a.record_response(500)  # while ejected, counting goes on but cannot re-eject
    clock.t += 1
    detector.on_interval()
    assert a.healthy
    for _ in range(4):
        a.record_response(500)
    assert a.healthy


def test_backoff_decays_while_healthy():
    detector, (a, _), clock, stats = setup(base_ejection_time=30, interval=10)
    for _ in range(5):
        a.record_response(500)
    clock.t += 30
    detector.on_interval()
    assert a.outlier.backoff == 1
    clock.t += 10
    detector.on_interval()  # a full interval healthy since unejection
    assert a.outlier.backoff == 0
    for _ in range(5):
        a.record_response(500)
    assert detector.ejection_duration(a.outlier) == 30


def test_ejection_time_is_capped_at_max_ejection_time():
    detector, (a, _), clock, stats = setup(base_ejection_time=200, interval=1)
    for _ in range(3):
        for _ in range(5):
            a.record_response(500)
        clock.t += detector.ejection_duration(a.outlier)
        detector.on_interval()
        assert a.healthy
    assert detector.ejection_duration(a.outlier) <= 300


def test_max_ejection_percent_limits_ejections():
    detector, hosts, clock, stats = setup(n_hosts=4, max_ejection_percent=50)
    for h in hosts:
        for _ in range(5):
            h.record_response(500)
    assert [h.healthy for h in hosts] == [False, False, True, True]
    assert stat(stats, "ejections_active") == 2
    assert stat(stats, "ejections_overflow") == 2


def test_default_ten_percent_ejects_nothing_in_a_small_cluster_like_envoy_140():
    # Envoy >= 1.31 ejects only while (ejected + 1) / hosts <= max_ejection_percent; the old
    # "at least one host" rule needs always_eject_one_host, which defaults to false.
    detector, hosts, clock, stats = setup(n_hosts=5, max_ejection_percent=10)
    for _ in range(5):
        hosts[0].record_response(500)
    assert hosts[0].healthy
    assert stat(stats, "ejections_overflow") == 1
    detector10, hosts10, _, _ = setup(n_hosts=10, max_ejection_percent=10)
    for _ in range(5):
        hosts10[0].record_response(500)
        hosts10[1].record_response(500)
    assert not hosts10[0].healthy and hosts10[1].healthy


def test_active_health_check_success_unejects():
    detector, (a, _), clock, stats = setup()
    for _ in range(5):
        a.record_response(500)
    detector.on_active_health_check_success(a)
    assert a.healthy and not a.has_flag(FAILED_OUTLIER_CHECK)
    assert stat(stats, "ejections_active") == 0


def test_active_health_check_success_leaves_hc_failed_host_alone():
    detector, (a, _), clock, stats = setup()
    for _ in range(5):
        a.record_response(500)
    a.set_flag(FAILED_ACTIVE_HC)
    detector.on_active_health_check_success(a)
    assert a.has_flag(FAILED_OUTLIER_CHECK)


def test_removing_an_ejected_host_releases_its_ejection():
    detector, (a, b), clock, stats = setup()
    for _ in range(5):
        a.record_response(500)
    detector.remove_host(a)
    assert stat(stats, "ejections_active") == 0
    assert a.outlier is None
    a.record_response(500)  # no detector any more: only host counters move
    assert a.rq_total == 6
