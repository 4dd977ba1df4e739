"""RouteTable: Envoy's virtual host selection, route matching, rewrites, redirects and policies."""

from __future__ import annotations

import os
import random
import time
import tracemalloc
from collections import Counter
from typing import Any

import httpx
import msgspec
import pytest
import re2
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pylon import regex
from pylon.config.envoy import HeaderMatcher, RouteConfiguration, dec_hook
from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap
from pylon.proxy.headers import HeaderList
from pylon.proxy.router import HashSource, MatchedRoute, RouteTable, _HeaderMatcher
from pylon.proxy.validate import configure_regex_engine, validate_route_config
from pylon.regex import hs_cache, hyperscan_engine
from tests.conftest import free_port
from tests.proxy.conftest import http_listener, proxy_args


def build(virtual_hosts: list[dict[str, Any]], rng: random.Random | None = None, **top: Any) -> RouteTable:
    config = msgspec.convert({"virtual_hosts": virtual_hosts, **top}, RouteConfiguration, dec_hook=dec_hook)
    return RouteTable(config, rng=rng)


def to(cluster: str, match: dict[str, Any] | None = None, **action: Any) -> dict[str, Any]:
    return {"name": cluster, "match": match or {"prefix": "/"}, "route": {"cluster": cluster, **action}}


def one_vhost(*routes: dict[str, Any], **vhost: Any) -> RouteTable:
    return build([{"name": "vh", "domains": ["*"], "routes": list(routes), **vhost}])


def route_of(table: RouteTable, path: str, headers: list[tuple[bytes, bytes]] | None = None,
             authority: str = "example.com", **kw: Any) -> MatchedRoute | None:
    return table.match(authority, path, HeaderList(headers or []), **kw)


def name_of(table: RouteTable, path: str, **kw: Any) -> str | None:
    route = route_of(table, path, **kw)
    return None if route is None else route.name


# --------------------------------------------------------------------------- virtual hosts


DOMAINS = build([
    {"name": "exact", "domains": ["www.foo.com", "Mixed.Example.COM"], "routes": [to("exact")]},
    {"name": "suffix", "domains": ["*.foo.com"], "routes": [to("suffix")]},
    {"name": "longer-suffix", "domains": ["*.bar.foo.com", "*-bar.foo.com"], "routes": [to("longer-suffix")]},
    {"name": "prefix", "domains": ["foo.*"], "routes": [to("prefix")]},
    {"name": "longer-prefix", "domains": ["foo.bar.*"], "routes": [to("longer-prefix")]},
    {"name": "ported", "domains": ["api.com:8443"], "routes": [to("ported")]},
    {"name": "portless", "domains": ["api.com", "[::1]"], "routes": [to("portless")]},
    {"name": "default", "domains": ["*"], "routes": [to("default")]},
])


@pytest.mark.parametrize("authority, vhost", [
    ("www.foo.com", "exact"),
    ("WWW.FOO.COM", "exact"),
    ("mixed.example.com", "exact"),
    ("a.foo.com", "suffix"),
    ("x.bar.foo.com", "longer-suffix"),
    ("x-bar.foo.com", "longer-suffix"),
    ("foo.org", "prefix"),
    ("foo.bar.org", "longer-prefix"),
    ("foo.com", "prefix"),           # "*.foo.com" needs at least one character before ".foo.com"
    ("other.org", "default"),
    ("api.com:8443", "ported"),      # host:port matched as given first
    ("api.com:9000", "portless"),    # then with the port stripped, before "*"
    ("api.com", "portless"),
    ("www.foo.com:80", "exact"),
    ("a.foo.com:80", "suffix"),
    ("[::1]:8080", "portless"),
    ("[::1]", "portless"),
])
def test_virtual_host_selection(authority, vhost):
    route = route_of(DOMAINS, "/", authority=authority)
    assert route is not None and route.virtual_host_name == vhost


def test_suffix_wildcard_must_cover_a_character():
    table = build([{"name": "s", "domains": ["*foo.com"], "routes": [to("s")]}])
    assert name_of(table, "/", authority="xfoo.com") == "s"
    assert name_of(table, "/", authority="foo.com") is None


def test_no_virtual_host_means_no_route():
    table = build([{"name": "only", "domains": ["a.com"], "routes": [to("a")]}])
    assert route_of(table, "/", authority="b.com") is None
    assert route_of(table, "/", authority="b.com") is None  # memoised miss stays a miss
    assert route_of(build([]), "/") is None


def test_vhost_memo_is_bounded():
    table = build([{"name": "d", "domains": ["*"], "routes": [to("d")]}])
    for i in range(3000):
        assert name_of(table, "/", authority=f"h{i}.example") == "d"
    assert len(table._vhost_cache) <= 1024


# --------------------------------------------------------------------------- paths


def test_path_match_kinds_and_first_match_wins():
    table = one_vhost(
        to("exact", {"path": "/exact"}),
        to("regex", {"safe_regex": {"regex": r"/items/\d+"}}),
        to("prefix", {"prefix": "/api/"}),
        to("api-too-late", {"prefix": "/api/v2"}),
        to("ci-prefix", {"prefix": "/CaSe/", "case_sensitive": False}),
        to("ci-path", {"path": "/Login", "case_sensitive": False}),
        to("cs-path", {"path": "/Other"}),
    )
    assert name_of(table, "/exact") == "exact"
    assert name_of(table, "/exact?x=1") == "exact"          # query string ignored
    assert name_of(table, "/exact#frag") == "exact"
    assert name_of(table, "/exact/") is None
    assert name_of(table, "/items/42") == "regex"
    assert name_of(table, "/items/42?page=2") == "regex"
    assert name_of(table, "/items/42/x") is None             # safe_regex is a full match
    assert name_of(table, "/api/v2/users") == "prefix"       # first match wins
    assert name_of(table, "/case/anything") == "ci-prefix"
    assert name_of(table, "/CASE/anything") == "ci-prefix"
    assert name_of(table, "/LOGIN") == "ci-path"
    assert name_of(table, "/other") is None                 # case_sensitive defaults to true
    assert name_of(table, "/Other") == "cs-path"


def test_query_string_does_not_satisfy_a_prefix():
    table = one_vhost(to("q", {"prefix": "/a?b"}))
    assert name_of(table, "/a?b=1") is None


def linear_scan(routes: list[tuple[str, str]], path: str) -> str | None:
    """Envoy's rule: the first route in config order whose prefix/path matches."""
    return next((f"r{i}" for i, (kind, value) in enumerate(routes)
                 if (path.startswith(value) if kind == "prefix" else path == value)), None)


#: Smallest routes on which a broken first-match rule shows: for `/aa`, the length-3 table (its first
#: route `/bb` is r0) is probed first and finds r2 (`/aa`); the length-2 table (first route `/b`, r1)
#: is probed next and finds r3 (`/a`), a later route, which must not replace r2.
SMALLEST_OVERLAP = ["/bb", "/b", "/aa", "/a"]


@settings(max_examples=200, deadline=None)
@given(
    routes=st.lists(
        st.tuples(st.sampled_from(["prefix", "path"]), st.text(alphabet="/ab", max_size=4)),
        min_size=1, max_size=12,
    ),
    path=st.text(alphabet="/ab", max_size=6),
)
@example(routes=[("prefix", p) for p in SMALLEST_OVERLAP], path="/aa")
def test_plain_routes_match_like_a_linear_scan(routes, path):
    # Runs of plain routes are matched by dict probes; the result must equal Envoy's in-order scan.
    table = one_vhost(*[to(f"r{i}", {kind: value}) for i, (kind, value) in enumerate(routes)])
    assert name_of(table, path) == linear_scan(routes, path)


