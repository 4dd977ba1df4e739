"""Integration: `admin.allow_paths` (Envoy's configs/admin-interface.yaml), through pylon and Envoy alike.

With matchers set, the admin endpoint serves only the request targets (path and query together) one of them
matches; every other target, known endpoint or not, gets Envoy's 403 before any routing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.proxy.conftest import ProxyLauncher, RunningProxy
from tests.proxy.test_proxy_bootstrap_fields import start_with_admin

ALLOW_PATHS = [{"exact": "/ready"}, {"prefix": "/stats"}, {"safe_regex": {"regex": r"/server_info\?a=[0-9]+"}}]


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    launcher = ProxyLauncher(tmp_path_factory.mktemp(f"allow-paths-{request.param}"))
    try:
        yield start_with_admin(launcher, request.param, [], allow_paths=ALLOW_PATHS)
    finally:
        launcher.close()


def get(proxy: RunningProxy, target: str, method: str = "GET") -> tuple[int, str]:
    reply = httpx.request(method, f"http://127.0.0.1:{proxy.admin_port}{target}", timeout=10)
    return reply.status_code, reply.text


@pytest.mark.parametrize("target", ["/ready", "/stats", "/stats?filter=server", "/server_info?a=1"])
def test_allowed_targets_are_served(proxy: RunningProxy, target: str) -> None:
    assert get(proxy, target)[0] == 200


@pytest.mark.parametrize("target", ["/", "/clusters", "/ready?x", "/server_info", "/server_info?a=x", "/nothing"])
def test_other_targets_get_403_naming_them(proxy: RunningProxy, target: str) -> None:
    assert get(proxy, target) == (403, f"request to path {target} not allowed")


def test_refused_before_the_method_check(proxy: RunningProxy) -> None:
    assert get(proxy, "/quitquitquit", "POST") == (403, "request to path /quitquitquit not allowed")
    assert get(proxy, "/ready")[0] == 200  # still running
    assert get(proxy, "/statsnothing")[0] == 404  # allowed by the prefix, then no such endpoint
