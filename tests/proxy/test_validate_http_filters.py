"""`--mode validate` builds HTTP filters as a worker does, so what only fails when built fails there.

An RBAC regex over RE2's program-size limit passed validation and then failed in the worker; Envoy
refuses it at load (checked: "RE2 program size of 124 > max program size of 100").
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"


ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def _validate_hcm(tmp_path: Path, filters: tuple[dict[str, object], ...] = (), **fields: object) -> str:
    """`--mode validate`'s output (it must refuse) for a direct-response HCM with `filters` before its router and
    the other `fields`."""
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
           "stat_prefix": "h", "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
               {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
           "http_filters": [*filters, ROUTER], **fields}
    config = tmp_path / "hcm.yaml"
    config.write_text(yaml.safe_dump({"static_resources": {"listeners": [{
        "name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]}]}}))
    run = subprocess.run([sys.executable, "-m", "pylon.cli", "proxy", "-c", str(config), "--mode", "validate"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    return run.stderr + run.stdout


def test_an_rbac_regex_over_the_re2_limit_is_a_config_error_naming_the_filter(tmp_path: Path) -> None:
    rbac = {"@type": RBAC_TYPE, "rules": {"action": "ALLOW", "policies": {"p": {
        "permissions": [{"header": {"name": "x-a", "string_match": {"safe_regex": {"regex": "(a|b|c|d|e|f|g)" * 40}}}}],
        "principals": [{"any": True}]}}}}
    out = _validate_hcm(tmp_path, ({"name": "envoy.filters.http.rbac", "typed_config": rbac},))
    assert "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config: regex" in out
    assert "max program size" in out


def test_a_local_reply_body_format_operator_unknown_is_a_config_error(tmp_path: Path) -> None:
    out = _validate_hcm(tmp_path, local_reply_config={"body_format": {"text_format": "%NOPE%"}})
    assert "typed_config.local_reply_config: unsupported access log command operator %NOPE%" in out


def test_an_access_log_filter_regex_over_the_re2_limit_is_a_config_error(tmp_path: Path) -> None:
    regex = {"string_match": {"safe_regex": {"regex": "(a|b|c|d|e|f|g)" * 40}}}
    out = _validate_hcm(tmp_path, access_log=[{"name": "a", "filter": {"header_filter": {"header": {
        "name": "x-a", **regex}}}, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"}}])
    assert "typed_config.access_log[0].filter: regex" in out and "max program size" in out
