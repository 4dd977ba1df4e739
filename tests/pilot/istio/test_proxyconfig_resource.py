"""The ProxyConfig resource (networking.istio.io/v1beta1): decoded with istiod's checks, errors naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.pilot.istio.resources import decode_resource
from tests.pilot.builders import doc

V1BETA1 = "networking.istio.io/v1beta1"


def proxy_config(spec: dict[str, Any], api_version: str = V1BETA1) -> Any:
    return decode_resource(doc("ProxyConfig", "pc", spec, namespace="ns", api_version=api_version), "pc.yaml", 0)


def error_of(spec: dict[str, Any], api_version: str = V1BETA1) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        proxy_config(spec, api_version)
    return info.value


def test_every_field_decodes() -> None:
    resource = proxy_config({"selector": {"matchLabels": {"app": "ratings"}}, "concurrency": 0,
                             "environmentVariables": {"FOO": "bar", "ISTIO_META_X": "1"},
                             "image": {"imageType": "distroless"}})  # fmt: skip
    spec = resource.spec
    assert resource.kind == "ProxyConfig" and resource.namespace == "ns"
    assert spec.selector.match_labels == {"app": "ratings"}
    assert spec.concurrency == 0
    assert spec.environment_variables == {"FOO": "bar", "ISTIO_META_X": "1"}
    assert spec.image.image_type == "distroless"


def test_an_empty_spec_is_valid_and_sets_nothing() -> None:
    spec = proxy_config({}).spec
    assert (spec.selector, spec.concurrency, spec.environment_variables, spec.image) == (None, None, {}, None)


def test_served_only_as_v1beta1() -> None:
    error = error_of({}, api_version="networking.istio.io/v1")
    assert error.path == "apiVersion" and "networking.istio.io/v1beta1" in error.message


def test_negative_concurrency_is_istios_error() -> None:
    error = error_of({"concurrency": -1})
    assert (error.path, error.message) == ("spec.concurrency", "concurrency must be greater than or equal to 0")
    assert error_of({"concurrency": "2"}).path == "spec.concurrency"


def test_selector_rules_are_istios() -> None:
    error = error_of({"selector": {"matchLabels": {"app": "web*"}}})
    assert error.path == "spec.selector.matchLabels.app" and "wildcard is not supported in selector" in error.message
    error = error_of({"selector": {"matchLabels": {"": "x"}}})
    assert error.path == "spec.selector.matchLabels" and "empty key" in error.message
    assert error_of({"selector": {"labels": {"app": "a"}}}).path == "spec.selector.labels"  # the pre-1.14 spelling


def test_environment_variable_names_are_checked_as_kubernetes_does() -> None:
    error = error_of({"environmentVariables": {"1ABC": "x"}})
    assert error.path == "spec.environmentVariables.1ABC" and "environment variable name" in error.message
    assert error_of({"environmentVariables": {"A=B": "x"}}).path == "spec.environmentVariables.A=B"
    assert error_of({"environmentVariables": {"A": 1}}).path.startswith("spec.environmentVariables")


def test_unknown_fields_name_themselves() -> None:
    error = error_of({"proxyMetadata": {"A": "b"}})  # a mesh ProxyConfig field, not the resource's
    assert (error.path, error.message) == ("spec.proxyMetadata", "unknown field")
    assert error_of({"image": {"type": "debug"}}).path == "spec.image.type"
