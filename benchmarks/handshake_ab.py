"""Before/after for a handshake cut: two pylon source trees side by side, CPU per TLS 1.3 handshake.

handshakes.py compares servers in one run of one source tree; a cut of a few
percent drowns in the drift of a shared machine between two such runs. Here
every variant runs at once (same nginx upstream, the templates of
handshakes.py, `--concurrency 1`), and rounds of `h2load --h1 -H 'Connection:
close' -c 32` go to each variant in a shuffled order, so drift hits all
alike; the figure is CPU ms per handshake (process tree CPU / handshakes),
the median over rounds, and the median of the per-round ratio to the first
variant.

A variant is NAME=TARGET@SRC: TARGET a label of handshakes.py (pylon-file,
pylon-cryptomb, nginx, ...) or pylon-file-mtls (pylon-file whose listener also
has a trusted CA, as a sidecar's inbound listener does: client certificates
optional) or pylon-file-resumed / envoy-resumed (session tickets on, as
resumption.py runs them: resumed handshakes), SRC the `src` folder whose pylon it runs (ignored for nginx/envoy).

Usage: python benchmarks/handshake_ab.py --key ecdsa-p256 before=pylon-file@/old/src after=pylon-file@src [...]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from handshakes import BODY_SIZE, TARGETS, TEMPLATES, Target, saturate, start_target  # noqa: E402
from resumption import resumption_template  # noqa: E402

from pylon.bench.targets import free_port, start_nginx  # noqa: E402
from pylon.identity.certs import make_test_pki  # noqa: E402

_KEY_LINE = '              private_key: { filename: "{server_key}" }\n'


def mtls_target(work: Path, ca: Path) -> Target:
    """pylon-file with a validation context (trusted CA, client certificate optional) on its listener."""
    text = (TEMPLATES / "handshake-file.yaml").read_text()
    if _KEY_LINE not in text:
        raise RuntimeError("handshake-file.yaml changed shape: cannot add a validation context")
    path = work / "handshake-file-mtls.yaml"
    path.write_text(text.replace(_KEY_LINE, _KEY_LINE + f'            validation_context: {{ trusted_ca: '
                                                        f'{{ filename: "{ca}" }} }}\n'))
    return dataclasses.replace(next(t for t in TARGETS if t.label == "pylon-file"), label="pylon-file-mtls",
                               template=str(path))  # an absolute template path wins over TEMPLATES


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", metavar="NAME=TARGET@SRC")
    parser.add_argument("--key", choices=("ecdsa-p256", "rsa2048"), default="ecdsa-p256")
    parser.add_argument("--rounds", type=int, default=6, help="rounds, each variant once per round (6)")
    parser.add_argument("--requests", type=int, default=1500, help="handshakes per variant and round (1500)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pylon-hs-ab-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        pki = make_test_pki(work / "pki")
        files = pki.server_rsa if args.key == "rsa2048" else pki.server_ecdsa
        targets = {t.label: t for t in TARGETS}
        targets["pylon-file-mtls"] = mtls_target(work, pki.ca.cert)
        resumed = str(resumption_template(work))
        for label in ("pylon-file", "envoy"):
            targets[f"{label}-resumed"] = dataclasses.replace(targets[label], label=f"{label}-resumed",
                                                              template=resumed)
        upstream = stack.enter_context(start_nginx(free_port(), body_size=BODY_SIZE))
        started = {}
        for variant in args.variants:
            name, _, spec = variant.partition("=")
            label, _, src = spec.partition("@")
            os.environ["PYTHONPATH"] = str(Path(src).resolve()) if src else ""  # the pylon this variant runs
            (work / name).mkdir()
            started[name] = start_target(stack, targets[label], work / name, upstream.port, files.cert, files.key)
            saturate(started[name], 300)  # warm-up
        runs: dict[str, list[float]] = {name: [] for name in started}
        for _ in range(args.rounds):
            for name in random.sample(list(started), len(started)):
                result = saturate(started[name], args.requests)
                runs[name].append(1000 / result["hs_per_proxy_cpu_s"])
    first = next(iter(runs))
    print(f"{args.key}, {args.rounds} rounds of {args.requests} handshakes; CPU ms per handshake")
    for name, values in runs.items():
        ratio = statistics.median(v / f for v, f in zip(values, runs[first]))
        print(f"  {name:12} median {statistics.median(values):.3f}  / {first}: {ratio:.3f}  "
              f"runs {' '.join(f'{v:.3f}' for v in values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
