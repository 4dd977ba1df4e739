"""Envoy's response flags and the local replies that go with them.

When the proxy answers a request itself (no route, no healthy host, connect
failure, timeout, overflow ...) Envoy marks the access-log line with a short
response flag and sends a fixed plain-text body. Users grep logs for these
flags and alert on them, so pylon uses the same flags and the same bodies.
"""

from __future__ import annotations

from typing import NamedTuple


class LocalReply(NamedTuple):
    status: int
    flag: str
    body: bytes
    details: str
    #: the grpc-status a gRPC request's reply carries instead of the one mapped from `status` (Envoy passes one
    #: for a few replies, e.g. DEADLINE_EXCEEDED for max_stream_duration)
    grpc_status: int | None = None


_RESET_BEFORE_HEADERS = b"upstream connect error or disconnect/reset before headers. reset reason: "

NO_ROUTE = LocalReply(404, "NR", b"", "route_not_found")
NO_CLUSTER = LocalReply(503, "NC", b"", "cluster_not_found")
NO_HEALTHY_UPSTREAM = LocalReply(503, "UH", b"no healthy upstream", "no_healthy_upstream")
CONNECT_FAILURE = LocalReply(503, "UF", _RESET_BEFORE_HEADERS + b"connection failure", "upstream_reset_before_response_started{connection_failure}")


def internal_connect_failure(reason: str) -> LocalReply:
    """A connect to an internal listener no one has (proxy/internal_listener.py): Envoy's in-process pair connects
    and its other end closes at once, so the reset is the remote's, and the details carry the reason."""
    return LocalReply(503, "UF", _RESET_BEFORE_HEADERS + b"remote connection failure",
                      "upstream_reset_before_response_started{remote_connection_failure|%s}" % reason.replace(" ", "_"))


UPSTREAM_OVERFLOW = LocalReply(503, "UO", _RESET_BEFORE_HEADERS + b"overflow", "upstream_reset_before_response_started{overflow}")
# An HTTP/2 upstream's RST_STREAM before the response (Envoy 1.40: UR), and a stream its GOAWAY refused.
UPSTREAM_REMOTE_RESET = LocalReply(503, "UR", _RESET_BEFORE_HEADERS + b"remote reset", "upstream_reset_before_response_started{remote_reset}")
UPSTREAM_REFUSED_STREAM = LocalReply(503, "UR", _RESET_BEFORE_HEADERS + b"remote refused stream reset", "upstream_reset_before_response_started{remote_refused_stream_reset}")
UPSTREAM_RESET = LocalReply(503, "UC", _RESET_BEFORE_HEADERS + b"connection termination", "upstream_reset_before_response_started{connection_termination}")
UPSTREAM_TIMEOUT = LocalReply(504, "UT", b"upstream request timeout", "upstream_response_timeout")
# A cluster's max_stream_duration: 504 once the request is in, 408 while it is still arriving (as Envoy 1.40).
UPSTREAM_MAX_STREAM_DURATION = LocalReply(504, "UMSDR", b"upstream max stream duration reached",
                                          "upstream_max_stream_duration_reached")
UPSTREAM_MAX_STREAM_DURATION_CLIENT = UPSTREAM_MAX_STREAM_DURATION._replace(status=408)
UPSTREAM_PROTOCOL_ERROR = LocalReply(502, "UPE", _RESET_BEFORE_HEADERS + b"protocol error", "upstream_reset_before_response_started{protocol_error}")
REQUEST_HEADER_TIMEOUT = LocalReply(408, "-", b"request header timeout", "request_header_timeout")
LOW_VERSION = LocalReply(426, "DPE", b"Upgrade Required", "low_version")
INVALID_AUTHORITY = LocalReply(400, "DPE", b"Bad Request", "http.invalid_authority")
PATH_NORMALIZATION_FAILED = LocalReply(400, "-", b"", "path_normalization_failed")
MAX_DURATION_TIMEOUT = LocalReply(504, "-", b"downstream duration timeout", "max_duration_timeout", grpc_status=4)
REQUEST_TIMEOUT = LocalReply(408, "-", b"request timeout", "request_overall_timeout")
STREAM_IDLE_TIMEOUT = LocalReply(504, "SI", b"stream timeout", "stream_idle_timeout")
STREAM_IDLE_TIMEOUT_CLIENT = LocalReply(408, "SI", b"stream timeout", "stream_idle_timeout")
UNDERSCORE_IN_HEADER = LocalReply(400, "DPE", b"Bad Request", "http1.unexpected_underscore")
BAD_REQUEST = LocalReply(400, "DPE", b"Bad Request", "http1.codec_error")
HEADERS_TOO_LARGE = LocalReply(431, "DPE", b"Request Header Fields Too Large", "http1.headers_too_large")
PAYLOAD_TOO_LARGE = LocalReply(413, "-", b"Payload Too Large", "request_payload_too_large")
RESPONSE_TOO_LARGE = LocalReply(500, "-", b"Internal Server Error", "response_payload_too_large")
UPGRADE_REFUSED = LocalReply(403, "-", b"", "upgrade_failed")
CONNECT_INVALID_URL = LocalReply(400, "DPE", b"Bad Request", "http1.invalid_url")  # CONNECT with a path
#: pylon carries a proxied CONNECT over HTTP/1.1 only (the loader refuses such routes it can see)
UNSUPPORTED_TRANSFER_ENCODING = LocalReply(501, "DPE", b"Not Implemented", "http1.invalid_transfer_encoding")
OVERLOADED = LocalReply(503, "OL", b"envoy overloaded", "overload")  # the overload manager's stop_accepting_requests
MISSING_HOST = LocalReply(400, "DPE", b"Bad Request", "missing_host_header")
