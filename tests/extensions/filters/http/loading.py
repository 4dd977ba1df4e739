"""Loading a bootstrap with one HTTP filter in front of the router, for the filters' config tests."""

from __future__ import annotations

from typing import Any

from pylon.config.loader import parse_bootstrap
from tests.proxy.conftest import http_listener, route, static_cluster


def load_filter(name: str, type_url: str, config: dict[str, Any]) -> None:
    """Parse a bootstrap whose listener has the filter `name` with `config` (ConfigError if refused)."""
    listener = http_listener("main", 10000, [route("/", "a")])
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, {
        "name": name, "typed_config": {"@type": type_url, **config}})
    parse_bootstrap({"static_resources": {"listeners": [listener], "clusters": [static_cluster("a", [1])]}}, "b.yaml")
