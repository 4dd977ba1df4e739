"""Generated proto-JSON dicts to protobuf `Any`s, through Envoy's own message definitions (xds-protos).

Parsing with `json_format.ParseDict` is also the check, at the source, that a
generator wrote only fields Envoy's API has, with valid values: a translation
bug becomes an error naming the resource here instead of a NACK at every proxy.
The modules imported below register the message types that generated configs
name in `@type`, so ParseDict can resolve them.
"""

from __future__ import annotations

from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message

# Registered for their @type URLs inside generated resources.
import envoy.extensions.access_loggers.file.v3.file_pb2  # noqa: F401
import envoy.extensions.filters.http.fault.v3.fault_pb2  # noqa: F401
import envoy.extensions.filters.http.rbac.v3.rbac_pb2  # noqa: F401
import envoy.extensions.filters.http.router.v3.router_pb2  # noqa: F401
import envoy.extensions.filters.listener.original_dst.v3.original_dst_pb2  # noqa: F401
import envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2  # noqa: F401
import envoy.extensions.filters.network.rbac.v3.rbac_pb2  # noqa: F401
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
from pylon.pilot.gen.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Json

MESSAGES: dict[str, type[Message]] = {
    LISTENER: Listener,
    ROUTE: RouteConfiguration,
    CLUSTER: Cluster,
    ENDPOINT: ClusterLoadAssignment,
    SECRET: Secret,
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
