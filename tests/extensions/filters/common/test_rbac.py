"""The RBAC engine (sans-IO): every permission and principal kind, nesting, the actions, and the config rules.

The semantics asserted here were observed with Envoy 1.40 (see the module doc of
`pylon.extensions.filters.common.rbac`); the end-to-end comparison with Envoy is
tests/proxy/test_proxy_rbac.py.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from pylon.config.envoy import convert
from pylon.config.errors import split_validation_error
from pylon.extensions.filters.common.rbac import RBAC, Engine, Facts, Request
from pylon.identity.certs import Usage, issue_leaf, make_ca
from pylon.proxy.connection_info import ConnectionInfo

SPIFFE = "spiffe://cluster.local/ns/default/sa/allowed"


class FakeSsl:
    """What ConnectionInfo reads of a server-side SSL object: the peer certificate (DER), if any."""

    def __init__(self, der: bytes | None) -> None:
        self.der = der

    def getpeercert(self, binary_form: bool = False) -> bytes | None:
        return self.der


@cache
def client_der(common_name: str = "client one", uris: tuple[str, ...] = (SPIFFE, "spiffe://td/second"),
               dns: tuple[str, ...] = ("one.example", "two.example")) -> bytes:
    ca = make_ca()
    leaf = issue_leaf(ca, common_name=common_name, uris=uris, dns_names=dns, usage=Usage.CLIENT)
    return leaf.cert.public_bytes(Encoding.DER)


def facts(*, local: tuple[str, int] = ("10.0.0.1", 8080), peer: tuple[str, int] = ("10.1.2.3", 40000),
          tls: bool = False, cert: bytes | None = None, sni: str = "", client: str | None = None,
          request: Request | None = None) -> Facts:
    ssl_object = FakeSsl(cert) if tls or cert is not None else None
    return Facts(ConnectionInfo(1, local, peer, ssl_object, sni), request, client)


def http(path: bytes = b"/", headers: list[tuple[bytes, bytes]] | None = None, method: bytes = b"GET",
         authority: bytes = b"example.com", scheme: bytes = b"http") -> Request:
    return Request(headers or [], method, authority, path, scheme)


def engine(action: str, **policies: dict[str, Any]) -> Engine:
    return Engine(convert({"action": action, "policies": policies}, RBAC))


def allowed_by(permission: dict[str, Any] | None = None, principal: dict[str, Any] | None = None) -> Any:
    """Whether an ALLOW engine with one policy (the given permission and principal, else `any`) allows `facts`."""
    rules = engine("ALLOW", p={"permissions": [permission or {"any": True}], "principals": [principal or {"any": True}]})
    return lambda f: rules.evaluate(f).allowed


def cidr(address: str, length: int) -> dict[str, Any]:
    return {"address_prefix": address, "prefix_len": length}


# --------------------------------------------------------------------------- actions


def test_allow_allows_only_what_a_policy_matches_and_names_the_first_policy_by_name() -> None:
    rules = engine("ALLOW",
                   zeta={"permissions": [{"any": True}], "principals": [{"any": True}]},
                   alpha={"permissions": [{"url_path": {"path": {"prefix": "/a"}}}], "principals": [{"any": True}]})
    assert rules.evaluate(facts(request=http(b"/a/b"))) == (True, "alpha")  # both match: lexicographic order
    assert rules.evaluate(facts(request=http(b"/b"))) == (True, "zeta")
    only_alpha = engine("ALLOW", alpha={"permissions": [{"url_path": {"path": {"prefix": "/a"}}}],
                                        "principals": [{"any": True}]})
    assert only_alpha.evaluate(facts(request=http(b"/b"))) == (False, None)  # no policy matches: denied


def test_allow_without_policies_denies_everything_deny_without_policies_allows() -> None:
    assert engine("ALLOW").evaluate(facts()) == (False, None)
    assert engine("DENY").evaluate(facts()) == (True, None)
    assert engine("LOG").evaluate(facts()) == (True, None)


def test_deny_denies_what_a_policy_matches() -> None:
    rules = engine("DENY", admin={"permissions": [{"url_path": {"path": {"prefix": "/admin"}}}],
                                  "principals": [{"any": True}]})
    assert rules.evaluate(facts(request=http(b"/admin/x"))) == (False, "admin")
    assert rules.evaluate(facts(request=http(b"/public"))) == (True, None)


def test_log_never_denies_but_names_the_match() -> None:
    rules = engine("LOG", audit={"permissions": [{"url_path": {"path": {"exact": "/x"}}}], "principals": [{"any": True}]})
    assert rules.evaluate(facts(request=http(b"/x"))) == (True, "audit")
    assert rules.evaluate(facts(request=http(b"/y"))) == (True, None)


def test_a_policy_needs_a_permission_and_a_principal() -> None:
    rules = engine("ALLOW", p={"permissions": [{"destination_port": 1}, {"url_path": {"path": {"exact": "/ok"}}}],
                               "principals": [{"direct_remote_ip": cidr("192.168.0.0", 16)},
                                              {"direct_remote_ip": cidr("10.0.0.0", 8)}]})
    assert rules.evaluate(facts(request=http(b"/ok"))).allowed  # second permission, second principal
    assert not rules.evaluate(facts(request=http(b"/no"))).allowed  # no permission
    assert not rules.evaluate(facts(peer=("172.16.0.1", 1), request=http(b"/ok"))).allowed  # no principal


# --------------------------------------------------------------------------- permissions


def test_and_or_not_nesting() -> None:
    check = allowed_by({"and_rules": {"rules": [
        {"or_rules": {"rules": [{"url_path": {"path": {"prefix": "/api/"}}}, {"url_path": {"path": {"exact": "/"}}}]}},
        {"not_rule": {"header": {"name": ":method", "string_match": {"exact": "DELETE"}}}},
        {"not_rule": {"not_rule": {"destination_port": 8080}}},
    ]}})  # fmt: skip
    assert check(facts(request=http(b"/api/x")))
    assert check(facts(request=http(b"/")))
    assert not check(facts(request=http(b"/other")))
    assert not check(facts(request=http(b"/api/x", method=b"DELETE")))
    assert not check(facts(local=("10.0.0.1", 9090), request=http(b"/api/x")))


@pytest.mark.parametrize(("header", "headers", "expected"), [
    ({"name": "x-a", "string_match": {"exact": "1"}}, [(b"x-a", b"1")], True),
    ({"name": "X-A", "string_match": {"exact": "1"}}, [(b"x-a", b"1")], True),  # names are case-insensitive
    ({"name": "x-a", "string_match": {"exact": "1"}}, [(b"x-a", b"2")], False),
    ({"name": "x-a", "present_match": True}, [], False),
    ({"name": "x-a", "present_match": False}, [], True),
    ({"name": "x-a"}, [(b"x-a", b"")], True),  # no match kind: presence
    ({"name": "x-a", "string_match": {"exact": "1"}, "invert_match": True}, [], False),  # missing: no inverted match
    ({"name": "x-a", "string_match": {"exact": "1"}, "invert_match": True}, [(b"x-a", b"2")], True),
    ({"name": "x-a", "string_match": {"exact": ""}, "treat_missing_header_as_empty": True}, [], True),
    # repeated headers match value by value, not as "a,b" (Envoy 1.40) ...
    ({"name": "x-m", "string_match": {"exact": "b"}}, [(b"x-m", b"a"), (b"x-m", b"b")], True),
    ({"name": "x-m", "string_match": {"exact": "a,b"}}, [(b"x-m", b"a"), (b"x-m", b"b")], False),
    ({"name": "x-m", "exact_match": "a"}, [(b"x-m", b"a"), (b"x-m", b"b")], True),
    ({"name": "x-m", "string_match": {"exact": "a"}, "invert_match": True}, [(b"x-m", b"a"), (b"x-m", b"b")], False),
    ({"name": "x-m", "string_match": {"exact": "c"}, "invert_match": True}, [(b"x-m", b"a"), (b"x-m", b"b")], True),
    ({"name": "x-m", "string_match": {"safe_regex": {"regex": "[ab]"}}}, [(b"x-m", b"b")], True),
    # ... except Envoy's inline headers (user-agent, accept, ...), which Envoy joins with "," as it reads them
    ({"name": "user-agent", "string_match": {"exact": "a,b"}}, [(b"user-agent", b"a"), (b"user-agent", b"b")], True),
    ({"name": "user-agent", "string_match": {"exact": "a"}}, [(b"user-agent", b"a"), (b"user-agent", b"b")], False),
    ({"name": ":path", "string_match": {"exact": "/p?q=1"}}, [], True),  # :path keeps the query
    ({"name": ":method", "string_match": {"exact": "GET"}}, [], True),
    ({"name": ":authority", "string_match": {"exact": "EXAMPLE.com", "ignore_case": True}}, [], True),
    ({"name": "host", "string_match": {"exact": "example.com"}}, [], True),  # host is :authority
    ({"name": ":scheme", "string_match": {"exact": "http"}}, [], True),
])  # fmt: skip
def test_header(header: dict[str, Any], headers: list[tuple[bytes, bytes]], expected: bool) -> None:
    assert allowed_by({"header": header})(facts(request=http(b"/p?q=1", headers))) is expected
    assert allowed_by(principal={"header": header})(facts(request=http(b"/p?q=1", headers))) is expected


@pytest.mark.parametrize(("matcher", "path", "expected"), [
    ({"exact": "/a"}, b"/a?x=1", True),  # no query
    ({"exact": "/a"}, b"/a#frag", True),
    ({"prefix": "/a/"}, b"/a/b", True),
    ({"exact": "/A", "ignore_case": True}, b"/a", True),
    ({"exact": "/a b"}, b"/a%20b", False),  # not percent-decoded
    ({"safe_regex": {"regex": "/a/[0-9]+"}}, b"/a/12", True),
    ({"suffix": ".png"}, b"/x.png?y", True),
])  # fmt: skip
def test_url_path(matcher: dict[str, Any], path: bytes, expected: bool) -> None:
    assert allowed_by({"url_path": {"path": matcher}})(facts(request=http(path))) is expected
    assert allowed_by(principal={"url_path": {"path": matcher}})(facts(request=http(path))) is expected


def test_url_path_and_headers_without_a_request_never_match() -> None:
    assert not allowed_by({"url_path": {"path": {"prefix": "/"}}})(facts())
    assert allowed_by({"not_rule": {"url_path": {"path": {"prefix": "/"}}}})(facts())


def test_destination_ip_port_and_port_range() -> None:
    at = facts(local=("10.0.0.1", 8080))
    assert allowed_by({"destination_ip": cidr("10.0.0.0", 24)})(at)
    assert not allowed_by({"destination_ip": cidr("10.0.1.0", 24)})(at)
    assert not allowed_by({"destination_ip": cidr("::", 0)})(at)  # another family
    assert allowed_by({"destination_port": 8080})(at)
    assert not allowed_by({"destination_port": 8081})(at)
    assert allowed_by({"destination_port_range": {"start": 8080, "end": 8081}})(at)  # [start, end)
    assert not allowed_by({"destination_port_range": {"start": 8000, "end": 8080}})(at)


def test_requested_server_name_is_what_tls_inspector_read() -> None:
    check = allowed_by({"requested_server_name": {"exact": "api.example.com"}})
    assert check(facts(tls=True, sni="api.example.com"))
    assert not check(facts(tls=True, sni="other.example.com"))
    inspected_nothing = Facts(ConnectionInfo(1, ("10.0.0.1", 443), ("10.1.2.3", 1), FakeSsl(None), ""))
    inspected_nothing.connection.requested_server_name = "api.example.com"  # as the handshake saw it
    assert not check(inspected_nothing)  # Envoy 1.40: no tls_inspector, no SNI for RBAC
    assert allowed_by({"requested_server_name": {"exact": ""}})(facts())


def test_absent_metadata_matches_only_inverted_matchers() -> None:
    def meta(value: dict[str, Any], invert: bool = False) -> dict[str, Any]:
        return {"metadata": {"filter": "istio_authn", "path": [{"key": "request.auth.principal"}], "value": value,
                             "invert": invert}}

    for value in ({"string_match": {"exact": "x"}}, {"present_match": True}, {"present_match": False},
                  {"null_match": {}}, {"bool_match": False}, {"double_match": {"exact": 0}},
                  {"list_match": {"one_of": {"present_match": True}}},
                  {"or_match": {"value_matchers": [{"present_match": False}, {"null_match": {}}]}}):
        assert not allowed_by(meta(value))(facts()), value
        assert allowed_by(meta(value, invert=True))(facts()), value
        assert not allowed_by(principal=meta(value))(facts()), value
    sourced = {"sourced_metadata": {"metadata_matcher": meta({"present_match": True})["metadata"]}}
    assert not allowed_by(sourced)(facts())


def with_metadata(metadata: dict[str, dict[str, Any]]) -> Facts:
    base = facts(request=http())
    return Facts(base.connection, base.request, None, metadata)


CANDIDATES = {"text": "alice", "int": 3, "real": 2.5, "bool": True, "null": None, "list": ["a", "b"],
              "struct": {"k": "v"}}


@pytest.mark.parametrize(("value", "matches"), [
    ({"string_match": {"exact": "alice"}}, {"text"}),
    ({"string_match": {"prefix": "al"}}, {"text"}),
    ({"present_match": True}, set(CANDIDATES)),
    ({"present_match": False}, set()),
    ({"null_match": {}}, {"null"}),
    ({"bool_match": True}, {"bool"}),
    ({"double_match": {"exact": 3}}, {"int"}),
    ({"double_match": {"range": {"start": 2, "end": 3}}}, {"real"}),
    ({"list_match": {"one_of": {"string_match": {"exact": "b"}}}}, {"list"}),
    ({"or_match": {"value_matchers": [{"null_match": {}}, {"bool_match": True}]}}, {"null", "bool"}),
])
def test_metadata_matchers_read_the_stream_metadata(value: dict[str, Any], matches: set[str]) -> None:
    """Envoy's value matchers: each kind matches only values of its kind (True is no number, 3 no string)."""
    rule = {"metadata": {"filter": "ns", "path": [{"key": "who"}], "value": value}}
    for name, candidate in CANDIDATES.items():
        assert allowed_by(rule)(with_metadata({"ns": {"who": candidate}})) == (name in matches), name
    assert not allowed_by(rule)(with_metadata({"ns": {"other": "alice"}}))
    nested = {"metadata": {"filter": "ns", "path": [{"key": "a"}, {"key": "b"}], "value": {"string_match": {"exact": "x"}},
                           "invert": True}}
    assert not allowed_by(nested)(with_metadata({"ns": {"a": {"b": "x"}}}))
    assert allowed_by(nested)(with_metadata({"ns": {"a": "not a struct"}}))


