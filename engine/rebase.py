"""Summaries of changes for conflict detection, and merging one change set into another.

``summarize_changes`` and ``summarize_logs`` build the ``ChangeSummary`` values that
``detect_conflicts`` compares: during a rebase, our staged changes against the commits that
landed; during a merge, each fork's changes against what is merged so far (the same rules,
``MERGE_RULES``). ``merge_changes`` then folds the forks' change sets into the session's.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import numpy as np

from frazil.format import ARRAY, ChunkKind, ChunkRef, NodeId, NodeRecord, TransactionLog
from frazil.format import txlog as tx

from .changeset import ChangeSet
from .conflicts import (
    MERGE_RULES,
    ChangeSummary,
    Conflict,
    ConflictType,
    Resolution,
    detect_conflicts,
)


def summarize_changes(
    base: Mapping[str, NodeRecord], changes: ChangeSet, *, coords: bool = True
) -> ChangeSummary:
    """What ``changes`` does relative to the node table ``base`` (path -> record);
    ``coords=False`` records which arrays have chunk writes, not their coordinates."""
    s = ChangeSummary()
    base_paths = {rec.node_id: path for path, rec in base.items()}
    for path, staged in changes.nodes.items():
        was = base_paths.get(staged.node_id) if staged is not None else None
        if was is not None and was != path:
            s.moved_nodes.append((was, path))
        old = base.get(path)
        replaced = old is not None and (staged is None or staged.node_id != old.node_id)
        if replaced:
            assert old is not None
            (s.deleted_arrays if old.node_type == ARRAY else s.deleted_groups).add(path)
            s.deleted_ids.setdefault(path, set()).add(old.node_id)
        if staged is None:
            continue
        if old is None or replaced:
            (s.new_arrays if staged.node_type == ARRAY else s.new_groups).add(path)
        elif staged.zarr_json != old.zarr_json:
            (s.updated_arrays if staged.node_type == ARRAY else s.updated_groups).add(path)
    paths = paths_by_id(base, changes)
    for node_id, table in changes.chunks.items():
        where = paths.get(node_id)
        if where is not None and len(table):
            if coords:
                s.add_chunks(where, (c for c, _ in table.items()))
            else:
                s.written.add(where)
    return s


_DELETED = (tx.DELETED_GROUP, tx.DELETED_ARRAY)
_NEW = (tx.NEW_GROUP, tx.NEW_ARRAY)


def summarize_logs(logs: Iterable[TransactionLog], *, coords: bool = True) -> ChangeSummary:
    """The union of several commits' changes (oldest first); ``coords=False`` records
    which arrays had chunk writes, not their coordinates (``RowSet`` finds the chunks
    both sides wrote in bulk)."""
    s = ChangeSummary()
    targets: dict[str, set[str]] = {
        tx.NEW_GROUP: s.new_groups,
        tx.NEW_ARRAY: s.new_arrays,
        tx.DELETED_GROUP: s.deleted_groups,
        tx.DELETED_ARRAY: s.deleted_arrays,
        tx.UPDATED_GROUP: s.updated_groups,
        tx.UPDATED_ARRAY: s.updated_arrays,
    }
    for log in logs:
        gone = {c.node_id: c.path for c in log.changes if c.change in _DELETED}
        for change in log.changes:
            if change.change in _NEW and change.node_id in gone:  # see "Moves" in SPEC.md
                s.moved_nodes.append((gone[change.node_id], change.path))
            if change.change == tx.CHUNKS:
                if not coords:
                    s.written.add(change.path)
                    continue
                assert change.chunks is not None
                s.add_chunks(change.path, map(tuple, change.chunks.tolist()))
            else:
                targets[change.change].add(change.path)
                if change.change in (tx.DELETED_GROUP, tx.DELETED_ARRAY):
                    s.deleted_ids.setdefault(change.path, set()).add(change.node_id)
    return s


def row_keys(rows: np.ndarray) -> np.ndarray | None:
    """Chunk coordinates (n x ndim) packed into one int64 each (``ndim`` fields of
    ``63 // ndim`` bits, so equal keys are equal rows); None if some row does not fit."""
    n, ndim = rows.shape
    if ndim == 0:
        return np.zeros(n, np.int64)
    bits = 63 // ndim
    if n and (rows.min() < 0 or rows.max() >= 1 << bits):
        return None
    keys = np.zeros(n, np.int64)
    for d in range(ndim):
        keys = (keys << bits) | rows[:, d].astype(np.int64)
    return keys


class RowSet:
    """A set of chunk coordinates of one array, added part by part (n x ndim each) and
    held as sorted packed keys (8 bytes a chunk; rows kept whole only if some do not
    pack), to find which of many other coordinates are in it without a Python object per
    chunk."""

    def __init__(self, parts: Iterable[np.ndarray], ndim: int) -> None:
        self.ndim = ndim
        self._keys: list[np.ndarray] | None = []
        self._kept: list[np.ndarray] = []
        self._done: tuple[np.ndarray | None, np.ndarray | None] | None = None
        for part in parts:
            self.add(part)

    def add(self, part: np.ndarray) -> None:
        """Add the coordinates ``part`` (n x ndim)."""
        part = np.asarray(part, np.int64).reshape(len(part), self.ndim)
        self._done = None
        k = row_keys(part) if self._keys is not None else None
        if self._keys is not None and k is not None:
            self._keys.append(k)
        elif self._keys is not None:  # some rows do not pack: keep rows from here on
            self._kept = [_unpack(x, self.ndim) for x in self._keys] + [part]
            self._keys = None
        else:
            self._kept.append(part)

    @property
    def keys(self) -> np.ndarray | None:
        """The sorted packed keys (None if rows are kept whole)."""
        return self._finish()[0]

    @property
    def rows(self) -> np.ndarray | None:
        return self._finish()[1]

    def _finish(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        if self._done is None:
            if self._keys is not None:  # sorted, not np.unique: its hash path is slow
                keys = np.sort(np.concatenate(self._keys)) if self._keys else None
                self._keys = [] if keys is None else [keys]
                self._done = (keys, None)
            else:
                rows = np.concatenate(self._kept) if self._kept else None
                self._kept = [] if rows is None else [rows]
                self._done = (None, rows)
        return self._done

    def common(self, rows: np.ndarray) -> np.ndarray:
        """The rows of ``rows`` (n x ndim) that are in the set."""
        rows = np.asarray(rows, np.int64).reshape(len(rows), self.ndim)
        if self.keys is not None and len(self.keys):
            fits = (
                np.ones(len(rows), bool)
                if self.ndim == 0
                else ((rows >= 0) & (rows < 1 << (63 // self.ndim))).all(axis=1)
            )
            cand = rows[fits]
            k = row_keys(cand)
            assert k is not None
            i = np.minimum(np.searchsorted(self.keys, k), len(self.keys) - 1)
            return cand[self.keys[i] == k]
        if self.rows is not None and len(self.rows) and len(rows):
            both = np.concatenate([self.rows, rows])
            _, inverse = np.unique(both, axis=0, return_inverse=True)
            inverse = inverse.reshape(-1)
            return rows[np.isin(inverse[len(self.rows) :], inverse[: len(self.rows)])]
        return rows[:0]


def _unpack(keys: np.ndarray, ndim: int) -> np.ndarray:
    bits = 63 // ndim
    cols = [(keys >> (bits * (ndim - 1 - d))) & ((1 << bits) - 1) for d in range(ndim)]
    return np.stack(cols, axis=1)


def paths_by_id(base: Mapping[str, NodeRecord], changes: ChangeSet) -> dict[NodeId, str]:
    paths = {rec.node_id: path for path, rec in base.items()}
    for path, rec in changes.nodes.items():
        if rec is not None:
            paths[rec.node_id] = path
    return paths


def apply_resolution(
    base: dict[str, NodeRecord], changes: ChangeSet, resolution: Resolution
) -> None:
    """Drop our staged chunks that the solver gave to the other side, and our staged node
    records that change nothing (the base's node with the base's zarr.json):
    ``summarize_changes`` does not count them, so kept they would silently undo the other
    side's update, delete or replacement of that node on the new base."""
    for path, staged in list(changes.nodes.items()):
        old = base.get(path)
        if (
            staged is not None
            and old is not None
            and staged.node_id == old.node_id
            and staged.zarr_json == old.zarr_json
        ):
            del changes.nodes[path]
    if not resolution.drop_chunks:
        return
    ids = {path: node_id for node_id, path in paths_by_id(base, changes).items()}
    for path, coords in resolution.drop_chunks.items():
        node_id = ids.get(path)
        table = None if node_id is None else changes.chunks.get(node_id)
        if table is not None:
            table.discard(coords)


def merge_changes(
    base: dict[str, NodeRecord],
    target: ChangeSet,
    sources: Iterable[ChangeSet],
    journaled: Iterable[ChangeSet] = (),
) -> tuple[ChangeSet, list[Conflict]]:
    """``target`` with every source folded in (a new change set; the inputs are unchanged),
    and the conflicts found: each source's changes are checked against what is merged
    so far by the conflict rules merges use (``MERGE_RULES``, the rebase's rules with the
    merge's differences), then folded in. Identical node records merge silently; a node
    both created with the same metadata becomes one node. ``journaled`` change sets
    (replayed from fork journals, folded after ``sources``) may repeat a chunk already
    staged with the same bytes, as a retried task does; that is no conflict."""
    merged = ChangeSet(
        nodes=dict(target.nodes),
        chunks={k: copy.copy(t) for k, t in target.chunks.items()},
        writers=set(target.writers),
    )
    conflicts: list[Conflict] = []
    for source, retried in [*((s, False) for s in sources), *((s, True) for s in journaled)]:
        found = detect_conflicts(
            summarize_changes(base, source, coords=False),
            summarize_changes(base, merged, coords=False),
            MERGE_RULES,
        )
        conflicts.extend(_tolerated(base, merged, source, found))
        conflicts.extend(_fold(base, merged, source, retried))
        merged.writers |= source.writers
    return merged, conflicts


def _same_node(base: Mapping[str, NodeRecord], path: str, a: object, b: object) -> bool:
    """Two staged records at ``path`` that are one node: the same record, or two created
    independently with the same type and metadata (not the base node and a replacement
    of it, even with equal metadata: its chunks differ)."""
    if not isinstance(a, NodeRecord) or not isinstance(b, NodeRecord):
        return False
    if a.node_type != b.node_type or a.zarr_json != b.zarr_json:
        return False
    old = base.get(path)
    return a.node_id == b.node_id or old is None or old.node_id not in (a.node_id, b.node_id)


def _tolerated(
    base: Mapping[str, NodeRecord], merged: ChangeSet, source: ChangeSet, found: list[Conflict]
) -> list[Conflict]:
    """``found`` without the node conflicts a merge accepts: both sides hold one node
    (``_same_node``)."""
    return [
        c
        for c in found
        if not _same_node(base, c.path, merged.nodes.get(c.path), source.nodes.get(c.path))
    ]


def _fold(
    base: Mapping[str, NodeRecord], merged: ChangeSet, source: ChangeSet, retried: bool
) -> list[Conflict]:
    """Fold ``source`` into ``merged`` in place (its records over ours, a node both
    created as one node mapped onto ours, chunk tables combined), and return the chunks
    both wrote, found in bulk table by table (with ``retried``, chunks written with the
    same bytes do not count)."""
    mapped: dict[NodeId, NodeId] = {}
    for path, rec in source.nodes.items():
        mine = merged.nodes.get(path, _MISSING)
        if rec is not None and _same_node(base, path, mine, rec):
            assert isinstance(mine, NodeRecord)
            if mine.node_id != rec.node_id:
                mapped[rec.node_id] = mine.node_id
            continue
        old = mine if isinstance(mine, NodeRecord) else base.get(path)
        if rec is None and path not in base:
            merged.nodes.pop(path, None)
        else:
            merged.nodes[path] = rec
        if old is not None and (rec is None or rec.node_id != old.node_id):
            merged.chunks.pop(old.node_id, None)
    conflicts = []
    paths = paths_by_id(base, merged)
    for node_id, table in source.chunks.items():
        target = mapped.get(node_id, node_id)
        mine_table = merged.chunks.get(target)
        if mine_table is None:
            merged.chunks[target] = copy.copy(table)
            continue
        both = mine_table.overlap(table)
        if retried:
            both = {c for c in both if not same_content(mine_table.get(c), table.get(c))}
        if both:
            path = paths.get(target, "?")
            conflicts.append(Conflict(ConflictType.ChunkDoubleUpdate, path, tuple(sorted(both))))
        mine_table.update(table)
    return conflicts


def same_content(a: ChunkRef | None, b: ChunkRef | None) -> bool:
    """Two staged refs that give the same bytes (a retried task wrote the chunk again):
    merging them is no conflict. Native chunks compare by length and checksum."""
    if a is None or b is None or a.kind != b.kind:
        return False
    if a.kind == ChunkKind.NATIVE:
        return a.length == b.length and a.checksum is not None and a.checksum == b.checksum
    return a == b


class _Missing:
    pass


_MISSING: object = _Missing()
