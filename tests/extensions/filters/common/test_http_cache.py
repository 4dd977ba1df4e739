"""filters/common/http_cache.py: Envoy's caching decisions and the bounded in-memory store (sans-IO)."""

from __future__ import annotations

from email.utils import formatdate

from pylon.extensions.filters.common import http_cache as hc

NOW = 1_800_000_000.0
DATE = formatdate(NOW, usegmt=True).encode()


def allowed(name: bytes) -> bool:
    return name == b"accept-language"


def test_which_requests_a_lookup_may_answer() -> None:
    assert hc.can_serve_from_cache(b"GET", [(b"accept", b"*/*")], False)
    assert hc.can_serve_from_cache(b"HEAD", [], False)
    assert not hc.can_serve_from_cache(b"POST", [], False)
    assert not hc.can_serve_from_cache(b"GET", [], True)
    for name in (b"authorization", b"if-none-match", b"if-modified-since", b"if-range"):
        assert not hc.can_serve_from_cache(b"GET", [(name, b"x")], False)
    assert hc.can_serve_from_cache(b"GET", [(b"if-match", b"x"), (b"if-unmodified-since", DATE)], False)


def test_which_responses_are_stored() -> None:
    assert hc.is_cacheable_response(200, [(b"cache-control", b"max-age=10")], allowed)
    assert hc.is_cacheable_response(404, [(b"cache-control", b"no-cache")], allowed)
    assert hc.is_cacheable_response(200, [(b"date", DATE), (b"expires", DATE)], allowed)
    assert not hc.is_cacheable_response(200, [(b"expires", DATE)], allowed)  # expires needs a date
    assert not hc.is_cacheable_response(302, [(b"cache-control", b"max-age=10")], allowed)
    for control in (b"no-store", b"private, max-age=10", b"public"):
        assert not hc.is_cacheable_response(200, [(b"cache-control", control)], allowed)
    varies = [(b"cache-control", b"max-age=10"), (b"vary", b"Accept-Language")]
    assert hc.is_cacheable_response(200, varies, allowed)
    assert not hc.is_cacheable_response(200, [*varies, (b"vary", b"*")], allowed)
    assert not hc.is_cacheable_response(200, [(b"cache-control", b"max-age=10"), (b"vary", b"x-other")], allowed)


def test_age_and_freshness() -> None:
    headers = [(b"date", formatdate(NOW - 3, usegmt=True).encode()), (b"cache-control", b"max-age=10")]
    assert hc.age_of(headers, NOW, NOW + 2) == 5  # 3 s old on arrival, 2 s in the cache
    assert hc.age_of([*headers, (b"age", b"7")], NOW, NOW) == 7  # the larger of the two
    request = hc.RequestCacheControl.of
    assert not hc.requires_validation(request([]), headers, 10)  # not more than max-age
    assert hc.requires_validation(request([]), headers, 11)
    assert not hc.requires_validation(request([(b"cache-control", b"max-stale=5")]), headers, 14)
    assert not hc.requires_validation(request([(b"cache-control", b"max-stale")]), headers, 1000)
    assert hc.requires_validation(request([(b"cache-control", b"max-stale")]),
                                  [*headers, (b"cache-control", b"must-revalidate")], 11)
    assert hc.requires_validation(request([(b"cache-control", b"min-fresh=5")]), headers, 6)
    assert hc.requires_validation(request([(b"cache-control", b"max-age=2")]), headers, 3)
    assert hc.requires_validation(request([(b"pragma", b"no-cache")]), headers, 0)
    assert not hc.requires_validation(request([(b"cache-control", b"max-age=5"), (b"pragma", b"no-cache")]),
                                      headers, 0)  # pragma only counts without cache-control
    assert hc.ResponseCacheControl.of([(b"cache-control", b"max-age=1, s-maxage=9")]).max_age == 9


def test_byte_ranges_as_envoy_reads_them() -> None:
    def ranges(value: bytes, length: int = 10) -> hc.Ranges | None:
        return hc.byte_ranges([(b"range", value)], length)
    assert ranges(b"bytes=2-4") == hc.Ranges(True, ((2, 5),))
    assert ranges(b"bytes=2-") == hc.Ranges(True, ((2, 10),))
    assert ranges(b"bytes=0-") == hc.Ranges(True, ())  # the whole body: a plain 200
    assert ranges(b"bytes=-3") == hc.Ranges(True, ((7, 10),))
    assert ranges(b"bytes=-30") == hc.Ranges(True, ())
    assert ranges(b"bytes=10-") == hc.Ranges(False, ())
    assert ranges(b"bytes=-0") == hc.Ranges(False, ())
    for malformed in (b"bytes=0-1,3-4", b"bytes=4-2", b"items=0-1", b"bytes=-", b"bytes=a-1"):
        assert ranges(malformed) is None


def test_a_304_updates_the_stored_headers_but_not_the_body_describing_ones() -> None:
    stored = [(b"etag", b'"a"'), (b"content-length", b"5"), (b"x-a", b"1"), (b"x-a", b"2"), (b"age", b"3")]
    fresh = [(b"etag", b'"b"'), (b"content-length", b"0"), (b"x-a", b"9"), (b"x-new", b"y")]
    assert hc.updated_headers(stored, fresh) == [
        (b"etag", b'"a"'), (b"content-length", b"5"), (b"x-a", b"9"), (b"age", b"3"), (b"x-new", b"y")]
    assert hc.validated_response(stored, fresh) == [
        (b"etag", b'"b"'), (b"x-a", b"9"), (b"x-new", b"y"), (b"content-length", b"5")]


def test_variants_and_the_store_bound() -> None:
    store = hc.SimpleCache(max_entries=3, max_bytes=100)
    key = (b"http", b"h", b"/v")
    varied = [(b"cache-control", b"max-age=10"), (b"vary", b"accept-language")]
    english, french = [(b"accept-language", b"en")], [(b"accept-language", b"fr")]
    assert store.insert(key, english, allowed, hc.Entry(200, varied, b"en", NOW))
    assert store.insert(key, french, allowed, hc.Entry(200, varied, b"fr", NOW))
    assert store.lookup(key, english, allowed)[0].body == b"en"  # type: ignore[union-attr]
    assert store.lookup(key, french, allowed)[0].body == b"fr"  # type: ignore[union-attr]
    assert store.lookup(key, [], allowed)[0] is None
    store.insert((b"http", b"h", b"/big"), [], allowed, hc.Entry(200, [], b"x" * 99, NOW))
    assert len(store) <= 3 and store.lookup((b"http", b"h", b"/big"), [], allowed)[0] is not None
    assert store.lookup(key, english, allowed)[0] is None  # the least recently used went first
