"""`pylon bench SCENARIO.yaml`: targets side by side under the same load, repetitions interleaved.

A scenario file names an upstream (`pylon echo` or nginx), the targets (a
pylon config, an Envoy config, or any URL), a load profile (Fortio's load
flags, run by `pylon load`'s engine or by wrk) and a number of repetitions.
Runs are interleaved (rep 1: A, B, C; rep 2: A, B, C; ...) so slow drifts of
this noisy machine hit every target alike. Each run becomes one Fortio JSON
with pylon's extra fields:

- `Target`, `TargetKind`, `Repetition`, `LoadTool`;
- `TargetCPUSeconds` (the target's process-tree CPU during the run, from
  /proc; null for a `url` target, which we did not start) and
  `RequestsPerTargetCPUSecond` — the stable metric on a small machine;
- `UpstreamCPUSeconds` and `LoadCPUSeconds` (the load tool's own CPU), to
  show neither was the bottleneck.

Config files are templates: `{upstream_port}`, `{listen_port}`,
`{admin_port}`, `{workdir}` and, when used, `{server_cert}`, `{server_key}`,
`{ca_cert}` (a test PKI made on demand) are filled in per target; nothing else
in the file is touched, so YAML flow mappings `{ a: b }` stay as they are.

Loading and checking the file is plain data work (`parse_scenario`,
`render_template`, `summarize`); `BenchRun` owns the processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import shlex
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import click
import yaml
from rich.console import Console
from rich.table import Table

from pylon.bench.fortio_args import (
    LoadOptions, LoadUsageError, format_go_duration, parse_go_duration, parse_load_args,
)
from pylon.bench.load import FortioResult, run_load, worker_context
from pylon.bench.report import write_report
from pylon.bench.results import latency_ms, write_json
from pylon.bench.targets import (
    Running, TargetError, WrkResult, free_port, run_wrk, start_echo, start_envoy, start_nginx, start_pylon_proxy,
)

TARGET_KINDS = ("pylon", "envoy", "url")
UPSTREAM_KINDS = ("echo", "nginx", "none")
LOAD_TOOLS = ("pylon", "wrk")
PLACEHOLDERS = ("upstream_port", "listen_port", "admin_port", "workdir", "server_cert", "server_key", "ca_cert")
PROXY_URL = "http://127.0.0.1:{listen_port}/"


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message names the field."""


# --------------------------------------------------------------------------- the scenario file (sans-IO)


@dataclass(frozen=True)
class TargetSpec:
    """One thing under test. `url` is a template; pylon/envoy default to their listener."""

    label: str
    kind: str
    config: Path | None = None
    url: str = PROXY_URL
    concurrency: int = 1
    load_args: tuple[str, ...] = ()  # extra load flags for this target only (e.g. -cacert for https)


@dataclass(frozen=True)
class UpstreamSpec:
    kind: str = "echo"
    body_size: int = 100
    concurrency: int = 1  # echo worker processes (nginx always runs 1 worker)


@dataclass(frozen=True)
class LoadSpec:
    """Fortio load flags without the URL; with `tool: wrk`, `-c` and `-t` are handed to wrk (`-qps` must be 0)."""

    args: tuple[str, ...] = ("-qps", "0", "-c", "16", "-t", "5s")
    tool: str = "pylon"

    def options(self, url: str, extra: Sequence[str] = ()) -> LoadOptions:
        return parse_load_args([*self.args, *extra, url])


@dataclass(frozen=True)
class Scenario:
    name: str
    targets: tuple[TargetSpec, ...]
    upstream: UpstreamSpec = UpstreamSpec()
    load: LoadSpec = LoadSpec()
    repetitions: int = 1
    warmup: float = 0.0  # seconds of unmeasured load per target before the first repetition
    output: str = ""  # "" = bench-out/<name>-<timestamp>


_TOP_KEYS = {"name", "targets", "upstream", "load", "repetitions", "warmup", "output"}
_TARGET_KEYS = {"label", "kind", "config", "url", "concurrency", "load_args"}
_UPSTREAM_KEYS = {"kind", "body_size", "concurrency"}
_LOAD_KEYS = {"args", "tool"}


