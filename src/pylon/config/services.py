"""Services the data plane calls itself (tracers' collectors, ext_authz's gRPC service): Envoy's HttpService and GrpcService.

These are the client sides of `config.core.v3.HttpService` / `HttpUri` and
`config.core.v3.GrpcService` as an extension names them: the cluster to call,
how long to wait, what to add to each request. Their transports live in the
proxy (proxy/span_export.py posts over pylon's HTTP/1.1 pool,
proxy/upstream/grpc_channel.py calls gRPC on grpcio); these Structs only say
what Envoy's fields mean and refuse, by name, the sub-options those transports
do not implement. (config/envoy.py's GrpcService is the xDS client's: a
different subset, read by a different client.)
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pylon.config.constraints import Duration, PositiveDuration
from pylon.config.envoy import (  # noqa: F401 (HeaderValueOption: what HeadersToAdd's forward reference names)
    EnvoyStruct,
    HeadersToAdd,
    HeaderValue,
    HeaderValueOption,
    NonEmptyStr,
    NotSupportedYet,
)
from pylon.config.errors import FieldError


class HttpUri(EnvoyStruct, kw_only=True):
    """config.core.v3.HttpUri: the request's URL (its host is the Host header, its path the request path), the
    cluster that serves it, and the request's timeout (required by Envoy, and at least 0)."""

    uri: NonEmptyStr
    cluster: NonEmptyStr
    timeout: Duration

    def __post_init__(self) -> None:
        parts = urlsplit(self.uri)
        if not parts.netloc and not parts.path:
            raise FieldError("uri", f"{self.uri!r} is not a URL")

    @property
    def host(self) -> str:
        """The Host header Envoy sends: the URI's authority (host[:port])."""
        return urlsplit(self.uri).netloc

    @property
    def path(self) -> str:
        """The request path Envoy sends: the URI's path and query ("/" when empty)."""
        parts = urlsplit(self.uri)
        path = parts.path or "/"
        return f"{path}?{parts.query}" if parts.query else path


class HttpService(EnvoyStruct, kw_only=True):
    """config.core.v3.HttpService: an HTTP endpoint and the headers each request adds (literal values only: the
    formatters of Envoy's note read no request, and pylon's header values take no other operator here)."""

    http_uri: HttpUri
    request_headers_to_add: HeadersToAdd = []


class EnvoyGrpcTarget(EnvoyStruct, kw_only=True):
    """config.core.v3.GrpcService.EnvoyGrpc for a data-plane client: the cluster, and the :authority to send
    (default: the cluster's name, as Envoy)."""

    cluster_name: NonEmptyStr
    authority: str = ""
    retry_policy: NotSupportedYet | None = None
    max_receive_message_length: int | None = None
    skip_envoy_headers: bool = False


class GrpcClientService(EnvoyStruct, kw_only=True):
    """config.core.v3.GrpcService as a data-plane gRPC client reads it (proxy/upstream/grpc_channel.py).

    `google_grpc` (a target URI outside the cluster manager) is refused: pylon's client
    picks hosts of a cluster. `timeout` is each call's deadline (none when unset, as
    Envoy); `initial_metadata` is sent with every call.
    """

    envoy_grpc: EnvoyGrpcTarget | None = None
    google_grpc: Any = None
    timeout: PositiveDuration | None = None
    initial_metadata: list[HeaderValue] = []
    retry_policy: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if self.google_grpc is not None:
            raise FieldError("google_grpc", "not supported: pylon's gRPC client calls the hosts of a cluster of "
                                            "this bootstrap; use envoy_grpc with a cluster")
        if self.envoy_grpc is None:
            raise FieldError("envoy_grpc", "missing required field")
        for k, header in enumerate(self.initial_metadata):
            if header.key.startswith(":") or header.key.lower() == "host":
                raise FieldError(f"initial_metadata[{k}].key", f"{header.key!r} may not be set as metadata")
