"""Interop: `pylon pilot` configures a real Envoy 1.40 gateway over ADS, and Envoy routes as the resources say.

One pilot, one Envoy (bootstrap as Istio's agent writes it: node id router~…,
ADS over gRPC to a static `xds-grpc` cluster with HTTP/2) and two upstreams for
the module; each test writes the config directory and waits until Envoy serves it.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port, pylon_cmd, wait_for_port
from tests.pilot.builders import GATEWAY_NODE, doc, gateway, service_entry, subsets_rule, virtual_service, write_yaml
from tests.pilot.harness import ENVOY, Processes, bootstrap, eventually, needs_envoy, pilot_cmd

pytestmark = needs_envoy

HOST = "echo.example.com"


@dataclass
class Mesh:
    config_dir: Path
    gateway_port: int
    debug_port: int
    monitoring_port: int
    upstreams: dict[str, int]
    pilot: subprocess.Popen

    def get(self, path: str = "/", **headers: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.gateway_port}{path}", headers=headers, timeout=5)

    def debug(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.debug_port}{path}", timeout=5)

    def write(self, *http: dict[str, Any]) -> None:
        """The standard mesh with these VirtualService http routes."""
        endpoints = [("127.0.0.1", port, {"version": name}) for name, port in self.upstreams.items()]
        write_yaml(self.config_dir / "mesh.yaml", gateway(self.gateway_port, bind="127.0.0.1"),
                   service_entry(HOST, endpoints), subsets_rule(HOST, list(self.upstreams)), virtual_service(list(http)))


def served_by(response: httpx.Response) -> str:
    return response.json()["name"] if response.status_code == 200 else f"status {response.status_code}"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("pilot")
    processes = Processes()
    start = processes.start
    try:
        upstreams = {name: processes.upstream(name) for name in ("v1", "v2")}
        config_dir = base / "config"
        config_dir.mkdir()
        xds_port, debug_port, monitoring_port, admin_port = free_port(), free_port(), free_port(), free_port()
        mesh = Mesh(config_dir=config_dir, gateway_port=free_port(), debug_port=debug_port,
                    monitoring_port=monitoring_port, upstreams=upstreams, pilot=None)  # type: ignore[arg-type]
        mesh.write({"route": [{"destination": {"host": HOST, "subset": "v1"}}]})
        mesh.pilot = start(pilot_cmd(config_dir, base, xds_port, debug_port, monitoring_port))
        wait_for_port(xds_port, proc=mesh.pilot)
        (base / "envoy.yaml").write_text(yaml.safe_dump(bootstrap(
            GATEWAY_NODE, "istio-ingressgateway.istio-system",
            {"NAMESPACE": "istio-system", "LABELS": {"istio": "ingressgateway"}}, admin_port, xds_port)))
        envoy = start([str(ENVOY), "-c", str(base / "envoy.yaml"), "--disable-hot-restart", "-l", "error",
                       "--drain-strategy", "immediate"])
        wait_for_port(mesh.gateway_port, proc=envoy, timeout=20)
        eventually(lambda: served_by(mesh.get()) == "v1")
        yield mesh
    finally:
        processes.stop()


def apply(mesh: Mesh, *http: dict[str, Any]) -> None:
    """Write routes and wait until pilot has pushed them and Envoy ACKed (syncz shows a new acked RDS version)."""
    before = mesh.debug("/debug/syncz").json()[0]["types"]["rds"]["acked"]
    mesh.write(*http)
    eventually(lambda: mesh.debug("/debug/syncz").json()[0]["types"]["rds"]["acked"] != before)


def test_routes_headers_redirect_and_fault(mesh: Mesh) -> None:
    apply(mesh,
          {"match": [{"headers": {"x-version": {"exact": "v2"}}}], "route": [{"destination": {"host": HOST, "subset": "v2"}}],
           "headers": {"request": {"set": {"x-added": "yes"}}, "response": {"set": {"x-routed": "v2"}}}},
          {"match": [{"uri": {"prefix": "/api/"}}], "rewrite": {"uri": "/"},
           "route": [{"destination": {"host": HOST, "subset": "v2"}}]},
          {"match": [{"uri": {"exact": "/old"}}], "redirect": {"uri": "/new", "redirectCode": 302}},
          {"match": [{"uri": {"regex": "/teapot/.*"}}], "fault": {"abort": {"httpStatus": 418, "percentage": {"value": 100}}},
           "route": [{"destination": {"host": HOST, "subset": "v1"}}]},
          {"route": [{"destination": {"host": HOST, "subset": "v1"}}]})  # fmt: skip
    assert served_by(mesh.get("/x")) == "v1"
    by_header = mesh.get("/x", **{"x-version": "v2"})
    assert served_by(by_header) == "v2" and by_header.headers["x-routed"] == "v2"
    assert by_header.json()["headers"]["x-added"] == "yes"
    rewritten = mesh.get("/api/items")
    assert (served_by(rewritten), rewritten.json()["path"]) == ("v2", "/items")
    redirect = mesh.get("/old")
    assert redirect.status_code == 302 and redirect.headers["location"].endswith("/new")
    assert mesh.get("/teapot/1").status_code == 418


def test_weights_within_statistical_bounds(mesh: Mesh) -> None:
    apply(mesh, {"route": [{"destination": {"host": HOST, "subset": "v1"}, "weight": 80},
                           {"destination": {"host": HOST, "subset": "v2"}, "weight": 20}]})
    with httpx.Client(base_url=f"http://127.0.0.1:{mesh.gateway_port}", timeout=5) as client:
        counts = Counter(client.get("/").json()["name"] for _ in range(400))
    # 400 draws at p=0.8: sigma = 8; 5 sigma either side keeps this from flaking yet catches 50/50 or 100/0
    assert 280 <= counts["v1"] <= 360, counts


def test_edit_changes_envoy_behaviour_within_two_seconds(mesh: Mesh) -> None:
    apply(mesh, {"route": [{"destination": {"host": HOST, "subset": "v1"}}]})
    assert served_by(mesh.get()) == "v1"
    mesh.write({"route": [{"destination": {"host": HOST, "subset": "v2"}}]})
    assert eventually(lambda: served_by(mesh.get()) == "v2", timeout=5) < 2.0
    status = mesh.debug("/debug/syncz").json()[0]
    assert {t: s["acked"] == s["sent"] and not s["nack"] for t, s in status["types"].items()} == {
        "cds": True, "eds": True, "lds": True, "rds": True}


def test_bad_edit_keeps_the_last_good_config(mesh: Mesh) -> None:
    apply(mesh, {"route": [{"destination": {"host": HOST, "subset": "v1"}}]})
    (mesh.config_dir / "broken.yaml").write_text(yaml.safe_dump(doc("VirtualService", "bad", {"hosts": ["*"], "tls": [{"match": []}]})))
    try:
        metrics = f"http://127.0.0.1:{mesh.monitoring_port}/metrics"
        eventually(lambda: "pilot_config_errors_total 1.0" in httpx.get(metrics, timeout=5).text)
        assert served_by(mesh.get()) == "v1"
        assert "pilot_xds 1.0" in httpx.get(metrics, timeout=5).text
    finally:
        (mesh.config_dir / "broken.yaml").unlink()


def test_debug_endpoints(mesh: Mesh) -> None:
    assert mesh.debug("/ready").status_code == 200
    dump = mesh.debug("/debug/config_dump?proxyID=gw.istio-system").json()
    assert [listener["name"] for listener in dump["listeners"]] == [f"127.0.0.1_{mesh.gateway_port}"]
    assert dump["routes"][0]["name"] == f"http.{mesh.gateway_port}.127.0.0.1"
    assert mesh.debug("/debug/config_dump?proxyID=nobody.ns").status_code == 404
    [connection] = mesh.debug("/debug/connections").json()
    assert connection["proxy"] == GATEWAY_NODE and connection["labels"] == {"istio": "ingressgateway"}


def test_pilot_refuses_a_bad_config_directory_at_startup(tmp_path: Path) -> None:
    write_yaml(tmp_path / "a.yaml", doc("VirtualService", "v", {"hosts": ["*"], "http": [{"route": []}]}))
    result = subprocess.run(pylon_cmd("pilot", "--config-dir", str(tmp_path), "--grpc-address", f"127.0.0.1:{free_port()}"),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"config error in {tmp_path}/a.yaml (document 1, VirtualService default/v): spec.http[0]" in result.stderr


AUTHZ_TABLE = [
    # (method, path, headers, expected status, why - Istio's documented semantics)
    ("GET", "/public/a", {}, 200, "ALLOW rule 0: GET on /public/*"),
    ("POST", "/public/a", {}, 403, "rule 0 needs GET; nothing else allows: default deny once an ALLOW policy applies"),
    ("GET", "/other", {}, 403, "no ALLOW rule matches"),
    ("GET", "/other", {"x-token": "secret"}, 200, "ALLOW rule 1: when request.headers[x-token]"),
    ("GET", "/other", {"x-token": "guess"}, 403, "header value must match"),
    ("GET", "/admin/users", {"x-token": "secret"}, 403, "DENY is evaluated before ALLOW"),
    ("GET", "/public/a", {"x-block": "1"}, 403, "DENY: request header present"),
    ("GET", "/loopback-only", {}, 200, "ALLOW rule 2: source ipBlocks 127.0.0.0/8"),
    ("GET", "/ten-only", {}, 403, "ALLOW rule 3: ipBlocks 10.0.0.0/8 does not contain 127.0.0.1"),
    ("DELETE", "/public/a", {"x-token": "secret"}, 403, "DENY: notMethods [GET, POST] under /public/*"),
]


def test_authorization_policy_table_through_real_envoy(mesh: Mesh) -> None:
    """A DENY and an ALLOW policy on the gateway; each request gets what Istio's semantics say, then removing the
    policies allows everything again."""
    deny = doc("AuthorizationPolicy", "deny", {"selector": {"matchLabels": {"istio": "ingressgateway"}}, "action": "DENY",
               "rules": [{"to": [{"operation": {"paths": ["/admin/*"]}}]},
                         {"when": [{"key": "request.headers[x-block]", "values": ["*"]}]},
                         {"from": [{"source": {"notIpBlocks": ["127.0.0.0/8"]}}]},
                         {"to": [{"operation": {"paths": ["/public/*"], "notMethods": ["GET", "POST"]}}]}]},
               namespace="istio-system", api_version="security.istio.io/v1")  # fmt: skip
    allow = doc("AuthorizationPolicy", "allow", {"rules": [
        {"to": [{"operation": {"methods": ["GET"], "paths": ["/public/*"]}}]},
        {"when": [{"key": "request.headers[x-token]", "values": ["secret"]}]},
        {"from": [{"source": {"ipBlocks": ["127.0.0.0/8"]}}], "to": [{"operation": {"paths": ["/loopback-only"]}}]},
        {"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}], "to": [{"operation": {"paths": ["/ten-only"]}}]},
    ]}, namespace="istio-system", api_version="security.istio.io/v1")  # fmt: skip
    before = mesh.debug("/debug/syncz").json()[0]["types"]["lds"]["acked"]
    mesh.write({"route": [{"destination": {"host": HOST, "subset": "v1"}}]})
    write_yaml(mesh.config_dir / "authz.yaml", deny, allow)
    try:
        eventually(lambda: mesh.debug("/debug/syncz").json()[0]["types"]["lds"]["acked"] != before)
        eventually(lambda: mesh.get("/other").status_code == 403)
        with httpx.Client(base_url=f"http://127.0.0.1:{mesh.gateway_port}", timeout=5) as client:
            got = [(m, p, h, client.request(m, p, headers=h).status_code) for m, p, h, _, _ in AUTHZ_TABLE]
            denied = client.get("/other")
        assert got == [(m, p, h, status) for m, p, h, status, _ in AUTHZ_TABLE]
        assert denied.text == "RBAC: access denied"
    finally:
        (mesh.config_dir / "authz.yaml").unlink()
    eventually(lambda: mesh.get("/other").status_code == 200)


def test_a_delegated_route_serves_the_delegates_routes_inside_the_roots_match(mesh: Mesh) -> None:
    """Istio's VirtualService delegation: the root hands `/api` to a VirtualService of another namespace; its routes
    apply inside `/api` only (one for `/web` fits nowhere in it and is dropped), and take the root route's header
    rules; everything else stays the root's."""
    before = mesh.debug("/debug/syncz").json()[0]["types"]["rds"]["acked"]
    endpoints = [("127.0.0.1", port, {"version": name}) for name, port in mesh.upstreams.items()]
    delegate = doc("VirtualService", "api", {"http": [
        {"match": [{"uri": {"prefix": "/api/v2"}}], "route": [{"destination": {"host": HOST, "subset": "v2"}}]},
        {"match": [{"uri": {"prefix": "/web"}}], "route": [{"destination": {"host": HOST, "subset": "v2"}}]},
        {"route": [{"destination": {"host": HOST, "subset": "v1"}}]}]}, namespace="team")  # fmt: skip
    root = virtual_service([
        {"match": [{"uri": {"prefix": "/api"}}], "delegate": {"name": "api", "namespace": "team"},
         "headers": {"response": {"set": {"x-root": "yes"}}}},
        {"route": [{"destination": {"host": HOST, "subset": "v1"}}]}])  # fmt: skip
    write_yaml(mesh.config_dir / "mesh.yaml", gateway(mesh.gateway_port, bind="127.0.0.1"),
               service_entry(HOST, endpoints), subsets_rule(HOST, list(mesh.upstreams)), root, delegate)
    eventually(lambda: mesh.debug("/debug/syncz").json()[0]["types"]["rds"]["acked"] != before)
    v2 = mesh.get("/api/v2/items")
    assert served_by(v2) == "v2" and v2.headers["x-root"] == "yes"
    other = mesh.get("/api/other")
    assert served_by(other) == "v1" and other.headers["x-root"] == "yes"
    web = mesh.get("/web")
    assert served_by(web) == "v1" and "x-root" not in web.headers  # the root's own route, not the dropped one


