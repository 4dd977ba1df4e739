"""A directory of Istio YAML files as a config source, watched by polling and debounced as istiod does.

Every `*.yaml`, `*.yml` and `*.json` file below the directory (sorted, hidden
files skipped) may hold several `---`-separated documents; empty documents are
skipped, as kubectl skips them. A load either yields every resource or every
error found (each naming file, document and field), never a partial set: on a
reload with errors the watcher keeps the last good config, so a half-saved edit
never removes routes from running proxies.

Watching polls file metadata (mtime, size, inode) every `poll_interval`: no
inotify library is in the environment, and a stat per file per 50 ms is cheap
for config directories; the debouncer then waits for 100 ms of quiet. A reload
(`CachedLoader`) reads and decodes only the files whose metadata changed: at a
thousand documents, decoding them all again took longer than the debounce.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pylon.config.errors import ConfigError
from pylon.pilot.istio.resources import Resource, decode_resource
from pylon.pilot.source.debounce import Debouncer

log = logging.getLogger("pylon.pilot.source")
DecodedT = TypeVar("DecodedT")

SUFFIXES = (".yaml", ".yml", ".json")
POLL_INTERVAL = 0.05


@dataclass
class LoadResult:
    """Everything one read of the directory found."""

    resources: list[Resource] = field(default_factory=list)
    errors: list[ConfigError] = field(default_factory=list)


def config_files(root: Path) -> list[Path]:
    """The config files below `root`, sorted by path, hidden files and directories skipped."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath, name) for name in filenames if not name.startswith(".") and name.endswith(SUFFIXES))
    return sorted(found)


def load_directory(root: Path) -> LoadResult:
    """Decode every document of every config file below `root`, collecting all errors."""
    if not root.is_dir():
        return LoadResult(errors=[ConfigError(str(root), "", "not a directory")])
    return load_directory_files(config_files(root))


FilePrint = tuple[int, int, int]  # (mtime_ns, size, inode), what the watcher compares


class CachedLoader:
    """`load_directory` for a watched directory: a file whose (mtime, size, inode) is as at the last load keeps
    the Resources (the same objects) and errors that load decoded; the others are read and decoded again.

    The result is the one `load_directory` would give (same files, order, resources and errors). A file
    rewritten with the same mtime, size and inode is missed, as the watcher itself misses it; a file changed
    between its stat and its read is read again at the next load, since the watcher sees its new print.
    Keeping the Resource objects of unchanged files is also what lets the snapshot and the generated pieces
    built from them be reused (snapshot.build_snapshot, pieces.py).
    """

    def __init__(self) -> None:
        self._files: dict[Path, tuple[FilePrint, LoadResult]] = {}

    def __call__(self, root: Path) -> LoadResult:
        if not root.is_dir():
            return load_directory(root)
        result = LoadResult()
        files: dict[Path, tuple[FilePrint, LoadResult]] = {}
        for path in config_files(root):
            known = self._files.get(path)
            now = _file_print(path)
            if known is None or now is None or known[0] != now:
                known = (now or (0, 0, 0), load_directory_files([path]))
            if now is not None:
                files[path] = known
            result.resources += known[1].resources
            result.errors += known[1].errors
        self._files = files
        return result


def _file_print(path: Path) -> FilePrint | None:
    """The file's (mtime_ns, size, inode); None if it cannot be stat'ed (reading it will say why)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def load_directory_files(paths: list[Path]) -> LoadResult:
    """Decode every document of `paths`, collecting all errors."""
    result = LoadResult()
    for resource, _path, _index, _data in decode_documents(paths, decode_resource, result.errors):
        result.resources.append(resource)
    return result


def decode_documents(paths: list[Path], decode: Callable[[Any, str, int], DecodedT],
                     errors: list[ConfigError]) -> list[tuple[DecodedT, Path, int, Any]]:  # fmt: skip
    """`decode(data, file, index)` of every non-empty YAML document of `paths`, with where it came from; every
    file or document that fails adds its ConfigError to `errors` instead."""
    decoded: list[tuple[DecodedT, Path, int, Any]] = []
    for path in paths:
        try:
            documents = read_documents(path)
        except ConfigError as exc:
            errors.append(exc)
            continue
        for index, data in enumerate(documents):
            if data is None:
                continue
            try:
                decoded.append((decode(data, str(path), index), path, index, data))
            except ConfigError as exc:
                errors.append(exc)
    return decoded


def read_documents(path: Path) -> list[Any]:
    """The YAML documents of one file (None for empty ones); ConfigError naming the file if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), "", f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return list(yaml.load_all(text, Loader=_StrictLoader))  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "", _describe_yaml_error(exc)) from None


def fingerprint(root: Path) -> dict[str, tuple[int, int, int]]:
    """What the watcher compares between polls: (mtime_ns, size, inode) of every config file."""
    prints: dict[str, tuple[int, int, int]] = {}
    for path in config_files(root):
        now = _file_print(path)
        if now is not None:  # else removed between listing and stat: the next poll sees it gone
            prints[str(path)] = now
    return prints


class DirectoryWatcher:
    """Polls a directory and calls `on_load` with each debounced reload's result: `load(root)`, by default
    the Istio config's LoadResult, re-reading changed files only (the secrets directory has its own loader)."""

    def __init__(self, root: Path, on_load: Callable[[Any], None], *, debouncer: Debouncer | None = None,
                 poll_interval: float = POLL_INTERVAL, load: Callable[[Path], Any] | None = None) -> None:
        self.root = root
        self.on_load = on_load
        self.load = load or CachedLoader()
        self.debouncer = debouncer or Debouncer()
        self.poll_interval = poll_interval
        self._seen = fingerprint(root)

    def poll(self, now: float) -> bool:
        """One poll at time `now`: note a change, reload when due. True if a reload happened (sans-IO core)."""
        current = fingerprint(self.root)
        if current != self._seen:
            self._seen = current
            self.debouncer.change(now)
        if not self.debouncer.due(now):
            return False
        self.debouncer.fire()
        self.on_load(self.load(self.root))
        return True

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            await asyncio.sleep(self.poll_interval)
            self.poll(time.monotonic())


# --------------------------------------------------------------------------- YAML details


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """A safe loader (libyaml's where present) that rejects duplicate keys instead of keeping the last."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, Hashable) and key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
            )
        if isinstance(key, Hashable):
            seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        context = f"{exc.context}, " if exc.context else ""
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {context}{exc.problem}"
    return f"invalid YAML: {exc}".replace("\n", " ")
