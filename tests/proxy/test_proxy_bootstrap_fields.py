"""Integration: bootstrap fields common in published Envoy configs, at run time, through pylon and Envoy.

- `admin.access_log_path` (deprecated, still widely used) and `admin.access_log`: admin requests are
  logged as Envoy logs them (Envoy's default format for the path; a file that cannot be opened stops
  the proxy with Envoy's reason);
- `stats_flush_interval` / `stats_flush_on_admin`: how often the supervisor gathers the workers'
  counts (pylon only: Envoy has no worker processes to lose);
- `layered_runtime`: `re2.max_program_size.error_level` lets a large regex load, and `/runtime` shows
  the layers as Envoy does;
- enum names in lower case (`lb_policy: round_robin`, `codec_type: auto`) behave as the upper-case ones.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pylon.proxy.local_address import envoy_local_address
from tests.conftest import free_port, wait_for_port
from tests.proxy.conftest import (
    ENVOY_BIN, FILE_LOG_TYPE, ProxyLauncher, RunningProxy, envoy_args, http_listener, proxy_args, read_json_lines,
    route, static_cluster, wait_until, write_bootstrap,
)

MARK = "bootstrap-fields-test"  # the user agent of this test's admin requests (the launcher's /ready polls differ)


def direct(body: str = "ok") -> dict[str, Any]:
    return {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": body}}}


def admin_url(proxy: RunningProxy, target: str) -> str:
    return f"http://127.0.0.1:{proxy.admin_port}{target}"


def admin_config(path: Path, listeners: list[dict[str, Any]], admin_port: int, **admin: Any) -> Path:
    """A bootstrap with these listeners and more admin fields besides the admin address."""
    write_bootstrap(path, listeners, [], admin_port)
    data = yaml.safe_load(path.read_text())
    data["admin"].update(admin)
    path.write_text(yaml.safe_dump(data))
    return path


def start_with_admin(launcher: ProxyLauncher, implementation: str, listeners: list[dict[str, Any]],
                     **admin: Any) -> RunningProxy:
    """`launcher.start` for a bootstrap whose admin block has more than the address."""
    if implementation == "envoy" and not ENVOY_BIN.exists():
        pytest.skip(f"Envoy, the reference, is not installed at {ENVOY_BIN}")
    admin_port = free_port()
    config = admin_config(launcher.directory / f"{implementation}-admin-{admin_port}.yaml", listeners, admin_port,
                          **admin)
    proc = launcher.spawn(envoy_args(config) if implementation == "envoy" else proxy_args(config))
    wait_for_port(admin_port, proc=proc)
    assert wait_until(lambda: httpx.get(f"http://127.0.0.1:{admin_port}/ready").status_code == 200, timeout=20)
    ports = {l["name"]: l["address"]["socket_address"]["port_value"] for l in listeners}
    return RunningProxy(proc, admin_port, ports, config)


def wait_for_lines(path: Path, count: int, timeout: float = 5.0) -> list[str]:
    """This test's lines of a log file, once there are `count` of them (loggers flush every 0.25-1 s)."""
    def lines() -> list[str]:
        text = path.read_text() if path.exists() else ""
        return [line for line in text.splitlines() if MARK in line]
    found = wait_until(lambda: len(lines()) >= count and lines(), timeout=timeout)
    return found or lines()


# --------------------------------------------------------------------------- admin access log


ADMIN_JSON = {
    "method": "%REQ(:METHOD)%", "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "protocol": "%PROTOCOL%",
    "code": "%RESPONSE_CODE%", "details": "%RESPONSE_CODE_DETAILS%", "flags": "%RESPONSE_FLAGS%",
    "received": "%BYTES_RECEIVED%", "sent": "%BYTES_SENT%", "authority": "%REQ(:AUTHORITY)%",
    "xff": "%REQ(X-FORWARDED-FOR)%", "xfp": "%REQ(X-FORWARDED-PROTO)%", "external": "%REQ(X-ENVOY-EXTERNAL-ADDRESS)%",
    "request_id": "%REQ(X-REQUEST-ID)%", "agent": "%REQ(USER-AGENT)%", "content_type": "%RESP(CONTENT-TYPE)%",
    "upstream": "%UPSTREAM_HOST%", "cluster": "%UPSTREAM_CLUSTER%", "remote": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "local": "%DOWNSTREAM_LOCAL_ADDRESS%", "route": "%ROUTE_NAME%",
}


