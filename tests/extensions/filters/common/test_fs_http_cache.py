"""The file-system store's file contents and eviction pass (filters/common/fs_http_cache.py)."""

from __future__ import annotations

import os
from pathlib import Path

from pylon.extensions.filters.common import fs_http_cache as fs
from pylon.extensions.filters.common.http_cache import Entry


def test_an_entry_round_trips_and_a_damaged_file_is_none() -> None:
    entry = Entry(200, [(b"cache-control", b"max-age=10"), (b"x-\xff", b"\xfe")], b"body\x00bytes", 12.5)
    data = fs.encode(entry)
    back = fs.decode(data)
    assert back is not None
    assert (back.status, back.headers, back.body, back.response_time) == (
        entry.status, entry.headers, entry.body, entry.response_time)
    assert fs.decode(data[:len(fs.MAGIC) + 6]) is None  # cut inside the headers
    assert fs.decode(b"CACHE" + data) is None  # another format (Envoy's files)
    assert fs.decode(data[:len(fs.MAGIC) + 4] + b"[" * (len(data) - len(fs.MAGIC) - 4)) is None


def test_file_names_are_stable_and_tell_keys_apart() -> None:
    key = (b"http", b"h", b"/p")
    assert fs.file_name(key) == fs.file_name((b"http", b"h", b"/p")) != fs.file_name((b"http", b"h", b"/q"))
    assert fs.file_name(key).startswith("cache-")


def test_eviction_keeps_the_youngest_files_that_fit_both_limits(tmp_path: Path) -> None:
    for name in ["cache-young", "cache-mid", "cache-old"]:
        (tmp_path / name).write_bytes(b"x" * 100)
    (tmp_path / ".tmp-1-ab").write_bytes(b"x" * 1000)  # a write under way: not a cache file
    # last use is the later of atime and ctime (now, for all three): atimes in the future order them
    for name, when in [("cache-young", 3e9), ("cache-mid", 2.9e9), ("cache-old", 2.8e9)]:
        os.utime(tmp_path / name, (when, when))
    assert fs.evict(str(tmp_path), 250, None) == (200, 2)
    assert sorted(os.listdir(tmp_path)) == [".tmp-1-ab", "cache-mid", "cache-young"]
    assert fs.evict(str(tmp_path), None, 1) == (100, 1)
    assert sorted(os.listdir(tmp_path)) == [".tmp-1-ab", "cache-young"]
    assert fs.evict(str(tmp_path / "missing"), 1, 1) == (0, 0)