#: "/" then one to three of "a"/"b": 14 values, so routes that are prefixes of one another (`/a`, `/aa`,
#: `/aab`) and duplicates are common, and a path is hit by probes of several lengths.
OVERLAPPING = st.text(alphabet="ab", min_size=1, max_size=3).map("/".__add__)


@settings(max_examples=600, deadline=None)
@given(
    # At least 4 routes: a plain block needs 3, the smallest first-match failure 4.
    routes=st.lists(st.tuples(st.sampled_from(["prefix", "path"]), OVERLAPPING), min_size=4, max_size=12),
    path=OVERLAPPING,
)
@example(routes=[("prefix", p) for p in SMALLEST_OVERLAP], path="/aa")
def test_overlapping_prefixes_match_the_first_route_in_config_order(routes, path):
    table = one_vhost(*[to(f"r{i}", {kind: value}) for i, (kind, value) in enumerate(routes)])
    assert name_of(table, path) == linear_scan(routes, path)


def test_first_match_among_overlapping_prefixes_smallest_case():
    # Envoy takes the first route in config order that matches: `/aa` (r2), not the later `/a` (r3),
    # although the length-2 table is probed after the length-3 one and also hits.
    table = one_vhost(*[to(f"r{i}", {"prefix": p}) for i, p in enumerate(SMALLEST_OVERLAP)])
    assert name_of(table, "/aa") == "r2"
    assert name_of(table, "/ab") == "r3"
    assert name_of(table, "/bb") == "r0"
    assert name_of(table, "/ba") == "r1"


def test_plain_block_keeps_the_earliest_route_across_prefix_lengths():
    # "/aa" matches r3 (length 3) and r7 (length 2): the probe of length 2 must not override r3.
    table = one_vhost(*[to(f"r{i}", {"prefix": p}) for i, p in enumerate(
        ["/zz", "/b", "/c", "/aa", "/dd", "/ee", "/ff", "/a"])])
    assert name_of(table, "/aa") == "r3"
    assert name_of(table, "/ab") == "r7"


def test_plain_block_respects_order_around_conditional_routes():
    table = one_vhost(
        to("a", {"prefix": "/a"}), to("b", {"prefix": "/b"}), to("c", {"prefix": "/c"}),
        to("hdr", {"prefix": "/", "headers": [{"name": "x-canary", "present_match": True}]}),
        to("d", {"prefix": "/d"}), to("e", {"path": "/e"}), to("all", {"prefix": ""}),
    )
    assert name_of(table, "/c/1") == "c"
    assert name_of(table, "/d", headers=[(b"x-canary", b"1")]) == "hdr"
    assert name_of(table, "/d") == "d"
    assert name_of(table, "/e") == "e"
    assert name_of(table, "/ee") == "all"


# --------------------------------------------------------------------------- headers


def hdr(**matcher: Any) -> RouteTable:
    return one_vhost(to("hit", {"prefix": "/", "headers": [{"name": "X-Test", **matcher}]}))


@pytest.mark.parametrize("matcher, value, hit", [
    ({"exact_match": "abc"}, b"abc", True),
    ({"exact_match": "abc"}, b"abcd", False),
    ({"exact_match": ""}, b"anything", True),     # Envoy's legacy quirk: empty exact_match matches any value
    ({"prefix_match": "ab"}, b"abc", True),
    ({"prefix_match": "b"}, b"abc", False),
    ({"suffix_match": "bc"}, b"abc", True),
    ({"contains_match": "b"}, b"abc", True),
    ({"contains_match": "z"}, b"abc", False),
    ({"safe_regex_match": {"regex": "a.c"}}, b"abc", True),
    ({"safe_regex_match": {"regex": "a"}}, b"abc", False),   # full match
    ({"present_match": True}, b"", True),
    ({"present_match": False}, b"x", False),
    ({}, b"x", True),                                        # no kind: presence
    ({"string_match": {"exact": "ABC", "ignore_case": True}}, b"abc", True),
    ({"string_match": {"exact": "ABC"}}, b"abc", False),
    ({"string_match": {"exact": ""}}, b"x", False),
    ({"string_match": {"prefix": "AB", "ignore_case": True}}, b"abc", True),
    ({"string_match": {"suffix": "BC", "ignore_case": True}}, b"abc", True),
    ({"string_match": {"contains": "B", "ignore_case": True}}, b"abc", True),
    ({"string_match": {"safe_regex": {"regex": "[a-c]+"}}}, b"abc", True),
    ({"exact_match": "abc", "invert_match": True}, b"abc", False),
    ({"exact_match": "abc", "invert_match": True}, b"xyz", True),
    ({"present_match": True, "invert_match": True}, b"x", False),
])
def test_header_matchers_on_a_present_header(matcher, value, hit):
    assert (name_of(hdr(**matcher), "/", headers=[(b"x-test", value)]) == "hit") is hit


@pytest.mark.parametrize("matcher, hit", [
    ({"exact_match": "abc"}, False),
    ({"present_match": True}, False),
    ({"present_match": False}, True),
    ({"exact_match": "abc", "invert_match": True}, False),   # inverted value matchers still need the header
    ({"present_match": True, "invert_match": True}, True),
    ({"present_match": False, "invert_match": True}, False),
    ({"exact_match": "abc", "treat_missing_header_as_empty": True}, False),
    ({"exact_match": "abc", "treat_missing_header_as_empty": True, "invert_match": True}, True),
    ({"string_match": {"exact": ""}, "treat_missing_header_as_empty": True}, True),
])
def test_header_matchers_on_a_missing_header(matcher, hit):
    assert (name_of(hdr(**matcher), "/", headers=[(b"other", b"1")]) == "hit") is hit


# A header sent several times, as Envoy 1.40 matches it (each case observed with Envoy; the same cases run
# through both proxies in test_proxy_header_matching.py): value by value, `invert_match` negating the whole.
AB = [(b"x-test", b"a"), (b"x-test", b"b")]
ABC = [*AB, (b"x-test", b"c")]
ONE_LINE = [(b"x-test", b"a,b")]


@pytest.mark.parametrize("matcher, headers, hit", [
    ({"string_match": {"exact": "a"}}, AB, True),
    ({"string_match": {"exact": "b"}}, AB, True),
    ({"string_match": {"exact": "a,b"}}, AB, False),          # never the ","-joined form
    ({"string_match": {"exact": "c"}}, ABC, True),
    ({"string_match": {"exact": "a,b,c"}}, ABC, False),
    ({"string_match": {"exact": "a,b"}}, ONE_LINE, True),     # one line with a comma is one value
    ({"string_match": {"exact": "a"}}, ONE_LINE, False),
    ({"string_match": {"exact": "B", "ignore_case": True}}, AB, True),
    ({"string_match": {"prefix": "b"}}, AB, True),
    ({"string_match": {"prefix": "a,"}}, AB, False),
    ({"string_match": {"suffix": "a"}}, AB, True),
    ({"string_match": {"suffix": ",b"}}, AB, False),
    ({"string_match": {"contains": ","}}, AB, False),
    ({"string_match": {"contains": ","}}, ONE_LINE, True),
    ({"string_match": {"safe_regex": {"regex": "b"}}}, AB, True),
    ({"string_match": {"safe_regex": {"regex": ".*,.*"}}}, AB, False),
    ({"present_match": True}, AB, True),
    ({"present_match": False}, AB, False),
    ({}, AB, True),
    ({"string_match": {"exact": "a"}, "invert_match": True}, AB, False),    # one value matches: no inverted match
    ({"string_match": {"exact": "b"}, "invert_match": True}, ABC, False),
    ({"string_match": {"exact": "z"}, "invert_match": True}, AB, True),     # no value matches
    ({"string_match": {"exact": "a,b"}, "invert_match": True}, AB, True),
    ({"string_match": {"exact": "a,b"}, "invert_match": True}, ONE_LINE, False),
    ({"string_match": {"exact": "a"}, "invert_match": True}, [(b"x-test", b"a")] * 2, False),
    ({"present_match": True, "invert_match": True}, AB, False),
    ({"present_match": False, "invert_match": True}, AB, True),
    ({"string_match": {"exact": "a"}, "invert_match": True, "treat_missing_header_as_empty": True}, AB, False),
    ({"string_match": {"exact": ""}}, [(b"x-test", b""), (b"x-test", b"b")], True),
    ({"string_match": {"exact": "a,b"}}, [(b"x-test", b"a,b"), (b"x-test", b"c")], True),
    ({"string_match": {"exact": "b"}}, [(b"x-test", b"a"), (b"other", b"x"), (b"x-test", b"b")], True),
    # the deprecated match kinds, still accepted by Envoy 1.40, behave the same
    ({"exact_match": "a"}, AB, True),
    ({"exact_match": "b"}, AB, True),
    ({"exact_match": "a,b"}, AB, False),
    ({"exact_match": ""}, AB, True),
    ({"prefix_match": "b"}, AB, True),
    ({"suffix_match": "a"}, AB, True),
    ({"contains_match": ","}, AB, False),
    ({"safe_regex_match": {"regex": "b"}}, AB, True),
    ({"safe_regex_match": {"regex": "a,b"}}, AB, False),
])  # fmt: skip
def test_repeated_headers_match_value_by_value(matcher, headers, hit):
    assert (name_of(hdr(**matcher), "/", headers=headers) == "hit") is hit


