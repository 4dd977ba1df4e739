"""The HTTP data inputs (envoy.type.matcher.v3.Http*MatchInput) over one stream's `HttpMatchingData`.

As Envoy's (source/common/http/matching/inputs.h): a header input is every
value of the header joined with "," (absent when the header is), a query
parameter input the first value, percent-decoded. Headers the stream has not
seen yet (response headers while the request is decoded, trailers before the
end) are NOT_AVAILABLE: the engine answers INSUFFICIENT and the caller asks
again later. The request's pseudo-headers are the stream's own values:
`:path` (with its query), `:authority` (or `host`), `:method`, `:scheme`; a
response's `:status`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from pylon.config import matcher as config
from pylon.proxy import dynamic_metadata
from pylon.proxy.headers import HeaderList
from pylon.proxy.matching.engine import NOT_AVAILABLE
from pylon.proxy.matching.network_inputs import NETWORK_READERS, NetworkMatchingData

Reader = Callable[["HttpMatchingData"], Any]


class HttpMatchingData:
    """One stream's data as its matchers see it; the stream fills in the response side when it has it."""

    __slots__ = ("request_headers", "authority", "path", "method", "scheme", "response_headers", "status",
                 "request_trailers", "response_trailers", "network", "metadata")

    def __init__(self, request_headers: HeaderList | None, authority: str = "", path: str = "",
                 method: str | None = None, scheme: str | None = None,
                 network: NetworkMatchingData | None = None) -> None:
        self.request_headers = request_headers
        self.authority = authority
        self.path = path
        self.method = method
        self.scheme = scheme
        self.response_headers: HeaderList | None = None
        self.status: int | None = None
        self.request_trailers: HeaderList | None = None
        self.response_trailers: HeaderList | None = None
        self.network = network if network is not None else _NO_CONNECTION
        #: what reads the stream's dynamic metadata now (DynamicMetadataInput); None: a stream that has none
        self.metadata: Callable[[], dict[str, dict[str, Any]] | None] | None = None


_NO_CONNECTION = NetworkMatchingData(None, None)


def _joined(headers: HeaderList, name: bytes) -> str | None:
    values = [v for n, v in headers.items if n == name]
    if not values:
        return None
    return (values[0] if len(values) == 1 else b",".join(values)).decode("utf-8", "surrogateescape")


_REQUEST_PSEUDO = {":path": "path", ":authority": "authority", "host": "authority", ":method": "method",
                   ":scheme": "scheme"}


def _request_header(decoded: config.HttpRequestHeaderMatchInput) -> Reader:
    name = decoded.header_name.lower()
    pseudo = _REQUEST_PSEUDO.get(name)
    if pseudo is not None:
        return lambda data: getattr(data, pseudo) or None
    key = name.encode()

    def read(data: HttpMatchingData) -> Any:
        headers = data.request_headers
        return NOT_AVAILABLE if headers is None else _joined(headers, key)

    return read


def _response_header(decoded: config.HttpResponseHeaderMatchInput) -> Reader:
    name = decoded.header_name.lower()
    if name == ":status":
        return lambda data: NOT_AVAILABLE if data.status is None else str(data.status)
    key = name.encode()

    def read(data: HttpMatchingData) -> Any:
        headers = data.response_headers
        return NOT_AVAILABLE if headers is None else _joined(headers, key)

    return read


def _trailer(side: str) -> Callable[[Any], Reader]:
    def factory(decoded: Any) -> Reader:
        key = decoded.header_name.lower().encode()

        def read(data: HttpMatchingData) -> Any:
            trailers = getattr(data, side)
            return NOT_AVAILABLE if trailers is None else _joined(trailers, key)

        return read

    return factory


def _query_param(decoded: config.HttpRequestQueryParamMatchInput) -> Reader:
    wanted = decoded.query_param

    def read(data: HttpMatchingData) -> Any:
        path = data.path
        q = path.find("?")
        if q < 0:
            return None
        end = path.find("#", q)
        for pair in path[q + 1:end if end >= 0 else None].split("&"):
            name, _, value = pair.partition("=")
            if unquote(name) == wanted:
                return unquote(value)
        return None

    return read


def _dynamic_metadata(decoded: config.DynamicMetadataInput) -> Reader:
    namespace, path = decoded.filter, tuple(segment.key for segment in decoded.path)

    def read(data: HttpMatchingData) -> Any:
        metadata = data.metadata() if data.metadata is not None else None
        return dynamic_metadata.lookup(metadata, namespace, path)  # MISSING when absent: the matcher decides
    return read


#: decoded input Struct type -> reader factory: the HTTP inputs and the connection's
HTTP_READERS: dict[type, Callable[[Any], Reader]] = {
    config.DynamicMetadataInput: _dynamic_metadata,
    config.HttpRequestHeaderMatchInput: _request_header,
    config.HttpResponseHeaderMatchInput: _response_header,
    config.HttpRequestTrailerMatchInput: _trailer("request_trailers"),
    config.HttpResponseTrailerMatchInput: _trailer("response_trailers"),
    config.HttpRequestQueryParamMatchInput: _query_param,
    **NETWORK_READERS,
}
