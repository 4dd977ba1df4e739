"""How cheap can pylon's TLS handshake get on this machine's OpenSSL? Issue 18's goals against measured floors.

A goal such as "pylon-cryptomb handshakes per CPU-second >= 1.4x nginx's" sets a ceiling on pylon's CPU per
handshake: nginx's CPU per handshake / 1.4. Part of pylon's CPU is work no change to pylon can remove:

- **the library's work outside the signature** (random numbers, key exchange, key schedule, the chain, record
  encryption, the rest of `SSL_do_handshake`, SSL object set-up): pylon runs the same OpenSSL 3.0 as nginx
  (CPython's `ssl` links the system libssl), so the floor is the smaller of the two as
  `benchmarks/handshake_profile.py` split them in one run;
- **the kernel's** (accept, socket I/O, close), the smaller of pylon's and nginx's;
- **the signature**, at the private-key provider's own cost per operation, measured alone
  (`benchmarks/handshakes.py`'s "private operation alone": crypto_mb in full batches of 8, or OpenSSL one at a time).

Ceiling minus floor is the **headroom**: what all of pylon's own code per connection (its TLS transport, the
connection's set-up and teardown, proxying the one request, the collector) may cost for the goal to be met; the
table sets it beside what that code costs now (the profile's Python categories). A headroom at or below zero means
no change to pylon's own code can meet the goal on this library; a small one means that code must shrink to that
size. Floors use the cheaper of pylon's and nginx's figures for each part and the provider's cost per operation
when measured alone, so they are low estimates: the true floor is at least this.

For a signature-bound goal (RSA-3072: cryptomb / key file >= 2.0) the ratio of handshakes is (file signature +
rest) / (crypto_mb signature + rest), where the rest is the same for both. It is below crypto_mb's own speed-up
per operation whatever the rest costs, and the rest is at least the floor above without the signature (the library
and the kernel, from the RSA-2048 profile: what they do outside the signature does not depend on the key's size,
but for a longer certificate). The per-operation costs are measured alone, before the targets start; inside a
loaded proxy OpenSSL's one-at-a-time signature costs more (about 10% in the runs here), which this bound does not
see. So a third figure comes from the large-key run itself: its two targets' CPU per handshake with pylon's own
code (the RSA-2048 profile's, per target) taken off both, i.e. the ratio if that code cost nothing. The goal is
called reachable when that figure reaches it.

Usage: python benchmarks/handshake_bounds.py [--out benchmarks/results] (reads the committed results named below)
Writes benchmarks/results/handshake_bounds.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pylon.bench.host import describe, host_facts

RESULTS = Path(__file__).resolve().parent / "results"
#: The library's categories of benchmarks/handshake_split.py, the signature apart.
LIBRARY = ("RNG", "key exchange", "key schedule", "certificate chain", "record encryption",
           "handshake, other libssl/libcrypto", "SSL object set-up/teardown")
KERNEL = ("kernel: accept/close", "kernel: socket I/O, other")
#: pylon's own code per connection (py-spy's split of perf's "Python code", and the collector).
OWN_CODE = ("TLS transport", "connection set-up/teardown", "proxying the request", "Python GC", "other")

#: Issue 18's ratio goals on full handshakes: (key, pylon target, comparator, goal, signature provider).
FULL_GOALS = (
    ("rsa2048", "pylon-cryptomb", "nginx", 1.4, "cryptomb"),
    ("rsa2048", "pylon-cryptomb", "envoy", 1.8, "cryptomb"),
    ("rsa2048", "pylon-file", "nginx", 0.9, "openssl"),
    ("ecdsa-p256", "pylon-cryptomb", "nginx", 1.0, "cryptomb"),
    ("ecdsa-p256", "pylon-cryptomb", "envoy", 0.8, "cryptomb"),
)


def _sum(ms: dict[str, float], names: tuple[str, ...]) -> float:
    return sum(ms.get(name, 0.0) for name in names)


def full_bounds(profile: dict[str, Any], per_op: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per full-handshake goal, all from one handshake_profile.py run (and the per-operation costs)."""
    rows = []
    for key, target, comparator, goal, provider in FULL_GOALS:
        results = profile["results"][key]
        pylon_ms, nginx_ms = results[target]["ms_per_hs"], results["nginx"]["ms_per_hs"]
        library = min(_sum(pylon_ms, LIBRARY), _sum(nginx_ms, LIBRARY))
        kernel = min(_sum(pylon_ms, KERNEL), _sum(nginx_ms, KERNEL))
        signature = per_op[key][f"{provider}_us_per_op"] / 1000
        floor = library + kernel + signature
        ceiling = results[comparator]["cpu_ms_per_hs"] / goal
        rows.append({
            "goal": f"{key} {target} / {comparator} >= {goal}", "ceiling_ms": ceiling, "library_ms": library,
            "kernel_ms": kernel, "signature_ms": signature, "floor_ms": floor, "headroom_ms": ceiling - floor,
            "own_code_now_ms": _sum(pylon_ms, OWN_CODE), "pylon_now_ms": results[target]["cpu_ms_per_hs"],
            "ratio_now": results[comparator]["cpu_ms_per_hs"] / results[target]["cpu_ms_per_hs"],
        })
    return rows