# --------------------------------------------------------------------------- principals


def test_authenticated_tries_uri_sans_dns_sans_and_the_subject() -> None:
    mtls = facts(cert=client_der())
    for name in (SPIFFE, "spiffe://td/second", "one.example", "two.example", "CN=client one"):
        assert allowed_by(principal={"authenticated": {"principal_name": {"exact": name}}})(mtls), name
    assert not allowed_by(principal={"authenticated": {"principal_name": {"exact": "spiffe://other"}}})(mtls)
    prefix = {"authenticated": {"principal_name": {"prefix": "spiffe://cluster.local/ns/default/"}}}
    assert allowed_by(principal=prefix)(mtls)
    assert not allowed_by(principal=prefix)(facts())  # plaintext: no principal


def test_authenticated_without_a_name_is_any_tls_connection_even_without_a_certificate() -> None:
    check = allowed_by(principal={"authenticated": {}})
    assert check(facts(cert=client_der()))
    assert check(facts(tls=True))  # TLS, no client certificate: Envoy 1.40 matches it
    assert not check(facts())
    empty = allowed_by(principal={"authenticated": {"principal_name": {"exact": ""}}})
    assert empty(facts(tls=True)) and not empty(facts())  # the missing certificate's subject is ""
    assert not allowed_by(principal={"authenticated": {"principal_name": {"prefix": "spiffe://"}}})(facts(tls=True))


