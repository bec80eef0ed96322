"""Commits: ``prepare_commit``, a pure function from (base snapshot, staged changes) to the
objects to write, and ``commit``, the loop that writes them and moves the branch.

``prepare_commit`` does no I/O. It returns the manifest segments, transaction log and
snapshot to write, in the order they must be written, so the loop can call it again on a
new base. ``commit`` moves the branch through ``refs.move_branch`` (as every write that
moves a branch does), rebasing the staged changes onto the branch's new tip whenever it
moved, and settles an unknown outcome by looking for its own snapshot in history.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from frazil.format import (
    ARRAY,
    CommitInfo,
    HistoryIndex,
    ManifestId,
    NodeChange,
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
from frazil.format import manifest as manifest_fmt
from frazil.format import txlog as tx
from frazil.format.common import BRANCH_REF, numpy_of
from frazil.format.filters import build_filter
from frazil.format.keys import manifest_key, snapshot_key, transaction_log_key
from frazil.format.manifest import ROW_SCHEMA, ChunkRef, coord_bounds, encode_manifest_table
from frazil.format.snapshot import INLINE_MAX_ROWS, inline_rows

from .changeset import ChangeSet, ChunkTable
from .errors import ConflictError
from .refs import Move, Ref, move_branch, read_ref
from .storage.base import Storage


@dataclass(frozen=True)
class CommitPlan:
    """Objects to write (key, bytes): ``manifests`` first, then ``log`` and ``snapshot``."""

    snapshot: Snapshot
    snapshot_bytes: bytes
    snapshot_checksum: int
    manifests: list[tuple[str, bytes]]
    log: tuple[str, bytes]
    transaction_log: TransactionLog | None = None  # what ``log`` encodes, for the cache

    def objects(self) -> list[tuple[str, bytes]]:
        return [*self.manifests, self.log, (snapshot_key(self.snapshot.id), self.snapshot_bytes)]


def segment_ref(
    manifest_id: ManifestId,
    digest: int,
    size: int,
    coords: np.ndarray,
    row_offset: int = 0,
    rows: pa.Table | None = None,
    inline: bytes | None = None,
) -> SegmentRef:
    """The snapshot's entry for a segment of ``coords`` (sorted, n >= 1) in a manifest
    object of checksum ``digest`` and ``size`` bytes: extents, a membership filter where
    one helps (the segment is small, and does not fill its bounding box), and, for a
    segment of at most ``INLINE_MAX_ROWS`` ``rows`` (its manifest rows, in the order of
    ``coords``), a copy of what garbage collection reads of it (or ``inline``, that copy
    made by the caller)."""
    lo, hi = (b.tolist() for b in coord_bounds(coords))
    cells = math.prod(h - low + 1 for low, h in zip(lo, hi))
    return SegmentRef(
        manifest_id,
        digest,
        size,
        len(coords),
        tuple(lo),
        tuple(hi),
        row_offset,
        build_filter(coords) if len(coords) < cells else None,
        _inline(coords, rows) if rows is not None and len(coords) <= INLINE_MAX_ROWS else inline,
    )


def _inline(coords: np.ndarray, rows: pa.Table) -> bytes:
    kinds = numpy_of(rows.column("kind"))
    return inline_rows(coords.reshape(len(coords), -1), kinds, rows.column("chunk_id").to_pylist())


def segment_object(
    node_id: NodeId, coords: np.ndarray, rows: pa.Table
) -> tuple[SegmentRef, tuple[str, bytes]]:
    """One (sorted coords, rows) part encoded as a manifest segment object: its ref and
    (key, bytes)."""
    mid = ManifestId.new()
    data = encode_manifest_table(mid, node_id, coords, rows)
    return segment_ref(mid, checksum(data), len(data), coords, 0, rows), (manifest_key(mid), data)


def build_segments(
    node_id: NodeId, parts: Iterable[tuple[np.ndarray, pa.Table]]
) -> tuple[list[SegmentRef], list[tuple[str, bytes]], np.ndarray | None]:
    """Encode each (sorted coords, rows) part as one manifest segment; also returns all
    the coordinates (for the transaction log), or None if there were none."""
    segs: list[SegmentRef] = []
    objects: list[tuple[str, bytes]] = []
    all_coords: list[np.ndarray] = []
    for part, rows in parts:
        ref, obj = segment_object(node_id, part, rows)
        segs.append(ref)
        objects.append(obj)
        all_coords.append(part)
    return segs, objects, (np.concatenate(all_coords) if all_coords else None)


RegionSizes = Callable[[NodeRecord], tuple[int, ...] | None]
"""An array's manifest split sizes (chunks per region per dimension, 0: not split), or
None: ``ManifestSplittingConfig.region_sizes`` for the repository's config."""


