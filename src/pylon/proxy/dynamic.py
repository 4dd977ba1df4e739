"""The supervisor's dynamic resources: listeners (LDS), clusters (CDS), their endpoints (EDS) and route
configurations (RDS).

Two sources feed one `DynamicConfig`: watched files (Envoy's filesystem xDS,
`FileSources` below) and the ADS stream (`pylon.xds.client`). Either hands it
an update through `offer`, which validates the update completely — the same
checks as at start-up, so a version that would fail in a worker never reaches
one — and then either accepts it (update_success; a new version for the
workers) or rejects it (update_rejected; the ConfigError goes back to the
source, which logs it or NACKs it) while the last good version keeps serving.
Stats use Envoy's names: `listener_manager.lds.*`, `listener_manager.listener_added|modified|removed`,
`cluster_manager.cds.*`,
`cluster_manager.cluster_added|modified|removed`, `http.<prefix>.rds.<name>.*`,
`cluster.<name>.update_*` (an EDS cluster's own subscription).

EDS clusters warm as in Envoy: one reaches the workers only once its
ClusterLoadAssignment has arrived or its `initial_fetch_timeout` has passed
(then with no hosts: 503 UH). Assignments are kept by service name across
changes of the cluster that asks for them (Envoy's EDS cache for ADS), so a
modified cluster serves its known endpoints at once.

LDS listeners warm the same way: one reaches the workers once every route
configuration its HCMs take by RDS has arrived (or timed out); their ports are
bound while the update is checked (`listener_sockets.py`), so a port that
cannot be bound rejects it. RDS follows LDS: the route names LDS listeners
name are watched or asked for as they appear.

Filesystem xDS: each `path_config_source` file holds a DiscoveryResponse and is
replaced by an atomic rename. The supervisor is the only reader of those files
and checks them (by file identity and mtime) every `POLL_INTERVAL_S`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pylon.config.discovery import (
    CLUSTERS, ENDPOINTS, LISTENERS, ROUTE_CONFIGURATIONS, SECRETS, Discovered, ResourceKind, Update,
    parse_discovery_response,
)
from pylon.config.errors import ConfigError, FieldError
from pylon.config.envoy import ConfigSource, HttpConnectionManager, TcpProxy
from pylon.config.loader import (
    bootstrap_secret_refs, config_source_problems, grpc_cluster_message, grpc_clusters, listener_hcms,
    route_cluster_references, shared_configs, shared_name_problems, to_envoy_dict,
)
from pylon.config.secrets import (
    cluster_secret_refs, listener_secret_refs, sds_references, source_conflicts, static_secret_problems,
)
from pylon.proxy.balance import spell_address
from pylon.proxy.validate import validate_clusters, validate_listeners, validate_route_config, validate_secret
from pylon.stats.store import StatsStore

log = logging.getLogger("pylon.main")

#: Envoy's counters of every xDS subscription (SubscriptionStats), whatever its source.
SUBSCRIPTION_COUNTERS = ("update_attempt", "update_success", "update_rejected", "update_failure", "init_fetch_timeout")

#: The kinds a file may be followed for, by type URL.
KINDS_BY_TYPE = {kind.type_url: kind for kind in (ROUTE_CONFIGURATIONS, SECRETS)}

#: How often the watched files are checked; an update takes effect within about this long.
POLL_INTERVAL_S = 0.1


def version_hash(version_info: str) -> int:
    """Envoy's `*.version` gauge: a 64-bit hash of version_info (for spotting a change in a dashboard)."""
    return int.from_bytes(hashlib.blake2b(version_info.encode(), digest_size=8).digest(), "big") >> 1


@dataclass(frozen=True)
class RdsSubscriber:
    """An HTTP connection manager that takes one route configuration by name (from a file or ADS)."""

    stat_prefix: str  # http.<prefix>.rds.<route_config_name>.
    route_name: str
    source: Any  # its rds.config_source


def rds_subscribers_of(listeners: Iterable[Any]) -> list[RdsSubscriber]:
    """One RdsSubscriber per HTTP connection manager of `listeners` that takes its routes by RDS."""
    return [RdsSubscriber(f"http.{hcm.stat_prefix}.rds.{hcm.rds.route_config_name}.", hcm.rds.route_config_name,
                          hcm.rds.config_source)
            for _, hcm in listener_hcms(listeners, "") if hcm.rds is not None]


class ListenerBinder(Protocol):
    """Who binds LDS listeners' sockets (the supervisor), asked while an update is checked, so a port that
    cannot be bound rejects the update instead of failing in the workers."""

    def bind_new(self, listeners: dict[str, Any], source: str) -> None:
        """Bind the listeners not bound yet; ConfigError (naming `resources[i].address`) if one cannot be."""

    def release(self, name: str) -> None:
        """The listener is gone: close the supervisor's sockets for it."""


@dataclass
class Resource:
    """A dynamic resource in force, with what /config_dump shows about it."""

    config: Any
    version_info: str
    last_updated: float
    data: dict[str, Any] | None = None  # Envoy-shaped, made once: what workers (and /config_dump) get

    def envoy(self) -> dict[str, Any]:
        if self.data is None:
            self.data = to_envoy_dict(self.config)
        return self.data


#: The sections of a worker document kept by name, sent as changes once a worker has the whole version.
NAMED_SECTIONS = ("clusters", "endpoints", "routes", "secrets")
#: What an accepted change makes worked out again (clusters and their endpoints go together).
SECTION_GROUPS = ("clusters", "routes", "secrets", "listeners")
_GROUP_OF = {"clusters": "clusters", "endpoints": "clusters", "routes": "routes", "secrets": "secrets"}


