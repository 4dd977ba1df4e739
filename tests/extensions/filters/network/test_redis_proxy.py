"""Unit tests of redis_proxy's sans-IO parts: the RESP codec, the splitter's routing, the fault picks, and the
config fields pylon refuses by path (the behaviour beside Envoy is in tests/proxy/test_proxy_redis_proxy.py)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from pylon.config.envoy import convert
from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap
from pylon.extensions.filters.network.redis_proxy import resp
from pylon.extensions.filters.network.redis_proxy.config import PrefixRoutes, RedisFault
from pylon.extensions.filters.network.redis_proxy.faults import Faults
from pylon.extensions.filters.network.redis_proxy.splitter import Router, hash_key, split

REDIS_TYPE = "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"
OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProtocolOptions"
FILTER = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"


def test_requests_decode_across_reads() -> None:
    decoder = resp.Decoder()
    wire = resp.encode_command([b"SET", b"k", b"a\r\nb"]) + resp.encode_command([b"GET", b"k"])
    got = []
    for i in range(len(wire)):  # one byte at a time: a value is taken only once it is whole
        got.extend(decoder.feed(wire[i:i + 1]))
    assert [[item.value for item in value.value] for value in got] == [[b"SET", b"k", b"a\r\nb"], [b"GET", b"k"]]
    assert b"".join(value.raw for value in got) == wire


def test_replies_keep_their_bytes() -> None:
    wire = b"+OK\r\n-ERR x\r\n:42\r\n$-1\r\n*2\r\n$1\r\na\r\n*-1\r\n"
    replies = resp.Decoder().feed(wire)
    assert [r.kind for r in replies] == [resp.SIMPLE, resp.ERROR, resp.INTEGER, resp.BULK, resp.ARRAY]
    assert replies[2].value == 42 and replies[3].value is None and replies[1].is_error
    assert b"".join(r.raw for r in replies) == wire


@pytest.mark.parametrize("wire", [b"?x\r\n", b"$abc\r\n", b"$3\r\nabcXY"])
def test_garbage_is_a_protocol_error(wire: bytes) -> None:
    with pytest.raises(resp.ProtocolError):
        resp.Decoder().feed(wire)


def test_longest_prefix_wins_and_remove_prefix() -> None:
    router = Router(convert({"routes": [{"prefix": "ab", "cluster": "short"},
                                        {"prefix": "abc", "cluster": "long", "remove_prefix": True}],
                             "case_insensitive": True, "catch_all_route": {"cluster": "rest"}}, PrefixRoutes))
    assert router.route(b"ABCkey") == ("long", b"key")
    assert router.route(b"abx") == ("short", b"abx")
    assert router.route(b"zz") == ("rest", b"zz")
    assert Router(None).route(b"zz") is None


def test_hashtags() -> None:
    assert hash_key(b"user:{42}:name", True) == b"42"
    assert hash_key(b"user:{}:name", True) == b"user:{}:name"
    assert hash_key(b"user:{42}:name", False) == b"user:{42}:name"


def test_mget_becomes_one_get_per_key() -> None:
    plan = split([b"MGET", b"a", b"b"], Router(convert({"catch_all_route": {"cluster": "c"}}, PrefixRoutes)), False)
    assert plan.join == "mget" and [f.args for f in plan.fragments] == [[b"get", b"a"], [b"get", b"b"]]


def test_fault_percentages_are_amortized() -> None:
    """ERROR 5% for all and DELAY 10% for GET: GETs see 10% delays and 5% errors, other commands 5% errors."""
    configs = [convert({"fault_type": "ERROR", "fault_enabled": {"default_value": {"numerator": 5}}}, RedisFault),
               convert({"fault_type": "DELAY", "delay": "1s", "commands": ["GET"],
                        "fault_enabled": {"default_value": {"numerator": 10}}}, RedisFault)]
    faults = Faults(configs, random.Random(1))
    picks = [faults.pick("get") for _ in range(20000)]
    delays = sum(1 for p in picks if p is not None and not p.error) / len(picks)
    errors = sum(1 for p in picks if p is not None and p.error) / len(picks)
    assert 0.08 < delays < 0.12 and 0.03 < errors < 0.07
    others = [faults.pick("set") for _ in range(20000)]
    assert all(p is None or p.error for p in others)


def bootstrap(settings: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
              **fields: Any) -> dict[str, Any]:
    config = {"@type": REDIS_TYPE, "stat_prefix": "r", "settings": {"op_timeout": "1s", **(settings or {})},
              "prefix_routes": {"catch_all_route": {"cluster": "c"}}, **fields}
    cluster: dict[str, Any] = {"name": "c", "connect_timeout": "1s", "type": "STATIC", "load_assignment": {
        "cluster_name": "c", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": 6379}}}}]}]}}  # fmt: skip
    if options is not None:
        cluster["typed_extension_protocol_options"] = {"envoy.filters.network.redis_proxy": {
            "@type": OPTIONS_TYPE, **options}}
    return {"static_resources": {
        "listeners": [{"name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
                       "filter_chains": [{"filters": [{"name": "envoy.filters.network.redis_proxy",
                                                       "typed_config": config}]}]}],
        "clusters": [cluster]}}


def test_envoys_shape_loads() -> None:
    parse_bootstrap(bootstrap(options={"auth_password": {"inline_string": "x"}}), "test")


@pytest.mark.parametrize(("data", "path", "message"), [
    (bootstrap(settings={"op_timeout": None}), f"{FILTER}.settings.op_timeout", "missing required field"),
    (bootstrap(settings={"read_policy": "REPLICA"}), f"{FILTER}.settings.read_policy", "not supported yet"),
    (bootstrap(settings={"enable_redirection": True}), f"{FILTER}.settings.enable_redirection", "not supported yet"),
    (bootstrap(settings={"dns_cache_config": {"name": "d"}}), f"{FILTER}.settings.dns_cache_config",
     "not supported yet"),
    (bootstrap(prefix_routes={"routes": [{"prefix": "a", "cluster": "c"}, {"prefix": "a", "cluster": "c"}]}),
     f"{FILTER}.prefix_routes.routes[1].prefix", "prefix `a` already exists."),
    (bootstrap(options={"aws_iam": {"region": "x"}}),
     "static_resources.clusters[0].typed_extension_protocol_options[envoy.filters.network.redis_proxy].aws_iam",
     "not supported yet"),
])  # fmt: skip
def test_config_errors_name_their_field(data: dict[str, Any], path: str, message: str) -> None:
    settings = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["settings"]
    if settings.get("op_timeout", 0) is None:
        del settings["op_timeout"]
    with pytest.raises(ConfigError) as caught:
        parse_bootstrap(data, "test")
    assert caught.value.path == path and message in caught.value.message