def split_by_region(
    coords: np.ndarray, rows: pa.Table, sizes: tuple[int, ...]
) -> Iterator[tuple[np.ndarray, pa.Table]]:
    """(sorted coords, rows) cut into one part per region of the chunk grid (``sizes``,
    chunks per region per dimension, 0: not cut), each still sorted: one linear region
    id per row and one stable sort, no loop over chunks."""
    if len(coords) == 0 or coords.ndim != 2 or coords.shape[1] != len(sizes):
        yield coords, rows
        return
    cut = np.array([z if z else np.iinfo(np.int64).max for z in sizes], dtype=np.int64)
    keys = coords.astype(np.int64, copy=False) // cut
    span = keys.max(axis=0) + 1
    if math.prod(int(x) for x in span) >= 1 << 62:  # ids would overflow: number them
        ids = np.unique(keys, axis=0, return_inverse=True)[1].reshape(-1)
    else:
        ids = np.ravel_multi_index(tuple(keys.T), tuple(int(x) for x in span))
    order = np.argsort(ids, kind="stable")  # stable: each region keeps the sorted order
    sorted_ids = ids[order]
    starts = [0, *(np.flatnonzero(np.diff(sorted_ids)) + 1).tolist(), len(ids)]
    if len(starts) == 2:  # one region
        yield coords, rows
        return
    for lo, hi in zip(starts[:-1], starts[1:]):
        idx = order[lo:hi]
        yield coords[idx], rows.take(pa.array(idx))


