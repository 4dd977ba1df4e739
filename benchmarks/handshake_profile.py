"""Where a full TLS handshake's CPU goes in pylon, key file vs cryptomb: a perf profile of the worker.

handshakes.py measures how many handshakes each target does per CPU-second;
this says why the ratio between pylon-file and pylon-cryptomb is what it is.
For each of the two (RSA-2048, `--concurrency 1`, the same templates and
nginx upstream as handshakes.py), under `h2load --h1 -H 'Connection: close'
-c 32`, `perf record --call-graph dwarf` samples the worker process, and
the report splits the worker's CPU per handshake by shared object (libcrypto,
crypto_mb, CPython, kernel, ...) and gives the share of the signature
(`EVP_DigestSignFinal` + `EVP_DigestSignInit_ex`, inclusive) in pylon-file.

A key provider can take only the signature off a handshake, so
1 / (1 - signature share) bounds what any provider can gain per CPU-second
(Amdahl), before side effects such as handling handshakes in groups.

Usage: python benchmarks/handshake_profile.py [--requests 6000] [--seconds 2]
Needs perf (Debian package linux-perf). Writes benchmarks/results/handshake_profile.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from handshakes import TARGETS, BODY_SIZE, Started, saturate, start_target  # noqa: E402

from pylon.bench.targets import free_port, pylon_workers, start_nginx  # noqa: E402
from pylon.identity.certs import make_test_pki  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROFILED = ("pylon-file", "pylon-cryptomb")
SIGNATURE_SYMBOLS = ("EVP_DigestSignFinal", "EVP_DigestSignInit_ex")
#: Shared objects shown by name; everything else is summed as "other".
DSO_NAMES = {
    "libcrypto.so.3": "OpenSSL libcrypto",
    "libcrypto_mb.so.13": "crypto_mb",
    "libssl.so.3": "OpenSSL libssl",
    "libpython3.11.so.1.0": "CPython",
    "[kernel.kallsyms]": "kernel",
    "libc.so.6": "libc",
}


def perf_report(data: Path, *extra: str) -> list[tuple[float, str]]:
    """(percent, name) rows of `perf report --stdio` for `data`."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "-g", "none", *extra],
                         capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+(?:[\d.]+%\s+)?(?:\[\.\]|\[k\])?\s*(\S+)", line)
        if match and not line.lstrip().startswith("#"):
            rows.append((float(match.group(1)), match.group(2)))
    return rows


def profile(started: Started, requests: int, seconds: float, work: Path) -> dict[str, Any]:
    data = work / f"{started.target.label}.perf"
    perf = subprocess.Popen(["perf", "record", "-F", "999", "--call-graph", "dwarf,16384", "-o", str(data),
                             "-p", str(pylon_workers(started.proxy)[0]), "--", "sleep", f"{seconds:g}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)  # perf attached before the load starts
    sat = saturate(started, requests)
    if perf.wait() != 0:
        raise RuntimeError(f"perf record failed for {started.target.label}")
    cpu_ms = 1000 / sat["hs_per_proxy_cpu_s"]
    by_dso: dict[str, float] = {}
    for percent, dso in perf_report(data, "--no-children", "--sort", "dso"):
        name = DSO_NAMES.get(dso, "other")
        by_dso[name] = by_dso.get(name, 0.0) + percent
    inclusive = {sym: pct for pct, sym in perf_report(data, "--children", "--sort", "sym")}
    signature = sum(inclusive.get(sym, 0.0) for sym in SIGNATURE_SYMBOLS)
    return {"hs_per_proxy_cpu_s": sat["hs_per_proxy_cpu_s"], "cpu_ms_per_hs": cpu_ms,
            "percent_by_dso": by_dso, "ms_per_hs_by_dso": {k: cpu_ms * v / 100 for k, v in by_dso.items()},
            "signature_percent": signature}


def markdown(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    file, mb = results["pylon-file"], results["pylon-cryptomb"]
    share = file["signature_percent"] / 100
    names = list(DSO_NAMES.values()) + ["other"]
    lines = [
        "# Where a full TLS 1.3 handshake's CPU goes: pylon-file vs pylon-cryptomb (RSA-2048)", "",
        (f"perf record --call-graph dwarf on the worker under `h2load --h1 -H 'Connection: close' -c 32`, "
         f"{meta['requests']} handshakes each, one TLS 1.3 handshake + one proxied request per connection; "
         f"{meta['started']}. CPU ms per handshake from the proxy's CPU time (perf's own overhead included, "
         "alike for both); the split is perf's share of the worker's samples."), "",
        "| CPU ms per handshake | " + " | ".join(PROFILED) + " |", "|---|---:|---:|",
        f"| total | {file['cpu_ms_per_hs']:.3f} | {mb['cpu_ms_per_hs']:.3f} |",
    ]
    for name in names:
        lines.append(f"| {name} | {file['ms_per_hs_by_dso'].get(name, 0):.3f} | "
                     f"{mb['ms_per_hs_by_dso'].get(name, 0):.3f} |")
    ratio = mb["hs_per_proxy_cpu_s"] / file["hs_per_proxy_cpu_s"]
    lines += [
        "",
        f"- The signature (`{' + '.join(SIGNATURE_SYMBOLS)}`, inclusive) is **{share:.0%}** of pylon-file's "
        f"worker CPU, {file['cpu_ms_per_hs'] * share:.3f} ms per handshake.",
        f"- So a provider that made the signature free would give at most **{1 / (1 - share):.2f}x** pylon-file's "
        "handshakes per CPU-second, apart from side effects.",
        f"- Measured here: pylon-cryptomb / pylon-file = **{ratio:.2f}x**; crypto_mb itself costs "
        f"{mb['ms_per_hs_by_dso'].get('crypto_mb', 0):.3f} ms per handshake.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=6000, help="handshakes per profiled run (6000)")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds perf samples (2)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    args = parser.parse_args()
    if shutil.which("perf") is None:
        print("perf is not installed (apt-get install linux-perf)", file=sys.stderr)
        return 1
    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "requests": args.requests}
    by_label = {t.label: t for t in TARGETS}
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="pylon-hs-profile-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        pki = make_test_pki(work / "pki")
        upstream = stack.enter_context(start_nginx(free_port(), body_size=BODY_SIZE))
        for label in PROFILED:
            started = start_target(stack, by_label[label], work, upstream.port, pki.server_rsa.cert,
                                   pki.server_rsa.key)
            saturate(started, 500)  # warm-up
            results[label] = profile(started, args.requests, args.seconds, work)
            print(f"{label}: {results[label]['hs_per_proxy_cpu_s']:.0f} hs/proxy-CPU-s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "handshake_profile.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    text = markdown(results, meta)
    (args.out / "handshake_profile.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
