"""AWS request signing, SigV4 and SigV4A, sans-IO: a request's method, path and headers in, the edits out.

Why our own and not botocore: the filters sign the request the proxy holds (its header list, its path as it goes
upstream) on the request path, and need Envoy's exact choices, which no SDK makes all of: every header signed
except the excluded ones (`x-forwarded-for`, `x-forwarded-proto`, `x-amzn-trace-id` always, plus the config's
`match_excluded_headers`), Host without a default port (80, 443), the path double-encoded for every service but
S3 (normalised too, S3 excepted), query parameters sorted and encoded as Envoy's `encodeQueryParam`, and on a
missing credential nothing signed at all (only `x-amz-content-sha256` set, as the AWS SDKs do for anonymous
use). The tests check the result with botocore's canonical request and signer and with AWS's published SigV4A
vectors (tests/proxy/test_aws_signer.py).

SigV4A (`AWS4-ECDSA-P256-SHA256`): the signing key is an ECDSA P-256 key derived from the secret (NIST SP 800-108
counter-mode KDF with HMAC-SHA256, as AWS specifies it); the credential scope has no region, the region set goes
in `x-amz-region-set` (or `X-Amz-Region-Set` in a pre-signed URL) and is signed.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

SIGV4 = "AWS4-HMAC-SHA256"
SIGV4A = "AWS4-ECDSA-P256-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
#: never signed: they change on the way (Envoy's defaults, whatever the config says)
ALWAYS_EXCLUDED = (b"x-forwarded-for", b"x-forwarded-proto", b"x-amzn-trace-id")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
#: the P-256 group order minus 2: a derived candidate must not exceed it (then the key is candidate + 1)
_N_MINUS_2 = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551 - 2


class Credentials(NamedTuple):
    """An access key pair and the optional session token (STS credentials carry one)."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:  # a secret must never reach a log through a repr
        return f"Credentials(access_key_id={self.access_key_id!r}, secret_access_key='*****')"


@dataclass(frozen=True)
class SignerConfig:
    """What one signing configuration fixes: algorithm, service, region (SigV4A: the region set), exclusions,
    and for query-string signing the URL's lifetime in seconds (None: sign in headers)."""

    algorithm: str
    service: str
    region: str
    excluded: Callable[[str], bool]
    query_expires: int | None = None


class Signed(NamedTuple):
    """The edits signing makes: headers to set (replacing any of that name), and the new path (query signing)."""

    headers: list[tuple[bytes, bytes]]
    path: bytes


@lru_cache(maxsize=4)
def _amz_dates(second: int) -> tuple[str, str]:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))
    return stamp, stamp[:8]


def amz_dates(now: float) -> tuple[str, str]:
    """(long date 20150830T123600Z, short date 20150830) of a Unix time, in UTC (made once a second)."""
    return _amz_dates(int(now))


def _encode(text: bytes, keep: bytes = b"") -> str:
    return "".join(chr(c) if c in _UNRESERVED or c in keep else "%%%02X" % c for c in text)


def canonical_path(path: bytes, service: str) -> str:
    """The canonical URI: S3's path encoded and not normalised; others' normalised (empty and `.` segments
    dropped, `..` going up, as AWS specifies) and each segment encoded (so an already-encoded `%20` becomes
    `%2520`: AWS's double encoding), a trailing slash kept."""
    if not path:
        return "/"
    if service.lower() == "s3":
        return _encode(path, b"/")
    segments: list[str] = []
    for segment in path.split(b"/"):
        if segment == b"..":
            if segments:
                segments.pop()
        elif segment and segment != b".":
            segments.append(_encode(segment))
    canonical = "/" + "/".join(segments)
    if path.endswith(b"/") and len(canonical) > 1:
        canonical += "/"
    return canonical


