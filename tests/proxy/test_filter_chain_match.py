"""Envoy's filter chain selection, sans-IO: the order of the criteria, specificity within each, no backtracking."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from pylon.config.envoy import FilterChainMatch, convert
from pylon.proxy.filter_chain_match import ConnectionFacts, DuplicateMatch, FilterChainSelector


def selector(*matches: dict[str, Any] | None) -> FilterChainSelector:
    return FilterChainSelector([None if m is None else convert(m, FilterChainMatch) for m in matches])


def facts(dst: str = "127.0.0.1", port: int = 8080, src: str = "127.0.0.1", src_port: int = 40000,
          sni: str = "", transport: str = "raw_buffer", alpn: tuple[str, ...] = ()) -> ConnectionFacts:
    return ConnectionFacts(ipaddress.ip_address(dst), port, ipaddress.ip_address(src), src_port, sni, transport, alpn)


def test_an_empty_match_takes_everything() -> None:
    assert selector(None).select(facts()) == 0
    assert selector({}).select(facts(sni="x", transport="tls")) == 0


def test_server_names_exact_then_longest_wildcard_then_none() -> None:
    chains = selector({"server_names": ["a.example"]}, {"server_names": ["*.b.example"]},
                      {"server_names": ["*.example"]}, {})
    assert chains.select(facts(sni="a.example")) == 0
    assert chains.select(facts(sni="x.b.example")) == 1
    assert chains.select(facts(sni="y.x.b.example")) == 1
    assert chains.select(facts(sni="c.example")) == 2
    assert chains.select(facts(sni="b.example")) == 2  # "*.b.example" needs a label before ".b.example"
    assert chains.select(facts(sni="other.test")) == 3
    assert chains.select(facts()) == 3


def test_destination_port_is_decided_first_and_never_revisited() -> None:
    chains = selector({"destination_port": 8080, "prefix_ranges": [{"address_prefix": "127.0.0.2", "prefix_len": 32}]},
                      {"prefix_ranges": [{"address_prefix": "127.0.0.1", "prefix_len": 32}]})
    assert chains.select(facts(dst="127.0.0.2")) == 0
    # Port 8080 picked chain 0, whose prefix does not match: no match, though chain 1's prefix would.
    assert chains.select(facts(dst="127.0.0.1")) is None
    assert chains.select(facts(dst="127.0.0.1", port=9000)) == 1


def test_longest_prefix_wins() -> None:
    chains = selector({"prefix_ranges": [{"address_prefix": "127.0.0.0", "prefix_len": 8}]},
                      {"prefix_ranges": [{"address_prefix": "127.0.0.2", "prefix_len": 31}]}, {})
    assert chains.select(facts(dst="127.0.0.3")) == 1
    assert chains.select(facts(dst="127.1.0.1")) == 0
    assert chains.select(facts(dst="10.0.0.1")) == 2
    assert chains.select(facts(dst="::1")) == 2


def test_transport_protocol_tells_tls_from_plaintext() -> None:
    chains = selector({"transport_protocol": "tls"}, {"transport_protocol": "raw_buffer"})
    assert chains.select(facts(transport="tls")) == 0
    assert chains.select(facts()) == 1
    assert selector({"transport_protocol": "tls"}).select(facts()) is None


def test_the_first_offered_alpn_that_a_chain_names_wins() -> None:
    chains = selector({"application_protocols": ["h2"]}, {"application_protocols": ["istio-peer-exchange", "istio"]},
                      {})
    assert chains.select(facts(alpn=("istio-peer-exchange", "h2"))) == 1
    assert chains.select(facts(alpn=("h2", "istio"))) == 0
    assert chains.select(facts(alpn=("http/1.1",))) == 2
    assert chains.select(facts()) == 2


def test_source_criteria() -> None:
    chains = selector({"source_prefix_ranges": [{"address_prefix": "127.0.0.3", "prefix_len": 32}]},
                      {"source_ports": [5000]}, {})
    assert chains.select(facts(src="127.0.0.3")) == 0
    assert chains.select(facts(src_port=5000)) == 1
    assert chains.select(facts()) == 2
    by_type = selector({"source_type": "SAME_IP_OR_LOOPBACK"}, {"source_type": "EXTERNAL"})
    assert by_type.select(facts(src="127.0.0.1", dst="127.0.0.2")) == 0
    assert by_type.select(facts(src="127.0.0.9")) == 1  # Envoy's loopback is 127.0.0.1 itself
    assert by_type.select(facts(dst="10.0.0.1", src="10.0.0.1")) == 0
    assert by_type.select(facts(dst="10.0.0.1", src="10.0.0.2")) == 1


def test_a_proxy_protocol_source_is_matched_apart_from_the_direct_peer() -> None:
    """A PROXY header's source matches source_prefix_ranges; direct_source_prefix_ranges sees the socket's peer."""
    lb = ipaddress.ip_address("127.0.0.1")
    via_balancer = ConnectionFacts(ipaddress.ip_address("127.0.0.1"), 8080, ipaddress.ip_address("192.0.2.7"), 5555,
                                   direct_source_ip=lb)
    by_source = selector({"source_prefix_ranges": [{"address_prefix": "192.0.2.0", "prefix_len": 24}]}, {})
    assert by_source.select(via_balancer) == 0 and by_source.select(facts()) == 1
    by_direct = selector({"direct_source_prefix_ranges": [{"address_prefix": "192.0.2.0", "prefix_len": 24}]},
                         {"direct_source_prefix_ranges": [{"address_prefix": "127.0.0.1", "prefix_len": 32}]})
    assert by_direct.select(via_balancer) == 1


def test_source_port_comes_after_source_prefix() -> None:
    chains = selector({"source_prefix_ranges": [{"address_prefix": "127.0.0.3", "prefix_len": 32}],
                       "source_ports": [5000]}, {"source_ports": [6000]})
    assert chains.select(facts(src="127.0.0.3", src_port=6000)) is None
    assert chains.select(facts(src="127.0.0.4", src_port=6000)) == 1


@pytest.mark.parametrize(
    "matches",
    [
        [{}, None],
        [{"server_names": ["a", "b"]}, {"server_names": ["b"]}],
        [{"destination_port": 80, "transport_protocol": "tls"}, {"transport_protocol": "tls", "destination_port": 80}],
        [{"prefix_ranges": [{"address_prefix": "10.0.0.1", "prefix_len": 8}]},
         {"prefix_ranges": [{"address_prefix": "10.9.9.9", "prefix_len": 8}]}],
    ],
)
def test_two_chains_for_the_same_connections_are_refused(matches: list[dict[str, Any] | None]) -> None:
    with pytest.raises(DuplicateMatch) as caught:
        selector(*matches)
    assert (caught.value.index, caught.value.previous) == (1, 0)


@pytest.mark.parametrize(
    ("matches", "identical"),
    [
        ([{}, None], True),
        ([{"server_names": ["a", "b"]}, {"server_names": ["b", "a"]}], True),
        ([{"server_names": ["a", "b"]}, {"server_names": ["b"]}], False),
        ([{"server_names": ["A.example"]}, {"server_names": ["a.example"]}], True),
    ],
)
def test_same_rules_are_told_from_overlapping_ones(matches: list[dict[str, Any] | None], identical: bool) -> None:
    with pytest.raises(DuplicateMatch) as caught:
        selector(*matches)
    assert caught.value.identical is identical


@pytest.mark.parametrize("match", [{"server_names": ["a", "a"]}, {"source_ports": [80, 80]},
                                   {"application_protocols": ["h2", "h2"]}])
def test_a_value_listed_twice_overlaps_its_own_chain(match: dict[str, Any]) -> None:
    with pytest.raises(DuplicateMatch) as caught:
        selector(match)
    assert (caught.value.index, caught.value.previous, caught.value.identical) == (0, 0, False)


def test_an_ipv4_prefix_longer_than_32_means_32() -> None:
    chains = selector({"prefix_ranges": [{"address_prefix": "127.0.0.2", "prefix_len": 33}]}, {})
    assert chains.select(facts(dst="127.0.0.2")) == 0 and chains.select(facts(dst="127.0.0.3")) == 1


def test_overlapping_but_distinct_chains_are_fine() -> None:
    selector({"server_names": ["a"]}, {"server_names": ["a"], "transport_protocol": "tls"}, {"destination_port": 1})
