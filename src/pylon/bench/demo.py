"""`pylon demo`: the seed's benchmark on `pylon mesh` where a mesh can run (`mesh_demo.py`), else this loopback
tour: an echo workload behind a pylon gateway — a few requests explained, a load run, a report.

1. Start `pylon echo` (the workload) and one gateway per variant, from the
   config templates in `examples/` (ports filled in).
2. Send a handful of requests through the first gateway and print, for
   each, the status and latency we measured, the gateway's
   `x-envoy-upstream-service-time`, and the route, response flags and
   upstream host from the gateway's own JSON access log (matched by the
   `x-request-id` we sent). Nothing is guessed: a value the log did not
   give shows as `?`.
3. Load every variant and the workload directly (the baseline) with the same
   `pylon load` profile, interleaved, and write the report (table, CSV, PNG,
   HTML, one Fortio JSON per run) into the output folder.

Variants are a list: an accelerated gateway is one more `Variant(...)` line
with its config template and load flags. Two are TLS gateways whose load is
handshake-heavy (`--new-connection`: every request a full TLS 1.3 handshake
with an RSA-2048 certificate, where private key providers matter): one with
the key file, one with the `cryptomb` provider (Intel crypto_mb batches),
so the report shows what the provider does to handshakes per gateway-CPU-second.
Every process is stopped on success, failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import click
from rich.console import Console
from rich.table import Table

from pylon.bench.fortio_args import LoadUsageError
from pylon.bench.mesh_demo import MeshDemoError, MeshDemoOptions, mesh_unavailable_reason, run_mesh_demo
from pylon.bench.mesh_runs.lock import LockBusy
from pylon.bench.mesh_runs.runs import LoadProfile
from pylon.bench.scenario import (
    PROXY_URL,
    BenchRun,
    LoadSpec,
    ReportFiles,
    Scenario,
    ScenarioError,
    StartedTarget,
    TargetSpec,
    UpstreamSpec,
    default_out_dir,
    sigterm_interrupts,
    wide_console,
)
from pylon.bench.targets import TargetError
from pylon.identity.certs import make_test_pki
from pylon.keys import cryptomb

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"  # a source checkout: src/pylon/bench/demo.py
GATEWAY_LOG = "gateway-access.log"  # where examples/demo-gateway.yaml writes ({workdir}/...)


@dataclass(frozen=True)
class Variant:
    """One way of serving the workload that the demo loads and compares."""

    label: str
    kind: str  # "url" for the baseline, else "pylon" (or "envoy")
    config: str = ""  # template under examples/
    url: str = PROXY_URL
    load_args: tuple[str, ...] = ()
    #: Why this variant cannot run on this machine (None when it can): an accelerator the CPU lacks is
    #: reported and the variant left out, never simulated.
    unavailable: Callable[[], str | None] | None = None

    def target(self, examples: Path) -> TargetSpec:
        return TargetSpec(label=self.label, kind=self.kind, config=(examples / self.config) if self.config else None,
                          url=self.url, load_args=self.load_args)


BASELINE = Variant("echo-direct", "url", url="http://127.0.0.1:{upstream_port}/")
HANDSHAKE_URL = "https://127.0.0.1:{listen_port}/"
HANDSHAKE_LOAD = ("--new-connection", "-cacert", "{rsa_ca_cert}")
VARIANTS: tuple[Variant, ...] = (
    Variant("pylon-gateway", "pylon", "demo-gateway.yaml", url="http://127.0.0.1:{listen_port}/api/"),
    Variant("tls-file", "pylon", "bench/handshake-file.yaml", url=HANDSHAKE_URL, load_args=HANDSHAKE_LOAD),
    Variant("tls-cryptomb", "pylon", "bench/handshake-cryptomb.yaml", url=HANDSHAKE_URL, load_args=HANDSHAKE_LOAD,
            unavailable=cryptomb.unavailable_reason),
)
#: What the RSA-2048 test PKI fills in (the bench kit's own `{server_cert}` is an ECDSA certificate).
RSA_PLACEHOLDERS = ("{server_cert}", "{server_key}", "{rsa_ca_cert}")


@dataclass(frozen=True)
class DemoRequest:
    method: str
    path: str
    body: bytes = b""
    why: str = ""


REQUESTS: tuple[DemoRequest, ...] = (
    DemoRequest("GET", "/healthz", why="answered by the gateway itself"),
    DemoRequest("GET", "/api/hello", why="routed, /api/ rewritten to /"),
    DemoRequest("POST", "/echo", b"hello pylon", why="the workload echoes the body"),
    DemoRequest("GET", "/api/debug", why="the workload's view of the forwarded request"),
    DemoRequest("GET", "/api/?delay=20ms", why="a slow workload reply"),
    DemoRequest("GET", "/api/?status=503", why="the workload fails"),
    DemoRequest("GET", "/nowhere", why="no route matches"),
)


@dataclass
class Observed:
    """One demo request: what the client saw, plus the gateway's access-log entry (if it arrived)."""

    request: DemoRequest
    request_id: str
    status: int
    latency_ms: float
    upstream_service_time: str | None
    reply: str
    log: Mapping[str, Any] | None = None


