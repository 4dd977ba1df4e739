"""Generated proto-JSON dicts to protobuf `Any`s, through Envoy's own message definitions (xds-protos).

Parsing with `json_format.ParseDict` is also the check, at the source, that a
generator wrote only fields Envoy's API has, with valid values: a translation
bug becomes an error naming the resource here instead of a NACK at every proxy.
The modules imported below register the message types that generated configs
name in `@type`, so ParseDict can resolve them.

ParseDict is the costliest step of a push, and most of what is pushed is the
same from proxy to proxy and from version to version: `EncodeCache` encodes
each distinct content once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgspec
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message

# Registered for their @type URLs inside generated resources.
import envoy.extensions.access_loggers.file.v3.file_pb2  # noqa: F401
import envoy.extensions.clusters.dynamic_forward_proxy.v3.cluster_pb2  # noqa: F401
import envoy.extensions.filters.http.cors.v3.cors_pb2  # noqa: F401
import envoy.extensions.filters.http.dynamic_forward_proxy.v3.dynamic_forward_proxy_pb2  # noqa: F401
import envoy.extensions.filters.http.fault.v3.fault_pb2  # noqa: F401
import envoy.extensions.filters.http.rbac.v3.rbac_pb2  # noqa: F401
import envoy.extensions.filters.http.router.v3.router_pb2  # noqa: F401
import envoy.extensions.filters.listener.original_dst.v3.original_dst_pb2  # noqa: F401
import envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2  # noqa: F401
import envoy.extensions.filters.network.rbac.v3.rbac_pb2  # noqa: F401
import envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3.sni_dynamic_forward_proxy_pb2  # noqa: F401
import envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2  # noqa: F401
import envoy.extensions.filters.listener.tls_inspector.v3.tls_inspector_pb2  # noqa: F401
import envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2  # noqa: F401
import envoy.extensions.retry.priority.previous_priorities.v3.previous_priorities_config_pb2  # noqa: F401
import envoy.extensions.transport_sockets.raw_buffer.v3.raw_buffer_pb2  # noqa: F401
import envoy.extensions.transport_sockets.tls.v3.tls_pb2  # noqa: F401
import envoy.extensions.upstreams.http.v3.http_protocol_options_pb2  # noqa: F401
import pylon.xds.contrib_protos  # noqa: F401 - CryptoMB/QAT configs inside gateway secrets
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from pylon.pilot.gen.types import CLUSTER, ENDPOINT, LISTENER, NAME_TABLE, ROUTE, SECRET, Json
from pylon.xds.nds import NameTable

MESSAGES: dict[str, type[Message]] = {
    LISTENER: Listener,
    ROUTE: RouteConfiguration,
    CLUSTER: Cluster,
    ENDPOINT: ClusterLoadAssignment,
    SECRET: Secret,
    NAME_TABLE: NameTable,
}


class EncodeError(ValueError):
    """A generated resource Envoy's API would not accept."""


def to_message(type_url: str, resource: Json) -> Message:
    message = MESSAGES[type_url]()
    try:
        json_format.ParseDict(resource, message)
    except json_format.ParseError as exc:
        name = resource.get("name") or resource.get("cluster_name") or "?"
        raise EncodeError(f"generated {type_url.rsplit('.', 1)[-1]} {name!r} is invalid: {exc}") from None
    return message


def to_any(type_url: str, resource: Json) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(to_message(type_url, resource))
    return packed


def content_key(resource: Json) -> bytes:
    """A resource's canonical JSON (keys sorted; msgspec: a few times faster than json.dumps, and this runs for
    every resource of every generation): equal keys, equal protobuf (different keys may still encode alike)."""
    return _CANONICAL.encode(resource)


def _plain(value: object) -> object:
    """Subclasses of JSON's scalars (a GoDuration is a float) as json.dumps writes them; anything else is a bug."""
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return base(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


_CANONICAL = msgspec.json.Encoder(order="sorted", enc_hook=_plain)


def content_version(key: bytes) -> str:
    """A short digest of a `content_key`: a resource's version in delta xDS, compared to skip unchanged ones."""
    return hashlib.blake2b(key, digest_size=8).hexdigest()


@dataclass(frozen=True)
class Encoded:
    """A resource packed for the wire, and its content version."""

    version: str
    packed: any_pb2.Any


class EncodeCache:
    """Encodes each distinct resource content once; a push to a hundred proxies packs shared resources once.

    Two levels. By content (type and canonical JSON): what a config change left as it was is not encoded
    again, and proxies generated apart that got equal resources share one encoding. By object: generations are
    shared between proxies (gen `SharedGenerations`) and per-service pieces between generations and snapshots
    (pieces.py), so the same dicts come back for each of them and not even their JSON is rebuilt. Generated
    resources are never changed in place once generated (generators build new dicts, pieces are rebuilt when
    their inputs change, EnvoyFilter patches copy), which makes the object level sound; each level keeps what
    the last two config versions used.
    """

    def __init__(self) -> None:
        self._version = ""
        self._by_object: dict[int, tuple[Json, Encoded]] = {}  # id -> (the dict, kept alive so ids stay unique)
        self._previous_objects: dict[int, tuple[Json, Encoded]] = {}
        self._selections: dict[tuple[int, frozenset[str] | None], tuple[dict[str, Json], Selection]] = {}
        self._by_content: dict[tuple[str, bytes], Encoded] = {}
        self._previous: dict[tuple[str, bytes], Encoded] = {}

    def encode(self, type_url: str, resource: Json, version: str) -> Encoded:
        """`resource` (of config `version`) packed; EncodeError if Envoy's API would not accept it."""
        self._start(version)
        known = self._by_object.get(id(resource)) or self._previous_objects.get(id(resource))
        if known is not None:
            self._by_object[id(resource)] = known
            return known[1]
        key = (type_url, content_key(resource))
        encoded = self._by_content.get(key) or self._previous.get(key)
        if encoded is None:
            encoded = Encoded(content_version(key[1]), to_any(type_url, resource))
        self._by_content[key] = encoded
        self._by_object[id(resource)] = (resource, encoded)
        return encoded

    def select(self, type_url: str, resources: dict[str, Json], names: frozenset[str] | None,
               version: str) -> Selection:  # fmt: skip
        """The `names` of `resources` that exist (None: all), by name, packed; the same Selection for every
        proxy that asks for the same names of the same shared resources (not to be changed)."""
        self._start(version)
        memo = (id(resources), names)
        known = self._selections.get(memo)
        if known is not None:
            return known[1]
        chosen = sorted(resources) if names is None else sorted(n for n in names if n in resources)
        encoded = {name: self.encode(type_url, resources[name], version) for name in chosen}
        selection = Selection(encoded, {name: e.version for name, e in encoded.items()})
        self._selections[memo] = (resources, selection)
        return selection

    def _start(self, version: str) -> None:
        if version != self._version:
            self._version, self._selections = version, {}
            self._previous_objects, self._by_object = self._by_object, {}
            self._previous, self._by_content = self._by_content, {}


@dataclass(frozen=True)
class Selection:
    """Resources chosen for a response: packed, and their content versions, both by name in name order."""

    encoded: dict[str, Encoded]
    versions: dict[str, str]
