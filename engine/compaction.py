"""Compaction: merging an array's manifest segments into few bounded ones, committed as a
snapshot with identical content that rebases over concurrent commits.

Merging is done in bulk: every segment's coordinates are concatenated (numpy), sorted by
coordinate then by age (newest segment first), the first row of each coordinate is kept
and tombstones are dropped; the surviving rows are taken from the concatenated Arrow
tables at once and cut, in coordinate order, into segments of at most
``rows_per_segment`` rows (so each new segment covers a compact region of the grid).

A compaction replaces a *suffix* of an array's segment list (the segments it read, down
to the oldest) by the merged segments. If the branch moved meanwhile, the same
replacement is applied to the new tip wherever the array's list still ends with that
suffix; newer segments stay in front, so no commit is ever lost and content never
changes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from frazil.format import (
    ARRAY,
    CommitInfo,
    HistoryIndex,
    ManifestId,
    ManifestSegment,
    NodeId,
    NodeRecord,
    SegmentRef,
    Snapshot,
    SnapshotId,
    TransactionLog,
    checksum,
    encode_snapshot,
    encode_transaction_log,
)
from frazil.format.common import BRANCH_REF
from frazil.format.keys import transaction_log_key

from . import runtime
from .commit import CommitPlan, build_segments
from .errors import InvalidInputError
from .history import index_for_child
from .merging import live_rows, merge_segments, split_parts
from .objects import ObjectReader
from .refs import Move, Ref, move_branch, read_ref
from .storage.base import Storage
from .zarrmeta import parse_zarr_json

Progress = Callable[[str, int, int | None], None]
"""``progress(stage, done, total)``: called as long work advances (``total`` may be None)."""

COMPACTION_MESSAGE = "frazil: compact manifests"


@dataclass(frozen=True)
class CompactionSummary:
    """What ``Repository.compact`` did: the new snapshot (None when there was nothing to
    compact), and per compacted array path, its segment count before and after."""

    snapshot_id: str | None
    arrays: dict[str, tuple[int, int]]
    refs: int
    attempts: int

    @property
    def segments_before(self) -> int:
        return sum(b for b, _ in self.arrays.values())

    @property
    def segments_after(self) -> int:
        return sum(a for _, a in self.arrays.values())


@dataclass(frozen=True)
class Replacement:
    """New segments for the suffix ``old`` of one array's segment list."""

    node_id: NodeId
    old: tuple[ManifestId, ...]
    new: tuple[SegmentRef, ...]
    objects: list[tuple[str, bytes]]
    refs: int


async def count_chunks(reader: ObjectReader, node: NodeRecord) -> int:
    """How many chunks of the array ``node`` exist (live refs over all its segments)."""
    loaded = await runtime.gather_limited(
        [reader.manifest(s, cache=False) for s in node.segments], limit=16
    )
    return len(live_rows(loaded, _ndim(node)))


async def compact_node(
    reader: ObjectReader,
    node: NodeRecord,
    ndim: int,
    rows_per_segment: int,
    loaded_one: Callable[[], None] | None = None,
) -> Replacement:
    """Merge every segment of ``node`` into segments of at most ``rows_per_segment``
    rows (the objects are returned, not yet written)."""

    async def load(seg: SegmentRef) -> ManifestSegment:
        m = await reader.manifest(seg, cache=False)
        if loaded_one is not None:
            loaded_one()
        return m

    loaded = await runtime.gather_limited([load(s) for s in node.segments], limit=16)
    coords, rows = merge_segments(loaded, ndim)
    del loaded
    segs, objects, _ = build_segments(node.node_id, split_parts(coords, rows, rows_per_segment))
    return Replacement(
        node.node_id, tuple(s.manifest_id for s in node.segments), tuple(segs), objects, len(coords)
    )


def apply_replacements(
    nodes: tuple[NodeRecord, ...], replacements: list[Replacement]
) -> tuple[tuple[NodeRecord, ...], list[Replacement]]:
    """``nodes`` with each replacement applied where the node's segment list still ends
    with the replaced suffix; also returns the replacements that applied."""
    by_id = {r.node_id: r for r in replacements}
    out, applied = [], []
    for n in nodes:
        r = by_id.get(n.node_id)
        k = len(r.old) if r is not None else 0
        if (
            r is not None
            and n.node_type == ARRAY
            and len(n.segments) >= k
            and tuple(s.manifest_id for s in n.segments[len(n.segments) - k :]) == r.old
        ):
            n = dataclasses.replace(n, segments=(*n.segments[: len(n.segments) - k], *r.new))
            applied.append(r)
        out.append(n)
    return tuple(out), applied


def compaction_plan(
    base: Snapshot,
    nodes: tuple[NodeRecord, ...],
    metadata: dict[str, object],
    message: str = COMPACTION_MESSAGE,
    history: HistoryIndex | None = None,
) -> CommitPlan:
    """A snapshot on top of ``base`` with the node table ``nodes`` (same content, other
    segments) and an empty transaction log."""
    sid = SnapshotId.new()
    log_bytes = encode_transaction_log(TransactionLog(sid, base.id, ()))
    info = CommitInfo(
        sid, base.id, dt.datetime.now(dt.UTC), message, dict(metadata), checksum(log_bytes)
    )
    snapshot = Snapshot(info, nodes, history)
    data = encode_snapshot(snapshot)
    return CommitPlan(snapshot, data, checksum(data), [], (transaction_log_key(sid), log_bytes))


