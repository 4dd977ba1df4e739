"""What ext_authz's HTTP check carries and what its answer means (sans-IO); observed on Envoy 1.40 first
(tests/proxy/test_proxy_ext_authz.py runs the same through both proxies)."""

from __future__ import annotations

from pylon.extensions.filters.common.ext_authz import (
    DENIED, ERROR, OK, Matcher, ResponseRules, any_of, check_request, verdict,
)

CLIENT = [(b"host", b"svc"), (b"authorization", b"Bearer t"), (b"x-foo", b"1"), (b"x-foo", b"2"),
          (b"cookie", b"a=b"), (b"content-length", b"5")]
NONE = ResponseRules(None, None, None, None)


def exact(*names: bytes) -> Matcher:
    return any_of([lambda n, x=x: n == x for x in names])


def test_default_check_carries_method_path_host_and_authorization_only() -> None:
    request = check_request(b"GET", b"/a?b=1", b"svc", CLIENT, allowed=None, path_prefix=b"", headers_to_add=[],
                            timeout_ms=250, body=None, partial=False)
    assert (request.method, request.path, request.host, request.body) == (b"GET", b"/a?b=1", b"svc", b"")
    assert request.headers == [(b"authorization", b"Bearer t"), (b"x-envoy-internal", b"true"),
                               (b"x-envoy-expected-rq-timeout-ms", b"250")]


def test_allowed_headers_joined_prefix_added_headers_and_body() -> None:
    request = check_request(b"POST", b"/a", b"svc", CLIENT, allowed=exact(b"x-foo", b"content-length"),
                            path_prefix=b"/pre", headers_to_add=[(b"x-foo", b"replaced"), (b"x-added", b"v")],
                            timeout_ms=0, body=b"hel", partial=True)
    assert request.path == b"/pre/a" and request.body == b"hel"
    assert dict(request.headers) == {b"authorization": b"Bearer t", b"x-foo": b"replaced", b"x-added": b"v",
                                     b"x-envoy-auth-partial-body": b"true", b"x-envoy-internal": b"true"}
    joined = check_request(b"POST", b"/a", b"svc", CLIENT, allowed=exact(b"x-foo"), path_prefix=b"",
                           headers_to_add=[], timeout_ms=0, body=None, partial=False)
    assert dict(joined.headers)[b"x-foo"] == b"1,2"  # content-length is the check's own, never the client's


def test_only_200_allows_and_picks_the_listed_headers() -> None:
    answer = [(b"x-current-user", b"alice"), (b"x-append", b"a"), (b"x-other", b"o"), (b"content-length", b"0"),
              (b"x-envoy-auth-headers-to-remove", b"cookie, x-foo")]
    rules = ResponseRules(exact(b"x-current-user"), exact(b"x-append"), None, exact(b"x-other"))
    allowed = verdict(200, answer, b"", rules)
    assert allowed.kind == OK
    assert allowed.to_set == [(b"x-current-user", b"alice")] and allowed.to_append == [(b"x-append", b"a")]
    assert allowed.to_client == [(b"x-other", b"o")] and allowed.to_remove == (b"cookie", b"x-foo")
    assert verdict(200, answer, b"", NONE).to_set == []  # no list: nothing reaches the upstream


def test_errors_are_5xx_and_no_answer() -> None:
    assert verdict(None, [], b"", NONE).kind == ERROR
    assert verdict(503, [], b"x", NONE).kind == ERROR
    assert verdict(500, [], b"", NONE).kind == ERROR


def test_any_other_status_denies_with_its_body_and_headers() -> None:
    answer = [(b"x-reason", b"bad"), (b"www-authenticate", b"Basic"), (b"host", b"h"), (b"content-length", b"4"),
              (b"content-type", b"text/html")]
    denied = verdict(401, answer, b"nope", NONE)
    assert (denied.kind, denied.status, denied.body) == (DENIED, 401, b"nope")
    assert denied.to_client == [(b"x-reason", b"bad"), (b"www-authenticate", b"Basic"), (b"content-type", b"text/html")]
    listed = verdict(302, answer + [(b"location", b"/login")], b"", ResponseRules(None, None, exact(b"x-reason"), None))
    assert listed.to_client == [(b"x-reason", b"bad"), (b"www-authenticate", b"Basic"), (b"location", b"/login")]
    assert verdict(200 - 1, [], b"", NONE).kind == DENIED  # not 200: denied