@pytest.mark.parametrize("name, values, matcher, hit", [
    # Envoy's inline headers: its codec folds the lines into one ","-joined value, and matchers see that
    ("accept", [b"a", b"b"], {"exact": "a,b"}, True),
    ("accept", [b"a", b"b"], {"exact": "a"}, False),
    ("user-agent", [b"a", b"b", b"c"], {"exact": "a,b,c"}, True),
    ("x-forwarded-for", [b"a", b"b"], {"exact": "a,b"}, True),
    ("authorization", [b"a", b"b"], {"exact": "b"}, False),
    ("accept", [b"", b"b"], {"exact": "b"}, True),           # empty values are left out of the join
    ("accept", [b"a", b""], {"exact": "a"}, True),
    ("accept", [b"", b""], {"exact": ""}, True),
    # every other header is matched value by value, cookie and set-cookie included (no "; " join)
    ("cookie", [b"a", b"b"], {"exact": "b"}, True),
    ("cookie", [b"a", b"b"], {"exact": "a; b"}, False),
    ("cookie", [b"a", b"b"], {"exact": "a,b"}, False),
    ("set-cookie", [b"a", b"b"], {"exact": "b"}, True),
    ("forwarded", [b"a", b"b"], {"exact": "a,b"}, False),
    ("accept-language", [b"a", b"b"], {"exact": "b"}, True),
])  # fmt: skip
def test_inline_headers_are_folded_others_matched_by_value(name, values, matcher, hit):
    table = one_vhost(to("hit", {"prefix": "/", "headers": [{"name": name, "string_match": matcher}]}))
    assert (name_of(table, "/", headers=[(name.encode(), v) for v in values]) == "hit") is hit


def test_inverted_inline_header_is_negated_on_the_folded_value():
    table = one_vhost(to("hit", {"prefix": "/", "headers": [
        {"name": "user-agent", "string_match": {"exact": "a"}, "invert_match": True}]}))
    assert name_of(table, "/", headers=[(b"user-agent", b"a"), (b"user-agent", b"b")]) == "hit"  # "a,b" != "a"
    assert name_of(table, "/", headers=[(b"user-agent", b"a")]) is None


def test_several_matchers_on_one_repeated_header_each_look_at_every_value():
    both = one_vhost(to("hit", {"prefix": "/", "headers": [
        {"name": "x-test", "string_match": {"exact": "a"}}, {"name": "x-test", "string_match": {"exact": "b"}}]}))
    assert name_of(both, "/", headers=AB) == "hit"
    assert name_of(both, "/", headers=[(b"x-test", b"a")]) is None
    a_not_b = one_vhost(to("hit", {"prefix": "/", "headers": [
        {"name": "x-test", "string_match": {"exact": "a"}},
        {"name": "x-test", "string_match": {"exact": "b"}, "invert_match": True}]}))
    assert name_of(a_not_b, "/", headers=AB) is None
    assert name_of(a_not_b, "/", headers=[(b"x-test", b"a"), (b"x-test", b"c")]) == "hit"


def test_first_route_whose_matcher_passes_answers_for_a_repeated_header():
    table = one_vhost(
        to("joined", {"prefix": "/", "headers": [{"name": "x-test", "string_match": {"exact": "a,b"}}]}),
        to("value", {"prefix": "/", "headers": [{"name": "x-test", "string_match": {"exact": "b"}}]}),
    )
    assert name_of(table, "/", headers=AB) == "value"
    assert name_of(table, "/", headers=ONE_LINE) == "joined"


def test_host_is_the_authority():
    """Envoy keeps Host as :authority; a `host` matcher reads it (absolute-form: the URI's, not the Host line's)."""
    table = one_vhost(to("hit", {"prefix": "/", "headers": [{"name": "host", "string_match": {"exact": "x"}}]}))
    assert name_of(table, "/", authority="x", headers=[(b"host", b"other")]) == "hit"
    assert name_of(table, "/", authority="other", headers=[(b"host", b"x")]) is None


def test_a_header_sent_once_is_matched_without_allocating():
    """The common case costs one scan of the header list and one test per value, like a bare scan."""
    items = [(b"host", b"h"), (b"accept", b"*/*"), (b"x-test", b"abc"), (b"user-agent", b"ua")]
    configs = [{"name": name, "string_match": {"exact": "abc"}} for name in ("x-test", "accept", "x-missing")]
    engine = regex.get_engine()
    matchers = [_HeaderMatcher(msgspec.convert(c, HeaderMatcher, dec_hook=dec_hook), engine) for c in configs]
    def allocated(functions: list[Any]) -> tuple[int, int]:
        """(bytes still held, peak bytes) above the start while each of `functions` is called on `items`."""
        for f in functions[:10]:
            f(items)  # warm up
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            for f in functions:
                f(items)
            current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return current - before, peak - before

    def scan(headers: list[tuple[bytes, bytes]]) -> None:
        """The floor: one pass over the list (its iterator is the one object a pass makes)."""
        for name, _ in headers:
            if name == b"x-test":
                pass

    # No more than a bare scan: no list of values, no joined bytes, nothing kept (compiled, pylon.compiled, the
    # matcher's own pass allocates less than the interpreted scan's iterator). tracemalloc counts every thread's
    # allocations, and daemon threads of earlier tests (servers, exporters) may allocate during one measurement:
    # twenty short tries, of which one must match exactly (a matcher that allocates never does; five were not
    # enough once the suite's gRPC servers added threads).
    tries = [(allocated([hm.matches_headers for hm in matchers] * 1000), allocated([scan] * 3000)) for _ in range(20)]
    assert any(ours[0] == floor[0] == 0 and ours[1] <= floor[1] for ours, floor in tries), tries


def test_all_header_matchers_must_match():
    table = one_vhost(to("both", {"prefix": "/", "headers": [
        {"name": "a", "exact_match": "1"}, {"name": "b", "exact_match": "2"}]}))
    assert name_of(table, "/", headers=[(b"a", b"1"), (b"b", b"2")]) == "both"
    assert name_of(table, "/", headers=[(b"a", b"1")]) is None


