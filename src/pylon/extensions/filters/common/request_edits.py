"""A filter's edited copy of the request headers, handed to the stream as the stream's own header edits.

Filters that run a set of header rules (local_ratelimit's headers when not enforced, header_mutation) edit a copy
with proxy/headers.py's tools; the stream takes changes only through `edit_request_header` (later filters, the
access log and the upstream then see them), so the difference is replayed name by name.
"""

from __future__ import annotations

from typing import Any


def replace_request_headers(stream: Any, edited: list[tuple[bytes, bytes]]) -> None:
    """Make the stream's request headers `edited`: each name whose values changed is removed and re-added."""
    before = stream.headers
    if edited == before:
        return
    old_values = _by_name(before)
    for name, values in _by_name(edited).items():
        if old_values.pop(name, None) != values:
            stream.edit_request_header("remove", name)
            for value in values:
                stream.edit_request_header("add", name, value)
    for name in old_values:  # the names no longer there
        stream.edit_request_header("remove", name)


def _by_name(headers: list[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
    grouped: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        grouped.setdefault(name, []).append(value)
    return grouped