class DynamicConfig:
    """Everything the supervisor serves that comes from dynamic sources rather than the bootstrap."""

    def __init__(self, bootstrap: Any, stats: StatsStore, binder: ListenerBinder | None = None) -> None:
        self.stats = stats
        self.binder = binder  # None in --mode validate: nothing is bound
        self.static_cluster_configs = {c.name: c for c in bootstrap.static_resources.clusters}
        self.static_eds = {name: c for name, c in self.static_cluster_configs.items() if c.type == "EDS"}
        self.static_listeners = list(bootstrap.static_resources.listeners)
        dynamic = bootstrap.dynamic_resources
        self.lds_source = dynamic.lds_config if dynamic is not None else None
        self.cds_source = dynamic.cds_config if dynamic is not None else None
        self.ads_config = dynamic.ads_config if dynamic is not None else None
        self.grpc_clusters = grpc_clusters(bootstrap)
        self.static_rds = rds_subscribers_of(self.static_listeners)
        self.static_secrets = {secret.name: secret for secret in bootstrap.static_resources.secrets}
        self.static_secret_refs = list(bootstrap_secret_refs(bootstrap))
        self.secrets: dict[str, Resource] = {}  # from SDS, by name
        self.static_secret_data = {name: to_envoy_dict(secret) for name, secret in self.static_secrets.items()}
        self.no_endpoints: dict[str, dict[str, Any]] = {}  # the data of an empty assignment, by service
        self.pushed: dict[str, Any] = {}  # the sections of the last `changes()`: what workers have
        self._dirty: set[str] = set(SECTION_GROUPS)  # the section groups to work out again at the next push
        self._dirty_clusters: set[str] = set()  # and single clusters (an endpoint change), when not all of them
        self._eds: tuple[dict[str, Any], dict[str, list[str]]] | None = None  # eds_clusters(), eds_services()
        self._cluster_secrets: dict[str, tuple[Any, frozenset[str]]] = {}  # (config, the secrets it names)
        self.secrets_expired: set[str] = set()  # names whose initial_fetch_timeout passed: their users refuse
        self.listeners: dict[str, Resource] = {}
        self.clusters: dict[str, Resource] = {}
        self.routes: dict[str, Resource] = {}
        self.endpoints: dict[str, Resource] = {}  # ClusterLoadAssignments by service name
        self.eds_expired: set[str] = set()  # services whose initial_fetch_timeout passed before they came
        self.rds_expired: set[str] = set()  # route names whose initial_fetch_timeout passed: listeners warm without
        self.lds_version_info = ""
        self.cds_version_info = ""
        self.version = 0  # bumped by every accepted change: what workers are told to apply
        # Envoy shows a subscription's counters from its start, zeros included.
        prefixes = ["listener_manager.lds."] if self.lds_source is not None else []
        if self.lds_source is not None:
            for name in ("listener_added", "listener_modified", "listener_removed"):
                stats.counter(f"listener_manager.{name}")
        prefixes += ["cluster_manager.cds."] if self.cds_source is not None else []
        for prefix in prefixes + [s.stat_prefix for s in self.static_rds]:
            for name in SUBSCRIPTION_COUNTERS:
                stats.counter(prefix + name)
        self._follow_secrets()
        self._follow_eds_clusters()
        self._listener_gauges()

    @property
    def rds_subscribers(self) -> list[RdsSubscriber]:
        """Every HCM that takes routes by RDS: the static listeners' and the LDS listeners'."""
        return self.static_rds + rds_subscribers_of(r.config for r in self.listeners.values())

    def secret_sources(self) -> dict[str, ConfigSource]:
        """The SDS secrets the static and dynamic listeners and clusters name, each with where it comes from."""
        refs = [*self.static_secret_refs, *self._dynamic_secret_refs()]
        return {name: source for name, (_, source) in sds_references(refs).items()}

    def _dynamic_secret_refs(self) -> Iterable[tuple[str, Any]]:
        for name, resource in self.listeners.items():
            yield from ((f"listener {name!r}: {rel}", ref) for rel, ref in listener_secret_refs(resource.config))
        for name, resource in self.clusters.items():
            yield from ((f"cluster {name!r}: {rel}", ref) for rel, ref in cluster_secret_refs(resource.config))

    def secret_table(self) -> dict[str, Any]:
        """Every secret known now, static and from SDS, by name (what TLS contexts are built from)."""
        return {**self.static_secrets, **{name: r.config for name, r in self.secrets.items()}}

    def secret_warm(self, name: str) -> bool:
        """Whether users of the secret serve: it is static or came, or its initial_fetch_timeout passed."""
        return name in self.static_secrets or name in self.secrets or name in self.secrets_expired

    def expire_secret(self, name: str) -> bool:
        """initial_fetch_timeout passed for secret `name`: its users serve without it (their TLS refuses
        connections). True if that changed anything."""
        if self.secret_warm(name) or name not in self.secret_sources():
            return False
        self.secrets_expired.add(name)
        self._count(SECRETS, [name], "init_fetch_timeout")
        self._changed("clusters", "listeners")
        self._cluster_gauges()
        self._listener_gauges()
        return True

    def cluster_warm(self, config: Any) -> bool:
        """Whether a CDS cluster serves: its endpoints (EDS) and the secrets its TLS names came, or timed out."""
        service = config.eds_service_name
        if service and not self.eds_warm(service):
            return False
        return all(self.secret_warm(name) for name in self._secret_names_of(config))

    def _secret_names_of(self, config: Any) -> frozenset[str]:
        """The secrets a cluster's TLS names, worked out once per config (asked for every cluster on every
        change: with 1,000 clusters, walking their transport sockets each time cost more than the change)."""
        held = self._cluster_secrets.get(config.name)
        if held is None or held[0] is not config:
            held = self._cluster_secrets[config.name] = (config, frozenset(r.name for _, r in cluster_secret_refs(config)))
        return held[1]

    def offer(self, kind: ResourceKind[Any], stat_names: Sequence[str], make: Callable[[], Update]) -> Update:
        """Validate and apply the update `make()` builds and return it, or raise its ConfigError (rejected).

        `stat_names` are the route configuration names whose RDS stats count this
        attempt (ignored for CDS): known even when the update cannot be decoded.
        """
        try:
            update = make()
            self._check(update)
        except ConfigError:
            self._count(kind, stat_names, "update_attempt")
            self._count(kind, stat_names, "update_rejected")
            raise
        if kind is ENDPOINTS:
            # Envoy tells only the EDS clusters whose assignment the response holds (a rejection, every one).
            clusters = self.eds_clusters()
            stat_names = [n for n in stat_names if clusters[n].eds_service_name in update.discovered.resources]
        self._count(kind, stat_names, "update_attempt")
        self._accept(update)
        self._count(kind, stat_names, "update_success")
        for prefix in self._prefixes(kind, stat_names):
            self.stats.gauge(prefix + "version").set(version_hash(update.discovered.version_info))
        return update

    def count(self, kind: ResourceKind[Any], stat_names: Sequence[str], name: str) -> None:
        """Count `name` (update_failure, init_fetch_timeout, ...) for CDS, these RDS names or these EDS clusters."""
        self._count(kind, stat_names, name)

    def eds_clusters(self) -> dict[str, Any]:
        """The EDS clusters, static and from CDS, by name, as configured (worked out again after each CDS
        version only: every endpoint update asks)."""
        if self._eds is None:
            clusters = {**self.static_eds, **{n: r.config for n, r in self.clusters.items() if r.config.type == "EDS"}}
            services: dict[str, list[str]] = {}
            for name, config in clusters.items():
                services.setdefault(config.eds_service_name, []).append(name)
            self._eds = clusters, services
        return self._eds[0]

    def eds_services(self) -> dict[str, list[str]]:
        """The ClusterLoadAssignment names the EDS clusters ask for, each with the clusters asking."""
        self.eds_clusters()
        assert self._eds is not None
        return self._eds[1]

    def eds_warm(self, service: str) -> bool:
        """Whether clusters of this service serve (its assignment came, or its initial fetch timed out)."""
        return service in self.endpoints or service in self.eds_expired

    def expire_eds(self, service: str) -> bool:
        """initial_fetch_timeout passed for `service`: its clusters serve with no hosts. True if that changed anything."""
        if self.eds_warm(service) or service not in self.eds_services():
            return False
        self.eds_expired.add(service)
        self._count(ENDPOINTS, self.eds_services()[service], "init_fetch_timeout")
        self._changed_clusters(self.eds_services()[service])
        self._cluster_gauges()
        return True

    def listener_warm(self, listener: Any) -> bool:
        """Whether an LDS listener serves: each route configuration it takes by RDS and each secret its TLS names
        came (or timed out)."""
        return all(s.route_name in self.routes or s.route_name in self.rds_expired
                   for s in rds_subscribers_of([listener])) and all(
            self.secret_warm(ref.name) for _, ref in listener_secret_refs(listener))

    def expire_rds(self, route_name: str) -> bool:
        """initial_fetch_timeout passed for `route_name`: its listeners serve without it. True if that changed anything."""
        if route_name in self.routes or route_name in self.rds_expired:
            return False
        self.rds_expired.add(route_name)
        self._count(ROUTE_CONFIGURATIONS, [route_name], "init_fetch_timeout")
        self._changed("listeners")
        self._listener_gauges()
        return True

    def document(self) -> dict[str, Any]:
        """The whole dynamic version as Envoy-shaped data, for a worker that starts (or must catch up).

        Warming EDS clusters and LDS listeners are left out; a warm cluster's endpoints are in `endpoints`,
        by cluster name. Each resource's data is made once and shared by every document that carries it.
        """
        sections = self._sections(SECTION_GROUPS, {})
        return {"version": self.version, **sections, "names": {key: list(sections[key]) for key in NAMED_SECTIONS}}

    def changes(self) -> dict[str, Any]:
        """What changed since the last `changes()` — which every running worker applied — as a document: the
        named resources whose data changed, and every name in force of each section that may have changed
        (`names`; None: the section did not change), so a worker drops what is not there; listeners whole (a
        worker diffs them). A worker started meanwhile got a whole, newer document: taking these again changes
        nothing for it. Only the sections an accepted update touches are worked out again: with 1,000 clusters,
        sending and decoding every one on each change cost ~70 ms per route swap."""
        dirty = self._dirty
        sections = self._sections(dirty, self.pushed, self._dirty_clusters)
        document: dict[str, Any] = {"version": self.version, "names": {}}
        for key in NAMED_SECTIONS:
            old, new = self.pushed.get(key, {}), sections[key]
            recomputed = _GROUP_OF[key] in dirty or (_GROUP_OF[key] == "clusters" and bool(self._dirty_clusters))
            document[key] = {name: data for name, data in new.items() if old.get(name) is not data} if recomputed else {}
            document["names"][key] = list(new) if recomputed else None
        self.pushed = sections
        self._dirty = set()
        self._dirty_clusters = set()
        return {**sections, **document}

    def _changed(self, *groups: str) -> None:
        """An accepted change: a new version for the workers, these section groups to work out again."""
        self.version += 1
        self._dirty.update(groups)

    def _changed_clusters(self, names: list[str]) -> None:
        """An endpoint change: a new version, in which only these clusters' entries are worked out again."""
        self.version += 1
        self._dirty_clusters.update(names)

    def _sections(self, groups: set[str] | tuple[str, ...], previous: dict[str, Any],
                  only_clusters: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        """The worker document's sections: those of `groups` worked out now, the entries of `only_clusters`
        (an endpoint change) worked out again, the rest as in `previous`."""
        sections = dict(previous)
        if "clusters" in groups or only_clusters:
            full = "clusters" in groups
            clusters: dict[str, Any] = {} if full else dict(previous["clusters"])
            endpoints: dict[str, Any] = {} if full else dict(previous["endpoints"])
            for name in (self.clusters if full else only_clusters):
                clusters.pop(name, None)
                endpoints.pop(name, None)
                resource = self.clusters.get(name)
                if resource is None or not self.cluster_warm(resource.config):
                    continue
                service = resource.config.eds_service_name
                if service:
                    endpoints[name] = self._assignment_data(service)
                clusters[name] = resource.envoy()
            for name, config in self.static_eds.items():  # static EDS clusters: workers built them from the bootstrap
                if (full or name in only_clusters) and self.eds_warm(config.eds_service_name):
                    endpoints[name] = self._assignment_data(config.eds_service_name)
            sections["clusters"], sections["endpoints"] = clusters, endpoints
        if "listeners" in groups:
            sections["listeners"] = [r.envoy() for r in self.listeners.values() if self.listener_warm(r.config)]
            sections["bound_listeners"] = list(self.listeners)  # warming ones too: workers keep their sockets
        if "routes" in groups:
            sections["routes"] = {name: r.envoy() for name, r in self.routes.items()}
        if "secrets" in groups:
            sections["secrets"] = {**self.static_secret_data, **{name: r.envoy() for name, r in self.secrets.items()}}
        return sections

    def _assignment_data(self, service: str) -> dict[str, Any]:
        """A warm EDS cluster's endpoints: its assignment, or none when its initial fetch timed out."""
        assignment = self.endpoints.get(service)
        if assignment is not None:
            return assignment.envoy()
        return self.no_endpoints.setdefault(service, {"cluster_name": service})

    # ------------------------------------------------------------------ checking and accepting
    def _check(self, update: Update) -> None:
        resources = update.discovered.resources
        if update.kind is LISTENERS:
            self._check_listeners(resources, update.source)
            return
        if update.kind is CLUSTERS:
            for i, (name, cluster) in enumerate(resources.items()):
                if name in self.static_cluster_configs:
                    raise ConfigError(update.source, f"resources[{i}].name",
                                      f"{name!r} is a static cluster; CDS cannot replace it")
                if cluster.grpc_only:
                    raise ConfigError(update.source, f"resources[{i}].load_assignment",
                                      "pipe endpoints are supported only for static gRPC clusters (xDS, SDS)")
            self._check_secret_refs(update, [(f"resources[{i}].{rel}", ref) for i, cluster in enumerate(resources.values())
                                             for rel, ref in cluster_secret_refs(cluster)])
            self._check_sources(update, [(f"resources[{i}].eds_cluster_config.eds_config", c.eds_cluster_config.eds_config)
                                         for i, c in enumerate(resources.values()) if c.eds_cluster_config is not None])
            held = {name: r.config for name, r in self.clusters.items()}
            validate_clusters(list(resources.values()), update.source, "resources", self.secret_table(), held)
            self._check_shared_names(update.source, [], resources.values())
            return
        if update.kind is SECRETS:
            for i, secret in enumerate(resources.values()):
                validate_secret(secret, update.source, f"resources[{i}]")
                self._check_secret_kind(update.source, i, secret)
            return
        if update.kind is ENDPOINTS:
            for i, (service, assignment) in enumerate(resources.items()):
                held = self.endpoints.get(service)
                if held is not None and held.config is assignment:
                    continue  # resent unchanged: checked when it came
                try:
                    assignment.check_ip_addresses(f"resources[{i}]", "EDS endpoints need IPs")
                except FieldError as exc:
                    raise ConfigError(update.source, exc.rel_path, exc.message) from None
            return
        for i, (name, route_config) in enumerate(resources.items()):
            held = self.routes.get(name)
            if held is not None and held.config is route_config:
                continue  # resent unchanged (the decoder gave back the config in force): checked when it came
            validate_route_config(route_config, update.source, f"resources[{i}]")
            for path, name in route_cluster_references(route_config):
                if name in self.grpc_clusters:
                    raise ConfigError(update.source, f"resources[{i}].{path}", grpc_cluster_message(name))
                if route_config.validate_clusters and not self._knows_cluster(name):
                    # Envoy's validate_clusters (false by default for RDS): the cluster manager must know it.
                    raise ConfigError(update.source, f"resources[{i}].{path}",
                                      f"unknown cluster {name!r} (validate_clusters is true)")

    def _check_listeners(self, resources: dict[str, Any], source: str) -> None:
        """What Envoy's listener manager refuses, what pylon cannot serve on an LDS listener, then the binding."""
        update = Update(LISTENERS, Discovered("", resources), frozenset(), source)
        refs = [(f"resources[{i}].{rel}", ref) for i, listener in enumerate(resources.values())
                for rel, ref in listener_secret_refs(listener)]
        self._check_secret_refs(update, refs)
        self._check_sources(update, [(f"resources[{i}].{rel}", source)
                                     for i, listener in enumerate(resources.values())
                                     for rel, source in _rds_sources(listener)])
        validate_listeners(list(resources.values()), source, "resources", self.secret_table())
        self._check_shared_names(source, resources.values(), [])
        static_names = {listener.name for listener in self.static_listeners}
        taken = {_socket_key(sa): f"static listener {listener.name or '(unnamed)'!r}"
                 for listener in self.static_listeners if listener.internal_listener is None and not listener.is_udp
                 for sa in listener.socket_addresses if sa.port_value}
        for i, (name, listener) in enumerate(resources.items()):
            path = f"resources[{i}]"
            if name in static_names:
                raise ConfigError(source, f"{path}.name", f"{name!r} is a static listener; LDS cannot replace it")
            if listener.internal_listener is not None:
                raise ConfigError(source, f"{path}.internal_listener",
                                  "internal listeners from LDS are not supported yet (static ones are)")
            if listener.is_udp:
                raise ConfigError(source, f"{path}.address.socket_address.protocol",
                                  "UDP listeners from LDS are not supported yet (static ones are)")
            if listener.additional_addresses:
                raise ConfigError(source, f"{path}.additional_addresses",
                                  "additional addresses on LDS listeners are not supported yet (static ones are)")
            if listener.connection_balance_config is not None:
                raise ConfigError(source, f"{path}.connection_balance_config",
                                  "pylon balances LDS listeners by the kernel only (exact and extend balancing "
                                  "need the supervisor's load table, sized at start: use a static listener)")
            old = self.listeners.get(name)
            if old is not None and _address_key(old.config) != _address_key(listener):
                raise ConfigError(source, f"{path}.address",
                                  f"listener {name!r} has a different address {_spell_address(listener)} from the "
                                  f"existing listener address {_spell_address(old.config)}")
            if old is not None and old.config.bind_to_port != listener.bind_to_port:
                raise ConfigError(source, f"{path}.bind_to_port",
                                  f"listener {name!r} cannot change bind_to_port; remove it and add it again")
            if listener.socket_address.port_value:
                other = taken.setdefault(_address_key(listener), f"listener {name!r}")
                if other != f"listener {name!r}":
                    raise ConfigError(source, f"{path}.address",
                                      f"listener {name!r} has the same address {_spell_address(listener)} as {other}; "
                                      "two listeners cannot bind one address and port")
            for rel, cluster, validated in _terminal_cluster_references(listener):
                if cluster in self.grpc_clusters:
                    raise ConfigError(source, f"{path}.{rel}", grpc_cluster_message(cluster))
                if validated and self.cds_source is None and cluster not in self.static_cluster_configs:
                    raise ConfigError(source, f"{path}.{rel}", f"unknown cluster {cluster!r}")
        if self.binder is not None:
            self.binder.bind_new(resources, source)

    def _check_shared_names(self, source: str, listeners: Iterable[Any], clusters: Iterable[Any]) -> None:
        """Envoy's refusal of an update that gives a name shared by name (a DNS cache) other settings than the
        static resources and the held ones of the other kind have (the update's own kind it replaces)."""
        held_listeners = [r.config for r in self.listeners.values()] if not listeners else []
        held_clusters = [r.config for r in self.clusters.values()] if not clusters else []
        kept = shared_configs([*self.static_listeners, *held_listeners], "listeners",
                              [*self.static_cluster_configs.values(), *held_clusters], "clusters")
        for path, message in shared_name_problems([*kept, *shared_configs(listeners, "resources", clusters,
                                                                          "resources")]):
            raise ConfigError(source, path, message)

    def _check_secret_refs(self, update: Update, refs: list[tuple[str, Any]]) -> None:
        """An LDS or CDS update's secret references: static ones exist, each name has one source, sources reach
        their streams. The other kind's current references count: the update replaces its own kind's."""
        for path, problem in static_secret_problems(refs, self.static_secrets):
            raise ConfigError(update.source, path, problem)
        others = self.listeners if update.kind is CLUSTERS else self.clusters
        of_kind = listener_secret_refs if update.kind is CLUSTERS else cluster_secret_refs
        known: dict[str, ConfigSource | None] = dict.fromkeys(self.static_secrets)
        for _, ref in [*self.static_secret_refs, *(r for o in others.values() for r in of_kind(o.config))]:
            known.setdefault(ref.name, ref.sds_config)
        for path, problem in source_conflicts(refs, known):
            raise ConfigError(update.source, path, problem)
        self._check_sources(update, [(f"{path}.sds_config", ref.sds_config) for path, ref in refs
                                     if ref.sds_config is not None])

    def _check_sources(self, update: Update, sources: list[tuple[str, Any]]) -> None:
        """Config sources in an update: `ads` needs the bootstrap's ads_config, gRPC ones a static cluster."""
        problems = config_source_problems(sources, self.static_cluster_configs.values(), self.ads_config is not None)
        for path, problem in problems:
            raise ConfigError(update.source, path, problem)

    def _check_secret_kind(self, source: str, index: int, secret: Any) -> None:
        """A secret named as a certificate must hold one, and one named as a validation context must hold that."""
        table = {**self.secret_table(), secret.name: secret}
        users = [*((f"listener {n!r}", listener_secret_refs(r.config)) for n, r in self.listeners.items()),
                 *((f"cluster {n!r}", cluster_secret_refs(r.config)) for n, r in self.clusters.items()),
                 ("the bootstrap", iter(self.static_secret_refs))]
        for who, refs in users:
            for rel, ref in refs:
                if ref.name != secret.name:
                    continue
                wants_certificate = "tls_certificate_sds_secret_configs[" in rel
                has = table[secret.name].tls_certificate if wants_certificate else table[secret.name].validation_context
                if has is None:
                    field = "tls_certificate" if wants_certificate else "validation_context"
                    raise ConfigError(source, f"resources[{index}]", f"secret {secret.name!r} holds no {field}, "
                                                                     f"which {who} needs ({rel})")

    def _knows_cluster(self, name: str) -> bool:
        """Whether the cluster manager has `name`: static, or from CDS (warming ones too, as Envoy counts them)."""
        return name in self.static_cluster_configs or name in self.clusters

    def _accept(self, update: Update) -> None:
        if update.kind is ENDPOINTS:
            self._accept_endpoints(update)
            return
        if update.kind is SECRETS:
            self._accept_secrets(update)
            return
        if update.kind is LISTENERS:
            self._accept_listeners(update)
            return
        now = time.time()
        clusters = update.kind is CLUSTERS
        target = self.clusters if clusters else self.routes
        for name, config in update.discovered.resources.items():
            old = target.get(name)
            if _replace(target, name, config, update.discovered.version_of(name), now):
                if clusters:
                    self.stats.counter("cluster_manager.cluster_added" if old is None
                                       else "cluster_manager.cluster_modified").inc()
        for name in update.removed - set(update.discovered.resources):
            if target.pop(name, None) is not None and clusters:
                self.stats.counter("cluster_manager.cluster_removed").inc()
        if clusters:
            self._eds = None  # the EDS clusters changed: eds_clusters() works them out again
            for name in set(self._cluster_secrets) - set(self.clusters):
                del self._cluster_secrets[name]
            self.cds_version_info = update.discovered.version_info
            self._follow_eds_clusters()
            self._follow_secrets()
            self._changed("clusters", "secrets", "listeners")
            self._cluster_gauges()
        else:
            self._changed("routes", "listeners")
        self._listener_gauges()  # a listener waiting for its routes may be warm now

    def _accept_listeners(self, update: Update) -> None:
        """LDS is the state of the world: absent listeners go (drained by the workers), new RDS names start."""
        now = time.time()
        before = {s.stat_prefix for s in self.rds_subscribers}
        for name, config in update.discovered.resources.items():
            old = self.listeners.get(name)
            if _replace(self.listeners, name, config, update.discovered.version_of(name), now):
                self.stats.counter("listener_manager.listener_added" if old is None
                                   else "listener_manager.listener_modified").inc()
        for name in update.removed - set(update.discovered.resources):
            if self.listeners.pop(name, None) is not None:
                self.stats.counter("listener_manager.listener_removed").inc()
                if self.binder is not None:
                    self.binder.release(name)
        subscribers = self.rds_subscribers
        for prefix in {s.stat_prefix for s in subscribers} - before:
            for counter in SUBSCRIPTION_COUNTERS:
                self.stats.counter(prefix + counter)
        wanted = {s.route_name for s in subscribers}
        for route_name in set(self.routes) - wanted:
            del self.routes[route_name]  # no HCM takes it any more (Envoy drops an unused route configuration)
        self.rds_expired &= wanted
        self.lds_version_info = update.discovered.version_info
        self._follow_secrets()
        self._changed(*SECTION_GROUPS)
        self._listener_gauges()

    def _listener_gauges(self) -> None:
        """Envoy's listener counts: active (static and warm LDS listeners) and warming."""
        warming = sum(1 for r in self.listeners.values() if not self.listener_warm(r.config))
        self.stats.gauge("listener_manager.total_listeners_warming").set(warming)
        self.stats.gauge("listener_manager.total_listeners_active").set(
            len(self.static_listeners) + len(self.listeners) - warming)

    def _accept_secrets(self, update: Update) -> None:
        """Keep the secrets some listener or cluster names (SDS names its subscriptions: absence removes nothing)."""
        now = time.time()
        wanted = self.secret_sources()
        for name, secret in update.discovered.resources.items():
            if name in wanted:
                _replace(self.secrets, name, secret, update.discovered.version_of(name), now)
        self._changed("secrets", "clusters", "listeners")
        self._cluster_gauges()
        self._listener_gauges()

    def _follow_secrets(self) -> None:
        """After LDS or CDS: forget secrets nothing names any more; new subscriptions' counters start at 0."""
        sources = self.secret_sources()
        for name in set(self.secrets) - set(sources):
            del self.secrets[name]
        self.secrets_expired &= set(sources)
        for name in sources:
            for counter in SUBSCRIPTION_COUNTERS:
                self.stats.counter(f"sds.{name}.{counter}")

    def _accept_endpoints(self, update: Update) -> None:
        """Keep the assignments some cluster asks for (Envoy ignores the others)."""
        now = time.time()
        wanted = self.eds_services()
        changed: list[str] = []
        arrived = False  # a first assignment: clusters may stop warming
        for service, assignment in update.discovered.resources.items():
            if service in wanted:
                arrived = arrived or not self.eds_warm(service)
                if _replace(self.endpoints, service, assignment, update.discovered.version_of(service), now):
                    changed += wanted[service]
        self._changed_clusters(changed)
        if arrived:
            self._cluster_gauges()

    def _follow_eds_clusters(self) -> None:
        """After CDS: forget assignments no cluster asks for any more; new EDS clusters' counters start at 0."""
        services = self.eds_services()
        for service in set(self.endpoints) - set(services):
            del self.endpoints[service]
        self.eds_expired &= set(services)
        for names in services.values():
            for name in names:
                for counter in SUBSCRIPTION_COUNTERS:
                    self.stats.counter(f"cluster.{name}.{counter}")

    def _cluster_gauges(self) -> None:
        """Envoy's active (serving) and warming (EDS not yet in) cluster counts."""
        warming = sum(1 for r in self.clusters.values() if not self.cluster_warm(r.config))
        self.stats.gauge("cluster_manager.warming_clusters").set(warming)
        self.stats.gauge("cluster_manager.active_clusters").set(len(self.static_cluster_configs) + len(self.clusters) - warming)

    def _count(self, kind: ResourceKind[Any], stat_names: Sequence[str], name: str) -> None:
        for prefix in self._prefixes(kind, stat_names):
            self.stats.counter(prefix + name).inc()

    def _prefixes(self, kind: ResourceKind[Any], stat_names: Sequence[str]) -> list[str]:
        if kind is LISTENERS:
            return ["listener_manager.lds."]
        if kind is CLUSTERS:
            return ["cluster_manager.cds."]
        if kind is ENDPOINTS:
            return [f"cluster.{name}." for name in stat_names]
        if kind is SECRETS:
            return [f"sds.{name}." for name in stat_names]
        return [s.stat_prefix for s in self.rds_subscribers if s.route_name in stat_names]

    # ------------------------------------------------------------------ admin
    def config_dump(self) -> list[dict[str, Any]]:
        """Envoy's ListenersConfigDump, ClustersConfigDump (dynamic part) and RoutesConfigDump, for /config_dump."""
        def stamp(seconds: float) -> str:
            return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"

        return [
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "version_info": self.lds_version_info,
             "static_listeners": [{"listener": {"@type": LISTENERS.type_url, **to_envoy_dict(listener)}}
                                  for listener in self.static_listeners],
             "dynamic_listeners": [
                 {"name": name, ("active_state" if self.listener_warm(r.config) else "warming_state"): {
                     "version_info": r.version_info, "listener": {"@type": LISTENERS.type_url, **to_envoy_dict(r.config)},
                     "last_updated": stamp(r.last_updated)}} for name, r in self.listeners.items()]},
            {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "version_info": self.cds_version_info,
             **{section: [
                 {"version_info": r.version_info, "cluster": {"@type": CLUSTERS.type_url, **to_envoy_dict(r.config)},
                  "last_updated": stamp(r.last_updated)} for r in self.clusters.values()
                 if self.cluster_warm(r.config) == warm]
                for section, warm in (("dynamic_active_clusters", True), ("dynamic_warming_clusters", False))}},
            {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
             "dynamic_route_configs": [
                 {"version_info": r.version_info,
                  "route_config": {"@type": ROUTE_CONFIGURATIONS.type_url, **to_envoy_dict(r.config)},
                  "last_updated": stamp(r.last_updated)} for r in self.routes.values()]},
            self._secrets_dump(stamp),
        ]

    def _secrets_dump(self, stamp: Callable[[float], str]) -> dict[str, Any]:
        """Envoy's SecretsConfigDump (the admin redacts the keys in it, as in every section: redact.py)."""
        def shown(secret: Any) -> dict[str, Any]:
            return {"@type": SECRETS.type_url, **to_envoy_dict(secret)}

        dump: dict[str, Any] = {"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump"}
        if self.static_secrets:
            dump["static_secrets"] = [{"name": name, "secret": shown(secret)}
                                      for name, secret in self.static_secrets.items()]
        active = [{"name": name, "version_info": r.version_info, "last_updated": stamp(r.last_updated),
                   "secret": shown(r.config)} for name, r in self.secrets.items()]
        warming = [{"name": name} for name in self.secret_sources() if name not in self.secrets]
        if active:
            dump["dynamic_active_secrets"] = active
        if warming:
            dump["dynamic_warming_secrets"] = warming
        return dump


