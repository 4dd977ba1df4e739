"""The agent's merged Prometheus endpoint (Istio's :15020 `/stats/prometheus`): the proxy's own metrics (its admin
`/stats/prometheus`) followed by the agent's, so one scrape of the pod sees both, as Istio's prometheus merge.

The agent's metrics carry Istio's names: `istio_agent_cert_expiry_seconds` (seconds until the workload
certificate expires: what alerts on rotation failing), `istio_agent_scrapes_total` (scrapes of this endpoint).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from pylon.agent.health import http_request, serve_paths

PATH = b"/stats/prometheus"


class AgentMetrics:
    def __init__(self, not_after: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        expiry = Gauge("istio_agent_cert_expiry_seconds", "Seconds until the workload certificate expires.",
                       registry=self.registry)  # fmt: skip
        expiry.set_function(lambda: max(not_after() - time.time(), 0.0))
        self.scrapes = Counter("istio_agent_scrapes", "Scrapes of the merged metrics endpoint.", registry=self.registry)

    def text(self) -> bytes:
        return generate_latest(self.registry)


async def serve_metrics(host: str, port: int, admin_port: int, metrics: AgentMetrics) -> asyncio.Server:
    """Serve the merged metrics; the proxy's part is left out (not an error) while its admin does not answer."""

    async def page() -> bytes:
        metrics.scrapes.inc()
        status, proxy_text = await http_request("127.0.0.1", admin_port, "/stats/prometheus")
        body = (proxy_text if status == 200 else b"") + metrics.text()
        return (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)  # fmt: skip

    return await serve_paths(host, port, {PATH: page})