def same_region(seg: SegmentRef, sizes: tuple[int, ...]) -> tuple[int, ...] | None:
    """The region key of a segment lying in one region of ``sizes``, else None."""
    key = []
    for lo, hi, z in zip(seg.extent_min, seg.extent_max, sizes):
        if z and lo // z != hi // z:
            return None
        key.append(lo // z if z else 0)
    return tuple(key)


# A commit packs the deltas of arrays that changed at most PACK_ROWS chunks into shared
# manifest objects of at most PACK_OBJECT_ROWS rows, so its cost follows the number of
# chunks it changed rather than the number of arrays: a commit touching one chunk in each of
# 100 arrays writes one manifest object. Reading an array then loads the packed object
# (small by construction), whose other segments are cached for the other arrays.
PACK_ROWS = 1024
PACK_OBJECT_ROWS = 16384


@dataclass(frozen=True)
class SmallDeltas:
    """The small deltas of many arrays in one table: part ``i`` is array ``node_ids[i]``,
    its sorted coordinates ``coords[i]`` and the next ``len(coords[i])`` rows of ``rows``
    (manifest rows without ``node_id`` and ``coord``)."""

    node_ids: list[NodeId]
    coords: list[np.ndarray]
    rows: pa.Table

    @classmethod
    def of_parts(cls, parts: list[tuple[NodeId, np.ndarray, pa.Table]]) -> SmallDeltas:
        rows = pa.concat_tables([r for _, _, r in parts]) if parts else ROW_SCHEMA.empty_table()
        return cls([n for n, _, _ in parts], [c for _, c, _ in parts], rows)


def small_deltas(tables: list[tuple[NodeId, ChunkTable, bool]]) -> SmallDeltas | None:
    """The staged refs of ``tables`` (node id, chunk table holding no virtual blocks nor
    spilled segments, whether to drop its tombstones) as ``SmallDeltas``, each array's rows
    sorted by coordinate, built with one Arrow table and one sort for all of them (an
    array left with no rows is left out). None if a coordinate has no packed key."""
    count = len(tables)
    sizes = np.zeros((3, count), np.int64)  # per table: inline, refs, tombstones
    inline_keys: list[Any] = []
    ref_keys: list[Any] = []
    dead_keys: list[Any] = []
    inline_vals: list[bytes] = []
    ref_vals: list[ChunkRef] = []
    for j, (_, table, drop) in enumerate(tables):
        inline_keys.extend(table.inline)
        inline_vals.extend(table.inline.values())
        ref_keys.extend(table.refs)
        ref_vals.extend(table.refs.values())
        if not drop:
            dead_keys.extend(table.deleted)
        sizes[:, j] = len(table.inline), len(table.refs), 0 if drop else len(table.deleted)
    which = np.arange(count, dtype=np.int64)
    node = np.concatenate([np.repeat(which, sizes[i]) for i in range(3)])
    try:
        keys = np.fromiter(
            (k for ks in (inline_keys, ref_keys, dead_keys) for k in ks), np.int64, len(node)
        )
    except (TypeError, ValueError):  # a tuple key: a coordinate too large to pack
        return None
    order = np.lexsort((keys, node))  # by array, then coordinate (packed keys sort so)
    node, keys = node[order], keys[order]
    built = [
        t
        for n, t in (
            (len(inline_vals), lambda: manifest_fmt.inline_rows(inline_vals)),
            (len(ref_vals), lambda: manifest_fmt.ref_rows(ref_vals)),
            (len(dead_keys), lambda: manifest_fmt.tombstone_rows(len(dead_keys))),
        )
        if n
        for t in [t()]
    ]
    rows = pa.concat_tables(built).take(pa.array(order)) if built else ROW_SCHEMA.empty_table()
    counts = np.bincount(node, minlength=count)
    ndims = np.array([t.ndim for _, t, _ in tables], np.int64)
    coords: list[np.ndarray | None] = [None] * count
    for d in np.unique(ndims[counts > 0]).tolist():
        in_group = np.flatnonzero((ndims == d) & (counts > 0))
        mine = keys[ndims[node] == d]
        bits = 63 // d if d else 0
        decoded = (
            np.stack([(mine >> (bits * (d - 1 - i))) & ((1 << bits) - 1) for i in range(d)], 1)
            if d
            else np.zeros((len(mine), 0), np.int64)
        )
        ends = np.cumsum(counts[in_group]).tolist()
        for j, lo, hi in zip(in_group.tolist(), [0, *ends[:-1]], ends):
            coords[j] = decoded[lo:hi]
    kept = [j for j in range(count) if counts[j]]
    return SmallDeltas([tables[j][0] for j in kept], [c for c in coords if c is not None], rows)


def pack_segments(deltas: SmallDeltas) -> tuple[dict[NodeId, SegmentRef], list[tuple[str, bytes]]]:
    """Encode small deltas into shared manifest objects of at most ``PACK_OBJECT_ROWS``
    rows (each delta whole in one): their segment refs and (key, bytes)."""
    refs: dict[NodeId, SegmentRef] = {}
    objects: list[tuple[str, bytes]] = []
    counts = [len(c) for c in deltas.coords]
    kinds = numpy_of(deltas.rows.column("kind")) if deltas.rows.num_rows else np.zeros(0, np.int8)
    small = [n <= INLINE_MAX_ROWS for n in counts]
    ids = deltas.rows.column("chunk_id").to_pylist() if any(small) else []
    starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).tolist()

    def flush(first: int, last: int) -> None:
        mid = ManifestId.new()
        row0 = starts[first]
        data = manifest_fmt.encode_manifest_rows(
            mid,
            deltas.node_ids[first:last],
            deltas.coords[first:last],
            deltas.rows.slice(row0, starts[last] - row0),
        )
        digest = checksum(data)
        for j in range(first, last):
            coords, lo, hi = deltas.coords[j], starts[j], starts[j + 1]
            inline = inline_rows(coords, kinds[lo:hi], ids[lo:hi]) if small[j] else None
            ref = segment_ref(mid, digest, len(data), coords, lo - row0, inline=inline)
            refs[deltas.node_ids[j]] = ref
        objects.append((manifest_key(mid), data))

    first = 0
    for j in range(len(counts)):
        if j > first and starts[j + 1] - starts[first] > PACK_OBJECT_ROWS:
            flush(first, j)
            first = j
    if first < len(counts):
        flush(first, len(counts))
    return refs, objects


