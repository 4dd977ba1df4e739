"""Full TLS 1.3 handshakes: pylon's private key providers against the key file, Envoy 1.40 and nginx, in one run.

Every request is on a new connection (`Connection: close`) and nothing can be
resumed (tickets and session caches are off on every server), so each request
costs one full TLS 1.3 handshake with the certificate's private key. Targets,
each `--concurrency 1` / one worker, all in front of the same 1-worker nginx
upstream (100-byte body):

  pylon-file            pylon, key file (the default implementation)
  pylon-offload         pylon, provider offload (thread pool)
  pylon-cryptomb        pylon, provider cryptomb (Intel crypto_mb, batches of 8)
  pylon-keyd            pylon, provider keyd; `pylon keyd --no-cryptomb` (OpenSSL)
  pylon-keyd-cryptomb   pylon, provider keyd; `pylon keyd` with crypto_mb (its default)
  pylon-pkcs11          pylon, provider sgx (Envoy's SGX config shape) over a SoftHSM2 token made in the temp dir:
                        its own key of the same type, generated in the token, certified by the same CA
  envoy                 Envoy 1.40, key file (same config file as pylon-file)
  nginx                 nginx, key file, 1 worker, ssl_session_cache off, ssl_session_tickets off

for an RSA-2048 and an ECDSA P-256 certificate. Per target and repetition:

1. saturation: `h2load --h1 -H 'Connection: close' -c 32 -n N` (N sized to
   about `--duration` seconds from the warm-up rate): handshakes/s and
   **handshakes per proxy-CPU-second** (the proxy's process tree from /proc;
   for keyd targets keyd's CPU is added), h2load's own CPU;
2. latency at 20 handshakes/s: `pylon load -qps 20 --new-connection -c 1`
   (connect + full handshake with verification + one request; one at a
   time, so no handshake queues behind another; histogram resolution
   10 µs, `-r 0.00001`), p50/p99;
3. latency near saturation: the same at 75% of this target's saturation rate
   from step 1, `-c 32`: p50/p99 and the rate actually reached.

Repetitions are interleaved (rep 1: every target, rep 2: every target, ...)
and their order rotates; results are medians. The goals (issue 4), for RSA-2048:
cryptomb >= 1.6x pylon-file and >= 3x Envoy in handshakes per proxy-CPU-second,
and cryptomb's p50 at 20/s within 0.1 ms of pylon-file's.

Usage: python benchmarks/handshakes.py [--reps 3] [--duration 5] [--low-duration 10] [--quick] [--name NAME]
Writes benchmarks/results/NAME.{json,md} (handshakes by default; or --out DIR). The key file beside the PKCS#11
token: --targets pylon-file,pylon-pkcs11,envoy --name handshakes-pkcs11.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import ipaddress
import json
import os
import platform
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from pylon import __version__
from pylon.bench.fortio_args import parse_load_args
from pylon.bench.results import latency_ms
from pylon.bench.scenario import load_once, render_template
from pylon.bench.targets import (
    Running,
    TargetError,
    _die_with_parent,
    find_envoy,
    free_port,
    nginx_preamble,
    run_h2load,
    start_envoy,
    start_nginx,
    start_process,
    start_pylon_proxy,
)
from pylon.identity.certs import KeyType, PemFiles, TestPki, issue_leaf, make_test_pki, write_pem_files

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "examples" / "bench"
BODY_SIZE = 100
H2LOAD_CLIENTS = 32
LOW_RATE = 20.0
NEAR_SATURATION = 0.75  # fraction of the target's own saturation rate
KEY_TYPES = ("rsa2048", "ecdsa-p256", "rsa3072", "rsa4096")
DEFAULT_KEYS = ("rsa2048", "ecdsa-p256")
KEY_TYPE_OF = {"rsa2048": KeyType.RSA_2048, "ecdsa-p256": KeyType.ECDSA_P256,
               "rsa3072": KeyType.RSA_3072, "rsa4096": KeyType.RSA_4096}
GOALS = {"cryptomb_over_file": 1.6, "cryptomb_over_envoy": 3.0, "p50_delta_ms": 0.1}
# Issue 18: with RSA-3072 and -4096 the signature dominates a handshake, so crypto_mb's batches should show fully.
SIGNATURE_BOUND_GOAL = 2.0


@dataclass(frozen=True)
class Target:
    """One server under test. `keyd` says which `pylon keyd` runs beside it (None, "openssl", "cryptomb")."""

    label: str
    kind: str  # "pylon", "envoy" or "nginx"
    template: str = ""  # under examples/bench/
    keyd: str | None = None
    pkcs11: bool = False  # the key is made in a SoftHSM2 token and the proxy signs through it


TARGETS = (
    Target("pylon-file", "pylon", "handshake-file.yaml"),
    Target("pylon-offload", "pylon", "handshake-offload.yaml"),
    Target("pylon-cryptomb", "pylon", "handshake-cryptomb.yaml"),
    Target("pylon-keyd", "pylon", "handshake-keyd.yaml", keyd="openssl"),
    Target("pylon-keyd-cryptomb", "pylon", "handshake-keyd.yaml", keyd="cryptomb"),
    Target("pylon-pkcs11", "pylon", "handshake-pkcs11.yaml", pkcs11=True),
    Target("envoy", "envoy", "handshake-file.yaml"),
    Target("nginx", "nginx"),
)


# --------------------------------------------------------------------------- processes


def nginx_tls_conf(workdir: Path, port: int, upstream_port: int, cert: Path, key: Path) -> str:
    """nginx terminating TLS 1.3 with a key file, proxying to the upstream; one worker, no resumption."""
    return nginx_preamble(workdir) + f"""    upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def start_tls_nginx(work: Path, upstream_port: int, cert: Path, key: Path) -> Running:
    if shutil.which("nginx") is None:
        raise TargetError("nginx is not installed (apt-get install nginx-light)")
    work.mkdir(parents=True)
    (work / "tmp").mkdir()
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(nginx_tls_conf(work, port, upstream_port, cert, key))
    return start_process("nginx", ["nginx", "-e", str(work / "error.log"), "-p", str(work), "-c", str(conf)],
                         port=port, log_path=work / "stdout.log")


