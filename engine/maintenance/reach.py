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
from ..merging import live_rows
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
            return await reader.snapshot(sid, checksums.get(sid))
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


async def live_chunk_ids(
    reader: ObjectReader,
    lists: set[tuple[SegmentRef, ...]],
    skip: Callable[[SegmentRef, FrazilError], bool],
    progress: Progress | None = None,
) -> pa.Array:
    """The native chunk ids the live references of segment ``lists`` name (unique): a
    reference a newer segment of its list shadows keeps nothing alive. A segment that
    cannot be read raises, unless ``skip`` says to go on without it."""
    done = 0

    async def segment(seg: SegmentRef) -> ManifestSegment | None:
        try:
            return await reader.manifest(seg)
        except FrazilError as e:
            if skip(seg, e):
                return None
            raise

    async def winners(refs: tuple[SegmentRef, ...]) -> pa.Array:
        nonlocal done
        loaded = [m for m in await runtime.gather_limited([segment(s) for s in refs]) if m]
        done += 1
        if progress is not None and (done % 64 == 0 or done == len(lists)):
            progress("mark", done, len(lists))
        if not loaded:
            return pa.array([], pa.string())
        keep = live_rows(loaded, loaded[0].coords.shape[1])
        rows = pa.concat_tables([m.table.select(["kind", "chunk_id"]) for m in loaded])
        rows = rows.take(pa.array(keep))
        native = rows.filter(pc.equal(rows.column("kind"), int(ChunkKind.NATIVE)))
        return pc.unique(native.column("chunk_id").combine_chunks())

    parts = await runtime.gather_limited([winners(refs) for refs in lists], limit=8)
    if not parts:
        return pa.array([], pa.string())
    return pc.unique(pa.chunked_array(parts, pa.string()).combine_chunks())


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