def test_direct_remote_ip_source_ip_and_remote_ip() -> None:
    behind_proxy = facts(peer=("10.1.2.3", 1), client="203.0.113.7")
    assert allowed_by(principal={"direct_remote_ip": cidr("10.1.0.0", 16)})(behind_proxy)
    assert allowed_by(principal={"source_ip": cidr("10.1.2.3", 32)})(behind_proxy)
    assert not allowed_by(principal={"direct_remote_ip": cidr("203.0.113.0", 24)})(behind_proxy)
    assert allowed_by(principal={"remote_ip": cidr("203.0.113.0", 24)})(behind_proxy)
    assert not allowed_by(principal={"remote_ip": cidr("10.1.0.0", 16)})(behind_proxy)
    direct = facts(peer=("10.1.2.3", 1))
    assert allowed_by(principal={"remote_ip": cidr("10.1.0.0", 16)})(direct)  # no client: the peer
    unparsable = facts(peer=("10.1.2.3", 1), client="203.0.113.7:8080")
    assert allowed_by(principal={"remote_ip": cidr("10.1.0.0", 16)})(unparsable)  # not an IP: the peer
    assert allowed_by(principal={"direct_remote_ip": cidr("2001:db8::", 32)})(facts(peer=("2001:db8::1", 1)))


