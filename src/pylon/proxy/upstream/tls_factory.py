"""The client TLS settings a cluster's `transport_socket` asks for (None for plain TCP)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pylon.config.secrets import SecretMissing
from pylon.proxy.tls import ClientTls, UnavailableTls, client_context


def cluster_tls(cluster_config: Any, secrets: Mapping[str, Any]) -> ClientTls | UnavailableTls | None:
    """The cluster's TLS; UnavailableTls while an SDS secret it names has not come (its connections fail)."""
    socket_cfg = getattr(cluster_config, "transport_socket", None)
    if socket_cfg is None:
        return None
    try:
        return client_context(socket_cfg.typed_config, secrets)
    except SecretMissing as exc:
        return UnavailableTls(exc.name)
