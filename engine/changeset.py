"""A session's staged changes: nodes created, updated or deleted, and chunk references set.

Chunk references are kept per array in a ``ChunkTable``: three dicts (inline bytes,
native/virtual refs, tombstones) keyed by the chunk coordinates packed into one int, so a
staged inline chunk costs about 130 bytes and the commit turns a table into Arrow columns
in bulk.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from frazil.format import ChunkKind, ChunkRef, NodeId, NodeRecord
from frazil.format.manifest import TOMBSTONE, inline_rows, ref_rows, tombstone_rows

from . import _aio

Coord = tuple[int, ...]
Key = int | tuple[int, ...]
KeySet = set[Key]
CoordSet = set[Coord]


def _pick(values: list[Any], idx: np.ndarray) -> list[Any]:
    if len(idx) == 1:
        return [values[int(idx[0])]]
    return list(operator.itemgetter(*idx.tolist())(values))


class ChunkTable:
    """Staged chunk refs of one array (of ``ndim`` dimensions); the last write wins.

    A coordinate is packed as ``ndim`` fields of ``63 // ndim`` bits; a coordinate that
    does not fit is kept as a tuple key.
    """

    __slots__ = ("ndim", "_bits", "_limit", "inline", "refs", "deleted")

    def __init__(self, ndim: int) -> None:
        self.ndim = ndim
        self._bits = 63 // ndim if ndim else 0
        self._limit = 1 << self._bits
        self.inline: dict[Key, bytes] = {}
        self.refs: dict[Key, ChunkRef] = {}
        self.deleted: set[Key] = set()

    def key(self, coord: Coord) -> Key:
        if self.ndim == 1:
            c = coord[0]
            return c if 0 <= c < self._limit else coord
        k = 0
        for c in coord:
            if not 0 <= c < self._limit:
                return coord
            k = (k << self._bits) | c
        return k

    def coord(self, key: Key) -> Coord:
        if isinstance(key, tuple):
            return key
        out = []
        mask = self._limit - 1
        for _ in range(self.ndim):
            out.append(key & mask)
            key >>= self._bits
        return tuple(reversed(out))

    def _clear(self, k: Key) -> None:
        self.inline.pop(k, None)
        self.refs.pop(k, None)
        self.deleted.discard(k)

    def set_inline(self, coord: Coord, data: bytes) -> None:
        k = self.key(coord)
        self._clear(k)
        self.inline[k] = data

    def set(self, coord: Coord, ref: ChunkRef) -> None:
        if ref.kind == ChunkKind.INLINE:
            self.set_inline(coord, ref.data or b"")
            return
        k = self.key(coord)
        self._clear(k)
        if ref.kind == ChunkKind.DELETED:
            self.deleted.add(k)
        else:
            self.refs[k] = ref

    def get(self, coord: Coord) -> ChunkRef | None:
        k = self.key(coord)
        data = self.inline.get(k)
        if data is not None:
            return ChunkRef(ChunkKind.INLINE, data=data, length=len(data))
        ref = self.refs.get(k)
        if ref is not None:
            return ref
        return TOMBSTONE if k in self.deleted else None

    def __len__(self) -> int:
        return len(self.inline) + len(self.refs) + len(self.deleted)

    def __copy__(self) -> ChunkTable:
        other = ChunkTable(self.ndim)
        other.inline = dict(self.inline)
        other.refs = dict(self.refs)
        other.deleted = set(self.deleted)
        return other

    def __getstate__(self) -> tuple[int, dict[Key, bytes], dict[Key, ChunkRef], KeySet]:
        return (self.ndim, self.inline, self.refs, self.deleted)

    def __setstate__(self, state: tuple[int, dict[Key, bytes], dict[Key, ChunkRef],
                                        KeySet]) -> None:
        ndim, inline, refs, deleted = state
        self.__init__(ndim)  # type: ignore[misc]
        self.inline, self.refs, self.deleted = inline, refs, deleted

    def _all_keys(self) -> list[Iterable[Key]]:
        return [self.inline.keys(), self.refs.keys(), self.deleted]

    def overlap(self, other: ChunkTable) -> CoordSet:
        """Coordinates staged in both tables."""
        both: KeySet = set()
        for mine in self._all_keys():
            for theirs in other._all_keys():
                both |= mine & theirs  # type: ignore[operator]
        return {self.coord(k) for k in both}

    def update(self, other: ChunkTable) -> None:
        """Add every ref of ``other`` (callers check ``overlap`` first)."""
        for k in other.inline.keys() | other.refs.keys() | other.deleted:
            self._clear(k)
        self.inline.update(other.inline)
        self.refs.update(other.refs)
        self.deleted |= other.deleted

    def discard(self, coords: Iterable[Coord]) -> None:
        """Forget the staged refs at ``coords``."""
        for c in coords:
            self._clear(self.key(c))

    def items(self) -> Iterator[tuple[Coord, ChunkRef]]:
        for k, data in list(self.inline.items()):
            yield self.coord(k), ChunkRef(ChunkKind.INLINE, data=data, length=len(data))
        for k, ref in list(self.refs.items()):
            yield self.coord(k), ref
        for k in list(self.deleted):
            yield self.coord(k), TOMBSTONE

    def _coords(self, keys: list[Key]) -> np.ndarray:
        n = len(keys)
        try:
            packed = np.fromiter(keys, dtype=np.int64, count=n)
        except (TypeError, ValueError):  # some coordinates did not fit a packed key
            packed = None
        if packed is not None:
            cols = [(packed >> (self._bits * (self.ndim - 1 - d))) & (self._limit - 1)
                    for d in range(self.ndim)]
            return np.stack(cols, axis=1) if cols else np.zeros((n, 0), np.int64)
        return np.array([self.coord(k) for k in keys], dtype=np.int64).reshape(n, self.ndim)

    def segments(self, split_rows: int, drop_tombstones: bool = False
                 ) -> Iterator[tuple[np.ndarray, pa.Table]]:
        """The staged refs sorted by coordinate, in parts of at most ``split_rows``:
        (coords, manifest rows without ``coord``). Columns are built part by part, so
        memory stays bounded by one part beyond the sort keys."""
        inline_vals = list(self.inline.values())
        ref_vals = list(self.refs.values())
        groups = [list(self.inline.keys()), list(self.refs.keys()),
                  [] if drop_tombstones else list(self.deleted)]
        coords = np.concatenate([self._coords(g) for g in groups])
        src = np.concatenate([np.full(len(g), i, np.int8) for i, g in enumerate(groups)])
        idx = np.concatenate([np.arange(len(g), dtype=np.int64) for g in groups])
        del groups
        order = np.lexsort(coords.T[::-1]) if self.ndim else np.arange(len(coords))
        for start in range(0, len(order), split_rows):
            sel = order[start:start + split_rows]
            part_src, part_idx = src[sel], idx[sel]
            tables, positions = [], []
            for code, build in ((0, lambda ix: inline_rows(_pick(inline_vals, ix))),
                                (1, lambda ix: ref_rows(_pick(ref_vals, ix))),
                                (2, lambda ix: tombstone_rows(len(ix)))):
                pos = np.flatnonzero(part_src == code)
                if len(pos):
                    tables.append(build(part_idx[pos]))
                    positions.append(pos)
            rows = tables[0] if len(tables) == 1 else pa.concat_tables(tables).take(
                pa.array(np.argsort(np.concatenate(positions), kind="stable")))
            yield coords[sel], rows

    def kinds(self) -> tuple[np.ndarray, np.ndarray]:
        """(coords, kind codes) of every staged ref, unordered."""
        parts = [(list(self.inline.keys()), ChunkKind.INLINE),
                 (list(self.refs.keys()), ChunkKind.NATIVE),
                 (list(self.deleted), ChunkKind.DELETED)]
        coords = [self._coords(keys) for keys, _ in parts if keys]
        kinds = [np.full(len(keys), int(kind), np.int8) for keys, kind in parts if keys]
        if not coords:
            return np.zeros((0, self.ndim), np.int64), np.zeros(0, np.int8)
        return np.concatenate(coords), np.concatenate(kinds)


@dataclass(eq=False)
class ChangeSet:
    """Staged changes, relative to the session's base snapshot.

    ``nodes`` maps a path to its staged record, or to None where the base node was
    deleted. ``chunks`` maps a node id to its staged chunk refs. A node replaced at the
    same path gets a new node id, so its chunks start empty.
    """

    nodes: dict[str, NodeRecord | None] = field(default_factory=dict)
    chunks: dict[NodeId, ChunkTable] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        _aio.reset_in_child(self)

    def _after_fork(self) -> None:
        self.lock = threading.Lock()

    def is_empty(self) -> bool:
        return not self.nodes and not any(len(t) for t in self.chunks.values())

    def set_node(self, record: NodeRecord) -> None:
        with self.lock:
            self.nodes[record.path] = record

    def delete_node(self, path: str, node_id: NodeId | None, in_base: bool) -> None:
        with self.lock:
            if in_base:
                self.nodes[path] = None
            else:
                self.nodes.pop(path, None)
            if node_id is not None:
                self.chunks.pop(node_id, None)

    def table(self, node_id: NodeId, ndim: int) -> ChunkTable:
        t = self.chunks.get(node_id)
        if t is None:
            with self.lock:
                t = self.chunks.setdefault(node_id, ChunkTable(ndim))
        return t

    def set_chunk(self, node_id: NodeId, coord: Coord, ref: ChunkRef) -> None:
        self.table(node_id, len(coord)).set(coord, ref)

    def chunk(self, node_id: NodeId, coord: Coord) -> ChunkRef | None:
        t = self.chunks.get(node_id)
        return None if t is None else t.get(coord)

    def clear(self) -> None:
        with self.lock:
            self.nodes.clear()
            self.chunks.clear()

    def __getstate__(self) -> dict[str, object]:
        return {"nodes": self.nodes, "chunks": self.chunks}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.nodes = state["nodes"]  # type: ignore[assignment]
        self.chunks = state["chunks"]  # type: ignore[assignment]
        self.lock = threading.Lock()
        self.__post_init__()
