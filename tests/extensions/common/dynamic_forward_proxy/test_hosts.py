"""The DNS cache's keys and the names it resolves, as Envoy's normalizeHostForDfp and parseAuthority make them."""

from __future__ import annotations

import pytest

from pylon.extensions.common.dynamic_forward_proxy.hosts import Authority, cache_key, has_port, parse_authority


@pytest.mark.parametrize(("host", "default_port", "key"), [
    ("localhost", 80, "localhost:80"),
    ("localhost:8080", 443, "localhost:8080"),
    ("Example.COM", 443, "Example.COM:443"),  # case kept: another entry than example.com
    ("127.0.0.1", 80, "127.0.0.1:80"),
    ("[::1]", 80, "[::1]:80"),
    ("[::1]:9000", 80, "[::1]:9000"),
    ("host:x", 80, "host:x:80"),  # no number after the colon: no port
])  # fmt: skip
def test_cache_key_adds_the_default_port_only_when_the_host_has_none(host: str, default_port: int, key: str) -> None:
    assert cache_key(host, default_port) == key


def test_a_port_is_a_number_after_the_last_colon_outside_brackets() -> None:
    assert has_port("a:1") and has_port("[::1]:1") and not has_port("[::1]") and not has_port("a:")
    assert has_port("a:4294967295") and not has_port("a:4294967296")


@pytest.mark.parametrize(("host", "parsed"), [
    ("localhost:8080", Authority("localhost", 8080, False)),
    ("127.0.0.1:80", Authority("127.0.0.1", 80, True)),
    ("[::1]:443", Authority("::1", 443, True)),
    ("[::1]", Authority("::1", None, True)),
    ("a.invalid:70000", Authority("a.invalid:70000", None, False)),  # not a port: the whole value is resolved
])  # fmt: skip
def test_parse_authority(host: str, parsed: Authority) -> None:
    assert parse_authority(host) == parsed