def send_requests(host: str, port: int, requests: Sequence[DemoRequest], run_id: str) -> list[Observed]:
    """Send each request on one keep-alive connection, tagged with its own x-request-id."""
    seen = []
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        for i, req in enumerate(requests, 1):
            request_id = f"demo-{run_id}-{i}"
            headers = {"x-request-id": request_id}
            start = time.perf_counter()
            conn.request(req.method, req.path, body=req.body or None, headers=headers)
            reply = conn.getresponse()
            body = reply.read()
            latency = (time.perf_counter() - start) * 1000
            seen.append(Observed(req, request_id, reply.status, latency,
                                 reply.getheader("x-envoy-upstream-service-time"),
                                 body.decode(errors="replace").strip().splitlines()[0][:64] if body.strip() else ""))
            if reply.will_close:
                conn.close()
    finally:
        conn.close()
    return seen


def read_access_log(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            yield entry


def attach_log_entries(observed: Sequence[Observed], log_path: Path, timeout: float = 4.0) -> None:
    """Wait (the gateway flushes its log about once a second) until every request's entry is there."""
    wanted = {o.request_id: o for o in observed}
    deadline = time.monotonic() + timeout
    while True:
        for entry in read_access_log(log_path):
            if entry.get("request_id") in wanted:
                wanted[entry["request_id"]].log = entry
        if all(o.log is not None for o in observed) or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def requests_table(observed: Sequence[Observed]) -> Table:
    table = Table(title="requests through the gateway (route, flags and upstream from its access log)")
    for name in ["request", "status", "latency ms", "upstream ms", "route", "flags", "cluster", "upstream host",
                 "reply (first line)", "what it shows"]:
        table.add_column(name, justify="right" if name in ("status", "latency ms", "upstream ms") else "left")
    for o in observed:
        log = o.log or {}

        def field(name: str) -> str:
            return "?" if o.log is None else str(log.get(name) or "-")

        table.add_row(f"{o.request.method} {o.request.path}", str(o.status), f"{o.latency_ms:.1f}",
                      o.upstream_service_time or "-", field("route_name"), field("response_flags"),
                      field("upstream_cluster"), field("upstream_host"), o.reply, o.request.why)
    return table


def runnable_here(variants: Sequence[Variant], console: Console) -> tuple[Variant, ...]:
    """The variants this machine can run; each one left out is named with what it lacks."""
    out = []
    for variant in variants:
        reason = variant.unavailable() if variant.unavailable is not None else None
        if reason:
            console.print(f"[yellow]{variant.label} left out: {reason}[/yellow]")
        else:
            out.append(variant)
    return tuple(out)


def with_rsa_certificate(variants: Sequence[Variant], examples: Path, work: Path) -> tuple[Variant, ...]:
    """Variants whose templates or load flags name the certificate, filled with an RSA-2048 test PKI.

    The rendered templates (ports and the rest still placeholders) go to
    `work/templates/`; the other variants are returned unchanged.
    """
    out = []
    values: dict[str, str] = {}
    for variant in variants:
        text = (examples / variant.config).read_text(encoding="utf-8") if variant.config else ""
        if not any(p in text or p in " ".join(variant.load_args) for p in RSA_PLACEHOLDERS):
            out.append(variant)
            continue
        if not values:
            pki = make_test_pki(work / "pki-rsa")
            values = dict(zip(RSA_PLACEHOLDERS, (str(pki.server_rsa.cert), str(pki.server_rsa.key),
                                                 str(pki.ca.cert)), strict=True))
        template = work / "templates" / f"{variant.label}.yaml"
        template.parent.mkdir(parents=True, exist_ok=True)
        template.write_text(_fill(text, values), encoding="utf-8")
        out.append(Variant(variant.label, variant.kind, str(template.resolve()), variant.url,
                           tuple(_fill(a, values) for a in variant.load_args), variant.unavailable))
    return tuple(out)


def _fill(text: str, values: Mapping[str, str]) -> str:
    for placeholder, path in values.items():
        text = text.replace(placeholder, path)
    return text


def demo_scenario(duration: str, connections: int, variants: Sequence[Variant], examples: Path) -> Scenario:
    targets = tuple(v.target(examples) for v in (BASELINE, *variants))
    return Scenario(name="demo", targets=targets, upstream=UpstreamSpec(kind="echo", body_size=100),
                    load=LoadSpec(args=("-qps", "0", "-c", str(connections), "-t", duration)), repetitions=1,
                    warmup=0.5)


def run_demo(out: Path, duration: str = "5s", connections: int = 16, variants: Sequence[Variant] = VARIANTS,
             examples: Path = EXAMPLES, console: Console | None = None) -> ReportFiles:
    console = console or Console()
    variants = runnable_here(variants, console)
    variants = with_rsa_certificate(variants, examples, out / "work")
    scenario = demo_scenario(duration, connections, variants, examples)
    with BenchRun(scenario, out, console) as bench:
        gateway: StartedTarget = bench.targets[1]
        assert gateway.process is not None
        console.print(f"workload: pylon echo on 127.0.0.1:{bench.upstream_port}; "
                      + "; ".join(f"{t.spec.label}: {t.url} (config {t.config_path})" for t in bench.targets[1:]))
        observed = send_requests(gateway.process.host, gateway.process.port, REQUESTS, time.strftime("%H%M%S"))
        attach_log_entries(observed, bench.work / GATEWAY_LOG)
        console.print(requests_table(observed))
        console.print(f"load: pylon load -qps 0 -c {connections} -t {duration}, each target in turn; "
                      "tls-*: a new connection (a full TLS 1.3 handshake, RSA-2048) for every request")
        runs = bench.run(on_run=lambda r: console.print(
            f"  {r['Target']:<16} {float(r['ActualQPS']):9.0f} req/s"
            + (f", {r['RequestsPerTargetCPUSecond']:.0f} requests per gateway-CPU-second"
               if r["RequestsPerTargetCPUSecond"] else "")))
    return bench.write_report(runs, title="demo: the workload directly and through the gateway")


def _mesh_options(out: Path, duration: str, connections: int, key_modes: str, qps: int, newconn_qps: int,
                  warmup: float, size: int, lock_timeout: float) -> MeshDemoOptions:  # fmt: skip
    from pylon.bench.fortio_args import parse_go_duration
    from pylon.bench.mesh_runs.key_modes import KEY_MODES

    names = tuple(m for m in key_modes.split(",") if m)
    unknown = [m for m in names if m not in KEY_MODES]
    if unknown or not names:
        raise click.BadParameter(f"{', '.join(unknown) or 'none given'}: choose from {', '.join(KEY_MODES)}",
                                 param_hint="--key-modes")  # fmt: skip
    try:
        seconds = parse_go_duration(duration)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--duration") from None
    profile = LoadProfile(qps=qps, conn=connections, duration=seconds, size=size, newconn_qps=newconn_qps,
                          warmup=warmup)  # fmt: skip
    return MeshDemoOptions(out=out, key_modes=names, profile=profile, lock_timeout=lock_timeout)


@click.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="output folder (default ./demo-out/<timestamp>)")
@click.option("--duration", default="5s", show_default=True, help="load duration per target / perf mode (Fortio's -t)")
@click.option("--connections", "-c", type=click.IntRange(min=1), default=16, show_default=True,
              help="load connections")
