"""grpc_web's config: an empty message; anything in it is refused by name."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.errors import ConfigError
from tests.extensions.filters.http.loading import load_filter

TYPE = "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"


def load(**config: Any) -> None:
    load_filter("envoy.filters.http.grpc_web", TYPE, config)


def test_config() -> None:
    load()
    with pytest.raises(ConfigError) as raised:
        load(text_mode=True)
    assert "text_mode" in str(raised.value)
