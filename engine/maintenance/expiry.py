"""Expiry: drop old snapshots from every branch's and tag's history by recording history
cuts (format/SPEC.md §4.6, §10.2): one compare-and-swap of the cuts document, whatever the
length of the history; no snapshot is rewritten and no ref moves."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from typing import Any

from frazil.format import CommitInfo, SnapshotId, encode_cuts
from frazil.format.cuts import decode_cuts_document
from frazil.format.keys import CUTS, ops_key
from frazil.format.oplog import OpEntry, OpKind, append, now

from .. import runtime
from ..compaction import Progress
from ..errors import NotFoundError
from ..history import ancestry
from ..objects import ObjectReader
from ..refs import short_pause
from ..storage.base import PutResult, Storage
from .reach import cutoff_ms, ref_targets


def plan_cuts(
    chains: list[list[CommitInfo]],
    older_than: dt.datetime,
    gone: Sequence[list[CommitInfo]] = (),
) -> tuple[dict[SnapshotId, SnapshotId], set[SnapshotId]]:
    """From every ref's history (newest first, as cuts already give it): the new cuts
    (kept snapshot -> its next kept ancestor, where that is not its parent now) and the
    snapshots no history keeps. A history keeps its tip, its first snapshot (no parent)
    and every snapshot written at or after ``older_than``. Below its tip, what a history
    keeps depends on each snapshot alone, so every history that holds a snapshot gives it
    the same cut. ``gone``: the histories of refs expiry just deleted; their snapshots
    count as dropped unless a history in ``chains`` keeps them (they make no cuts)."""
    new: dict[SnapshotId, SnapshotId] = {}
    dropped: set[SnapshotId] = {info.snapshot_id for chain in gone for info in chain}
    kept: set[SnapshotId] = set()
    for chain in chains:
        below: SnapshotId | None = None  # the next kept snapshot below, oldest first
        for info in reversed(chain):
            if info is chain[0] or info.parent_id is None or info.written_at >= older_than:
                if below is not None and info.parent_id != below:
                    new[info.snapshot_id] = below
                below = info.snapshot_id
                kept.add(info.snapshot_id)
            else:
                dropped.add(info.snapshot_id)
    return new, dropped - kept


Log = tuple[Any, Any]
"""The operations log a cuts document carries, as stored (``ops``, ``ops_next``)."""


async def read_cuts(storage: Storage) -> tuple[dict[SnapshotId, SnapshotId], str | None, Log]:
    """The cuts document, its version, for a compare-and-swap (None: there is none), and
    its operations log (SPEC §6.1)."""
    try:
        data, version = await storage.get_with_version(CUTS)
    except NotFoundError:
        return {}, None, (None, None)
    cuts, ops, ops_next = await runtime.in_thread(decode_cuts_document, data, CUTS)
    return cuts, version, (ops, ops_next)


async def put_cuts(
    storage: Storage,
    cuts: dict[SnapshotId, SnapshotId],
    version: str | None,
    log: Log,
    entry: OpEntry | None = None,
) -> PutResult:
    """Replace the cuts document read at ``version`` (None: there was none), keeping its
    operations log ``log``, with ``entry`` added in the same write if given."""
    ops, ops_next = log
    if entry is not None:
        appended = append(ops, ops_next, entry)
        if appended.archive is not None:
            await storage.put(ops_key(appended.archive[0]), appended.archive[1])
        ops, ops_next = appended.ops, appended.ops_next
    body = encode_cuts(
        cuts,
        ops if isinstance(ops, list) else None,
        ops_next if isinstance(ops_next, str) else None,
    )
    if version is None:
        return await storage.put_if_absent(CUTS, body)
    return await storage.put_if_version(CUTS, body, version)


async def prune_cuts(storage: Storage, deleted: set[SnapshotId]) -> None:
    """Drop the cuts of snapshots garbage collection deleted (by compare-and-swap, so a
    concurrent expiry's new cuts stay)."""
    attempt = 0
    while True:
        attempt += 1
        cuts, version, log = await read_cuts(storage)
        if version is None:
            return
        left = {k: v for k, v in cuts.items() if k not in deleted}
        if len(left) == len(cuts) or (await put_cuts(storage, left, version, log)).ok:
            return
        await asyncio.sleep(short_pause(attempt))


async def expire_snapshots(
    storage: Storage,
    reader: ObjectReader,
    older_than: dt.datetime,
    progress: Progress | None = None,
    gone_tips: frozenset[SnapshotId] = frozenset(),
) -> set[str]:
    """Drop snapshots written before ``older_than`` from every branch's and tag's history;
    returns their ids, with those of the histories of the refs just deleted (whose tips
    are ``gone_tips``) that no remaining history keeps. See format/SPEC.md ("Expiring
    history") for the exact rules."""
    cutoff_ms(older_than)
    attempt = 0
    maybe: set[SnapshotId] = set()  # dropped by an attempt whose outcome was lost
    while True:
        attempt += 1
        cuts, version, log = await read_cuts(storage)
        refs = await ref_targets(storage)
        tips = {r.record.snapshot_id for _, r in refs if r.record.snapshot_id is not None}
        chains: list[list[CommitInfo]] = []
        for n, tip in enumerate(sorted(tips, key=str)):
            if progress is not None:
                progress("expire", n, len(tips))
            chain: list[CommitInfo] = []
            async for batch in ancestry(reader, tip, cuts):
                chain.extend(batch)
            chains.append(chain)
        gone: list[list[CommitInfo]] = []
        for tip in sorted(gone_tips - tips, key=str):
            chain = []
            async for batch in ancestry(reader, tip, cuts):
                chain.extend(batch)
            gone.append(chain)
        new, dropped = plan_cuts(chains, older_than, gone)
        if progress is not None:
            progress("expire", len(tips), len(tips))
        if not new:
            return {str(s) for s in dropped | maybe}
        merged = {**cuts, **new}  # gc drops the cuts of the snapshots it deletes
        # the run's operations log entry rides in the same write (SPEC §6.1)
        entry = OpEntry(OpKind.EXPIRATION_RAN, now())
        result = await put_cuts(storage, merged, version, log, entry)
        if result.ok:
            reader.cut_map = merged
            return {str(s) for s in dropped | maybe}
        if result.uncertain:  # ours may have landed (and been built on): the retry tells
            maybe |= dropped
        await asyncio.sleep(short_pause(attempt))  # another expiry got there first
