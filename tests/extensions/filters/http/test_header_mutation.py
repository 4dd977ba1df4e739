"""header_mutation's config (what loads, what is refused by name) and its mutation lists (sans-IO)."""

from __future__ import annotations

import msgspec
import pytest

from pylon.config.envoy import convert
from pylon.extensions.filters.common.mutation_rules import (
    HeaderMutation, HeaderMutations, KeyValueMutation, QueryParameterMutations,
)
from pylon.extensions.filters.http.header_mutation import HeaderMutationConfig
from pylon.proxy.headers import HeaderList


def mutations(*items: dict) -> HeaderMutations:
    return HeaderMutations(convert(list(items), list[HeaderMutation]), "request_mutations")


def test_each_mutation_sees_what_the_earlier_ones_left() -> None:
    headers = HeaderList([(b"a", b"1"), (b"x-k1", b"v"), (b"x-k2", b"v")])
    mutations({"append": {"header": {"key": "b", "value": "2"}, "append_action": "ADD_IF_ABSENT"}},
              {"append": {"header": {"key": "b", "value": "3"}, "append_action": "ADD_IF_ABSENT"}},
              {"remove": "a"},
              {"append": {"header": {"key": "a", "value": "4"}, "append_action": "OVERWRITE_IF_EXISTS"}},
              {"remove_on_match": {"key_matcher": {"safe_regex": {"regex": "x-k[0-9]"}}}}).apply(headers)
    assert headers.items == [(b"b", b"2")]


@pytest.mark.parametrize(("config", "field"), [
    ({"mutations": {"query_parameter_mutations": [{"append": {"entry": {"key": "a", "value": "YQ=="}}}]}},
     "No record specified"),
    ({"mutations": {"query_parameter_mutations": [{"append": {"record": {"key": "a", "value": 1}}}]}},
     "only a string value"),
    ({"mutations": {"query_parameter_mutations": [{}]}}, "No mutation specified"),
    ({"mutations": {"query_parameter_mutations": [{"append": {"record": {"key": "a", "value": "%START_TIME%"}}}]}},
     "START_TIME"),
    ({"mutations": {"request_trailers_mutations": [{"remove": "a"}]}}, "request_trailers_mutations"),
    ({"mutations": {"response_trailers_mutations": [{"remove": "a"}]}}, "response_trailers_mutations"),
    ({"mutations": {"request_mutations": [{"remove": ":path"}]}}, "remove"),
    ({"mutations": {"request_mutations": [{"remove": "a", "append": {"header": {"key": "b"}}}]}}, "exactly one"),
    ({"mutations": {"response_mutations": [{"append": {"header": {"key": "b", "value": "%START_TIME%"}}}]}},
     "START_TIME"),
    ({"mutations": {"request_mutations": [{"append": {"header": {"key": "host", "value": "x"}}}]}}, "host"),
    ({"mutations": {}, "unknown": 1}, "unknown"),
])  # fmt: skip
def test_refused_by_name(config: dict, field: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=field):
        convert(config, HeaderMutationConfig)


def test_query_parameters_sorted_decoded_and_appended_encoded() -> None:
    edits = QueryParameterMutations(convert([
        {"remove": "drop"},
        {"append": {"record": {"key": "a", "value": "x y"}}},
        {"append": {"record": {"key": "b", "value": "%REQ(x-in)%"}, "action": "OVERWRITE_IF_EXISTS"}},
    ], list[KeyValueMutation]), "query_parameter_mutations")
    lookup = {b"x-in": b"1/2"}.get
    assert edits.apply(b"/p?z=%2F&drop=1&b=0&a=0", None, lookup) == b"/p?a=0&a=x%20y&b=1%2F2&z=/"
    assert edits.apply(b"/p?drop=1", None, lookup) == b"/p?a=x%20y"
    assert edits.apply(b"/p?q=%20x", None, lookup) == b"/p?a=x%20y&q=%20x"  # a decoded space would break the line
    assert edits.apply(b"/p?x=a%26admin%3Dtrue", None, lookup) == b"/p?a=x%20y&x=a%26admin%3Dtrue"  # no smuggling
