"""The agent's key in SDS `default`: inline, or inside the privateKeyProvider the ProxyConfig names, as Istio's
agent translates it; and what pylon proxy makes of each."""

from __future__ import annotations

from google.protobuf import json_format

from pylon.agent.keys import AgentKeySource
from pylon.config.envoy import TlsCertificate, convert
from pylon.identity.certs import issue_leaf, make_ca
from pylon.identity.spiffe import SpiffeId
from pylon.keys import providers
from pylon.pilot.istio.proxyconfig import key_provider_from_metadata

IDENTITY = SpiffeId("cluster.local", "default", "web")


def certificate(provider: dict | None) -> dict:
    metadata = {"PROXY_CONFIG": {"privateKeyProvider": provider}} if provider else {}
    key = AgentKeySource(provider=key_provider_from_metadata(metadata)).new_key(IDENTITY)
    chain = issue_leaf(make_ca(), common_name="web").cert_pem.decode()
    return json_format.MessageToDict(key.tls_certificate(chain), preserving_proto_field_name=True)


def test_the_key_is_inline_without_a_provider() -> None:
    data = certificate(None)
    assert "private_key" in data and "private_key_provider" not in data


def test_a_provider_carries_the_key_with_istios_fallback() -> None:
    data = certificate({"qat": {"pollDelay": "0.002s", "fallback": True}})
    assert "private_key" not in data
    provider = data["private_key_provider"]
    assert (provider["provider_name"], provider["fallback"]) == ("qat", True)
    assert provider["typed_config"]["@type"].endswith("qat.v3alpha.QatPrivateKeyMethodConfig")
    assert provider["typed_config"]["poll_delay"] == "0.002s"
    # pylon proxy reads it, and with fallback signs in software (no QAT device is driven by pylon).
    loaded = convert(data, TlsCertificate)
    plan = providers.plan_provider(loaded.private_key_provider, None)
    assert plan.ops is None and plan.private_pem is not None and plan.private_pem.startswith(b"-----BEGIN PRIVATE KEY")