def _mapping(value: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScenarioError(f"{where}: expected a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ScenarioError(f"{where}.{unknown[0]}: unknown field (known: {', '.join(sorted(allowed))})")
    return value


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ScenarioError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def _choice(value: Any, where: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ScenarioError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def _flags(value: Any, where: str) -> tuple[str, ...]:
    """Flags as a YAML list or one shell-like string ("-qps 0 -c 50 -t 5s")."""
    if isinstance(value, str):
        return tuple(shlex.split(value))
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return tuple(str(v) for v in value)
    raise ScenarioError(f"{where}: expected a string or a list of flags, got {value!r}")


def _target(value: Any, where: str, base_dir: Path) -> TargetSpec:
    data = _mapping(value, where, _TARGET_KEYS)
    kind = _choice(data.get("kind"), f"{where}.kind", TARGET_KINDS)
    label = data.get("label", kind)
    if not isinstance(label, str) or not label or "/" in label:
        raise ScenarioError(f"{where}.label: expected a non-empty name without '/', got {label!r}")
    config = None
    if kind == "url":
        if "config" in data:
            raise ScenarioError(f"{where}.config: a url target has no config")
        if not isinstance(data.get("url"), str):
            raise ScenarioError(f"{where}.url: required for a url target")
    else:
        if not isinstance(data.get("config"), str):
            raise ScenarioError(f"{where}.config: required for a {kind} target (path to an Envoy config)")
        config = (base_dir / data["config"]).resolve()
        if not config.is_file():
            raise ScenarioError(f"{where}.config: no such file {config}")
    url = data.get("url", PROXY_URL)
    if not isinstance(url, str):
        raise ScenarioError(f"{where}.url: expected a string")
    return TargetSpec(label=label, kind=kind, config=config, url=url,
                      concurrency=_int(data.get("concurrency", 1), f"{where}.concurrency", 1),
                      load_args=_flags(data.get("load_args", []), f"{where}.load_args"))


def parse_scenario(data: Any, base_dir: Path, source: str = "scenario") -> Scenario:
    """Check a loaded YAML document and build the `Scenario`; config paths are relative to `base_dir`."""
    try:
        top = _mapping(data, source, _TOP_KEYS)
        name = top.get("name", "bench")
        if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
            raise ScenarioError(f"{source}.name: expected letters, digits, '.', '-' or '_', got {name!r}")
        raw_targets = top.get("targets")
        if not isinstance(raw_targets, list) or not raw_targets:
            raise ScenarioError(f"{source}.targets: expected a non-empty list")
        targets = tuple(_target(t, f"{source}.targets[{i}]", base_dir) for i, t in enumerate(raw_targets))
        labels = [t.label for t in targets]
        for i, label in enumerate(labels):
            if label in labels[:i]:
                raise ScenarioError(f"{source}.targets[{i}].label: duplicate label {label!r}")
        up = _mapping(top.get("upstream", {}), f"{source}.upstream", _UPSTREAM_KEYS)
        upstream = UpstreamSpec(kind=_choice(up.get("kind", "echo"), f"{source}.upstream.kind", UPSTREAM_KINDS),
                                body_size=_int(up.get("body_size", 100), f"{source}.upstream.body_size", 0),
                                concurrency=_int(up.get("concurrency", 1), f"{source}.upstream.concurrency", 1))
        ld = _mapping(top.get("load", {}), f"{source}.load", _LOAD_KEYS)
        load = LoadSpec(args=_flags(ld.get("args", list(LoadSpec.args)), f"{source}.load.args"),
                        tool=_choice(ld.get("tool", "pylon"), f"{source}.load.tool", LOAD_TOOLS))
        _check_load(load, targets, f"{source}.load")
        output = top.get("output", "")
        if not isinstance(output, str):
            raise ScenarioError(f"{source}.output: expected a directory path")
        warmup = top.get("warmup", 0)
        try:
            warmup_s = parse_go_duration(str(warmup))
        except ValueError:
            raise ScenarioError(f"{source}.warmup: expected a duration such as 1s, got {warmup!r}") from None
        return Scenario(name=name, targets=targets, upstream=upstream, load=load,
                        repetitions=_int(top.get("repetitions", 1), f"{source}.repetitions", 1),
                        warmup=warmup_s, output=output)
    except LoadUsageError as exc:
        raise ScenarioError(f"{source}.load.args: {exc}") from None


def _check_load(load: LoadSpec, targets: Sequence[TargetSpec], where: str) -> None:
    """Parse the flags once now, so a typo fails before any process starts."""
    for i, target in enumerate(targets):
        try:
            options = load.options("http://127.0.0.1:1/", target.load_args)
        except LoadUsageError as exc:
            raise ScenarioError(f"{where}.args (with targets[{i}].load_args): {exc}") from None
        if options.duration <= 0 and options.exactly <= 0:
            raise ScenarioError(f"{where}.args: give a duration (-t) or a call count (-n)")
        if load.tool == "wrk" and (options.qps > 0 or options.exactly > 0 or options.duration <= 0):
            raise ScenarioError(f"{where}.args: wrk runs at max rate for a duration: use -qps 0 and -t, not -n")


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    return parse_scenario(data, path.parent.resolve(), source=str(path))


_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


def placeholders_in(text: str) -> set[str]:
    return set(_PLACEHOLDER.findall(text))


def render_template(text: str, values: Mapping[str, object]) -> str:
    """Fill `{name}` for pylon's placeholder names only; a placeholder without a value is an error."""
    missing = sorted(placeholders_in(text) - set(values))
    if missing:
        raise ScenarioError(f"no value for placeholder {{{missing[0]}}} here")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


# --------------------------------------------------------------------------- results (sans-IO)


def wrk_to_fortio(w: WrkResult, *, label: str, url: str, connections: int, start: datetime) -> dict[str, Any]:
    """A wrk run in Fortio's JSON shape, with only numbers wrk measured.

    wrk has no latency buckets (`Data` is empty) and does not tell status codes
    apart: responses outside 2xx/3xx are counted under `WrkNon2xx3xx`, the rest
    under RetCodes "200"; socket errors under RetCodes "-1" and `ErrorKinds`.
    """
    socket_errors = sum(w.socket_errors.values())
    ret_codes = {"200": w.requests - w.non_2xx_3xx}
    if socket_errors:
        ret_codes["-1"] = socket_errors
    mean_s = (w.mean_ms or 0.0) / 1000
    return {
        "RunType": "HTTP", "Labels": label, "StartTime": start.isoformat(), "RequestedQPS": "max",
        "RequestedDuration": format_go_duration(w.duration_s), "ActualQPS": w.requests / w.duration_s,
        "ActualDuration": int(w.duration_s * 1e9), "NumThreads": connections, "Version": "wrk", "URL": url,
        "DurationHistogram": {
            "Count": w.requests, "Min": (w.min_ms or 0.0) / 1000, "Max": (w.max_ms or 0.0) / 1000,
            "Sum": mean_s * w.requests, "Avg": mean_s, "StdDev": (w.stdev_ms or 0.0) / 1000, "Data": [],
            "Percentiles": [{"Percentile": p, "Value": v / 1000} for p, v in w.latency_ms.items()],
        },
        "RetCodes": ret_codes, "WrkNon2xx3xx": w.non_2xx_3xx,
        "ErrorKinds": {k: v for k, v in w.socket_errors.items() if v},
        "Sizes": {"Count": w.requests, "Sum": w.bytes_read or 0,
                  "Avg": (w.bytes_read or 0) / w.requests if w.requests else 0.0},
    }


@dataclass
class TargetSummary:
    """Medians over the repetitions of one target, and ratios against the first target."""

    label: str
    runs: int
    qps: float
    p50_ms: float | None
    p99_ms: float | None
    target_cpu_s: float | None
    requests_per_target_cpu_s: float | None
    load_cpu_s: float
    errors: int
    qps_ratio: float | None = None
    efficiency_ratio: float | None = None


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: Sequence[Mapping[str, Any]]) -> list[TargetSummary]:
    """One summary per target, in first-seen order; ratios are against the first target's medians."""
    by_target: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        by_target.setdefault(run["Target"], []).append(run)
    out = []
    for label, group in by_target.items():
        out.append(TargetSummary(
            label=label, runs=len(group),
            qps=statistics.median(float(r["ActualQPS"]) for r in group),
            p50_ms=_median([latency_ms(r, 50) for r in group]),
            p99_ms=_median([latency_ms(r, 99) for r in group]),
            target_cpu_s=_median([r.get("TargetCPUSeconds") for r in group]),
            requests_per_target_cpu_s=_median([r.get("RequestsPerTargetCPUSecond") for r in group]),
            load_cpu_s=statistics.median(float(r["LoadCPUSeconds"]) for r in group),
            errors=sum(int(r["DurationHistogram"]["Count"]) - int(r["RetCodes"].get("200", 0)) for r in group),
        ))
    base = out[0]
    cpu_base = efficiency_base(out)
    for s in out:
        s.qps_ratio = s.qps / base.qps if base.qps else None
        if s.requests_per_target_cpu_s is not None and cpu_base is not None:
            s.efficiency_ratio = s.requests_per_target_cpu_s / cpu_base.requests_per_target_cpu_s  # type: ignore
    return out


def efficiency_base(summaries: Sequence[TargetSummary]) -> TargetSummary | None:
    """The first target with a measured CPU (a `url` target has none): the base of efficiency ratios."""
    return next((s for s in summaries if s.requests_per_target_cpu_s), None)


def median_runs(runs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """For each target, the run with the median ActualQPS (the lower middle one for an even count)."""
    by_target: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        by_target.setdefault(run["Target"], []).append(run)
    chosen = []
    for group in by_target.values():
        ordered = sorted(group, key=lambda r: float(r["ActualQPS"]))
        chosen.append(ordered[(len(ordered) - 1) // 2])
    return chosen


def summary_table(summaries: Sequence[TargetSummary], title: str) -> Table:
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    first = summaries[0].label
    cpu_base = efficiency_base(summaries)
    table = Table(title=title)
    for i, name in enumerate(["target", "runs", "req/s", "p50 ms", "p99 ms", "target CPU s", "req/target-CPU-s",
                              "load CPU s", "errors", f"req/s vs {first}",
                              f"req/CPU-s vs {cpu_base.label if cpu_base else '-'}"]):
        table.add_column(name, justify="left" if i == 0 else "right")
    for s in summaries:
        table.add_row(s.label, str(s.runs), num(s.qps, ".0f"), num(s.p50_ms, ".3f"), num(s.p99_ms, ".3f"),
                      num(s.target_cpu_s, ".2f"), num(s.requests_per_target_cpu_s, ".0f"), num(s.load_cpu_s, ".2f"),
                      str(s.errors), num(s.qps_ratio, ".2f"), num(s.efficiency_ratio, ".2f"))
    return table


# --------------------------------------------------------------------------- running it


@dataclass
class StartedTarget:
    spec: TargetSpec
    url: str
    process: Running | None  # None for a url target
    config_path: Path | None = None
    load_args: tuple[str, ...] = ()  # the spec's, placeholders filled in


@dataclass
class ReportFiles:
    directory: Path
    runs: list[Path] = field(default_factory=list)
    csv: Path | None = None
    png: Path | None = None
    html: Path | None = None
    summary: Path | None = None


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C inside the block, so `with` blocks stop every process we started."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _load_child(options: LoadOptions, conn: Connection) -> None:
    try:
        result = run_load(options)
        conn.send((dict(result), result.load_cpu_seconds))
    except BaseException as exc:  # noqa: BLE001 - handed to the parent, which raises it
        conn.send(exc)


def load_once(options: LoadOptions) -> FortioResult:
    """`run_load` in a child process, so Ctrl-C or SIGTERM here stops the benchmark at once.

    The load engine takes SIGINT/SIGTERM as "end this run now" and returns a
    partial result (right for `pylon load`, wrong for a benchmark, which must
    stop as a whole); a signal that lands as a run ends would even be lost. In
    a child, the engine's handlers stay out of our way: we wait on a pipe with
    our own handlers in place and, when interrupted, kill the child. The
    child reports the load's CPU with the result (`load_cpu_seconds`).
    """
    ctx = worker_context()
    reader, writer = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_load_child, args=(options, writer), daemon=True)
    child.start()
    writer.close()
    try:
        result = reader.recv()
    except EOFError:
        child.join()
        raise TargetError(f"the load process died (exit code {child.exitcode})") from None
    except BaseException:
        child.kill()
        child.join()
        raise
    finally:
        reader.close()
    child.join()
    if isinstance(result, BaseException):
        raise result
    data, cpu_seconds = result
    finished = FortioResult(data)
    finished.load_cpu_seconds = cpu_seconds
    return finished


class BenchRun:
    """Starts the upstream and every target (a context manager that stops them all), runs, reports.

    Processes stay up across repetitions, so every run after the first meets
    warm targets; their logs and rendered configs go to `<out>/work/`.
    """

    def __init__(self, scenario: Scenario, out_dir: str | Path, console: Console | None = None) -> None:
        self.scenario = scenario
        self.out = Path(out_dir)
        self.work = self.out / "work"
        self.console = console or Console()
        self.upstream: Running | None = None
        self.upstream_port = 0
        self.targets: list[StartedTarget] = []
        self._stack = contextlib.ExitStack()
        self._pki: dict[str, str] | None = None

    # -- processes

    def __enter__(self) -> "BenchRun":
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            self._start_upstream()
            for spec in self.scenario.targets:
                self.targets.append(self._start_target(spec))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _start_upstream(self) -> None:
        up = self.scenario.upstream
        if up.kind == "none":
            return
        self.upstream_port = free_port()
        if up.kind == "nginx":
            self.upstream = self._stack.enter_context(start_nginx(self.upstream_port, body_size=up.body_size))
        else:
            self.upstream = self._stack.enter_context(
                start_echo(self.upstream_port, body_size=up.body_size, concurrency=up.concurrency,
                           log_path=self.work / "upstream-echo.log"))

    def _values(self, text: str, listen_port: int, admin_port: int) -> dict[str, object]:
        values: dict[str, object] = {"listen_port": listen_port, "admin_port": admin_port,
                                     "workdir": self.work.resolve()}
        if self.upstream is not None:
            values["upstream_port"] = self.upstream_port
        if placeholders_in(text) & {"server_cert", "server_key", "ca_cert"}:
            values.update(self._test_pki())
        return values

    def _test_pki(self) -> dict[str, str]:
        if self._pki is None:
            from pylon.identity.certs import make_test_pki

            pki = make_test_pki(self.work / "pki")
            self._pki = {"server_cert": str(pki.server_ecdsa.cert), "server_key": str(pki.server_ecdsa.key),
                         "ca_cert": str(pki.ca.cert)}
        return self._pki

    def _start_target(self, spec: TargetSpec) -> StartedTarget:
        listen_port, admin_port = free_port(), free_port()
        try:
            url = render_template(spec.url, self._values(spec.url, listen_port, admin_port))
            load_args = tuple(render_template(a, self._values(a, listen_port, admin_port)) for a in spec.load_args)
        except ScenarioError as exc:
            raise ScenarioError(f"target {spec.label!r} url or load_args: {exc}") from None
        if spec.kind == "url":
            return StartedTarget(spec, url, None, None, load_args)
        assert spec.config is not None
        text = spec.config.read_text(encoding="utf-8")
        try:
            rendered = render_template(text, self._values(text, listen_port, admin_port))
        except ScenarioError as exc:
            raise ScenarioError(f"target {spec.label!r} config {spec.config}: {exc}") from None
        config_path = self.work / f"{spec.label}{spec.config.suffix or '.yaml'}"
        config_path.write_text(rendered, encoding="utf-8")
        admin = admin_port if "{admin_port}" in text else None
        log = self.work / f"{spec.label}.log"
        starter = start_pylon_proxy if spec.kind == "pylon" else start_envoy
        process = self._stack.enter_context(starter(config_path, port=listen_port, admin_port=admin,
                                                    concurrency=spec.concurrency, log_path=log))
        return StartedTarget(spec, url, process, config_path, load_args)

    # -- runs

    def run_once(self, target: StartedTarget, repetition: int) -> dict[str, Any]:
        """One load run against one target; the Fortio JSON with pylon's extra fields."""
        load = self.scenario.load
        options = load.options(target.url, target.load_args)
        options = dataclasses.replace(options, labels=target.spec.label, json_path="", csv_path="",
                                      auto_save=False)
        target_before = target.process.cpu_seconds() if target.process else None
        upstream_before = self.upstream.cpu_seconds() if self.upstream else None
        if load.tool == "wrk":
            start = datetime.now().astimezone()
            w = run_wrk(target.url, duration=options.duration, connections=options.connections,
                        headers=[f"{k}: {v}" for k, v in options.headers])
            result = wrk_to_fortio(w, label=target.spec.label, url=target.url, connections=options.connections,
                                   start=start)
            load_cpu = w.cpu_seconds
        else:
            result = load_once(options)
            load_cpu = result.load_cpu_seconds
        count = int(result["DurationHistogram"]["Count"])
        target_cpu = target.process.cpu_seconds() - target_before if target.process and target_before is not None \
            else None
        result.update({
            "Target": target.spec.label, "TargetKind": target.spec.kind, "Repetition": repetition,
            "LoadTool": load.tool, "TargetCPUSeconds": target_cpu,
            "RequestsPerTargetCPUSecond": count / target_cpu if target_cpu else None,
            "UpstreamCPUSeconds": self.upstream.cpu_seconds() - upstream_before
            if self.upstream and upstream_before is not None else None,
            "LoadCPUSeconds": load_cpu,
        })
        return result

    def warm_up(self, target: StartedTarget) -> None:
        """Unmeasured load, so the first repetition does not pay for cold caches and pools."""
        args = ("-t", f"{self.scenario.warmup:g}s")
        if self.scenario.load.tool == "wrk":
            options = self.scenario.load.options(target.url, target.load_args)
            run_wrk(target.url, duration=self.scenario.warmup, connections=options.connections)
        else:
            load_once(self.scenario.load.options(target.url, (*target.load_args, *args)))

    def run(self, on_run: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Every repetition, targets interleaved; each run's JSON is written as soon as it ends."""
        if self.scenario.warmup > 0:
            for target in self.targets:
                self.warm_up(target)
        runs = []
        for rep in range(1, self.scenario.repetitions + 1):
            for target in self.targets:
                result = self.run_once(target, rep)
                write_json(result, self.out / f"{target.spec.label}-rep{rep}.json")
                runs.append(result)
                if on_run is not None:
                    on_run(result)
        return runs

    def write_report(self, runs: Sequence[Mapping[str, Any]], title: str | None = None) -> ReportFiles:
        """CSV of every run (Labels `<target> rep<N>`); table, PNG and HTML of each target's median run."""
        files = ReportFiles(self.out, runs=sorted(self.out.glob("*-rep*.json")))
        files.csv, files.png, files.html = self.out / "report.csv", self.out / "report.png", self.out / "report.html"
        write_report([{**r, "Labels": f"{r['Target']} rep{r['Repetition']}"} for r in runs], csv=files.csv)
        write_report(median_runs(runs), png=files.png, html=files.html)
        summaries = summarize(runs)
        files.summary = write_json({"scenario": self.scenario.name, "targets": [dataclasses.asdict(s)
                                                                                 for s in summaries]},
                                   self.out / "summary.json")
        self.console.print(summary_table(summaries, title or f"{self.scenario.name}: medians of "
                                                             f"{self.scenario.repetitions} repetition(s)"))
        return files


def wide_console() -> Console:
    """A console whose tables are not squeezed to 80 columns when output goes to a file or pipe."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def default_out_dir(prefix: str, name: str) -> Path:
    return Path(prefix) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_scenario(scenario: Scenario, out_dir: str | Path, console: Console | None = None) -> ReportFiles:
    """Start everything, run every repetition, write the report; all processes stopped on return or error."""
    console = console or Console()

    def progress(result: dict[str, Any]) -> None:
        cpu = result["RequestsPerTargetCPUSecond"]
        console.print(f"  rep {result['Repetition']} {result['Target']:<20} {float(result['ActualQPS']):9.0f} req/s"
                      + (f"  {cpu:9.0f} req/target-CPU-s" if cpu else ""))

    with BenchRun(scenario, out_dir, console) as bench:
        runs = bench.run(on_run=progress)
    return bench.write_report(runs)


@click.command("bench")
@click.argument("scenario_path", metavar="SCENARIO.yaml", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="output folder (default: the scenario's "
              "`output`, else bench-out/<name>-<timestamp>)")
@click.option("--reps", type=click.IntRange(min=1), help="override the scenario's repetitions")
@click.option("--duration", help="override the load duration (Fortio's -t, e.g. 2s)")
def bench(scenario_path: str, out_dir: str | None, reps: int | None, duration: str | None) -> None:
    """Run a benchmark scenario: targets side by side, interleaved repetitions, one JSON per run, a report."""
    try:
        scenario = load_scenario(scenario_path)
        if reps is not None:
            scenario = dataclasses.replace(scenario, repetitions=reps)
        if duration is not None:
            load = dataclasses.replace(scenario.load, args=(*scenario.load.args, "-t", duration))
            _check_load(load, scenario.targets, "--duration")
            scenario = dataclasses.replace(scenario, load=load)
    except ScenarioError as exc:
        raise click.UsageError(str(exc)) from None
    out = Path(out_dir or scenario.output or default_out_dir("bench-out", scenario.name))
    console = wide_console()
    console.print(f"pylon bench {scenario.name}: {len(scenario.targets)} target(s), {scenario.repetitions} rep(s), "
                  f"load {scenario.load.tool} {' '.join(scenario.load.args)} -> {out}")
    try:
        with sigterm_interrupts():
            files = run_scenario(scenario, out, console)
    except KeyboardInterrupt:
        console.print("interrupted; every process the bench started has been stopped")
        raise SystemExit(130) from None
    except (TargetError, ScenarioError, LoadUsageError) as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"wrote {len(files.runs)} run(s), {files.csv}, {files.png}, {files.html}, {files.summary}")
