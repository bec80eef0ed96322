"""fsck: read every reachable object, check it against the checksum its referrer recorded,
and report every problem found."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    SnapshotId,
    checksum,
    keys,
)
from frazil.format.blocks import check_blocks, verify_blocks
from frazil.format.common import BRANCH_REF, TAG_REF, numpy_of
from frazil.format.filters import may_contain_many
from frazil.format.keys import (
    OBJECT_FOLDERS,
    chunk_key,
    history_key,
    manifest_key,
    snapshot_key,
    transaction_log_key,
)
from frazil.format.snapshot import decode_inline_rows

from .. import runtime
from ..compaction import Progress
from ..errors import FormatError, FrazilError, NotFoundError
from ..history import ancestry
from ..objects import ObjectReader
from ..refs import Ref, list_refs, read_ref
from ..storage.base import Storage
from ..virtual.resolver import VirtualResolver
from .reach import (
    Problem,
    error_kind,
    live_chunk_ids,
    manifest_rows,
    native_rows,
    unique_chunks,
    walk_history,
)
from .virtual_check import check_virtual


@dataclass
class FsckReport:
    """What ``Repository.fsck`` checked and every problem it found."""

    refs: int = 0
    snapshots: int = 0
    transaction_logs: int = 0
    manifests: int = 0
    history_segments: int = 0
    chunks: int = 0
    virtual_sources: int = 0
    virtual_refs: int = 0
    bytes_verified: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def _check_histories(
    reader: ObjectReader,
    histories: dict[HistoryId, tuple[HistorySegmentRef, SnapshotId]],
    walked: dict[SnapshotId, CommitInfo],
    refs: list[tuple[str, Ref]],
    report: FsckReport,
) -> None:
    """Every history segment reads and is one chain; from every ref, history read through
    the index is the parent chain read snapshot by snapshot."""

    async def check(seg: HistorySegmentRef, owner: SnapshotId) -> None:
        try:
            await reader.history(seg)
            report.history_segments += 1
        except FrazilError as e:
            report.problems.append(
                Problem(
                    error_kind(e),
                    history_key(seg.history_id),
                    f"{e} (in the history index of snapshot {owner})",
                )
            )

    await runtime.gather_limited([check(s, o) for s, o in histories.values()], limit=16)
    if report.problems:  # a chain already known broken: its index cannot be compared
        return
    for label, r in refs:
        sid = r.record.snapshot_id
        if sid is None:
            continue
        try:
            async for batch in ancestry(reader, sid):
                for info in batch:
                    if info.snapshot_id not in walked or walked[info.snapshot_id] != info:
                        raise FormatError(f"history index disagrees at snapshot {info.snapshot_id}")
        except FrazilError as e:
            report.problems.append(Problem("damaged", snapshot_key(sid), f"{e} ({label})"))


def _check_filters(
    mid: ManifestId,
    rows: pa.Table,
    filtered: dict[tuple[int, bytes], SegmentRef],
    problems: list[Problem],
) -> None:
    """Every segment filter snapshots record for this manifest admits every coordinate of
    its segment (one that does not would hide a chunk from readers)."""
    for (offset, data), seg in filtered.items():
        coord = rows.column("coord").slice(offset, seg.rows).combine_chunks()
        flat = numpy_of(coord.flatten()) if len(coord) else np.zeros(0, np.int64)
        ndim = len(seg.extent_min)
        if len(coord) != seg.rows or len(flat) != seg.rows * ndim:
            continue  # the segment does not fit the object: the read check reports it
        if not may_contain_many(data, flat.reshape(seg.rows, ndim)).all():
            problems.append(
                Problem(
                    "damaged",
                    manifest_key(mid),
                    f"a snapshot's filter of the segment at row {offset} rejects coordinates "
                    "the segment holds: reads would miss them",
                )
            )


def _check_inline(
    mid: ManifestId,
    rows: pa.Table,
    copies: dict[tuple[int, bytes], SegmentRef],
    problems: list[Problem],
) -> None:
    """Every copy of a segment's rows that snapshots carry (``SegmentRef.inline``) equals
    the segment's manifest rows (garbage collection reads the copy instead)."""
    for (offset, data), seg in copies.items():
        what = f"a snapshot's copy of the rows of the segment at row {offset}"
        try:
            coords, kinds, ids = decode_inline_rows(data, seg.rows, what)
        except FrazilError as e:
            problems.append(Problem("damaged", manifest_key(mid), str(e)))
            continue
        part = rows.slice(offset, seg.rows)
        coord = part.column("coord").combine_chunks()
        flat = numpy_of(coord.flatten()) if len(coord) else np.zeros(0, np.int64)
        same = (
            part.num_rows == seg.rows
            and len(flat) == coords.size
            and bool((flat.reshape(coords.shape) == coords).all())
            and numpy_of(part.column("kind")).tolist() == kinds.tolist()
            and [
                c if k == ChunkKind.NATIVE else None
                for c, k in zip(part.column("chunk_id").to_pylist(), kinds.tolist())
            ]
            == ids
        )
        if not same:
            problems.append(
                Problem(
                    "damaged",
                    manifest_key(mid),
                    f"{what} differs from the segment: garbage collection would go by the copy",
                )
            )


