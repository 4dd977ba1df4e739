"""What ext_authz's gRPC service (envoy.service.auth.v3.Authorization/Check) is sent and what its answer means
(sans-IO: protobuf messages in, bytes out and back).

Observed with Envoy 1.40 (tests/proxy/test_proxy_ext_authz_grpc.py checks pylon beside it):

- The CheckRequest's `attributes.source` / `destination` are the connection's peer and local addresses, with the
  principals of the peer's and the listener's certificates (URI SAN, else DNS SAN, else subject; the listener's:
  its URI SAN only) and, with `include_peer_certificate`, the peer's URL-encoded PEM; `source.service` is the
  client's x-envoy-downstream-service-cluster. `request.time` is when the check starts; `request.http` has a
  random id, the method, path (query included), host, scheme, protocol, `size` (the content-length, 0 without
  one), and every header but the connection's own, names lower-case, the pseudo-headers :authority, :path,
  :method, :scheme instead of Host, repeated names joined by ","; a buffered body goes in `body` (`raw_body` with `pack_as_bytes`) with
  `x-envoy-auth-partial-body` among the headers. `context_extensions` come from the route's check_settings.
  `metadata_context` and `route_metadata_context` are sent empty (the features that fill them are refused).
- Its answer: status OK allows, with `ok_response.headers` set on the upstream request (appended to a value
  already there, joined by ",", when the deprecated `append` is true; Envoy 1.40 sets every other one, whatever
  its `append_action`), `headers_to_remove` removed (never pseudo-headers or Host), and
  `response_headers_to_add` on the client's response. `query_parameters_to_set` / `_to_remove` are not applied
  yet: an answer with them is taken as an error (status_on_error or failure_mode_allow), never silently
  ignored. Any other status denies: the client gets `denied_response`'s status (403 without one), body and
  headers.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import NamedTuple
from urllib.parse import quote

from envoy.config.core.v3 import address_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2

from pylon.extensions.filters.common.ext_authz import DENIED, OK, PARTIAL_BODY, Headers, Verdict

METHOD = "/envoy.service.auth.v3.Authorization/Check"
_GRPC_OK = 0
#: Client headers a check does not carry: Host (sent as :authority) and the connection's own (Envoy's codec
#: drops them before the filters).
_NOT_SENT = frozenset((b"host", b"connection", b"keep-alive", b"proxy-connection"))
#: Headers an answer may not remove (Envoy keeps them: the request would no longer be one).
_NOT_REMOVABLE = frozenset((b"host", b":authority", b":path", b":method", b":scheme"))


class Peer(NamedTuple):
    """One end of the connection as the check request describes it."""

    address: tuple[str, int] | None
    principal: str = ""
    certificate: str = ""  # URL-encoded PEM (include_peer_certificate)
    service: str = ""


class Facts(NamedTuple):
    """What a check request is built from."""

    source: Peer
    destination: Peer
    method: bytes
    path: bytes
    authority: bytes
    scheme: bytes
    protocol: str
    headers: Headers  # the client's headers as the filters see them (Host among them, no pseudo-headers)
    context_extensions: dict[str, str]


def peer_principal(uri_sans: Sequence[str], dns_sans: Sequence[str], subject: str) -> str:
    """Envoy's principal of a certificate: its first URI SAN, else its first DNS SAN, else its subject."""
    return uri_sans[0] if uri_sans else dns_sans[0] if dns_sans else subject


def url_encoded_pem(pem: str) -> str:
    return quote(pem, safe="")


def _peer(message: attribute_context_pb2.AttributeContext.Peer, peer: Peer) -> None:
    if peer.address is not None:
        ip, port = peer.address[:2]
        message.address.socket_address.CopyFrom(address_pb2.SocketAddress(address=ip, port_value=port))
    if peer.principal:
        message.principal = peer.principal
    if peer.certificate:
        message.certificate = peer.certificate
    if peer.service:
        message.service = peer.service


def check_request(facts: Facts, *, body: bytes | None, partial: bool, pack_as_bytes: bool,
                  now: float | None = None, stream_id: int | None = None) -> bytes:
    """The serialized CheckRequest for a client request (`body`: the buffered body, None when none was)."""
    request = external_auth_pb2.CheckRequest()
    attributes = request.attributes
    _peer(attributes.source, facts.source)
    _peer(attributes.destination, facts.destination)
    attributes.request.time.FromNanoseconds(int((time.time() if now is None else now) * 1e9))
    http = attributes.request.http
    http.id = str(random.getrandbits(64) if stream_id is None else stream_id)
    http.method = facts.method.decode("latin-1")
    http.path = facts.path.decode("latin-1")
    http.host = facts.authority.decode("latin-1")
    http.scheme = facts.scheme.decode("latin-1")
    http.protocol = facts.protocol
    joined: dict[str, str] = {":authority": http.host, ":path": http.path, ":method": http.method,
                              ":scheme": http.scheme}
    size = 0
    for name, value in facts.headers:
        if name in _NOT_SENT:
            continue
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        joined[key] = f"{joined[key]},{text}" if key in joined else text
        if name == b"content-length" and value.isdigit():
            size = int(value)
    http.size = size
    if body is not None:
        joined[PARTIAL_BODY.decode()] = "true" if partial else "false"
        if pack_as_bytes:
            http.raw_body = body
        else:
            http.body = body.decode("utf-8", "replace")
    http.headers.update(joined)
    attributes.context_extensions.update(facts.context_extensions)
    attributes.metadata_context.SetInParent()
    attributes.route_metadata_context.SetInParent()
    return request.SerializeToString()


class GrpcVerdict(NamedTuple):
    """A gRPC answer's meaning: the common verdict, plus what only a gRPC answer can ask."""

    verdict: Verdict
    to_join: Headers = []  # OK: appended to the upstream request's value (joined by ","), or added
    client_append: Headers = []  # OK: added to the client's response (to_client: set on it)
    query_edits: bool = False  # OK: the answer asks to set or remove query parameters


def _options(options: Sequence[object]) -> tuple[Headers, Headers]:
    """(set, appended) header pairs of HeaderValueOptions: `append` true appends, anything else sets."""
    to_set: Headers = []
    appended: Headers = []
    for option in options:
        header = option.header  # type: ignore[attr-defined]
        value = header.raw_value if header.raw_value else header.value.encode()
        pair = (header.key.lower().encode(), value)
        appends = option.HasField("append") and option.append.value  # type: ignore[attr-defined]
        (appended if appends else to_set).append(pair)
    return to_set, appended


def verdict(answer: bytes) -> GrpcVerdict:
    """What a CheckResponse means (a call that failed is the caller's error, not an answer)."""
    response = external_auth_pb2.CheckResponse.FromString(answer)
    if response.status.code != _GRPC_OK:
        denied = response.denied_response
        status = denied.status.code or 403
        to_set, appended = _options(denied.headers)
        return GrpcVerdict(Verdict(DENIED, status, denied.body.encode(), to_set + appended))
    ok = response.ok_response
    to_set, to_join = _options(ok.headers)
    client_set, client_append = _options(ok.response_headers_to_add)
    removed = tuple(n for n in (name.lower().encode() for name in ok.headers_to_remove) if n not in _NOT_REMOVABLE)
    return GrpcVerdict(Verdict(OK, to_client=client_set, to_set=to_set, to_remove=removed), to_join=to_join,
                       client_append=client_append,
                       query_edits=bool(ok.query_parameters_to_set or ok.query_parameters_to_remove))

