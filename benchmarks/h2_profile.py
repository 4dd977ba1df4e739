"""Where a pylon worker's CPU goes per HTTP/2 stream: py-spy samples under h2_vs_envoy.py's loads, by category.

Starts the proxy as h2_vs_envoy.py does (`--concurrency 1`, the same config and upstream for the variant), records
its worker with `py-spy record --native --subprocesses` while `h2load -c10 -m10` runs, and gives each sample one
category by its innermost frame (kernel reads and writes, the collector, nghttp2 and cffi, llhttp, the interpreter,
then the pylon module whose Python frame it is), plus the hottest pylon functions. Shares are of the worker's busy
samples (the event loop's wait left out). The sampler pauses the worker for each native stack, so the rate under
the profiler is lower than without; the shares are what this is for.

Usage: python benchmarks/h2_profile.py [--variant h2c-get|grpc-unary] [--duration 10] [--raw FILE]
Prints a table; with --raw keeps py-spy's raw samples.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from h2_vs_envoy import BODY_SIZE, cluster, load, start_grpc_server, start_proxy
from pylon.bench.targets import TargetError, free_port, start_nginx

#: (category, regex on the innermost frame), first match wins; a pylon Python frame goes by its module below.
NATIVE = (
    ("kernel: socket writes", r"^(write|writev|sendmsg|sendto) \(libc"),
    ("kernel: socket reads", r"^(read|readv|recv|recvmsg) \(libc"),
    ("event loop wait", r"epoll_(p)?wait"),
    ("garbage collector", r"gc_collect|collect_with_callback|gc_collect_main"),
    ("nghttp2 + cffi (C)", r"libnghttp2|_nghttp2\.c|_cffi_backend"),
    ("llhttp (HTTP/1 upstream parser, C)", r"llhttp|parser\.c"),
)
MODULES = (
    ("pylon: HTTP/2 codec and glue", r"pylon/proxy/(http/h2_|h2_connection|upstream/h2_pool)"),
    ("pylon: stream.py (the HTTP/1-shaped exchange)", r"pylon/proxy/stream\.py"),
    ("pylon: HTTP/1 upstream codec", r"pylon/proxy/(http/h1_client|http1)\.py"),
    ("pylon: upstream pools, cluster, lb", r"pylon/proxy/upstream/"),
    ("pylon: router", r"pylon/proxy/router\.py"),
    ("pylon: other", r"pylon/"),
)


def category(leaf: str) -> str:
    for name, pattern in NATIVE:
        if re.search(pattern, leaf):
            return name
    for name, pattern in MODULES:
        if re.search(pattern, leaf):
            return name
    return "interpreter, uvloop, libc (C)"


def split(raw: Path) -> tuple[Counter[str], Counter[str], int]:
    """(samples by category, by pylon function, busy samples) of the worker's stacks in py-spy's raw output."""
    categories: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not any("pylon.proxy.worker" in f for f in frames[:2]):
            continue  # the supervisor
        leaf = frames[-1]
        categories[category(leaf)] += int(count)
        if "pylon/" in leaf:
            functions[re.sub(r":\d+\)", ")", leaf)] += int(count)
    busy = sum(categories.values()) - categories["event loop wait"]
    return categories, functions, busy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=("h2c-get", "grpc-unary"), default="h2c-get")
    parser.add_argument("--duration", type=int, default=10, help="seconds recorded under load (10)")
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw samples here")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    try:
        with tempfile.TemporaryDirectory(prefix="pylon-h2-profile-") as tmp, contextlib.ExitStack() as stack:
            work = Path(tmp)
            if args.variant == "h2c-get":
                upstream = cluster("web", stack.enter_context(start_nginx(free_port(), body_size=BODY_SIZE)).port,
                                   http2=False)
            else:
                upstream = cluster("grpc", stack.enter_context(start_grpc_server(work)).port, http2=True)
            proxy = start_proxy(stack, work, "pylon", args.variant, upstream)
            load(proxy, args.variant, 1.0)  # warm-up
            raw = args.raw or work / "samples.raw"
            recorder = subprocess.Popen([spy, "record", "--native", "--subprocesses", "-r", "200", "-d",
                                         str(args.duration), "-p", str(proxy.pid), "-f", "raw", "-o", str(raw)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                row = load(proxy, args.variant, args.duration + 1)
            finally:
                recorder.wait(timeout=args.duration + 60)
            categories, functions, busy = split(raw)
    except TargetError as exc:
        print(f"profile failed: {exc}", file=sys.stderr)
        return 1
    if not busy:
        print("no samples of the worker (py-spy needs ptrace rights)", file=sys.stderr)
        return 1
    print(f"{args.variant}: {row['requests']} requests, {row['failed']} failed, under the profiler; "
          f"{busy} busy worker samples\n\n| where | share of busy CPU |\n|---|---:|")
    for name, count in categories.most_common():
        if name != "event loop wait":
            print(f"| {name} | {count / busy:.1%} |")
    print("\n| hottest pylon functions (own time) | share |\n|---|---:|")
    for name, count in functions.most_common(15):
        print(f"| {name} | {count / busy:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
