"""The supervisor's dynamic resources: clusters (CDS) and route configurations (RDS) from watched files.

Envoy's filesystem xDS: each `path_config_source` file holds a DiscoveryResponse
and is replaced by an atomic rename. The supervisor is the only reader of those
files. It checks them (by file identity and mtime) every `POLL_INTERVAL_S`,
parses and validates a changed one completely — the same checks as at start-up,
so a version that would fail in a worker never reaches one — and then either
accepts it (update_success; the workers get the new resources) or rejects it
(update_rejected, the error logged with file and field path) while the last good
version keeps serving. Stats use Envoy's names: `cluster_manager.cds.*`,
`cluster_manager.cluster_added|modified|removed`, `http.<prefix>.rds.<name>.*`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from pylon.config.discovery import CLUSTERS, ROUTE_CONFIGURATIONS, Discovered, ResourceKind, parse_discovery_response
from pylon.config.envoy import HttpConnectionManager
from pylon.config.errors import ConfigError
from pylon.config.loader import to_envoy_dict
from pylon.proxy.stats import StatsStore
from pylon.proxy.validate import validate_clusters, validate_route_config

log = logging.getLogger("pylon.main")

#: How often the watched files are checked; an update takes effect within about this long.
POLL_INTERVAL_S = 0.1


def version_hash(version_info: str) -> int:
    """Envoy's `*.version` gauge: a 64-bit hash of version_info (for spotting a change in a dashboard)."""
    return int.from_bytes(hashlib.blake2b(version_info.encode(), digest_size=8).digest(), "big") >> 1


@dataclass
class RdsSubscriber:
    """An HTTP connection manager that takes one route configuration by name from a file."""

    stat_prefix: str  # http.<prefix>.rds.<route_config_name>.
    route_name: str


