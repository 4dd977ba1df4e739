"""proxy/rate_limits.py: descriptors from rate_limits actions, as Envoy's router_ratelimit.cc builds them."""

from __future__ import annotations

from typing import Any

from pylon.config.envoy import RateLimit, convert
from pylon.proxy.headers import HeaderList
from pylon.proxy.rate_limits import DescriptorRequest, RateLimitPolicy, RequestDescriptor
from pylon.regex import get_engine


def request(headers: list[tuple[bytes, bytes]] | None = None, path: str = "/foo/bar?q=a%20b&q=c",
            remote: str | tuple[str, int] = ("10.1.2.3", 5555), cluster: str | None = "backend") -> DescriptorRequest:
    return DescriptorRequest(HeaderList(headers or []), "example.com", path, "GET", "http", remote, "local_svc",
                             cluster)


def descriptors(rate_limits: list[dict[str, Any]], req: DescriptorRequest, stage: int = 0) -> list[RequestDescriptor]:
    policy = RateLimitPolicy([convert(r, RateLimit) for r in rate_limits], get_engine())
    out: list[RequestDescriptor] = []
    policy.add_descriptors(stage, req, out)
    return out


def entries(rate_limits: list[dict[str, Any]], req: DescriptorRequest, stage: int = 0) -> list[tuple[Any, ...]]:
    return [d.entries for d in descriptors(rate_limits, req, stage)]


def test_each_action_makes_one_entry_in_order() -> None:
    actions = [{"source_cluster": {}}, {"destination_cluster": {}}, {"remote_address": {}},
               {"generic_key": {"descriptor_value": "v"}}, {"generic_key": {"descriptor_value": "w", "descriptor_key": "k"}},
               {"request_headers": {"header_name": ":path", "descriptor_key": "path"}},
               {"request_headers": {"header_name": "X-Client", "descriptor_key": "client"}},
               {"query_parameters": {"query_parameter_name": "q", "descriptor_key": "query"}},
               {"masked_remote_address": {"v4_prefix_mask_len": 16}}]
    assert entries([{"actions": actions}], request([(b"x-client", b"one"), (b"x-client", b"two")])) == [(
        ("source_cluster", "local_svc"), ("destination_cluster", "backend"), ("remote_address", "10.1.2.3"),
        ("generic_key", "v"), ("k", "w"), ("path", "/foo/bar?q=a%20b&q=c"), ("client", "one"), ("query", "a b"),
        ("masked_remote_address", "10.1.0.0/16"))]


def test_a_missing_header_drops_the_descriptor_unless_skip_if_absent() -> None:
    header = {"header_name": "x-missing", "descriptor_key": "m"}
    generic = {"generic_key": {"descriptor_value": "v"}}
    assert entries([{"actions": [generic, {"request_headers": header}]}], request()) == []
    assert entries([{"actions": [generic, {"request_headers": {**header, "skip_if_absent": True}}]}], request()) == [
        (("generic_key", "v"),)]


def test_header_value_match_and_expect_match() -> None:
    match = {"descriptor_value": "admins", "headers": [{"name": "x-role", "exact_match": "admin"}]}
    rate_limits = [{"actions": [{"header_value_match": match}]},
                   {"actions": [{"header_value_match": {**match, "expect_match": False, "descriptor_key": "k"}}]}]
    assert entries(rate_limits, request([(b"x-role", b"admin")])) == [(("header_match", "admins"),)]
    assert entries(rate_limits, request([(b"x-role", b"user")])) == [(("k", "admins"),)]


def test_remote_address_needs_an_ip_and_destination_cluster_a_named_cluster() -> None:
    assert entries([{"actions": [{"remote_address": {}}]}], request(remote="2001:db8::1")) == [
        (("remote_address", "2001:db8::1"),)]
    assert entries([{"actions": [{"remote_address": {}}]}], request(remote="not-an-ip")) == []
    assert entries([{"actions": [{"destination_cluster": {}}]}], request(cluster=None)) == []


def test_stages_disable_key_and_x_ratelimit_option() -> None:
    rate_limits = [{"actions": [{"generic_key": {"descriptor_value": "zero"}}], "x_ratelimit_option": "OFF"},
                   {"stage": 1, "actions": [{"generic_key": {"descriptor_value": "one"}}]},
                   {"actions": [{"generic_key": {"descriptor_value": "off"}}], "disable_key": "k"}]
    assert descriptors(rate_limits, request()) == [RequestDescriptor((("generic_key", "zero"),), "OFF")]
    assert entries(rate_limits, request(), stage=1) == [(("generic_key", "one"),)]