def _ndim(node: NodeRecord) -> int:
    return parse_zarr_json(node.zarr_json, node.path).ndim


def _needs_compaction(node: NodeRecord, rows_per_segment: int) -> bool:
    """Whether merging would change anything: a compacted list has at most one segment
    that is not exactly full (the last piece); a commit's delta segments are rarely full."""
    if node.node_type != ARRAY or len(node.segments) < 2:
        return False
    return sum(1 for s in node.segments if s.rows != rows_per_segment) >= 2


async def compact_branch(
    storage: Storage,
    reader: ObjectReader,
    branch: str,
    rows_per_segment: int,
    *,
    paths: list[str] | None = None,
    progress: Progress | None = None,
    max_attempts: int = 1_000,
    message: str = COMPACTION_MESSAGE,
    metadata: dict[str, object] | None = None,
) -> CompactionSummary:
    """Compact every array of ``branch`` whose segments are not already compacted (or
    only the arrays at ``paths``) and commit the result on the branch (see the module
    docstring), with ``message`` and ``metadata`` (frazil's two keys added)."""
    if not isinstance(rows_per_segment, int) or rows_per_segment < 1:
        raise InvalidInputError("rows_per_segment must be a positive int")
    ref = await read_ref(storage, BRANCH_REF, branch)
    assert ref.record.snapshot_id is not None
    tip = await reader.snapshot(ref.record.snapshot_id, ref.record.checksum)
    wanted = None if paths is None else set(paths)
    todo = [
        n
        for n in tip.nodes
        if (wanted is None or n.path in wanted) and _needs_compaction(n, rows_per_segment)
    ]
    if not todo:
        return CompactionSummary(None, {}, 0, 0)
    total = sum(len(n.segments) for n in todo)
    done = 0

    def loaded_one() -> None:
        nonlocal done
        done += 1
        if progress is not None and (done % 16 == 0 or done == total):
            progress("compact", done, total)

    replacements: list[Replacement] = []
    for node in todo:
        replacements.append(
            await compact_node(reader, node, _ndim(node), rows_per_segment, loaded_one)
        )
        objects = replacements[-1].objects
        await runtime.gather_limited([storage.put(k, b) for k, b in objects])
        replacements[-1] = dataclasses.replace(replacements[-1], objects=[])
    paths_of = {n.node_id: n.path for n in todo}
    result: list[CompactionSummary] = []

    async def attempt(current: Ref, n: int) -> Move | None:
        # the same replacements on the branch as it is now (after a lost race, the
        # objects of the earlier attempt are garbage for ``garbage_collect``)
        assert current.record.snapshot_id is not None
        base = (
            tip
            if current.record.snapshot_id == tip.id
            else await reader.snapshot(current.record.snapshot_id, current.record.checksum)
        )
        nodes, applied = apply_replacements(base.nodes, replacements)
        if not applied:
            result.append(CompactionSummary(None, {}, 0, n))
            return None
        arrays = {paths_of[r.node_id]: (len(r.old), len(r.new)) for r in applied}
        plan = compaction_plan(
            base,
            nodes,
            {
                **(metadata or {}),
                "frazil.compaction": True,
                "frazil.compacted_arrays": sorted(arrays),
            },
            message,
            history=await index_for_child(reader, storage, base),
        )
        await storage.put(*plan.log)
        await storage.put(*plan.objects()[-1])
        reader.snapshots.put(plan.snapshot.id, plan.snapshot)
        result.append(
            CompactionSummary(str(plan.snapshot.id), arrays, sum(r.refs for r in applied), n)
        )
        return Move(plan.snapshot.id, plan.snapshot_checksum)

    await move_branch(storage, branch, attempt, history=reader.parent, tries=max_attempts)
    return result[-1]  # what the last attempt did: the one that landed, or found nothing


async def compact_for_commit(
    reader: ObjectReader, base: Snapshot, touched: set[NodeId], limit: int, rows_per_segment: int
) -> tuple[Snapshot, list[tuple[str, bytes]], list[str]]:
    """For automatic compaction at commit: ``base`` with the segments of every array in
    ``touched`` that has ``limit`` or more segments merged (a commit adds at least one
    more), the new segment objects to write, and the compacted paths. An array whose
    references fill more than half of its segments is left alone (merging would not
    shrink its list much, and would be redone at every commit)."""
    todo = [
        n
        for n in base.nodes
        if n.node_id in touched
        and n.node_type == ARRAY
        and len(n.segments) >= limit
        and len(n.segments) > 2 * max(1, -(-sum(s.rows for s in n.segments) // rows_per_segment))
    ]
    if not todo:
        return base, [], []
    replacements = [await compact_node(reader, n, _ndim(n), rows_per_segment) for n in todo]
    nodes, _ = apply_replacements(base.nodes, replacements)
    objects = [o for r in replacements for o in r.objects]
    return dataclasses.replace(base, nodes=nodes), objects, sorted(n.path for n in todo)
