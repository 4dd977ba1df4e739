"""Routes whose cluster is picked per request: by a request header (RouteAction.cluster_header), or by a cluster
specifier plugin (Envoy's ClusterSpecifierPlugin).

A plugin module (`pylon/extensions/router/cluster_specifiers/`) registers a factory for its config Struct here
(`register_cluster_specifier`); the route table builds one picker per route that names the plugin and calls it
with the stream at routing time. The picker returns the cluster's name (a cluster that does not exist is the
router's 503 NC, as in Envoy).
"""

from __future__ import annotations

from typing import Any, Callable

#: picker(stream) -> cluster name
Picker = Callable[[Any], str]
_FACTORIES: dict[type, Callable[[Any], Picker]] = {}


def register_cluster_specifier(config_type: type, factory: Callable[[Any], Picker]) -> None:
    _FACTORIES[config_type] = factory


def build_picker(config: Any) -> Picker:
    """The picker for one plugin config (its type was registered when the config decoded it)."""
    return _FACTORIES[type(config)](config)


class HeaderPicker:
    """RouteAction.cluster_header: the cluster the request's header names.

    Its first value, as Envoy takes it: the header comes from the client, so a repeated one picks by the first.
    No such header picks "": no cluster, the router's cluster-not-found reply."""

    __slots__ = ("header",)

    def __init__(self, header: str) -> None:
        self.header = header.lower().encode("latin-1")  # the stream's header names are lower case

    def __call__(self, stream: Any) -> str:
        return named_cluster(stream.headers, self.header)


def named_cluster(headers: Any, header: bytes) -> str:
    """The cluster the first value of the lower-case `header` names in `headers` ("" when it is missing): a route's
    cluster_header, a mirror policy's too."""
    for name, value in headers:
        if name == header:
            return value.decode("latin-1")
    return ""