async def fsck(
    storage: Storage,
    reader: ObjectReader,
    *,
    verify_chunks: bool = True,
    progress: Progress | None = None,
    virtual: VirtualResolver | None = None,
) -> FsckReport:
    """Check every reachable object exists and matches its recorded checksum; with a
    ``virtual`` resolver, also the virtual chunks' sources of every branch and tag tip
    (``virtual_check``)."""
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
    lists: set[tuple[SegmentRef, ...]] = set()
    filtered: dict[ManifestId, dict[tuple[int, bytes], SegmentRef]] = {}
    copies: dict[ManifestId, dict[tuple[int, bytes], SegmentRef]] = {}
    reader_nocache = ObjectReader(storage)  # a fresh read of every object, not the cache

    async def check_snapshot(sid: SnapshotId) -> None:
        where = f" (named by {named[sid]})" if sid in named else ""
        try:
            snap = await reader_nocache.snapshot(sid, checksums.get(sid))
        except FrazilError as e:
            problems.append(Problem(error_kind(e), snapshot_key(sid), str(e) + where))
            return
        report.snapshots += 1
        try:
            await reader_nocache.transaction_log(sid, snap.info.transaction_log_checksum)
            report.transaction_logs += 1
        except FrazilError as e:
            problems.append(Problem(error_kind(e), transaction_log_key(sid), str(e)))
        for node in snap.nodes:
            if node.segments:
                lists.add(node.segments)
            for seg in node.segments:
                segments.setdefault(seg.manifest_id, (seg, f"array {node.path} of snapshot {sid}"))
                if seg.filter is not None:
                    filtered.setdefault(seg.manifest_id, {})[seg.row_offset, seg.filter] = seg
                if seg.inline is not None:
                    copies.setdefault(seg.manifest_id, {})[seg.row_offset, seg.inline] = seg
        for h in snap.history.segments if snap.history is not None else ():
            histories.setdefault(h.history_id, (h, sid))

    histories: dict[HistoryId, tuple[HistorySegmentRef, SnapshotId]] = {}
    await runtime.gather_limited([check_snapshot(s) for s in history], limit=16)
    await _check_histories(reader_nocache, histories, history, refs, report)
    natives: list[pa.Table] = []
    done = 0

    async def check_manifest(seg: SegmentRef, owner: str) -> None:
        nonlocal done
        try:
            rows = await manifest_rows(reader, seg)
            report.manifests += 1
            report.bytes_verified += seg.size
            _check_filters(seg.manifest_id, rows, filtered.get(seg.manifest_id, {}), problems)
            _check_inline(seg.manifest_id, rows, copies.get(seg.manifest_id, {}), problems)
            native = native_rows(rows)
            natives.append(
                native.append_column(
                    "manifest",
                    pa.array(np.full(native.num_rows, str(seg.manifest_id)), pa.string()),
                )
            )
        except FrazilError as e:
            problems.append(
                Problem(error_kind(e), manifest_key(seg.manifest_id), f"{e} (used by {owner})")
            )
        done += 1
        if progress is not None and (done % 64 == 0 or done == len(segments)):
            progress("manifests", done, len(segments))

    await runtime.gather_limited([check_manifest(s, o) for s, o in segments.values()], limit=16)
    chunks = unique_chunks(natives)
    # only live references keep chunks (gc deletes those of shadowed ones); a segment that
    # cannot be read is reported above, and the check goes on without it
    live = await live_chunk_ids(reader, lists, lambda seg, e: True)
    chunks = chunks.filter(pc.is_in(chunks.column("chunk_id"), value_set=live))
    report.chunks = chunks.num_rows
    listed = {i.key: i.size for i in await storage.list_info(OBJECT_FOLDERS["chunk"])}
    cids = chunks.column("chunk_id").to_pylist()
    sums = chunks.column("checksum").to_pylist()
    lengths = chunks.column("length").to_pylist()
    owners = chunks.column("manifest").to_pylist()
    block_sizes = chunks.column("block_size").to_pylist()
    block_sums = chunks.column("block_checksums").to_pylist()
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
                elif block_sums[i] is not None:
                    _check_chunk_blocks(
                        key, data, block_sizes[i] or 0, block_sums[i], owner, problems
                    )
                report.bytes_verified += len(data)
            elif size is not None and size != lengths[i]:
                problems.append(
                    Problem("damaged", key, f"{size} bytes, {lengths[i]} recorded ({owner})")
                )
        except FrazilError as e:
            problems.append(Problem(error_kind(e), key, f"{e} ({owner})"))
        done += 1
        if progress is not None and (done % 256 == 0 or done == len(cids)):
            progress("chunks", done, len(cids))

    for start in range(0, len(cids), 4096):  # bounded memory: a batch of reads at a time
        await runtime.gather_limited(
            [check_chunk(i) for i in range(start, min(start + 4096, len(cids)))], limit=32
        )
    if virtual is not None:
        report.virtual_sources, report.virtual_refs = await check_virtual(
            reader, virtual, named, problems
        )
    problems.sort(key=lambda p: (p.key, p.message))
    return report


def _check_chunk_blocks(
    key: str, data: bytes, block_size: int, sums: bytes, owner: str, problems: list[Problem]
) -> None:
    """The block checksums a manifest row records for a chunk object whose whole checksum
    matched: a mismatch would make range reads of good bytes fail."""
    try:
        check_blocks(len(data), block_size, sums, key)
        verify_blocks(data, 0, sums, block_size, f"chunk object {key}")
    except FormatError as e:
        problems.append(Problem("damaged", key, f"block checksums recorded: {e} ({owner})"))
