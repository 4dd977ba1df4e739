"""`pylon mesh status`'s per-proxy sync table, as `istioctl proxy-status` prints it, from pilot's /debug/syncz
(sans-IO).

Per xDS type: SYNCED when the proxy ACKed the version last sent, STALE when it has not (yet), or rejected
it (the NACK's message is shown below the table), NOT SENT when the proxy never asked for the type.
"""

from __future__ import annotations

from typing import Any

TYPES = ("cds", "lds", "eds", "rds", "sds")


def type_status(entry: dict[str, str] | None) -> str:
    if entry is None or not entry.get("sent"):
        return "NOT SENT"
    return "SYNCED" if entry.get("acked") == entry.get("sent") and not entry.get("nack") else "STALE"


def proxy_rows(syncz: list[dict[str, Any]]) -> list[list[str]]:
    """One row per connected proxy: its `pod.namespace`, its type statuses, and the config version sent."""
    rows = []
    for proxy in sorted(syncz, key=lambda p: p["proxy"]):
        parts = proxy["proxy"].split("~")
        name = parts[2] if len(parts) == 4 else proxy["proxy"]
        types = proxy.get("types", {})
        rows.append([name, *(type_status(types.get(t)) for t in TYPES), proxy.get("config_version", "")])
    return rows


def rejections(syncz: list[dict[str, Any]]) -> list[str]:
    """`pod.namespace type: message` for every type a proxy rejected last."""
    out = []
    for proxy in syncz:
        parts = proxy["proxy"].split("~")
        name = parts[2] if len(parts) == 4 else proxy["proxy"]
        out += [f"{name} {kind}: {entry['nack']}" for kind, entry in proxy.get("types", {}).items() if entry.get("nack")]
    return out
