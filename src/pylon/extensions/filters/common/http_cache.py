"""HTTP caching as Envoy's cache filters decide it (the RFC 9111 subset they implement), and the in-memory store
(sans-IO).

Read from Envoy's cache filter (cacheability_utils.cc, cache_headers_utils.cc, http_cache.cc, range_utils.cc,
cache_entry_utils.cc) and checked beside Envoy 1.40 (tests/proxy/test_proxy_http_cache.py):

- A request may be served from the cache when it is a GET or HEAD without a body, `authorization`, or the
  conditional headers if-none-match, if-modified-since and if-range (those go upstream as they are).
- A response is stored when its status is one of Envoy's cacheable codes, it has no `no-store` or `private`, it
  says how long it stays fresh (`no-cache`, `max-age`/`s-maxage`, or both `expires` and `date`), any `vary` names
  only allowed headers (never `*`), the request did not say `no-store`, and the request was not a HEAD.
- A stored response's age is RFC 9111's: the larger of `now - date` at arrival and its `age` header, plus its
  time in the cache. It is served as it is (with that `age`) while fresh; it must be validated upstream when
  the response said `no-cache`, the request said `no-cache` (or `pragma: no-cache` without cache-control) or its
  `max-age` is below the age, or it is stale (unless the request's `max-stale` allows it and the response did
  not say must-revalidate/proxy-revalidate), or the request's `min-fresh` is not met.
- Validation sends `if-none-match` (the stored etag) and `if-modified-since` (its last-modified, else its date);
  a 304 updates the stored headers (but content-length, content-range, etag and vary) when its etag is the
  stored one or it has none, and the client gets the stored response with the 304's headers over it.
- One byte range (`range: bytes=a-b`, `a-`, `-n`) is served from a stored response as 206 with content-range, or
  416 when nothing of it is inside the body; more than one range, or a malformed one, gets the whole response.
- `vary`: the stored response is keyed further by the varied request headers' values (all values of each, in
  header-name order), which must all be allowed.

The store: Envoy's simple cache keeps everything for ever; pylon's holds at most `max_entries` responses and
`max_bytes` of bodies, dropping the least recently used (a departure, so memory stays bounded).
"""

from __future__ import annotations

import calendar
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from email.utils import parsedate_tz
from typing import NamedTuple

Headers = list[tuple[bytes, bytes]]

CACHEABLE_STATUS = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 451, 501})
_CONDITIONAL = (b"if-none-match", b"if-modified-since", b"if-range")
#: what a 304 never changes in a stored response
_NOT_UPDATED = frozenset({b"content-range", b"content-length", b"etag", b"vary"})


