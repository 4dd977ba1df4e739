"""pylon.compiled: a build loads only while its source is unchanged, compiled code keeps Python's semantics, and
PYLON_PURE_PYTHON runs everything interpreted.

The modules here are tiny ones of a package made in a temporary directory, compiled by the real build (Cython and
the C compiler), so nothing of pylon's own builds is touched."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest

from pylon import compiled
from pylon.compiled import Builds, CompiledFinder, is_compiled
from pylon.compiled.build import build

#: what an annotation read as a C type, or an inferred builtin type, would change: Cython's defaults refuse a list
#: subclass for `items: list`, and an inferred bytearray refuses a bytes slice, so a module doing that turns inference
#: off in its first line (as proxy/request_ids.py does); Python takes both
SEMANTICS = '''# cython: infer_types=False
class Items(list):
    pass


def count(items: list) -> int:
    return len(items)


def laid_out() -> bytes:
    out = bytearray(4)
    out[0::2] = b"ab"
    return bytes(out)


def subclass_count() -> int:
    return count(Items([1, 2, 3]))
'''


#: a class made an extension type by the .pxd beside it, as proxy/stream.pxd makes Stream: `n` a C field, `state`
#: left to the instance dictionary
COUNTER = '''
class Counter:
    __slots__ = ("n", "state")

    def __init__(self):
        self.n = 0
        self.state = 0

    def bump(self):
        self.n += 1
        self.state += 1
'''
COUNTER_PXD = "cdef class Counter:\n    cdef dict __dict__\n    cdef public object n\n"
#: an extension type derived from another module's, as h2_connection.pxd derives from hcm.pxd's HttpConnection
TALLY = '''
from compiledpkg.counter import Counter


class Tally(Counter):
    __slots__ = ("total", "peer")

    def __init__(self):
        Counter.__init__(self)
        self.total = 0
        self.peer = None

    def add(self, k):
        self.bump()
        self.total += k

    def peer_count(self):
        return self.peer.n
'''
TALLY_PXD = ("from compiledpkg.counter cimport Counter\n\ncdef class Tally(Counter):\n    cdef public object total\n"
             "    cdef public Counter peer\n")


def _package(root: Path, version: int) -> Builds:
    package = root / "src" / "compiledpkg"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "plus.py").write_text(f"def plus(x):\n    return x + {version}\n")
    (package / "semantics.py").write_text(SEMANTICS)
    (package / "counter.py").write_text(COUNTER)
    (package / "counter.pxd").write_text(COUNTER_PXD)
    (package / "tally.py").write_text(TALLY)
    (package / "tally.pxd").write_text(TALLY_PXD)
    return Builds(("compiledpkg.plus", "compiledpkg.semantics", "compiledpkg.counter", "compiledpkg.tally"),
                  root / "src", root / "builds")


HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class statement's type, not an extension type


def _fresh_import(name: str) -> ModuleType:
    for loaded in [n for n in sys.modules if n == "compiledpkg" or n.startswith("compiledpkg.")]:
        del sys.modules[loaded]
    importlib.invalidate_caches()
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    builds = _package(tmp_path_factory.mktemp("compiled"), 1)
    assert sorted(build(builds)) == ["compiledpkg.counter", "compiledpkg.plus", "compiledpkg.semantics",
                                     "compiledpkg.tally"]
    return builds


@pytest.fixture
def finder(built: Builds, monkeypatch: pytest.MonkeyPatch) -> Iterator[CompiledFinder]:
    monkeypatch.syspath_prepend(str(built.source_root))
    finder = CompiledFinder(built)
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    yield finder
    for loaded in [n for n in sys.modules if n == "compiledpkg" or n.startswith("compiledpkg.")]:
        del sys.modules[loaded]


def test_the_build_of_the_current_source_is_what_loads(finder: CompiledFinder) -> None:
    module = _fresh_import("compiledpkg.plus")
    assert is_compiled(module)
    assert Path(module.__file__).parent == finder.builds.build_dir
    assert module.plus(1) == 2


def test_compiled_code_keeps_pythons_semantics(finder: CompiledFinder) -> None:
    module = _fresh_import("compiledpkg.semantics")
    assert is_compiled(module)
    assert module.subclass_count() == 3
    assert module.laid_out() == b"a\x00b\x00"


def test_an_edited_source_runs_interpreted_until_built_again(finder: CompiledFinder, tmp_path: Path) -> None:
    builds = finder.builds
    source = builds.source_path("compiledpkg.plus")
    original = source.read_text()
    try:
        source.write_text(original.replace("x + 1", "x + 10"))
        module = _fresh_import("compiledpkg.plus")
        assert not is_compiled(module)  # the build of the old source is there, and is not used
        assert module.plus(1) == 11
        assert compiled.status(builds)["compiledpkg.plus"].startswith("python (no build")
        assert build(builds) == ["compiledpkg.plus"]
        assert len([p for p in builds.build_dir.iterdir() if p.name.startswith("compiledpkg.plus.")]) == 1
        module = _fresh_import("compiledpkg.plus")
        assert is_compiled(module) and module.plus(1) == 11
    finally:
        source.write_text(original)
        build(builds)


def test_a_pxd_makes_an_extension_type_whose_undeclared_attributes_pass_setattr(finder: CompiledFinder) -> None:
    """What proxy/stream.pxd relies on: declared attributes are C fields (stores skip __setattr__), the others go
    through __setattr__, so a checking subclass still sees those."""
    module = _fresh_import("compiledpkg.counter")
    assert is_compiled(module) and not module.Counter.__flags__ & HEAP_TYPE

    class Seen(module.Counter):
        def __setattr__(self, name: str, value: object) -> None:
            stored.append(name)
            super().__setattr__(name, value)

    stored: list[str] = []
    counter = Seen()
    counter.bump()
    assert (counter.n, counter.state) == (1, 1)
    assert stored == ["state", "state"]


def test_editing_a_pxd_needs_a_new_build(finder: CompiledFinder) -> None:
    builds = finder.builds
    declarations = builds.source_path("compiledpkg.counter").with_suffix(".pxd")
    before = builds.build_path("compiledpkg.counter")
    try:
        declarations.write_text(COUNTER_PXD.replace("cdef public object n", "cdef public object n, state"))
        assert builds.build_path("compiledpkg.counter") != before
        assert not is_compiled(_fresh_import("compiledpkg.counter"))
    finally:
        declarations.write_text(COUNTER_PXD)
    assert builds.build_path("compiledpkg.counter") == before


def test_a_subclass_of_another_modules_extension_type_is_built_against_that_module(finder: CompiledFinder) -> None:
    """tally.pxd cimports counter's type: its build hashes counter's sources too, and it loads only over a compiled
    counter (an extension type cannot derive from an interpreted class's layout)."""
    builds = finder.builds
    module = _fresh_import("compiledpkg.tally")
    assert is_compiled(module) and is_compiled(sys.modules["compiledpkg.counter"])
    assert not module.Tally.__flags__ & HEAP_TYPE
    tally = module.Tally()
    tally.add(5)
    assert (tally.n, tally.state, tally.total) == (1, 1, 5)
    assert builds.cimports("compiledpkg.tally") == ["compiledpkg.counter"]

    counter_source = builds.source_path("compiledpkg.counter")
    original = counter_source.read_text()
    before = builds.build_path("compiledpkg.tally")
    try:
        counter_source.write_text(original + "\n# edited\n")
        assert builds.build_path("compiledpkg.tally") != before  # the base's source is part of the hash
        assert builds.current_build("compiledpkg.tally") is None
        module = _fresh_import("compiledpkg.tally")
        assert not is_compiled(module) and not is_compiled(sys.modules["compiledpkg.counter"])
    finally:
        counter_source.write_text(original)
    counter_build = builds.current_build("compiledpkg.counter")
    assert counter_build is not None and builds.current_build("compiledpkg.tally") == before
    hidden = counter_build.with_name(counter_build.name + ".hidden")
    counter_build.rename(hidden)  # the base runs interpreted: the subclass's build must not load over it
    try:
        assert builds.current_build("compiledpkg.tally") is None
        assert not is_compiled(_fresh_import("compiledpkg.tally"))
    finally:
        hidden.rename(counter_build)


def test_a_typed_reference_holding_none_raises_as_python_does(built: Builds) -> None:
    """tally.pxd types `peer` as Counter; it holds None. Reading `self.peer.n` must raise AttributeError, as Python
    does, not read None's memory as a Counter (nonecheck). In a child process: without the check it may crash."""
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from pylon.compiled import Builds, CompiledFinder, is_compiled
        builds = Builds({built.modules!r}, Path({str(built.source_root)!r}), Path({str(built.build_dir)!r}))
        sys.path.insert(0, str(builds.source_root))
        sys.meta_path.insert(0, CompiledFinder(builds))
        import compiledpkg.tally as tally
        assert is_compiled(tally)
        try:
            tally.Tally().peer_count()
        except AttributeError as error:
            print("AttributeError:", error)
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("AttributeError:")


def test_a_cimport_of_an_unbuilt_module_is_refused(tmp_path: Path) -> None:
    builds = _package(tmp_path, 1)
    builds.source_path("compiledpkg.tally").with_suffix(".pxd").write_text("from compiledpkg.elsewhere cimport X\n")
    with pytest.raises(ValueError, match=r"tally.pxd: cimports compiledpkg.elsewhere, which pylon.compiled does not"):
        builds.build_path("compiledpkg.tally")


def _declared_fields(pxd: str) -> dict[str, set[str]]:
    """Each `cdef class` of a .pxd and the names its `cdef public <type>` lines declare (`object`, or an extension
    type such as `HcmRuntime`)."""
    fields: dict[str, set[str]] = {}
    current: set[str] = set()
    for line in pxd.splitlines():
        if line.startswith("cdef class "):
            current = fields.setdefault(re.match(r"cdef class (\w+)", line)[1], set())
        elif match := re.match(r"\s+cdef public \w+ (.*)", line):
            current.update(re.findall(r"\w+", match[1]))
    return fields


def test_every_pxd_declares_each_slot_of_its_classes() -> None:
    """Each .pxd beside a listed module in step with its classes' own __slots__: a slot it lacks would be no attribute
    of the compiled class (an AttributeError when set), a name it adds would be an attribute the source never sets."""
    checked = []
    for name in compiled.MODULES:
        pxd = compiled.PYLON.source_path(name).with_suffix(".pxd")
        if not pxd.is_file():
            continue
        module = importlib.import_module(name)
        for class_name, declared in _declared_fields(pxd.read_text()).items():
            cls = getattr(module, class_name)
            assert declared == set(cls.__dict__["__slots__"]), f"{pxd.name}: {class_name}"
            checked.append(f"{name}.{class_name}")
    assert {"pylon.proxy.stream.Stream", "pylon.proxy.hcm.HttpConnection", "pylon.proxy.hcm.HcmRuntime",
            "pylon.proxy.http.h1_server.Http1RequestDecoder", "pylon.proxy.http.h1_client.Http1ResponseDecoder",
            "pylon.proxy.http.h2_server.Http2ResponseEncoder", "pylon.proxy.upstream.host.Host"} <= set(checked)


def test_connections_answer_every_asyncio_protocol_callback() -> None:
    """The downstream and upstream connections no longer derive from asyncio.Protocol (an extension type cannot):
    each callback a transport may make must be their own, eof_received's default (None: the transport closes)
    included."""
    import asyncio

    from pylon.proxy.h2_connection import Http2Connection
    from pylon.proxy.hcm import HttpConnection
    from pylon.proxy.upstream.h2_pool import H2UpstreamConnection
    from pylon.proxy.upstream.pool import UpstreamConnection
    callbacks = {name for name in dir(asyncio.Protocol) if not name.startswith("_")}
    assert callbacks == {"connection_made", "connection_lost", "data_received", "eof_received", "pause_writing",
                         "resume_writing"}
    for cls in (HttpConnection, Http2Connection, UpstreamConnection, H2UpstreamConnection):
        assert all(callable(getattr(cls, name, None)) for name in callbacks), cls
        assert cls.__new__(cls).eof_received() is None, cls


def test_pure_python_is_asked_for_by_the_environment(built: Builds, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, CompiledFinder)])
    monkeypatch.setenv(compiled.PURE_ENV, "1")
    compiled.install(built)
    assert not any(isinstance(f, CompiledFinder) for f in sys.meta_path)
    assert set(compiled.status(built).values()) == {"python (PYLON_PURE_PYTHON is set)"}
    monkeypatch.setenv(compiled.PURE_ENV, "0")
    compiled.install(built)
    compiled.install(built)
    assert [f.builds for f in sys.meta_path if isinstance(f, CompiledFinder)] == [built]
    assert set(compiled.status(built).values()) == {"compiled"}