def _replace(target: dict[str, Resource], name: str, config: Any, version_info: str, now: float) -> bool:
    """Put `config` in force under `name` unless it is what is there (the same object, as the xDS decoder reuses
    the config of an unchanged resource, or an equal one): the Resource, its data and version stay, so workers
    are sent nothing for it. True if it changed."""
    old = target.get(name)
    if old is not None and (old.config is config or old.config == config):
        return False
    target[name] = Resource(config, version_info, now)
    return True


def _address_key(listener: Any) -> tuple[Any, int, str]:
    return _socket_key(listener.socket_address)


def _socket_key(sa: Any) -> tuple[Any, int, str]:
    """What tells two listening sockets apart: IP (by value), port and network namespace."""
    return ipaddress.ip_address(sa.address), sa.port_value, sa.network_namespace_filepath  # an IP: checked by Listener


def _spell_address(listener: Any) -> str:
    return spell_address(listener.socket_address)


def _rds_sources(listener: Any) -> Iterable[tuple[str, Any]]:
    """(field path below the listener, config source) of the RDS of each HCM of the listener."""
    for path, hcm in listener_hcms([listener], "listener"):
        if hcm.rds is not None:
            yield f"{path.removeprefix('listener[0].')}.rds.config_source", hcm.rds.config_source


