"""Summaries of changes for conflict detection, and merging one change set into another.

``summarize_changes`` and ``summarize_logs`` build the two ``ChangeSummary`` values that
``detect_conflicts`` compares during a rebase; ``merge_changes`` folds a fork's change set
into a session's, reporting every chunk or node that both wrote.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from frazil.format import ARRAY, ChunkKind, ChunkRef, NodeId, NodeRecord, TransactionLog
from frazil.format import txlog as tx

from .changeset import ChangeSet
from .conflicts import ChangeSummary, Conflict, ConflictType, Resolution


def summarize_changes(base: dict[str, NodeRecord], changes: ChangeSet) -> ChangeSummary:
    """What ``changes`` does relative to the node table ``base`` (path -> record)."""
    s = ChangeSummary()
    for path, staged in changes.nodes.items():
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
    paths = _paths_by_id(base, changes)
    for node_id, table in changes.chunks.items():
        where = paths.get(node_id)
        if where is not None and len(table):
            s.add_chunks(where, (c for c, _ in table.items()))
    return s


def summarize_logs(logs: Iterable[TransactionLog]) -> ChangeSummary:
    """The union of several commits' changes (oldest first)."""
    s = ChangeSummary()
    targets = {
        tx.NEW_GROUP: s.new_groups,
        tx.NEW_ARRAY: s.new_arrays,
        tx.DELETED_GROUP: s.deleted_groups,
        tx.DELETED_ARRAY: s.deleted_arrays,
        tx.UPDATED_GROUP: s.updated_groups,
        tx.UPDATED_ARRAY: s.updated_arrays,
    }
    for log in logs:
        for change in log.changes:
            if change.change == tx.CHUNKS:
                assert change.chunks is not None
                s.add_chunks(change.path, map(tuple, change.chunks.tolist()))
            else:
                targets[change.change].add(change.path)
                if change.change in (tx.DELETED_GROUP, tx.DELETED_ARRAY):
                    s.deleted_ids.setdefault(change.path, set()).add(change.node_id)
    return s


def _paths_by_id(base: dict[str, NodeRecord], changes: ChangeSet) -> dict[NodeId, str]:
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
    ids = {path: node_id for node_id, path in _paths_by_id(base, changes).items()}
    for path, coords in resolution.drop_chunks.items():
        table = changes.chunks.get(ids.get(path))  # type: ignore[arg-type]
        if table is not None:
            table.discard(coords)


def merge_changes(
    base: dict[str, NodeRecord],
    target: ChangeSet,
    sources: Iterable[ChangeSet],
    journaled: Iterable[ChangeSet] = (),
) -> tuple[ChangeSet, list[Conflict]]:
    """``target`` with every source folded in (a new change set; the inputs are unchanged),
    and the conflicts found. Identical node records merge silently; a node both created
    with the same metadata becomes one node. ``journaled`` change sets (replayed from fork
    journals, folded after ``sources``) may repeat a chunk already staged with the same
    bytes, as a retried task does; that is no conflict."""
    merged = ChangeSet(
        nodes=dict(target.nodes),
        chunks={k: copy.copy(t) for k, t in target.chunks.items()},
        writers=set(target.writers),
    )
    conflicts: list[Conflict] = []
    for source, retried in [*((s, False) for s in sources), *((s, True) for s in journaled)]:
        conflicts.extend(_fold(base, merged, source, retried))
        merged.writers |= source.writers
    return merged, conflicts


def _fold(
    base: dict[str, NodeRecord], merged: ChangeSet, source: ChangeSet, retried: bool = False
) -> list[Conflict]:
    """Fold ``source`` into ``merged`` in place; returns the conflicts found. With
    ``retried``, chunks both staged with the same bytes are not conflicts."""
    conflicts: list[Conflict] = []
    id_map: dict[NodeId, NodeId] = {}
    paths = _paths_by_id(base, merged)
    before = dict(merged.nodes)
    for path, rec in source.nodes.items():
        mine = merged.nodes.get(path, _MISSING)
        if mine is _MISSING:
            old = base.get(path)
            if rec is None and old is not None and len(merged.chunks.get(old.node_id, ())):
                kind = (
                    ConflictType.DeleteOfUpdatedArray
                    if old.node_type == ARRAY
                    else ConflictType.DeleteOfUpdatedGroup
                )
                conflicts.append(Conflict(kind, path))
                continue
            merged.nodes[path] = rec
            if rec is None and old is not None:
                merged.chunks.pop(old.node_id, None)
            continue
        if mine == rec:
            continue
        old = base.get(path)
        if (
            mine is not None
            and rec is not None
            and mine.node_type == rec.node_type
            and mine.zarr_json == rec.zarr_json
            # one node, or two created independently; not the base node and a
            # replacement of it, even with equal metadata (its chunks differ)
            and (
                mine.node_id == rec.node_id  # type: ignore[union-attr]
                or old is None
                or old.node_id
                not in (
                    mine.node_id,  # type: ignore[union-attr]
                    rec.node_id,
                )
            )
        ):
            id_map[rec.node_id] = mine.node_id  # type: ignore[union-attr]
            continue
        in_base = path in base
        if mine is None or rec is None:
            kind = ConflictType.DeleteOfUpdatedArray
            live = rec if rec is not None else mine
            if live is not None and live.node_type != ARRAY:  # type: ignore[union-attr]
                kind = ConflictType.DeleteOfUpdatedGroup
        elif not in_base or mine.node_id != rec.node_id:  # type: ignore[union-attr]
            kind = ConflictType.NewNodeConflictsWithExistingNode
        else:
            kind = ConflictType.ZarrMetadataDoubleUpdate
        conflicts.append(Conflict(kind, path))
    # a node one side created under a group the other side deleted would be orphaned
    for mine_side, other_side in ((source.nodes, before), (before, source.nodes)):
        for path, rec in mine_side.items():
            if (
                rec is not None
                and path not in base
                and any(other_side.get(p, _MISSING) is None for p in _parents(path))
            ):
                conflicts.append(Conflict(ConflictType.NewNodeInInvalidGroup, path))
    paths.update({nid: p for p, r in merged.nodes.items() if r is not None for nid in [r.node_id]})
    live_ids = {r.node_id for r in merged.nodes.values() if r is not None} | {
        r.node_id for p, r in base.items() if merged.nodes.get(p, _MISSING) is _MISSING
    }
    for node_id, table in source.chunks.items():
        if not len(table):
            continue
        tid = id_map.get(node_id, node_id)
        path = paths.get(tid) or _paths_by_id({}, source).get(node_id, "?")
        if tid not in live_ids:
            conflicts.append(Conflict(ConflictType.ChunksUpdatedInDeletedArray, path))
            continue
        mine_table = merged.chunks.get(tid)
        if mine_table is None:
            merged.chunks[tid] = copy.copy(table)
            continue
        both = mine_table.overlap(table)
        if retried:
            both = {c for c in both if not same_content(mine_table.get(c), table.get(c))}
        if both:
            conflicts.append(Conflict(ConflictType.ChunkDoubleUpdate, path, tuple(sorted(both))))
            continue
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


def _parents(path: str) -> list[str]:
    parts = path.strip("/").split("/") if path.strip("/") else []
    return ["/" + "/".join(parts[:i]) for i in range(len(parts))]


class _Missing:
    pass


_MISSING: object = _Missing()