@dataclass
class WatchedFile:
    """One path_config_source file and what it last held."""

    path: str
    kind: ResourceKind[Any]
    fingerprint: tuple[int, int, int] | None = None
    current: Discovered[Any] | None = None
    subscribers: list[RdsSubscriber] = field(default_factory=list)  # RDS only

    def changed(self) -> tuple[bool, str | None]:
        """(whether the file is not what was last read, its text if it could be read)."""
        try:
            st = os.stat(self.path)
            fingerprint = (st.st_ino, st.st_mtime_ns, st.st_size)
            if fingerprint == self.fingerprint:
                return False, None
            with open(self.path, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            if self.fingerprint not in (None, _UNREADABLE):
                log.warning("%s: cannot read: %s; the last good version keeps serving", self.path,
                            getattr(exc, "strerror", None) or exc)
            if self.fingerprint is not None:
                self.fingerprint = _UNREADABLE  # said once; said again only after it was readable
            return self.fingerprint is None, None
        self.fingerprint = fingerprint
        return True, text


#: The fingerprint of a file that could not be read after having been read.
_UNREADABLE = (-1, -1, -1)


@dataclass
class Resource:
    """A dynamic resource in force, with what /config_dump shows about it."""

    config: Any
    version_info: str
    last_updated: float


class DynamicConfig:
    """Everything the supervisor serves that comes from files rather than the bootstrap."""

    def __init__(self, bootstrap: Any, stats: StatsStore) -> None:
        self.stats = stats
        self.static_clusters = {c.name for c in bootstrap.static_resources.clusters}
        self.cds: WatchedFile | None = None
        dynamic = bootstrap.dynamic_resources
        if dynamic is not None and dynamic.cds_config is not None:
            self.cds = WatchedFile(dynamic.cds_config.file, CLUSTERS)
        self.rds: dict[str, WatchedFile] = {}
        for listener in bootstrap.static_resources.listeners:
            for chain in listener.filter_chains:
                for network_filter in chain.filters:
                    hcm = network_filter.typed_config
                    if isinstance(hcm, HttpConnectionManager) and hcm.rds is not None:
                        path = hcm.rds.config_source.file
                        watched = self.rds.setdefault(path, WatchedFile(path, ROUTE_CONFIGURATIONS))
                        watched.subscribers.append(RdsSubscriber(
                            f"http.{hcm.stat_prefix}.rds.{hcm.rds.route_config_name}.", hcm.rds.route_config_name))
        self.clusters: dict[str, Resource] = {}
        self.routes: dict[str, Resource] = {}
        self.version = 0  # bumped by every accepted change: what workers are told to apply

    @property
    def files(self) -> list[WatchedFile]:
        return ([self.cds] if self.cds is not None else []) + list(self.rds.values())

    def load_initial(self) -> None:
        """Read every file once at start-up; ConfigError for the first problem (nothing has started yet)."""
        for watched in self.files:
            _, text = watched.changed()
            if text is None:
                raise ConfigError(watched.path, "", "cannot read the file (a path_config_source)")
            self._accept(watched, self._check(watched, text))

    def poll(self) -> bool:
        """Look at every file; apply what changed and is valid. True when the workers need the new version."""
        applied = False
        for watched in self.files:
            changed, text = watched.changed()
            if not changed or text is None:
                continue
            self._count(watched, "update_attempt")
            try:
                discovered = self._check(watched, text)
            except ConfigError as exc:
                self._count(watched, "update_rejected")
                log.error("update rejected, the last good version keeps serving: %s", exc)
                continue
            self._accept(watched, discovered)
            applied = True
        return applied

    def document(self) -> dict[str, Any]:
        """The dynamic resources as Envoy-shaped data, for the workers (sent at start and on every change)."""
        return {
            "version": self.version,
            "clusters": [to_envoy_dict(r.config) for r in self.clusters.values()],
            "routes": {name: to_envoy_dict(r.config) for name, r in self.routes.items()},
        }

    # ------------------------------------------------------------------ checking and accepting
    def _check(self, watched: WatchedFile, text: str) -> Discovered[Any]:
        discovered = parse_discovery_response(text, watched.path, watched.kind)
        names = list(discovered.resources)
        if watched.kind is CLUSTERS:
            for i, name in enumerate(names):
                if name in self.static_clusters:
                    raise ConfigError(watched.path, f"resources[{i}].name",
                                      f"{name!r} is a static cluster; CDS cannot replace it")
            validate_clusters(list(discovered.resources.values()), watched.path, "resources")
        else:
            for subscriber in watched.subscribers:
                if subscriber.route_name not in discovered.resources:
                    raise ConfigError(watched.path, "resources",
                                      f"no route configuration named {subscriber.route_name!r}")
            for i, name in enumerate(names):
                validate_route_config(discovered.resources[name], watched.path, f"resources[{i}]")
        return discovered

    def _accept(self, watched: WatchedFile, discovered: Discovered[Any]) -> None:
        now = time.time()
        previous = watched.current.resources if watched.current is not None else {}
        target = self.clusters if watched.kind is CLUSTERS else self.routes
        for name, config in discovered.resources.items():
            old = target.get(name)
            if old is None or old.config != config:
                target[name] = Resource(config, discovered.version_info, now)
                if watched.kind is CLUSTERS:
                    self.stats.counter("cluster_manager.cluster_added" if old is None
                                       else "cluster_manager.cluster_modified").inc()
        for name in set(previous) - set(discovered.resources):
            del target[name]
            if watched.kind is CLUSTERS:
                self.stats.counter("cluster_manager.cluster_removed").inc()
        watched.current = discovered
        self.version += 1
        self._count(watched, "update_success")
        for prefix in self._prefixes(watched):
            self.stats.gauge(prefix + "version").set(version_hash(discovered.version_info))
        self.stats.gauge("cluster_manager.active_clusters").set(len(self.static_clusters) + len(self.clusters))

    def _count(self, watched: WatchedFile, name: str) -> None:
        for prefix in self._prefixes(watched):
            self.stats.counter(prefix + name).inc()

    def _prefixes(self, watched: WatchedFile) -> list[str]:
        if watched.kind is CLUSTERS:
            return ["cluster_manager.cds."]
        return [subscriber.stat_prefix for subscriber in watched.subscribers]

    # ------------------------------------------------------------------ admin
    def config_dump(self) -> list[dict[str, Any]]:
        """Envoy's ClustersConfigDump dynamic part and RoutesConfigDump, for /config_dump."""
        def stamp(seconds: float) -> str:
            return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"

        cds_version = self.cds.current.version_info if self.cds is not None and self.cds.current else ""
        return [
            {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "version_info": cds_version,
             "dynamic_active_clusters": [
                 {"version_info": r.version_info, "cluster": {"@type": CLUSTERS.type_url, **to_envoy_dict(r.config)},
                  "last_updated": stamp(r.last_updated)} for r in self.clusters.values()]},
            {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
             "dynamic_route_configs": [
                 {"version_info": r.version_info,
                  "route_config": {"@type": ROUTE_CONFIGURATIONS.type_url, **to_envoy_dict(r.config)},
                  "last_updated": stamp(r.last_updated)} for r in self.routes.values()]},
        ]
