"""The agent's Secret rewriting: a credential's inline key goes to keyd or a PKCS#11 token and the proxy gets a
provider config instead; refusals leave the secret out (fail closed), naming what is missing. Real keyd and
SoftHSM2 (in temp dirs) behind the stores."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from envoy.config.core.v3.base_pb2 import DataSource
from envoy.extensions.transport_sockets.tls.v3.common_pb2 import PrivateKeyProvider, TlsCertificate
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryResponse, DiscoveryResponse, Resource
from google.protobuf import any_pb2
from pylon.agent.credential_keys import KeydCredentialKeys, TokenCredentialKeys, key_name
from pylon.agent.keys import Pkcs11Token
from pylon.agent.secret_rewrite import SECRET_TYPE, SecretRewriter
from pylon.identity.certs import Issued, KeyType, issue_leaf, make_ca
from pylon.keys import pkcs11
from pylon.xds.contrib_protos import provider_config
from tests.conftest import pylon_cmd
from tests.softhsm import LIBRARY, PIN, SO_PIN

NAME = "kubernetes://gw-cred"


@pytest.fixture(scope="module")
def leaf() -> Issued:
    return issue_leaf(make_ca("rewrite CA"), common_name="gw.example.com", dns_names=["gw.example.com"])


@pytest.fixture
def keyd(tmp_path: Path) -> Iterator[Path]:
    """A `pylon keyd` holding no key yet (what a gateway pod starts with)."""
    sock = tmp_path / "keyd.sock"
    proc = subprocess.Popen(pylon_cmd("keyd", "--listen", f"unix:{sock}"), stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # type: ignore[union-attr]
        if line.strip() == "keyd ready":
            break
    assert proc.poll() is None
    yield sock
    proc.terminate()
    proc.wait(timeout=10)


def _key_pem(issued: Issued) -> bytes:
    return issued.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())  # fmt: skip


def _secret(issued: Issued, name: str = NAME, cryptomb: bool = False) -> Secret:
    chain = DataSource(inline_bytes=issued.cert_pem)
    if cryptomb:  # what pilot sends under privateKeyProvider cryptomb: the key inside the provider's config
        provider = PrivateKeyProvider(provider_name="cryptomb", typed_config=provider_config("cryptomb",
                                      _key_pem(issued), 0.01), fallback=True)  # fmt: skip
        return Secret(name=name, tls_certificate=TlsCertificate(certificate_chain=chain, private_key_provider=provider))
    return Secret(name=name, tls_certificate=TlsCertificate(certificate_chain=chain,
                                                            private_key=DataSource(inline_bytes=_key_pem(issued))))


def _packed(secret: Secret) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(secret)
    return packed


def _sotw(*secrets: Secret) -> bytes:
    return DiscoveryResponse(version_info="1", type_url=SECRET_TYPE, nonce="n1",
                             resources=[_packed(s) for s in secrets]).SerializeToString()  # fmt: skip


def _secrets_of(raw: bytes) -> dict[str, Secret]:
    out = {}
    for packed in DiscoveryResponse.FromString(raw).resources:
        secret = Secret()
        packed.Unpack(secret)
        out[secret.name] = secret
    return out


def _ca_secret() -> Secret:
    from envoy.extensions.transport_sockets.tls.v3.common_pb2 import CertificateValidationContext

    return Secret(name=NAME + "-cacert", validation_context=CertificateValidationContext(
        trusted_ca=DataSource(inline_bytes=b"-----BEGIN CERTIFICATE-----\n...")))  # fmt: skip


def _no_key_bytes(raw: bytes, issued: Issued) -> None:
    body = b"".join(_key_pem(issued).splitlines()[1:-1])
    assert body[:40] not in raw.replace(b"\n", b"") and b"PRIVATE KEY" not in raw


@pytest.mark.parametrize("cryptomb", [False, True], ids=["inline", "cryptomb"])
def test_keyd_gets_the_key_and_the_proxy_a_keyd_config(keyd: Path, leaf: Issued, cryptomb: bool) -> None:
    from pylon.keys.keyd.client import import_key

    rewriter = SecretRewriter(KeydCredentialKeys(str(keyd)))
    out = asyncio.run(rewriter.response("StreamAggregatedResources", _sotw(_secret(leaf, cryptomb=cryptomb),
                                                                             _ca_secret())))  # fmt: skip
    _no_key_bytes(out, leaf)
    secrets = _secrets_of(out)
    assert secrets[NAME + "-cacert"] == _ca_secret()  # untouched
    certificate = secrets[NAME].tls_certificate
    assert not certificate.HasField("private_key") and certificate.certificate_chain.inline_bytes == leaf.cert_pem
    provider = certificate.private_key_provider
    assert provider.provider_name == "keyd" and not provider.fallback
    assert provider.typed_config.type_url.endswith("pylon.key_providers.keyd.v1.Keyd")
    # keyd holds the key under the id the config names: importing the same key there again is accepted.
    key_id = key_name(NAME, leaf.cert_pem)
    assert key_id.encode() in provider.typed_config.value and str(keyd).encode() in provider.typed_config.value
    import_key(str(keyd), key_id, _key_pem(leaf))
    # At exit the agent has keyd drop what it handed over: the id is free, another key may take it.
    asyncio.run(rewriter.retire_all())
    other = issue_leaf(make_ca("other CA"), common_name="gw.example.com")
    import_key(str(keyd), key_id, _key_pem(other))


def test_a_delta_response_is_rewritten_too(keyd: Path, leaf: Issued) -> None:
    raw = DeltaDiscoveryResponse(system_version_info="1", type_url=SECRET_TYPE, nonce="n", resources=[
        Resource(name=NAME, version="v1", resource=_packed(_secret(leaf)))]).SerializeToString()  # fmt: skip
    out = asyncio.run(SecretRewriter(KeydCredentialKeys(str(keyd))).response("DeltaAggregatedResources", raw))
    _no_key_bytes(out, leaf)
    (resource,) = DeltaDiscoveryResponse.FromString(out).resources
    assert resource.name == NAME and resource.version == "v1"
    secret = Secret()
    resource.resource.Unpack(secret)
    assert secret.tls_certificate.private_key_provider.provider_name == "keyd"


def test_other_types_pass_as_the_very_bytes(keyd: Path) -> None:
    raw = DiscoveryResponse(version_info="1", type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster",
                            nonce="n").SerializeToString()  # fmt: skip
    assert asyncio.run(SecretRewriter(KeydCredentialKeys(str(keyd))).response("StreamAggregatedResources", raw)) is raw


def test_keyd_unreachable_leaves_the_secret_out_naming_the_socket(tmp_path: Path, leaf: Issued,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "pylon.agent.secret_rewrite")
    rewriter = SecretRewriter(KeydCredentialKeys(str(tmp_path / "gone.sock")))
    out = asyncio.run(rewriter.response("StreamAggregatedResources", _sotw(_secret(leaf), _ca_secret())))
    _no_key_bytes(out, leaf)
    assert set(_secrets_of(out)) == {NAME + "-cacert"}
    assert rewriter.failures == 1
    assert f"secret {NAME} not served to the proxy: cannot move the key of {NAME} into keyd at {tmp_path}/gone.sock" \
        in caplog.text  # fmt: skip


def test_a_key_that_is_not_the_certificates_is_refused(keyd: Path, leaf: Issued) -> None:
    other = issue_leaf(make_ca("other CA"), common_name="other", key_type=KeyType.RSA_2048)
    mixed = _secret(leaf)
    mixed.tls_certificate.private_key.inline_bytes = _key_pem(other)
    rewriter = SecretRewriter(KeydCredentialKeys(str(keyd)))
    out = asyncio.run(rewriter.response("StreamAggregatedResources", _sotw(mixed)))
    assert _secrets_of(out) == {} and rewriter.failures == 1


def _token(label: str = "pylon-cred", pin: str = PIN) -> Pkcs11Token:
    return Pkcs11Token(library=LIBRARY, label=label, pin=pin, so_pin=SO_PIN)


@pytest.mark.parametrize("key_type", [KeyType.RSA_2048, KeyType.ECDSA_P256], ids=lambda t: t.value)
def test_the_token_gets_the_key_and_the_proxy_an_sgx_config(softhsm: object, key_type: KeyType) -> None:
    from pylon.xds.resources import to_proto_json

    issued = issue_leaf(make_ca("token CA"), common_name="gw.example.com", key_type=key_type)
    rewriter = SecretRewriter(TokenCredentialKeys(_token()))
    out = asyncio.run(rewriter.response("StreamAggregatedResources", _sotw(_secret(issued))))
    _no_key_bytes(out, issued)
    provider = _secrets_of(out)[NAME].tls_certificate.private_key_provider
    assert provider.provider_name == "sgx"
    label = key_name(NAME, issued.cert_pem)
    config = to_proto_json(provider)["typed_config"]
    assert config["key_label"] == label and config["token_label"] == "pylon-cred" and config["sgx_library"] == LIBRARY
    assert config["key_type"] == ("ecdsa" if key_type is KeyType.ECDSA_P256 else "rsa")
    assert config["usr_pin"] == PIN and config["so_pin"] == SO_PIN
    token = pkcs11.open_token(LIBRARY, "pylon-cred", PIN)
    assert pkcs11.find_key(token, label).public_key == issued.key.public_key()
    # Sent again (a new stream): not imported twice. At exit the agent removes what it imported.
    asyncio.run(rewriter.response("StreamAggregatedResources", _sotw(_secret(issued))))
    asyncio.run(rewriter.retire_all())
    with pytest.raises(pkcs11.Pkcs11Error, match="no private key labelled"):
        pkcs11.find_key(token, label)


@pytest.mark.parametrize(("token", "text"), [
    (_token(label="no-such-token"), "(--pkcs11-token): no token labelled 'no-such-token'"),
    (_token(pin="wrong-pin"), "(--pkcs11-pin-file): "),
])  # fmt: skip
def test_token_refusals_leave_the_secret_out_naming_the_flag(softhsm: object, leaf: Issued, token: Pkcs11Token,
                                                             text: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "pylon.agent.secret_rewrite")
    rewriter = SecretRewriter(TokenCredentialKeys(token))
    out = asyncio.run(rewriter.response("StreamAggregatedResources", _sotw(_secret(leaf))))
    assert _secrets_of(out) == {} and rewriter.failures == 1
    assert text in caplog.text