def prepare_commit(
    base: Snapshot,
    changes: ChangeSet,
    *,
    message: str,
    metadata: dict[str, Any],
    split_rows: int,
    snapshot_id: SnapshotId | None = None,
    now: dt.datetime | None = None,
    history: HistoryIndex | None = None,
    region_sizes: RegionSizes | None = None,
) -> CommitPlan:
    """The objects of a commit of ``changes`` on ``base`` (``history``: the new snapshot's
    history index, from ``frazil.history.index_for_child``). Arrays that
    ``region_sizes`` splits get one segment, in its own object, per region written."""
    sid = snapshot_id or SnapshotId.new()
    nodes = {n.path: n for n in base.nodes}
    base_by_id = {n.node_id: n for n in base.nodes}
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
            # a moved node (its id is in the base at another path) keeps the base's
            # segments, read now: on a rebase, the new base's (see "Moves" in SPEC.md)
            moved = base_by_id.get(staged.node_id)
            segments = moved.segments if moved is not None else ()
            nodes[path] = dataclasses.replace(staged, segments=segments)
            kind = tx.NEW_ARRAY if staged.node_type == ARRAY else tx.NEW_GROUP
            log.append(NodeChange(kind, path, staged.node_id))
        elif staged.zarr_json != old.zarr_json:
            nodes[path] = dataclasses.replace(old, zarr_json=staged.zarr_json)
            kind = tx.UPDATED_ARRAY if old.node_type == ARRAY else tx.UPDATED_GROUP
            log.append(NodeChange(kind, path, old.node_id))

    base_ids = {n.node_id for n in base.nodes}
    by_id = {n.node_id: n for n in nodes.values()}
    manifests: list[tuple[str, bytes]] = []
    small: list[tuple[NodeId, ChunkTable, bool]] = []
    small_rows = min(PACK_ROWS, split_rows)
    for node_id, table in changes.chunks.items():
        node = by_id.get(node_id)
        if node is None or node.node_type != ARRAY or not len(table):
            continue
        spilled = tuple(reversed(table.spilled))  # written while staging, newest first
        if spilled:
            node = nodes[node.path] = dataclasses.replace(node, segments=(*spilled, *node.segments))
        # a new array has no older refs for tombstones to hide (nor do spilled ones)
        drop = node_id not in base_ids and not spilled
        sizes = region_sizes(node) if region_sizes is not None else None
        if sizes is None and not spilled and not table.blocks and len(table) <= small_rows:
            small.append((node_id, table, drop))  # packed below, all at once
            continue
        if sizes is None:
            parts = list(table.segments(split_rows, drop_tombstones=drop))
        else:  # regions first, then each within split_rows
            parts = [
                (c[i : i + split_rows], rows.slice(i, split_rows))
                for whole in table.segments(1 << 62, drop_tombstones=drop)
                for c, rows in split_by_region(*whole, sizes)
                for i in range(0, len(c), split_rows)
            ]
        segs, objects, coords = build_segments(node_id, parts)
        if coords is None and not spilled:
            continue
        manifests.extend(objects)
        nodes[node.path] = dataclasses.replace(node, segments=(*segs, *node.segments))
        log.append(NodeChange(tx.CHUNKS, node.path, node_id, coords, spilled))
    deltas = small_deltas(small)
    if deltas is None:  # a coordinate too large to pack: one table per array
        deltas = SmallDeltas.of_parts(
            [
                (node_id, *part)
                for node_id, table, drop in small
                for part in table.segments(split_rows, drop_tombstones=drop)
            ]
        )
    packed, objects = pack_segments(deltas)
    manifests.extend(objects)
    for node_id, coords in zip(deltas.node_ids, deltas.coords):
        node = by_id[node_id]
        nodes[node.path] = dataclasses.replace(
            node, segments=(packed[node_id], *nodes[node.path].segments)
        )
        log.append(NodeChange(tx.CHUNKS, node.path, node_id, coords))

    txlog = TransactionLog(sid, base.id, tuple(log))
    log_bytes = encode_transaction_log(txlog)
    info = CommitInfo(
        snapshot_id=sid,
        parent_id=base.id,
        written_at=now or dt.datetime.now(dt.UTC),
        message=message,
        metadata=metadata,
        transaction_log_checksum=checksum(log_bytes),
    )
    snapshot = Snapshot(info, tuple(sorted(nodes.values(), key=lambda n: n.path)), history)
    snap_bytes = encode_snapshot(snapshot)
    return CommitPlan(
        snapshot,
        snap_bytes,
        checksum(snap_bytes),
        manifests,
        (transaction_log_key(sid), log_bytes),
        txlog,
    )