def test_pseudo_headers_read_request_values():
    table = one_vhost(
        to("post", {"prefix": "/", "headers": [{"name": ":method", "exact_match": "POST"}]}),
        to("https", {"prefix": "/", "headers": [{"name": ":scheme", "exact_match": "https"}]}),
        to("host", {"prefix": "/", "headers": [{"name": ":authority", "suffix_match": ".internal"}]}),
        to("path", {"prefix": "/", "headers": [{"name": ":path", "contains_match": "debug=1"}]}),
    )
    assert name_of(table, "/", method="POST") == "post"
    assert name_of(table, "/", method="GET", scheme="https") == "https"
    assert name_of(table, "/", authority="svc.internal") == "host"
    assert name_of(table, "/x?debug=1") == "path"
    assert name_of(table, "/") is None


def test_unsupported_pseudo_header_is_a_build_error():
    with pytest.raises(ValueError, match="pseudo-header ':protocol'"):
        hdr(name=":protocol")


# --------------------------------------------------------------------------- query parameters


def qp(*matchers: dict[str, Any]) -> RouteTable:
    return one_vhost(to("hit", {"prefix": "/", "query_parameters": list(matchers)}))


@pytest.mark.parametrize("matcher, path, hit", [
    ({"name": "v", "string_match": {"exact": "2"}}, "/x?a=1&v=2", True),
    ({"name": "v", "string_match": {"exact": "2"}}, "/x?v=3&v=2", False),        # first value only
    ({"name": "v", "string_match": {"exact": "2"}}, "/x", False),
    ({"name": "v", "string_match": {"prefix": "A", "ignore_case": True}}, "/x?v=abc", True),
    ({"name": "v", "string_match": {"exact": "a b"}}, "/x?v=a%20b", False),      # raw, as Envoy matches
    ({"name": "v", "string_match": {"exact": "a%20b"}}, "/x?v=a%20b", True),
    ({"name": "v", "string_match": {"safe_regex": {"regex": r"\d+"}}}, "/x?v=42", True),
    ({"name": "v", "present_match": True}, "/x?v", True),
    ({"name": "v", "present_match": True}, "/x?w=1", False),
    ({"name": "v", "present_match": False}, "/x?w=1", True),
    ({"name": "v", "present_match": False}, "/x?v=1", False),
    ({"name": "v"}, "/x?v=", True),
    ({"name": "v"}, "/x", False),
    # a repeated parameter: its first value only, never "1,2" (Envoy 1.40)
    ({"name": "v", "string_match": {"exact": "1"}}, "/x?v=1&v=2", True),
    ({"name": "v", "string_match": {"exact": "2"}}, "/x?v=1&v=2", False),
    ({"name": "v", "string_match": {"exact": "2"}}, "/x?v=2&v=1", True),
    ({"name": "v", "string_match": {"exact": "1,2"}}, "/x?v=1&v=2", False),
    ({"name": "v", "string_match": {"exact": "1,2"}}, "/x?v=1,2", True),
    ({"name": "v", "string_match": {"exact": ""}}, "/x?v=&v=2", True),
    ({"name": "v", "present_match": True}, "/x?v=1&v=2", True),
])
def test_query_parameter_matchers(matcher, path, hit):
    assert (name_of(qp(matcher), path) == "hit") is hit


# --------------------------------------------------------------------------- rewrites


def test_prefix_rewrite_keeps_query():
    table = one_vhost(
        to("ci", {"prefix": "/OLD/", "case_sensitive": False}, prefix_rewrite="/new/"),
        to("exact", {"path": "/p"}, prefix_rewrite="/q"),
        to("plain", {"prefix": "/"}),
    )
    route = route_of(table, "/old/a?x=1")
    assert route.rewrites and route.rewrite_path("/old/a?x=1") == "/new/a?x=1"
    assert route_of(table, "/p?z").rewrite_path("/p?z") == "/q?z"
    plain = route_of(table, "/zzz")
    assert not plain.rewrites and plain.rewrite_path("/zzz?q") == "/zzz?q"


def test_regex_rewrite_with_groups_keeps_query():
    table = one_vhost(to("r", {"prefix": "/service/"}, regex_rewrite={
        "pattern": {"regex": "^/service/([^/]+)(/.*)$"}, "substitution": r"\2/instance/\1"}))
    route = route_of(table, "/service/foo/v1/api?x=1")
    assert route.rewrite_path("/service/foo/v1/api?x=1") == "/v1/api/instance/foo?x=1"


def test_regex_rewrite_to_empty_leaves_path_alone():
    table = one_vhost(to("r", regex_rewrite={"pattern": {"regex": ".*"}, "substitution": ""}))
    assert route_of(table, "/a?b").rewrite_path("/a?b") == "/a?b"


def test_bad_rewrite_substitution_is_a_build_error_naming_the_route():
    with pytest.raises(ValueError, match=r"virtual_hosts\[0\] \(vh\): routes\[0\] \(r\): .*group"):
        one_vhost(to("r", regex_rewrite={"pattern": {"regex": "^/(a)$"}, "substitution": r"\3"}))


def test_host_rewrite_and_hash_header():
    table = one_vhost(to("r", host_rewrite_literal="upstream.local",
                         hash_policy=[{"header": {"header_name": "X-User"}}]))
    route = route_of(table, "/")
    assert route.host_rewrite == b"upstream.local"
    assert route.hash_policies == (HashSource("header", b"x-user", False),)


def test_regex_over_envoys_program_size_limit_is_a_build_error():
    with pytest.raises(ValueError, match="program size"):
        one_vhost(to("r", {"safe_regex": {"regex": "a{500}"}}))


# --------------------------------------------------------------------------- redirects


def redirect(match: dict[str, Any] | None = None, **action: Any) -> MatchedRoute:
    table = one_vhost({"name": "rd", "match": match or {"prefix": "/"}, "redirect": action})
    route = route_of(table, "/old/anything")
    assert route is not None and route.kind == "redirect"
    return route


@pytest.mark.parametrize("action, scheme, authority, path, location", [
    ({"https_redirect": True}, "http", "a.com", "/p?q=1", "https://a.com/p?q=1"),
    ({"https_redirect": True}, "http", "a.com:80", "/p", "https://a.com/p"),           # old default port dropped
    ({"https_redirect": True}, "http", "a.com:8080", "/p", "https://a.com:8080/p"),    # other ports kept
    ({"scheme_redirect": "http"}, "https", "a.com:443", "/p", "http://a.com/p"),
    ({"host_redirect": "b.com"}, "http", "a.com:8080", "/p", "http://b.com/p"),        # host swaps host and port
    ({"port_redirect": 8443}, "http", "a.com:8080", "/p", "http://a.com:8443/p"),
    ({"host_redirect": "b.com", "port_redirect": 9}, "http", "a.com", "/p", "http://b.com:9/p"),
    ({"https_redirect": True, "port_redirect": 443}, "http", "[::1]:80", "/p", "https://[::1]:443/p"),
    ({"path_redirect": "/new"}, "http", "a.com", "/old?q=1", "http://a.com/new?q=1"),
    ({"path_redirect": "/new?z=9"}, "http", "a.com", "/old?q=1", "http://a.com/new?z=9"),
    ({"path_redirect": "/new", "strip_query": True}, "http", "a.com", "/old?q=1", "http://a.com/new"),
    ({"path_redirect": "/new?z=9", "strip_query": True}, "http", "a.com", "/old?q", "http://a.com/new?z=9"),
    ({"strip_query": True}, "http", "a.com", "/old?q=1", "http://a.com/old"),
    ({"path_redirect": "new"}, "http", "a.com", "/old", "http://a.com/new"),
])
def test_redirect_location(action, scheme, authority, path, location):
    assert redirect(**action).redirect_location(scheme, authority, path) == location


def test_redirect_prefix_rewrite_replaces_the_matched_prefix():
    route = redirect({"prefix": "/old/"}, prefix_rewrite="/new/")
    assert route.redirect_location("http", "a.com", "/old/x?q=1") == "http://a.com/new/x?q=1"


