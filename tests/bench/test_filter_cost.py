"""benchmarks/filter_cost.py: every variant's config is one pylon (and Envoy, when installed) accepts, and the
requests its wrk scripts and headers describe are the ones the variants' docstring promises."""

from __future__ import annotations

import base64
import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pylon.bench.targets import TargetError, find_envoy, unique_base_id
from pylon.extensions.filters.common.session_state import decode_cookie
from tests.bench.benchmark_scripts import load_benchmark

filter_cost = load_benchmark("filter_cost")


def write_config(tmp_path: Path, variant: str) -> Path:
    path = tmp_path / f"{variant}.yaml"
    path.write_text(yaml.safe_dump(filter_cost.config(variant, 10000, 10001, 10002, 10003)))
    return path


def pylon_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pylon.cli", "proxy", "-c", str(path), "--mode", "validate"],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("variant", list(filter_cost.VARIANTS))
def test_variant_config_validates_in_pylon(tmp_path: Path, variant: str) -> None:
    result = pylon_validate(write_config(tmp_path, variant))
    assert result.returncode == 0, result.stdout + result.stderr


def test_validate_mode_refuses_a_broken_variant(tmp_path: Path) -> None:
    """The check above can fail: a misspelt field in a variant's filter is refused."""
    bootstrap = filter_cost.config("rbac", 10000, 10001, 10002, 10003)
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"][0]["typed_config"]["rules"]["polices"] = {}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    result = pylon_validate(path)
    assert result.returncode != 0
    assert "polices" in result.stdout + result.stderr


def test_every_variant_config_validates_in_envoy(tmp_path: Path) -> None:
    try:
        envoy = find_envoy()
    except TargetError as exc:
        pytest.skip(str(exc))
    for variant in filter_cost.VARIANTS:
        result = subprocess.run([envoy, "--mode", "validate", "-c", str(write_config(tmp_path, variant)),
                                 "--base-id", str(unique_base_id()), "-l", "error"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{variant}: {result.stdout}{result.stderr}"


def lua_body(lua: str) -> bytes:
    """The bytes of the `wrk.body` literal of a request script (every byte a 3-digit decimal escape)."""
    literal = re.search(r'^wrk\.body = "(.*)"$', lua, re.M)
    assert literal is not None
    return bytes(int(code) for code in re.findall(r"\\(\d{3})", literal.group(1)))


def test_request_scripts_carry_the_bodies_the_filters_work_on() -> None:
    assert lua_body(filter_cost.POST_LUA) == b""
    assert json.loads(lua_body(filter_cost.POST_JSON_LUA)) == {"tenant": "wrk", "id": 1}
    assert len(gzip.decompress(lua_body(filter_cost.POST_GZIP_LUA))) > 1000
    assert 'wrk.headers["Content-Encoding"] = "gzip"' in filter_cost.POST_GZIP_LUA
    assert json.loads(lua_body(filter_cost.JSON_REQUEST))["model"] == "gpt-4"
    assert all(filter_cost.REQUEST_LUA.get(v) == filter_cost.REQUEST_LUA.get(base) for v, base in filter_cost.BASELINE.items())


def test_session_cookie_names_the_upstream() -> None:
    header = filter_cost.request_headers("stateful_session", 4242)
    assert len(header) == 1 and header[0].startswith(f"Cookie: {filter_cost.SESSION_COOKIE}=")
    message = decode_cookie(base64.b64decode(header[0].split("=", 1)[1]))
    assert message is not None and message.address == b"127.0.0.1:4242" and message.expires == 0
