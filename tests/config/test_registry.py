"""The typed-extension registry: later extensions plug in by one register_typed call, and are found by name."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

import pylon
from pylon.config import registry
from pylon.config.envoy import Duration, EnvoyStruct, HttpConnectionManager, Router
from pylon.config.errors import ConfigError
from pylon.config.loader import bootstrap_to_dict
from tests.config.builders import (
    DOWNSTREAM_TLS_TYPE, HCM_TYPE, ROUTER_TYPE, TLS_INSPECTOR_TYPE, bootstrap, hcm, listener, load, router_filter,
)

BALANCER_TYPE = "type.googleapis.com/pylon.connection_balance.test.v1.Balancer"
KEY_PROVIDER_TYPE = "type.googleapis.com/pylon.key_providers.test.v1.Provider"
FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"


class Balancer(EnvoyStruct, kw_only=True):
    workers: int = 1


class KeyProvider(EnvoyStruct, kw_only=True):
    poll_delay: Duration


def import_every_extension() -> None:
    for module in {module for names in registry.EXTENSION_MODULES.values() for module in names.values()}:
        importlib.import_module(module)


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made in a test vanish after it (the registry is process-global).

    Every extension is imported first: one imported during the test would register into the scratch
    copy only, and stay unregistered (but imported) after it.
    """
    import_every_extension()
    monkeypatch.setattr(registry, "_by_category", {k: dict(v) for k, v in registry._by_category.items()})
    monkeypatch.setattr(registry, "_url_by_type", dict(registry._url_by_type))


def test_core_extensions_are_registered_by_type_url() -> None:
    assert registry.lookup(registry.NETWORK_FILTER, HCM_TYPE) is HttpConnectionManager
    assert registry.lookup(registry.HTTP_FILTER, ROUTER_TYPE) is Router
    assert registry.lookup(registry.NETWORK_FILTER, ROUTER_TYPE) is None
    assert HCM_TYPE in registry.type_urls(registry.NETWORK_FILTER)
    assert registry.type_urls(registry.KEY_PROVIDER) == {
        "type.googleapis.com/envoy.extensions.private_key_providers.cryptomb.v3alpha.CryptoMbPrivateKeyMethodConfig",
        "type.googleapis.com/envoy.extensions.private_key_providers.qat.v3alpha.QatPrivateKeyMethodConfig",
        "type.googleapis.com/envoy.extensions.private_key_providers.sgx.v3alpha.SgxPrivateKeyMethodConfig",
        "type.googleapis.com/pylon.key_providers.keyd.v1.Keyd",
        "type.googleapis.com/pylon.key_providers.offload.v1.Offload",
    }
    assert registry.categories_of(DOWNSTREAM_TLS_TYPE) == {registry.DOWNSTREAM_TRANSPORT_SOCKET}
    assert registry.type_url_of(Router) == ROUTER_TYPE and registry.type_url_of(Balancer) is None


def modules_calling_register_typed() -> set[str]:
    """Every module of pylon outside config that calls `register_typed`, found by reading the source."""
    root = Path(pylon.__file__).parent
    found = set()
    for path in root.rglob("*.py"):
        calls = (node.func for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call))
        if any(getattr(func, "attr", getattr(func, "id", None)) == "register_typed" for func in calls):
            found.add(".".join(("pylon", *path.relative_to(root).with_suffix("").parts)))
    return {module for module in found if not module.startswith("pylon.config.")}


def test_every_extension_outside_config_is_named_where_it_registers() -> None:
    assert modules_calling_register_typed() == {
        module for names in registry.EXTENSION_MODULES.values() for module in names.values()
    }
    import_every_extension()
    registered = {
        (category, name): struct_type.__module__
        for category, types in registry._by_category.items()
        for name, struct_type in types.items()
        if not struct_type.__module__.startswith("pylon.config.")
    }
    named = {
        (category, name): module
        for category, names in registry.EXTENSION_MODULES.items()
        for name, module in names.items()
    }
    assert registered == named


def load_in_a_fresh_process(config: dict[str, Any]) -> tuple[str, set[str]]:
    """Load `config` where nothing of pylon was imported yet: the ConfigError ("" if none), and pylon's modules then."""
    script = (
        "import json, sys\n"
        "from pylon.config.errors import ConfigError\n"
        "from pylon.config.loader import parse_bootstrap\n"
        "try:\n"
        "    parse_bootstrap(json.loads(sys.argv[1]), 'test')\n"
        "    error = ''\n"
        "except ConfigError as exc:\n"
        "    error = str(exc)\n"
        "print(json.dumps([error, [m for m in sys.modules if m.startswith('pylon.')]]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(config)], capture_output=True, text=True, check=True
    )
    error, modules = json.loads(done.stdout)
    return error, set(modules)


def http_filters_bootstrap(*filters: dict[str, Any]) -> dict[str, Any]:
    routes = [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]
    return bootstrap([listener(hcm(routes, http_filters=[*filters, router_filter()]))])


def test_an_extension_is_imported_when_a_config_names_it_and_only_then() -> None:
    error, modules = load_in_a_fresh_process(http_filters_bootstrap())
    assert error == ""
    assert not {m for m in modules if m.startswith(("pylon.extensions", "pylon.proxy", "pylon.keys"))}
    fault = {"name": "fault", "typed_config": {"@type": FAULT_TYPE}}
    error, modules = load_in_a_fresh_process(http_filters_bootstrap(fault))
    assert error == ""
    assert "pylon.extensions.filters.http.fault" in modules and "pylon.extensions.filters.http.rbac" not in modules


def test_an_unknown_type_lists_the_extensions_not_imported_yet() -> None:
    bogus = {"name": "bogus", "typed_config": {"@type": "type.googleapis.com/bogus.v1.Bogus"}}
    error, modules = load_in_a_fresh_process(http_filters_bootstrap(bogus))
    assert "unknown HTTP filter type type.googleapis.com/bogus.v1.Bogus; accepted here: " in error
    assert "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC" in error
    assert "type.googleapis.com/pylon.filters.http.v1.Python" in error
    assert not {m for m in modules if m.startswith("pylon.extensions.filters")}
    misplaced = {"name": "inspector", "typed_config": {"@type": TLS_INSPECTOR_TYPE}}
    error, _ = load_in_a_fresh_process(http_filters_bootstrap(misplaced))
    assert "is registered as listener filter, but this position takes HTTP filters" in error


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