@pytest.mark.parametrize("code, status", [
    ("MOVED_PERMANENTLY", 301), ("FOUND", 302), ("SEE_OTHER", 303),
    ("TEMPORARY_REDIRECT", 307), ("PERMANENT_REDIRECT", 308),
])
def test_redirect_response_codes(code, status):
    assert redirect(https_redirect=True, response_code=code).redirect_status == status


def test_redirect_default_code_is_301():
    assert redirect(https_redirect=True).redirect_status == 301


def test_redirect_location_on_a_non_redirect_route_is_an_error():
    with pytest.raises(ValueError, match="not a redirect"):
        route_of(one_vhost(to("c")), "/").redirect_location("http", "a", "/")


# --------------------------------------------------------------------------- direct responses


def test_direct_response_inline_and_file(tmp_path):
    body_file = tmp_path / "body.txt"
    body_file.write_bytes(b"from file")
    table = one_vhost(
        {"name": "inline", "match": {"path": "/i"}, "direct_response": {"status": 503, "body": {"inline_string": "down"}}},
        {"name": "file", "match": {"path": "/f"}, "direct_response": {"status": 200, "body": {"filename": str(body_file)}}},
        {"name": "empty", "match": {"path": "/e"}, "direct_response": {"status": 204}},
    )
    inline = route_of(table, "/i")
    assert (inline.kind, inline.direct_status, inline.direct_body) == ("direct_response", 503, b"down")
    assert route_of(table, "/f").direct_body == b"from file"
    assert route_of(table, "/e").direct_body == b""


def test_direct_response_limits_are_envoys():
    with pytest.raises(ValueError, match="maximum is 4096"):
        one_vhost({"name": "big", "match": {"prefix": "/"},
                   "direct_response": {"status": 200, "body": {"inline_string": "x" * 4097}}})
    with pytest.raises(ValueError, match=">= 200"):  # the config model's bound, as Envoy's proto
        one_vhost({"name": "info", "match": {"prefix": "/"}, "direct_response": {"status": 101}})


# --------------------------------------------------------------------------- clusters, timeouts, retries


def test_weighted_clusters_follow_weights():
    table = build([{"name": "vh", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {
        "weighted_clusters": {"clusters": [
            {"name": "a", "weight": 70}, {"name": "b", "weight": 20}, {"name": "off", "weight": 0},
            {"name": "c", "weight": 10}]}}}]}], rng=random.Random(1234))
    route = route_of(table, "/")
    picks = Counter(route.pick_cluster() for _ in range(10_000))
    assert set(picks) == {"a", "b", "c"}
    assert abs(picks["a"] / 10_000 - 0.70) < 0.02
    assert abs(picks["b"] / 10_000 - 0.20) < 0.02
    assert abs(picks["c"] / 10_000 - 0.10) < 0.015


def test_weighted_cluster_header_rules_apply_first():
    table = build([{"name": "vh", "domains": ["*"], "routes": [{"match": {"prefix": "/"},
        "request_headers_to_add": [{"header": {"key": "x-level", "value": "route"}, "append_action": "ADD_IF_ABSENT"}],
        "route": {"weighted_clusters": {"clusters": [
            {"name": "a", "weight": 1, "request_headers_to_add": [{"header": {"key": "x-level", "value": "cluster"}}]},
            {"name": "b", "weight": 1}]}}}]}])
    route = route_of(table, "/")
    request_a, _ = route.header_ops_for("a")
    h = HeaderList()
    request_a.apply(h)
    assert h.get_all(b"x-level") == [b"cluster"]
    assert route.header_ops_for("b") == (route.request_header_ops, route.response_header_ops)
    h = HeaderList()
    route.request_header_ops.apply(h)
    assert h.get_all(b"x-level") == [b"route"]


def test_a_weighted_clusters_per_filter_config_is_the_most_specific_level():
    buffer = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute"

    def limit(n: int) -> dict[str, Any]:
        return {"envoy.filters.http.buffer": {"@type": buffer, "buffer": {"max_request_bytes": n}}}

    table = build([{"name": "vh", "domains": ["*"], "typed_per_filter_config": limit(1), "routes": [
        {"match": {"prefix": "/"}, "typed_per_filter_config": limit(2), "route": {"weighted_clusters": {"clusters": [
            {"name": "a", "weight": 1, "typed_per_filter_config": limit(3)}, {"name": "b", "weight": 1}]}}}]}],
        rng=random.Random(7))
    route = route_of(table, "/")
    seen = {}
    for _ in range(50):
        variant = route.variant_for(None)
        cluster = variant.pick_cluster()
        assert all(variant.pick_cluster() == cluster for _ in range(5))  # the pick sticks to the variant
        seen[cluster] = [c.buffer.max_request_bytes for c in variant.filter_configs_of("envoy.filters.http.buffer")]
        assert variant.filter_config("envoy.filters.http.buffer").buffer.max_request_bytes == seen[cluster][0]
    assert seen == {"a": [3, 2, 1], "b": [2, 1]}
    plain = route_of(build([{"name": "vh", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {
        "weighted_clusters": {"clusters": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}}}]}]), "/")
    assert plain.cluster_variants == {}  # no per-filter config on any cluster: picked after the filters, as before


def test_plain_cluster_and_timeouts():
    table = one_vhost(
        to("default", {"path": "/d"}),
        to("off", {"path": "/off"}, timeout="0s"),
        to("custom", {"path": "/c"}, timeout="2.5s", idle_timeout="30s"),
    )
    default = route_of(table, "/d")
    assert (default.kind, default.pick_cluster(), default.timeout, default.idle_timeout) == ("cluster", "default", 15.0, None)
    assert default.expected_timeout_header == b"x-envoy-expected-rq-timeout-ms: 15000\r\n"
    off = route_of(table, "/off")
    assert off.timeout is None and off.expected_timeout_header is None
    custom = route_of(table, "/c")
    assert (custom.timeout, custom.idle_timeout) == (2.5, 30.0)


def test_expected_timeout_is_the_tighter_of_route_and_per_try():
    table = one_vhost(
        to("tight", {"path": "/t"}, timeout="2s", retry_policy={"retry_on": "5xx", "per_try_timeout": "0.5s"}),
        to("loose", {"path": "/l"}, timeout="2s", retry_policy={"retry_on": "5xx", "per_try_timeout": "5s"}),
        to("no-route-timeout", {"path": "/n"}, timeout="0s", retry_policy={"retry_on": "5xx", "per_try_timeout": "1s"}),
    )
    assert route_of(table, "/t").expected_timeout_header == b"x-envoy-expected-rq-timeout-ms: 500\r\n"
    assert route_of(table, "/l").expected_timeout_header == b"x-envoy-expected-rq-timeout-ms: 2000\r\n"
    assert route_of(table, "/n").expected_timeout_header == b"x-envoy-expected-rq-timeout-ms: 1000\r\n"


def test_route_retry_policy_overrides_the_virtual_hosts():
    table = one_vhost(
        to("own", {"path": "/own"}, retry_policy={"retry_on": "gateway-error", "num_retries": 3,
                                                  "per_try_timeout": "1s"}),
        to("inherited", {"path": "/inh"}),
        retry_policy={"retry_on": "5xx,retriable-status-codes", "retriable_status_codes": [429],
                      "retry_back_off": {"base_interval": "0.1s"}},
    )
    own = route_of(table, "/own").retry
    assert (own.num_retries, own.per_try_timeout, own.base_interval, own.max_interval) == (3, 1.0, 0.025, 0.25)
    assert own.on_gateway_error and not own.on_5xx and own.on_reset and own.on_connect_failure
    assert own.on_5xx_or_gateway
    assert [own.should_retry_status(s) for s in (500, 502, 503, 504, 429)] == [False, True, True, True, False]
    inherited = route_of(table, "/inh").retry
    assert inherited.num_retries == 1 and inherited.base_interval == 0.1 and inherited.max_interval == 1.0
    assert inherited.retriable_status_codes == frozenset({429})
    assert [inherited.should_retry_status(s) for s in (500, 599, 429, 404)] == [True, True, True, False]


