"""Local replies to gRPC requests, as Envoy 1.40 sends them (sans-IO).

A gRPC client reads the call's outcome from `grpc-status`, not from the HTTP status: a plain `503 no healthy
upstream` reaches it as "Received http2 header with status: 503" and loses the proxy's reason. So when the
proxy answers a gRPC request itself (no route, no healthy host, timeout, a filter's denial, a direct response),
Envoy sends a trailers-only response instead: HTTP 200, `content-type: application/grpc`, `grpc-status` mapped
from the HTTP status (gRPC's http-grpc-status-mapping: 503 and 504 are both UNAVAILABLE) unless the reply's
headers already carry one, and the reply's body as `grpc-message`, percent-encoded as gRPC requires; no body.
Over HTTP/2 that is one HEADERS frame with END_STREAM; over HTTP/1.1 Envoy writes `content-length: 0` (a HEAD
request's reply: `transfer-encoding: chunked` and no grpc-message). The access log's %RESPONSE_CODE% is 200, the
response flag and details stay the original's. All observed side by side in tests/proxy/test_proxy_grpc_local_reply.py.

Which requests: those whose content-type is `application/grpc` or `application/grpc+...` (any method), the test
`match.grpc` uses (`router.is_grpc_request`); `application/grpc-web` and `application/grpc;...` get the plain reply, as in Envoy.
"""

from __future__ import annotations

__all__ = ["CONTENT_TYPE", "http_to_grpc_status", "percent_encode", "trailers_only_headers"]

CONTENT_TYPE = b"application/grpc"

#: gRPC's http-grpc-status-mapping as Envoy's Grpc::Utility::httpToGrpcStatus has it; anything else is UNKNOWN (2)
_GRPC_STATUS = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
_UNKNOWN = 2


def http_to_grpc_status(status: int) -> int:
    """The grpc-status a gRPC client is told for an HTTP status the proxy would have answered."""
    return _GRPC_STATUS.get(status, _UNKNOWN)


def percent_encode(message: bytes) -> bytes:
    """grpc-message's encoding: every byte outside printable ASCII (below space, `~` and above) and `%` as %XX.

    `~` is escaped too: Envoy's encoder treats it as the first unprintable character (observed: "~" -> "%7E").
    """
    if all(0x20 <= byte < 0x7E and byte != 0x25 for byte in message):
        return message
    return b"".join(b"%%%02X" % byte if byte < 0x20 or byte >= 0x7E or byte == 0x25 else bytes((byte,))
                    for byte in message)


def trailers_only_headers(status: int, body: bytes, headers: list[tuple[bytes, bytes]], *,
                          head_request: bool, grpc_status: int | None = None) -> list[tuple[bytes, bytes]]:
    """The head of the trailers-only reply that replaces a local reply of `status` with `body`.

    `headers` are the reply's own (a route's response_headers_to_add, a redirect's location, a filter's): they come
    first, as in Envoy, less any content-type and content-length; a grpc-status among them is kept as it is.
    `grpc_status`: the one the reply itself names (Envoy's sendLocalReply argument), else mapped from `status`.
    """
    out = [pair for pair in headers if pair[0] != b"content-type" and pair[0] != b"content-length"]
    out.append((b"content-type", CONTENT_TYPE))
    if not any(name == b"grpc-status" for name, _ in out):
        code = grpc_status if grpc_status is not None else http_to_grpc_status(status)
        out.append((b"grpc-status", b"%d" % code))
    if body and not head_request:
        out.append((b"grpc-message", percent_encode(body)))
    return out
