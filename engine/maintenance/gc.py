"""Garbage collection: delete every object that nothing reaches and that is older than a
cutoff.

``garbage_collect`` treats every snapshot *younger than its cutoff* as a root, so the
objects of a commit that is being written right now (its snapshot written, its ref not
yet moved) are kept even when they point at otherwise unreachable objects.

**Object age.** An object is as old as the *later* of the time in its id (ids start with
their creation time in milliseconds) and the last-modified time its storage lists for it
(where the backend knows one). Either alone would do for objects frazil writes; taking
the later one means a copied or restored object, or a clock that ran ahead, can only make
an object look younger (kept), never older.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from frazil.format import (
    SnapshotId,
)
from frazil.format.keys import (
    FORKS,
    OBJECT_FOLDERS,
)

from ..compaction import Progress
from ..errors import FormatError
from ..objects import ObjectReader
from ..storage.base import ObjectInfo, Storage
from .expiry import prune_cuts
from .reach import DELETE_BATCH, cutoff_ms, id_times_ms, mark


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
    history_segments_deleted: int = 0
    """history segments (``history/``) no kept snapshot's index names"""
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
            + self.history_segments_deleted
        )


def _ages_ms(infos: list[ObjectInfo], ids: list[str]) -> np.ndarray:
    """Each object's age reference (ms): the later of its id time and its last-modified."""
    t_id = id_times_ms(ids)
    t_mod = np.array(
        [-1 if i.last_modified is None else int(i.last_modified.timestamp() * 1000) for i in infos],
        np.int64,
    )
    return np.maximum(t_id, t_mod)


async def garbage_collect(
    storage: Storage,
    reader: ObjectReader,
    older_than: dt.datetime,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> GCSummary:
    """Delete every unreachable snapshot, transaction log, history segment, manifest and
    chunk older than ``older_than`` (see the module docstring for roots and ages)."""
    cutoff = cutoff_ms(older_than)
    # one folder at a time: local listings are GIL-bound (five threads listing at once took
    # 3x the CPU), and a few sequential LIST requests cost little beside what gc reads
    listed = {kind: await storage.list_info(prefix) for kind, prefix in OBJECT_FOLDERS.items()}
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
        "history": pa.array([str(h) for h in found.histories], pa.string()),
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
        for kind in ("snapshot", "transaction_log", "history", "manifest", "chunk"):
            keys = [listed[kind][i].key for i in doomed[kind]]
            for start in range(0, len(keys), DELETE_BATCH):
                batch = keys[start : start + DELETE_BATCH]
                await storage.delete(batch)
                done += len(batch)
                if progress is not None:
                    progress("sweep", done, total)
    if not dry_run and doomed["snapshot"]:
        gone = {SnapshotId.parse(ids["snapshot"][i]) for i in doomed["snapshot"]}
        await prune_cuts(storage, gone)
        reader.cut_map = None
    temporaries = 0 if dry_run else await storage.remove_stale_temporaries(older_than)
    journals = [
        i.key
        for i in await storage.list_info(FORKS)
        if i.last_modified is not None and i.last_modified.timestamp() * 1000 < cutoff
    ]
    if not dry_run:
        for start in range(0, len(journals), DELETE_BATCH):
            await storage.delete(journals[start : start + DELETE_BATCH])
    return GCSummary(
        fork_journals_deleted=len(journals),
        chunks_deleted=len(doomed["chunk"]),
        manifests_deleted=len(doomed["manifest"]),
        snapshots_deleted=len(doomed["snapshot"]),
        transaction_logs_deleted=len(doomed["transaction_log"]),
        history_segments_deleted=len(doomed["history"]),
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
