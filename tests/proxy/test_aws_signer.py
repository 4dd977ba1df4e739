"""pylon's AWS signer (filters/common/aws_signer.py) against AWS's published vectors and botocore.

SigV4A: aws-c-auth's key derivation test publishes the public key a fixed key pair derives to (values "derived
in synchronicity with Golang and IAM implementations"); pylon's KDF must give it. Its signing test suite
(tests/aws-signing-test-suite/v4a) publishes a signed request and the key that signed it; the published
signature must verify over pylon's string to sign. SigV4: botocore, an independent implementation, must compute the same
signature over what pylon signed, for header and query signing, S3 and other services, with and without a body.
"""

from __future__ import annotations

import hashlib
import re

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pylon.extensions.filters.common import aws_signer as s
from tests.proxy.aws_verify import BadSignature, verify

KEY, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
# aws-signing-test-suite/v4a/get-vanilla-with-session-token/key.pem: the suite's signing key
VECTOR_KEY_PEM = b"""-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIIm7LQIWSBKju98BVYGTLtEC419gHG4EB0Dqqxa1JuHSoAoGCCqGSM49AwEHoUQDQgAEFGiW
O1MjQ5w61e9aQGW1bCT1zpTdgQxUuVW+vbmJ6NIvclSY4rkJDmUwyNNdKgrkC3Lq4eRydZRgbu1yCKcA
lQ==
-----END EC PRIVATE KEY-----
"""
# aws-signing-test-suite/v4a/get-vanilla/header-signed-request.txt: GET / at 20150830T123600Z, service "service"
VECTOR_SIGNATURE = ("3045022100f4c37457a8978d07fa07044d5724237f8c30f8529c4c4cd1f30a4c0e6486303f02207968f80296f1ac38"
                    "08e3cb45ae1f31c479d071dcad4f0621084cd6d1b6a912bd")


def _config(algorithm: str = s.SIGV4, service: str = "service", region: str = "us-east-1",
            query: int | None = None) -> s.SignerConfig:
    return s.SignerConfig(algorithm, service, region, lambda name: name.startswith("x-envoy"), query)


def test_the_sigv4a_key_is_the_one_aws_publishes_for_its_test_credentials() -> None:
    # aws-c-auth tests/key_derivation_tests.c, credentials_derive_ecc_key_fixed
    public = s.sigv4a_private_key("AKISORANDOMAASORANDOM", "q+jcrXGc+0zWN6uzclKVhvMmUsIfRPa4rlRandom"
                                  ).public_key().public_numbers()
    assert "%064x" % public.x == "15d242ceebf8d8169fd6a8b5a746c41140414c3b07579038da06af89190fffcb"
    assert "%064x" % public.y == "0515242cedd82e94799482e4c0514b505afccf2c0c98d6a553bf539f424c5ec0"


def test_the_published_sigv4a_signature_verifies_over_our_string_to_sign() -> None:
    config = _config(s.SIGV4A)
    headers = s.canonical_headers([(b"x-amz-date", b"20150830T123600Z"), (b"x-amz-region-set", b"us-east-1")],
                                  b"example.amazonaws.com", config.excluded)
    canonical = s.canonical_request(b"GET", b"/", headers, s.EMPTY_SHA256, "service")
    to_sign = s.string_to_sign(config, "20150830T123600Z", s.scope_of(config, "20150830"), canonical)
    public = serialization.load_pem_private_key(VECTOR_KEY_PEM, None).public_key()
    public.verify(bytes.fromhex(VECTOR_SIGNATURE), to_sign.encode(), ec.ECDSA(hashes.SHA256()))


def _as_received(signed: s.Signed, headers: list[tuple[bytes, bytes]], authority: bytes
                 ) -> tuple[str, list[tuple[str, str]]]:
    names = {name for name, _ in signed.headers}
    out = [(n.decode(), v.decode()) for n, v in headers if n not in names]
    out += [(n.decode(), v.decode()) for n, v in signed.headers]
    return signed.path.decode(), [("host", authority.decode()), *out]


