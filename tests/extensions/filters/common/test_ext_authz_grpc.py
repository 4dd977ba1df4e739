"""ext_authz's gRPC messages (sans-IO): the CheckRequest built from a request, and what a CheckResponse means."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from google.rpc import status_pb2

from pylon.extensions.filters.common import ext_authz_grpc as wire
from pylon.extensions.filters.common.ext_authz import DENIED, OK

FACTS = wire.Facts(wire.Peer(("10.0.0.1", 5000), "spiffe://a", "PEM", "frontend"), wire.Peer(("10.0.0.2", 80)),
                   b"POST", b"/p?q=1", b"example", b"https", "HTTP/1.1",
                   [(b"host", b"example"), (b"x-a", b"1"), (b"X-A", b"2"), (b"connection", b"close"),
                    (b"content-length", b"12")], {"k": "v"})


def test_the_check_request() -> None:
    sent = external_auth_pb2.CheckRequest.FromString(
        wire.check_request(FACTS, body=b"hello", partial=True, pack_as_bytes=False, now=1.5, stream_id=7))
    attributes = sent.attributes
    assert (attributes.source.address.socket_address.address, attributes.source.principal,
            attributes.source.certificate, attributes.source.service) == ("10.0.0.1", "spiffe://a", "PEM", "frontend")
    assert attributes.destination.address.socket_address.port_value == 80
    http = attributes.request.http
    assert (http.id, http.method, http.path, http.host, http.scheme, http.size, http.body) == (
        "7", "POST", "/p?q=1", "example", "https", 12, "hello")
    assert dict(http.headers) == {":authority": "example", ":path": "/p?q=1", ":method": "POST", ":scheme": "https",
                                  "x-a": "1,2", "content-length": "12", "x-envoy-auth-partial-body": "true"}
    assert dict(attributes.context_extensions) == {"k": "v"} and attributes.request.time.nanos == 500_000_000
    raw = external_auth_pb2.CheckRequest.FromString(
        wire.check_request(FACTS, body=b"\xff", partial=False, pack_as_bytes=True))
    assert (raw.attributes.request.http.raw_body, raw.attributes.request.http.body) == (b"\xff", "")


def test_principal_order() -> None:
    assert wire.peer_principal(["spiffe://x"], ["d"], "CN=s") == "spiffe://x"
    assert wire.peer_principal([], ["d"], "CN=s") == "d"
    assert wire.peer_principal([], [], "CN=s") == "CN=s"


def _option(key: str, value: str, append: bool | None = None) -> base_pb2.HeaderValueOption:
    option = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value))
    if append is not None:
        option.append.value = append
    return option


def test_what_an_answer_means() -> None:
    ok = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=0), ok_response=external_auth_pb2.OkHttpResponse(
        headers=[_option("X-Set", "s"), _option("x-join", "j", True)], headers_to_remove=["x-gone", ":path", "host"],
        response_headers_to_add=[_option("x-r", "1"), _option("x-r2", "2", True)]))
    meaning = wire.verdict(ok.SerializeToString())
    assert meaning.verdict.kind == OK
    assert (meaning.verdict.to_set, meaning.to_join, meaning.verdict.to_remove) == (
        [(b"x-set", b"s")], [(b"x-join", b"j")], (b"x-gone",))
    assert (meaning.verdict.to_client, meaning.client_append, meaning.query_edits) == (
        [(b"x-r", b"1")], [(b"x-r2", b"2")], False)
    bare = wire.verdict(external_auth_pb2.CheckResponse(status=status_pb2.Status(code=7)).SerializeToString())
    assert (bare.verdict.kind, bare.verdict.status, bare.verdict.body) == (DENIED, 403, b"")
    query = external_auth_pb2.CheckResponse(ok_response=external_auth_pb2.OkHttpResponse(
        query_parameters_to_remove=["a"]))
    assert wire.verdict(query.SerializeToString()).query_edits
