"""The client TLS settings of a cluster's transport sockets: its own, and those its transport_socket_matches
give hosts by their metadata (None for plain TCP: no transport socket, or raw_buffer)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pylon.config.secrets import SecretMissing, tls_context
from pylon.proxy.tls import ClientTls, UnavailableTls, client_context

UpstreamTls = ClientTls | UnavailableTls | None


def transport_tls(transport_socket: Any, secrets: Mapping[str, Any]) -> UpstreamTls:
    """A transport socket's TLS; UnavailableTls while an SDS secret it names has not come (connections fail)."""
    context = tls_context(transport_socket)
    if context is None:
        return None
    try:
        return client_context(context, secrets)
    except SecretMissing as exc:
        return UnavailableTls(exc.name)


def socket_matches(cluster_config: Any, secrets: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], UpstreamTls]]:
    """(match, TLS) of each of the cluster's transport_socket_matches, in order."""
    return [(match.match, transport_tls(match.transport_socket, secrets))
            for match in cluster_config.transport_socket_matches]


def matching_socket(matches: list[tuple[Mapping[str, Any], UpstreamTls]], metadata: Mapping[str, Any]) -> int:
    """Envoy's choice for a host: the first match whose every entry the host's metadata holds with an equal
    value (an empty match takes any host); -1: none, the cluster's own transport socket."""
    for index, (match, _) in enumerate(matches):
        if all(key in metadata and metadata[key] == value for key, value in match.items()):
            return index
    return -1