def test_every_listed_module_exists() -> None:
    for name in compiled.MODULES:
        assert compiled.PYLON.source_path(name).is_file(), name


def test_without_cython_the_build_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds = _package(tmp_path, 1)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match=r"Cython is not installed \(pip install 'cython>=3.0.11'"):
        build(builds)


def test_this_run_tests_the_builds_of_the_current_sources() -> None:
    """scripts/test.sh builds first, so the suite exercises the compiled data path that `pylon proxy` runs."""
    if compiled.pure_python():
        pytest.skip("PYLON_PURE_PYTHON is set: this run tests the interpreted modules")
    stale = {name: state for name, state in compiled.status().items() if state != "compiled"}
    assert not stale, f"run `python -m pylon.compiled build` (scripts/bootstrap.sh does): {stale}"


def test_the_interpreted_data_path_passes_the_sans_io_tests() -> None:
    """The fallback is the same source run by the interpreter: the codec and stream tests pass on it too."""
    root = Path(__file__).resolve().parents[2]
    tests = ["tests/proxy/test_stream_states.py", "tests/proxy/http/test_h1_server.py",
             "tests/proxy/http/test_h1_client.py", "tests/proxy/http/test_h2_session.py"]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", *tests],
                          cwd=root, env={**os.environ, compiled.PURE_ENV: "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout.splitlines()[-1]


def test_no_listed_module_is_started_with_python_dash_m() -> None:
    """runpy runs a module's source: a compiled module named to `python -m` would not start."""
    root = Path(compiled.__file__).resolve().parents[1]
    started = {match for path in root.rglob("*.py")
               for match in re.findall(r'"-m", "(pylon[a-z_.]*)"', path.read_text())}
    assert "pylon.proxy.worker" in started  # the pattern finds what the supervisor starts
    assert not started & set(compiled.MODULES)