@click.option("--loopback", is_flag=True, help="Today's loopback demo even where a mesh could run.")
@click.option("--key-modes", default="file,cryptomb,keyd,pkcs11", show_default=True,
              help="Mesh demo: where the ingress gateway's key lives, one mesh per mode in turn.")
@click.option("--qps", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Mesh demo: requested qps of the keep-alive modes (Istio's default 1000; 0 = as fast as it goes).")
@click.option("--newconn-qps", type=click.IntRange(min=0), default=200, show_default=True,
              help="Mesh demo: qps with a new TLS connection per request (a full handshake each).")
@click.option("--warmup", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Mesh demo: unmeasured seconds of load per mode before the runs.")
@click.option("--size", type=click.IntRange(min=0), default=1024, show_default=True,
              help="Mesh demo: response size, /echo?size= (Istio's --size).")
@click.option("--lock-timeout", type=click.FloatRange(min=0), default=600, show_default=True,
              help="Mesh demo: seconds to wait for /tmp/pylon-bench.lock (one mesh at a time on this machine).")
def demo(out_dir: str | None, duration: str, connections: int, loopback: bool, key_modes: str, qps: int,
         newconn_qps: int, warmup: float, size: int, lock_timeout: float) -> None:  # fmt: skip
    """The tour. As root where network namespaces work: the seed's benchmark on `pylon mesh` - an echo workload
    with a sidecar behind the ingress gateway, its key in each mode in turn, Istio's perf modes, Istio's CSV and
    charts. Elsewhere (or with --loopback): an echo workload behind pylon gateways on loopback, requests
    explained, a load run, a report (HTTP gateway, and TLS gateways with the key file vs the cryptomb provider).
    """
    out = Path(out_dir) if out_dir else default_out_dir("demo-out", "demo")
    console = wide_console()
    reason = None if loopback else mesh_unavailable_reason()
    if not loopback and reason is None:
        options = _mesh_options(out, duration, connections, key_modes, qps, newconn_qps, warmup, size, lock_timeout)
        _run_mesh(options, console)
        return
    if reason:
        console.print(f"pylon demo: no mesh here ({reason}); running the loopback demo instead")
    try:
        with sigterm_interrupts():
            files = run_demo(out, duration, connections, console=console)
    except KeyboardInterrupt:
        console.print("interrupted; every process the demo started has been stopped")
        raise SystemExit(130) from None
    except (TargetError, ScenarioError, LoadUsageError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"report: {files.html}\n        {files.png}\n        {files.csv}\n"
                  f"runs:   {', '.join(str(p) for p in files.runs)}\nlogs:   {out / 'work'}")


def _run_mesh(options: MeshDemoOptions, console: Console) -> None:
    try:
        with sigterm_interrupts():
            files = run_mesh_demo(options, console)
    except KeyboardInterrupt:
        console.print("interrupted; `pylon mesh down` ran for every mesh the demo brought up")
        raise SystemExit(130) from None
    except (MeshDemoError, LockBusy) as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"Istio's CSV: {files.csv}\nreport:      {files.markdown}\n             {files.html}\n"
                  f"charts:      {files.png}\nruns:        {files.runs}\nlogs:        {options.out / 'work'}")
    if files.failed:
        raise click.ClickException(f"the mesh run failed for key mode(s) {', '.join(files.failed)}: "
                                   f"see {files.markdown}")