@pytest.mark.parametrize("retry_on, status, retried", [
    ("retriable-4xx", 409, True),
    ("retriable-4xx", 500, False),
    ("connect-failure", 503, False),
    ("reset", 503, False),
])
def test_retry_conditions(retry_on, status, retried):
    rule = route_of(one_vhost(to("r", retry_policy={"retry_on": retry_on})), "/").retry
    assert rule.should_retry_status(status) is retried


def test_status_codes_need_their_retry_on_condition():
    rule = route_of(one_vhost(to("r", retry_policy={"retry_on": "5xx", "retriable_status_codes": [429]})), "/").retry
    assert not rule.should_retry_status(429)
    assert rule.retry_on == frozenset({"5xx"})


def test_connect_failure_alone_does_not_retry_resets():
    rule = route_of(one_vhost(to("r", retry_policy={"retry_on": "connect-failure"})), "/").retry
    assert rule.on_connect_failure and not rule.on_reset and not rule.on_5xx_or_gateway


def test_no_retry_policy_anywhere():
    assert route_of(one_vhost(to("r")), "/").retry is None


# --------------------------------------------------------------------------- header rules by level


def level(key: str, value: str, action: str = "OVERWRITE_IF_EXISTS_OR_ADD") -> list[dict[str, Any]]:
    return [{"header": {"key": key, "value": value}, "append_action": action}]


def test_header_rules_run_route_then_vhost_then_config():
    table = build(
        [{"name": "vh", "domains": ["*"],
          "request_headers_to_add": level("x-a", "vhost") + level("x-b", "vhost"),
          "response_headers_to_add": level("x-r", "vhost"),
          "response_headers_to_remove": ["x-secret"],
          "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"},
                      "request_headers_to_add": level("x-a", "route") + level("x-c", "route"),
                      "request_headers_to_remove": ["x-drop"],
                      "response_headers_to_add": level("x-r", "route", "ADD_IF_ABSENT")}]}],
        request_headers_to_add=level("x-b", "config"),
        response_headers_to_add=level("x-r", "config", "ADD_IF_ABSENT"),
    )
    route = route_of(table, "/")
    request = HeaderList([(b"x-drop", b"1"), (b"x-keep", b"1")])
    route.request_header_ops.apply(request)
    assert sorted(request) == [(b"x-a", b"vhost"), (b"x-b", b"config"), (b"x-c", b"route"), (b"x-keep", b"1")]
    response = HeaderList([(b"x-secret", b"s")])
    route.response_header_ops.apply(response)
    assert list(response) == [(b"x-r", b"vhost")]


def test_bad_header_value_is_a_build_error():
    with pytest.raises(ValueError, match="%NO_SUCH_OPERATOR%"):
        one_vhost({"name": "r", "match": {"prefix": "/"}, "route": {"cluster": "c"},
                   "request_headers_to_add": level("x", "%NO_SUCH_OPERATOR%")})
    with pytest.raises(ValueError, match="metadata specification"):
        one_vhost({"name": "r", "match": {"prefix": "/"}, "route": {"cluster": "c"},
                   "response_headers_to_add": level("x", "%DYNAMIC_METADATA(a::b)%")})


# --------------------------------------------------------------------------- regex engines and one-scan matching

ENGINES = [regex.DEFAULT_ENGINE, regex.HYPERSCAN_ENGINE, regex.PYTHON_RE_ENGINE]
REGEXES = [r"/api/v[0-9]+/.*", r"/api/.*", r"/users/\d+", r"/users/[^/]+", r"/é/.*", r"/a$", r"/a\n?",
           r"/x(?U)y+", r"(?i)/K.*", r"/", r".*", r"/static/.*\.(css|js)", r"/[a-z]+", ""]
PREFIXES = ["/", "/api", "/api/", "/users/", "/é"]
route_specs = st.tuples(
    st.sampled_from(["regex", "regex", "regex", "prefix", "path"]),
    st.integers(0, 100),
    st.booleans(),  # with a header condition
)
request_paths = st.lists(st.sampled_from(
    ["/", "/api", "/api/", "/api/v2/x", "/users/", "/users/42", "/users/bob", "/é/ü", "/a", "/a\n", "/xyy",
     "/K", "/\u212a", "/static/s.css", "/static/s.css\n", "", "?q=1", "/abc", "/x/日本"]), min_size=1, max_size=2
).map("".join).flatmap(lambda p: st.sampled_from([p, p + "?a=1&b=/api", p + "#frag"]))


def _reference_match(specs: list[tuple[str, int, bool]], path: str, header: bool) -> int | None:
    """Straightforward first match: route by route, RE2's public full match, path without query."""
    p = path.split("?", 1)[0].split("#", 1)[0]
    for i, (kind, value, needs_header) in enumerate(specs):
        if kind == "regex":
            hit = re2.fullmatch(REGEXES[value % len(REGEXES)], p) is not None
        elif kind == "prefix":
            hit = p.startswith(PREFIXES[value % len(PREFIXES)])
        else:
            hit = p == PREFIXES[value % len(PREFIXES)]
        if hit and (header or not needs_header):
            return i
    return None


def _route_dicts(specs: list[tuple[str, int, bool]]) -> list[dict[str, Any]]:
    routes = []
    for i, (kind, value, needs_header) in enumerate(specs):
        if kind == "regex":
            match: dict[str, Any] = {"safe_regex": {"regex": REGEXES[value % len(REGEXES)]}}
        else:
            match = {kind: PREFIXES[value % len(PREFIXES)]}
        if needs_header:
            match["headers"] = [{"name": "x-pick", "present_match": True}]
        routes.append({"name": str(i), "match": match, "direct_response": {"status": 200}})
    return routes


@pytest.fixture
def private_hyperscan_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYLON_HYPERSCAN_CACHE", str(tmp_path / "hs"))
    monkeypatch.setattr(hyperscan_engine, "SETTLE_S", 0.0)  # background builds start at once here


@pytest.mark.usefixtures("private_hyperscan_cache")
@pytest.mark.parametrize("engine_name", ENGINES)
@settings(max_examples=120, deadline=None)
@given(specs=st.lists(route_specs, min_size=1, max_size=12), paths=st.lists(request_paths, min_size=1, max_size=5),
       header=st.booleans())
def test_every_engine_picks_the_route_a_linear_re2_scan_picks(engine_name, specs, paths, header):
    config = msgspec.convert({"virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": _route_dicts(specs)}]},
                             RouteConfiguration, dec_hook=dec_hook)
    table = RouteTable(config, regex.get_engine(engine_name))
    headers = [(b"x-pick", b"1")] if header else []
    regex_set = table._default.regex_set
    for built in (False, True):  # Hyperscan: RE2::Set stands in until the build thread installs the database
        if built and hasattr(regex_set, "wait"):
            assert regex_set.wait(30)
        for path in paths:
            want = _reference_match(specs, path, header)
            got = route_of(table, path, headers)
            assert (None if got is None else int(got.name)) == want, (path, specs, built)


