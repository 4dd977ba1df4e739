"""local_ratelimit's config: what loads and what is refused by name; its descriptor decisions (sans-IO, as Envoy's
LocalRateLimiterImpl)."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.envoy import convert
from pylon.config.errors import ConfigError
from pylon.extensions.filters.http.local_ratelimit import Limiter, LocalRateLimit
from pylon.proxy.rate_limits import RequestDescriptor
from pylon.config.loader import parse_bootstrap
from tests.proxy.conftest import http_listener, route, static_cluster

TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
BUCKET = {"max_tokens": 2, "tokens_per_fill": 2, "fill_interval": "5s"}


def load(config: dict[str, Any], per_route: dict[str, Any] | None = None) -> Any:
    first = route("/", "a")
    if per_route is not None:
        first["typed_per_filter_config"] = {"envoy.filters.http.local_ratelimit": {"@type": TYPE, **per_route}}
    listener = http_listener("main", 10000, [first])
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, {
        "name": "envoy.filters.http.local_ratelimit", "typed_config": {"@type": TYPE, **config}})
    resources = {"listeners": [listener], "clusters": [static_cluster("a", [1])]}
    return parse_bootstrap({"static_resources": resources}, "rl.yaml")


def error(config: dict[str, Any], per_route: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        load(config, per_route)
    return str(raised.value)


def test_envoys_example_config_loads() -> None:
    load({"stat_prefix": "http_local_rate_limiter", "token_bucket": BUCKET,
          "filter_enabled": {"runtime_key": "local_rate_limit_enabled", "default_value": {"numerator": 100}},
          "filter_enforced": {"runtime_key": "local_rate_limit_enforced", "default_value": {"numerator": 100}},
          "response_headers_to_add": [{"append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                                       "header": {"key": "x-local-rate-limit", "value": "true"}}],
          "local_rate_limit_per_downstream_connection": False, "enable_x_ratelimit_headers": "DRAFT_VERSION_03"},
         {"stat_prefix": "route", "token_bucket": BUCKET, "status": {"code": "ServiceUnavailable"}})


@pytest.mark.parametrize("field, value", [
    ("local_cluster_rate_limit", {}), ("max_dynamic_descriptors", 5),
    ("descriptors", [{"entries": [{"key": "a"}], "token_bucket": BUCKET}]),  # a wildcard: dynamic descriptors
    ("rate_limits", [{"actions": [{"metadata": {"descriptor_key": "k", "metadata_key": {"key": "x"}}}]}]),
    ("rate_limits", [{"actions": [{"generic_key": {"descriptor_value": "%REQ(x)%"}}]}]),
    ("rate_limits", [{"actions": [{"generic_key": {"descriptor_value": "v"}}], "hits_addend": {"number": 2}}]),
])
def test_what_is_not_implemented_is_refused_by_name(field: str, value: Any) -> None:
    message = error({"stat_prefix": "s", "token_bucket": BUCKET, field: value})
    assert f"http_filters[0].typed_config.{field}" in message


def test_required_fields_and_bounds() -> None:
    assert "stat_prefix" in error({"token_bucket": BUCKET})
    load({"stat_prefix": "s"})  # the filter's own config may do without a default bucket, a per-route one not
    assert "routes[0].typed_per_filter_config" in error({"stat_prefix": "s"}, {"stat_prefix": "r"})
    assert "fill_interval" in error({"stat_prefix": "s", "token_bucket": {**BUCKET, "fill_interval": "0.04s"}})
    assert "stage" in error({"stat_prefix": "s", "stage": 11})
    descriptor = {"entries": [{"key": "a", "value": "b"}], "token_bucket": BUCKET}
    assert "descriptors[1]" in error({"stat_prefix": "s", "descriptors": [descriptor, descriptor]})
    assert "token_bucket.fill_interval" in error({"stat_prefix": "s", "token_bucket": {"max_tokens": 1}})
    assert "token_bucket.max_tokens" in error({"stat_prefix": "s", "token_bucket": {**BUCKET, "max_tokens": 0}})
    assert "response_headers_to_add[0].header.value" in error({"stat_prefix": "s", "token_bucket": BUCKET,
        "response_headers_to_add": [{"header": {"key": "x", "value": "%START_TIME%"}}]})


class _Stream:
    """What a Limiter reads of a stream: no shared table (buckets of its own), a connection."""

    def __init__(self) -> None:
        self.hcm = type("Hcm", (), {"worker": type("Worker", (), {"singletons": {}})()})()
        self.conn = object()


def limiter(**fields: Any) -> Limiter:
    stats = type("Stats", (), {"counter": lambda self, name: None})()
    return Limiter(convert({"stat_prefix": "s", **fields}, LocalRateLimit), b"key", stats, lambda: 100.0)


def slow(value: str, tokens: int, interval: str = "60s", **fields: Any) -> dict[str, Any]:
    return {"entries": [{"key": "k", "value": value}],
            "token_bucket": {"max_tokens": tokens, "tokens_per_fill": 1, "fill_interval": interval}, **fields}


def ask(rate_limiter: Limiter, *values: str) -> tuple[bool, int | None]:
    decision = rate_limiter.decide(_Stream(), [RequestDescriptor((("k", v),), "UNSPECIFIED") for v in values])
    return decision.allowed, decision.bucket.rule.max_tokens if decision.bucket is not None else None


def test_descriptors_then_the_default_bucket() -> None:
    rl = limiter(token_bucket={"max_tokens": 3, "fill_interval": "60s"}, descriptors=[slow("a", 1), slow("b", 5)])
    assert ask(rl, "a") == (True, 1)  # the descriptor's bucket is the one the headers describe
    assert ask(rl, "a") == (False, 1)  # limited by the descriptor
    assert ask(rl, "x") == (True, 3)  # no match: the default bucket (one token left after the first request)
    assert ask(rl, "b") == (True, 5)
    assert ask(rl, "b") == (False, 3)  # the default bucket is empty: it limits


def test_without_always_consume_default_a_match_skips_the_default_bucket() -> None:
    rl = limiter(token_bucket={"max_tokens": 1, "fill_interval": "60s"}, descriptors=[slow("a", 3)],
                 always_consume_default_token_bucket=False)
    assert [ask(rl, "a")[0] for _ in range(4)] == [True, True, True, False]
    assert [ask(rl, "z")[0] for _ in range(2)] == [True, False]


def test_slowest_refill_first_and_no_default_bucket() -> None:
    rl = limiter(descriptors=[slow("fast", 5, "1s"), slow("slow", 1, "60s")])
    assert ask(rl, "fast", "slow") == (True, 1)  # the slow bucket was asked first: it is the first match
    assert ask(rl, "fast", "slow") == (False, 1)
    assert ask(rl, "nothing") == (True, None)  # nothing matched, no default bucket: allowed, no headers


def test_a_shadow_descriptor_decides_but_says_so() -> None:
    rl = limiter(descriptors=[slow("a", 1, shadow_mode=True)])
    stream = _Stream()
    rl.decide(stream, [RequestDescriptor((("k", "a"),), "UNSPECIFIED")])
    decision = rl.decide(stream, [RequestDescriptor((("k", "a"),), "UNSPECIFIED")])
    assert not decision.allowed and decision.bucket is not None and decision.bucket.shadow
