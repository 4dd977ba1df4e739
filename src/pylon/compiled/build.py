"""Compiling the listed modules: Cython translates each unchanged `.py` to C, the C compiler builds it with the flags
this interpreter's own extensions are built with, and the result is stored under the hash of its source."""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pylon.compiled import DIRECTIVES, PYLON, Builds


def _compile(builds: Builds, name: str, work: Path) -> Path:
    """Cython, then the C compiler with the flags this interpreter's extensions are built with."""
    source_path = builds.source_path(name)
    target = builds.build_path(name)
    c_file = work / f"{name}.c"
    subprocess.run([sys.executable, "-m", "cython", "-3", "-X", DIRECTIVES, "--module-name", name,
                    "-I", str(builds.source_root),  # where a .pxd's cimports are found
                    "-o", str(c_file), str(source_path)], check=True, capture_output=True, text=True)
    config = sysconfig.get_config_var
    object_file = work / f"{name}.o"
    subprocess.run([*shlex.split(config("CC")), *shlex.split(config("CFLAGS")), *shlex.split(config("CCSHARED")),
                    "-w", "-I", sysconfig.get_paths()["include"], "-c", str(c_file), "-o", str(object_file)],
                   check=True, capture_output=True, text=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")  # its own, should two builds run at once
    subprocess.run([*shlex.split(config("LDSHARED")), str(object_file), "-o", str(partial)],
                   check=True, capture_output=True, text=True)
    partial.rename(target)  # whole or not at all: the finder never sees half a file
    return target


def build(builds: Builds = PYLON, jobs: int | None = None) -> list[str]:
    """Compile every listed module whose current source has no build; remove builds of older sources. Returns the
    names compiled."""
    builds.build_dir.mkdir(parents=True, exist_ok=True)
    wanted = {name: builds.build_path(name) for name in builds.modules}
    for old in builds.build_dir.iterdir():
        if old not in wanted.values():
            old.unlink()
    todo = [name for name, path in wanted.items() if not path.is_file()]
    if todo and importlib.util.find_spec("Cython") is None:
        raise SystemExit("pylon.compiled: Cython is not installed (pip install 'cython>=3.0.11', or pylon's `compile` "
                         "extra); until the modules are built they run interpreted, about a third slower per request")
    with tempfile.TemporaryDirectory(prefix="pylon-compile-") as tmp, \
            ThreadPoolExecutor(jobs or os.cpu_count() or 1) as pool:
        for future in [pool.submit(_compile, builds, name, Path(tmp)) for name in todo]:
            try:
                future.result()
            except subprocess.CalledProcessError as error:
                raise SystemExit(f"pylon.compiled: {shlex.join(error.cmd[:4])}... failed:\n{error.stderr}") from None
    return todo