def test_admin_requests_are_logged_as_envoy_logs_them(implementation: str, launcher: ProxyLauncher,
                                                       tmp_path: Path) -> None:
    default_log = tmp_path / f"{implementation}-admin.log"
    json_log = tmp_path / f"{implementation}-admin.json"
    admin = {
        "access_log_path": str(default_log),
        "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": FILE_LOG_TYPE, "path": str(json_log), "log_format": {"json_format": ADMIN_JSON}}}],
    }
    port = free_port()
    proxy = start_with_admin(launcher, implementation, [http_listener("main", port, [direct()])], **admin)
    headers = {"user-agent": MARK}
    assert httpx.get(admin_url(proxy, "/ready?x=1"), headers={**headers, "x-request-id": "rid-1"}).status_code == 200
    assert httpx.post(admin_url(proxy, "/ready"), content=b"abc",
                      headers={**headers, "x-forwarded-for": "10.1.2.3"}).status_code == 200
    assert httpx.get(f"http://127.0.0.1:{port}/", headers=headers).status_code == 200  # not an admin request

    here = envoy_local_address()  # what Envoy appends to x-forwarded-for for a loopback client
    lines = wait_for_lines(default_log, 2)
    line = re.compile(r'^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] "(?P<request>[^"]*)" (?P<code>\d+) - (?P<received>\d+) '
                      r'(?P<sent>\d+) \d+ - "(?P<xff>[^"]*)" "(?P<agent>[^"]*)" "(?P<rid>[^"]*)" "(?P<authority>[^"]*)" "-"$')
    parsed = [line.match(text) for text in lines]
    assert all(parsed), lines
    assert [m.groupdict() for m in parsed] == [  # type: ignore[union-attr]
        {"request": "GET /ready?x=1 HTTP/1.1", "code": "200", "received": "0", "sent": "5", "xff": here,
         "agent": MARK, "rid": "rid-1", "authority": f"127.0.0.1:{proxy.admin_port}"},
        {"request": "POST /ready HTTP/1.1", "code": "200", "received": "3", "sent": "5", "xff": f"10.1.2.3,{here}",
         "agent": MARK, "rid": "-", "authority": f"127.0.0.1:{proxy.admin_port}"},
    ]
    records = [r for r in read_json_lines(json_log, 4) if r["agent"] == MARK]
    common = {"protocol": "HTTP/1.1", "code": 200, "details": "admin_filter_response", "flags": "-", "sent": 5,
              "authority": f"127.0.0.1:{proxy.admin_port}", "xfp": "http", "external": "127.0.0.1", "agent": MARK,
              "content_type": "text/plain; charset=UTF-8", "upstream": None, "cluster": None, "remote": "127.0.0.1",
              "local": f"127.0.0.1:{proxy.admin_port}", "route": None}
    assert records == [
        {**common, "method": "GET", "path": "/ready?x=1", "received": 0, "xff": here, "request_id": "rid-1"},
        {**common, "method": "POST", "path": "/ready", "received": 3, "xff": f"10.1.2.3,{here}", "request_id": None},
    ]


def _validate(implementation: str, launcher: ProxyLauncher, config: Path) -> tuple[int, str]:
    if implementation == "envoy":
        if not ENVOY_BIN.exists():
            pytest.skip(f"Envoy, the reference, is not installed at {ENVOY_BIN}")
        args = [str(ENVOY_BIN), "--mode", "validate", "-c", str(config), "--use-dynamic-base-id", "-l", "critical"]
    else:
        args = proxy_args(config, 1, 5.0, "--mode", "validate")
    proc = launcher.spawn(args)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out.decode(errors="replace")


def test_an_admin_log_that_cannot_be_opened_is_a_config_error(implementation: str, launcher: ProxyLauncher,
                                                              tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "admin.log"
    config = admin_config(tmp_path / "bad-admin-log.yaml", [http_listener("main", free_port(), [direct()])],
                          free_port(), access_log_path=str(missing))
    code, out = _validate(implementation, launcher, config)
    assert code != 0
    assert f"unable to open file '{missing}': No such file or directory" in out
    if implementation == "pylon":
        assert out.strip() == (f"config error in {config}: admin.access_log_path: unable to open file '{missing}': "
                               "No such file or directory")


def test_validate_mode_creates_the_admin_log(implementation: str, launcher: ProxyLauncher, tmp_path: Path) -> None:
    log = tmp_path / "created.log"
    config = admin_config(tmp_path / "admin-log.yaml", [http_listener("main", free_port(), [direct()])], free_port(),
                          access_log_path=str(log))
    code, out = _validate(implementation, launcher, config)
    assert code == 0, out
    assert log.exists()


# --------------------------------------------------------------------------- stats_flush_interval


def _restart_worker(proxy: RunningProxy) -> None:
    (old,) = proxy.worker_pids()  # /server_info does not gather stats
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: proxy.worker_pids() != [old] and proxy.admin("/ready").status_code == 200, timeout=15)