def _encode_query_part(text: str) -> str:
    """Envoy's encodeQueryParam: unreserved characters and `%` as they are, `+` as %20, `=` as %253D."""
    out = []
    for c in text.encode("utf-8", "surrogateescape"):
        if c in _UNRESERVED or c == 0x25:
            out.append(chr(c))
        elif c == 0x2B:
            out.append("%20")
        elif c == 0x3D:
            out.append("%253D")
        else:
            out.append("%%%02X" % c)
    return "".join(out)


def canonical_query(query: str) -> str:
    """Parameters sorted by name then value, each encoded, `=` added where a value is missing."""
    pairs = []
    for fragment in query.split("&"):
        if fragment:
            name, _, value = fragment.partition("=")
            pairs.append((name, value))
    pairs.sort()
    return "&".join(f"{_encode_query_part(n)}={_encode_query_part(v)}" for n, v in pairs)


def canonical_headers(headers: Sequence[tuple[bytes, bytes]], authority: bytes,
                      excluded: Callable[[str], bool]) -> dict[str, str]:
    """Name -> canonical value of every header signed, sorted by name: empty values skipped, values trimmed and
    inner runs of spaces made one, repeated names joined with commas, Host from the authority (port 80 or 443
    dropped)."""
    out: dict[str, str] = {}
    for raw_name, raw_value in headers:  # names are lower-case in the proxy's header lists
        if not raw_name or not raw_value or raw_name[:1] == b":" or raw_name in ALWAYS_EXCLUDED:
            continue
        name = raw_name.decode("latin-1")
        if name == "host" or excluded(name):
            continue
        value = " ".join(raw_value.decode("latin-1").split())
        out[name] = f"{out[name]},{value}" if name in out else value
    if authority:
        host, _, port = authority.decode("latin-1").partition(":")
        out["host"] = host if port in ("80", "443") else authority.decode("latin-1")
    return dict(sorted(out.items()))


def canonical_request(method: bytes, path: bytes, headers: dict[str, str], payload_hash: str, service: str) -> str:
    """The canonical request (AWS's task 1) of a request whose target is `path` (query included)."""
    raw_path, _, query = path.partition(b"?")
    return "\n".join([method.decode("latin-1"), canonical_path(raw_path, service),
                      canonical_query(query.decode("utf-8", "surrogateescape")) if query else "",
                      *(f"{name}:{value}" for name, value in headers.items()), "", ";".join(headers), payload_hash])


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


@lru_cache(maxsize=16)
def sigv4_key(secret: str, short_date: str, region: str, service: str) -> bytes:
    """The SigV4 signing key: HMAC chain over date, region, service and `aws4_request` (the same all day: kept)."""
    key = _hmac(("AWS4" + secret).encode(), short_date)
    return _hmac(_hmac(_hmac(key, region), service), "aws4_request")


@lru_cache(maxsize=16)
def sigv4a_private_key(access_key_id: str, secret: str) -> ec.EllipticCurvePrivateKey:
    """The SigV4A key of a key pair: HMAC-SHA256 keyed "AWS4A"+secret over the KDF's fixed input (counter 1,
    the algorithm's label, 0, the access key id, the external counter, length 256 bits), the first result not
    above n-2 plus one. The same pair always gives the same key (kept: deriving costs an EC multiplication)."""
    key = ("AWS4A" + secret).encode()
    for counter in range(1, 255):
        fixed = (b"\x00\x00\x00\x01" + SIGV4A.encode() + b"\x00" + access_key_id.encode() + bytes([counter])
                 + b"\x00\x00\x01\x00")
        candidate = int.from_bytes(hmac.new(key, fixed, hashlib.sha256).digest(), "big")
        if candidate <= _N_MINUS_2:
            return ec.derive_private_key(candidate + 1, ec.SECP256R1())
    raise ValueError("SigV4A key derivation found no key")  # 254 candidates above n-2: never in practice


def scope_of(config: SignerConfig, short_date: str) -> str:
    if config.algorithm == SIGV4A:
        return f"{short_date}/{config.service}/aws4_request"
    return f"{short_date}/{config.region}/{config.service}/aws4_request"


