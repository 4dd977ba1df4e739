"""The data path's hot modules, compiled by Cython from their unchanged Python source, loaded only when built from
the source that is there now.

Per proxied request pylon runs some 3,500 bytecodes of its own Python (benchmarks/h1_request_cost.py): stream,
connection manager, codecs, pool, router. Cython translates those same `.py` files into C extension modules, with
no `.pyx` and no C types in the code (declaration files beside seven modules, proxy/stream.pxd the first, make the
classes a request touches most extension types): the interpreter's dispatch, frames and argument passing go away,
the semantics stay Python's (annotations are not read as C types, no types are inferred). The source stays the
only truth; the builds are an acceleration with the interpreted modules as its baseline and fallback.

A build is named after the SHA-256 of the source it came from, the `.py` and its `.pxd` if any, and the sources of
the modules that `.pxd` cimports (`compiled/builds/pylon.proxy.stream.<hash>.<suffix>`), and the finder here loads
it only while the source has that hash and those modules load compiled too. An edited module therefore runs as
Python until it is built again, never as a stale build. `PYLON_PURE_PYTHON=1` runs every module as Python.

    python -m pylon.compiled build    # compile what is missing (scripts/bootstrap.sh runs it; build.py)
    python -m pylon.compiled status   # which modules run compiled
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Sequence

#: the modules of the per-request path, HTTP/1.1, HTTP/2 and TLS (benchmarks/h1_request_cost.py and
#: h2_stream_python.py name where the time goes), the HTTP/2 upstream (py-spy on a worker proxying gRPC), and of
#: accepting a connection (py-spy on a worker serving new TLS connections). Never a module run as `python -m`
#: (runpy runs only source): pylon.proxy.worker stays interpreted.
MODULES = (
    "pylon.proxy.stream",
    "pylon.proxy.hcm",
    "pylon.proxy.http.h1_server",
    "pylon.proxy.http.h1_client",
    "pylon.proxy.http.h2_server",
    "pylon.proxy.http.h2_session",
    "pylon.proxy.h2_connection",
    "pylon.proxy.upstream.pool",
    "pylon.proxy.upstream.h2_pool",
    "pylon.proxy.http.h2_client",
    "pylon.proxy.upstream.pool_base",
    "pylon.proxy.upstream.pool_registry",
    "pylon.proxy.upstream.cluster",
    "pylon.proxy.upstream.host",
    "pylon.proxy.upstream.lb",
    "pylon.proxy.upstream.circuit",
    "pylon.proxy.write_batch",
    "pylon.proxy.fairness",
    "pylon.proxy.deadlines",
    "pylon.proxy.router",
    "pylon.proxy.headers",
    "pylon.proxy.request_ids",
    "pylon.proxy.access_log",
    "pylon.proxy.tls_transport",
    "pylon.proxy.tls_stats",
    "pylon.proxy.codec_select",
    "pylon.proxy.listener",
    "pylon.proxy.watermarks",
    "pylon.proxy.connection_info",
    "pylon.proxy.downstream_connections",
    "pylon.proxy.balance.adopt",
    "pylon.proxy.balance.acceptor",
    "pylon.stats.store",
)
PURE_ENV = "PYLON_PURE_PYTHON"
#: Python's semantics, not Cython's shortcuts: an annotation is not a C type to check (`x: list` would refuse a
#: subclass, `-> int` would convert), and a typed reference holding None raises AttributeError when used, as Python
#: does, where Cython would read None's memory as the struct (nonecheck: one pointer compare). Cython's default, safe
#: type inference stays on: a local assigned only from a typed field (`hcm = self.hcm`) or an extension type's
#: constructor takes that type, so its fields and cpdef methods are reached without a look-up, as through `self`. (It
#: infers builtin types too: a module whose code Cython then refuses turns it off in its first line, as
#: proxy/request_ids.py does.) Part of each build's hash.
DIRECTIVES = "annotation_typing=False,nonecheck=True"
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]

#: `from pylon.proxy.hcm cimport HttpConnection` in a .pxd: the module it names
_CIMPORT = re.compile(r"^from\s+([\w.]+)\s+cimport\b", re.M)


class Builds:
    """Modules under `source_root` and their builds in `build_dir`, each named after the hash of its source: the
    `.py`, the `.pxd` beside it where there is one (Cython's declarations for the compiled module, e.g.
    proxy/stream.pxd: they change the build, never the interpreted module), and the sources of the listed modules
    that `.pxd` cimports (a subclass of another module's extension type is built against that type's layout)."""

    def __init__(self, modules: Sequence[str], source_root: Path, build_dir: Path) -> None:
        self.modules = tuple(modules)
        self.source_root = source_root
        self.build_dir = build_dir

    def source_path(self, name: str) -> Path:
        return self.source_root.joinpath(*name.split(".")).with_suffix(".py")

    def cimports(self, name: str) -> list[str]:
        """The modules `name`'s `.pxd` cimports (`from a.b cimport C`); each must be listed, so built the same way."""
        declarations = self.source_path(name).with_suffix(".pxd")
        if not declarations.is_file():
            return []
        found = _CIMPORT.findall(declarations.read_text())
        unlisted = [module for module in found if module not in self.modules]
        if unlisted:
            raise ValueError(f"{declarations}: cimports {', '.join(unlisted)}, which pylon.compiled does not build")
        return found

    def _depends_on(self, name: str) -> list[str]:
        """`name` and every module its declarations reach through cimports, each once, `name` first."""
        order, todo = [], [name]
        while todo:
            module = todo.pop()
            if module not in order:
                order.append(module)
                todo.extend(self.cimports(module))
        return order

    def build_path(self, name: str) -> Path:
        """Where the build of `name`'s source as it is now lives (OSError: no source)."""
        digest = hashlib.sha256(DIRECTIVES.encode())
        for module in self._depends_on(name):
            source = self.source_path(module)
            digest.update(source.read_bytes())
            declarations = source.with_suffix(".pxd")
            if declarations.is_file():
                digest.update(declarations.read_bytes())
        return self.build_dir / f"{name}.{digest.hexdigest()[:16]}{SUFFIX}"

    def current_build(self, name: str) -> Path | None:
        """The build of `name`'s source as it is now, if there is one and every module it cimports has one too (a
        compiled subclass cannot load over an interpreted base)."""
        try:
            built = self.build_path(name)
            if not built.is_file():
                return None
            if any(self.current_build(module) is None for module in self.cimports(name)):
                return None
        except OSError:
            return None
        return built



