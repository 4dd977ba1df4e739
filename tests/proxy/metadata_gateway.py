"""The rig the metadata filters' behaviour tests share: Envoy's docs' subset cluster (a `default: true` host and a
`version: 1.0` host, ANY_ENDPOINT fallback) and a plain cluster `up`, behind one listener, with a JSON access log;
and validate mode for refusal tests. Every process is stopped and every upstream closed, even on failure."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from tests.conftest import free_port
from tests.proxy.conftest import ENVOY_BIN, ProxyLauncher, RunningProxy, proxy_args, static_cluster
from tests.proxy.upstreams import Upstream


def versioned_cluster(default: int, versioned: int) -> dict[str, Any]:
    """Cluster `versioned`: the docs' subset selectors over a `default: true` host and a `version: 1.0` host."""
    cluster = static_cluster("versioned", [], lb_subset_config={
        "fallback_policy": "ANY_ENDPOINT", "subset_selectors": [{"keys": ["default"]}, {"keys": ["version"]}]})
    cluster["load_assignment"]["endpoints"] = [
        {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}},
                           "metadata": {"filter_metadata": {"envoy.lb": values}}}]}
        for port, values in ((default, {"default": "true"}), (versioned, {"version": "1.0"}))]
    return cluster


@dataclass
class MetadataGateway:
    proxy: RunningProxy
    port: int
    default: Upstream  # the `default: true` host
    versioned: Upstream  # the `version: 1.0` host
    up: Upstream  # cluster `up`'s host
    log: Path  # the JSON access log


@contextlib.contextmanager
def metadata_gateway(implementation: str, tmp_path: Path,
                     listener: Callable[[int, Path], dict[str, Any]]) -> Iterator[MetadataGateway]:
    default, versioned, up = Upstream(), Upstream(), Upstream()
    launcher = ProxyLauncher(tmp_path)
    try:
        port, log = free_port(), tmp_path / "access.json"
        proxy = launcher.start([listener(port, log)],
                               [versioned_cluster(default.port, versioned.port), static_cluster("up", [up.port])],
                               implementation=implementation)
        yield MetadataGateway(proxy, port, default, versioned, up, log)
    finally:
        launcher.close()
        for upstream in (default, versioned, up):
            upstream.close()


def validate(implementation: str, launcher: ProxyLauncher, config: Path) -> tuple[int, str]:
    """The exit code and output of `--mode validate` of pylon or Envoy on `config`."""
    if implementation == "envoy":
        args = [str(ENVOY_BIN), "--mode", "validate", "-c", str(config), "--use-dynamic-base-id", "-l", "critical"]
    else:
        args = proxy_args(config, 1, 5.0, "--mode", "validate")
    proc = launcher.spawn(args)
    out = proc.communicate(timeout=60)[0].decode(errors="replace")
    return proc.returncode, out
