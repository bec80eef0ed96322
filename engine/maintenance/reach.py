"""Reachability: what a repository's refs reach (every snapshot named by a branch or a live
tag, or an ancestor of one, and every transaction log, manifest segment, history segment
and native chunk such a snapshot refers to), and when an object was made (the time in its
id)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import takewhile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from frazil.format import (
    ChunkKind,
    CommitInfo,
    HistoryId,
    HistorySegmentRef,
    ManifestId,
    ManifestSegment,
    SegmentRef,
    Snapshot,
    SnapshotId,
)
from frazil.format.common import BRANCH_REF, MANIFEST, TAG_REF, decode_parquet
from frazil.format.keys import (
    snapshot_key,
)
from frazil.format.manifest import SCHEMA as MANIFEST_SCHEMA

from .. import runtime
from ..compaction import Progress
from ..errors import FrazilError, InvalidInputError, NotFoundError
from ..history import ancestry
from ..objects import ObjectReader
from ..refs import Ref, list_refs, read_ref
from ..storage.base import Storage

DELETE_BATCH = 1_000
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_LUT = np.full(256, 255, np.uint8)
for _i, _ch in enumerate(_CROCKFORD):
    _LUT[ord(_ch)] = _i
    _LUT[ord(_ch.lower())] = _i


def id_times_ms(ids: list[str]) -> np.ndarray:
    """Creation time (ms since the epoch) of each time-ordered id text, in bulk; -1 for
    text that is not a 20-character id."""
    out = np.full(len(ids), -1, np.int64)
    ok = np.array([len(i) == 20 and i.isascii() for i in ids], bool)
    if not ok.any():
        return out
    good = [i for i, k in zip(ids, ok) if k]
    vals = _LUT[np.frombuffer("".join(good).encode("ascii"), np.uint8).reshape(-1, 20)]
    valid = (vals != 255).all(axis=1)
    ms = np.zeros(len(good), np.int64)
    for c in range(10):  # 50 bits: the 48 time bits and 2 random ones
        ms = (ms << 5) | vals[:, c].astype(np.int64)
    ms >>= 2
    out[np.flatnonzero(ok)] = np.where(valid, ms, -1)
    return out


@dataclass(frozen=True)
class Problem:
    """One thing ``fsck`` found wrong: ``kind`` is ``"missing"``, ``"damaged"`` or
    ``"ref"``; ``key`` the object; ``message`` says what and who refers to it."""

    kind: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.key}: {self.message}"


async def ref_targets(storage: Storage) -> list[tuple[str, Ref]]:
    """Every branch and live tag: (``"branch NAME"`` or ``"tag NAME"``, its ref)."""
    out = []
    for kind, what in ((BRANCH_REF, "branch"), (TAG_REF, "tag")):
        for name in sorted(await list_refs(storage, kind)):
            try:
                out.append((f"{what} {name}", await read_ref(storage, kind, name)))
            except NotFoundError:  # deleted since it was listed
                continue
    return out


async def walk_history(
    reader: ObjectReader, tips: Iterable[SnapshotId], problems: list[Problem] | None = None
) -> dict[SnapshotId, CommitInfo]:
    """Every snapshot reachable from ``tips`` through parent links, with its commit info
    (read through the history index). With ``problems``, unreadable snapshots are recorded
    there instead of raising."""
    seen: dict[SnapshotId, CommitInfo] = {}
    for tip in tips:
        if tip in seen:
            continue
        child: SnapshotId | None = None
        batches = ancestry(reader, tip)
        try:
            async for batch in batches:
                fresh = list(takewhile(lambda i: i.snapshot_id not in seen, batch))
                seen.update((i.snapshot_id, i) for i in fresh)
                child = fresh[-1].snapshot_id if fresh else child
                if len(fresh) < len(batch):  # reached history already walked
                    break
        except FrazilError as e:
            if problems is None:
                raise
            missing = child is not None and seen[child].parent_id or tip
            problems.append(
                Problem(
                    error_kind(e),
                    snapshot_key(missing),
                    str(e) + (f" (parent of snapshot {child})" if child is not None else ""),
                )
            )
        finally:
            await batches.aclose()
    return seen


def error_kind(e: BaseException) -> str:
    return "missing" if isinstance(e, NotFoundError) else "damaged"


async def manifest_rows(reader: ObjectReader, seg: SegmentRef) -> pa.Table:
    """Every row of a segment's manifest object (all its parts), verified, uncached."""
    key, data = await reader.manifest_bytes(seg)

    def decode() -> pa.Table:
        table, _ = decode_parquet(
            data, MANIFEST, key, seg.checksum, MANIFEST_SCHEMA, read_dictionary=("node_id",)
        )
        return table

    return await runtime.in_thread(decode)