#: pylon's own
PYLON = Builds(MODULES, Path(__file__).resolve().parent.parent.parent, Path(__file__).resolve().parent / "builds")


def pure_python() -> bool:
    return os.environ.get(PURE_ENV, "") not in ("", "0")


class CompiledFinder(importlib.abc.MetaPathFinder):
    """Finds the build of a listed module made from its current source; otherwise leaves the import to the normal
    finders (the `.py`)."""

    def __init__(self, builds: Builds) -> None:
        self.builds = builds

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.builds.modules:
            return None
        built = self.builds.current_build(fullname)
        if built is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(built))
        return importlib.machinery.ModuleSpec(fullname, loader, origin=str(built))


def install(builds: Builds = PYLON) -> None:
    """Put a finder for `builds` first on `sys.meta_path` (once), unless PYLON_PURE_PYTHON is set."""
    if pure_python() or any(isinstance(f, CompiledFinder) and f.builds is builds for f in sys.meta_path):
        return
    sys.meta_path.insert(0, CompiledFinder(builds))


def is_compiled(module: ModuleType) -> bool:
    return isinstance(getattr(module.__spec__, "loader", None), importlib.machinery.ExtensionFileLoader)


def status(builds: Builds = PYLON) -> dict[str, str]:
    """Each listed module: "compiled", or why it runs as Python (as a fresh import would load it)."""
    states = {}
    for name in builds.modules:
        if pure_python():
            states[name] = f"python ({PURE_ENV} is set)"
        elif builds.current_build(name) is not None:
            states[name] = "compiled"
        else:
            states[name] = "python (no build of its current source: python -m pylon.compiled build)"
    return states


def _loaded() -> list[ModuleType]:
    return [sys.modules[name] for name in PYLON.modules if name in sys.modules]


def data_path_compiled() -> bool:
    """Whether every listed module this process has imported runs compiled."""
    return all(is_compiled(module) for module in _loaded())


def summary() -> str:
    """One line for a process's start: how many of the listed modules it loaded compiled."""
    loaded = _loaded()
    compiled = sum(is_compiled(module) for module in loaded)
    if compiled == len(loaded):
        return f"data path compiled ({compiled} modules, pylon.compiled)"
    why = f"{PURE_ENV} is set" if pure_python() else "run `python -m pylon.compiled build`"
    return f"data path partly interpreted: {compiled} of {len(loaded)} hot modules compiled ({why})"
