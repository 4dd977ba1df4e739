"""Integration: envoy.filters.http.compressor and envoy.filters.http.decompressor through pylon and Envoy alike.

One proxy, five listeners, the same requests through pylon and Envoy 1.40 (each expectation was first observed
there): `gz` (gzip with response_direction_config, a route that disables it and one that strips the request's
Accept-Encoding), `etag` (the published examples' shape: min length 100, JSON only, disable_on_etag_header),
`multi` (brotli, gzip with choose_first, and JSON-only zstd in one chain, configured with the deprecated
top-level fields), `req` (request compression only) and `dec` (the gzip decompressor, requests and advertising).
Compared: status, content-encoding, vary, content-length, ETag, which responses stay uncompressed, what the
upstream sees, the stats; bodies are decompressed with the real libraries (and by curl --compressed).
"""

from __future__ import annotations

import gzip
import http.client
import shutil
import subprocess
import zlib
from collections.abc import Iterator
from typing import Any

import brotli
import pytest
import zstandard

from tests.conftest import free_port
from tests.proxy.compression_upstream import CompressionUpstream, text
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster

COMPRESSOR_TYPE = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor"
PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute"
DECOMPRESSOR_TYPE = "type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
LIBRARIES = {"gzip": "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip",
             "br": "type.googleapis.com/envoy.extensions.compression.brotli.compressor.v3.Brotli",
             "zstd": "type.googleapis.com/envoy.extensions.compression.zstd.compressor.v3.Zstd"}
GZIP_DECOMPRESSOR = "type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip"
FILTER = "envoy.filters.http.compressor"


def compressor(library: str, name: str, filter_name: str = FILTER, **fields: Any) -> dict[str, Any]:
    return {"name": filter_name, "typed_config": {
        "@type": COMPRESSOR_TYPE, "compressor_library": {"name": name, "typed_config": {"@type": LIBRARIES[library]}},
        **fields}}


