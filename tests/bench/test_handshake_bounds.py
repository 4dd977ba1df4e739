"""benchmarks/handshake_bounds.py: the floor takes the cheaper of pylon's and nginx's library and kernel parts and the
provider's own signature cost, the ceiling is the comparator's cost over the goal, and the committed results it reads
carry every field it needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.benchmark_scripts import load_benchmark

bounds = load_benchmark("handshake_bounds")


def split(library: float, kernel: float, own: float, signature: float) -> dict[str, float]:
    """A handshake's split with its library part all in "handshake, other", its own code all in the transport."""
    return {"signature": signature, "handshake, other libssl/libcrypto": library, "kernel: socket I/O, other": kernel,
            "TLS transport": own}


def target(cpu: float, ms: dict[str, float]) -> dict[str, object]:
    return {"cpu_ms_per_hs": cpu, "ms_per_hs": ms}


def test_a_goal_below_the_floor_has_no_headroom() -> None:
    per_op = {key: {"openssl_us_per_op": 200.0, "cryptomb_us_per_op": 100.0} for key in ("rsa2048", "ecdsa-p256")}
    results = {
        "pylon-file": target(0.9, split(0.30, 0.08, 0.32, 0.20)),
        "pylon-cryptomb": target(0.8, split(0.31, 0.09, 0.30, 0.10)),
        "nginx": target(0.6, split(0.28, 0.05, 0.01, 0.26)),
        "envoy": target(0.8, {}),
    }
    rows = bounds.full_bounds({"results": {"rsa2048": results, "ecdsa-p256": results}}, per_op)
    first = rows[0]  # rsa2048 pylon-cryptomb / nginx >= 1.4
    assert first["library_ms"] == pytest.approx(0.28) and first["kernel_ms"] == pytest.approx(0.05)
    assert first["signature_ms"] == pytest.approx(0.1) and first["floor_ms"] == pytest.approx(0.43)
    assert first["ceiling_ms"] == pytest.approx(0.6 / 1.4) and first["headroom_ms"] < 0
    assert first["own_code_now_ms"] == pytest.approx(0.30) and first["ratio_now"] == pytest.approx(0.6 / 0.8)
    file_row = rows[2]  # rsa2048 pylon-file / nginx >= 0.9: the key file signs with OpenSSL
    assert file_row["signature_ms"] == pytest.approx(0.2) and file_row["headroom_ms"] == pytest.approx(0.6 / 0.9 - 0.53)


@pytest.mark.parametrize(("own", "reachable"), [(0.2, True), (0.05, False)])
def test_signature_bound_goals_count_the_rest_of_a_handshake(own: float, reachable: bool) -> None:
    """Reachable is read from the run's own ratio with pylon's code taken off (it sees the signature's cost inside
    the proxy), not from crypto_mb's speed-up alone nor from the per-operation costs with the rest at its floor."""
    large = {"crypto_only": {"rsa3072": {"openssl_us_per_op": 2100.0, "cryptomb_us_per_op": 1000.0}},
             "summary": {"rsa3072": {"pylon-file": {"cpu_ms_per_hs": 2.5}, "pylon-cryptomb": {"cpu_ms_per_hs": 1.3}}}}
    row = bounds.signature_bound(large, "rsa3072", 2.0, 0.2, {"pylon-file": own, "pylon-cryptomb": own})
    assert row["speedup_per_op"] == pytest.approx(2.1)  # above the goal,
    assert row["with_rest_at_floor"] == pytest.approx(2.3 / 1.2)  # below it,
    assert row["measured"] == pytest.approx(2.5 / 1.3)  # below it
    assert row["without_own_code"] == pytest.approx((2.5 - own) / (1.3 - own))
    assert row["reachable"] is reachable


def test_runs_on_the_committed_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["handshake_bounds.py", "--out", str(tmp_path)])
    bounds.main()
    report = (tmp_path / "handshake_bounds.md").read_text()
    assert report.count("| rsa2048 ") == 3 and "resumed ecdsa-p256" in report and "rsa3072" in report
