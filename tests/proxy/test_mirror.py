"""proxy/mirror.py's sans-IO parts: the shadow's Host and headers as Envoy 1.40 makes them."""

from __future__ import annotations

import pytest

from pylon.proxy.mirror import SHADOW_XFF, shadow_headers, shadow_host, shadow_tail


@pytest.mark.parametrize(("authority", "shadow"), [
    (b"example.com", b"example.com-shadow"),
    (b"example.com:8080", b"example.com-shadow:8080"),
    (b"10.0.0.1:80", b"10.0.0.1-shadow:80"),
    (b"[::1]:8080", b"[::1]-shadow:8080"),
    (b"[::1]", b"[::1]-shadow"),
])
def test_shadow_host_goes_before_the_port(authority: bytes, shadow: bytes) -> None:
    assert shadow_host(authority) == shadow


def test_shadow_headers_extend_x_forwarded_for_in_place() -> None:
    forward = [(b"a", b"1"), (b"x-forwarded-for", b"10.1.1.1"), (b"b", b"2")]
    assert shadow_headers(forward, None) == (
        [(b"a", b"1"), (b"x-forwarded-for", b"10.1.1.1," + SHADOW_XFF), (b"b", b"2")], True)
    assert shadow_tail(b"x-envoy-expected-rq-timeout-ms: 15000\r\n", True) == (
        b"x-envoy-expected-rq-timeout-ms: 15000\r\nx-envoy-internal: true\r\n")


def test_shadow_headers_without_x_forwarded_for_add_it_last() -> None:
    assert shadow_headers([(b"a", b"1")], None) == ([(b"a", b"1")], False)
    assert shadow_tail(None, False) == b"x-envoy-internal: true\r\nx-forwarded-for: 192.0.2.2\r\n"


def test_trace_sampled_sets_the_propagated_decision() -> None:
    forward = [(b"traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"), (b"x-b3-sampled", b"1"),
               (b"b3", b"t-s-1-p"), (b"other", b"01")]
    unsampled, _ = shadow_headers(forward, False)
    assert unsampled == [(b"traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-00"), (b"x-b3-sampled", b"0"),
                         (b"b3", b"t-s-0-p"), (b"other", b"01")]
    sampled, _ = shadow_headers(unsampled, True)
    assert sampled == forward
    assert shadow_headers(forward, None)[0] == forward