def _terminal_cluster_references(listener: Any) -> Iterable[tuple[str, str, bool]]:
    """(field path below the listener, cluster name, whether it must be known) for the clusters its tcp_proxy
    or inline routes use (an inline route table with validate_clusters false may name unknown ones)."""
    for rel, chain in listener.all_filter_chains():
        for k, network_filter in enumerate(chain.filters):
            config = network_filter.typed_config
            base = f"{rel}.filters[{k}].typed_config"
            if isinstance(config, TcpProxy):
                for name_path, name in config.cluster_references():
                    yield f"{base}.{name_path}", name, True
            elif isinstance(config, HttpConnectionManager):
                for rel_route, route_config in config.inline_route_configs():
                    validated = route_config.validate_clusters is not False
                    for rel, name in route_cluster_references(route_config):
                        yield f"{base}.{rel_route}.{rel}", name, validated


# ---------------------------------------------------------------------- filesystem xDS


@dataclass
class WatchedFile:
    """One path_config_source file, what it last held, and the names it must hold (RDS, SDS)."""

    path: str
    kind: ResourceKind[Any]
    required: list[str] = field(default_factory=list)  # the route configurations or secrets read from it
    fingerprint: tuple[int, int, int] | None = None
    names: frozenset[str] = frozenset()  # what the last accepted version held

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


