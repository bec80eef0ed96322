"""A session's staged changes: nodes created, updated or deleted, and chunk references set.

Chunk references are kept per array in a ``ChunkTable``: three dicts (inline bytes,
native/virtual refs, tombstones) keyed by the chunk coordinates packed into one int, so a
staged inline chunk costs about 130 bytes and the commit turns a table into Arrow columns
in bulk. Virtual refs set in bulk stay columnar (``VirtualBlock``: sorted packed keys and
an Arrow table), about 30 bytes a ref, with no Python object per chunk.

Past ``SPILL_ROWS`` live refs in an array's blocks, the session *spills* them: it writes
them out as ordinary manifest segments (sorted, cut at ``manifest_split_rows``) and the table
keeps only their ``SegmentRef`` values (``spilled``, oldest first), so staging any number
of refs holds at most about ``SPILL_ROWS`` of them in memory. Spilled segments act as the
newest segments of the array: the commit puts them in front of the array's list (newest
spill first) and its in-memory part in front of them. Every write clears the coordinate
in memory only, so a staged in-memory ref always shadows the spilled ones; a spill
rewrites the earlier spilled segments that hold refs it replaces (``Session._spill``), so
spilled segments never overlap.
"""

from __future__ import annotations

import dataclasses
import operator
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from frazil.format import ChunkKind, ChunkRef, Coord, NodeId, NodeRecord, SegmentRef
from frazil.format.manifest import (
    TOMBSTONE,
    inline_rows,
    ref_rows,
    tombstone_rows,
    virtual_rows,
)

from . import runtime

SPILL_ROWS = 1 << 21
"""Live virtual refs an array's in-memory blocks may hold before the session spills them
to manifest segments (set lower to exercise the spill path in tests)."""

Key = int | tuple[int, ...]
KeySet = set[Key]
CoordSet = set[Coord]
StrSet = set[str]


def _pick(values: list[Any], idx: np.ndarray) -> list[Any]:
    if len(idx) == 1:
        return [values[int(idx[0])]]
    return list(operator.itemgetter(*idx.tolist())(values))


def row_ref(rows: pa.Table, i: int) -> ChunkRef:
    """The virtual ref in row ``i`` of a ``VirtualBlock``'s table."""
    row = {c: rows.column(c)[i].as_py() for c in rows.column_names}
    return ChunkRef(
        ChunkKind.VIRTUAL,
        location=row["location"],
        offset=row["offset"],
        length=row["length"],
        etag=row.get("etag"),
        last_modified=row.get("last_modified"),
    )


@dataclass(slots=True)
class VirtualBlock:
    """Virtual refs staged in bulk: ``keys`` (packed coordinates, sorted, unique),
    ``live`` (False where a later write replaced the ref) and ``rows`` (columns
    ``offset``, ``length``, ``location`` (possibly dictionary-encoded), ``etag``,
    ``last_modified``), aligned with ``keys``."""

    keys: np.ndarray
    live: np.ndarray
    rows: pa.Table

    def find(self, key: Key) -> int | None:
        if not isinstance(key, int) or not len(self.keys):
            return None
        i = int(np.searchsorted(self.keys, key))
        return i if i < len(self.keys) and int(self.keys[i]) == key and self.live[i] else None

    def ref(self, i: int) -> ChunkRef:
        return row_ref(self.rows, i)

    def manifest_rows(self, idx: np.ndarray) -> pa.Table:
        part = self.rows.take(pa.array(idx))
        cols = {c: part.column(c).combine_chunks() for c in part.column_names}
        return virtual_rows(
            cols["offset"],
            cols["length"],
            cols["location"],
            cols.get("etag"),
            cols.get("last_modified"),
        )

    def copy(self) -> VirtualBlock:
        return VirtualBlock(self.keys, self.live.copy(), self.rows)


