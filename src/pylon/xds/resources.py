"""Decoding xDS resources: protobuf `Any` -> proto-JSON -> pylon's config model (sans-IO).

The resources go through the same parser as filesystem xDS
(`config.discovery.decode_resource`), so a resource from a management
server is held to exactly the rules of one from a file, and its errors name
the same field paths (`resources[2].connect_timeout`).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from typing import Any

# Imported for their descriptors: json_format expands an Any only when its message type is known.
# Types inside resources (a listener's filters, their typed configs) are imported when first met.
import envoy.config.cluster.v3.cluster_pb2  # noqa: F401
import envoy.config.endpoint.v3.endpoint_pb2  # noqa: F401
import envoy.config.listener.v3.listener_pb2  # noqa: F401
import envoy.config.route.v3.route_pb2  # noqa: F401
import envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2  # noqa: F401
import envoy.extensions.transport_sockets.tls.v3.secret_pb2  # noqa: F401
import envoy.extensions.transport_sockets.tls.v3.tls_pb2  # noqa: F401
import envoy.extensions.upstreams.http.v3.http_protocol_options_pb2  # noqa: F401
import pylon.xds.contrib_protos  # noqa: F401 - Istio's secrets may carry CryptoMB/QAT key provider configs
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryResponse, DiscoveryResponse
from google.protobuf import json_format

from pylon.config.discovery import (
    CLUSTERS, ENDPOINTS, LISTENERS, ROUTE_CONFIGURATIONS, SECRETS, Discovered, ResourceKind, by_name, decode_resource,
)
from pylon.config.errors import ConfigError

#: The resource types pylon subscribes to, by type URL.
KINDS: dict[str, ResourceKind[Any]] = {
    kind.type_url: kind for kind in (LISTENERS, CLUSTERS, ENDPOINTS, ROUTE_CONFIGURATIONS, SECRETS)}


class ResponseDecoder:
    """Decodes responses, reusing the config of a resource whose serialized bytes it has decoded before.

    A state-of-the-world response carries every resource again (all the
    ClusterLoadAssignments when one endpoint moved); decoding 1,000 of them
    through proto-JSON cost ~50 ms. Bytes equal to a resource seen in the last
    responses of its type decode to the same config, so that config object is
    reused: decoding, checking and diffing the unchanged ones costs almost
    nothing (DynamicConfig sees the very object it holds).
    """

    #: Beyond this many remembered resources of one type, only the latest response's are kept.
    LIMIT = 50_000

    def __init__(self) -> None:
        self._seen: dict[str, dict[bytes, Any]] = {}  # per type URL: serialized Any -> decoded config

    def decode(self, response: DiscoveryResponse | DeltaDiscoveryResponse, source: str) -> Discovered[Any]:
        """The resources of one response (state of the world, or delta: the added and changed ones, each with
        its version) as config Structs, or ConfigError naming resource and field."""
        kind = KINDS[response.type_url]
        seen = self._seen.get(response.type_url, {})
        fresh: dict[bytes, Any] = {}
        decoded = []
        for index, packed in enumerate(_packed(response)):
            resource = seen.get(packed.value)
            if resource is None:
                try:
                    data = to_proto_json(packed)
                except (TypeError, KeyError, json_format.Error) as exc:
                    raise ConfigError(source, f"resources[{index}]", f"cannot decode {packed.type_url}: {exc}") from None
                resource = decode_resource(data, source, f"resources[{index}]", kind)
            fresh[packed.value] = resource
            decoded.append(resource)
        resources = by_name(decoded, source, kind)
        self._seen[response.type_url] = fresh if len(seen) + len(fresh) > self.LIMIT else {**seen, **fresh}
        if isinstance(response, DeltaDiscoveryResponse):
            versions = {name: r.version for r, name in zip(response.resources, resources)}
            return Discovered(response.system_version_info, resources, versions)
        return Discovered(response.version_info, resources)


def _packed(response: DiscoveryResponse | DeltaDiscoveryResponse) -> list[Any]:
    """The Any of each resource (a delta response wraps each in a Resource with its name and version)."""
    if isinstance(response, DeltaDiscoveryResponse):
        return [resource.resource for resource in response.resources]
    return list(response.resources)


_UNKNOWN_TYPE = re.compile(r"Can not find message descriptor by type_url: type\.googleapis\.com/([\w.]+)")


def to_proto_json(message: Any) -> dict[str, Any]:
    """proto-JSON of `message`, importing the xds-protos package of each Any type inside it on first sight.

    json_format knows a type only once its module is imported, and a listener
    can hold any of hundreds of filter configs; importing them all would cost
    seconds at start. A type no package provides stays an error (the resource
    is NACKed, naming it).
    """
    tried: set[str] = set()
    while True:
        try:
            return json_format.MessageToDict(message, preserving_proto_field_name=True)
        except TypeError as exc:
            match = _UNKNOWN_TYPE.search(str(exc))
            if match is None or match.group(1) in tried or not _import_package_of(match.group(1)):
                raise
            tried.add(match.group(1))


def _import_package_of(full_name: str) -> bool:
    """Import every module of the proto package of `full_name` (e.g. envoy.extensions.filters.http.rbac.v3)."""
    package_name = full_name.rpartition(".")[0]
    try:
        package = importlib.import_module(package_name)
    except ImportError:
        return False
    for module in pkgutil.iter_modules(getattr(package, "__path__", [])):
        if module.name.endswith("_pb2"):
            importlib.import_module(f"{package_name}.{module.name}")
    return True


_INDEX = re.compile(r"^resources\[(\d+)\]")


def rejection_detail(response: DiscoveryResponse | DeltaDiscoveryResponse, error: ConfigError) -> str:
    """A NACK's error_detail: the ConfigError's text, led by the name of the resource it is about."""
    match = _INDEX.match(error.path)
    resources = _packed(response)
    if match is None or int(match.group(1)) >= len(resources):
        return str(error)
    resource = resources[int(match.group(1))]
    try:
        data = to_proto_json(resource)
        name = data.get(KINDS[response.type_url].name_field, "")
    except (TypeError, KeyError, json_format.Error):
        name = ""
    what = KINDS[response.type_url].what
    return f"{what} {name!r}: {error}" if name else str(error)