def header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def joined(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """All values of `name` joined with ",", as Envoy keeps an inline header (cache-control, pragma) that repeats."""
    values = [value for key, value in headers if key == name]
    return b",".join(values) if values else None


def _seconds(argument: str) -> int | None:
    if len(argument) > 1 and argument[0] == argument[-1] == '"':
        argument = argument[1:-1]
    return int(argument) if argument.isdigit() else None


def _directives(value: bytes | None) -> list[tuple[str, str]]:
    if not value:
        return []
    out = []
    for part in value.decode("latin-1").split(","):
        directive, _, argument = part.strip().partition("=")
        out.append((directive, argument))
    return out


class RequestCacheControl(NamedTuple):
    must_validate: bool = False
    no_store: bool = False
    max_age: int | None = None
    min_fresh: int | None = None
    max_stale: float | None = None  # inf: any staleness

    @classmethod
    def of(cls, headers: Sequence[tuple[bytes, bytes]]) -> RequestCacheControl:
        """The request's cache-control, else only `pragma: no-cache` (Envoy reads pragma only without it)."""
        value = joined(headers, b"cache-control")
        if not value:
            pragma = joined(headers, b"pragma")
            return cls(must_validate=any(d == "no-cache" for d, _ in _directives(pragma)))
        fields: dict[str, object] = {}
        for directive, argument in _directives(value):
            if directive == "no-cache":
                fields["must_validate"] = True
            elif directive == "no-store":
                fields["no_store"] = True
            elif directive == "max-age":
                fields["max_age"] = _seconds(argument)
            elif directive == "min-fresh":
                fields["min_fresh"] = _seconds(argument)
            elif directive == "max-stale":
                fields["max_stale"] = float("inf") if not argument else _seconds(argument)
        return cls(**fields)  # type: ignore[arg-type]


class ResponseCacheControl(NamedTuple):
    must_validate: bool = False
    no_stale: bool = False
    no_store: bool = False
    max_age: int | None = None

    @classmethod
    def of(cls, headers: Sequence[tuple[bytes, bytes]]) -> ResponseCacheControl:
        must_validate = no_stale = no_store = False
        max_age: int | None = None
        s_maxage = False
        for directive, argument in _directives(joined(headers, b"cache-control")):
            if directive == "no-cache":
                must_validate = True
            elif directive in ("must-revalidate", "proxy-revalidate"):
                no_stale = True
            elif directive in ("no-store", "private"):
                no_store = True
            elif directive == "s-maxage":
                max_age, s_maxage = _seconds(argument), True
            elif directive == "max-age" and not s_maxage and max_age is None:
                max_age = _seconds(argument)
        return cls(must_validate, no_stale, no_store, max_age)


def http_time(value: bytes | None) -> float | None:
    """An HTTP date (IMF-fixdate, RFC 850, asctime) as a POSIX time, None when absent or not a date."""
    if not value:
        return None
    parsed = parsedate_tz(value.decode("latin-1"))
    if parsed is None:
        return None
    return float(calendar.timegm(parsed[:9])) - (parsed[9] or 0)


def can_serve_from_cache(method: bytes, headers: Sequence[tuple[bytes, bytes]], has_body: bool) -> bool:
    """Envoy's canServeRequestFromCache (and its decodeHeaders' end_stream): may a lookup answer this request?"""
    if has_body or method not in (b"GET", b"HEAD"):
        return False
    return not any(name in _CONDITIONAL or name == b"authorization" for name, _ in headers)


def vary_names(headers: Sequence[tuple[bytes, bytes]]) -> list[bytes] | None:
    """The header names a response varies on (sorted, deduplicated), None when it does not vary."""
    values = [value for name, value in headers if name == b"vary"]
    if not values or not values[0]:
        return None
    names = {token.strip().lower() for value in values for token in value.split(b",") if token.strip()}
    return sorted(names)


def is_cacheable_response(status: int, headers: Sequence[tuple[bytes, bytes]],
                          vary_allowed: Callable[[bytes], bool]) -> bool:
    control = ResponseCacheControl.of(headers)
    has_freshness = control.must_validate or control.max_age is not None or (
        header(headers, b"date") is not None and header(headers, b"expires") is not None)
    if control.no_store or status not in CACHEABLE_STATUS or not has_freshness:
        return False
    names = vary_names(headers)
    return names is None or all(name != b"*" and vary_allowed(name) for name in names)


def vary_identifier(names: Sequence[bytes], vary_allowed: Callable[[bytes], bool],
                    request: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """What tells apart the stored variants: each varied header's values joined; None if one is not allowed."""
    parts = [b"vary-id\n"]
    for name in names:
        if not vary_allowed(name):
            return None
        values = [value for key, value in request if key == name]
        parts.append(name + b"\r" + b"\r".join(values) + b"\n")
    return b"".join(parts)


def age_of(headers: Sequence[tuple[bytes, bytes]], response_time: float, now: float) -> int:
    """RFC 9111's current age, in whole seconds."""
    date = http_time(header(headers, b"date"))
    apparent = max(0.0, response_time - date) if date is not None else max(0.0, response_time)
    age = header(headers, b"age")
    corrected = int(age) if age is not None and age.isdigit() else 0
    return int(max(apparent, corrected) + (now - response_time))


def requires_validation(request: RequestCacheControl, headers: Sequence[tuple[bytes, bytes]], age: int) -> bool:
    """Envoy's LookupRequest::requiresValidation."""
    response = ResponseCacheControl.of(headers)
    if response.must_validate or request.must_validate or (request.max_age is not None and request.max_age < age):
        return True
    if response.max_age is not None:
        lifetime = float(response.max_age)
    else:
        expires, date = http_time(header(headers, b"expires")), http_time(header(headers, b"date"))
        lifetime = (expires or 0.0) - (date or 0.0)
    if age > lifetime:
        allowed_stale = request.max_stale is not None and request.max_stale > age - lifetime
        return response.no_stale or not allowed_stale
    return request.min_fresh is not None and request.min_fresh > lifetime - age


class Ranges(NamedTuple):
    satisfiable: bool
    ranges: tuple[tuple[int, int], ...]  # [begin, end) each; empty and satisfiable: the whole body


def byte_ranges(request: Sequence[tuple[bytes, bytes]], length: int) -> Ranges | None:
    """The request's one `range` header against a body of `length`, as Envoy's RangeUtils (one range at most);
    None without a usable one (the whole response is served)."""
    values = [value for name, value in request if name == b"range"]
    if len(values) != 1 or not values[0].startswith(b"bytes="):
        return None
    specs = values[0][6:].split(b",")
    if len(specs) > 1:
        return None
    first_text, dash, last_text = specs[0].partition(b"-")
    if not dash or (first_text and not first_text.isdigit()) or (last_text and not last_text.isdigit()) or (
            not first_text and not last_text):
        return None
    first = int(first_text) if first_text else None
    last = int(last_text) if last_text else None
    if first is not None and last is not None and first > last:
        return None
    if length == 0:
        return Ranges(False, ())
    if first is None:  # a suffix: the last `last` bytes
        assert last is not None
        if last == 0:
            return Ranges(False, ())
        if last >= length:
            return Ranges(True, ())
        return Ranges(True, ((length - last, length),))
    if first >= length:
        return Ranges(False, ())
    if last is None or last >= length - 1:
        return Ranges(True, ()) if first == 0 else Ranges(True, ((first, length),))
    return Ranges(True, ((first, last + 1),))


def set_header(headers: Headers, name: bytes, value: bytes) -> None:
    """Replace the first `name` in place (the others dropped), or append it: Envoy's setCopy/setInline."""
    for i, (key, _) in enumerate(headers):
        if key == name:
            headers[i] = (name, value)
            headers[i + 1:] = [pair for pair in headers[i + 1:] if pair[0] != name]
            return
    headers.append((name, value))


def updated_headers(stored: Headers, fresh: Sequence[tuple[bytes, bytes]]) -> Headers:
    """Envoy's applyHeaderUpdate: each header of a 304 replaces the stored ones of its name (repeats added)."""
    out = list(stored)
    seen: set[bytes] = set()
    for name, value in fresh:
        if name in _NOT_UPDATED:
            continue
        if name in seen:
            out.append((name, value))
        else:
            seen.add(name)
            set_header(out, name, value)
    return out


def validated_response(stored: Headers, not_modified: Sequence[tuple[bytes, bytes]]) -> Headers:
    """What the client gets after a 304: the 304's headers (but its content-length), then each stored header
    whose name the 304 does not have (the stored age left out), as Envoy's processSuccessfulValidation."""
    out = [pair for pair in not_modified if pair[0] != b"content-length"]
    present = {name for name, _ in out}
    out += [pair for pair in stored if pair[0] not in present and pair[0] != b"age"]
    return out


class Entry:
    """One stored response."""

    __slots__ = ("status", "headers", "body", "response_time")

    def __init__(self, status: int, headers: Headers, body: bytes, response_time: float) -> None:
        self.status, self.headers, self.body, self.response_time = status, headers, body, response_time


Key = tuple[bytes, bytes, bytes]  # (scheme, host, path)


class SimpleCache:
    """The in-memory store: a key's entry, or for a response that varies, its vary marker (the response's
    headers) at the key and each variant at (key, vary identifier)."""

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 256 << 20,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_entries, self.max_bytes, self.clock = max_entries, max_bytes, clock
        self._entries: OrderedDict[object, Entry] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: Key, request: Sequence[tuple[bytes, bytes]],
               vary_allowed: Callable[[bytes], bool]) -> tuple[Entry | None, object]:
        """(the stored entry for this request or None, the key it is (or would be) stored under)."""
        entry = self._entries.get(key)
        if entry is None:
            return None, key
        names = vary_names(entry.headers)
        if names is None:
            self._entries.move_to_end(key)
            return entry, key
        identifier = vary_identifier(names, vary_allowed, request)
        if identifier is None:
            return None, None
        varied = (key, identifier)
        entry = self._entries.get(varied)
        if entry is not None:
            self._entries.move_to_end(varied)
        return entry, varied

    def insert(self, key: Key, request: Sequence[tuple[bytes, bytes]], vary_allowed: Callable[[bytes], bool],
               entry: Entry) -> bool:
        names = vary_names(entry.headers)
        if names is None:
            self._put(key, entry)
            return True
        identifier = vary_identifier(names, vary_allowed, request)
        if identifier is None:
            return False
        self._put(key, Entry(entry.status, entry.headers, b"", entry.response_time))  # the vary marker
        self._put((key, identifier), entry)
        return True

    def _put(self, key: object, entry: Entry) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old.body)
        self._entries[key] = entry
        self._bytes += len(entry.body)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= len(dropped.body)