def string_to_sign(config: SignerConfig, long_date: str, scope: str, canonical: str) -> str:
    return f"{config.algorithm}\n{long_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"


def signature_of(config: SignerConfig, credentials: Credentials, short_date: str, to_sign: str) -> str:
    if config.algorithm == SIGV4A:
        key = sigv4a_private_key(credentials.access_key_id, credentials.secret_access_key)
        return key.sign(to_sign.encode(), ec.ECDSA(hashes.SHA256())).hex()
    key = sigv4_key(credentials.secret_access_key, short_date, config.region, config.service)
    return hmac.digest(key, to_sign.encode(), "sha256").hex()


def sign(config: SignerConfig, credentials: Credentials | None, method: bytes, path: bytes, authority: bytes,
         headers: Sequence[tuple[bytes, bytes]], payload_hash: str, now: float) -> Signed:
    """Sign one request. Header signing sets x-amz-content-sha256, x-amz-date, x-amz-security-token (with a
    session token), x-amz-region-set (SigV4A) and authorization; query signing adds Envoy's X-Amz-* parameters
    and the signature to the path instead (x-amz-content-sha256 still set, and signed, for an unsigned or empty
    payload, as Envoy). Without credentials only x-amz-content-sha256 is set."""
    set_headers: list[tuple[bytes, bytes]] = []
    if config.query_expires is None or payload_hash in (UNSIGNED_PAYLOAD, EMPTY_SHA256):
        # Envoy sets it for an unsigned or empty payload before signing, query signing or not
        set_headers.append((b"x-amz-content-sha256", payload_hash.encode()))
    if credentials is None:
        return Signed(set_headers, path)
    long_date, short_date = amz_dates(now)
    scope = scope_of(config, short_date)
    if config.query_expires is None:
        if credentials.session_token:
            set_headers.append((b"x-amz-security-token", credentials.session_token.encode()))
        set_headers.append((b"x-amz-date", long_date.encode()))
        if config.algorithm == SIGV4A:
            set_headers.append((b"x-amz-region-set", config.region.encode()))
    replaced = {name for name, _ in set_headers} | {b"authorization"}
    signed_input = [(n, v) for n, v in headers if n not in replaced] + set_headers
    canonical = canonical_headers(signed_input, authority, config.excluded)
    if config.query_expires is not None:
        path = _with_query_params(path, config, credentials, long_date, scope, ";".join(canonical))
    to_sign = string_to_sign(config, long_date, scope,
                             canonical_request(method, path, canonical, payload_hash, config.service))
    signature = signature_of(config, credentials, short_date, to_sign)
    if config.query_expires is not None:
        return Signed(set_headers, path + (b"&" if b"?" in path else b"?") + b"X-Amz-Signature=" + signature.encode())
    authorization = (f"{config.algorithm} Credential={credentials.access_key_id}/{scope}, "
                     f"SignedHeaders={';'.join(canonical)}, Signature={signature}")
    set_headers.append((b"authorization", authorization.encode()))
    return Signed(set_headers, path)


def _with_query_params(path: bytes, config: SignerConfig, credentials: Credentials, long_date: str, scope: str,
                       signed_headers: str) -> bytes:
    """The path with the pre-signed URL's parameters appended in Envoy's order."""
    params = []
    if config.algorithm == SIGV4A:
        params.append(("X-Amz-Region-Set", _encode(config.region.encode())))
    params += [("X-Amz-Algorithm", config.algorithm), ("X-Amz-Date", long_date),
               ("X-Amz-Expires", str(config.query_expires))]
    if credentials.session_token:
        params.append(("X-Amz-Security-Token", _encode(credentials.session_token.encode())))
    params += [("X-Amz-Credential", _encode_query_part(f"{credentials.access_key_id}/{scope}")),
               ("X-Amz-SignedHeaders", _encode_query_part(signed_headers))]
    query = "&".join(f"{name}={value}" for name, value in params).encode()
    return path + (b"&" if b"?" in path else b"?") + query