def test_cors_policy_added_and_changed(mesh: Mesh) -> None:
    """A corsPolicy edit reaches Envoy (RDS ACKed) and changes its answers; tests/pilot/test_cors_interop.py has
    the whole policy through Envoy and pylon proxy."""
    origin = {"origin": "https://a.example"}
    preflight = {**origin, "access-control-request-method": "PUT"}
    to_v1 = [{"destination": {"host": HOST, "subset": "v1"}}]
    apply(mesh, {"route": to_v1, "corsPolicy": {"allowOrigins": [{"exact": "https://a.example"}], "maxAge": "10s"}})
    answered = httpx.options(f"http://127.0.0.1:{mesh.gateway_port}/", headers=preflight, timeout=5)
    assert (answered.status_code, answered.headers["access-control-max-age"]) == (200, "10")
    assert "name" not in answered.text  # the gateway answered, not an upstream
    assert mesh.get("/", **origin).headers["access-control-allow-origin"] == "https://a.example"
    apply(mesh, {"route": to_v1, "corsPolicy": {"allowOrigins": [{"exact": "https://b.example"}]}})
    forwarded = httpx.options(f"http://127.0.0.1:{mesh.gateway_port}/", headers=preflight, timeout=5)
    # forwarded: the test upstream has no OPTIONS handler and answers 501 itself
    assert forwarded.status_code == 501 and "access-control-allow-origin" not in forwarded.headers
    apply(mesh, {"route": to_v1})
