"""Repository maintenance: reachability, garbage collection, snapshot expiry, fsck and
chunk statistics.

Reachable means: named by a branch or a (live) tag, or an ancestor of one, and every
transaction log, manifest segment and native chunk such a snapshot refers to.
``garbage_collect`` also treats every snapshot *younger than its cutoff* as a root, so
the objects of a commit that is being written right now (its snapshot written, its ref
not yet moved) are kept even when they point at otherwise unreachable objects.

**Object age.** An object is as old as the *later* of the time in its id (ids start with
their creation time in milliseconds) and the last-modified time its storage lists for it
(where the backend knows one). Either alone would do for objects frazil writes; taking
the later one means a copied or restored object, or a clock that ran ahead, can only make
an object look younger (kept), never older.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from frazil.format import (
    ARRAY,
    ChunkKind,
    CommitInfo,
    ManifestId,
    NodeChange,
    NodeRecord,
    SegmentRef,
    Snapshot,
    SnapshotId,
    TransactionLog,
    checksum,
    encode_snapshot,
    encode_transaction_log,
    keys,
)
from frazil.format import txlog as tx
from frazil.format.common import BRANCH_REF, MANIFEST, TAG_REF, decode_parquet
from frazil.format.keys import (
    FORKS,
    OBJECT_FOLDERS,
    chunk_key,
    manifest_key,
    snapshot_key,
    transaction_log_key,
)
from frazil.format.manifest import SCHEMA as MANIFEST_SCHEMA

from . import runtime
from .compaction import Progress
from .errors import FormatError, FrazilError, InvalidInputError, NotFoundError
from .objects import ObjectReader
from .refs import Move, Ref, list_refs, move_branch, read_ref
from .storage.base import ObjectInfo, Storage

_DELETE_BATCH = 1_000
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


# -- reachability ----------------------------------------------------------------------------
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
    """Every snapshot reachable from ``tips`` through parent links, with its commit info.
    With ``problems``, unreadable snapshots are recorded there instead of raising."""
    seen: dict[SnapshotId, CommitInfo] = {}
    for tip in tips:
        sid: SnapshotId | None = tip
        child: SnapshotId | None = None
        while sid is not None and sid not in seen:
            try:
                info = await reader.commit_info(sid)
            except FrazilError as e:
                if problems is None:
                    raise
                problems.append(
                    Problem(
                        _kind(e),
                        snapshot_key(sid),
                        str(e) + (f" (parent of snapshot {child})" if child is not None else ""),
                    )
                )
                break
            seen[sid] = info
            child, sid = sid, info.parent_id
    return seen


def _kind(e: BaseException) -> str:
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


def _native(table: pa.Table) -> pa.Table:
    return table.filter(pc.equal(table.column("kind"), int(ChunkKind.NATIVE))).select(
        ["chunk_id", "checksum", "length"]
    )


@dataclass
class Reachable:
    """What ``mark`` found: snapshot ids, segments by manifest id, native chunk ids."""

    snapshots: dict[SnapshotId, CommitInfo]
    segments: dict[ManifestId, SegmentRef]
    chunk_ids: pa.Array


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
    optional: set[ManifestId] = set()
    for snap in await runtime.gather_limited([load(s) for s in history], limit=16):
        if snap is None:
            continue
        for node in snap.nodes:
            for seg in node.segments:
                if seg.manifest_id not in segments and snap.id not in strict:
                    optional.add(seg.manifest_id)
                elif snap.id in strict:
                    optional.discard(seg.manifest_id)
                segments.setdefault(seg.manifest_id, seg)
    done = 0

    async def chunk_ids(seg: SegmentRef) -> pa.Array:
        nonlocal done
        try:
            rows = await manifest_rows(reader, seg)
        except NotFoundError:
            if seg.manifest_id not in optional:
                raise
            rows = MANIFEST_SCHEMA.empty_table()
        done += 1
        if progress is not None and (done % 64 == 0 or done == len(segments)):
            progress("mark", done, len(segments))
        return pc.unique(_native(rows).column("chunk_id"))

    parts = await runtime.gather_limited([chunk_ids(s) for s in segments.values()], limit=16)
    ids = (
        pc.unique(pa.chunked_array(parts, pa.string()).combine_chunks())
        if parts
        else pa.array([], pa.string())
    )
    return Reachable(history, segments, ids)


# -- garbage collection --------------------------------------------------------------------
@dataclass(frozen=True)
class GCSummary:
    """What ``garbage_collect`` deleted (or, with ``dry_run``, would delete)."""

    chunks_deleted: int = 0
    manifests_deleted: int = 0
    snapshots_deleted: int = 0
    transaction_logs_deleted: int = 0
    bytes_deleted: int = 0
    kept_young: int = 0
    """unreachable objects kept because they are younger than the cutoff"""
    reachable: int = 0
    """reachable objects (snapshots, transaction logs, manifests, chunks) kept"""
    dry_run: bool = False
    temporaries_deleted: int = 0
    """files that writers killed mid-put left outside any object (local storage's hidden
    temp files), older than the cutoff; not counted in ``objects_deleted``"""
    fork_journals_deleted: int = 0
    """journal objects of fork copies (``forks/``) older than the cutoff: what a merge
    had to read is merged by then, or abandoned; not counted in ``objects_deleted``"""

    @property
    def objects_deleted(self) -> int:
        return (
            self.chunks_deleted
            + self.manifests_deleted
            + self.snapshots_deleted
            + self.transaction_logs_deleted
        )


def _ages_ms(infos: list[ObjectInfo], ids: list[str]) -> np.ndarray:
    """Each object's age reference (ms): the later of its id time and its last-modified."""
    t_id = id_times_ms(ids)
    t_mod = np.array(
        [-1 if i.last_modified is None else int(i.last_modified.timestamp() * 1000) for i in infos],
        np.int64,
    )
    return np.maximum(t_id, t_mod)


