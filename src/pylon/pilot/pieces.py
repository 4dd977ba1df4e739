"""Per-service pieces of generated config (clusters, load assignments, default virtual hosts), built once and
shared across generation keys and across snapshots while their inputs stay the same objects.

A thousand services' clusters are the same for every proxy that sees them under the same DestinationRule, and a
routing change leaves them as they were; rebuilding them for every generation key of every snapshot was most of a
push's generating time. A piece is looked up by the *identity* of the objects it is built from (a `Service`, a
DestinationRule `Resource`, the `MeshConfig`) plus plain values (a port number). Identity is sound because:

- those objects are immutable once built (frozen dataclasses and msgspec Structs, never changed in place), and
  the memo keeps them alive, so an id cannot be reused by another object while its entry exists;
- the directory source keeps the decoded Resources of unchanged files, and `build_snapshot` keeps the Service
  objects of unchanged ServiceEntries, so "same object" means "same input" across snapshots, and any change makes
  a new object (a miss, never a stale hit).

The builder passed with a key must read nothing but the key's objects and values. Pieces are shared: callers
must not change them (EnvoyFilter patches copy first; access logs touch only listeners, which are not pieces).

Entries not used while one snapshot was served are dropped at the next (two rounds, as `EncodeCache`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

T = TypeVar("T")

MemoKey = tuple[Hashable, ...]


class Pieces:
    """The memo: `get(kind, objects, values, build)`; `successor()` starts the next snapshot's round."""

    def __init__(self, previous: dict[MemoKey, tuple[tuple[object, ...], object]] | None = None) -> None:
        self._current: dict[MemoKey, tuple[tuple[object, ...], object]] = {}
        self._previous = previous or {}

    def get(self, kind: str, objects: tuple[object, ...], values: tuple[Hashable, ...],
            build: Callable[[], T]) -> T:  # fmt: skip
        """The piece `kind` of `objects` (by identity) and `values` (by equality), built by `build` on a miss."""
        key = (kind, *map(id, objects), *values)
        entry = self._current.get(key)
        if entry is None:
            entry = self._previous.get(key)
            if entry is None:
                entry = (objects, build())  # the objects stay referenced: their ids stay theirs
            self._current[key] = entry
        return entry[1]  # type: ignore[return-value]

    def successor(self) -> Pieces:
        """The memo of the next snapshot: it starts from what this round used (and what it inherited unused,
        when this round used nothing: a snapshot replaced before any proxy was generated)."""
        return Pieces(self._current or self._previous)

    def __len__(self) -> int:
        return len(self._current)