def listener(name: str, port: int, filters: list[dict[str, Any]], routes: list[dict[str, Any]] | None = None
             ) -> dict[str, Any]:
    config = http_listener(name, port, routes or [route("/", "up")])
    config["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = [*filters, ROUTER]
    return config


def per_route(prefix: str, **config: Any) -> dict[str, Any]:
    return {**route(prefix, "up"), "typed_per_filter_config": {FILTER: {"@type": PER_ROUTE_TYPE, **config}}}


def listeners(ports: dict[str, int]) -> list[dict[str, Any]]:
    return [
        listener("gz", ports["gz"], [compressor("gzip", "text", response_direction_config={})], [
            per_route("/off", disabled=True),
            per_route("/strip", overrides={"response_direction_config": {"remove_accept_encoding_header": True}}),
            route("/", "up")]),
        listener("etag", ports["etag"], [compressor("gzip", "json", response_direction_config={
            "common_config": {"min_content_length": 100, "content_type": ["application/json"]},
            "disable_on_etag_header": True})]),
        listener("multi", ports["multi"], [
            compressor("br", "b", "br"), compressor("gzip", "g", "gz", choose_first=True),
            compressor("zstd", "z", "zs", content_type=["application/json"])]),
        listener("req", ports["req"], [compressor("gzip", "up", request_direction_config={}, response_direction_config={
            "common_config": {"enabled": {"default_value": False, "runtime_key": "response_compressor_enabled"}}})]),
        listener("dec", ports["dec"], [{"name": "envoy.filters.http.decompressor", "typed_config": {
            "@type": DECOMPRESSOR_TYPE,
            "decompressor_library": {"name": "upload", "typed_config": {"@type": GZIP_DECOMPRESSOR,
                                                                         "window_bits": 15}}}}]),
    ]


class Reply:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.header_list, self.body = status, headers, body
        self.headers = {name: value for name, value in headers}

    def get(self, name: str) -> str | None:
        return self.headers.get(name)


class Compression:
    def __init__(self, proxy: RunningProxy, ports: dict[str, int], upstream: CompressionUpstream) -> None:
        self.proxy, self.ports, self.upstream = proxy, ports, upstream

    def ask(self, path: str, accept: str | None = "gzip", listener: str = "gz", method: str = "GET",
            body: bytes | None = None, **headers: str) -> Reply:
        """The raw reply (http.client does not decode content-encoding; chunking is undone)."""
        sent = {name.replace("_", "-"): value for name, value in headers.items()}
        if accept is not None:
            sent["accept-encoding"] = accept
        if body is not None:
            sent["content-length"] = str(len(body))
        conn = http.client.HTTPConnection("127.0.0.1", self.ports[listener], timeout=5)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in sent.items():
                conn.putheader(name, value)
            conn.endheaders(body)
            response = conn.getresponse()
            data = response.read()
            return Reply(response.status, [(k.lower(), v) for k, v in response.getheaders()], data)
        finally:
            conn.close()

    def stats(self, listener: str, kind: str = "compressor") -> dict[str, int]:
        prefix = f"http.{listener}.{kind}."
        return {k[len(prefix):]: v for k, v in self.proxy.stats().items() if k.startswith(prefix)}


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def comp(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compression]:
    implementation = request.param
    upstream = CompressionUpstream()
    launcher = ProxyLauncher(tmp_path_factory.mktemp(f"compressor-{implementation}"))
    try:
        ports = {name: free_port() for name in ("gz", "etag", "multi", "req", "dec")}
        proxy = launcher.start(listeners(ports), [static_cluster("up", [upstream.port])],
                               implementation=implementation)
        yield Compression(proxy, ports, upstream)
    finally:
        launcher.close()
        upstream.close()


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def test_gzip_response_is_compressed_and_decompresses_to_the_original(comp: Compression) -> None:
    reply = comp.ask("/text/5000?content-type=text/html")
    assert reply.status == 200
    assert (reply.get("content-encoding"), reply.get("vary"), reply.get("content-length"),
            reply.get("transfer-encoding")) == ("gzip", "Accept-Encoding", None, "chunked")
    assert gzip.decompress(reply.body) == text(5000)
    assert len(reply.body) < 500
    chunked = comp.ask("/text/20000?chunked=1&content-type=text/plain;charset=utf-8")
    assert chunked.get("content-encoding") == "gzip"
    assert gzip.decompress(chunked.body) == text(20000)


UNCOMPRESSED = [
    # (path, accept-encoding, method, expected content-encoding, expected vary)
    ("/text/2000?content-type=text/plain", None, "GET", None, "Accept-Encoding"),
    ("/text/2000?content-type=text/plain", "br", "GET", None, "Accept-Encoding"),
    ("/text/2000?content-type=text/plain", "identity", "GET", None, "Accept-Encoding"),
    ("/text/2000?content-type=text/plain", "gzip;q=0", "GET", None, "Accept-Encoding"),
    ("/text/2000?content-type=text/plain", "gzip", "HEAD", None, "Accept-Encoding"),
    ("/text/29?content-type=text/plain", "gzip", "GET", None, None),
    ("/text/2000?content-type=image/png", "gzip", "GET", None, None),
    ("/text/2000?content-type=text/plain&cache-control=public,%20no-transform", "gzip", "GET", None, None),
    ("/text/2000?content-type=text/plain&content-encoding=identity", "gzip", "GET", "identity", None),
    ("/off/text/2000?content-type=text/plain", "gzip", "GET", None, None),
]


@pytest.mark.parametrize("path, accept, method, encoding, vary", UNCOMPRESSED)
def test_responses_left_uncompressed(comp: Compression, path: str, accept: str | None, method: str,
                                     encoding: str | None, vary: str | None) -> None:
    reply = comp.ask(path, accept=accept, method=method)
    assert (reply.status, reply.get("content-encoding"), reply.get("vary")) == (200, encoding, vary)
    if method == "GET":
        assert reply.body == text(int(path.split("?")[0].rsplit("/", 1)[1]))
        assert reply.get("content-length") == str(len(reply.body))
    else:
        assert reply.get("content-length") == "2000"  # HEAD: the length the body would have, kept


def test_no_body_statuses(comp: Compression) -> None:
    for status in (204, 304):
        reply = comp.ask(f"/status/{status}?content-type=text/plain")
        assert (reply.status, reply.get("content-encoding"), reply.body) == (status, None, b"")
        assert reply.get("vary") == "Accept-Encoding"  # compressible all the same: Envoy marks it
    small = comp.ask("/status/404?content-type=text/plain")  # not only 200s are compressed
    assert small.get("content-encoding") == "gzip" and gzip.decompress(small.body) == text(200)


def test_vary_and_etag(comp: Compression) -> None:
    varied = comp.ask("/text/2000?content-type=text/plain&vary=origin")
    assert (varied.get("content-encoding"), varied.get("vary")) == ("gzip", "origin, Accept-Encoding")
    already = comp.ask("/text/2000?content-type=text/plain&vary=Origin,Accept-Encoding")
    assert already.get("vary") == "Origin,Accept-Encoding"
    other_case = comp.ask("/text/2000?content-type=text/plain&vary=accept-encoding")  # the token's case counts
    assert other_case.get("vary") == "accept-encoding, Accept-Encoding"
    strong = comp.ask('/text/2000?content-type=text/plain&etag="abc"')
    assert (strong.get("content-encoding"), strong.get("etag")) == ("gzip", None)  # no longer holds: dropped
    weak = comp.ask('/text/2000?content-type=text/plain&etag=W/"abc"')
    assert (weak.get("content-encoding"), weak.get("etag")) == ("gzip", 'W/"abc"')
    # disable_on_etag_header: any ETag keeps the body as it is
    json_etag = comp.ask('/text/2000?content-type=application/json&etag=W/"abc"', listener="etag")
    assert (json_etag.get("content-encoding"), json_etag.get("etag"), json_etag.get("vary")) == (
        None, 'W/"abc"', None)
    json_ok = comp.ask("/text/2000?content-type=application/json", listener="etag")
    assert json_ok.get("content-encoding") == "gzip"
    assert comp.ask("/text/2000?content-type=text/plain", listener="etag").get("content-encoding") is None
    assert comp.ask("/text/99?content-type=application/json", listener="etag").get("content-encoding") is None


def test_per_route_override_strips_accept_encoding(comp: Compression) -> None:
    before = len(comp.upstream.requests)
    comp.ask("/record", accept="gzip, br")
    comp.ask("/strip/record", accept="gzip, br")
    seen = [dict(r["headers"]).get("accept-encoding") for r in comp.upstream.requests[before:]]
    assert seen == ["gzip, br", None]


NEGOTIATION = [
    # (accept-encoding, content-type, the encoding the chain picks)
    ("gzip, br", "text/plain", "gzip"),
    ("br, gzip", "text/plain", "gzip"),  # a tie goes to a later coding whose filter says choose_first
    ("br;q=0.5, gzip;q=0.4", "text/plain", "br"),
    ("br;q=0.5, gzip;Q=0.6", "text/plain", "gzip"),
    ("*", "text/plain", "br"),  # the wildcard: the filter first in the chain
    ("*, *", "text/plain", "br"),
    ("gzip;q=0, *", "text/plain", "br"),
    ("br;q=0, gzip;q=0, *", "text/plain", None),
    ("zstd", "text/plain", None),  # zstd's filter takes JSON only
    ("zstd", "application/json", "zstd"),
    ("zstd, gzip;q=0.9", "application/json", "zstd"),
    ("identity, br;q=0.5", "text/plain", None),
    ("gzip;q=x, br", "text/plain", "br"),  # a q that is no number drops its coding
    ("GZIP", "text/plain", None),  # codings compare case-sensitively
    ("", "text/plain", None),
]


@pytest.mark.parametrize("accept, content_type, expected", NEGOTIATION)
def test_negotiation_across_three_compressor_filters(comp: Compression, accept: str, content_type: str,
                                                     expected: str | None) -> None:
    reply = comp.ask(f"/text/3000?content-type={content_type}", accept=accept, listener="multi")
    assert reply.get("content-encoding") == expected
    decoded = {None: lambda b: b, "gzip": gzip.decompress, "br": brotli.decompress,
               "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b)}[expected](reply.body)
    assert decoded == text(3000)


def test_stats(comp: Compression) -> None:
    before = comp.stats("gz")
    comp.ask("/text/2000?content-type=text/plain")  # compressed
    comp.ask("/text/2000?content-type=text/plain", accept=None)  # no_accept_header
    comp.ask("/text/2000?content-type=text/plain", accept="identity")  # header_identity
    comp.ask("/text/2000?content-type=text/plain", accept="br")  # header_not_valid
    comp.ask("/text/2000?content-type=text/plain", accept="*")  # header_wildcard, compressed
    comp.ask("/text/10?content-type=text/plain")  # content_length_too_small
    comp.ask("/text/2000?content-type=image/png")  # still asks the header: no filter of the chain takes PNG
    assert delta(before, comp.stats("gz")) == {
        "text.gzip.header_compressor_used": 1, "text.gzip.header_identity": 1, "text.gzip.header_not_valid": 2,
        "text.gzip.header_wildcard": 1, "text.gzip.no_accept_header": 1,
        "text.gzip.response.compressed": 2, "text.gzip.response.not_compressed": 5,
        "text.gzip.response.content_length_too_small": 1,
        "text.gzip.response.total_uncompressed_bytes": 4000,
        "text.gzip.response.total_compressed_bytes": delta(before, comp.stats("gz"))[
            "text.gzip.response.total_compressed_bytes"],
        "text.gzip.request.not_compressed": 7}
    before = comp.stats("multi")
    comp.ask("/text/2000?content-type=text/plain", accept="br, gzip", listener="multi")
    after = delta(before, comp.stats("multi"))
    assert {k: v for k, v in after.items() if "total_compressed" not in k} == {
        "b.brotli.header_compressor_overshadowed": 1, "g.gzip.header_compressor_used": 1,
        "z.zstd.header_compressor_overshadowed": 1,
        "b.brotli.not_compressed": 1, "g.gzip.compressed": 1, "z.zstd.not_compressed": 1,
        "g.gzip.total_uncompressed_bytes": 2000,
        "b.brotli.request.not_compressed": 1, "g.gzip.request.not_compressed": 1,
        "z.zstd.request.not_compressed": 1}
    before = comp.stats("etag")
    comp.ask('/text/2000?content-type=application/json&etag="x"', listener="etag")
    assert delta(before, comp.stats("etag")) == {"json.gzip.not_compressed_etag": 1,
                                                 "json.gzip.header_compressor_used": 1,
                                                 "json.gzip.response.not_compressed": 1,
                                                 "json.gzip.request.not_compressed": 1}


def test_request_compression(comp: Compression) -> None:
    before = len(comp.upstream.requests)
    reply = comp.ask("/record", listener="req", method="POST", body=text(3000), content_type="text/plain")
    small = comp.ask("/record", listener="req", method="POST", body=b"tiny", content_type="text/plain")
    assert (reply.status, small.status) == (200, 200)
    big, tiny = comp.upstream.requests[before:]
    headers = dict(big["headers"])
    assert (headers.get("content-encoding"), headers.get("content-length"), headers.get("transfer-encoding")) == (
        "gzip", None, "chunked")
    assert gzip.decompress(big["body"]) == text(3000)
    assert "content-encoding" not in dict(tiny["headers"]) and tiny["body"] == b"tiny"
    # response compression is off on this listener
    assert comp.ask("/text/2000?content-type=text/plain", listener="req").get("content-encoding") is None


def test_request_decompression_and_advertising(comp: Compression) -> None:
    before = len(comp.upstream.requests)
    stats_before = comp.stats("dec", "decompressor")
    packed = gzip.compress(text(4000))
    comp.ask("/record", accept="br", listener="dec", method="POST", body=packed, content_encoding="gzip",
             content_type="text/plain")
    comp.ask("/record", accept=None, listener="dec", method="POST", body=b"plain", content_type="text/plain")
    comp.ask("/record", accept=None, listener="dec")  # no body: advertised all the same
    first, second, third = comp.upstream.requests[before:]
    headers = dict(first["headers"])
    assert first["body"] == text(4000)
    assert (headers.get("content-encoding"), headers.get("content-length"), headers.get("accept-encoding")) == (
        None, None, "br,gzip")
    assert (second["body"], dict(second["headers"]).get("accept-encoding")) == (b"plain", "gzip")
    assert dict(third["headers"]).get("accept-encoding") == "gzip"
    assert delta(stats_before, comp.stats("dec", "decompressor")) == {
        "upload.gzip.request.decompressed": 1, "upload.gzip.request.not_decompressed": 1,
        "upload.gzip.request.total_compressed_bytes": len(packed),
        "upload.gzip.request.total_uncompressed_bytes": 4000,
        "upload.gzip.response.not_decompressed": 3}


def test_corrupt_input_and_a_decompression_bomb(comp: Compression) -> None:
    before = len(comp.upstream.requests)
    stats_before = comp.stats("dec", "decompressor")
    packed = gzip.compress(text(4000))
    corrupt = packed[:40] + b"\xff" * 30 + packed[70:]
    bomb = gzip.compress(b"\0" * 5_000_000)
    for body in (corrupt, bomb):
        reply = comp.ask("/record", accept=None, listener="dec", method="POST", body=body, content_encoding="gzip")
        assert reply.status == 200  # the request goes on, cut short
    seen = [len(r["body"]) for r in comp.upstream.requests[before:]]
    assert seen == [0, 120 * 4096]  # the first whole chunk past 100 times the input (4,892 bytes)
    assert delta(stats_before, comp.stats("dec", "decompressor")) == {
        "upload.gzip.decompressor_library.zlib_data_error": 2, "upload.gzip.request.decompressed": 2,
        "upload.gzip.request.total_compressed_bytes": len(corrupt) + len(bomb),
        "upload.gzip.request.total_uncompressed_bytes": 120 * 4096, "upload.gzip.response.not_decompressed": 2}


def test_response_decompression(comp: Compression) -> None:
    before = comp.stats("dec", "decompressor")
    reply = comp.ask("/text/5000?gzip=1&content-type=text/plain", accept=None, listener="dec")
    assert (reply.status, reply.body, reply.get("content-encoding"), reply.get("content-length")) == (
        200, text(5000), None, None)
    kept = comp.ask("/text/5000?gzip=1&content-type=text/plain&cache-control=no-transform", accept=None,
                    listener="dec")
    assert (kept.get("content-encoding"), gzip.decompress(kept.body)) == ("gzip", text(5000))
    stats = delta(before, comp.stats("dec", "decompressor"))
    assert {k: v for k, v in stats.items() if k.startswith("upload.gzip.response.")} == {
        "upload.gzip.response.decompressed": 1, "upload.gzip.response.not_decompressed": 1,
        "upload.gzip.response.total_compressed_bytes": len(gzip.compress(text(5000))),
        "upload.gzip.response.total_uncompressed_bytes": 5000}


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_compressed(comp: Compression) -> None:
    url = f"http://127.0.0.1:{comp.ports['multi']}/text/6000?content-type=text/css"
    out = subprocess.run(["curl", "-sS", "--compressed", "-D", "-", url], capture_output=True, timeout=10, check=True)
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    # curl asks for "deflate, gzip, br, zstd": gzip is the first the chain has, and brotli's filter lets it be
    assert b"content-encoding: gzip" in head.lower()
    assert body == text(6000)


def test_raw_gzip_stream_is_flushed_piece_by_piece(comp: Compression) -> None:
    reply = comp.ask("/text/20000?chunked=1&content-type=text/plain")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert inflater.decompress(reply.body) == text(20000) and inflater.eof