class FileSources:
    """The LDS and CDS files of the bootstrap, and the RDS and SDS files listeners and clusters name, feeding a
    DynamicConfig."""

    def __init__(self, dynamic: DynamicConfig) -> None:
        self.dynamic = dynamic
        self.fixed: list[WatchedFile] = []  # CDS before LDS: a listener may name a cluster CDS brings
        if dynamic.cds_source is not None and dynamic.cds_source.file:
            self.fixed.append(WatchedFile(dynamic.cds_source.file, CLUSTERS))
        if dynamic.lds_source is not None and dynamic.lds_source.file:
            self.fixed.append(WatchedFile(dynamic.lds_source.file, LISTENERS))
        self.named: dict[tuple[str, str], WatchedFile] = {}  # (type URL, path) -> its RDS or SDS file
        self._follow()

    @property
    def files(self) -> list[WatchedFile]:
        return [*self.fixed, *self.named.values()]

    def load_initial(self) -> None:
        """Read every file once at start-up; ConfigError for the first problem (nothing has started yet)."""
        for watched in self.fixed:
            self._load(watched)
        for watched in list(self.named.values()):
            if watched.fingerprint is None:  # not read yet: not one an LDS listener's arrival read already
                self._load(watched)

    def _load(self, watched: WatchedFile) -> None:
        _, text = watched.changed()
        if text is None:
            raise ConfigError(watched.path, "", "cannot read the file (a path_config_source)")
        self._offer(watched, text)

    def poll(self) -> bool:
        """Look at every file; apply what changed and is valid. True when the workers need the new version."""
        applied = False
        for watched in self.files:
            changed, text = watched.changed()
            if not changed or text is None:
                continue
            try:
                self._offer(watched, text)
            except ConfigError as exc:
                log.error("update rejected, the last good version keeps serving: %s", exc)
                continue
            applied = True
        return applied

    def _follow(self) -> list[WatchedFile]:
        """Watch the RDS and SDS files the config names now (an LDS or CDS version may add or drop some); the
        new ones."""
        wanted: dict[tuple[str, str], list[str]] = {}
        named = [(ROUTE_CONFIGURATIONS, s.route_name, s.source) for s in self.dynamic.rds_subscribers]
        named += [(SECRETS, name, source) for name, source in self.dynamic.secret_sources().items()]
        for kind, name, source in named:
            if source.file:
                names = wanted.setdefault((kind.type_url, source.file), [])
                if name not in names:
                    names.append(name)
        new = []
        for key in set(self.named) - set(wanted):
            del self.named[key]
        for key, names in wanted.items():
            watched = self.named.get(key)
            if watched is None:
                watched = self.named[key] = WatchedFile(key[1], KINDS_BY_TYPE[key[0]])
                new.append(watched)
            watched.required = names
        return new

    def _offer(self, watched: WatchedFile, text: str) -> None:
        def make() -> Update:
            discovered = parse_discovery_response(text, watched.path, watched.kind)
            for name in watched.required:
                if name not in discovered.resources:
                    raise ConfigError(watched.path, "resources", f"no {watched.kind.what} named {name!r}")
            # LDS and CDS are the state of the world; an RDS file takes away what it held before and holds no more.
            if watched.kind is CLUSTERS:
                removed = frozenset(self.dynamic.clusters)
            elif watched.kind is LISTENERS:
                removed = frozenset(self.dynamic.listeners)
            else:
                removed = watched.names
            return Update(watched.kind, discovered, removed, watched.path)

        accepted = self.dynamic.offer(watched.kind, watched.required, make)
        watched.names = frozenset(accepted.discovered.resources)
        if watched.kind in (LISTENERS, CLUSTERS):
            for new in self._follow():  # their listeners and clusters warm once these are in
                try:
                    self._load(new)
                except ConfigError as exc:
                    log.error("a %s an update names was rejected; its users wait for it: %s", new.kind.what, exc)
