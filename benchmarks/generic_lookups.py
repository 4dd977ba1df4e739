"""Generic attribute look-ups, stores and method look-ups per proxied HTTP/2 stream, by type and name.

Compiled (pylon.compiled), a typed field or a cpdef method is a C access; everything else still goes through
CPython's generic `_PyObject_GenericGetAttrWithDict`, `_PyObject_GenericSetAttrWithDict` and `_PyObject_GetMethod`,
about 15 ns each and together a tenth of a worker's CPU under gRPC. This counts them: uprobes on those three
functions record the object's type name and the attribute name of every call while `h2_stream_python.py` drives
the in-process proxy, once with 50 and once with 250 rounds of ten streams, and the difference divided by the 2,000
streams between them is the count per stream (set-up and warm-up cancel out). The list says which declaration or
cpdef would remove the most.

Needs root and perf (`perf probe`), and CPython 3.11 on x86-64: the probes read `ob_type->tp_name` (offset 24) and a
compact ASCII name's characters (offset 48) from the registers of the System V calling convention. The probes are
removed again when it ends.

Usage: sudo python benchmarks/generic_lookups.py [--call grpc|get] [--top 40]   (from the tree to measure)
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GROUP = "pylon_lookups"
#: event name -> the CPython function it counts; rdi is the object, rsi the attribute name
PROBES = {"getattr": "_PyObject_GenericGetAttrWithDict", "setattr": "_PyObject_GenericSetAttrWithDict",
          "getmethod": "_PyObject_GetMethod"}
ROUNDS = (50, 250)
STREAMS_PER_ROUND = 10
_LINE = re.compile(rf"{GROUP}:(\w+): \(\w+\) tp=\"(.*)\" name=\"(.*)\"$")


def _interpreter() -> str:
    """The binary CPython's functions live in (a venv's python is a link to it)."""
    return os.path.realpath(sys.executable)


def add_probes() -> None:
    binary = _interpreter()
    for event, function in PROBES.items():
        subprocess.run(["perf", "probe", "-q", "-x", binary, "-a",
                        f"{GROUP}:{event}={function} tp=+0(+24(+8(%di))):string name=+48(%si):string"],
                       check=True)


def remove_probes() -> None:
    subprocess.run(["perf", "probe", "-q", "-d", f"{GROUP}:*"], check=False, capture_output=True)


def count(call: str, rounds: int, work: Path) -> collections.Counter[tuple[str, str, str]]:
    """(event, type, name) -> calls, over one harness run of `rounds` rounds."""
    data = work / f"perf.{rounds}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), str(ROOT / "benchmarks")])}
    subprocess.run(["perf", "record", "-q", "-e", f"{GROUP}:*", "-o", str(data), "--", sys.executable,
                    str(ROOT / "benchmarks" / "h2_stream_python.py"), "--call", call, "--runs", "1",
                    "--rounds", str(rounds)], check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "event,trace"], check=True,
                            capture_output=True, text=True, errors="replace").stdout
    counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for line in script.splitlines():
        match = _LINE.search(line)
        if match:
            counts[match.group(1), match.group(2), match.group(3)] += 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--call", choices=("get", "grpc"), default="grpc")
    parser.add_argument("--top", type=int, default=40, help="attributes listed (40)")
    args = parser.parse_args()
    if sys.version_info[:2] != (3, 11) or os.uname().machine != "x86_64":
        raise SystemExit("generic_lookups.py reads CPython 3.11's object layout on x86-64; this is "
                         f"{sys.version_info[0]}.{sys.version_info[1]} on {os.uname().machine}")
    remove_probes()  # a run stopped midway may have left them
    add_probes()
    try:
        with tempfile.TemporaryDirectory(prefix="pylon-lookups-") as tmp:
            few, many = (count(args.call, rounds, Path(tmp)) for rounds in ROUNDS)
    finally:
        remove_probes()
    streams = (ROUNDS[1] - ROUNDS[0]) * STREAMS_PER_ROUND
    per_stream = {key: (many[key] - few[key]) / streams for key in many.keys() | few.keys()}
    totals: collections.Counter[str] = collections.Counter()
    by_type: collections.Counter[tuple[str, str]] = collections.Counter()
    for (event, type_name, _name), n in per_stream.items():
        totals[event] += n
        by_type[event, type_name] += n
    print(f"{args.call}: generic look-ups per stream: {sum(totals.values()):.0f} "
          f"({', '.join(f'{event} {totals[event]:.0f}' for event in PROBES)})")
    print("\nby type:")
    for (event, type_name), n in by_type.most_common(20):
        print(f"  {n:6.1f}  {event:9s} {type_name}")
    print("\nby attribute:")
    for (event, type_name, name), n in sorted(per_stream.items(), key=lambda item: -item[1])[:args.top]:
        print(f"  {n:6.1f}  {event:9s} {type_name}.{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
