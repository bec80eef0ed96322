"""Reachability: what a repository's refs reach (every snapshot named by a branch or a live
tag, or an ancestor of one, and every transaction log, manifest segment, history segment
and native chunk such a snapshot refers to), and when an object was made (the time in its
id)."""

from __future__ import annotations

import datetime as dt
import math
import os
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
    SegmentRef,
    Snapshot,
    SnapshotId,
)
from frazil.format.common import BRANCH_REF, MANIFEST, TAG_REF, decode_parquet, verify_checksum
from frazil.format.keys import (
    snapshot_key,
)
from frazil.format.manifest import REQUIRED_SCHEMA as MANIFEST_SCHEMA
from frazil.format.manifest import ChunkIdRows, decode_manifest_chunk_ids, with_optional_columns
from frazil.format.snapshot import decode_inline_rows

from .. import runtime
from ..compaction import Progress
from ..errors import FormatError, FrazilError, InvalidInputError, NotFoundError
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
        return with_optional_columns(table, key)

    return await runtime.in_thread(decode)


def native_rows(table: pa.Table) -> pa.Table:
    return table.filter(pc.equal(table.column("kind"), int(ChunkKind.NATIVE))).select(
        ["chunk_id", "checksum", "length", "block_size", "block_checksums"]
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

    segments: dict[ManifestId, SegmentRef] = {}
    histories: dict[HistoryId, HistorySegmentRef] = {}
    optional: set[ManifestId] = set()
    lists: set[tuple[SegmentRef, ...]] = set()  # each array's segment list, once
    order = list(history)
    missing_ok = history.keys() - strict
    for start in range(0, len(order), _SNAPSHOT_WINDOW):
        window = order[start : start + _SNAPSHOT_WINDOW]
        for snap in await reader.snapshot_segments(window, checksums, missing_ok):
            sid = snap.info.snapshot_id
            for h in snap.history_segments:
                histories.setdefault(h.history_id, h)
            for segs in snap.lists:
                lists.add(segs)
                for seg in segs:
                    if seg.manifest_id not in segments and sid not in strict:
                        optional.add(seg.manifest_id)
                    elif sid in strict:
                        optional.discard(seg.manifest_id)
                    segments.setdefault(seg.manifest_id, seg)

    def skip(seg: SegmentRef, e: FrazilError) -> bool:
        # an in-flight commit's segment may be gone: what older segments name stays
        return isinstance(e, NotFoundError) and seg.manifest_id in optional

    ids = await live_chunk_ids(reader, lists, skip, progress)
    return Reachable(history, segments, ids, histories)


_SNAPSHOT_WINDOW = 256  # snapshots read at once: bounds the memory of marking
_DECODE_BATCH = 16  # objects decoded per trip to the pool
_DECODERS = os.cpu_count() or 2  # decoding trips at once: one per core
_BATCH_ROWS = 1 << 21  # segment rows read at once: bounds the memory of marking
SegmentKey = tuple[ManifestId, int]  # (manifest object, first row)
_EMPTY = np.zeros(0, np.int64)


class SegmentTree:
    """Segment lists as a tree read oldest segment first. A commit's list is its parent's
    with a new segment in front (merges replace a few of the newest), so lists share
    their older ends: the tree holds each shared part once.

    Node ``i`` stands for one list suffix: ``segs[i]`` its newest segment, ``parent[i]``
    the node of the rest (-1: none), ``ends[i]`` whether some list is exactly that suffix.
    Parents come before their children."""

    def __init__(self, lists: Iterable[tuple[SegmentRef, ...]]) -> None:
        self.segs: list[SegmentKey] = []
        self.parent: list[int] = []
        self.ends: list[bool] = []
        self.refs: dict[SegmentKey, SegmentRef] = {}
        index: dict[tuple[int, SegmentKey], int] = {}
        for refs in lists:
            at = -1
            for seg in reversed(refs):
                key = (seg.manifest_id, seg.row_offset)
                known = self.refs.setdefault(key, seg)
                if known.inline is None and seg.inline is not None:
                    self.refs[key] = seg  # its rows are at hand: no manifest read
                node = index.get((at, key))
                if node is None:
                    node = index[(at, key)] = len(self.segs)
                    self.segs.append(key)
                    self.parent.append(at)
                    self.ends.append(False)
                at = node
            if at >= 0:
                self.ends[at] = True

    def batches(self, max_rows: int) -> list[list[int]]:
        """The nodes in groups of whole subtrees of about ``max_rows`` segment rows each
        (every node after its parent)."""
        top: list[int] = []
        members: dict[int, list[int]] = {}
        for node, parent in enumerate(self.parent):
            top.append(node if parent < 0 else top[parent])
            members.setdefault(top[node], []).append(node)
        out: list[list[int]] = []
        batch: list[int] = []
        seen: set[SegmentKey] = set()
        rows = 0
        for nodes in members.values():
            batch.extend(nodes)
            for key in (self.segs[n] for n in nodes):
                if key not in seen:
                    seen.add(key)
                    rows += self.refs[key].rows
            if rows >= max_rows:
                out.append(sorted(batch))
                batch, seen, rows = [], set(), 0
        if batch:
            out.append(sorted(batch))
        return out


async def live_chunk_ids(
    reader: ObjectReader,
    lists: set[tuple[SegmentRef, ...]],
    skip: Callable[[SegmentRef, FrazilError], bool],
    progress: Progress | None = None,
) -> pa.Array:
    """The native chunk ids the live references of segment ``lists`` name (unique): a
    reference a newer segment of its list shadows keeps nothing alive. A segment that
    cannot be read raises, unless ``skip`` says to go on without it.

    The lists are read as a ``SegmentTree``: each distinct segment is read once (only its
    coordinates, kinds and chunk ids), and each shared list suffix is resolved once, so
    the cost follows the distinct segments and suffixes, not lists x segments (see
    ``_tree_live_ids``)."""
    tree = SegmentTree(sorted(lists, key=lambda r: [str(s.manifest_id) for s in r]))
    parts: list[pa.Array] = []
    batches = tree.batches(_BATCH_ROWS)
    for done, nodes in enumerate(batches, 1):
        wanted = {tree.segs[n]: tree.refs[tree.segs[n]] for n in nodes}

        rows = await read_chunk_id_rows(reader, wanted, skip)
        found = await runtime.in_thread(_tree_live_ids, tree, nodes, rows)
        if found is not None:
            parts.append(found)
        if progress is not None:
            progress("mark", done, len(batches))
    if not parts:
        return pa.array([], pa.string())
    return pc.unique(pa.chunked_array(parts, pa.string()).combine_chunks())


async def read_chunk_id_rows(
    reader: ObjectReader,
    segments: dict[SegmentKey, SegmentRef],
    skip: Callable[[SegmentRef, FrazilError], bool],
) -> dict[SegmentKey, ChunkIdRows | None]:
    """The coordinates, kinds and chunk ids of ``segments``: from the copy of its rows a
    small segment's ref carries (``SegmentRef.inline``, verified with its snapshot), else
    from its manifest object, each read and verified once (None for a segment ``skip``
    lets go)."""
    by_object: dict[ManifestId, list[SegmentRef]] = {}
    inline: list[SegmentRef] = []
    for seg in segments.values():
        if seg.inline is not None:
            inline.append(seg)
        else:
            by_object.setdefault(seg.manifest_id, []).append(seg)

    async def fetch(segs: list[SegmentRef]) -> tuple[list[SegmentRef], str, bytes] | None:
        try:
            return (segs, *await reader.manifest_bytes(segs[0]))
        except FrazilError as e:
            if not skip(segs[0], e):
                raise
            return None

    found: dict[SegmentKey, ChunkIdRows | None] = {
        (s.manifest_id, s.row_offset): None for s in segments.values()
    }
    if inline:
        found.update(await runtime.in_thread(_inline_rows, inline))
    fetched = [
        f for f in await runtime.gather_limited([fetch(v) for v in by_object.values()], 32) if f
    ]
    step = _DECODE_BATCH
    batches = [fetched[i : i + step] for i in range(0, len(fetched), step)]
    for part in await runtime.gather_limited(  # decoded a batch per trip to the pool
        [runtime.in_thread(_decode_batch, b) for b in batches], limit=_DECODERS
    ):
        for segs, rows in part:
            if isinstance(rows, FrazilError):
                if not skip(segs[0], rows):
                    raise rows
            else:
                found.update(rows)
    return found


def _inline_rows(segs: list[SegmentRef]) -> dict[SegmentKey, ChunkIdRows]:
    out: dict[SegmentKey, ChunkIdRows] = {}
    for seg in segs:
        assert seg.inline is not None
        what = f"the inline rows of segment {seg.manifest_id} (row {seg.row_offset})"
        coords, kinds, ids = decode_inline_rows(seg.inline, seg.rows, what)
        out[(seg.manifest_id, seg.row_offset)] = ChunkIdRows(
            coords, kinds, pa.array(ids, pa.string())
        )
    return out


def _decode_batch(
    batch: list[tuple[list[SegmentRef], str, bytes]],
) -> list[tuple[list[SegmentRef], dict[SegmentKey, ChunkIdRows] | FrazilError]]:
    out: list[tuple[list[SegmentRef], dict[SegmentKey, ChunkIdRows] | FrazilError]] = []
    for segs, key, data in batch:
        try:
            out.append((segs, _object_rows(segs, key, data)))
        except FrazilError as e:
            out.append((segs, e))
    return out


def _object_rows(segs: list[SegmentRef], key: str, data: bytes) -> dict[SegmentKey, ChunkIdRows]:
    """The rows of the segments ``segs`` of one manifest object, verified against what
    each of them recorded."""
    first = segs[0]
    parts = decode_manifest_chunk_ids(data, key, first.checksum)
    for size, value in {(s.size, s.checksum) for s in segs[1:]} - {(first.size, first.checksum)}:
        if len(data) != size:
            raise FormatError(f"{key} is damaged: {len(data)} bytes, {size} recorded")
        verify_checksum(data, value, key)
    out: dict[SegmentKey, ChunkIdRows] = {}
    for seg in segs:
        part = parts.get(seg.row_offset)
        if part is None or len(part) != seg.rows:
            raise FormatError(f"{key}: has no segment of {seg.rows} rows at row {seg.row_offset}")
        out[(seg.manifest_id, seg.row_offset)] = part
    return out


def _tree_live_ids(
    tree: SegmentTree, nodes: list[int], rows: dict[SegmentKey, ChunkIdRows | None]
) -> pa.Array | None:
    """The native chunk ids of the live rows of ``nodes`` (whole subtrees of ``tree``).

    Children first, each node gets its *cover*: the coordinates that every list through it
    holds in segments newer than its own (nothing where a list ends at the node; else the
    intersection, over its children, of the child's coordinates and the child's cover).
    A row of the node's segment is live in some list exactly when its coordinate is not
    in the cover. Coordinates are compared as int64 keys (``_coord_keys``); covers are
    sorted key arrays."""
    keys = _coord_keys({k: r for k, r in rows.items() if r is not None})
    live: dict[SegmentKey, np.ndarray] = {}
    covers: dict[int, np.ndarray] = {}
    for node in reversed(nodes):
        seg = tree.segs[node]
        mine = keys.get(seg, _EMPTY)
        cover = _EMPTY if tree.ends[node] else covers.pop(node, _EMPTY)
        if len(mine):
            alive = ~_members(cover, mine)
            live[seg] = alive | live[seg] if seg in live else alive
        parent = tree.parent[node]
        if parent >= 0 and not tree.ends[parent]:
            up = np.union1d(mine, cover) if len(cover) else mine
            before = covers.get(parent)
            covers[parent] = up if before is None else np.intersect1d(before, up, True)
    ids = []
    for seg, alive in live.items():
        found = rows[seg]
        assert found is not None
        take = alive & (found.kinds == int(ChunkKind.NATIVE))
        if take.any():
            ids.append(found.chunk_ids.filter(pa.array(take)))
    return pc.unique(pa.concat_arrays(ids)) if ids else None


def _members(sorted_keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Which ``values`` are in ``sorted_keys`` (sorted, unique)."""
    if not len(sorted_keys):
        return np.zeros(len(values), bool)
    at = np.searchsorted(sorted_keys, values).clip(max=len(sorted_keys) - 1)
    return sorted_keys[at] == values


def _coord_keys(rows: dict[SegmentKey, ChunkIdRows]) -> dict[SegmentKey, np.ndarray]:
    """Each segment's coordinates as int64 keys, equal exactly where the coordinates are
    (and of the same dimensionality), in the segment's row order: positions in the
    bounding box of all of them (row-major) where that is small enough, else ranks."""
    by_ndim: dict[int, list[SegmentKey]] = {}
    for k, r in rows.items():
        by_ndim.setdefault(r.coords.shape[1], []).append(k)
    out: dict[SegmentKey, np.ndarray] = {}
    base = 0
    for ndim, segs in by_ndim.items():
        coords = np.concatenate([rows[k].coords for k in segs]).reshape(-1, ndim)
        lo = coords.min(axis=0) if len(coords) else np.zeros(ndim, np.int64)
        spans = (coords.max(axis=0) - lo + 1) if len(coords) else np.ones(ndim, np.int64)
        if math.prod(int(s) for s in spans) < (1 << 62):
            flat = np.zeros(len(coords), np.int64)
            for d in range(ndim):
                flat = flat * spans[d] + (coords[:, d] - lo[d])
        else:  # an astronomically sparse box: ranks
            flat = np.unique(coords, axis=0, return_inverse=True)[1].reshape(-1)
        if len(by_ndim) > 1:  # ranks, after those of the other dimensionalities
            flat = np.unique(flat, return_inverse=True)[1].reshape(-1).astype(np.int64) + base
            base = int(flat.max(initial=base - 1)) + 1
        for k, part in zip(segs, np.split(flat, np.cumsum([len(rows[k]) for k in segs])[:-1])):
            ordered = len(part) < 2 or bool((part[1:] > part[:-1]).all())
            out[k] = part if ordered else np.unique(part)
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
            ("block_size", pa.int64()),
            ("block_checksums", pa.binary()),
            ("manifest", pa.string()),
        ]
    )
    if not natives:
        return schema.empty_table()
    table = pa.concat_tables(natives).combine_chunks()
    table = table.append_column("_i", pa.array(np.arange(table.num_rows)))
    first = table.group_by("chunk_id", use_threads=False).aggregate([("_i", "min")])
    return table.take(first.column("_i_min")).select(schema.names).cast(schema)
