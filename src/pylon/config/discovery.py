"""Dynamic resources from files (Envoy's filesystem xDS): a DiscoveryResponse parsed into Structs.

A `path_config_source` file holds one `DiscoveryResponse` in YAML or JSON —
`version_info` and `resources`, each resource an object with its `@type` — and
is replaced as a whole by an atomic rename. Parsing is sans-IO (text in,
resources out) so the same code serves the supervisor's watcher, `--mode
validate` and the gRPC transport (`pylon.xds`); errors name the file and the field
path (`resources[2].connect_timeout`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from pylon.config.envoy import Cluster, ClusterLoadAssignment, Listener, RouteConfiguration, Secret, convert
from pylon.config.errors import ConfigError, join_path, split_validation_error
from pylon.config.loader import parse_document

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTE_CONFIGURATION_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER_LOAD_ASSIGNMENT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

#: DiscoveryResponse fields a file may carry; only version_info and resources mean anything in a file.
_RESPONSE_FIELDS = {"version_info", "resources", "type_url", "nonce", "canary", "control_plane"}

ResourceT = TypeVar("ResourceT", Listener, Cluster, RouteConfiguration, ClusterLoadAssignment, Secret)


@dataclass(frozen=True)
class ResourceKind(Generic[ResourceT]):
    """One xDS resource type as pylon decodes it."""

    type_url: str
    struct: type[ResourceT]
    what: str  # for messages: "cluster", "route configuration"
    name_field: str = "name"  # the field that names a resource (a ClusterLoadAssignment's is cluster_name)


LISTENERS = ResourceKind(LISTENER_TYPE, Listener, "listener")
CLUSTERS = ResourceKind(CLUSTER_TYPE, Cluster, "cluster")
ROUTE_CONFIGURATIONS = ResourceKind(ROUTE_CONFIGURATION_TYPE, RouteConfiguration, "route configuration")
ENDPOINTS = ResourceKind(CLUSTER_LOAD_ASSIGNMENT_TYPE, ClusterLoadAssignment, "cluster load assignment", "cluster_name")
SECRETS = ResourceKind(SECRET_TYPE, Secret, "secret")


@dataclass(frozen=True)
class Discovered(Generic[ResourceT]):
    """The resources of one file or response, by name, with the version it gave them (and, from delta xDS, each
    resource's own version)."""

    version_info: str
    resources: dict[str, ResourceT]
    resource_versions: dict[str, str] = field(default_factory=dict)

    def version_of(self, name: str) -> str:
        return self.resource_versions.get(name, self.version_info)


def parse_discovery_response(text: str, source: str, kind: ResourceKind[ResourceT]) -> Discovered[ResourceT]:
    """The resources in `text`, or ConfigError naming `source` and the field path."""
    return discovered_from_data(parse_document(text, source), source, kind)


def discovered_from_data(data: dict[str, Any], source: str, kind: ResourceKind[ResourceT]) -> Discovered[ResourceT]:
    """The resources of a DiscoveryResponse already parsed into proto-JSON data (a file, or one from gRPC)."""
    unknown = sorted(set(data) - _RESPONSE_FIELDS)
    if unknown:
        raise ConfigError(source, unknown[0], "unknown field (a file holds one DiscoveryResponse)")
    version = data.get("version_info", "")
    if not isinstance(version, str):
        raise ConfigError(source, "version_info", "must be a string")
    type_url = data.get("type_url")
    if type_url not in (None, "", kind.type_url):
        raise ConfigError(source, "type_url", f"expected {kind.type_url}, got {type_url!r}")
    items = data.get("resources", [])
    if not isinstance(items, list):
        raise ConfigError(source, "resources", "must be a list")
    return Discovered(version, by_name([decode_resource(item, source, f"resources[{i}]", kind)
                                        for i, item in enumerate(items)], source, kind))


def by_name(resources: list[ResourceT], source: str, kind: ResourceKind[ResourceT]) -> dict[str, ResourceT]:
    """Decoded resources by name; ConfigError for a name given twice."""
    named: dict[str, ResourceT] = {}
    for index, resource in enumerate(resources):
        if resource.name in named:
            raise ConfigError(source, join_path(f"resources[{index}]", kind.name_field),
                              f"duplicate {kind.what} name {resource.name!r}")
        named[resource.name] = resource
    return named


def decode_resource(item: Any, source: str, path: str, kind: ResourceKind[ResourceT]) -> ResourceT:
    """One resource (proto-JSON with its @type) as a config Struct, or ConfigError naming `path` below `source`."""
    if not isinstance(item, dict):
        raise ConfigError(source, path, f"a resource must be an object with an @type, got {type(item).__name__}")
    fields = dict(item)
    type_url = fields.pop("@type", None)
    if type_url != kind.type_url:
        raise ConfigError(source, join_path(path, "@type"), f"expected {kind.type_url}, got {type_url!r}")
    try:
        resource = convert(fields, kind.struct)
    except msgspec.ValidationError as exc:
        field, message = split_validation_error(exc)
        raise ConfigError(source, join_path(path, field), message) from None
    if not getattr(resource, "name", ""):
        raise ConfigError(source, join_path(path, kind.name_field), f"a dynamic {kind.what} needs a name")
    return resource


@dataclass(frozen=True)
class Update:
    """What one source (a watched file, the ADS stream) offers: resources of one kind, and the names it removes."""

    kind: ResourceKind[Any]
    discovered: Discovered[Any]
    removed: frozenset[str]
    source: str  # for errors: a file name, or "ads"
