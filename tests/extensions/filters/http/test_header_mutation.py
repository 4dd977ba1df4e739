"""header_mutation's config (what loads, what is refused by name) and its mutation lists (sans-IO)."""

from __future__ import annotations

import msgspec
import pytest

from pylon.config.envoy import convert
from pylon.extensions.filters.common.mutation_rules import HeaderMutation, HeaderMutations
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
    ({"mutations": {"query_parameter_mutations": [{"remove": "a"}]}}, "query_parameter_mutations"),
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