def test_regex_routes_are_one_set_per_virtual_host_scanned_once(monkeypatch):
    table = one_vhost(to("p", {"prefix": "/p"}), to("a", {"safe_regex": {"regex": "/a/.*"}}),
                      to("q", {"path": "/q"}), to("b", {"safe_regex": {"regex": "/b/.*"}}),
                      to("c", {"safe_regex": {"regex": ".*"}}))
    vhost = table._default
    scans: list[str] = []
    real = vhost.regex_set.matches
    monkeypatch.setattr(vhost, "regex_set", type("Spy", (), {"matches": lambda self, s: scans.append(s) or real(s)})())
    assert [name_of(table, p) for p in ("/b/1", "/p", "/q", "/zzz")] == ["b", "p", "q", "c"]
    assert scans == ["/b/1", "/q", "/zzz"]  # one scan each, none for "/p": its prefix route comes first


def test_later_candidate_wins_when_the_first_fails_its_header_condition():
    table = one_vhost(
        to("needs-header", {"safe_regex": {"regex": "/u/.*"}, "headers": [{"name": "x-a", "exact_match": "1"}]}),
        to("plain", {"prefix": "/v"}),
        to("fallback", {"safe_regex": {"regex": "/u/[0-9]+"}}),
    )
    assert name_of(table, "/u/7") == "fallback"
    assert route_of(table, "/u/7", [(b"x-a", b"1")]).name == "needs-header"


@pytest.mark.usefixtures("private_hyperscan_cache")
def test_hyperscan_table_keeps_route_order_before_and_after_its_database_swaps_in():
    routes = [
        to("p", {"prefix": "/p"}),
        to("needs-header", {"safe_regex": {"regex": "/u/.*"}, "headers": [{"name": "x-a", "exact_match": "1"}]}),
        to("plain", {"prefix": "/v"}),
        *(to(f"svc{i}", {"safe_regex": {"regex": f"/svc{i}/[0-9]+"}}) for i in range(30)),
        to("fallback", {"safe_regex": {"regex": "/u/[0-9]+"}}),
        to("lazy", {"safe_regex": {"regex": "/u/(?U)[0-9]+"}}),  # Hyperscan cannot take it: RE2 serves it
        to("catch-all", {"safe_regex": {"regex": "/.*"}}),
    ]
    config = msgspec.convert({"virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": routes}]},
                             RouteConfiguration, dec_hook=dec_hook)
    probes = {"/u/7": "fallback", "/u/x": "catch-all", "/svc29/1": "svc29", "/svc3/1": "svc3", "/p/u/7": "p",
              "/v": "plain", "/svc3/x": "catch-all"}

    def check(table: RouteTable) -> None:
        assert {path: name_of(table, path) for path in probes} == probes
        assert route_of(table, "/u/7", [(b"x-a", b"1")]).name == "needs-header"

    with hs_cache.compile_lock(hs_cache.cache_dir()):  # the build thread waits: the stand-in serves
        table = RouteTable(config, regex.get_engine(regex.HYPERSCAN_ENGINE))
        regex_set = table._default.regex_set
        assert not regex_set.ready
        check(table)
    assert regex_set.wait(30)
    check(table)
    assert [i for i, _ in regex_set.fallbacks] == [32]  # "lazy": regex route 32 of the set


def test_validating_a_route_table_compiles_no_database(tmp_path, monkeypatch):
    """The supervisor checks an update and drops the table: its build thread must not compile it."""
    monkeypatch.setenv("PYLON_HYPERSCAN_CACHE", str(tmp_path / "hs"))
    monkeypatch.setattr(hyperscan_engine, "SETTLE_S", 0.0)
    config = msgspec.convert({"virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": [
        to("a", {"safe_regex": {"regex": "/validated/[0-9]+"}})]}]}, RouteConfiguration, dec_hook=dec_hook)
    regex.set_default_engine(regex.HYPERSCAN_ENGINE)
    try:
        with hs_cache.compile_lock(tmp_path / "hs"):  # hold builds until the table is gone
            validate_route_config(config, "rds.yaml", "resources[0]")
            kept = regex.get_engine().compile_set(["/kept/[0-9]+"], ["k"], background=True)
    finally:
        regex.set_default_engine(None)
    assert kept.wait(30)  # built after the validation's job was looked at
    assert len(list((tmp_path / "hs").glob("*.hsdb"))) == 1


def test_invalid_regex_is_a_config_error_naming_the_field():
    data = {"static_resources": {"listeners": [http_listener("l", 1, [
        {"match": {"prefix": "/"}, "direct_response": {"status": 200}},
        {"match": {"safe_regex": {"regex": "(a"}}, "direct_response": {"status": 200}}])]}}
    with pytest.raises(ConfigError) as info:
        parse_bootstrap(data, "cfg.yaml")
    assert "routes[1].match.safe_regex.regex" in str(info.value) and "missing )" in str(info.value)


def test_program_size_error_names_virtual_host_and_route_with_any_engine():
    for name in ENGINES:
        config = msgspec.convert({"virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": [
            to("ok"), to("big", {"safe_regex": {"regex": "a{500}"}})]}]}, RouteConfiguration, dec_hook=dec_hook)
        with pytest.raises(ValueError, match=r"^virtual_hosts\[0\] \(vh\): routes\[1\] \(big\): regex .*program size"):
            RouteTable(config, regex.get_engine(name))


HYPERSCAN_TYPE = "type.googleapis.com/envoy.extensions.regex_engines.hyperscan.v3alpha.Hyperscan"


def test_bootstrap_default_regex_engine_selects_the_process_engine():
    def configure(data):
        configure_regex_engine(parse_bootstrap(data, "cfg.yaml"), "cfg.yaml")
        return regex.get_engine().name

    try:
        assert configure({"default_regex_engine": {"name": "envoy.regex_engines.hyperscan",
                                                   "typed_config": {"@type": HYPERSCAN_TYPE}}}) == regex.HYPERSCAN_ENGINE
        assert configure({"default_regex_engine": {"name": "re", "typed_config": {
            "@type": "type.googleapis.com/pylon.extensions.regex_engines.v1.PythonRe"}}}) == regex.PYTHON_RE_ENGINE
        assert configure({}) == regex.DEFAULT_ENGINE
    finally:
        regex.set_default_engine(None)


def test_parsing_a_bootstrap_does_not_change_the_process_engine():
    parse_bootstrap({"default_regex_engine": {"name": "envoy.regex_engines.hyperscan",
                                              "typed_config": {"@type": HYPERSCAN_TYPE}}}, "cfg.yaml")
    assert regex.get_engine().name == regex.DEFAULT_ENGINE


