"""The mesh demo's report: what the sidecars cost, what each gateway key mode did, as tables, sans-IO.

Tables are data (a header and rows of text cells) so the console, the markdown file and the HTML page show
the same thing. Latencies in ms here (the CSV keeps Istio's µs). A key mode that could not run is a row with
its reason; cryptomb's row says whether it was accelerated or fell back to software, from the gateway's log.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from pylon.bench.mesh_runs.csv_rows import fmt
from pylon.bench.mesh_runs.modes import INGRESS_MODES, SIDECAR_MODES

SIDECAR_TITLES = {"baseline": "no sidecar", "server_sidecar": "server sidecar", "both_sidecar": "both sidecars"}
INGRESS_TITLES = {"ingress_https": "gw keep-alive", "ingress_https_newconn": "gw new conn"}


def chart_label(key_mode: str, mode: str) -> str:
    """A run's name on the charts (pylon report cuts labels at 28 characters; Istio's stay in the CSV)."""
    return SIDECAR_TITLES.get(mode) or f"{key_mode}: {INGRESS_TITLES.get(mode, mode)}"


@dataclass(frozen=True)
class TextTable:
    title: str
    header: list[str]
    rows: list[list[str]]


def _ms(us: float | None) -> str:
    return fmt(None if us is None else us / 1000, ".2f")


def _added_ms(us: float | None) -> str:
    return fmt(None if us is None else us / 1000, "+.2f")


def _errors(*summaries: dict[str, Any] | None) -> str:
    present = [s for s in summaries if s]
    return f"{sum(s['errors'] for s in present)} / {sum(s['requests'] for s in present)}"


def short_note(note: str) -> str:
    """A note's head for a table cell ('not available yet in pylon mesh', 'fallback (software, not accelerated)');
    the whole note goes under the table."""
    return note.split(": ", 1)[0]


def sidecar_table(summary: dict[str, Any], group: str) -> TextTable:
    """Istio's perf modes in one mesh: latency, added latency against no sidecar, the sidecars' CPU."""
    rows = []
    for mode in SIDECAR_MODES:
        s = summary.get(mode, {}).get(group)
        if not s or not s["reps"]:
            rows.append([SIDECAR_TITLES[mode], "not measured", *["-"] * 8, "; ".join((s or {}).get("failures", []))])
            continue
        added = ["-"] * 3 if mode == "baseline" else [_added_ms(s[f"added_p{p}_us"]) for p in ("50", "90", "99")]
        rows.append([SIDECAR_TITLES[mode], fmt(s["ActualQPS"], ".0f"), _ms(s["p50_us"]), _ms(s["p90_us"]),
                     _ms(s["p99_us"]), *added,
                     fmt(s["client_millicores"]), fmt(s["server_millicores"]), _errors(s)])  # fmt: skip
    return TextTable("Sidecar overhead (Istio's perf modes, keep-alive, plain HTTP between pods)",
                     ["mode", "qps", "p50 ms", "p90 ms", "p99 ms", "+p50", "+p90", "+p99", "client sidecar mc",
                      "server sidecar mc", "errors"], rows)  # fmt: skip


def gateway_table(summary: dict[str, Any], key_modes: list[str], notes: dict[str, str]) -> TextTable:
    """Per gateway key mode: keep-alive and a-handshake-per-request load through the ingress gateway."""
    rows = []
    keep, new = INGRESS_MODES
    for key in key_modes:
        k = summary.get(keep, {}).get(key)
        n = summary.get(new, {}).get(key)
        if not (k and k["reps"]) and not (n and n["reps"]):
            rows.append([key, *["-"] * 9, short_note(notes.get(key, "not measured"))])
            continue
        k = k if k and k["reps"] else None
        n = n if n and n["reps"] else None
        rows.append([key,
                     fmt(k and k["ActualQPS"]), _ms(k and k["p50_us"]), _ms(k and k["p99_us"]),
                     fmt(n and n["ActualQPS"]), _ms(n and n["p50_us"]), _ms(n and n["p99_us"]),
                     fmt(n and n["handshakes_per_gateway_cpu_s"]), fmt(n and n["gateway_millicores"]),
                     _errors(k, n), short_note(notes.get(key, ""))])  # fmt: skip
    return TextTable("Ingress gateway (HTTPS, RSA-2048 credential) by where its key lives",
                     ["key mode", "keep-alive qps", "p50 ms", "p99 ms", "new-conn qps", "p50 ms", "p99 ms",
                      "handshakes per gateway-CPU-s", "gateway mc (new conn)", "errors", "note"], rows)  # fmt: skip


def markdown_table(table: TextTable) -> str:
    lines = [f"## {table.title}", "", "| " + " | ".join(table.header) + " |",
             "|" + "|".join("---" for _ in table.header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def html_table(table: TextTable) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    return f"<h2>{html.escape(table.title)}</h2>\n<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n"


def note_lines(notes: dict[str, str]) -> list[str]:
    """Each key mode's whole note: how it ran, or why it could not."""
    return [f"{key}: {note}" for key, note in notes.items() if note]


def markdown_report(tables: list[TextTable], intro: list[str], notes: dict[str, str], files: dict[str, str]) -> str:
    """The whole markdown report: what ran, the tables, the key modes' notes, where the files are."""
    parts = ["# pylon demo: the seed's benchmark on `pylon mesh`", "", *(f"{line}  " for line in intro), ""]
    parts += [markdown_table(t) for t in tables]
    parts += ["## Gateway key modes", "", *(f"- {line}" for line in note_lines(notes)), ""]
    parts += ["## Files", "", *(f"- {what}: `{path}`" for what, path in files.items()), ""]
    return "\n".join(parts)


def html_preface(tables: list[TextTable], intro: list[str], notes: dict[str, str]) -> str:
    """What goes above `pylon report`'s run table and charts on the HTML page."""
    return ("".join(f"<p>{html.escape(line)}</p>\n" for line in intro if line) + "".join(html_table(t) for t in tables)
            + "<h2>Gateway key modes</h2>\n<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in note_lines(notes))
            + "</ul>\n<h2>Every run</h2>\n")
