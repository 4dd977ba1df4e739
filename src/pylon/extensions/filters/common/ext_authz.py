"""What ext_authz's HTTP service sees of a request and what its answer means (sans-IO).

Observed with Envoy 1.40 (tests/proxy/test_proxy_ext_authz.py checks pylon beside it):

- The check request has the client's method, `path_prefix` + the client's path (query included) and Host,
  `content-length` (0, or the buffered body's length), the client headers `authorization_request.allowed_headers`
  match - `authorization` always - each name once with its values joined by ",", then `headers_to_add`
  (replacing), `x-envoy-auth-partial-body` (whether the body sent was cut at `max_request_bytes`) when a body
  was buffered, and Envoy's `x-envoy-internal: true` and `x-envoy-expected-rq-timeout-ms` (the timeout).
- Its answer: a 200 lets the request go, with the answer's headers `allowed_upstream_headers` match set on the
  upstream request (replacing), those `allowed_upstream_headers_to_append` match added, the names listed in
  `x-envoy-auth-headers-to-remove` removed, and those `allowed_client_headers_on_success` match set on the
  response to the client. A 5xx, no answer (timeout, reset, no host) is an error. Any other status denies: the
  client gets that status and body and the answer's headers `allowed_client_headers` match (with
  www-authenticate and location always), or, without that list, all of them but Host and the framing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

Headers = list[tuple[bytes, bytes]]
Matcher = Callable[[bytes], bool]

PARTIAL_BODY = b"x-envoy-auth-partial-body"
HEADERS_TO_REMOVE = b"x-envoy-auth-headers-to-remove"
FAILURE_MODE_ALLOWED = b"x-envoy-auth-failure-mode-allowed"
#: What a denied answer's headers never pass to the client without a list: its framing, its Host.
_NOT_RELAYED = frozenset((b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive"))
#: What `allowed_client_headers` always lets through when set (Envoy adds them to the list).
_ALWAYS_TO_CLIENT = (b"www-authenticate", b"location")


def any_of(matchers: Sequence[Matcher]) -> Matcher:
    return lambda name: any(match(name) for match in matchers)


class CheckRequest(NamedTuple):
    method: bytes
    path: bytes
    host: bytes
    headers: Headers
    body: bytes


def check_request(method: bytes, path: bytes, host: bytes, headers: Headers, *, allowed: Matcher | None,
                  path_prefix: bytes, headers_to_add: Headers, timeout_ms: int, body: bytes | None,
                  partial: bool) -> CheckRequest:
    """The request to the authorization service for a client request (`headers`: the client's, as the filters
    see them; `body`: the buffered body to send, or None when none was buffered)."""
    joined: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in (b"host", b"content-length"):
            continue
        if name == b"authorization" or (allowed is not None and allowed(name)):
            joined[name] = joined[name] + b"," + value if name in joined else value
    if body is not None:
        joined[PARTIAL_BODY] = b"true" if partial else b"false"
    for name, value in headers_to_add:
        joined[name] = value
    out = list(joined.items())
    out.append((b"x-envoy-internal", b"true"))
    if timeout_ms:
        out.append((b"x-envoy-expected-rq-timeout-ms", b"%d" % timeout_ms))
    return CheckRequest(method, path_prefix + path, host, out, body or b"")


OK, DENIED, ERROR = "ok", "denied", "error"


class Verdict(NamedTuple):
    kind: str  # OK, DENIED or ERROR
    status: int = 0  # DENIED: the client's status
    body: bytes = b""  # DENIED: the client's body
    to_client: Headers = []  # DENIED: the response's headers; OK: set on the upstream's response
    to_set: Headers = []  # OK: set on the upstream request
    to_append: Headers = []  # OK: added to the upstream request
    to_remove: tuple[bytes, ...] = ()  # OK: removed from the upstream request


class ResponseRules(NamedTuple):
    """authorization_response's lists as predicates over header names (None: the list is not set)."""

    upstream: Matcher | None
    upstream_append: Matcher | None
    client: Matcher | None
    client_on_success: Matcher | None


def verdict(status: int | None, headers: Headers, body: bytes, rules: ResponseRules) -> Verdict:
    """What the authorization service's answer (`status` None: none came) means for the client request."""
    if status is None or status >= 500:
        return Verdict(ERROR)
    if status == 200:
        def picked(match: Matcher | None) -> Headers:
            return [(n, v) for n, v in headers if match is not None and match(n) and n not in _NOT_RELAYED]

        removed = tuple(name.strip().lower() for n, v in headers if n == HEADERS_TO_REMOVE
                        for name in v.split(b",") if name.strip())
        return Verdict(OK, to_client=picked(rules.client_on_success), to_set=picked(rules.upstream),
                       to_append=picked(rules.upstream_append), to_remove=removed)
    client = rules.client
    if client is None:
        relayed = [(n, v) for n, v in headers if n not in _NOT_RELAYED]
    else:
        relayed = [(n, v) for n, v in headers if (client(n) or n in _ALWAYS_TO_CLIENT) and n not in _NOT_RELAYED]
    return Verdict(DENIED, status, body, relayed)