def test_unknown_regex_engine_type_is_a_config_error_at_its_path():
    with pytest.raises(ConfigError) as info:
        parse_bootstrap({"default_regex_engine": {"name": "x", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.matching.input_matchers.hyperscan.v3alpha.Hyperscan"}}},
            "cfg.yaml")
    text = str(info.value)
    assert "default_regex_engine.typed_config.@type" in text
    assert "regex_engines.hyperscan.v3alpha.Hyperscan" in text  # the accepted engines are listed


def test_proxy_serves_regex_routes_with_hyperscan(launcher, tmp_path):
    port, admin_port = free_port(), free_port()
    routes = [{"name": f"r{i}", "match": {"safe_regex": {"regex": f"/svc{i}/[0-9]+"}},
               "direct_response": {"status": 200, "body": {"inline_string": f"route {i}"}}} for i in range(20)]
    routes.insert(3, {"name": "lazy", "match": {"safe_regex": {"regex": "/lazy(?U)a+"}},
                      "direct_response": {"status": 200, "body": {"inline_string": "fallback"}}})
    config = tmp_path / "hs.yaml"
    config.write_text(yaml.safe_dump({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "default_regex_engine": {"name": "envoy.regex_engines.hyperscan", "typed_config": {"@type": HYPERSCAN_TYPE}},
        "static_resources": {"listeners": [http_listener("main", port, routes)], "clusters": []},
    }))
    env = {**os.environ, "PYLON_HYPERSCAN_CACHE": str(tmp_path / "hs")}
    proc = launcher.spawn(proxy_args(config, 2, 1.0, "-l", "info"), env=env)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{admin_port}/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "proxy did not start"
        time.sleep(0.05)

    def answers() -> list[tuple[int, str]]:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            return [(r.status_code, r.text) for r in (client.get(p) for p in ("/svc19/42?x=1", "/svc0/7", "/lazyaaa",
                                                                                "/svc0/x"))]

    expected = [(200, "route 19"), (200, "route 0"), (200, "fallback"), (404, "")]
    assert answers() == expected  # served at once: RE2::Set stands in until the database is built
    while not list((tmp_path / "hs").glob("*.hsdb")):  # a worker's build thread compiles it
        assert time.monotonic() < deadline + 30, "no Hyperscan database was built"
        time.sleep(0.05)
    assert answers() == expected
    assert len(list((tmp_path / "hs").glob("*.hsdb"))) == 1  # compiled once (under the lock), loaded by the other
    launcher.close()
    output = proc.stdout.read().decode(errors="replace")
    assert output.count("'/lazy(?U)a+' served by RE2") == 1, output  # only the process that compiled it
    assert "regex routes with envoy.regex_engines.hyperscan" in output


# --------------------------------------------------------------------------- match.grpc, mirrors, upgrades


GRPC = "application/grpc"


@pytest.mark.parametrize(("method", "content_types", "matches"), [
    ("POST", [GRPC], True),
    ("POST", ["application/grpc+proto"], True),
    ("POST", ["application/grpc;charset=utf-8"], False),
    ("POST", ["application/grpc-web"], False),
    ("POST", ["application/grpcx"], False),
    ("POST", ["Application/grpc"], False),
    ("POST", ["text/plain"], False),
    ("POST", [], False),
    ("GET", [GRPC], True),  # Envoy 1.40 does not look at the method
    ("PUT", [GRPC], True),
    ("POST", ["", GRPC], True),  # an inline header: empty lines are skipped when Envoy folds them
    ("POST", [GRPC, "text/plain"], False),  # folded: "application/grpc,text/plain"
])
def test_match_grpc_takes_only_grpc_requests(method: str, content_types: list[str], matches: bool):
    table = one_vhost(to("grpc", {"prefix": "/", "grpc": {}}), to("other"))
    headers = [(b"content-type", value.encode()) for value in content_types]
    assert name_of(table, "/svc/Method", headers=headers, method=method) == ("grpc" if matches else "other")


def test_match_grpc_goes_with_the_route_s_other_conditions():
    table = one_vhost(to("grpc", {"prefix": "/a", "grpc": {}, "headers": [{"name": "x", "exact_match": "1"}]}))
    grpc = [(b"content-type", GRPC.encode())]
    assert name_of(table, "/a", headers=[*grpc, (b"x", b"1")], method="POST") == "grpc"
    assert name_of(table, "/a", headers=grpc, method="POST") is None
    assert name_of(table, "/b", headers=[*grpc, (b"x", b"1")], method="POST") is None


def test_mirror_policies_are_compiled_in_order():
    table = one_vhost(to("main", request_mirror_policies=[
        {"cluster": "shadow"},
        {"cluster_header": "X-Mirror", "runtime_fraction": {"default_value": {"numerator": 25}},
         "trace_sampled": False, "disable_shadow_host_suffix_append": True}]))
    fixed, by_header = route_of(table, "/").mirrors
    assert (fixed.cluster_for([]), fixed.fraction, fixed.trace_sampled) == ("shadow", 1.0, None)
    assert fixed.suffix_host
    assert by_header.cluster_for([(b"x-mirror", b"other")]) == "other"
    assert by_header.cluster_for([]) == ""
    assert (by_header.fraction, by_header.trace_sampled, by_header.suffix_host) == (0.25, False, False)
    assert route_of(one_vhost(to("plain")), "/").mirrors == ()


@pytest.mark.parametrize(("policy", "message"), [
    ({}, "exactly one of cluster or cluster_header in request mirror policy need to be specified"),
    ({"cluster": "a", "cluster_header": "b"},
     "only one of cluster or cluster_header in request mirror policy can be specified"),
    ({"cluster": "a", "host_rewrite_literal": "h"}, "not supported yet"),
    ({"cluster": "a", "request_headers_mutations": []}, "not supported yet"),
])
def test_mirror_policy_errors(policy: dict[str, Any], message: str):
    with pytest.raises(msgspec.ValidationError, match=message):
        one_vhost(to("main", request_mirror_policies=[policy]))


def test_route_upgrade_configs_first_entry_of_a_type_wins():
    table = one_vhost(to("ws", upgrade_configs=[{"upgrade_type": "WebSocket"}, {"upgrade_type": "websocket",
                                                                              "enabled": False},
                                                {"upgrade_type": "h2c", "enabled": False}]))
    assert route_of(table, "/").upgrades == {b"websocket": True, b"h2c": False}


@pytest.mark.parametrize(("upgrade", "message"), [
    ({"upgrade_type": "websocket", "connect_config": {}}, "only a CONNECT upgrade can be terminated"),
    ({"upgrade_type": "CONNECT", "connect_config": {"proxy_protocol_config": {}}}, "proxy_protocol_config"),
])
def test_route_upgrade_config_errors(upgrade: dict[str, Any], message: str):
    with pytest.raises(msgspec.ValidationError, match=message):
        one_vhost(to("main", upgrade_configs=[upgrade]))


@pytest.mark.parametrize(("upgrade", "connect", "post"), [
    ({"upgrade_type": "CONNECT", "connect_config": {}}, True, False),
    ({"upgrade_type": "CONNECT", "connect_config": {"allow_post": True}}, True, True),
    # as Envoy 1.40 (observed): a disabled CONNECT upgrade still terminates POSTs; CONNECTs it refuses (403)
    ({"upgrade_type": "CONNECT", "enabled": False, "connect_config": {"allow_post": True}}, False, True),
    ({"upgrade_type": "connect", "connect_config": {"allow_post": True}}, True, True),
    ({"upgrade_type": "CONNECT"}, False, False),
])
def test_route_connect_config_terminates_connect_and_with_allow_post_post(upgrade: dict[str, Any], connect: bool,
                                                                          post: bool):
    matched = route_of(one_vhost(to("main", upgrade_configs=[upgrade])), "/")
    assert (matched.connect_terminate, matched.post_terminate) == (connect, post)


def test_connect_matcher_takes_connect_requests_only():
    """A CONNECT has no path (the stream matches it with ""): only connect_matcher routes take it, and they take
    nothing else; a catch-all prefix route does not take a CONNECT, as in Envoy (404)."""
    terminate = [{"upgrade_type": "CONNECT", "connect_config": {}}]
    table = one_vhost(to("tunnel", {"connect_matcher": {}}, upgrade_configs=terminate), to("web"))
    assert name_of(table, "") == "tunnel"
    assert route_of(table, "").connect_terminate
    assert name_of(table, "/") == "web" and not route_of(table, "/").connect_terminate
    assert name_of(one_vhost(to("web")), "") is None


def test_connect_config_on_a_disabled_or_later_entry_does_not_terminate():
    later = [{"upgrade_type": "CONNECT"}, {"upgrade_type": "connect", "connect_config": {}}]
    disabled = [{"upgrade_type": "CONNECT", "enabled": False, "connect_config": {}}]
    for upgrades in (later, disabled):
        table = one_vhost(to("tunnel", {"connect_matcher": {}}, upgrade_configs=upgrades))
        assert not route_of(table, "").connect_terminate


def test_connect_matcher_is_one_of_the_path_matchers():
    with pytest.raises(msgspec.ValidationError, match="exactly one of prefix, path, safe_regex, connect_matcher"):
        one_vhost(to("tunnel", {"connect_matcher": {}, "prefix": "/"}))
