"""Request path normalisation as Envoy's HCM does it (`normalize_path`, `merge_slashes`), sans-IO.

Routes often gate access by prefix (`/admin` denied, `/` allowed), so the path
the routes see must be the path the upstream will act on: `/public/../admin`
and `/public/%2e%2e/admin` must not slip past a rule on `/admin`. With
`normalize_path` the path is brought to RFC 3986 form before routing, and the
upstream gets that form too:

- percent-encoded unreserved characters are decoded (`%41` is `A`, `%2e` is `.`);
  other escapes stay as they are (`%2F` is kept: an encoded slash is data);
- a backslash is a slash;
- dot segments are removed (RFC 3986 5.2.4), never above the root, and leading
  slashes collapse to one;
- an encoded NUL is refused (400), as Envoy does.

`merge_slashes` then collapses runs of slashes. The query is never touched.

`path_with_escaped_slashes_action` comes first, as in Envoy: UNESCAPE_* turn
`%2F` and `%5C` (either case) into a slash and a backslash before normalisation — so
`/x/..%2F..%2Fadmin` routes as `/admin` — and REJECT_REQUEST refuses such a
path (400); the redirect variant answers 307 with the result.
The behaviour was checked case by case against Envoy 1.40 (tests/proxy).
"""

from __future__ import annotations

import re

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_SLASHES = re.compile(rb"//+")


class PathRejected(ValueError):
    """The path cannot be normalised (an encoded NUL): the request gets 400."""


def _decode_unreserved(match: re.Match[bytes]) -> bytes:
    value = int(match[1], 16)
    if value == 0:
        raise PathRejected("an encoded NUL in the path")
    return bytes((value,)) if value in _UNRESERVED else match[0]


def remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 5.2.4 on an absolute path: `/a/b/../c` is `/a/c`; `..` at the root stays at the root."""
    kept: list[bytes] = []
    ends_in_directory = False
    for segment in path.split(b"/")[1:]:
        if segment == b"..":
            if kept:
                kept.pop()
            ends_in_directory = True
        elif segment == b".":
            ends_in_directory = True
        else:
            kept.append(segment)
            ends_in_directory = False
    result = b"/" + b"/".join(kept)
    return result + b"/" if ends_in_directory and kept else result


def normalize(path: bytes) -> bytes:
    """The RFC 3986 form of an origin-form path (no query); PathRejected if it has none.

    Leading slashes collapse to one, as in Envoy: `//admin` would read as an authority
    to a URL parser, and `/x/..//admin` must route as `/admin`.
    """
    if b"%" in path:
        path = _ESCAPE.sub(_decode_unreserved, path)
    return b"/" + remove_dot_segments(path.replace(b"\\", b"/")).lstrip(b"/")


def merge_slashes(path: bytes) -> bytes:
    return _SLASHES.sub(b"/", path)


_ESCAPED_SLASH = re.compile(rb"%2[Ff]|%5[Cc]")


def unescape_slashes(path: bytes) -> bytes:
    return _ESCAPED_SLASH.sub(lambda m: b"/" if m[0][1:2] == b"2" else b"\\", path)


def normalized_target(target: bytes, normalize_path: bool, merge: bool, unescape: bool = False) -> tuple[bytes, bool]:
    """A request target (path and optional query) with the HCM's path options applied to its path, and
    whether escaped slashes were unescaped (`unescape`: the escaped-slashes action is not KEEP_UNCHANGED)."""
    path, question, query = target.partition(b"?")
    unescaped = False
    if unescape and b"%" in path:
        changed = unescape_slashes(path)
        unescaped = changed != path
        path = changed
    if normalize_path:
        path = normalize(path)
    if merge:
        path = merge_slashes(path)
    return path + question + query, unescaped