def start_keyd(work: Path, key: Path, cryptomb: bool) -> Running:
    """`pylon keyd` on {work}/keyd.sock serving `key` as "server"; ready once the socket accepts."""
    path = work / "keyd.sock"
    args = [sys.executable, "-m", "pylon.cli", "keyd", "--listen", f"unix:{path}", "--key", f"server={key}"]
    if not cryptomb:
        args.append("--no-cryptomb")
    log = work / "keyd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)
    keyd = Running("pylon keyd", proc, port=0, log_path=log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            keyd.stop()
            raise TargetError(f"pylon keyd exited with {proc.returncode}\n{keyd.log_tail()}")
        with socket.socket(socket.AF_UNIX) as sock, contextlib.suppress(OSError):
            sock.connect(str(path))
            return keyd
        time.sleep(0.05)
    keyd.stop()
    raise TargetError(f"pylon keyd not ready on {path}\n{keyd.log_tail()}")


TOKEN_LABEL, TOKEN_PIN, TOKEN_SO_PIN = "bench", "1234-bench", "5678-bench"


def token_certificate(work: Path, authority: Any, key: str) -> tuple[Path, dict[str, str]]:
    """A key of type `key` generated in a SoftHSM2 token under `work` (SOFTHSM2_CONF set for this process and the
    proxies it starts), and its certificate for localhost from `authority`: the cert file and the template's
    sgx fields."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    from pylon.keys import pkcs11

    if shutil.which("softhsm2-util") is None or not Path(pkcs11.SOFTHSM2_LIBRARY).exists():
        raise TargetError("softhsm2 is not installed (apt-get install softhsm2)")
    tokens = work / "softhsm"
    if "SOFTHSM2_CONF" not in os.environ:  # one token directory per run: the library reads it once per process
        (tokens / "tokens").mkdir(parents=True)
        (tokens / "softhsm2.conf").write_text(f"directories.tokendir = {tokens / 'tokens'}\n"
                                              "objectstore.backend = file\nlog.level = ERROR\n")
        os.environ["SOFTHSM2_CONF"] = str(tokens / "softhsm2.conf")
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", TOKEN_LABEL, "--pin", TOKEN_PIN,
                        "--so-pin", TOKEN_SO_PIN], check=True, capture_output=True)
    token = pkcs11.open_token(pkcs11.SOFTHSM2_LIBRARY, TOKEN_LABEL, TOKEN_PIN)
    made = pkcs11.generate_key(token, f"bench-{key}", KEY_TYPE_OF[key])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(authority.cert.subject)
            .public_key(made.public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=True)
            .sign(authority.key, hashes.SHA256()))  # fmt: skip
    path = work / f"token-{key}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, {"pkcs11_library": pkcs11.SOFTHSM2_LIBRARY, "token_label": TOKEN_LABEL, "key_label": made.label,
                  "key_type": made.key_type, "usr_pin": TOKEN_PIN, "so_pin": TOKEN_SO_PIN}


@dataclass
class Started:
    target: Target
    proxy: Running
    keyd: Running | None = None

    def cpu_seconds(self) -> float:
        """The proxy's process tree, plus keyd's: the key operations' CPU counts wherever it is spent."""
        return self.proxy.cpu_seconds() + (self.keyd.cpu_seconds() if self.keyd else 0.0)

    def url(self) -> str:
        return self.proxy.url(scheme="https")


def start_target(stack: contextlib.ExitStack, target: Target, work: Path, upstream_port: int,
                 cert: Path, key: Path, token: tuple[Path, dict[str, str]] | None = None) -> Started:
    work = work / target.label
    if target.kind == "nginx":
        return Started(target, stack.enter_context(start_tls_nginx(work, upstream_port, cert, key)))
    work.mkdir(parents=True)
    keyd = stack.enter_context(start_keyd(work, key, target.keyd == "cryptomb")) if target.keyd else None
    listen, admin = free_port(), free_port()
    config = work / "config.yaml"
    text = render_template((TEMPLATES / target.template).read_text(), {
        "listen_port": listen, "admin_port": admin, "upstream_port": upstream_port, "workdir": work,
        "server_cert": token[0] if target.pkcs11 and token else cert, "server_key": key})
    for name, value in (token[1].items() if target.pkcs11 and token else ()):  # the template's token fields
        text = text.replace(f"{{{name}}}", value)
    config.write_text(text)
    start = start_pylon_proxy if target.kind == "pylon" else start_envoy
    proxy = stack.enter_context(start(config, port=listen, admin_port=admin, concurrency=1,
                                      log_path=work / "proxy.log"))
    return Started(target, proxy, keyd)


# --------------------------------------------------------------------------- measurements


def saturate(started: Started, requests: int) -> dict[str, Any]:
    """h2load, one request per new connection: handshakes/s and handshakes per proxy-CPU-second."""
    before = started.cpu_seconds()
    result = run_h2load(started.url(), requests=requests, clients=H2LOAD_CLIENTS,
                        extra_args=["-H", "Connection: close"])
    cpu = started.cpu_seconds() - before
    return {"handshakes": result.succeeded, "failed": result.failed + result.errored, "duration_s": result.duration_s,
            "hs_per_s": result.succeeded / result.duration_s if result.duration_s else 0.0, "proxy_cpu_s": cpu,
            "hs_per_proxy_cpu_s": result.succeeded / cpu if cpu else None, "h2load_cpu_s": result.cpu_seconds}


def paced(started: Started, qps: float, duration: float, connections: int, ca: Path) -> dict[str, Any]:
    """`pylon load -qps Q --new-connection` with verification: handshake + request latency."""
    options = parse_load_args(["-qps", f"{qps:.1f}", "-c", str(connections), "-t", f"{duration:g}s",
                               "-r", "0.00001",
                               "--new-connection", "-cacert", str(ca), started.url()])
    cpu_before = started.cpu_seconds()
    result = load_once(dataclasses.replace(options, json_path="", csv_path="", auto_save=False))
    count = int(result["DurationHistogram"]["Count"])
    return {"qps_requested": qps, "qps": float(result["ActualQPS"]), "count": count,
            "errors": count - int(result["RetCodes"].get("200", 0)),
            "p50_ms": latency_ms(result, 50), "p99_ms": latency_ms(result, 99),
            "proxy_cpu_s": started.cpu_seconds() - cpu_before, "load_cpu_s": result.load_cpu_seconds}


def measure(started: Started, requests: int, low_duration: float, duration: float, ca: Path) -> dict[str, Any]:
    sat = saturate(started, requests)
    low = paced(started, LOW_RATE, low_duration, 1, ca)
    near = paced(started, max(LOW_RATE, NEAR_SATURATION * sat["hs_per_s"]), duration, H2LOAD_CLIENTS, ca)
    return {"saturation": sat, "low": low, "near": near}


async def _timed_handshake(port: int, context: ssl.SSLContext) -> float:
    """Seconds for connect + full TLS handshake (verified) + one request and its whole response."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        await reader.readexactly(int(length.group(1)) if length else 0)
        return time.perf_counter() - start
    finally:
        writer.close()


async def _alternating(ports: dict[str, int], ca: Path, per_target: int, rate: float) -> dict[str, list[float]]:
    context = ssl.create_default_context(cafile=str(ca))
    labels = list(ports)
    out: dict[str, list[float]] = {label: [] for label in labels}
    interval = 1.0 / (rate * len(labels))
    due = time.perf_counter()
    for i in range(per_target):
        for label in labels[i % len(labels):] + labels[:i % len(labels)]:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            out[label].append(await _timed_handshake(ports[label], context))
            due += interval
    return out


def alternating_latency(started: Sequence[Started], ca: Path, per_target: int) -> dict[str, list[float]]:
    """Lone handshakes at LOW_RATE per target, taking turns across the targets (rotating order), one at a time.

    Every target is sampled in the same seconds, so drift on this shared machine hits all of them alike:
    this is what the p50 goal compares. The client is this process (uvloop, stdlib ssl with verification),
    never more than one handshake in flight.
    """
    ports = {s.target.label: s.proxy.port for s in started}
    return uvloop.run(_alternating(ports, ca, per_target, LOW_RATE))


def crypto_only(files: Any, rounds: int = 5) -> dict[str, float] | None:
    """Microseconds per private operation in this process: OpenSSL one at a time vs a crypto_mb batch of 8.

    The same native calls the providers make (`pk_slot_run`, `mb_rsa_batch` / `mb_ecdsa_batch`, RSA
    results verified with the public key), medians of `rounds`; None when crypto_mb cannot run here.
    """
    from cryptography.hazmat.primitives import serialization

    from pylon.keys import cryptomb
    from pylon.keys.hook import ECDSA_DIGEST, RSA_RAW, HookedKey, ffi, lib, new_slot

    if cryptomb.unavailable_reason() is not None:
        return None
    pem = Path(files.key).read_bytes()
    hooked = HookedKey(serialization.load_pem_private_key(pem, password=None).public_key(), None, pem)
    kind = RSA_RAW if hooked.kind == "RSA" else ECDSA_DIGEST
    size = hooked.bits // 8 if kind == RSA_RAW else 32
    slots = []
    for _ in range(cryptomb.BATCH):
        slot = new_slot()
        slot.kind, slot.key, slot.in_len = kind, hooked.native, size
        ffi.memmove(getattr(slot, "in"), b"\0" + os.urandom(size - 1), size)
        slots.append(slot)
    singles, batches = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(50):
            for slot in slots:
                lib.pk_slot_run(slot)
        singles.append((time.perf_counter() - start) / (50 * len(slots)))
        batches.append(statistics.median(cryptomb.batch_timing(kind, slots) for _ in range(50)) / len(slots))
    openssl_us, mb_us = statistics.median(singles) * 1e6, statistics.median(batches) * 1e6
    return {"openssl_us_per_op": openssl_us, "cryptomb_us_per_op": mb_us, "speedup": openssl_us / mb_us}


# --------------------------------------------------------------------------- results (plain data)


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: Sequence[dict[str, Any]],
              alternating: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{key type: {target: medians}} over the repetitions; lone-handshake percentiles over all samples."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for run in runs:
        out.setdefault(run["key"], {}).setdefault(run["target"], {"runs": []})["runs"].append(run)
    for targets in out.values():
        for entry in targets.values():
            rows = entry.pop("runs")
            entry.update({
                "reps": len(rows),
                "hs_per_proxy_cpu_s": _median([r["saturation"]["hs_per_proxy_cpu_s"] for r in rows]),
                "hs_per_s": _median([r["saturation"]["hs_per_s"] for r in rows]),
                "h2load_cpu_s": _median([r["saturation"]["h2load_cpu_s"] for r in rows]),
                "low_p50_ms": _median([r["low"]["p50_ms"] for r in rows]),
                "low_p99_ms": _median([r["low"]["p99_ms"] for r in rows]),
                "low_load_cpu_s": _median([r["low"]["load_cpu_s"] for r in rows]),
                "near_qps": _median([r["near"]["qps"] for r in rows]),
                "near_qps_requested": _median([r["near"]["qps_requested"] for r in rows]),
                "near_p50_ms": _median([r["near"]["p50_ms"] for r in rows]),
                "near_p99_ms": _median([r["near"]["p99_ms"] for r in rows]),
                "near_load_cpu_s": _median([r["near"]["load_cpu_s"] for r in rows]),
                "errors": sum(r["saturation"]["failed"] + r["low"]["errors"] + r["near"]["errors"] for r in rows),
            })
            eff = entry["hs_per_proxy_cpu_s"]
            entry["cpu_ms_per_hs"] = 1000 / eff if eff else None
    for key, by_target in alternating.items():
        for label, samples in by_target.items():
            ordered = sorted(samples)
            out[key][label].update({"alt_count": len(ordered), "alt_p50_ms": statistics.median(ordered) * 1000,
                                    "alt_p99_ms": ordered[int(len(ordered) * 0.99)] * 1000})
    return out


def goals(summary: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The issue's goals, on RSA-2048: measured values and whether each is met."""
    rsa = summary.get("rsa2048", {})

    def get(label: str, key: str) -> float | None:
        return rsa.get(label, {}).get(key)

    mb, file, envoy = (get(t, "hs_per_proxy_cpu_s") for t in ("pylon-cryptomb", "pylon-file", "envoy"))
    mb_p50, file_p50 = get("pylon-cryptomb", "alt_p50_ms"), get("pylon-file", "alt_p50_ms")
    out: dict[str, Any] = {}
    for name, value, ok in (
        ("cryptomb_over_file", mb / file if mb and file else None, lambda v: v >= GOALS["cryptomb_over_file"]),
        ("cryptomb_over_envoy", mb / envoy if mb and envoy else None, lambda v: v >= GOALS["cryptomb_over_envoy"]),
        ("p50_delta_ms", mb_p50 - file_p50 if mb_p50 is not None and file_p50 is not None else None,
         lambda v: v <= GOALS["p50_delta_ms"]),
    ):
        out[name] = {"value": value, "goal": GOALS[name], "met": value is not None and ok(value)}
    for key in ("rsa3072", "rsa4096"):
        by_target = summary.get(key, {})
        mb, file = (by_target.get(t, {}).get("hs_per_proxy_cpu_s") for t in ("pylon-cryptomb", "pylon-file"))
        if mb and file:
            out[f"cryptomb_over_file_{key}"] = {"value": mb / file, "goal": SIGNATURE_BOUND_GOAL,
                                                "met": mb / file >= SIGNATURE_BOUND_GOAL}
    return out


def client_bound(entry: dict[str, Any]) -> bool:
    """The load client fell short of the near-saturation rate it was asked for: its latencies are its own queue."""
    asked, reached = entry.get("near_qps_requested"), entry.get("near_qps")
    return bool(asked and reached is not None and reached < 0.95 * asked)


def markdown(summary: dict[str, dict[str, dict[str, Any]]], verdict: dict[str, Any], meta: dict[str, Any],
             stats: dict[str, dict[str, list[str]]], crypto: dict[str, dict[str, float] | None]) -> str:
    def f(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = [
        f"# Full TLS 1.3 handshakes: pylon key providers vs Envoy {meta['envoy_version']} and nginx",
        "",
        (f"{meta['reps']} interleaved repetitions; medians. Every request on a new connection, no resumption "
        f"(tickets and session caches off). Saturation: `h2load --h1 -H 'Connection: close' -c {H2LOAD_CLIENTS}` "
        f"for about {meta['duration_s']:g} s. Latency (connect + full handshake with verification + one request, "
        f"`pylon load --new-connection`): at {LOW_RATE:g}/s for {meta['low_duration_s']:g} s, one at a time, and at "
        f"{NEAR_SATURATION:.0%} of each target's saturation rate for {meta['duration_s']:g} s. Every server "
        f"`--concurrency 1` / 1 worker, in front of a 1-worker nginx upstream. {meta['cpus']} CPUs shared by "
        f"proxy, keyd, upstream and load tool, nothing pinned. Run at {meta['started']}."),
        "",
        (f"'Lone, alternating': after each repetition, {meta['alternating']} lone handshakes per target (connect, "
         f"verified TLS 1.3 handshake, one request and its response), {LOW_RATE:g}/s per target, the targets "
         "taking turns in rotating order and never two at once, so every target is sampled in the same seconds "
         "and drift on this shared machine hits all alike; percentiles over all repetitions' samples. Client: "
         "this benchmark's own process (uvloop, stdlib ssl). The p50 goal compares these."),
        "",
        ("hs/proxy-CPU-s counts the proxy's process tree plus keyd's CPU for the keyd targets. "
        "'client-bound': `pylon load` (Python, verifying every handshake) could not reach the rate it was "
        "asked for, so that row's near-saturation latency is mostly the client's own queue."),
        "",
    ]
    for key, targets in summary.items():
        base = targets.get("pylon-file", {}).get("hs_per_proxy_cpu_s")
        lines += [f"## {key}", "",
                  ("| target | hs per proxy-CPU-s | CPU ms/hs | vs pylon-file | hs/s (h2load) | h2load CPU s "
                  "| p50 / p99 ms lone, alternating | p50 / p99 ms @20/s (pylon load) | load CPU s @20/s "
                  "| rate near sat. (reached / asked) | p50 / p99 ms near sat. | load CPU s near sat. | errors |"),
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for label, s in targets.items():
            eff = s["hs_per_proxy_cpu_s"]
            lines.append(
                f"| {label} | {f(eff, '.0f')} | {f(s['cpu_ms_per_hs'], '.3f')} | "
                f"{f(eff / base if eff and base else None, '.2f')} | {f(s['hs_per_s'], '.0f')} | "
                f"{f(s['h2load_cpu_s'], '.2f')} | {f(s.get('alt_p50_ms'), '.3f')} / {f(s.get('alt_p99_ms'), '.2f')} | "
                f"{f(s['low_p50_ms'], '.2f')} / {f(s['low_p99_ms'], '.2f')} | "
                f"{f(s['low_load_cpu_s'], '.2f')} | {f(s['near_qps'], '.0f')} / {f(s['near_qps_requested'], '.0f')}"
                f"{' (client-bound)' if client_bound(s) else ''} | "
                f"{f(s['near_p50_ms'], '.2f')} / {f(s['near_p99_ms'], '.2f')} | {f(s['near_load_cpu_s'], '.2f')} | "
                f"{s['errors']} |")
        lines.append("")
    lines += ["## The private operation alone", "",
              ("Microseconds per operation in the benchmark process, before the targets start, through the "
               "providers' own native calls: OpenSSL one at a time (what pylon-file and small batches cost) "
               "and crypto_mb in full batches of 8 (RSA results verified with the public key, as in the proxy). "
               "benchmarks/handshake_profile.py shows what share of a handshake's CPU the signature is."),
              "",
              "| key | OpenSSL µs/op | crypto_mb µs/op (batch of 8) | crypto_mb speedup per op |",
              "|---|---:|---:|---:|"]
    for key, c in crypto.items():
        if c is None:
            lines.append(f"| {key} | - | - | - (crypto_mb cannot run here) |")
        else:
            lines.append(f"| {key} | {c['openssl_us_per_op']:.0f} | {c['cryptomb_us_per_op']:.0f} | "
                         f"{c['speedup']:.2f} |")
    lines += ["", "## Goals (RSA-2048; RSA-3072/4096 when measured)", "", "| goal | measured | met |", "|---|---:|---|"]
    names = {"cryptomb_over_file": "cryptomb / pylon-file, hs per proxy-CPU-s >= 1.6",
             "cryptomb_over_envoy": "cryptomb / Envoy, hs per proxy-CPU-s >= 3",
             "p50_delta_ms": "cryptomb p50 - pylon-file p50, lone handshakes at 20/s (alternating) <= 0.1 ms",
             **{f"cryptomb_over_file_{key}": f"{key}: cryptomb / pylon-file, hs per proxy-CPU-s >= "
                f"{SIGNATURE_BOUND_GOAL:g} (signature-bound)" for key in ("rsa3072", "rsa4096")}}
    for name, v in verdict.items():
        lines.append(f"| {names[name]} | {f(v['value'], '.2f')} | {'yes' if v['met'] else '**no**'} |")
    lines += ["", "## crypto_mb batch sizes (the proxies' `cryptomb.*` histograms at the end of the run)", ""]
    for key, by_target in stats.items():
        for label, stat_lines in by_target.items():
            lines += [f"{key}, {label}:", "", *(f"    {line}" for line in stat_lines), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def envoy_version() -> str:
    out = subprocess.run([find_envoy(), "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    match = re.search(r"/(\d+\.\d+\.\d+)/", out)  # "<sha>/1.40.0/Clean/RELEASE/BoringSSL"
    return match.group(1) if match else out.strip()


def provider_stats(started: Started) -> list[str]:
    """The proxy's `cryptomb.*` stat lines (batch-size histograms), to show how full the batches were."""
    if started.proxy.admin_port is None:
        return []
    url = f"http://127.0.0.1:{started.proxy.admin_port}/stats?filter=cryptomb"
    with urllib.request.urlopen(url, timeout=5) as reply:
        return reply.read().decode().splitlines()


def server_files(pki: TestPki, key: str) -> PemFiles:
    """The test PKI's server certificate and key for `key`; RSA-3072/4096 ones are issued by the same CA."""
    if key == "rsa2048":
        return pki.server_rsa
    if key == "ecdsa-p256":
        return pki.server_ecdsa
    leaf = issue_leaf(pki.authority, common_name="localhost", dns_names=["localhost"],
                      ip_addresses=["127.0.0.1", "::1"], key_type=KEY_TYPE_OF[key])
    return write_pem_files(pki.directory, f"server-{key}", leaf, pki.authority)


def run_key_type(key: str, targets: Sequence[Target], args: argparse.Namespace, work: Path,
                 runs: list[dict[str, Any]], crypto: dict[str, dict[str, float] | None],
                 alternating: dict[str, list[float]]) -> dict[str, list[str]]:
    """Time the private operation alone into `crypto`, start every target for one certificate, run the
    repetitions into `runs` and the alternating lone handshakes into `alternating` (per target, seconds);
    returns the cryptomb stats after."""
    pki = make_test_pki(work / "pki")
    files = server_files(pki, key)
    crypto[key] = crypto_only(files)
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(start_nginx(free_port(), body_size=BODY_SIZE))
        token = token_certificate(work, pki.authority, key) if any(t.pkcs11 for t in targets) else None
        started = [start_target(stack, t, work, upstream.port, files.cert, files.key, token) for t in targets]
        sizes = {}
        for s in started:  # warm-up, and the request count that takes about --duration seconds
            warm = saturate(s, args.warmup_requests)
            sizes[s.target.label] = max(args.warmup_requests, int(warm["hs_per_s"] * args.duration))
        print(f"{key}: {len(started)} targets warm; h2load -n {sizes}", flush=True)
        for rep in range(1, args.reps + 1):
            shift = (rep - 1) % len(started)
            for s in started[shift:] + started[:shift]:
                row = {"key": key, "rep": rep, "target": s.target.label,
                       **measure(s, sizes[s.target.label], args.low_duration, args.duration, pki.ca.cert)}
                runs.append(row)
                sat, low, near = row["saturation"], row["low"], row["near"]
                print(f"  {key} rep {rep} {s.target.label:20s} {sat['hs_per_s']:6.0f} hs/s "
                      f"{sat['hs_per_proxy_cpu_s'] or 0:6.0f} hs/proxy-CPU-s  @20/s p50 {low['p50_ms']:.2f} "
                      f"p99 {low['p99_ms']:.2f} ms  near {near['qps']:.0f}/s p50 {near['p50_ms']:.2f} "
                      f"p99 {near['p99_ms']:.2f} ms  errors {sat['failed'] + low['errors'] + near['errors']}",
                      flush=True)
            for label, samples in alternating_latency(started, pki.ca.cert, args.alternating).items():
                alternating.setdefault(label, []).extend(samples)
            print(f"  {key} rep {rep} alternating lone handshakes, p50 ms: " + ", ".join(
                f"{label} {statistics.median(v) * 1000:.2f}" for label, v in alternating.items()), flush=True)
        return {s.target.label: lines for s in started if (lines := provider_stats(s))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (3)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of saturation / near-saturation load (5)")
    parser.add_argument("--low-duration", type=float, default=10.0, help="seconds at 20 handshakes/s (10)")
    parser.add_argument("--warmup-requests", type=int, default=500, help="unmeasured handshakes per target (500)")
    parser.add_argument("--alternating", type=int, default=200,
                        help="lone handshakes per target and repetition, targets taking turns at 20/s each (200)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 rep, 2 s loads, 3 s at 20/s")
    parser.add_argument("--keys", default=",".join(DEFAULT_KEYS),
                        help=f"comma-separated subset of {list(KEY_TYPES)} ({','.join(DEFAULT_KEYS)})")
    parser.add_argument("--targets", default=",".join(t.label for t in TARGETS), help="comma-separated subset")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    parser.add_argument("--name", default="handshakes", help="results file name, without .json/.md (handshakes)")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.duration, args.low_duration, args.warmup_requests, args.alternating = 1, 2.0, 3.0, 200, 40
    keys = [k for k in args.keys.split(",") if k]
    by_label = {t.label: t for t in TARGETS}
    unknown = [k for k in keys if k not in KEY_TYPES] + [t for t in args.targets.split(",") if t not in by_label]
    if unknown or args.reps < 1 or args.duration <= 0 or args.low_duration <= 0 or args.alternating < 1:
        parser.error(f"unknown key type or target {unknown}" if unknown else "reps and durations must be positive")
    targets = [by_label[t] for t in args.targets.split(",")]
    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "reps": args.reps, "duration_s": args.duration,
            "low_duration_s": args.low_duration, "alternating": args.alternating, "h2load_clients": H2LOAD_CLIENTS, "cpus": os.cpu_count(),
            "python": platform.python_version(), "pylon": __version__, "envoy_version": envoy_version()}
    runs: list[dict[str, Any]] = []
    stats: dict[str, dict[str, list[str]]] = {}
    crypto: dict[str, dict[str, float] | None] = {}
    alternating: dict[str, dict[str, list[float]]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="pylon-handshakes-") as tmp:
            for key in keys:
                stats[key] = run_key_type(key, targets, args, Path(tmp) / key, runs, crypto,
                                          alternating.setdefault(key, {}))
    except TargetError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    summary = summarize(runs, alternating)
    verdict = goals(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "goals": verdict, "crypto_only": crypto, "provider_stats": stats,
         "runs": runs, "alternating_s": alternating}, indent=1) + "\n")
    text = markdown(summary, verdict, meta, stats, crypto)
    (args.out / f"{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
