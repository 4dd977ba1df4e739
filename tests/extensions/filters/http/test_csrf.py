"""The CSRF filter's origins (sans-IO): Envoy's host-and-port of an absolute URL, Origin before Referer."""

from __future__ import annotations

import pytest

from pylon.extensions.filters.http.csrf import host_and_port, source_origin


@pytest.mark.parametrize(("value", "expected"), [
    (b"http://site", b"site"), (b"https://site:8443/a/b?c#d", b"site:8443"), (b"http://user:pw@site/x", b"site"),
    (b"null", b"null"), (b"site", b"site"), (b"http://", b"http://"), (b"", b""),
])  # fmt: skip
def test_host_and_port(value: bytes, expected: bytes) -> None:
    assert host_and_port(value) == expected


def test_source_origin_prefers_origin_then_referer() -> None:
    assert source_origin([(b"origin", b"http://a"), (b"referer", b"http://b/x")]) == b"a"
    assert source_origin([(b"origin", b""), (b"referer", b"http://b/x")]) == b"b"
    assert source_origin([(b"referer", b"http://b:1/x")]) == b"b:1"
    assert source_origin([]) == b""
