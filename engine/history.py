"""History: the history index a commit writes for its snapshot, and ancestry read through it.

A commit knows its parent snapshot, so it builds its own snapshot's index from the
parent's: the parent joins the ``pending`` ancestors; when ``fanout`` are pending, their
commit infos are written as one history segment, and ``fanout`` adjacent segments of one
size tier are merged into one (the size-tiered policy of ``frazil.merging``, up to
``MAX_MERGED_ROWS`` commits a segment). Listing history then reads the snapshot's footer,
its pending ancestors' footers and its segments, all at once: a few reads whatever the
length. Snapshots written before the index, and the end of a segment list, are followed
by footer reads, so every repository reads, and an old one speeds up from its first new
commit on. Every row read is checked to be the parent of the row before.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from frazil.format import (
    CommitInfo,
    FormatError,
    HistoryId,
    HistoryIndex,
    HistorySegmentRef,
    Snapshot,
    SnapshotId,
    checksum,
    encode_history,
)
from frazil.format.keys import history_key

from . import runtime
from .merging import tier, tier_runs
from .objects import ObjectReader
from .storage.base import Storage

FANOUT = 8
MAX_MERGED_ROWS = 1 << 16
_PLACEHOLDER = HistoryId(bytes(12))


def _next_run(segments: tuple[HistorySegmentRef, ...], fanout: int) -> slice | None:
    tiers = [tier(s.rows, fanout) for s in segments]
    for run in tier_runs(tiers):
        if run.stop - run.start >= fanout and sum(s.rows for s in segments[run]) <= MAX_MERGED_ROWS:
            return run
    return None


async def _write(
    storage: Storage, reader: ObjectReader, infos: list[CommitInfo]
) -> HistorySegmentRef:
    hid = HistoryId.new()
    data = encode_history(hid, infos)
    await storage.put(history_key(hid), data)
    reader.histories.put(hid, infos)
    return HistorySegmentRef(hid, checksum(data), len(data), len(infos))


def _plan(rows: list[int], fanout: int) -> list[tuple[int, int]]:
    """Which adjacent segments (by their ``rows``, newest first) end up merged into one:
    the policy applied until it picks nothing, as [start, stop) ranges of the input."""
    spans = [(i, i + 1, r) for i, r in enumerate(rows)]
    while True:
        refs = tuple(HistorySegmentRef(_PLACEHOLDER, 0, 0, r) for _, _, r in spans)
        run = _next_run(refs, fanout)
        if run is None:
            return [(a, b) for a, b, _ in spans]
        part = spans[run]
        merged = (part[0][0], part[-1][1], sum(r for _, _, r in part))
        spans = [*spans[: run.start], merged, *spans[run.stop :]]


async def index_for_child(
    reader: ObjectReader, storage: Storage, parent: Snapshot, fanout: int = FANOUT
) -> HistoryIndex:
    """The history index of a new snapshot whose parent is ``parent``; any history segment
    it needs is written before it returns (before the snapshot that refers to it). A
    cascade of merges is planned first and written as one object."""
    old = parent.history
    pending = (parent.id, *(old.pending if old is not None else ()))
    older_segments = old.segments if old is not None else ()
    if len(pending) < fanout:
        return HistoryIndex(pending, older_segments)
    infos = [
        parent.info,
        *await runtime.gather_limited([reader.commit_info(p) for p in pending[1:]], limit=16),
    ]
    rows = [len(infos), *(s.rows for s in older_segments)]
    segments: list[HistorySegmentRef] = []
    for start, stop in _plan(rows, fanout):
        if start > 0 and stop == start + 1:
            segments.append(older_segments[start - 1])
            continue
        parts = [infos] if start == 0 else []
        parts += await runtime.gather_limited(
            [reader.history(s) for s in older_segments[max(0, start - 1) : stop - 1]], limit=16
        )
        segments.append(await _write(storage, reader, [i for part in parts for i in part]))
    return HistoryIndex((), tuple(segments))


async def next_batch(
    batches: AsyncGenerator[list[CommitInfo], None],
) -> list[CommitInfo] | None:
    """The next batch of ``ancestry``, None after the last (for sync callers)."""
    return await anext(batches, None)


async def ancestry(
    reader: ObjectReader, sid: SnapshotId | None
) -> AsyncGenerator[list[CommitInfo], None]:
    """History from ``sid``, newest first, in batches: the snapshot, then what its index
    holds (read concurrently), then on from the oldest commit reached."""
    while sid is not None:
        info, index = await reader.commit_header(sid)
        yield [info]
        expected = info.parent_id
        if index is None or expected is None:
            sid = expected
            continue
        headers = await runtime.gather_limited(
            [reader.commit_info(p) for p in index.pending], limit=16
        )
        parts = await runtime.gather_limited([reader.history(s) for s in index.segments], limit=16)
        batch: list[CommitInfo] = []
        for found in [*headers, *(i for part in parts for i in part)]:
            if found.snapshot_id != expected:
                raise FormatError(
                    f"history index of snapshot {info.snapshot_id}: found {found.snapshot_id} "
                    f"where its ancestor {expected} should be"
                )
            batch.append(found)
            expected = found.parent_id
            if expected is None:
                break
        if batch:
            yield batch
        sid = expected
