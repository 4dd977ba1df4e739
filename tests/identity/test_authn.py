"""Who the CA thinks is asking: certificate first, then the bearer token; everything else refused."""

import pytest
from cryptography.hazmat.primitives import serialization

from pylon.identity.authn import AuthenticationError, authenticate
from pylon.identity.certs import Usage, issue_leaf, make_ca
from pylon.identity.certs import KeyType, generate_key
from pylon.identity.spiffe import SpiffeId
from pylon.identity.tokens import TokenAuthority

TOKENS = TokenAuthority(generate_key(KeyType.ECDSA_P256))
CA = make_ca()


def der(*uris: str) -> bytes:
    leaf = issue_leaf(CA, uris=uris, usage=Usage.CLIENT, key_type=KeyType.ECDSA_P256)
    return leaf.cert.public_bytes(serialization.Encoding.DER)


def test_token_identity() -> None:
    metadata = [("authorization", f"Bearer {TOKENS.issue('shop', 'cart')}")]
    assert authenticate(None, metadata, TOKENS, "cluster.local") == SpiffeId("cluster.local", "shop", "cart")


def test_certificate_wins_over_token() -> None:
    metadata = [("authorization", f"Bearer {TOKENS.issue('shop', 'cart')}")]
    cert = der("spiffe://cluster.local/ns/default/sa/web")
    assert authenticate(cert, metadata, TOKENS, "cluster.local") == SpiffeId("cluster.local", "default", "web")


@pytest.mark.parametrize("cert, metadata, reason", [
    (None, [], "no client certificate"),
    (None, [("authorization", "Basic abc")], "Bearer"),
    (None, [("authorization", "Bearer ")], "Bearer"),
    (None, [("authorization", "Bearer nonsense")], "invalid token"),
    (der("spiffe://other.domain/ns/default/sa/web"), [], "trust domain"),
    (der("spiffe://cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns/c/sa/d"), [], "exactly one"),
    (der("https://example.com/x"), [], "spiffe"),
    (issue_leaf(CA, dns_names=["x"]).cert.public_bytes(serialization.Encoding.DER), [], "exactly one"),
])  # fmt: skip
def test_refused(cert: bytes | None, metadata: list, reason: str) -> None:
    with pytest.raises(AuthenticationError, match=reason):
        authenticate(cert, metadata, TOKENS, "cluster.local")
