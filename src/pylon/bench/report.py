"""`pylon report`: load runs side by side — a table, Istio's CSV, charts, an HTML page.

The CSV follows Istio's perf tooling (`istio/tools` `perf/benchmark/runner/
fortio.py`): `RequestedQPS` "max" becomes 99999999, QPS values are rounded to
integers, latencies are integer microseconds in columns named from the
percentile (`p50`, `p999`), and `errorPercent` counts every call without a 200.
"""

from __future__ import annotations

import base64
import csv
import html
from pathlib import Path
from typing import Any, Mapping, Sequence

from rich.console import Console
from rich.table import Table

from pylon.bench.results import error_percent, latency_ms

CSV_COLUMNS = ("Labels", "StartTime", "RequestedQPS", "ActualQPS", "NumThreads",
               "min", "max", "p50", "p75", "p90", "p99", "p999", "errorPercent")
TABLE_PERCENTILES = (50.0, 90.0, 99.0, 99.9)
MAX_QPS = 99999999  # Istio's stand-in for "max"


def _percentile_column(percentile: float) -> str:
    return "p" + f"{float(percentile):g}".replace(".", "")


def istio_row(result: Mapping[str, Any]) -> dict[str, Any]:
    """One run flattened as Istio's `convert_data` does (latencies in µs)."""
    row: dict[str, Any] = {
        "Labels": result["Labels"],
        "StartTime": result.get("StartTime", ""),
        "RequestedQPS": MAX_QPS if result.get("RequestedQPS") == "max"
        else int(round(float(result.get("RequestedQPS", 0)))),
        "ActualQPS": int(round(float(result["ActualQPS"]))),
        "NumThreads": result.get("NumThreads", ""),
        "RunType": result.get("RunType", ""),
        "ActualDuration": int(result.get("ActualDuration", 0) / 10**9),
    }
    hist = result["DurationHistogram"]
    row["min"] = int(hist["Min"] * 10**6)
    row["max"] = int(hist["Max"] * 10**6)
    for entry in hist.get("Percentiles") or ():
        row[_percentile_column(entry["Percentile"])] = int(entry["Value"] * 10**6)
    row["errorPercent"] = error_percent(result)
    row["Payload"] = int(result.get("Sizes", {}).get("Avg", 0))  # absent from Fortio's gRPC JSON
    return row


def write_csv(results: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Istio's columns, one row per run, `-` where a value is missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for result in results:
            row = istio_row(result)
            writer.writerow([row.get(column, "-") for column in CSV_COLUMNS])
    return path


def _handshakes_per_sec(result: Mapping[str, Any]) -> float | None:
    value = result.get("HandshakesPerSec")
    return None if value is None else float(value)


def table_rows(results: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The comparison table as text cells: labels, QPS, percentiles in ms, errors, handshakes/s."""
    show_handshakes = any(_handshakes_per_sec(r) is not None for r in results)
    header = ["Labels", "ActualQPS"] + [f"p{p:g} ms" for p in TABLE_PERCENTILES] + ["error %"]
    if show_handshakes:
        header.append("handshakes/s")
    rows = []
    for result in results:
        cells = [str(result["Labels"]), f"{float(result['ActualQPS']):.1f}"]
        for p in TABLE_PERCENTILES:
            value = latency_ms(result, p)
            cells.append("-" if value is None else f"{value:.3f}")
        cells.append(f"{error_percent(result):.2f}")
        if show_handshakes:
            hs = _handshakes_per_sec(result)
            cells.append("-" if hs is None else f"{hs:.1f}")
        rows.append(cells)
    return header, rows


def rich_table(results: Sequence[Mapping[str, Any]]) -> Table:
    header, rows = table_rows(results)
    table = Table(title="pylon load runs")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def html_page(results: Sequence[Mapping[str, Any]], png: bytes | None, title: str = "pylon load report",
              preface: str = "") -> str:
    """A self-contained page: `preface` (HTML, e.g. a summary above the runs), the table, and the charts
    embedded as a data URI."""
    header, rows = table_rows(results)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    img = (f'<img alt="pylon load charts" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
           if png else "")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
            f"img{{max-width:100%}}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{preface}"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n{img}\n</body></html>\n")


def write_report(results: Sequence[Mapping[str, Any]], *, csv: str | Path | None = None,
                 png: str | Path | None = None, html: str | Path | None = None,
                 print_table: bool = False, console: Console | None = None) -> None:
    """Write whichever outputs are asked for; optionally print the table to the console."""
    if print_table:
        (console or Console()).print(rich_table(results))
    if csv:
        write_csv(results, csv)
    png_bytes = None
    if png or html:
        from pylon.bench.plots import render_png  # matplotlib is slow to import; only when charts are wanted

        png_bytes = render_png(results)
    if png:
        Path(png).parent.mkdir(parents=True, exist_ok=True)
        Path(png).write_bytes(png_bytes)  # type: ignore[arg-type]
    if html:
        Path(html).parent.mkdir(parents=True, exist_ok=True)
        Path(html).write_text(html_page(results, png_bytes), encoding="utf-8")