def _to_ms(when: dt.datetime) -> int:
    if not isinstance(when, dt.datetime) or when.tzinfo is None:
        raise InvalidInputError(
            f"the cutoff must be a timezone-aware datetime (e.g. "
            f"datetime.now(UTC) - timedelta(days=7)), got {when!r}"
        )
    return int(when.timestamp() * 1000)


async def garbage_collect(
    storage: Storage,
    reader: ObjectReader,
    older_than: dt.datetime,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> GCSummary:
    """Delete every unreachable snapshot, transaction log, manifest and chunk older than
    ``older_than`` (see the module docstring for roots and ages)."""
    cutoff = _to_ms(older_than)
    listed = dict(
        zip(
            OBJECT_FOLDERS,
            await runtime.gather_limited([storage.list_info(p) for p in OBJECT_FOLDERS.values()]),
        )
    )
    ids = {
        kind: [i.key[len(OBJECT_FOLDERS[kind]) :] for i in infos] for kind, infos in listed.items()
    }
    ages = {kind: _ages_ms(listed[kind], ids[kind]) for kind in OBJECT_FOLDERS}
    young = [
        SnapshotId.parse(i)
        for i, age in zip(ids["snapshot"], ages["snapshot"])
        if age >= cutoff and _valid_id(i)
    ]
    found = await mark(storage, reader, young, progress)
    snaps = pa.array([str(s) for s in found.snapshots], pa.string())
    live = {
        "snapshot": snaps,
        "transaction_log": snaps,
        "manifest": pa.array([str(m) for m in found.segments], pa.string()),
        "chunk": found.chunk_ids,
    }
    doomed: dict[str, list[int]] = {}
    counts = {"young": 0, "reachable": 0}
    for kind in OBJECT_FOLDERS:
        keys = pa.array(ids[kind], pa.string())
        reachable = pc.is_in(keys, value_set=live[kind]).to_numpy(zero_copy_only=False)
        valid = ages[kind] >= 0  # keys that are not ids are not ours: never touched
        old = ages[kind] < cutoff
        doomed[kind] = np.flatnonzero(~reachable & valid & old).tolist()
        counts["young"] += int((~reachable & valid & ~old).sum())
        counts["reachable"] += int(reachable.sum())
    deleted_bytes = sum(listed[k][i].size for k, idx in doomed.items() for i in idx)
    if not dry_run:
        total = sum(len(v) for v in doomed.values())
        done = 0
        # referrers first: a crash part-way leaves no reachable object pointing at a gap
        for kind in ("snapshot", "transaction_log", "manifest", "chunk"):
            keys = [listed[kind][i].key for i in doomed[kind]]
            for start in range(0, len(keys), _DELETE_BATCH):
                batch = keys[start : start + _DELETE_BATCH]
                await storage.delete(batch)
                done += len(batch)
                if progress is not None:
                    progress("sweep", done, total)
    temporaries = 0 if dry_run else await storage.remove_stale_temporaries(older_than)
    journals = [
        i.key
        for i in await storage.list_info(FORKS)
        if i.last_modified is not None and i.last_modified.timestamp() * 1000 < cutoff
    ]
    if not dry_run:
        for start in range(0, len(journals), _DELETE_BATCH):
            await storage.delete(journals[start : start + _DELETE_BATCH])
    return GCSummary(
        fork_journals_deleted=len(journals),
        chunks_deleted=len(doomed["chunk"]),
        manifests_deleted=len(doomed["manifest"]),
        snapshots_deleted=len(doomed["snapshot"]),
        transaction_logs_deleted=len(doomed["transaction_log"]),
        bytes_deleted=deleted_bytes,
        kept_young=counts["young"],
        reachable=counts["reachable"],
        dry_run=dry_run,
        temporaries_deleted=temporaries,
    )


def _valid_id(text: str) -> bool:
    try:
        SnapshotId.parse(text)
        return True
    except FormatError:
        return False


# -- expiry ------------------------------------------------------------------------------------
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
    data = encode_snapshot(Snapshot(new_info, snap.nodes))
    await storage.put(transaction_log_key(sid), log_bytes)
    await storage.put(snapshot_key(sid), data)
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
    _to_ms(older_than)
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


# -- fsck -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One thing ``fsck`` found wrong: ``kind`` is ``"missing"``, ``"damaged"`` or
    ``"ref"``; ``key`` the object; ``message`` says what and who refers to it."""

    kind: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.key}: {self.message}"


@dataclass
class FsckReport:
    """What ``Repository.fsck`` checked and every problem it found."""

    refs: int = 0
    snapshots: int = 0
    transaction_logs: int = 0
    manifests: int = 0
    chunks: int = 0
    bytes_verified: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def fsck(
    storage: Storage,
    reader: ObjectReader,
    *,
    verify_chunks: bool = True,
    progress: Progress | None = None,
) -> FsckReport:
    """Check every reachable object exists and matches its recorded checksum."""
    report = FsckReport()
    problems = report.problems
    refs: list[tuple[str, Ref]] = []
    for kind, what in ((BRANCH_REF, "branch"), (TAG_REF, "tag")):
        try:
            names = sorted(await list_refs(storage, kind))
        except FrazilError as e:
            problems.append(Problem("ref", f"{keys.ref_prefix(kind)}*", str(e)))
            continue
        for name in names:
            try:
                refs.append((f"{what} {name}", await read_ref(storage, kind, name)))
            except NotFoundError:
                continue
            except FrazilError as e:
                problems.append(Problem("ref", keys.ref_key(kind, name), str(e)))
    report.refs = len(refs)
    history = await walk_history(
        reader,
        [r.record.snapshot_id for _, r in refs if r.record.snapshot_id is not None],
        problems,
    )
    checksums: dict[SnapshotId, int | None] = {}
    named: dict[SnapshotId, str] = {}
    for label, r in refs:
        if r.record.snapshot_id is not None:
            checksums.setdefault(r.record.snapshot_id, r.record.checksum)
            named.setdefault(r.record.snapshot_id, label)
    segments: dict[ManifestId, tuple[SegmentRef, str]] = {}
    reader_nocache = ObjectReader(storage)  # a fresh read of every object, not the cache

    async def check_snapshot(sid: SnapshotId) -> None:
        where = f" (named by {named[sid]})" if sid in named else ""
        try:
            snap = await reader_nocache.snapshot(sid, checksums.get(sid))
        except FrazilError as e:
            problems.append(Problem(_kind(e), snapshot_key(sid), str(e) + where))
            return
        report.snapshots += 1
        try:
            await reader_nocache.transaction_log(sid, snap.info.transaction_log_checksum)
            report.transaction_logs += 1
        except FrazilError as e:
            problems.append(Problem(_kind(e), transaction_log_key(sid), str(e)))
        for node in snap.nodes:
            for seg in node.segments:
                segments.setdefault(seg.manifest_id, (seg, f"array {node.path} of snapshot {sid}"))

    await runtime.gather_limited([check_snapshot(s) for s in history], limit=16)
    natives: list[pa.Table] = []
    done = 0

    async def check_manifest(seg: SegmentRef, owner: str) -> None:
        nonlocal done
        try:
            rows = await manifest_rows(reader, seg)
            report.manifests += 1
            report.bytes_verified += seg.size
            native = _native(rows)
            natives.append(
                native.append_column(
                    "manifest",
                    pa.array(np.full(native.num_rows, str(seg.manifest_id)), pa.string()),
                )
            )
        except FrazilError as e:
            problems.append(
                Problem(_kind(e), manifest_key(seg.manifest_id), f"{e} (used by {owner})")
            )
        done += 1
        if progress is not None and (done % 64 == 0 or done == len(segments)):
            progress("manifests", done, len(segments))

    await runtime.gather_limited([check_manifest(s, o) for s, o in segments.values()], limit=16)
    chunks = _unique_chunks(natives)
    report.chunks = chunks.num_rows
    listed = {i.key: i.size for i in await storage.list_info(OBJECT_FOLDERS["chunk"])}
    cids = chunks.column("chunk_id").to_pylist()
    sums = chunks.column("checksum").to_pylist()
    lengths = chunks.column("length").to_pylist()
    owners = chunks.column("manifest").to_pylist()
    done = 0

    async def check_chunk(i: int) -> None:
        nonlocal done
        key = chunk_key(cids[i])
        owner = f"referenced by manifests/{owners[i]}"
        size = listed.get(key)
        try:
            if size is None and not await storage.exists(key):
                problems.append(Problem("missing", key, f"chunk object is missing ({owner})"))
            elif verify_chunks:
                data = await storage.get(key)
                if checksum(data) != sums[i] or len(data) != lengths[i]:
                    problems.append(
                        Problem(
                            "damaged",
                            key,
                            f"{len(data)} bytes do not match "
                            f"the length {lengths[i]} and checksum "
                            f"{sums[i]:016x} recorded ({owner})",
                        )
                    )
                report.bytes_verified += len(data)
            elif size is not None and size != lengths[i]:
                problems.append(
                    Problem("damaged", key, f"{size} bytes, {lengths[i]} recorded ({owner})")
                )
        except FrazilError as e:
            problems.append(Problem(_kind(e), key, f"{e} ({owner})"))
        done += 1
        if progress is not None and (done % 256 == 0 or done == len(cids)):
            progress("chunks", done, len(cids))

    for start in range(0, len(cids), 4096):  # bounded memory: a batch of reads at a time
        await runtime.gather_limited(
            [check_chunk(i) for i in range(start, min(start + 4096, len(cids)))], limit=32
        )
    problems.sort(key=lambda p: (p.key, p.message))
    return report


def _unique_chunks(natives: list[pa.Table]) -> pa.Table:
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


# -- statistics ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChunkStorageStats:
    """Chunks referenced by any branch or tag, or their history (Icechunk's names, with
    counts). Native chunks are counted once per object; virtual ones once per (location,
    offset, length); inline ones once per manifest row."""

    native_bytes: int = 0
    native_chunks: int = 0
    inlined_bytes: int = 0
    inlined_chunks: int = 0
    virtual_bytes: int = 0
    virtual_chunks: int = 0

    @property
    def non_virtual_bytes(self) -> int:
        return self.native_bytes + self.inlined_bytes

    @property
    def total_bytes(self) -> int:
        return self.non_virtual_bytes + self.virtual_bytes


async def chunk_storage_stats(
    storage: Storage, reader: ObjectReader, progress: Progress | None = None
) -> ChunkStorageStats:
    found = await mark(storage, reader, progress=progress)
    parts = await runtime.gather_limited(
        [manifest_rows(reader, s) for s in found.segments.values()], limit=16
    )
    cols = ["kind", "chunk_id", "length", "location", "offset"]
    if not parts:
        return ChunkStorageStats()
    rows = pa.concat_tables([p.select(cols) for p in parts]).combine_chunks()
    kind = rows.column("kind")

    def of(k: ChunkKind) -> pa.Table:
        return rows.filter(pc.equal(kind, int(k)))

    native = of(ChunkKind.NATIVE).group_by("chunk_id").aggregate([("length", "max")])
    inline = of(ChunkKind.INLINE)
    virtual = of(ChunkKind.VIRTUAL).group_by(["location", "offset", "length"]).aggregate([])

    def total(col: pa.ChunkedArray) -> int:
        return int(pc.sum(col).as_py() or 0)

    return ChunkStorageStats(
        native_bytes=total(native.column("length_max")),
        native_chunks=native.num_rows,
        inlined_bytes=total(inline.column("length")),
        inlined_chunks=inline.num_rows,
        virtual_bytes=total(virtual.column("length")),
        virtual_chunks=virtual.num_rows,
    )


__all__ = [
    "ChunkStorageStats",
    "FsckReport",
    "GCSummary",
    "NodeRecord",
    "Problem",
    "chunk_storage_stats",
    "expire_snapshots",
    "fsck",
    "garbage_collect",
    "mark",
]
