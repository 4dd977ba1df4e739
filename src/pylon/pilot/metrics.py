"""pilot's Prometheus metrics, with istiod's names, in a registry of their own (served on :15014/metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class PilotMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.xds = Gauge("pilot_xds", "Number of endpoints connected to this pilot using XDS.", registry=self.registry)
        self.pushes = Counter("pilot_xds_pushes", "Pilot build and send errors for lds, rds, cds and eds.",
                              ["type"], registry=self.registry)  # fmt: skip
        self.rejects = Counter("pilot_total_xds_rejects", "Total number of XDS responses from pilot rejected by proxy.",
                               ["type"], registry=self.registry)  # fmt: skip
        self.push_time = Histogram("pilot_xds_push_time", "Total time in seconds Pilot takes to push lds, rds, cds and eds.",
                                   ["type"], registry=self.registry)  # fmt: skip
        self.convergence_time = Histogram(
            "pilot_proxy_convergence_time", "Delay in seconds between config change and a proxy receiving all required configuration.",
            buckets=(0.1, 0.5, 1, 3, 5, 10, 20, 30), registry=self.registry)  # fmt: skip
        self.config_errors = Counter("pilot_config_errors", "Config reloads rejected because of invalid resources.",
                                     registry=self.registry)  # fmt: skip
