"""The tests' independent check of an AWS signature: botocore's canonical request and SigV4 signer.

A request as an upstream received it (method, path, headers, body) is verified without pylon's signing code:
botocore builds the canonical request from the headers the Authorization (or X-Amz-SignedHeaders) names and
signs it with the same credentials at the request's own x-amz-date; SigV4A's ECDSA signature is checked with the
public key of the pair (derived by pylon's KDF, which tests/proxy/test_aws_signer.py checks against AWS's
published key for its test credentials). Returns the signed-header names, so tests compare them across proxies.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, urlsplit

import botocore.auth
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from pylon.extensions.filters.common.aws_signer import sigv4a_private_key


class BadSignature(AssertionError):
    pass


def _auth(key: str, secret: str, token: str | None, service: str, region: str) -> SigV4Auth:
    cls = S3SigV4Auth if service == "s3" else SigV4Auth
    return cls(Credentials(key, secret, token), service, region)


def verify(method: str, path: str, header_list: list[tuple[str, str]], body: bytes, *, key: str, secret: str,
           token: str | None = None) -> list[str]:
    """Check the request's header or query signature (`header_list`: lower-case names as received, repeats
    included); the signed header names, or BadSignature."""
    headers: dict[str, str] = {}
    for name, value in header_list:
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    authorization = headers.get("authorization")
    query = dict(parse_qsl(urlsplit(path).query, keep_blank_values=True))
    if authorization is not None:
        algorithm, _, rest = authorization.partition(" ")
        fields = dict(part.strip().split("=", 1) for part in rest.split(","))
        credential, signed, signature = fields["Credential"], fields["SignedHeaders"], fields["Signature"]
        date = headers["x-amz-date"]
        payload_hash = headers["x-amz-content-sha256"]
        url_path = path
    else:
        algorithm, credential = query["X-Amz-Algorithm"], query["X-Amz-Credential"]
        signed, signature, date = query["X-Amz-SignedHeaders"], query["X-Amz-Signature"], query["X-Amz-Date"]
        # Envoy sets the header for an unsigned or empty payload; else it signed the body's hash
        payload_hash = headers.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest()
        raw_query = urlsplit(path).query
        url_path = urlsplit(path).path + "?" + "&".join(p for p in raw_query.split("&")
                                                       if not p.startswith("X-Amz-Signature="))
    if payload_hash not in ("UNSIGNED-PAYLOAD", hashlib.sha256(body).hexdigest()):
        raise BadSignature(f"x-amz-content-sha256 {payload_hash} is not the body's hash")
    scope = credential.split("/")
    if scope[0] != key:
        raise BadSignature(f"credential {credential} is not for {key}")
    names = signed.split(";")
    if algorithm == "AWS4-HMAC-SHA256":
        region, service = scope[2], scope[3]
    elif algorithm == "AWS4-ECDSA-P256-SHA256":
        region, service = "", scope[2]
    else:
        raise BadSignature(f"unknown algorithm {algorithm}")
    host = headers["host"]
    scheme = "https" if host.endswith(":443") else "http"  # botocore drops the scheme's default port from Host
    request = AWSRequest(method=method, url=f"{scheme}://{host}{url_path}",
                         headers={name: headers[name] for name in names if name != "host"}, data=body)
    request.context["timestamp"] = date
    auth = _auth(key, secret, token, service, region)
    auth.payload = lambda _request: payload_hash  # what the signer hashed (checked against the body above)
    # botocore never signs user-agent, expect and the like; a request signs what its SignedHeaders name
    blacklist, botocore.auth.SIGNED_HEADERS_BLACKLIST = botocore.auth.SIGNED_HEADERS_BLACKLIST, []
    try:
        canonical = auth.canonical_request(request)
    finally:
        botocore.auth.SIGNED_HEADERS_BLACKLIST = blacklist
    if canonical.split("\n")[-2] != signed:
        raise BadSignature(f"botocore signs {canonical.split(chr(10))[-2]}, the request names {signed}")
    if algorithm == "AWS4-HMAC-SHA256":
        expected = auth.signature(auth.string_to_sign(request, canonical), request)
        if expected != signature:
            raise BadSignature(f"signature {signature} != botocore's {expected}\n{canonical}")
        return names
    to_sign = "\n".join([algorithm, date, "/".join(scope[1:]), hashlib.sha256(canonical.encode()).hexdigest()])
    public = sigv4a_private_key(key, secret).public_key()
    try:
        public.verify(bytes.fromhex(signature), to_sign.encode(), ec.ECDSA(hashes.SHA256()))
    except Exception as exc:
        raise BadSignature(f"SigV4A signature does not verify\n{canonical}") from exc
    return names


@contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """The process environment with `values` set (None: unset) while the block runs: proxies started inside
    inherit them (the AWS credentials Envoy's and pylon's default chains read)."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