def native_rows(table: pa.Table) -> pa.Table:
    return table.filter(pc.equal(table.column("kind"), int(ChunkKind.NATIVE))).select(
        ["chunk_id", "checksum", "length"]
    )


@dataclass
class Reachable:
    """What ``mark`` found: snapshot ids, segments by manifest id, native chunk ids, and
    the history segments the snapshots' indexes name."""

    snapshots: dict[SnapshotId, CommitInfo]
    segments: dict[ManifestId, SegmentRef]
    chunk_ids: pa.Array
    histories: dict[HistoryId, HistorySegmentRef] = field(default_factory=dict)


async def _load_snapshots(
    reader: ObjectReader, sids: Iterable[SnapshotId], checksums: dict[SnapshotId, int | None]
) -> list[Snapshot]:
    return await runtime.gather_limited(
        [reader.snapshot(s, checksums.get(s)) for s in sids], limit=16
    )


async def mark(
    storage: Storage,
    reader: ObjectReader,
    extra_roots: Iterable[SnapshotId] = (),
    progress: Progress | None = None,
) -> Reachable:
    """Everything reachable from refs, and from ``extra_roots`` as far as those exist
    (they may be garbage whose history is already gone). An object reachable from a ref
    that cannot be read raises: nothing can be swept without knowing what it names."""
    refs = await ref_targets(storage)
    tips = [r.record.snapshot_id for _, r in refs if r.record.snapshot_id is not None]
    checksums = {
        r.record.snapshot_id: r.record.checksum for _, r in refs if r.record.snapshot_id is not None
    }
    history = await walk_history(reader, tips)
    strict = set(history)
    history.update(
        await walk_history(reader, [r for r in extra_roots if r not in history], problems=[])
    )

    async def load(sid: SnapshotId) -> Snapshot | None:
        try:
            return await reader.snapshot(sid, checksums.get(sid), decode_in_thread=True)
        except NotFoundError:
            if sid in strict:
                raise
            return None

    segments: dict[ManifestId, SegmentRef] = {}
    histories: dict[HistoryId, HistorySegmentRef] = {}
    optional: set[ManifestId] = set()
    lists: set[tuple[SegmentRef, ...]] = set()  # each array's segment list, once
    for snap in await runtime.gather_limited([load(s) for s in history], limit=16):
        if snap is None:
            continue
        for h in snap.history.segments if snap.history is not None else ():
            histories.setdefault(h.history_id, h)
        for node in snap.nodes:
            if node.segments:
                lists.add(node.segments)
            for seg in node.segments:
                if seg.manifest_id not in segments and snap.id not in strict:
                    optional.add(seg.manifest_id)
                elif snap.id in strict:
                    optional.discard(seg.manifest_id)
                segments.setdefault(seg.manifest_id, seg)

    def skip(seg: SegmentRef, e: FrazilError) -> bool:
        # an in-flight commit's segment may be gone: what older segments name stays
        return isinstance(e, NotFoundError) and seg.manifest_id in optional

    ids = await live_chunk_ids(reader, lists, skip, progress)
    return Reachable(history, segments, ids, histories)


_BATCH_ROWS = 1 << 21  # list rows resolved at once: bounds the memory of marking


async def live_chunk_ids(
    reader: ObjectReader,
    lists: set[tuple[SegmentRef, ...]],
    skip: Callable[[SegmentRef, FrazilError], bool],
    progress: Progress | None = None,
) -> pa.Array:
    """The native chunk ids the live references of segment ``lists`` name (unique): a
    reference a newer segment of its list shadows keeps nothing alive. A segment that
    cannot be read raises, unless ``skip`` says to go on without it.

    Lists are resolved in batches of about ``_BATCH_ROWS`` rows, each with one sort:
    every row of every list in the batch, ordered by (list, coordinate, age), the first
    of each (list, coordinate) being the live one."""

    async def segment(seg: SegmentRef) -> ManifestSegment | None:
        try:
            return await reader.manifest(seg)
        except FrazilError as e:
            if skip(seg, e):
                return None
            raise

    parts: list[pa.Array] = []
    done = 0
    batch: list[tuple[SegmentRef, ...]] = []
    rows = 0
    for i, refs in enumerate(sorted(lists, key=lambda r: [str(s.manifest_id) for s in r])):
        batch.append(refs)
        rows += sum(s.rows for s in refs)
        if rows < _BATCH_ROWS and i + 1 < len(lists):
            continue
        distinct = {(s.manifest_id, s.row_offset): s for refs in batch for s in refs}
        loaded = dict(
            zip(
                distinct,
                await runtime.gather_limited([segment(s) for s in distinct.values()], limit=16),
            )
        )
        parts.extend(await runtime.in_thread(_batch_winners, batch, loaded))
        done += len(batch)
        if progress is not None:
            progress("mark", done, len(lists))
        batch, rows = [], 0
    if not parts:
        return pa.array([], pa.string())
    return pc.unique(pa.chunked_array(parts, pa.string()).combine_chunks())


