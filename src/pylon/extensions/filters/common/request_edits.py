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
    for name in dict.fromkeys([name for name, _ in edited] + [name for name, _ in before]):
        old = [v for n, v in before if n == name]
        new = [v for n, v in edited if n == name]
        if old != new:
            stream.edit_request_header("remove", name)
            for value in new:
                stream.edit_request_header("add", name, value)
