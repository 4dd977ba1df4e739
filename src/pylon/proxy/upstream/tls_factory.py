"""The client TLS settings a cluster's `transport_socket` asks for (None for plain TCP)."""

from __future__ import annotations

from typing import Any

from pylon.proxy.tls import ClientTls, client_context


def cluster_tls(cluster_config: Any) -> ClientTls | None:
    socket_cfg = getattr(cluster_config, "transport_socket", None)
    if socket_cfg is None:
        return None
    return client_context(socket_cfg.typed_config)