class ChunkTable:
    """Staged chunk refs of one array (of ``ndim`` dimensions); the last write wins.

    A coordinate is packed as ``ndim`` fields of ``63 // ndim`` bits; a coordinate that
    does not fit is kept as a tuple key. At most one staged ref is live per coordinate:
    every write clears the coordinate in the dicts and in the virtual blocks first.
    """

    __slots__ = ("ndim", "_bits", "_limit", "inline", "refs", "deleted", "blocks", "spilled")

    def __init__(self, ndim: int) -> None:
        self.ndim = ndim
        self._bits = 63 // ndim if ndim else 0
        self._limit = 1 << self._bits
        self.inline: dict[Key, bytes] = {}
        self.refs: dict[Key, ChunkRef] = {}
        self.deleted: set[Key] = set()
        self.blocks: list[VirtualBlock] = []
        #: segments spilled during staging, oldest first (see the module docstring)
        self.spilled: list[SegmentRef] = []

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
        for b in self.blocks:
            i = b.find(k)
            if i is not None:
                b.live[i] = False

    def pack(self, coords: np.ndarray) -> np.ndarray | None:
        """Packed keys of ``coords`` (n x ndim, non-negative), or None if one does not
        fit (then stage them one by one)."""
        if len(coords) and (coords.min() < 0 or coords.max() >= self._limit):
            return None
        keys = np.zeros(len(coords), np.int64)
        for d in range(self.ndim):
            keys = (keys << self._bits) | coords[:, d].astype(np.int64)
        return keys

    def add_block(self, keys: np.ndarray, rows: pa.Table) -> None:
        """Stage virtual refs in bulk (``keys`` from ``pack``; ``rows`` as in
        ``VirtualBlock``). A key given twice keeps its last row; the refs replace
        whatever was staged at those coordinates."""
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        last = np.ones(len(keys), bool)
        last[:-1] = keys[1:] != keys[:-1]
        keep = order[last]
        if len(keep) != len(order) or not np.array_equal(keep, np.arange(len(keep))):
            rows = rows.take(pa.array(keep))
        keys = keys[last]
        for b in self.blocks:
            b.live &= ~np.isin(b.keys, keys, assume_unique=True)
        for d in (self.inline, self.refs, self.deleted):
            ints = np.fromiter((k for k in d if isinstance(k, int)), np.int64)
            if len(ints):
                for k in ints[np.isin(ints, keys)].tolist():
                    self._clear(k)
        self.blocks.append(VirtualBlock(keys, np.ones(len(keys), bool), rows))

    def _live_virtual(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, global row numbers) of the live rows of every block."""
        keys, rows, start = [], [], 0
        for b in self.blocks:
            pos = np.flatnonzero(b.live)
            keys.append(b.keys[pos])
            rows.append(pos + start)
            start += len(b.keys)
        if not keys:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(keys), np.concatenate(rows)

    def _virtual_manifest_rows(self, gidx: np.ndarray) -> pa.Table:
        return _block_rows(self.blocks, np.cumsum([0] + [len(b.keys) for b in self.blocks]), gidx)

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
        if k in self.deleted:
            return TOMBSTONE
        for b in self.blocks:
            i = b.find(k)
            if i is not None:
                return b.ref(i)
        return None

    def __len__(self) -> int:
        """Staged refs (spilled ones counted per segment row, shadowed or not)."""
        return (
            len(self.inline)
            + len(self.refs)
            + len(self.deleted)
            + self.block_rows()
            + sum(s.rows for s in self.spilled)
        )

    def block_rows(self) -> int:
        """Live refs in the in-memory virtual blocks."""
        return sum(int(np.count_nonzero(b.live)) for b in self.blocks)

    def spill_parts(
        self, split_rows: int
    ) -> tuple[list[VirtualBlock], np.ndarray, Iterator[tuple[np.ndarray, pa.Table]]]:
        """The in-memory blocks now, the packed keys of their live refs (sorted), and
        those refs in coordinate order in parts of at most ``split_rows`` (coords,
        manifest rows), built part by part. The caller writes the parts, then calls
        ``spilled_to``."""
        blocks = list(self.blocks)
        keys, gidx = self._live_virtual()
        order = np.argsort(keys, kind="stable")  # packed keys sort as coordinates do
        keys, gidx = keys[order], gidx[order]
        del order
        starts = np.cumsum([0] + [len(b.keys) for b in blocks])

        def parts() -> Iterator[tuple[np.ndarray, pa.Table]]:
            for start in range(0, len(keys), split_rows):
                sel = slice(start, start + split_rows)
                yield self._coords(keys[sel]), _block_rows(blocks, starts, gidx[sel])

        return blocks, keys, parts()

    def spilled_to(
        self, blocks: list[VirtualBlock], older: list[SegmentRef], segments: list[SegmentRef]
    ) -> None:
        """``blocks`` (from ``spill_parts``) are now the segments ``segments``, and the
        earlier spilled segments are ``older`` (rewritten without the refs the new ones
        replace): forget the blocks. (Writes since then only cleared rows in them, and
        in-memory refs shadow spilled ones, so nothing staged meanwhile is lost.)"""
        self.spilled = [*older, *segments]  # first, so a read meanwhile finds the refs
        gone = {id(b) for b in blocks}
        self.blocks = [b for b in self.blocks if id(b) not in gone]

    def __copy__(self) -> ChunkTable:
        other = ChunkTable(self.ndim)
        other.inline = dict(self.inline)
        other.refs = dict(self.refs)
        other.deleted = set(self.deleted)
        other.blocks = [b.copy() for b in self.blocks]
        other.spilled = list(self.spilled)
        return other

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.ndim, self.inline, self.refs, self.deleted, self.blocks, self.spilled)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        ndim, inline, refs, deleted = state[:4]
        self.__init__(ndim)  # type: ignore[misc]
        self.inline, self.refs, self.deleted = inline, refs, deleted
        self.blocks = list(state[4]) if len(state) > 4 else []
        self.spilled = list(state[5]) if len(state) > 5 else []

    def _int_keys(self) -> np.ndarray:
        """Every staged packed key (tuple keys aside)."""
        parts = [
            np.fromiter((k for k in ks if isinstance(k, int)), np.int64)
            for ks in (self.inline, self.refs, self.deleted)
        ]
        parts.append(self._live_virtual()[0])
        return np.concatenate(parts)

    def _tuple_keys(self) -> CoordSet:
        return {
            k for ks in (self.inline, self.refs, self.deleted) for k in ks if isinstance(k, tuple)
        }

    def overlap(self, other: ChunkTable) -> CoordSet:
        """Coordinates staged in both tables."""
        both = np.intersect1d(self._int_keys(), other._int_keys())
        return {self.coord(k) for k in both.tolist()} | (self._tuple_keys() & other._tuple_keys())

    def update(self, other: ChunkTable) -> None:
        """Add every ref of ``other`` (callers check ``overlap`` first)."""
        for k in other.inline.keys() | other.refs.keys() | other.deleted:
            self._clear(k)
        self.inline.update(other.inline)
        self.refs.update(other.refs)
        self.deleted |= other.deleted
        for b in other.blocks:
            pos = np.flatnonzero(b.live)
            if len(pos):
                self.add_block(b.keys[pos], b.rows.take(pa.array(pos)))

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
        for b in list(self.blocks):
            for i in np.flatnonzero(b.live).tolist():
                yield self.coord(int(b.keys[i])), b.ref(i)

    def _coords(self, keys: list[Key] | np.ndarray) -> np.ndarray:
        n = len(keys)
        packed: np.ndarray | None
        if isinstance(keys, np.ndarray):
            packed = keys
        else:
            try:
                packed = np.fromiter(keys, dtype=np.int64, count=n)
            except (TypeError, ValueError):  # some coordinates did not fit a packed key
                packed = None
        if packed is not None:
            cols = [
                (packed >> (self._bits * (self.ndim - 1 - d))) & (self._limit - 1)
                for d in range(self.ndim)
            ]
            return np.stack(cols, axis=1) if cols else np.zeros((n, 0), np.int64)
        return np.array([self.coord(k) for k in keys], dtype=np.int64).reshape(n, self.ndim)

    def segments(
        self, split_rows: int, drop_tombstones: bool = False
    ) -> Iterator[tuple[np.ndarray, pa.Table]]:
        """The staged refs sorted by coordinate, in parts of at most ``split_rows``:
        (coords, manifest rows without ``coord``). Columns are built part by part, so
        memory stays bounded by one part beyond the sort keys."""
        inline_vals = list(self.inline.values())
        ref_vals = list(self.refs.values())
        vkeys, vrows = self._live_virtual()
        groups: list[Any] = [
            list(self.inline.keys()),
            list(self.refs.keys()),
            [] if drop_tombstones else list(self.deleted),
            vkeys,
        ]
        coords = np.concatenate([self._coords(g) for g in groups])
        src = np.concatenate([np.full(len(g), i, np.int8) for i, g in enumerate(groups)])
        idx = np.concatenate([np.arange(len(g), dtype=np.int64) for g in groups[:3]] + [vrows])
        del groups, vkeys, vrows
        order = np.lexsort(coords.T[::-1]) if self.ndim else np.arange(len(coords))
        for start in range(0, len(order), split_rows):
            sel = order[start : start + split_rows]
            part_src, part_idx = src[sel], idx[sel]
            tables, positions = [], []
            for code, build in (
                (0, lambda ix: inline_rows(_pick(inline_vals, ix))),
                (1, lambda ix: ref_rows(_pick(ref_vals, ix))),
                (2, lambda ix: tombstone_rows(len(ix))),
                (3, self._virtual_manifest_rows),
            ):
                pos = np.flatnonzero(part_src == code)
                if len(pos):
                    tables.append(build(part_idx[pos]))
                    positions.append(pos)
            rows = (
                tables[0]
                if len(tables) == 1
                else pa.concat_tables(tables).take(
                    pa.array(np.argsort(np.concatenate(positions), kind="stable"))
                )
            )
            yield coords[sel], rows

    def virtual_locations(self) -> StrSet:
        """Locations of the live staged virtual refs."""
        out = {
            r.location
            for r in self.refs.values()
            if r.kind == ChunkKind.VIRTUAL and r.location is not None
        }
        for b in self.blocks:
            pos = np.flatnonzero(b.live)
            if len(pos):
                col = b.rows.column("location").take(pa.array(pos)).combine_chunks()
                if pa.types.is_dictionary(col.type):
                    col = col.dictionary.take(pa.compute.unique(col.indices))
                out.update(v for v in pa.compute.unique(col).to_pylist() if v is not None)
        return out

    def kinds(self) -> tuple[np.ndarray, np.ndarray]:
        """(coords, kind codes) of every staged ref, unordered."""
        parts: list[tuple[Any, ChunkKind]] = [
            (list(self.inline.keys()), ChunkKind.INLINE),
            (list(self.refs.keys()), ChunkKind.NATIVE),
            (list(self.deleted), ChunkKind.DELETED),
            (self._live_virtual()[0], ChunkKind.VIRTUAL),
        ]
        coords = [self._coords(keys) for keys, _ in parts if len(keys)]
        kinds = [np.full(len(keys), int(kind), np.int8) for keys, kind in parts if len(keys)]
        if not coords:
            return np.zeros((0, self.ndim), np.int64), np.zeros(0, np.int8)
        return np.concatenate(coords), np.concatenate(kinds)


def _block_rows(blocks: list[VirtualBlock], starts: np.ndarray, gidx: np.ndarray) -> pa.Table:
    """Manifest rows of the rows ``gidx`` (numbered across ``blocks``, which start at
    ``starts``), in the order given."""
    which = np.searchsorted(starts, gidx, side="right") - 1
    tables, positions = [], []
    for bi in np.unique(which).tolist():
        pos = np.flatnonzero(which == bi)
        tables.append(blocks[bi].manifest_rows(gidx[pos] - starts[bi]))
        positions.append(pos)
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables).take(
        pa.array(np.argsort(np.concatenate(positions), kind="stable"))
    )


@dataclass(eq=False)
class ChangeSet:
    """Staged changes, relative to the session's base snapshot.

    ``nodes`` maps a path to its staged record, or to None where the base node was
    deleted. ``chunks`` maps a node id to its staged chunk refs. A node replaced at the
    same path gets a new node id, so its chunks start empty.
    """

    nodes: dict[str, NodeRecord | None] = field(default_factory=dict)
    chunks: dict[NodeId, ChunkTable] = field(default_factory=dict)
    #: fork copies whose journaled changes this holds (merges skip their journals)
    writers: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        runtime.reset_in_child(self)

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

    def move_nodes(self, moves: list[tuple[NodeRecord, str]], base_paths: Iterable[str]) -> None:
        """Stage each (current record, new path) as the same node (same id, so its
        chunks, staged or committed, follow it) at the new path, and its old path as
        deleted (forgotten if ``base_paths`` does not hold it). Old and new paths must
        be disjoint sets (the caller checks)."""
        in_base = set(base_paths)
        with self.lock:
            for rec, _ in moves:
                if rec.path in in_base:
                    self.nodes[rec.path] = None
                else:
                    self.nodes.pop(rec.path, None)
            for rec, path in moves:
                self.nodes[path] = dataclasses.replace(rec, path=path)

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
            self.writers.clear()

    def __getstate__(self) -> dict[str, object]:
        return {"nodes": self.nodes, "chunks": self.chunks, "writers": self.writers}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.nodes = state["nodes"]  # type: ignore[assignment]
        self.chunks = state["chunks"]  # type: ignore[assignment]
        self.writers = set(state.get("writers") or ())  # type: ignore[call-overload]
        self.lock = threading.Lock()
        self.__post_init__()