def _counts_kept_by_a_dying_worker(run_proxy: Any, flush: dict[str, Any], wait: float) -> int:
    """Requests counted after a worker that served 7 of them died `wait` s later, nobody asking for stats meanwhile."""
    proxy = run_proxy([http_listener("main", free_port(), [direct()])], [], bootstrap_extra=flush)
    with httpx.Client() as client:
        for _ in range(7):
            assert client.get(proxy.url("main", "/")).status_code == 200
    time.sleep(wait)
    _restart_worker(proxy)
    return proxy.stats().get("http.main.downstream_rq_total", 0)


def test_stats_flush_interval_sets_how_often_worker_counts_are_gathered(run_proxy: Any) -> None:
    assert _counts_kept_by_a_dying_worker(run_proxy, {"stats_flush_interval": "0.1s"}, 1.0) == 7


def test_counts_since_the_last_gathering_die_with_a_worker(run_proxy: Any) -> None:
    """Envoy's default interval, 5 s (from start-up): a worker killed soon after its requests takes their counts along."""
    assert _counts_kept_by_a_dying_worker(run_proxy, {}, 0.5) == 0


def test_stats_flush_on_admin_gathers_only_when_asked(run_proxy: Any) -> None:
    """No timer at all: even 6 s later (past the default 5 s) the counts are the worker's alone."""
    assert _counts_kept_by_a_dying_worker(run_proxy, {"stats_flush_on_admin": True}, 6.0) == 0


# --------------------------------------------------------------------------- layered_runtime

#: RE2 program size 124: over Envoy's default limit of 100.
BIG_REGEX = "/[a-z]{1,60}"


def test_runtime_raises_the_re2_program_size_limit(implementation: str, run_proxy: Any) -> None:
    runtime = {"layers": [
        {"name": "base", "static_layer": {"re2": {"max_program_size": {"error_level": 50}}}},
        {"name": "admin", "admin_layer": {}},
        {"name": "override", "static_layer": {"re2.max_program_size.error_level": 1000}},
    ]}
    port = free_port()
    routes = [{"match": {"safe_regex": {"regex": BIG_REGEX}}, "direct_response": {"status": 200}},
              {"match": {"prefix": "/"}, "direct_response": {"status": 404}}]
    proxy = run_proxy([http_listener("main", port, routes)], [], implementation=implementation,
                      bootstrap_extra={"layered_runtime": runtime})
    assert httpx.get(proxy.url("main", "/abc")).status_code == 200
    assert httpx.get(proxy.url("main", "/abc1")).status_code == 404
    assert proxy.admin("/runtime").json() == {
        "entries": {"re2.max_program_size.error_level": {"layer_values": ["50", "", "1000"], "final_value": "1000"}},
        "layers": ["base", "admin", "override"],
    }


def test_without_the_runtime_key_the_regex_is_refused(implementation: str, launcher: ProxyLauncher,
                                                      tmp_path: Path) -> None:
    routes = [{"match": {"safe_regex": {"regex": BIG_REGEX}}, "direct_response": {"status": 200}}]
    config = write_bootstrap(tmp_path / "big-regex.yaml", [http_listener("main", free_port(), routes)], [], free_port())
    code, out = _validate(implementation, launcher, config)
    assert code != 0
    assert "RE2 program size of 124 > max program size of 100" in out


def test_runtime_modify_is_refused_out_loud(run_proxy: Any) -> None:
    proxy = run_proxy([http_listener("main", free_port(), [direct()])], [],
                      bootstrap_extra={"layered_runtime": {"layers": [{"name": "admin", "admin_layer": {}}]}})
    reply = httpx.post(admin_url(proxy, "/runtime_modify?re2.max_program_size.error_level=10"))
    assert reply.status_code == 503
    assert "not supported yet" in reply.text


# --------------------------------------------------------------------------- enum names in lower case


def test_lower_case_enum_names_behave_as_envoys(implementation: str, run_proxy: Any, upstreams: Any) -> None:
    first, second = upstreams(2)
    cluster = static_cluster("up", [first.port, second.port], type="static", lb_policy="round_robin",
                             dns_lookup_family="v4_only")
    port = free_port()
    listener = http_listener("main", port, [route("/", "up")], codec_type="auto",
                             server_header_transformation="pass_through")
    proxy = run_proxy([listener], [cluster], implementation=implementation)
    with httpx.Client() as client:
        for _ in range(6):
            assert client.get(proxy.url("main", "/x")).status_code == 200
    assert (len(first.requests), len(second.requests)) == (3, 3)
    dump = proxy.admin("/config_dump").json()
    if implementation == "pylon":  # decoded to Envoy's own spelling, as Envoy's config dump shows it
        clusters = dump["configs"][0]["bootstrap"]["static_resources"]["clusters"]
        assert clusters[0].get("lb_policy", "ROUND_ROBIN") == "ROUND_ROBIN"
        assert clusters[0].get("dns_lookup_family") == "V4_ONLY"
