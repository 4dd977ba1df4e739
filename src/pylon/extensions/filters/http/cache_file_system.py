"""The cache filters' file-system stores: FileSystemHttpCacheConfig (v1) and FileSystemHttpCacheV2Config (v2).

The store is filters/common/fs_http_cache.py. One FileCache per `cache_path` in a worker (Envoy: one per path in
the process), shared by every filter naming that path; one thread pool per `manager_config.id` (Envoy's
AsyncFileManager singletons). Envoy 1.40 parses several fields of these configs but never reads them (marked
not-implemented in its proto, and absent from its cache code): setting one is refused by name here.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, ClassVar

import msgspec

from pylon.config import registry
from pylon.config.envoy import Duration, EnvoyStruct, NonEmptyStr, Shared
from pylon.config.errors import FieldError
from pylon.extensions.filters.common.fs_http_cache import FileCache

FS_TYPE = "type.googleapis.com/envoy.extensions.http.cache.file_system_http_cache.v3.FileSystemHttpCacheConfig"
FS_V2_TYPE = ("type.googleapis.com/envoy.extensions.http.cache_v2.file_system_http_cache.v3."
              "FileSystemHttpCacheV2Config")
UInt64 = Annotated[int, msgspec.Meta(ge=0)]  # msgspec bounds stop at int64
#: parsed by Envoy 1.40, never read by it ([#not-implemented-hide:] in its proto)
UNREAD = ("max_individual_cache_entry_size_bytes", "cache_subdivisions", "evict_fraction", "max_eviction_period",
          "min_eviction_period", "create_cache_path")


class ThreadPool(EnvoyStruct, kw_only=True):
    """AsyncFileManagerConfig.ThreadPool."""

    thread_count: Annotated[int, msgspec.Meta(ge=0, le=1024)] = 0


class AsyncFileManagerConfig(Shared, kw_only=True):
    """extensions.common.async_files.v3.AsyncFileManagerConfig: the pool file operations run on, one per `id`."""

    conflict: ClassVar[str] = "AsyncFileManager mismatched config"
    id: str = ""
    thread_pool: ThreadPool | None = None

    def __post_init__(self) -> None:
        if self.thread_pool is None:
            raise FieldError("thread_pool", "a manager type is required (thread_pool)")

    def sharing(self) -> tuple[str, object]:
        return self.id, self


class FileSystemHttpCacheConfig(Shared, kw_only=True):
    """extensions.http.cache.file_system_http_cache.v3.FileSystemHttpCacheConfig: one cache per `cache_path`."""

    conflict: ClassVar[str] = "mismatched FileSystemHttpCacheConfig with same path {name}"
    manager_config: AsyncFileManagerConfig | None = None
    cache_path: NonEmptyStr | None = None
    max_cache_size_bytes: UInt64 | None = None
    max_cache_entry_count: UInt64 | None = None
    max_individual_cache_entry_size_bytes: UInt64 | None = None
    cache_subdivisions: int = 0
    evict_fraction: float = 0.0
    max_eviction_period: Duration | None = None
    min_eviction_period: Duration | None = None
    create_cache_path: bool = False

    def __post_init__(self) -> None:
        if self.manager_config is None:
            raise FieldError("manager_config", "required")
        if self.cache_path is None:
            raise FieldError("cache_path", "required (a directory)")
        for field in UNREAD:
            if getattr(self, field):
                raise FieldError(field, "not supported (Envoy 1.40 parses it but never reads it)")

    def sharing(self) -> tuple[str, object]:
        """Envoy compares the configs with the path normalized (a trailing slash)."""
        return self.directory, msgspec.structs.replace(self, cache_path=self.directory)

    @property
    def directory(self) -> str:
        """The path with a trailing separator, as Envoy normalizes it (it names the cache and its stats)."""
        assert self.cache_path is not None
        return self.cache_path if self.cache_path.endswith("/") else self.cache_path + "/"

    def open_store(self, loop: Any, stats: Any) -> FileCache:
        """This worker's store for the path (made on first use; without a loop, `--mode validate`'s, kept by none)."""
        store = _STORES.get((type(self), self.directory))  # v1's and v2's are two caches, as Envoy's
        if store is None:
            assert self.manager_config is not None and self.manager_config.thread_pool is not None
            store = FileCache(self.directory, self.max_cache_size_bytes, self.max_cache_entry_count,
                              _pool(self.manager_config.id, self.manager_config.thread_pool.thread_count), loop,
                              stats, count_lookups=not isinstance(self, FileSystemHttpCacheV2Config))
            if loop is not None:
                _STORES[type(self), self.directory] = store
        return store


class FileSystemHttpCacheV2Config(FileSystemHttpCacheConfig, kw_only=True):
    """extensions.http.cache_v2.file_system_http_cache.v3.FileSystemHttpCacheV2Config: v1's fields."""

    conflict: ClassVar[str] = "mismatched FileSystemHttpCacheV2Config with same path {name}"
    label: ClassVar[str] = "envoy_extensions_http_cache_v2_file_system_http_cache"


_STORES: dict[tuple[type, str], FileCache] = {}
_POOLS: dict[str, ThreadPoolExecutor] = {}


def _pool(manager_id: str, threads: int) -> ThreadPoolExecutor:
    """The worker's pool for a manager id: `threads` threads, 0 meaning one per CPU as Envoy's default."""
    pool = _POOLS.get(manager_id)
    if pool is None:
        pool = _POOLS[manager_id] = ThreadPoolExecutor(threads or os.cpu_count() or 1,
                                                       thread_name_prefix="pylon-cache-files")
    return pool


registry.register_typed(registry.HTTP_CACHE, FS_TYPE, FileSystemHttpCacheConfig)
registry.register_typed(registry.HTTP_CACHE_V2, FS_V2_TYPE, FileSystemHttpCacheV2Config)