def _batch_winners(
    batch: list[tuple[SegmentRef, ...]],
    loaded: dict[tuple[ManifestId, int], ManifestSegment | None],
) -> list[pa.Array]:
    """The native chunk ids of the live rows of each list in ``batch``, grouped by the
    number of dimensions (one sort per group)."""
    keys = [k for k, m in loaded.items() if m is not None]
    where = {k: n for n, k in enumerate(keys)}
    segs = [loaded[k] for k in keys]
    starts = np.cumsum([0, *(len(m) for m in segs)])  # type: ignore[arg-type]
    out: list[pa.Array] = []
    by_ndim: dict[int, list[tuple[int, list[int]]]] = {}
    for li, refs in enumerate(batch):
        present = [
            where[(s.manifest_id, s.row_offset)]
            for s in refs
            if (s.manifest_id, s.row_offset) in where
        ]
        if present:
            ndim = segs[present[0]].coords.shape[1]  # type: ignore[union-attr]
            by_ndim.setdefault(ndim, []).append((li, present))
    if not segs:
        return out
    kinds = np.concatenate([m.kinds for m in segs])  # type: ignore[union-attr]
    chunk_ids = pa.concat_arrays(
        [m.table.column("chunk_id").combine_chunks() for m in segs]  # type: ignore[union-attr]
    )
    for ndim, members in by_ndim.items():
        gidx, lid, age, coords = [], [], [], []
        for li, present in members:
            for a, n in enumerate(present):
                size = int(starts[n + 1] - starts[n])
                gidx.append(np.arange(starts[n], starts[n + 1]))
                lid.append(np.full(size, li, np.int64))
                age.append(np.full(size, a, np.int32))
                coords.append(segs[n].coords)  # type: ignore[union-attr]
        g = np.concatenate(gidx)
        c = np.concatenate(coords).reshape(len(g), ndim)
        lids = np.concatenate(lid)
        order = np.lexsort((np.concatenate(age), *[c[:, d] for d in range(ndim - 1, -1, -1)], lids))
        first = np.ones(len(order), bool)
        if len(order) > 1:
            same_list = lids[order][1:] == lids[order][:-1]
            same_coord = (c[order][1:] == c[order][:-1]).all(axis=1) if ndim else True
            first[1:] = ~(same_list & same_coord)
        live = np.unique(g[order[first]])
        live = live[kinds[live] == int(ChunkKind.NATIVE)]
        out.append(pc.unique(chunk_ids.take(pa.array(live))))
    return out


def cutoff_ms(when: dt.datetime) -> int:
    if not isinstance(when, dt.datetime) or when.tzinfo is None:
        raise InvalidInputError(
            f"the cutoff must be a timezone-aware datetime (e.g. "
            f"datetime.now(UTC) - timedelta(days=7)), got {when!r}"
        )
    return int(when.timestamp() * 1000)


def unique_chunks(natives: list[pa.Table]) -> pa.Table:
    """One row per native chunk id (the first manifest that names it)."""
    schema = pa.schema(
        [
            ("chunk_id", pa.string()),
            ("checksum", pa.uint64()),
            ("length", pa.int64()),
            ("manifest", pa.string()),
        ]
    )
    if not natives:
        return schema.empty_table()
    table = pa.concat_tables(natives).combine_chunks()
    table = table.append_column("_i", pa.array(np.arange(table.num_rows)))
    first = table.group_by("chunk_id", use_threads=False).aggregate([("_i", "min")])
    return table.take(first.column("_i_min")).select(schema.names).cast(schema)
