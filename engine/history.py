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

Where expiry cut history (``refs/cuts.json``, SPEC §4.6), a cut snapshot's parent is the
one the cuts give: ancestry stops reading an index at the first cut snapshot and goes on
at its cut parent, and a new index carries nothing beyond a cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
from .errors import FrazilError, NotFoundError
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
    cascade of merges is planned first and written as one object. Cut history (§4.6) is
    not carried over: the index stops at the first cut snapshot and ancestry goes on from
    its cut parent."""
    try:
        return await _index_for_child(reader, storage, parent, fanout, await reader.cuts())
    except NotFoundError:  # an ancestor expired and collected since the cuts were read
        return await _index_for_child(reader, storage, parent, fanout, await reader.load_cuts())


async def _index_for_child(
    reader: ObjectReader,
    storage: Storage,
    parent: Snapshot,
    fanout: int,
    cuts: dict[SnapshotId, SnapshotId],
) -> HistoryIndex:
    old = parent.history
    pending = (parent.id, *(old.pending if old is not None else ()))
    older_segments = old.segments if old is not None else ()
    stop = next((i for i, p in enumerate(pending) if p in cuts), None)
    if stop is not None:
        pending, older_segments = pending[: stop + 1], ()
    if len(pending) < fanout:
        return HistoryIndex(pending, older_segments)
    headers = await runtime.gather_limited([reader.commit_header(p) for p in pending[1:]], limit=16)
    infos = [parent.info, *(h[0] for h in headers)]
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
    reader: ObjectReader,
    sid: SnapshotId | None,
    cuts: dict[SnapshotId, SnapshotId] | None = None,
) -> AsyncGenerator[list[CommitInfo], None]:
    """History from ``sid``, newest first, in batches: the snapshot, then what its index
    holds, then on from the oldest commit reached. A snapshot that history cuts give
    another parent (``cuts``, read afresh when not given) has it in the infos yielded, and
    nothing beyond the cut is read.

    Reads go out together wherever nothing orders them: the cuts with the first footer,
    and an index's pending footers with all of its segments (the header lists them all),
    so a history the index holds takes two rounds of requests after the ref, however
    long it is."""
    if cuts is None:
        loaded, _ = await asyncio.gather(reader.load_cuts(), _prefetch(reader, sid))
        cuts = loaded
    seen: set[bytes] = set()
    while sid is not None:
        info, index = await reader.commit_header(sid)
        first = _cut(info, cuts, seen)
        yield [first]
        expected = first.parent_id
        batch: list[CommitInfo] = []
        if index is not None and expected is not None and expected == info.parent_id:
            pending = index.pending
            stop = next((i for i, p in enumerate(pending) if p in cuts), None)
            wanted = pending if stop is None else pending[: stop + 1]
            headers, parts = await asyncio.gather(
                runtime.gather_limited([reader.commit_header(p) for p in wanted], limit=_READS),
                runtime.gather_limited(
                    [reader.history(s) for s in index.segments] if stop is None else [],
                    limit=_READS,
                ),
            )
            for found in [*(h[0] for h in headers), *(i for part in parts for i in part)]:
                if found.snapshot_id != expected:
                    raise FormatError(
                        f"history index of snapshot {info.snapshot_id}: found "
                        f"{found.snapshot_id} where its ancestor {expected} should be"
                    )
                row = _cut(found, cuts, seen)
                batch.append(row)
                expected = row.parent_id
                if expected is None or expected != found.parent_id:
                    break
        if batch:
            yield batch
        sid = expected


_READS = 64
"""Reads of one index in flight at once: a writer's index names at most 7 pending ids and
about 7 segments per size tier, so all of them."""


async def _prefetch(reader: ObjectReader, sid: SnapshotId | None) -> None:
    """Read (and cache) ``sid``'s footer alongside other reads; its errors are reported by
    the read that needs it."""
    if sid is not None:
        with contextlib.suppress(FrazilError):
            await reader.commit_header(sid)


def _cut(info: CommitInfo, cuts: dict[SnapshotId, SnapshotId], seen: set[bytes]) -> CommitInfo:
    """``info`` with the parent history cuts give it; a snapshot met twice is a loop.
    (``seen`` holds raw ids: they hash faster.)"""
    raw = info.snapshot_id.raw
    if raw in seen:
        raise FormatError(
            f"history of snapshot {info.snapshot_id} loops back to it (damaged history cuts?)"
        )
    seen.add(raw)
    cut = cuts.get(info.snapshot_id) if cuts else None
    return info if cut is None else dataclasses.replace(info, parent_id=cut)