CASES = [
    # (service, method, path, body, unsigned payload)
    ("service", b"GET", b"/", b"", False),
    ("service", b"POST", b"/a/b%20c/./d/", b'{"x": 1}', False),
    ("s3", b"PUT", b"/bucket/dir//key.txt", b"object bytes", False),
    ("s3", b"GET", b"/bucket/?list-type=2&prefix=a%2Fb&max-keys=10&flag", b"", True),
    ("vpc-lattice-svcs", b"GET", b"/path?b=2&a=1&a=0", b"", True),
]


@pytest.mark.parametrize("algorithm", [s.SIGV4, s.SIGV4A])
@pytest.mark.parametrize("service,method,path,body,unsigned", CASES)
def test_botocore_agrees_with_header_signatures(algorithm: str, service: str, method: bytes, path: bytes,
                                                 body: bytes, unsigned: bool) -> None:
    headers = [(b"user-agent", b"curl/8"), (b"x-custom", b"  a   b"), (b"x-custom", b"c"),
               (b"x-envoy-expected-rq-timeout-ms", b"15000"), (b"x-forwarded-for", b"10.0.0.1")]
    payload = s.UNSIGNED_PAYLOAD if unsigned else hashlib.sha256(body).hexdigest()
    signed = s.sign(_config(algorithm, service), s.Credentials(KEY, SECRET, "token/+="), method, path,
                    b"example.amazonaws.com:443", headers, payload, 1_700_000_000)
    got_path, received = _as_received(signed, headers, b"example.amazonaws.com:443")
    names = verify(method.decode(), got_path, received, body, key=KEY, secret=SECRET, token="token/+=")
    assert "x-envoy-expected-rq-timeout-ms" not in names and "x-forwarded-for" not in names
    assert {"host", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "x-custom"} <= set(names)
    assert ("x-amz-region-set" in names) == (algorithm == s.SIGV4A)
    received = [(n, "tampered" if n == "x-custom" else v) for n, v in received]
    with pytest.raises(BadSignature):
        verify(method.decode(), got_path, received, body, key=KEY, secret=SECRET, token="token/+=")


@pytest.mark.parametrize("algorithm", [s.SIGV4, s.SIGV4A])
def test_botocore_agrees_with_query_signatures(algorithm: str) -> None:
    signed = s.sign(_config(algorithm, "vpc-lattice-svcs", "*", query=3), s.Credentials(KEY, SECRET), b"GET",
                    b"/p?z=1", b"svc.example", [(b"accept", b"*/*")], s.UNSIGNED_PAYLOAD, 1_700_000_000)
    assert signed.headers == [(b"x-amz-content-sha256", b"UNSIGNED-PAYLOAD")]  # no Authorization, no date
    path = signed.path.decode()
    assert re.search(r"X-Amz-Expires=3&", path) and "X-Amz-Signature=" in path
    received = [("host", "svc.example"), ("accept", "*/*"), ("x-amz-content-sha256", "UNSIGNED-PAYLOAD")]
    assert verify("GET", path, received, b"", key=KEY, secret=SECRET) == ["accept", "host", "x-amz-content-sha256"]
    body = b"hashed body"
    with_body = s.sign(_config(algorithm, "vpc-lattice-svcs", "*", query=3), s.Credentials(KEY, SECRET), b"POST",
                       b"/p", b"svc.example", [], hashlib.sha256(body).hexdigest(), 1_700_000_000)
    assert with_body.headers == []  # a hashed body: the hash is only in the canonical request
    assert verify("POST", with_body.path.decode(), [("host", "svc.example")], body, key=KEY, secret=SECRET) == ["host"]
    with pytest.raises(BadSignature):
        verify("GET", path.replace("z=1", "z=2"), received, b"", key=KEY, secret=SECRET)


def test_without_credentials_only_the_payload_hash_is_set() -> None:
    signed = s.sign(_config(), None, b"GET", b"/", b"h", [], s.EMPTY_SHA256, 0)
    assert signed == s.Signed([(b"x-amz-content-sha256", s.EMPTY_SHA256.encode())], b"/")


def test_credentials_never_show_their_secret() -> None:
    assert SECRET not in repr(s.Credentials(KEY, SECRET, "t"))
