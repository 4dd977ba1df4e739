"""auto_sni's reading of a request's host (sans-IO): Envoy's authority parsing, the override header, the pool key."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pylon.config.envoy import AutoSniOptions, Cluster, convert
from pylon.proxy.upstream.auto_sni import AutoSni, UpstreamName, split_authority


@pytest.mark.parametrize(("authority", "expected"), [
    ("a.example.com", ("a.example.com", False)),
    ("a.example.com:8443", ("a.example.com", False)),
    ("a.example.com:", ("a.example.com:", False)),
    ("a.example.com:99999", ("a.example.com:99999", False)),
    ("127.0.0.1", ("127.0.0.1", True)),
    ("127.0.0.1:80", ("127.0.0.1", True)),
    ("[::1]", ("::1", True)),
    ("[::1]:443", ("::1", True)),
    ("::1", (":", False)),  # unbracketed: the last colon starts a port, as Envoy reads it
    ("", ("", False)),
])  # fmt: skip
def test_split_authority(authority: str, expected: tuple[str, bool]) -> None:
    assert split_authority(authority) == expected


def request(authority: bytes, *headers: tuple[bytes, bytes], rewrite: bytes | None = None) -> Any:
    return SimpleNamespace(route=SimpleNamespace(host_rewrite=rewrite), authority=authority, headers=list(headers))


def auto(**options: Any) -> AutoSni:
    return AutoSni(convert(options, AutoSniOptions))


def test_names_from_the_host_the_rewrite_and_the_override_header() -> None:
    both = auto(auto_sni=True, auto_san_validation=True)
    assert both.name_for(request(b"A.example.com:80")) == UpstreamName("A.example.com", "A.example.com")
    assert both.name_for(request(b"a.example.com", rewrite=b"r.example.com")) == UpstreamName("r.example.com",
                                                                                            "r.example.com")
    assert both.name_for(request(b"10.0.0.1")) == UpstreamName(None, "10.0.0.1")  # no SNI for an IP, still a SAN
    sni_only = auto(auto_sni=True, override_auto_sni_header="X-SNI")
    assert sni_only.name_for(request(b"a", (b"x-sni", b"o.example:1"))) == UpstreamName("o.example", None)
    assert sni_only.name_for(request(b"a", (b"x-sni", b"p"), (b"x-sni", b"q"))) == UpstreamName("p,q", None)
    assert sni_only.name_for(request(b"a", (b"x-sni", b""))) == UpstreamName("a", None)


def test_the_pool_key_ignores_case_as_envoys_hash() -> None:
    assert UpstreamName("A.Example.com", None).key == UpstreamName("a.example.com", None).key


def test_only_clusters_that_set_the_options_have_an_auto_sni() -> None:
    assert AutoSni.of(convert({"name": "c"}, Cluster)) is None
    assert AutoSni.of(convert({"name": "c", "upstream_http_protocol_options": {}}, Cluster)) is None
    assert AutoSni.of(convert({"name": "c", "upstream_http_protocol_options": {"auto_san_validation": True}},
                              Cluster)) is not None
