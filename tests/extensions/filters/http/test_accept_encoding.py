"""The compressor filters' shared choice of encoding from Accept-Encoding (sans-IO), Envoy's rules case by case."""

from __future__ import annotations

import pytest

from pylon.extensions.filters.http.accept_encoding import (
    IDENTITY_KIND, NOT_VALID, VALID, WILDCARD_KIND, Candidate, Decision, choose, parse,
)

TEXT = frozenset({"text/plain", "text/html"})
JSON = frozenset({"application/json"})
GZIP = Candidate("gzip", TEXT, False)
BR = Candidate("br", TEXT, False)
BR_FIRST = Candidate("br", TEXT, True)
ZSTD_JSON = Candidate("zstd", JSON, False)


@pytest.mark.parametrize(("header", "pairs"), [
    ("gzip", [("gzip", 1.0)]),
    (" gzip ;q=0.5, br;Q=0.25 ,,deflate", [("gzip", 0.5), ("br", 0.25), ("deflate", 1.0)]),
    ("gzip;q=abc, br", [("br", 1.0)]),  # an unreadable q drops its token
    ("gzip;q=1_0", []),  # not a number to absl either (Python's float() would take it)
    ("gzip;level=1", [("gzip", 1.0)]),  # another parameter: q stays 1
    ("gzip;q=.5e1", [("gzip", 5.0)]),
    ("", []),
])  # fmt: skip
def test_parse(header: str, pairs: list[tuple[str, float]]) -> None:
    assert parse(header) == pairs


@pytest.mark.parametrize(("header", "content_type", "chain", "decision"), [
    ("gzip", "text/plain", [GZIP], Decision("gzip", VALID)),
    ("br, gzip", "text/plain", [GZIP, BR], Decision("br", VALID)),  # a tie: the first token
    ("gzip, br", "text/plain", [GZIP, BR_FIRST], Decision("br", VALID)),  # unless the later's filter chooses first
    ("br;q=0.2, gzip;q=0.3", "text/plain", [BR, GZIP], Decision("gzip", VALID)),
    ("*", "text/plain", [GZIP, BR], Decision("gzip", WILDCARD_KIND)),  # the first registered
    ("*", "text/plain", [BR, GZIP, GZIP], Decision("br", WILDCARD_KIND)),
    ("*, *", "text/plain", [GZIP], Decision("gzip", WILDCARD_KIND)),
    ("gzip;q=0, *", "text/plain", [GZIP, BR], Decision("br", WILDCARD_KIND)),
    ("gzip;q=0", "text/plain", [GZIP], Decision("identity", NOT_VALID)),
    ("identity", "text/plain", [GZIP], Decision("identity", IDENTITY_KIND)),
    ("identity;q=0.5, gzip;q=0.4", "text/plain", [GZIP], Decision("identity", IDENTITY_KIND)),
    ("deflate", "text/plain", [GZIP], Decision("identity", NOT_VALID)),
    ("", "text/plain", [GZIP], Decision("identity", NOT_VALID)),
    ("zstd", "text/plain", [GZIP, ZSTD_JSON], Decision("identity", NOT_VALID)),  # zstd does not take text
    ("zstd", "Application/JSON; charset=utf-8", [GZIP, ZSTD_JSON], Decision("zstd", VALID)),
    ("zstd", None, [GZIP, ZSTD_JSON], Decision("zstd", VALID)),  # no content-type: every filter takes part
    ("gzip;q=nan", "text/plain", [GZIP], Decision("identity", NOT_VALID)),
])  # fmt: skip
def test_choose(header: str, content_type: str | None, chain: list[Candidate], decision: Decision) -> None:
    assert choose(header, content_type, chain) == decision
