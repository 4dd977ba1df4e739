"""The file-system store of the cache filters (Envoy's FileSystemHttpCache[V2]), its I/O on a small thread pool.

What Envoy 1.40 does and this store does too (read from source/extensions/http/cache/file_system_http_cache,
checked beside Envoy in tests/proxy/test_proxy_http_cache_fs.py):

- One file per stored response, named `cache-` and a stable hash of its key, directly in `cache_path` (Envoy's
  `cache_subdivisions` tree is not implemented by Envoy either). A response that varies leaves a small file at its
  key naming the varied headers, and one file per variant at the key plus its vary identifier.
- The directory is not created: without it every lookup misses and nothing is stored (observed).
- Files stay: a new process (a restart, another worker) finds what an earlier one stored, as Envoy's do.
- Every file operation runs on the pool of `manager_config.thread_pool.thread_count` threads (0: one per CPU, as
  Envoy), so a worker's event loop never waits on the disk; the results come back to the loop.
- Limits: after each stored file the worker adds its size to what it believes the cache holds (measured from the
  directory when the store starts, Envoy's initStats); past `max_cache_size_bytes` or `max_cache_entry_count` an
  eviction pass measures the directory again and keeps the most recently used files (the later of a file's
  atime and ctime, youngest first) that fit both limits, unlinking the rest, as Envoy's CacheEvictionThread.
  A hit touches the file's atime itself (Envoy relies on the kernel's, which `relatime` mounts update only once).
- Workers (processes) share the directory as two Envoys share one during a hot restart: a file is written under
  a temporary name that is not `cache-*` and renamed into place (atomic: a reader sees the old file or the new
  one, never a part), and a file that does not parse is a miss and is removed; each worker's size accounting is
  its own and is reconciled by the next eviction pass.

The file format is pylon's own (Envoy's is a fixed block and protobufs); the two proxies do not share caches.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pylon.extensions.filters.common.http_cache import Entry, Key, vary_identifier, vary_names

MAGIC = b"pylon-http-cache-1\n"
_LENGTH = struct.Struct(">I")
_PREFIX = "cache-"
_TEMP_PREFIX = ".tmp-"

VaryAllowed = Callable[[bytes], bool]


# --------------------------------------------------------------------------- file contents (sans-IO)


def file_name(key: object) -> str:
    """`cache-` and a stable hash of the key (the same in every process, unlike Python's hash())."""
    return _PREFIX + hashlib.blake2b(repr(key).encode(), digest_size=12).hexdigest()


def encode(entry: Entry) -> bytes:
    meta = json.dumps({"status": entry.status, "response_time": entry.response_time,
                       "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in entry.headers]})
    raw = meta.encode()
    return MAGIC + _LENGTH.pack(len(raw)) + raw + entry.body


def decode(data: bytes) -> Entry | None:
    """The stored response, None when the file is not one (truncated, another format)."""
    start = len(MAGIC) + _LENGTH.size
    if not data.startswith(MAGIC) or len(data) < start:
        return None
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    if len(data) < start + length:
        return None
    try:
        meta = json.loads(data[start:start + length])
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in meta["headers"]]
        return Entry(int(meta["status"]), headers, data[start + length:], float(meta["response_time"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


# --------------------------------------------------------------------------- file operations (pool threads)


def _read(path: str) -> Entry | None:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError:
        return None
    entry = decode(data)
    if entry is None:
        _unlink(path)
        return None
    try:
        stat = os.stat(path)
        os.utime(path, ns=(time.time_ns(), stat.st_mtime_ns))  # used now: youngest for eviction
    except OSError:
        pass
    return entry


def _write(directory: str, name: str, data: bytes) -> int:
    """The file written whole under a temporary name then renamed into place; its size, 0 when not stored."""
    temp = os.path.join(directory, f"{_TEMP_PREFIX}{os.getpid()}-{os.urandom(6).hex()}")
    try:
        with open(temp, "wb") as file:
            file.write(data)
        os.replace(temp, os.path.join(directory, name))
    except OSError:
        _unlink(temp)
        return 0
    return len(data)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _measure(directory: str) -> list[tuple[float, str, int]]:
    """(last use, name, size) of each cache file, youngest first."""
    files = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    for item in entries:
        if not item.name.startswith(_PREFIX):
            continue
        try:
            stat = item.stat(follow_symlinks=False)
        except OSError:
            continue
        if item.is_file(follow_symlinks=False):
            files.append((max(stat.st_atime, stat.st_ctime), item.name, stat.st_size))
    files.sort(reverse=True)
    return files


def evict(directory: str, max_bytes: int | None, max_count: int | None) -> tuple[int, int]:
    """Envoy's eviction pass: keep the youngest files that fit both limits, unlink the others; (bytes, count)
    left."""
    size = count = 0
    limit_bytes = max_bytes if max_bytes is not None else float("inf")
    limit_count = max_count if max_count is not None else float("inf")
    files = _measure(directory)
    kept = 0
    while kept < len(files) and size + files[kept][2] <= limit_bytes and count + 1 <= limit_count:
        size += files[kept][2]
        count += 1
        kept += 1
    for _, name, _ in files[kept:]:
        _unlink(os.path.join(directory, name))
    return size, count


# --------------------------------------------------------------------------- the store (event loop side)


def _ignored(_: object) -> None:
    """The completion of a write whose outcome changes nothing (a failed rewrite leaves the older file)."""


class FileCache:
    """One cache directory in one worker: lookups and writes go to the pool, answers come back on `loop`."""

    def __init__(self, path: str, max_bytes: int | None, max_count: int | None, pool: ThreadPoolExecutor,
                 loop: Any, stats: Any, *, count_lookups: bool) -> None:
        """`count_lookups`: v1's store counts its hits and misses (v2's filter counts its own events instead)."""
        self.directory = path
        self.max_bytes, self.max_count = max_bytes, max_count
        self.pool, self.loop = pool, loop
        tag = f"cache_path.{path.replace('.', '_')}"
        self.hits = stats.counter(f"cache.event.{tag}.event_type.hit") if count_lookups else None
        self.misses = stats.counter(f"cache.event.{tag}.event_type.miss") if count_lookups else None
        self.eviction_runs = stats.counter(f"cache.eviction_runs.{tag}")
        self.size_bytes = stats.gauge(f"cache.size_bytes.{tag}")
        self.size_count = stats.gauge(f"cache.size_count.{tag}")
        stats.gauge(f"cache.size_limit_bytes.{tag}").set(max_bytes or 0)
        stats.gauge(f"cache.size_limit_count.{tag}").set(max_count or 0)
        self.bytes = self.count = 0
        self._evicting = False
        if loop is not None:  # None: built by `--mode validate`, to be checked, never to serve (no disk, no thread)
            self._run(lambda: evict(path, None, None), self._measured)  # Envoy's initStats: what is there already

    def __len__(self) -> int:
        return self.count

    def _run(self, work: Callable[[], Any], done: Callable[[Any], None]) -> None:
        """`work` on the pool, `done(result)` on the loop."""
        loop = self.loop

        def back(future: Future) -> None:
            if not loop.is_closed():  # a write may end after the worker's loop (it still completes)
                loop.call_soon_threadsafe(done, future.result())
        self.pool.submit(work).add_done_callback(back)

    def _measured(self, result: tuple[int, int]) -> None:
        self.bytes, self.count = result
        self.size_bytes.set(self.bytes)
        self.size_count.set(self.count)

    def lookup(self, key: Key, request: Sequence[tuple[bytes, bytes]], vary_allowed: VaryAllowed,
               done: Callable[[Entry | None, object], None]) -> None:
        """`done(entry or None, the key it is stored under)` later, on the loop."""
        directory = self.directory

        def work() -> tuple[Entry | None, object]:
            entry = _read(os.path.join(directory, file_name(key)))
            if entry is None:
                return None, key
            names = vary_names(entry.headers)
            if names is None:
                return entry, key
            identifier = vary_identifier(names, vary_allowed, request)
            if identifier is None:
                return None, None
            varied = (key, identifier)
            return _read(os.path.join(directory, file_name(varied))), varied

        def finish(result: tuple[Entry | None, object]) -> None:
            counter = self.hits if result[0] is not None else self.misses
            if counter is not None:
                counter.inc()
            done(*result)

        self._run(work, finish)

    def insert(self, key: Key, request: Sequence[tuple[bytes, bytes]], vary_allowed: VaryAllowed,
               entry: Entry) -> bool:
        names = vary_names(entry.headers)
        files = [(key, entry)]
        if names is not None:
            identifier = vary_identifier(names, vary_allowed, request)
            if identifier is None:
                return False
            files = [(key, Entry(entry.status, entry.headers, b"", entry.response_time)),  # the vary marker
                     ((key, identifier), entry)]
        for at, stored in files:
            self.store(at, stored)
        return True

    def store(self, at: object, entry: Entry, *, new: bool = True) -> None:
        """Write the file of `at` in the background; not `new`: it replaces the file of a stored response (its
        headers updated by a validation), which Envoy does not count as a file added."""
        directory, name, data = self.directory, file_name(at), encode(entry)
        self._run(lambda: _write(directory, name, data), self._added if new else _ignored)

    def _added(self, size: int) -> None:
        if not size:
            return
        self.bytes += size
        self.count += 1
        self.size_bytes.set(self.bytes)
        self.size_count.set(self.count)
        over = (self.max_bytes is not None and self.bytes > self.max_bytes) or (
            self.max_count is not None and self.count > self.max_count)
        if over and not self._evicting:
            self._evicting = True
            self.eviction_runs.inc()
            self._run(lambda: evict(self.directory, self.max_bytes, self.max_count), self._evicted)

    def _evicted(self, result: tuple[int, int]) -> None:
        self._evicting = False
        self._measured(result)
