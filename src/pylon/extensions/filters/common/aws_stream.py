"""What the AWS signing filters (aws_request_signing, aws_lambda) share about the proxy's stream: which of the
request's headers are signed, and how the signer's edits land on it.

Why apart from the signer: the signer (aws_signer.py) is sans-IO; these two know the stream's API."""

from __future__ import annotations

from typing import Any

from pylon.extensions.filters.common.aws_signer import Signed

#: the client's connection-level headers, which never reach the upstream (Envoy's codec drops them before filters)
HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"))


def end_to_end(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The request headers the upstream will get from the client (hop-by-hop ones left out)."""
    return [pair for pair in headers if pair[0] not in HOP_BY_HOP]


def apply_signed(stream: Any, signed: Signed) -> None:
    """The signer's headers set on the request (replacing any of that name), and its path (query signing)."""
    for name, value in signed.headers:
        stream.edit_request_header("set", name, value)
    if signed.path != stream.path:
        stream.set_path(signed.path)
