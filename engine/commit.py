"""Preparing a commit: a pure function from (base snapshot, staged changes) to new objects.

``prepare_commit`` does no I/O. It returns the manifest segments, transaction log and
snapshot to write, in the order they must be written, so a retry loop can call it again
on a new base.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from frazil.format import (
    ARRAY,
    CommitInfo,
    ManifestId,
    NodeChange,
    NodeId,
    SegmentRef,
    Snapshot,
    SnapshotId,
    TransactionLog,
    checksum,
    encode_snapshot,
    encode_transaction_log,
)
from frazil.format import txlog as tx
from frazil.format.manifest import encode_manifest_table

from .changeset import ChangeSet
from .objects import manifest_key, snapshot_key, txlog_key


@dataclass(frozen=True)
class CommitPlan:
    """Objects to write (key, bytes): ``manifests`` first, then ``log`` and ``snapshot``."""

    snapshot: Snapshot
    snapshot_bytes: bytes
    snapshot_checksum: int
    manifests: list[tuple[str, bytes]]
    log: tuple[str, bytes]

    def objects(self) -> list[tuple[str, bytes]]:
        return [*self.manifests, self.log, (snapshot_key(self.snapshot.id), self.snapshot_bytes)]


def build_segments(node_id: NodeId, parts: Iterable[tuple[np.ndarray, pa.Table]]
                   ) -> tuple[list[SegmentRef], list[tuple[str, bytes]], np.ndarray | None]:
    """Encode each (sorted coords, rows) part as one manifest segment; also returns all
    the coordinates (for the transaction log), or None if there were none."""
    segs: list[SegmentRef] = []
    objects: list[tuple[str, bytes]] = []
    all_coords: list[np.ndarray] = []
    for part, rows in parts:
        mid = ManifestId.new()
        data = encode_manifest_table(mid, node_id, part, rows)
        segs.append(SegmentRef(mid, checksum(data), len(data), len(part),
                               tuple(part.min(axis=0).tolist()),
                               tuple(part.max(axis=0).tolist())))
        objects.append((manifest_key(mid), data))
        all_coords.append(part)
    return segs, objects, (np.concatenate(all_coords) if all_coords else None)


def prepare_commit(
    base: Snapshot,
    changes: ChangeSet,
    *,
    message: str,
    metadata: dict[str, Any],
    split_rows: int,
    snapshot_id: SnapshotId | None = None,
    now: dt.datetime | None = None,
) -> CommitPlan:
    sid = snapshot_id or SnapshotId.new()
    nodes = {n.path: n for n in base.nodes}
    log: list[NodeChange] = []

    for path, staged in sorted(changes.nodes.items()):
        old = nodes.get(path)
        if staged is None or (old is not None and old.node_id != staged.node_id):
            if old is not None:
                del nodes[path]
                kind = tx.DELETED_ARRAY if old.node_type == ARRAY else tx.DELETED_GROUP
                log.append(NodeChange(kind, path, old.node_id))
        if staged is None:
            continue
        if old is None or old.node_id != staged.node_id:
            nodes[path] = dataclasses.replace(staged, segments=())
            kind = tx.NEW_ARRAY if staged.node_type == ARRAY else tx.NEW_GROUP
            log.append(NodeChange(kind, path, staged.node_id))
        elif staged.zarr_json != old.zarr_json:
            nodes[path] = dataclasses.replace(old, zarr_json=staged.zarr_json)
            kind = tx.UPDATED_ARRAY if old.node_type == ARRAY else tx.UPDATED_GROUP
            log.append(NodeChange(kind, path, old.node_id))

    base_ids = {n.node_id for n in base.nodes}
    by_id = {n.node_id: n for n in nodes.values()}
    manifests: list[tuple[str, bytes]] = []
    for node_id, table in changes.chunks.items():
        node = by_id.get(node_id)
        if node is None or node.node_type != ARRAY or not len(table):
            continue
        # a new array has no older refs for tombstones to hide
        segs, objects, coords = build_segments(
            node_id, table.segments(split_rows, drop_tombstones=node_id not in base_ids))
        if coords is None:
            continue
        manifests.extend(objects)
        nodes[node.path] = dataclasses.replace(node, segments=(*segs, *node.segments))
        log.append(NodeChange(tx.CHUNKS, node.path, node_id, coords))

    log_bytes = encode_transaction_log(TransactionLog(sid, base.id, tuple(log)))
    info = CommitInfo(
        snapshot_id=sid,
        parent_id=base.id,
        written_at=now or dt.datetime.now(dt.UTC),
        message=message,
        metadata=metadata,
        transaction_log_checksum=checksum(log_bytes),
    )
    snapshot = Snapshot(info, tuple(sorted(nodes.values(), key=lambda n: n.path)))
    snap_bytes = encode_snapshot(snapshot)
    return CommitPlan(snapshot, snap_bytes, checksum(snap_bytes), manifests,
                      (txlog_key(sid), log_bytes))


def initial_snapshot(now: dt.datetime | None = None) -> CommitPlan:
    """The first snapshot of a new repository: no nodes, no parent."""
    sid = SnapshotId.new()
    log_bytes = encode_transaction_log(TransactionLog(sid, None, ()))
    info = CommitInfo(sid, None, now or dt.datetime.now(dt.UTC), "Repository initialized",
                      {}, checksum(log_bytes))
    snapshot = Snapshot(info, ())
    data = encode_snapshot(snapshot)
    return CommitPlan(snapshot, data, checksum(data), [], (txlog_key(sid), log_bytes))