def resumed_bound(profile: dict[str, Any]) -> dict[str, Any]:
    """pylon / Envoy >= 1.0 on resumed handshakes (ECDSA certificate, tickets on): no certificate signature, but
    whatever the split calls one is the library's too."""
    results = profile["results"]["ecdsa-p256"]
    pylon_ms, nginx_ms = results["pylon-file"]["ms_per_hs"], results["nginx"]["ms_per_hs"]
    with_signature = ("signature", *LIBRARY)
    library = min(_sum(pylon_ms, with_signature), _sum(nginx_ms, with_signature))
    kernel = min(_sum(pylon_ms, KERNEL), _sum(nginx_ms, KERNEL))
    ceiling = results["envoy"]["cpu_ms_per_hs"]
    return {"goal": "resumed ecdsa-p256 pylon / envoy >= 1.0", "ceiling_ms": ceiling, "library_ms": library,
            "kernel_ms": kernel, "signature_ms": 0.0, "floor_ms": library + kernel,
            "headroom_ms": ceiling - library - kernel, "own_code_now_ms": _sum(pylon_ms, OWN_CODE),
            "pylon_now_ms": results["pylon-file"]["cpu_ms_per_hs"],
            "ratio_now": ceiling / results["pylon-file"]["cpu_ms_per_hs"]}


def rest_floor(profile: dict[str, Any]) -> float:
    """ms per handshake that no provider removes: the RSA-2048 profile's library and kernel outside the signature,
    the cheaper of pylon-file's and nginx's for each."""
    results = profile["results"]["rsa2048"]
    pylon_ms, nginx_ms = results["pylon-file"]["ms_per_hs"], results["nginx"]["ms_per_hs"]
    return (min(_sum(pylon_ms, LIBRARY), _sum(nginx_ms, LIBRARY))
            + min(_sum(pylon_ms, KERNEL), _sum(nginx_ms, KERNEL)))


def own_code(profile: dict[str, Any]) -> dict[str, float]:
    """ms per handshake of pylon's own code in the RSA-2048 profile, per pylon target."""
    results = profile["results"]["rsa2048"]
    return {target: _sum(results[target]["ms_per_hs"], OWN_CODE) for target in ("pylon-file", "pylon-cryptomb")}


