"""Report outputs: Istio's CSV columns and units, the table, PNG and HTML files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from click.testing import CliRunner

from pylon.bench.cli import report
from pylon.bench.report import CSV_COLUMNS, istio_row, table_rows, write_report


def fortio_json(label: str, qps: str, codes: dict[str, int], handshakes: float | None = None) -> dict:
    count = sum(codes.values())
    result = {
        "Labels": label, "StartTime": "2024-01-02T03:04:05Z", "RequestedQPS": qps, "ActualQPS": 1234.56,
        "NumThreads": 8, "RunType": "HTTP", "ActualDuration": 5_000_000_000, "RetCodes": codes,
        "DurationHistogram": {
            "Count": count, "Min": 0.0001, "Max": 0.02, "Sum": 0.5, "Avg": 0.0005, "StdDev": 0.0001,
            "Data": [{"Start": 0.0001, "End": 0.001, "Percent": 90, "Count": count - 1},
                     {"Start": 0.001, "End": 0.02, "Percent": 100, "Count": 1}],
            "Percentiles": [{"Percentile": 50, "Value": 0.0005}, {"Percentile": 75, "Value": 0.00075},
                            {"Percentile": 90, "Value": 0.001}, {"Percentile": 99, "Value": 0.0119},
                            {"Percentile": 99.9, "Value": 0.01919}],
        },
        "Sizes": {"Count": count, "Avg": 223.0},
    }
    if handshakes is not None:
        result["HandshakesPerSec"] = handshakes
    return result


def test_istio_row_units_and_names() -> None:
    row = istio_row(fortio_json("a", "max", {"200": 9, "503": 1}))
    assert row["RequestedQPS"] == 99999999 and row["ActualQPS"] == 1235
    assert (row["min"], row["max"], row["p50"], row["p999"]) == (100, 20000, 500, 19190)
    assert row["errorPercent"] == 10.0 and row["Payload"] == 223 and row["ActualDuration"] == 5


def test_csv_has_istio_columns(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    write_report([fortio_json("a, with comma", "100", {"200": 10}), fortio_json("b", "max", {"-1": 10})], csv=path)
    rows = list(csv.reader(path.open()))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[1][0] == "a, with comma" and rows[1][2] == "100" and rows[1][-1] == "0.0"
    assert rows[2][2] == "99999999" and rows[2][-1] == "100.0"


def test_table_shows_handshakes_only_when_present() -> None:
    header, rows = table_rows([fortio_json("a", "max", {"200": 10})])
    assert header == ["Labels", "ActualQPS", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "error %"]
    assert rows[0][:4] == ["a", "1234.6", "0.500", "1.000"]
    header, rows = table_rows([fortio_json("a", "max", {"200": 10}), fortio_json("b", "max", {"200": 10}, 512.0)])
    assert header[-1] == "handshakes/s" and [r[-1] for r in rows] == ["-", "512.0"]


def test_cli_writes_png_html_csv(tmp_path: Path) -> None:
    runs = []
    for name in ("baseline", "accelerated"):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(fortio_json(name, "max", {"200": 10})))
        runs.append(str(path))
    out = {ext: tmp_path / f"report.{ext}" for ext in ("csv", "png", "html")}
    result = CliRunner().invoke(report, [*runs, "--csv", str(out["csv"]), "--png", str(out["png"]),
                                         "--html", str(out["html"])])
    assert result.exit_code == 0, result.output
    assert "baseline" in result.output and "accelerated" in result.output
    assert out["png"].read_bytes().startswith(b"\x89PNG") and out["png"].stat().st_size > 10_000
    page = out["html"].read_text()
    assert "<table>" in page and "data:image/png;base64," in page and "accelerated" in page
    assert len(out["csv"].read_text().splitlines()) == 3


def test_cli_rejects_non_fortio_json(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("{}")
    result = CliRunner().invoke(report, [str(path)])
    assert result.exit_code == 1 and "not a Fortio result" in result.output


def test_html_page_takes_a_title_and_a_preface_above_the_runs() -> None:
    from pylon.bench.report import html_page

    page = html_page([], None, title="demo <mesh>", preface="<h2>summary</h2>\n")
    assert "<title>demo &lt;mesh&gt;</title>" in page and "<h1>demo &lt;mesh&gt;</h1>" in page
    assert page.index("<h2>summary</h2>") < page.index("<table>")
    assert "<title>pylon load report</title>" in html_page([], None)
