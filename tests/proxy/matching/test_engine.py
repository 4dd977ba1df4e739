"""The matcher engine's evaluation, as Envoy 1.40's source/common/matcher: lists, maps, predicates, nesting,
undecided inputs; and its config checks."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config import registry
from pylon.config.errors import FieldError
from pylon.config.matcher import decode
from pylon.proxy.headers import HeaderList
from pylon.proxy.matching.engine import INSUFFICIENT, NO_MATCH, Vocabulary, compile_matcher
from pylon.proxy.matching.http_inputs import HTTP_READERS, HttpMatchingData
from pylon.proxy.matching.network_inputs import NetworkMatchingData

HEADER = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
RESPONSE_HEADER = "type.googleapis.com/envoy.type.matcher.v3.HttpResponseHeaderMatchInput"
QUERY = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestQueryParamMatchInput"
SOURCE_IP = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput"


def header(name: str) -> dict[str, Any]:
    return {"name": "h", "typed_config": {"@type": HEADER, "header_name": name}}


def act(name: str) -> dict[str, Any]:
    """An on_match with an action named `name` (a Route, the only action type these tests register)."""
    return {"action": {"name": name, "typed_config": {
        "@type": "type.googleapis.com/envoy.config.route.v3.Route", "name": name, "match": {"prefix": "/"},
        "direct_response": {"status": 200}}}}


def single(name: str, **value_match: Any) -> dict[str, Any]:
    return {"single_predicate": {"input": header(name), "value_match": value_match}}


def compiled(raw: dict[str, Any]) -> Any:
    config = decode(raw, inputs=registry.HTTP_MATCH_INPUT, actions=registry.ROUTE_MATCH_ACTION)
    return compile_matcher(config, Vocabulary(inputs=HTTP_READERS, action=lambda route: route.name))


def request(path: str = "/", **headers: str) -> HttpMatchingData:
    items = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return HttpMatchingData(HeaderList(items), "host", path, "GET", "http",
                            NetworkMatchingData(("127.0.0.1", 80), ("10.0.0.7", 5555)))


def test_list_first_match_wins_then_on_no_match() -> None:
    match = compiled({"matcher_list": {"matchers": [
        {"predicate": single("x-a", exact="1"), "on_match": act("first")},
        {"predicate": single("x-b", prefix="b"), "on_match": act("second")},
    ]}, "on_no_match": act("otherwise")})
    assert match(request(x_a="1", x_b="bee")) == "first"
    assert match(request(x_a="2", x_b="bee")) == "second"
    assert match(request()) == "otherwise"


def test_absent_header_matches_nothing_and_repeated_header_is_joined() -> None:
    match = compiled({"matcher_list": {"matchers": [
        {"predicate": {"not_matcher": single("x-a", exact="")}, "on_match": act("not-empty")},
        {"predicate": single("x-b", exact="1,2"), "on_match": act("joined")},
    ]}})
    assert match(request()) == "not-empty"  # absent: the single predicate is false, its negation true
    assert match(HttpMatchingData(HeaderList([(b"x-a", b""), (b"x-b", b"1"), (b"x-b", b"2")]))) == "joined"
    assert match(request(x_a="")) is NO_MATCH


def test_and_or_not() -> None:
    match = compiled({"matcher_list": {"matchers": [
        {"predicate": {"and_matcher": {"predicate": [single("x-a", exact="1"), single("x-b", exact="1")]}},
         "on_match": act("both")},
        {"predicate": {"or_matcher": {"predicate": [single("x-a", exact="1"), single("x-b", exact="1")]}},
         "on_match": act("either")},
    ]}})
    assert match(request(x_a="1", x_b="1")) == "both"
    assert match(request(x_b="1")) == "either"
    assert match(request(x_a="2")) is NO_MATCH


def test_string_matcher_kinds_and_case() -> None:
    match = compiled({"matcher_list": {"matchers": [
        {"predicate": single("x-a", suffix="END", ignore_case=True), "on_match": act("suffix")},
        {"predicate": single("x-a", contains="mid"), "on_match": act("contains")},
        {"predicate": single("x-a", safe_regex={"google_re2": {}, "regex": "[0-9]+"}), "on_match": act("regex")},
    ]}})
    assert match(request(x_a="the end")) == "suffix"
    assert match(request(x_a="a mid b")) == "contains"
    assert match(request(x_a="123")) == "regex"
    assert match(request(x_a="123x")) is NO_MATCH  # regexes match the whole value


def test_exact_map_nested_miss_falls_to_on_no_match() -> None:
    match = compiled({"matcher_tree": {"input": header(":path"), "exact_match_map": {"map": {
        "/a": act("a"),
        "/b": {"matcher": {"matcher_list": {"matchers": [
            {"predicate": single("x-b", exact="1"), "on_match": act("b1")}]}}},
    }}}, "on_no_match": act("otherwise")})
    assert match(request("/a")) == "a"
    assert match(request("/b", x_b="1")) == "b1"
    assert match(request("/b")) == "otherwise"  # the nested matcher matched nothing
    assert match(request("/c")) == "otherwise"
    assert match(request("/a?q=1")) == "otherwise"  # :path is the whole request target


def test_prefix_map_longest_first_and_resumes_after_a_subtree_miss() -> None:
    match = compiled({"matcher_tree": {"input": header(":path"), "prefix_match_map": {"map": {
        "/": act("root"),
        "/api": act("api"),
        "/api/v1": {"matcher": {"matcher_list": {"matchers": [
            {"predicate": single("x-v", exact="1"), "on_match": act("v1")}]}}},
    }}}})
    assert match(request("/api/v1/x", x_v="1")) == "v1"
    assert match(request("/api/v1/x")) == "api"  # the longest prefix's subtree missed: the next longest
    assert match(request("/other")) == "root"


def test_query_parameter_and_network_inputs() -> None:
    match = compiled({"matcher_list": {"matchers": [
        {"predicate": {"single_predicate": {
            "input": {"name": "q", "typed_config": {"@type": QUERY, "query_param": "who"}},
            "value_match": {"exact": "a b"}}}, "on_match": act("query")},
        {"predicate": {"single_predicate": {
            "input": {"name": "ip", "typed_config": {"@type": SOURCE_IP}},
            "value_match": {"exact": "10.0.0.7"}}}, "on_match": act("source")},
    ]}})
    assert match(request("/?x=1&who=a%20b&who=c")) == "query"
    assert match(request("/")) == "source"


def test_response_input_undecided_until_response_headers() -> None:
    match = compiled({"matcher_list": {"matchers": [
        {"predicate": {"single_predicate": {
            "input": {"name": "r", "typed_config": {"@type": RESPONSE_HEADER, "header_name": "x-r"}},
            "value_match": {"exact": "1"}}}, "on_match": act("response")},
    ]}, "on_no_match": act("otherwise")})
    data = request()
    assert match(data) is INSUFFICIENT
    data.response_headers = HeaderList([(b"x-r", b"1")])
    assert match(data) == "response"
    data.response_headers = HeaderList([])
    assert match(data) == "otherwise"


@pytest.mark.parametrize(("raw", "path"), [
    ({"matcher_tree": {"input": {"name": "x", "typed_config": {"@type": "type.googleapis.com/nope.Input"}},
                       "exact_match_map": {"map": {"a": act("a")}}}}, "matcher_tree.input.typed_config.@type"),
    ({"matcher_list": {"matchers": [{"predicate": single("x", exact="1"), "on_match": {
        "action": {"name": "x", "typed_config": {"@type": "type.googleapis.com/nope.Action"}}}}]}},
     "matcher_list.matchers[0].on_match.action.typed_config.@type"),
    ({"matcher_list": {"matchers": []}}, "matcher_list.matchers"),
    ({"matcher_list": {"matchers": [{"predicate": single("x", safe_regex={"regex": "a"}), "on_match": act("a")}]}},
     "google_re2"),
    ({"matcher_list": {"matchers": [{"predicate": single("x", exact="1"), "on_match": {**act("a"),
                                                                                      "keep_matching": True}}]}},
     "keep_matching is not supported in this context"),
])
def test_config_errors_name_the_field(raw: dict[str, Any], path: str) -> None:
    with pytest.raises((FieldError, ValueError)) as info:
        decode(raw, inputs=registry.HTTP_MATCH_INPUT, actions=registry.ROUTE_MATCH_ACTION)
    assert path in str(info.value)


HYPERSCAN = "type.googleapis.com/envoy.extensions.matching.input_matchers.hyperscan.v3alpha.Hyperscan"


@pytest.mark.parametrize("engine", ["envoy.regex_engines.google_re2", "envoy.regex_engines.hyperscan"])
def test_hyperscan_input_matcher_finds_any_pattern_anywhere(engine: str) -> None:
    from pylon.proxy.matching.input_matchers import INPUT_MATCHERS
    from pylon.regex import get_engine

    regexes = [{"regex": "^/api/v[0-9]+/", "id": 1}, {"regex": "admin", "caseless": True},
               {"regex": "secret", "quiet": True}]
    config = decode({"matcher_list": {"matchers": [{"predicate": {"single_predicate": {
        "input": header(":path"), "custom_match": {"name": "hs", "typed_config": {"@type": HYPERSCAN,
                                                                                  "regexes": regexes}}}},
        "on_match": act("hit")}]}}, inputs=registry.HTTP_MATCH_INPUT, actions=registry.ROUTE_MATCH_ACTION)
    match = compile_matcher(config, Vocabulary(inputs=HTTP_READERS, action=lambda route: route.name,
                                               input_matchers=INPUT_MATCHERS), get_engine(engine))
    assert match(request("/api/v2/users")) == "hit"
    assert match(request("/x/ADMIN/y")) == "hit"  # found anywhere, caseless
    assert match(request("/x/api/v2/")) is NO_MATCH  # anchored at the start
    assert match(request("/secret")) is NO_MATCH  # a quiet pattern reports nothing


@pytest.mark.parametrize(("regex", "error"), [
    ({"regex": "a*"}, "matches the empty string; set allow_empty"),
    ({"regex": "a", "combination": True}, "combination"),
    ({"regex": "(unclosed"}, "invalid regex"),
])
def test_hyperscan_input_matcher_refusals(regex: dict[str, Any], error: str) -> None:
    with pytest.raises(FieldError, match=error):
        decode({"matcher_list": {"matchers": [{"predicate": {"single_predicate": {
            "input": header(":path"), "custom_match": {"name": "hs", "typed_config": {
                "@type": HYPERSCAN, "regexes": [regex]}}}}, "on_match": act("hit")}]}},
            inputs=registry.HTTP_MATCH_INPUT, actions=registry.ROUTE_MATCH_ACTION)


def test_ip_matcher_tree_longest_range_first_exclusive_passed_over_after_the_first() -> None:
    def ranges(prefix: str, length: int, on: dict[str, Any], exclusive: bool = False) -> dict[str, Any]:
        return {"ranges": [{"address_prefix": prefix, "prefix_len": length}], "on_match": on, "exclusive": exclusive}

    nested_miss = {"matcher": {"matcher_list": {"matchers": [{"predicate": single("x-never", exact="1"),
                                                               "on_match": act("never")}]}}}
    tree = {"matcher_tree": {"input": {"name": "ip", "typed_config": {"@type": SOURCE_IP}}, "custom_match": {
        "name": "ip", "typed_config": {"@type": "type.googleapis.com/xds.type.matcher.v3.IPMatcher", "range_matchers": [
            ranges("10.0.0.7", 32, nested_miss), ranges("10.0.0.0", 24, act("exclusive"), exclusive=True),
            ranges("10.0.0.0", 8, act("eight")), ranges("::", 0, act("v6"))]}}},
        "on_no_match": act("otherwise")}
    match = compiled(tree)

    def source(ip: str) -> HttpMatchingData:
        return HttpMatchingData(HeaderList([]), network=NetworkMatchingData(("127.0.0.1", 80), (ip, 1)))

    assert match(source("10.0.0.7")) == "eight"  # /32 missed below; the /24 is exclusive and not first
    assert match(source("10.0.0.8")) == "exclusive"  # the first range holding it, exclusive or not
    assert match(source("10.9.0.1")) == "eight"
    assert match(source("2001:db8::1")) == "v6"
    assert match(source("192.0.2.1")) == "otherwise"
    assert match(HttpMatchingData(HeaderList([]))) == "otherwise"  # no address at all


METADATA_INPUT = {"name": "m", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DynamicMetadataInput",
    "filter": "ns", "path": [{"key": "k"}]}}


def metadata_matcher(**value: Any) -> dict[str, Any]:
    return {"name": "mm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.matching.input_matchers.metadata.v3.Metadata", **value}}


def test_dynamic_metadata_with_the_metadata_input_matcher() -> None:
    from pylon.proxy.matching.input_matchers import INPUT_MATCHERS

    raw = {"matcher_list": {"matchers": [
        {"predicate": {"single_predicate": {"input": METADATA_INPUT, "custom_match": metadata_matcher(
            value={"double_match": {"exact": 3}})}}, "on_match": act("three")},
        {"predicate": {"single_predicate": {"input": METADATA_INPUT, "custom_match": metadata_matcher(
            value={"present_match": True}, invert=True)}}, "on_match": act("absent")}]}}
    config = decode(raw, inputs=registry.HTTP_MATCH_INPUT, actions=registry.ROUTE_MATCH_ACTION)
    match = compile_matcher(config, Vocabulary(inputs=HTTP_READERS, action=lambda route: route.name,
                                               input_matchers=INPUT_MATCHERS))

    def with_metadata(metadata: dict[str, Any] | None) -> HttpMatchingData:
        data = request()
        data.metadata = lambda: metadata
        return data

    assert match(with_metadata({"ns": {"k": 3.0}})) == "three"
    assert match(with_metadata({"ns": {"k": "3"}})) == NO_MATCH  # a string is no double
    assert match(with_metadata(None)) == "absent"
    assert match(with_metadata({"ns": {"other": 1}})) == "absent"


@pytest.mark.parametrize(("predicate", "where"), [
    ({"input": METADATA_INPUT, "value_match": {"exact": "x"}}, "matcher_list.matchers[0].predicate.single_predicate.input"),
    ({"input": header("a"), "custom_match": metadata_matcher(value={"present_match": True})},
     "matcher_list.matchers[0].predicate.single_predicate.custom_match"),
])  # fmt: skip
def test_dynamic_metadata_input_and_metadata_matcher_go_together(predicate: dict[str, Any], where: str) -> None:
    raw = {"matcher_list": {"matchers": [{"predicate": {"single_predicate": predicate}, "on_match": act("x")}]}}
    with pytest.raises(FieldError) as info:
        decode(raw, inputs=registry.HTTP_MATCH_INPUT, actions=registry.ROUTE_MATCH_ACTION)
    assert info.value.rel_path == where and "Metadata input matcher" in info.value.message
