"""The mesh demo's report tables: sidecar overhead from one mesh, the gateway by key mode, notes kept."""

from __future__ import annotations

from typing import Any

from pylon.bench.mesh_demo_report import (chart_label, gateway_table, html_preface, markdown_report, markdown_table,
                                          sidecar_table)  # fmt: skip
from pylon.bench.mesh_runs.summary import summarize


def run(tag: str, mode: str, p: float, **extra: Any) -> dict[str, Any]:
    return {"tag": tag, "mode": mode, "rep": 1, "ActualQPS": 99.6, "p50_us": p, "p90_us": 2 * p, "p99_us": 3 * p,
            "p999_us": 4 * p, "requests": 100, "errors": 0, "error_percent": 0.0, "error_kinds": {}, **extra}


ROWS = [run("file", "baseline", 1000), run("file", "server_sidecar", 1500, server_millicores=40.0),
        run("file", "both_sidecar", 2500, client_millicores=30.0, server_millicores=45.0),
        run("file", "ingress_https", 3000), run("file", "ingress_https_newconn", 15000, gateway_millicores=600.0,
                                                handshakes_per_gateway_cpu_s=420.4),
        run("cryptomb", "ingress_https", 3100), {"tag": "cryptomb", "mode": "ingress_https_newconn", "rep": 1,
                                                 "failed": "not reachable"}]
KEYS = ["file", "cryptomb", "keyd", "pkcs11"]
SUMMARY = summarize(ROWS, ["baseline", "server_sidecar", "both_sidecar", "ingress_https", "ingress_https_newconn"],
                    KEYS, "tag")


def test_sidecar_table_shows_added_latency_against_no_sidecar() -> None:
    table = sidecar_table(SUMMARY, "file")
    assert [r[0] for r in table.rows] == ["no sidecar", "server sidecar", "both sidecars"]
    base, server, both = table.rows
    assert base[1:5] == ["100", "1.00", "2.00", "3.00"] and base[5:8] == ["-", "-", "-"]
    assert server[5:8] == ["+0.50", "+1.00", "+1.50"] and server[9] == "40"
    assert both[5] == "+1.50" and both[8:10] == ["30", "45"] and both[10] == "0 / 100"


def test_gateway_table_one_row_per_key_mode_with_its_note() -> None:
    notes = {"file": "key inline", "cryptomb": "fallback (software, not accelerated): no IFMA",
             "keyd": "not available yet in pylon mesh", "pkcs11": "not available yet"}
    table = gateway_table(SUMMARY, KEYS, notes)
    file, cmb, keyd, pkcs11 = table.rows
    assert file[1:4] == ["100", "3.00", "9.00"] and file[4:7] == ["100", "15.00", "45.00"]
    assert file[7:10] == ["420", "600", "0 / 200"] and file[-1] == "key inline"
    assert cmb[1] == "100" and cmb[4] == "-" and cmb[-1] == "fallback (software, not accelerated)"  # new-conn: no run
    assert keyd[1:10] == ["-"] * 9 and keyd[-1] == "not available yet in pylon mesh"
    assert pkcs11[-1] == "not available yet"


def test_chart_labels_fit_the_charts() -> None:
    assert chart_label("file", "both_sidecar") == "both sidecars"
    assert chart_label("cryptomb", "ingress_https_newconn") == "cryptomb: gw new conn"
    assert all(len(chart_label(k, m)) <= 28 for k in KEYS for m in ("baseline", "ingress_https", "ingress_https_newconn"))


def test_markdown_and_html_carry_the_same_tables() -> None:
    tables = [sidecar_table(SUMMARY, "file"), gateway_table(SUMMARY, KEYS, {"keyd": "a | b"})]
    notes = {"keyd": "not available yet: why"}
    text = markdown_report(tables, ["intro line"], notes, {"Istio's CSV": "/out/istio-perf.csv"})
    assert text.startswith("# pylon demo") and "intro line" in text and "`/out/istio-perf.csv`" in text
    assert "- keyd: not available yet: why" in text
    assert "| no sidecar | 100 |" in text and "a \\| b" in markdown_table(tables[1])
    page = html_preface(tables, ["<intro>"], notes)
    assert "&lt;intro&gt;" in page and page.count("<table>") == 2 and "both sidecars" in page
    assert "<li>keyd: not available yet: why</li>" in page