def signature_bound(large: dict[str, Any], key: str, goal: float, rest_ms: float,
                    own_ms: dict[str, float]) -> dict[str, Any]:
    """cryptomb / key file >= goal: crypto_mb's speed-up per operation; the ratio of handshakes with the rest of a
    handshake at its floor `rest_ms` (per-operation costs measured alone); and the large-key run's own ratio with
    pylon's own code `own_ms` taken off both targets."""
    per_op = large["crypto_only"][key]
    openssl_ms, cryptomb_ms = per_op["openssl_us_per_op"] / 1000, per_op["cryptomb_us_per_op"] / 1000
    measured = large["summary"][key]
    file_ms, cryptomb_hs_ms = measured["pylon-file"]["cpu_ms_per_hs"], measured["pylon-cryptomb"]["cpu_ms_per_hs"]
    without_own = (file_ms - own_ms["pylon-file"]) / (cryptomb_hs_ms - own_ms["pylon-cryptomb"])
    return {"goal": f"{key} pylon-cryptomb / pylon-file >= {goal}", "speedup_per_op": openssl_ms / cryptomb_ms,
            "rest_floor_ms": rest_ms, "with_rest_at_floor": (openssl_ms + rest_ms) / (cryptomb_ms + rest_ms),
            "measured": file_ms / cryptomb_hs_ms, "without_own_code": without_own, "reachable": without_own >= goal}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, default=RESULTS / "handshake_profile-this-host.json")
    parser.add_argument("--resumed-profile", type=Path, default=RESULTS / "handshake_profile_resumed-this-host.json")
    parser.add_argument("--handshakes", type=Path, default=RESULTS / "handshakes-this-host.json",
                        help="a handshakes.py run with RSA-2048 and ECDSA P-256 (its per-operation costs)")
    parser.add_argument("--large-keys", type=Path, default=RESULTS / "handshakes-rsa3072-4096-this-host.json",
                        help="a handshakes.py run with RSA-3072 and RSA-4096")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    profile = json.loads(args.profile.read_text())
    resumed = json.loads(args.resumed_profile.read_text())
    per_op = json.loads(args.handshakes.read_text())["crypto_only"]
    large = json.loads(args.large_keys.read_text())
    rows = [*full_bounds(profile, per_op), resumed_bound(resumed)]
    rest = rest_floor(profile)
    own = own_code(profile)
    signature_rows = [signature_bound(large, key, 2.0, rest, own) for key in ("rsa3072", "rsa4096")
                      if large["crypto_only"].get(key) and key in large["summary"]]
    sources = {"profile": args.profile.name, "resumed_profile": args.resumed_profile.name,
               "per_operation": args.handshakes.name, "large_keys": args.large_keys.name,
               "profile_started": profile["meta"]["started"], "resumed_started": resumed["meta"]["started"]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "handshake_bounds.json").write_text(json.dumps(
        {"sources": sources, "ratio_goals": rows, "signature_bound_goals": signature_rows}, indent=2))
    lines = [
        "# Issue 18's handshake goals against what OpenSSL 3.0 and the kernel cost on their own",
        "",
        f"Host: {describe(host_facts())} (computed here; the runs it reads by default, the `-this-host` results, were made on this host).",
        "",
        f"`python benchmarks/handshake_bounds.py`, from {sources['profile']} (run {sources['profile_started']}), "
        f"{sources['resumed_profile']} (run {sources['resumed_started']}) and the per-operation costs of "
        f"{sources['per_operation']} and {sources['large_keys']}. CPU ms per handshake. Ceiling: the most pylon may "
        "spend for the goal (the comparator's CPU per handshake in the profile run / the goal). Floor: the library "
        "outside the signature and the kernel (each the cheaper of pylon's and nginx's, same OpenSSL) plus the "
        "provider's signature cost alone. Headroom = ceiling - floor: what all of pylon's own code per connection "
        "may cost; beside it what it costs now.",
        "",
        "| goal | ratio now (profile run) | ceiling | library | kernel | signature | floor | **headroom** "
        "| pylon's own code now |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['goal']} | {row['ratio_now']:.2f} | {row['ceiling_ms']:.3f} | {row['library_ms']:.3f} "
                     f"| {row['kernel_ms']:.3f} | {row['signature_ms']:.3f} | {row['floor_ms']:.3f} "
                     f"| **{row['headroom_ms']:+.3f}** | {row['own_code_now_ms']:.3f} |")
    lines += ["", f"Signature-bound goals, from {sources['large_keys']}: crypto_mb's speed-up per operation (the "
              "most a provider could give if nothing else in a handshake cost anything); the ratio of handshakes with the "
              f"rest of a handshake at its floor ({rest:.3f} ms: the RSA-2048 profile's library and kernel outside "
              "the signature), at the per-operation costs measured alone; the run's measured ratio; and the run's "
              "ratio with pylon's own code (the RSA-2048 profile's: pylon-file "
              f"{own['pylon-file']:.3f} ms, pylon-cryptomb {own['pylon-cryptomb']:.3f} ms) taken off both targets.",
              "", "| goal | speed-up per operation | rest at its floor | measured | without pylon's own code "
              "| reachable |", "|---|---:|---:|---:|---:|---|"]
    for row in signature_rows:
        lines.append(f"| {row['goal']} | {row['speedup_per_op']:.2f} | {row['with_rest_at_floor']:.2f} "
                     f"| {row['measured']:.2f} | {row['without_own_code']:.2f} "
                     f"| {'yes' if row['reachable'] else '**no**'} |")
    (args.out / "handshake_bounds.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
