"""Comparison charts of load runs, like the seed's: throughput, latency percentiles, histograms.

Rendered with matplotlib's Agg backend (no display needed) into PNG bytes, so
the report can write them to a file or embed them in HTML.
"""

from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from pylon.bench.results import latency_ms  # noqa: E402

PLOT_PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def short_label(result: Mapping[str, Any], limit: int = 28) -> str:
    label = str(result.get("Labels") or result.get("URL") or "run")
    return label if len(label) <= limit else label[: limit - 1] + "…"


def render_png(results: Sequence[Mapping[str, Any]]) -> bytes:
    """Three panels: ActualQPS bars, latency percentile bars side by side, latency histograms overlaid."""
    labels = [short_label(r) for r in results]
    colors = [plt.get_cmap("tab10")(i % 10) for i in range(len(results))]
    fig, (ax_qps, ax_lat, ax_hist) = plt.subplots(1, 3, figsize=(16, 5), constrained_layout=True)

    qps = [float(r["ActualQPS"]) for r in results]
    bars = ax_qps.bar(range(len(results)), qps, color=colors)
    ax_qps.bar_label(bars, fmt="%.0f", fontsize=8)
    ax_qps.set_xticks(range(len(results)), labels, rotation=20, ha="right", fontsize=8)
    ax_qps.set_title("Throughput")
    ax_qps.set_ylabel("requests per second")

    width = 0.8 / max(1, len(results))
    for i, (result, color) in enumerate(zip(results, colors)):
        values = [latency_ms(result, p) or 0.0 for p in PLOT_PERCENTILES]
        xs = [j + (i - (len(results) - 1) / 2) * width for j in range(len(PLOT_PERCENTILES))]
        ax_lat.bar(xs, values, width=width, color=color, label=labels[i])
    ax_lat.set_xticks(range(len(PLOT_PERCENTILES)), [f"p{p:g}" for p in PLOT_PERCENTILES])
    ax_lat.set_title("Latency percentiles")
    ax_lat.set_ylabel("ms")
    ax_lat.legend(fontsize=8)

    for result, color, label in zip(results, colors, labels):
        data = result["DurationHistogram"].get("Data") or []
        if not data:
            continue
        edges = [data[0]["Start"] * 1000] + [b["End"] * 1000 for b in data]
        counts = [b["Count"] for b in data]
        total = sum(counts) or 1
        ax_hist.stairs([100.0 * c / total for c in counts], edges, color=color, label=label, fill=False,
                       linewidth=1.5)
    ax_hist.set_title("Latency histogram")
    ax_hist.set_xlabel("ms")
    ax_hist.set_ylabel("% of calls")
    if any(r["DurationHistogram"].get("Data") for r in results):
        ax_hist.legend(fontsize=8)

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
