"""Expiry: drop old snapshots from branch histories (format/SPEC.md §10.2): the kept
snapshots above a gap are rewritten with new ids, and the branch moves by
compare-and-swap."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from typing import Any

import numpy as np

from frazil.format import (
    ARRAY,
    CommitInfo,
    NodeChange,
    Snapshot,
    SnapshotId,
    TransactionLog,
    checksum,
    encode_snapshot,
    encode_transaction_log,
)
from frazil.format import txlog as tx
from frazil.format.common import BRANCH_REF
from frazil.format.keys import (
    snapshot_key,
    transaction_log_key,
)

from ..compaction import Progress
from ..errors import NotFoundError
from ..history import index_for_child
from ..objects import ObjectReader
from ..refs import Move, Ref, list_refs, move_branch, read_ref
from ..storage.base import Storage
from .reach import cutoff_ms, walk_history


def squash_log(
    sid: SnapshotId, parent: Snapshot, current: Snapshot, logs: Iterable[TransactionLog]
) -> TransactionLog:
    """The transaction log of ``current`` re-parented onto ``parent``: node changes from
    comparing the two node tables, and per array alive in ``current`` the union of the
    chunk coordinates that ``logs`` (the commits between them) wrote."""
    old = {n.path: n for n in parent.nodes}
    new = {n.path: n for n in current.nodes}
    changes: list[NodeChange] = []
    for path in sorted(old.keys() | new.keys()):
        a, b = old.get(path), new.get(path)
        if a is not None and (b is None or a.node_id != b.node_id):
            changes.append(
                NodeChange(
                    tx.DELETED_ARRAY if a.node_type == ARRAY else tx.DELETED_GROUP, path, a.node_id
                )
            )
        if b is not None and (a is None or a.node_id != b.node_id):
            changes.append(
                NodeChange(tx.NEW_ARRAY if b.node_type == ARRAY else tx.NEW_GROUP, path, b.node_id)
            )
        elif a is not None and b is not None and a.zarr_json != b.zarr_json:
            changes.append(
                NodeChange(
                    tx.UPDATED_ARRAY if b.node_type == ARRAY else tx.UPDATED_GROUP, path, b.node_id
                )
            )
    alive = {n.node_id: n.path for n in current.nodes if n.node_type == ARRAY}
    written: dict[Any, list[np.ndarray]] = {}
    for log in logs:
        for c in log.changes:
            if c.change == tx.CHUNKS and c.node_id in alive and c.chunks is not None:
                written.setdefault(c.node_id, []).append(c.chunks)
    for node_id, parts in sorted(written.items(), key=lambda kv: alive[kv[0]]):
        coords = np.unique(np.concatenate(parts), axis=0)
        if len(coords):
            changes.append(NodeChange(tx.CHUNKS, alive[node_id], node_id, coords))
    return TransactionLog(sid, parent.id, tuple(changes))


async def _rewrite(
    storage: Storage,
    reader: ObjectReader,
    info: CommitInfo,
    new_parent: SnapshotId,
    squashed: list[CommitInfo],
) -> tuple[SnapshotId, int]:
    """Write a copy of snapshot ``info`` whose parent is ``new_parent``; ``squashed`` are
    the snapshots between them that leave history (their changes fold into the copy's
    transaction log; oldest first). Returns the copy's id and checksum."""
    snap = await reader.snapshot(info.snapshot_id)
    sid = SnapshotId.new()
    if squashed:
        logs = [
            await reader.transaction_log(i.snapshot_id, i.transaction_log_checksum)
            for i in [*squashed, info]
        ]
        log = squash_log(sid, await reader.snapshot(new_parent), snap, logs)
    else:
        own = await reader.transaction_log(info.snapshot_id, info.transaction_log_checksum)
        log = TransactionLog(sid, new_parent, own.changes)
    log_bytes = encode_transaction_log(log)
    meta = {**info.metadata, "frazil.rewritten_from": str(info.snapshot_id)}
    new_info = dataclasses.replace(
        info,
        snapshot_id=sid,
        parent_id=new_parent,
        metadata=meta,
        transaction_log_checksum=checksum(log_bytes),
    )
    parent = await reader.snapshot(new_parent)
    copy = Snapshot(new_info, snap.nodes, await index_for_child(reader, storage, parent))
    data = encode_snapshot(copy)
    await storage.put(transaction_log_key(sid), log_bytes)
    await storage.put(snapshot_key(sid), data)
    reader.snapshots.put(sid, copy)  # the next copy's parent, for its history index
    return sid, checksum(data)


async def _branch_tips(storage: Storage, names: list[str]) -> set[SnapshotId | None]:
    tips: set[SnapshotId | None] = set()
    for name in names:
        try:
            tips.add((await read_ref(storage, BRANCH_REF, name)).record.snapshot_id)
        except NotFoundError:
            pass
    return tips


async def expire_snapshots(
    storage: Storage,
    reader: ObjectReader,
    older_than: dt.datetime,
    progress: Progress | None = None,
) -> set[str]:
    """Drop snapshots written before ``older_than`` from every branch's history; returns
    their ids. See format/SPEC.md ("Expiring history") for the exact rules."""
    cutoff_ms(older_than)
    branches = sorted(await list_refs(storage, BRANCH_REF))
    expired: set[str] = set()
    memo: dict[tuple[SnapshotId, SnapshotId], tuple[SnapshotId, int]] = {}
    # tips as they were before any branch was rewritten: a snapshot that is some branch's
    # tip stays in every history that holds it (all of them then share its one copy)
    first_tips = await _branch_tips(storage, branches)
    for n, name in enumerate(branches):
        if progress is not None:
            progress("expire", n, len(branches))
        dropped: list[CommitInfo] = []

        async def attempt(ref: Ref, n: int) -> Move | None:
            nonlocal dropped
            tips = first_tips | await _branch_tips(storage, branches)
            assert ref.record.snapshot_id is not None
            chain = list((await walk_history(reader, [ref.record.snapshot_id])).values())
            keep = [
                i
                for i in chain
                if i is chain[0]
                or i.parent_id is None
                or i.snapshot_id in tips
                or i.written_at >= older_than
            ]
            dropped = [i for i in chain if not any(i is k for k in keep)]
            if not dropped:
                return None
            # rebuild from the root up: a kept snapshot keeps its id while nothing below
            # it changed; above the first gap every kept snapshot is rewritten
            kept_ids = {k.snapshot_id for k in keep}
            new_parent: SnapshotId | None = None
            between: list[CommitInfo] = []
            new_checksum: int | None = None
            for info in reversed(chain):
                if info.snapshot_id not in kept_ids:
                    between.append(info)
                    continue
                if info.parent_id == new_parent and not between:
                    new_parent, new_checksum = info.snapshot_id, None
                    continue
                assert new_parent is not None
                key = (info.snapshot_id, new_parent)
                if key not in memo:
                    memo[key] = await _rewrite(storage, reader, info, new_parent, between)
                new_parent, new_checksum = memo[key]
                between = []
            assert new_parent is not None
            if new_parent == ref.record.snapshot_id:
                dropped = []
                return None
            if new_checksum is None:
                new_checksum = await reader.snapshot_checksum(new_parent)
            return Move(new_parent, new_checksum)

        try:
            moved = await move_branch(storage, name, attempt, history=reader.parent)
        except NotFoundError:  # deleted meanwhile
            continue
        if moved.move is not None:
            expired |= {str(i.snapshot_id) for i in dropped}
    if progress is not None:
        progress("expire", len(branches), len(branches))
    return expired
