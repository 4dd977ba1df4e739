"""The typed-extension registry: later extensions plug in by one register_typed call."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from pylon.config import registry
from pylon.config.envoy import Duration, EnvoyStruct, HttpConnectionManager, Router
from pylon.config.errors import ConfigError
from pylon.config.loader import bootstrap_to_dict
from pylon.extensions import load_extensions
from tests.config.builders import DOWNSTREAM_TLS_TYPE, HCM_TYPE, ROUTER_TYPE, bootstrap, hcm, listener, load

BALANCER_TYPE = "type.googleapis.com/pylon.connection_balance.test.v1.Balancer"
KEY_PROVIDER_TYPE = "type.googleapis.com/pylon.key_providers.test.v1.Provider"


class Balancer(EnvoyStruct, kw_only=True):
    workers: int = 1


class KeyProvider(EnvoyStruct, kw_only=True):
    poll_delay: Duration


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made in a test vanish after it (the registry is process-global)."""
    monkeypatch.setattr(registry, "_by_category", {k: dict(v) for k, v in registry._by_category.items()})
    monkeypatch.setattr(registry, "_url_by_type", dict(registry._url_by_type))


def test_core_extensions_are_registered_by_type_url() -> None:
    load_extensions()
    assert registry.lookup(registry.NETWORK_FILTER, HCM_TYPE) is HttpConnectionManager
    assert registry.lookup(registry.HTTP_FILTER, ROUTER_TYPE) is Router
    assert registry.lookup(registry.NETWORK_FILTER, ROUTER_TYPE) is None
    assert HCM_TYPE in registry.type_urls(registry.NETWORK_FILTER)
    assert registry.type_urls(registry.KEY_PROVIDER) == {
        "type.googleapis.com/envoy.extensions.private_key_providers.cryptomb.v3alpha.CryptoMbPrivateKeyMethodConfig",
        "type.googleapis.com/envoy.extensions.private_key_providers.qat.v3alpha.QatPrivateKeyMethodConfig",
        "type.googleapis.com/pylon.key_providers.keyd.v1.Keyd",
        "type.googleapis.com/pylon.key_providers.offload.v1.Offload",
    }
    assert registry.categories_of(DOWNSTREAM_TLS_TYPE) == {registry.DOWNSTREAM_TRANSPORT_SOCKET}
    assert registry.type_url_of(Router) == ROUTER_TYPE and registry.type_url_of(Balancer) is None


def test_lookup_ignores_the_type_url_prefix() -> None:
    assert registry.lookup(registry.HTTP_FILTER, "envoy.extensions.filters.http.router.v3.Router") is Router
    assert registry.message_name(ROUTER_TYPE) == "envoy.extensions.filters.http.router.v3.Router"


def test_registration_errors(scratch_registry: None) -> None:
    with pytest.raises(ValueError, match="unknown extension category 'envoy.bogus'"):
        registry.register_typed("envoy.bogus", BALANCER_TYPE, Balancer)
    registry.register_typed(registry.CONNECTION_BALANCER, BALANCER_TYPE, Balancer)
    registry.register_typed(registry.CONNECTION_BALANCER, BALANCER_TYPE, Balancer)  # idempotent
    with pytest.raises(ValueError, match="already registered"):
        registry.register_typed(registry.CONNECTION_BALANCER, BALANCER_TYPE, KeyProvider)


def balanced_listener(typed_config: dict[str, Any]) -> dict[str, Any]:
    return listener(hcm(), connection_balance_config={"extend_balance": {"name": "test", "typed_config": typed_config}})


def test_a_registered_connection_balancer_is_decoded_and_re_encoded(scratch_registry: None) -> None:
    registry.register_typed(registry.CONNECTION_BALANCER, BALANCER_TYPE, Balancer)
    config = load(bootstrap([balanced_listener({"@type": BALANCER_TYPE, "workers": 4})]))
    extension = config.static_resources.listeners[0].connection_balance_config.extend_balance
    assert extension.typed_config == Balancer(workers=4)
    dumped = bootstrap_to_dict(config)["static_resources"]["listeners"][0]["connection_balance_config"]
    assert dumped == {"extend_balance": {"name": "test", "typed_config": {"@type": BALANCER_TYPE, "workers": 4}}}
    with pytest.raises(ConfigError) as info:
        load(bootstrap([balanced_listener({"@type": BALANCER_TYPE, "workers": 4, "extra": 1})]))
    assert info.value.path == "static_resources.listeners[0].connection_balance_config.extend_balance.typed_config.extra"


def test_a_registered_key_provider_reports_errors_through_its_typed_config(scratch_registry: None) -> None:
    registry.register_typed(registry.KEY_PROVIDER, KEY_PROVIDER_TYPE, KeyProvider)
    provider = {"provider_name": "test", "typed_config": {"@type": KEY_PROVIDER_TYPE, "poll_delay": "soon"}}
    socket = {"name": "tls", "typed_config": {"@type": DOWNSTREAM_TLS_TYPE, "common_tls_context": {
        "tls_certificates": [{"certificate_chain": {"inline_string": "pem"}, "private_key_provider": provider}]}}}  # fmt: skip
    data = bootstrap([listener(hcm(), filter_chains=[{"filters": [{"name": "h", "typed_config": hcm()}], "transport_socket": socket}])])
    with pytest.raises(ConfigError) as info:
        load(data)
    assert info.value.path == (
        "static_resources.listeners[0].filter_chains[0].transport_socket.typed_config.common_tls_context."
        "tls_certificates[0].private_key_provider.typed_config.poll_delay"
    )
    assert info.value.message.startswith("invalid duration 'soon'")
    provider["typed_config"]["poll_delay"] = "0.002s"
    config = load(data)
    certificate = config.static_resources.listeners[0].filter_chains[0].transport_socket.typed_config.common_tls_context.tls_certificates[0]
    assert certificate.private_key_provider.typed_config == KeyProvider(poll_delay=Duration(0.002))


def test_structs_built_in_code_must_be_registered_for_their_position() -> None:
    from pylon.config.envoy import Filter, HttpFilter

    assert isinstance(Filter(name="hcm", typed_config=msgspec.convert(hcm(), dict)).typed_config, HttpConnectionManager)
    assert HttpFilter(name="router", typed_config=Router()).typed_config == Router()
    with pytest.raises(ValueError, match="Router is not a registered network filter"):
        Filter(name="router", typed_config=Router())