def initial_snapshot(now: dt.datetime | None = None) -> CommitPlan:
    """The first snapshot of a new repository: no nodes, no parent."""
    sid = SnapshotId.new()
    log_bytes = encode_transaction_log(TransactionLog(sid, None, ()))
    info = CommitInfo(
        sid, None, now or dt.datetime.now(dt.UTC), "Repository initialized", {}, checksum(log_bytes)
    )
    snapshot = Snapshot(info, ())
    data = encode_snapshot(snapshot)
    return CommitPlan(snapshot, data, checksum(data), [], (transaction_log_key(sid), log_bytes))


# -- the commit loop --------------------------------------------------------------------------
CATCH_UP_ROUNDS = 8
"""At most this many rebases in one attempt, while the branch keeps moving."""


class Committer(Protocol):
    """What the commit loop needs from a session."""

    def base_id(self) -> SnapshotId:
        """The snapshot the staged changes are relative to now."""
        ...

    async def prepare(self, attempts: int) -> CommitPlan:
        """The plan for the staged changes on the current base, its objects written
        (``attempts``: this commit's attempt number, for its metadata)."""
        ...

    async def rebase_onto(self, ref: Ref) -> None:
        """Move the staged changes onto the tip ``ref`` names (conflicts raise)."""
        ...

    async def find_landed(self, tip: SnapshotId) -> CommitPlan | None:
        """A plan of ours with an unknown outcome that is in history from ``tip``."""
        ...

    def remember(self, plan: CommitPlan) -> None:
        """``plan``'s swap is about to be tried: its outcome may become unknown."""
        ...

    def forget(self, plan: CommitPlan) -> None:
        """``plan``'s swap definitely lost."""
        ...


async def commit(
    storage: Storage,
    branch: str,
    committer: Committer,
    *,
    rebase: bool,
    tries: int,
    history: Callable[[SnapshotId], Awaitable[SnapshotId | None]],
) -> CommitPlan:
    """Write the committer's changes and move ``branch`` to them; returns the plan that
    landed. When the branch moved since the changes' base: without ``rebase``,
    ``ConflictError``; with it, rebase onto the new tip (and again while it keeps moving,
    up to ``CATCH_UP_ROUNDS`` times, so that the objects are written on the freshest
    tip), giving up after ``tries`` attempts."""
    rebases = 0
    plans: dict[SnapshotId, CommitPlan] = {}
    found: list[CommitPlan] = []

    async def attempt(ref: Ref, n: int) -> Move | None:
        nonlocal rebases
        tip = ref.record.snapshot_id
        assert tip is not None
        landed = await committer.find_landed(tip)
        if landed is not None:  # an earlier attempt (or commit() call) did land
            found.append(landed)
            return None
        base_ref = ref  # the ref naming the plan's base: the one to swap from
        for rounds in range(CATCH_UP_ROUNDS):
            base = committer.base_id()
            if tip == base:
                base_ref = ref
                break
            if not rebase:
                raise ConflictError(
                    f"branch {branch!r} moved: this session started at snapshot {base}, but "
                    f"the branch is now at {tip}; rebase (commit(..., rebase_with="
                    "ConflictDetector())) or start a new session",
                    expected_parent=str(base),
                    actual_parent=str(tip),
                )
            if rounds == 0:
                if rebases + 1 >= tries:
                    raise ConflictError(
                        f"gave up committing to {branch!r} after {rebases + 1} attempts: "
                        "the branch kept moving",
                        expected_parent=str(base),
                        actual_parent=str(tip),
                    )
                rebases += 1
            await committer.rebase_onto(ref)
            base_ref = ref
            ref = await read_ref(storage, BRANCH_REF, branch)
            tip = ref.record.snapshot_id
            assert tip is not None
        # (still moving after every round: the plan goes on the last tip rebased onto,
        # and its swap fails if the branch moved on, for the next attempt to rebase)
        plan = await committer.prepare(rebases + 1)
        plans[plan.snapshot.id] = plan
        committer.remember(plan)
        return Move(
            plan.snapshot.id,
            plan.snapshot_checksum,
            expected=base_ref,
            forget=lambda: committer.forget(plan),
        )

    moved = await move_branch(storage, branch, attempt, history=history, tries=1 << 62)
    if moved.move is None:
        return found[0]
    assert moved.move.snapshot_id is not None
    return plans[moved.move.snapshot_id]
