"""On-disk cache of compiled Hyperscan databases, keyed by what determines the database.

Compiling a Hyperscan database of 5,000 patterns takes seconds; loading a
serialized one takes milliseconds. pylon builds every route table in the
supervisor (to validate the config) and again in each worker, and again on
every restart, always from the same patterns: the first build writes the
database here and every later one loads it. Nothing is shared in memory between
processes (each worker owns its database and its scratch), only the file.

The key is a SHA-256 of the Hyperscan library version, the mode, and the
(pattern, flags, id) list, so a changed pattern set or library never loads a
stale database; a file that fails to load is recompiled and rewritten. Files
are written to a temporary name and renamed, so concurrent workers never read
half a file. The directory is `$PYLON_HYPERSCAN_CACHE`, else
`$XDG_CACHE_HOME/pylon/hyperscan`, else `~/.cache/pylon/hyperscan`; when it
cannot be written the cache is skipped (each process compiles). Only the
newest `MAX_FILES` databases are kept.

`compile_lock` serializes compiles across the processes sharing a directory:
the supervisor's workers get the same route update at the same moment, and on
a small machine N processes compiling the same seconds-long database at once
would only take N times the CPU from serving. The one holding the lock
compiles and stores; the others wait for it (in their build thread, not their
event loop) and then load the file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

log = logging.getLogger("pylon.regex")

MAX_FILES = 32
_MAGIC = b"pylon-hsdb-1\n"


def cache_dir() -> Path:
    """Where databases are kept (see the module docstring for the order of choices)."""
    explicit = os.environ.get("PYLON_HYPERSCAN_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pylon" / "hyperscan"


def cache_key(version: str, mode: int, expressions: Sequence[bytes], flags: Sequence[int],
              ids: Sequence[int]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([version, mode, list(flags), list(ids)]).encode())
    for expression in expressions:
        digest.update(len(expression).to_bytes(4, "little"))
        digest.update(expression)
    return digest.hexdigest()


def load(key: str, loadb: Callable[[bytes], Any], directory: Path | None = None
         ) -> tuple[Any, dict[str, Any]] | None:
    """(database, metadata) stored under `key` (in `directory`, default `cache_dir()`), or None when
    absent or unreadable."""
    path = (directory or cache_dir()) / f"{key}.hsdb"
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        if not data.startswith(_MAGIC):
            raise ValueError("not a pylon Hyperscan cache file")
        newline = data.index(b"\n", len(_MAGIC))
        meta = json.loads(data[len(_MAGIC) : newline])
        db = loadb(data[newline + 1 :])
    except Exception as exc:  # any damage means "recompile": the cache is only an optimisation
        log.warning("hyperscan cache %s unreadable (%s); recompiling", path, exc)
        return None
    try:
        os.utime(path)  # recently used: kept by `_prune`
    except OSError:
        pass
    return db, meta


def store(key: str, blob: bytes, meta: dict[str, Any], directory: Path | None = None) -> None:
    """Write the serialized database atomically; a cache that cannot be written is skipped."""
    directory = directory or cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".hsdb")
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + json.dumps(meta).encode() + b"\n" + blob)
        os.replace(tmp, directory / f"{key}.hsdb")
        _prune(directory)
    except OSError as exc:
        log.info("hyperscan cache %s not writable (%s); every process compiles its own database", directory, exc)


@contextmanager
def compile_lock(directory: Path | None = None) -> Iterator[None]:
    """Hold the directory's compile lock (an exclusive `flock`, so a crashed holder never leaves it taken).

    Blocks until the lock is free; call it off the event loop. Without a usable
    directory there is nothing to share, so nothing is locked.
    """
    directory = directory or cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / ".compile.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _prune(directory: Path) -> None:
    files = sorted(directory.glob("*.hsdb"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[MAX_FILES:]:
        old.unlink(missing_ok=True)