def test_principal_and_or_not_nesting() -> None:
    check = allowed_by(principal={"and_ids": {"ids": [
        {"or_ids": {"ids": [{"authenticated": {"principal_name": {"exact": SPIFFE}}},
                            {"direct_remote_ip": cidr("127.0.0.0", 8)}]}},
        {"not_id": {"header": {"name": "x-block", "present_match": True}}},
    ]}})  # fmt: skip
    assert check(facts(cert=client_der(), request=http()))
    assert check(facts(peer=("127.0.0.1", 1), request=http()))
    assert not check(facts(request=http()))
    assert not check(facts(cert=client_der(), request=http(headers=[(b"x-block", b"1")])))


# --------------------------------------------------------------------------- config


def error_of(config: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(msgspec.ValidationError) as caught:
        convert(config, RBAC)
    return split_validation_error(caught.value)


def one(permission: dict[str, Any] | None = None, principal: dict[str, Any] | None = None) -> dict[str, Any]:
    permission = {"any": True} if permission is None else permission
    principal = {"any": True} if principal is None else principal
    return {"policies": {"p": {"permissions": [permission], "principals": [principal]}}}


@pytest.mark.parametrize(("config", "path", "message"), [
    (one({}), "policies[...].permissions[0]", "exactly one of"),
    (one({"any": True, "destination_port": 80}), "policies[...].permissions[0]", "got any, destination_port"),
    (one({"any": False}), "policies[...].permissions[0].any", "must be true"),
    (one(principal={"any": False}), "policies[...].principals[0].any", "must be true"),
    ({"policies": {"p": {"permissions": [], "principals": [{"any": True}]}}}, "policies[...].permissions", "length"),
    ({"policies": {"p": {"permissions": [{"any": True}], "principals": []}}}, "policies[...].principals", "length"),
    (one({"and_rules": {"rules": []}}), "policies[...].permissions[0].and_rules.rules", "length"),
    (one(principal={"or_ids": {"ids": []}}), "policies[...].principals[0].or_ids.ids", "length"),
    (one({"destination_port": 65536}), "policies[...].permissions[0].destination_port", "<= 65535"),
    (one({"destination_port_range": {"start": 80, "end": 80}}), "policies[...].permissions[0].destination_port_range.start",
     "range start 80 cannot be greater or equal than range end 80"),
    (one({"destination_port_range": {"start": -1, "end": 80}}), "policies[...].permissions[0].destination_port_range.start",
     "out of bounds"),
    (one({"destination_port_range": {"start": 1, "end": 65537}}), "policies[...].permissions[0].destination_port_range.end",
     "out of bounds"),
    (one({"header": {"name": ":foo", "present_match": True}}), "policies[...].permissions[0].header.name",
     "pseudo-header"),
    (one(principal={"remote_ip": {"address_prefix": "1.2.3", "prefix_len": 32}}),
     "policies[...].principals[0].remote_ip.address_prefix", "malformed IP address"),
    (one(principal={"authenticated": {"principal_name": {}}}), "policies[...].principals[0].authenticated.principal_name",
     "exactly one of"),
    (one({"metadata": {"filter": "f", "path": [], "value": {"present_match": True}}}),
     "policies[...].permissions[0].metadata.path", "length"),
    (one({"metadata": {"filter": "envoy.common", "path": [{"key": "access_log_hint"}], "value": {"bool_match": True}}}),
     "policies[...].permissions[0].metadata.filter", "RBAC filters write themselves"),
    ({"action": "BOGUS"}, "action", "Invalid enum value 'BOGUS'"),
    # not implemented: refused by name
    ({"audit_logging_options": {}}, "audit_logging_options", "not supported yet"),
    ({"policies": {"p": {"permissions": [{"any": True}], "principals": [{"any": True}], "condition": {}}}},
     "policies[...].condition", "not supported yet"),
    (one({"matcher": {"name": "m"}}), "policies[...].permissions[0].matcher", "not supported yet"),
    (one({"uri_template": {"name": "t"}}), "policies[...].permissions[0].uri_template", "not supported yet"),
    (one(principal={"filter_state": {"key": "k"}}), "policies[...].principals[0].filter_state", "not supported yet"),
    (one(principal={"custom": {"name": "c"}}), "policies[...].principals[0].custom", "not supported yet"),
    (one({"sourced_metadata": {"metadata_matcher": {"filter": "f", "path": [{"key": "k"}], "value": {"present_match": True}},
                               "metadata_source": "ROUTE"}}),
     "policies[...].permissions[0].sourced_metadata.metadata_source", "ROUTE"),
])  # fmt: skip
def test_config_errors_name_the_field(config: dict[str, Any], path: str, message: str) -> None:
    got_path, got_message = error_of(config)
    assert (got_path, message in got_message) == (path, True), got_message


def test_action_names_in_any_letter_case_as_envoy_reads_them() -> None:
    assert convert({"action": "deny"}, RBAC).action == "DENY"
