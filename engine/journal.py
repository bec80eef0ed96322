"""Fork journals: a fork copy's staged writes recorded on storage, and read back by merge.

A ``ForkSession`` pickled to a worker arrives there as a copy. Writes through the copy
stage changes in the copy's memory, which a merge sees only if the copy comes back. So
that they are never lost when it does not (``ds.to_zarr(fork.store)`` under a distributed
scheduler drops the copies it made), a copy records what it staged: before a write
through ``fork.store`` returns, the chunks and nodes it touched are written as one
journal object (``frazil.format.journal``); writes made together share one object (a
writer takes everything recorded and not yet taken; one whose change was taken by another
waits for that object), and objects are written concurrently.

``Session.merge(fork)`` lists the journals of the fork's copies, skips the writers whose
changes it was handed (each change set names the writers it holds), replays the others
into change sets and merges them like returned forks: conflicts between copies (the same
chunk written with different bytes) are reported, identical writes (a retried task) are
not. Journals are garbage: the merging session deletes them after its commit, and
``garbage_collect`` removes any older than its cutoff.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from frazil.format import Coord, NodeId, NodeRecord
from frazil.format.journal import (
    JournalBatch,
    JournalNode,
    Rows,
    decode_journal,
    encode_journal,
    split_batch,
)
from frazil.format.keys import fork_prefix, journal_key, marker_key, parse_journal_key

from . import runtime
from .changeset import ChangeSet
from .errors import InvalidInputError, StorageError
from .storage.base import Storage

_SETTLE_TURNS = 2  # event-loop turns a flush waits for other writes to join its object


def new_token() -> str:
    return os.urandom(8).hex()


class ForkJournal:
    """The journal of one writer (a fork copy): what it touched since the last flush.
    With ``marker_only`` (``fork(journal=False)``), only the fact that it wrote: one
    empty marker object at its first write."""

    def __init__(self, storage: Storage, fork_id: str, marker_only: bool = False) -> None:
        self.storage = storage
        self.fork_id = fork_id
        self.marker_only = marker_only
        self.writer_id = new_token()
        self._seq = 0
        self._nodes: set[str] = set()
        self._chunks: dict[NodeId, set[Coord]] = {}
        self._blocks: list[tuple[NodeId, np.ndarray, pa.Table]] = []
        self._cleared = False
        # changes recorded; of those, taken into journal objects; and known on storage
        self._recorded = self._taken = self._flushed = 0
        self._inflight: list[concurrent.futures.Future[None]] = []  # objects being written
        self._failed: BaseException | None = None
        self._lock = threading.Lock()
        runtime.reset_in_child(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._inflight = []

    # -- recording (under the session's staging calls) ------------------------------------
    def node(self, path: str) -> None:
        with self._lock:
            self._nodes.add(path)
            self._recorded += 1

    def chunk(self, node_id: NodeId, coord: Coord) -> None:
        with self._lock:
            self._chunks.setdefault(node_id, set()).add(coord)
            self._recorded += 1

    def block(self, node_id: NodeId, coords: np.ndarray, rows: pa.Table) -> None:
        with self._lock:
            self._blocks.append((node_id, coords, rows))
            self._recorded += 1

    def clear(self) -> None:
        with self._lock:
            self._nodes.clear()
            self._chunks.clear()
            self._blocks.clear()
            self._cleared = True
            self._recorded += 1

    @property
    def pending(self) -> bool:
        return self._recorded != self._flushed

    # -- flushing -----------------------------------------------------------------------
    async def flush(self, changes: ChangeSet) -> None:
        """Return once everything recorded before the call is on storage: what nobody took
        yet goes out as a new journal object, written concurrently with those already in
        flight (which may hold the rest of ours, and are waited for). Runs on the
        caller's loop; taking, building and numbering happen under one lock, so a newer
        batch never gets an older number."""
        if self._failed is not None:
            raise StorageError(
                f"an earlier journal write of this fork copy failed "
                f"({self._failed}); its writes cannot reach the merge: "
                "run the task again"
            ) from self._failed
        if not self.pending:
            return
        if self.marker_only:
            await self._mark()
            return
        for _ in range(_SETTLE_TURNS):  # let writes finishing together join one object
            await asyncio.sleep(0)
        with self._lock:
            waits = list(self._inflight)
            pieces: list[JournalBatch] = []
            if self._taken < self._recorded:
                upto = self._recorded
                nodes, self._nodes = self._nodes, set()
                chunks, self._chunks = self._chunks, {}
                blocks, self._blocks = self._blocks, []
                cleared, self._cleared = self._cleared, False
                self._taken = upto
                pieces = split_batch(
                    _batch(
                        self.fork_id,
                        self.writer_id,
                        self._seq,
                        changes,
                        nodes,
                        chunks,
                        blocks,
                        cleared,
                    )
                )
                self._seq += len(pieces)
                mine: concurrent.futures.Future[None] = concurrent.futures.Future()
                self._inflight.append(mine)
                waits.append(mine)
        if pieces:
            try:
                await runtime.gather_limited(
                    [
                        self.storage.put(
                            journal_key(self.fork_id, self.writer_id, p.seq), encode_journal(p)
                        )
                        for p in pieces
                    ]
                )
            except BaseException as e:
                mine.set_exception(e)
                self._failed = e  # its changes are not on storage: never claim they are
                raise
            else:
                mine.set_result(None)
            finally:
                with self._lock:
                    self._inflight.remove(mine)
                    if not self._inflight:
                        self._flushed = self._taken
        await asyncio.gather(*(asyncio.wrap_future(w) for w in waits))

    async def _mark(self) -> None:
        with self._lock:
            first, upto = self._taken == 0, self._recorded
            self._taken = upto
            self._nodes, self._chunks, self._blocks = set(), {}, []
        if first:
            await self.storage.put(marker_key(self.fork_id, self.writer_id), b"")
        self._flushed = max(self._flushed, upto)


def _batch(
    fork_id: str,
    writer_id: str,
    seq: int,
    changes: ChangeSet,
    nodes: set[str],
    chunks: dict[NodeId, set[Coord]],
    blocks: list[tuple[NodeId, np.ndarray, pa.Table]],
    cleared: bool,
) -> JournalBatch:
    """The journal object for what was touched: each node and chunk as it is staged
    now (bulk blocks first, as staged; single chunks after, as they stand now)."""
    out_nodes = []
    for path in sorted(nodes):
        rec = changes.nodes.get(path)
        out_nodes.append(
            JournalNode(path)
            if rec is None
            else JournalNode(path, rec.node_id, rec.node_type, rec.zarr_json)
        )
    parts: list[tuple[NodeId, np.ndarray, Rows]] = list(blocks)
    for node_id, coords in chunks.items():
        table = changes.chunks.get(node_id)
        if table is None:  # the node was deleted since: its node entry says so
            continue
        staged = [(c, table.get(c)) for c in sorted(coords)]
        refs = [r for _, r in staged if r is not None]
        if refs:
            parts.append(
                (
                    node_id,
                    np.array([c for c, r in staged if r is not None], np.int64).reshape(
                        len(refs), table.ndim
                    ),
                    refs,
                )
            )
    return JournalBatch(fork_id, writer_id, seq, tuple(out_nodes), tuple(parts), cleared)


# -- reading journals back ----------------------------------------------------------------
async def read_journals(
    storage: Storage, fork_ids: Iterable[str], skip: set[str], base: Mapping[str, NodeRecord]
) -> dict[str, ChangeSet]:
    """The change sets of every writer of ``fork_ids`` not in ``skip``, replayed from its
    journal objects in order, by writer id. ``InvalidInputError`` if a writer that keeps
    no journal (``fork(journal=False)``) wrote and is not in ``skip``: its writes exist
    only in a copy that was not handed back."""
    keys: dict[str, list[tuple[int, str]]] = {}
    unjournaled: list[str] = []
    for fork_id in sorted(set(fork_ids)):
        for key in await storage.list(fork_prefix(fork_id)):
            parsed = parse_journal_key(key)
            if parsed is None or parsed[1] in skip:
                continue
            if parsed[2] is None:
                unjournaled.append(parsed[1])
            else:
                keys.setdefault(parsed[1], []).append((parsed[2], key))
    if unjournaled:
        raise InvalidInputError(
            f"{len(unjournaled)} copies of this fork wrote on workers and were not handed "
            "back, and the fork keeps no journal (fork(journal=False)), so their writes "
            "would be lost: return the forks from the tasks and merge those, or fork with "
            "journal=True (the default), or write with frazil.xarray.to_frazil / "
            "frazil.dask.store_dask"
        )
    ordered = [(writer, key) for writer, items in sorted(keys.items()) for _, key in sorted(items)]
    datas = await runtime.gather_limited([storage.get(key) for _, key in ordered])
    out: dict[str, ChangeSet] = {}
    for (writer, key), data in zip(ordered, datas):
        batch = decode_journal(data, key)
        _replay(out.setdefault(writer, ChangeSet()), batch, base)
    for writer, changes in out.items():
        changes.writers.add(writer)
    return out


def _replay(changes: ChangeSet, batch: JournalBatch, base: Mapping[str, NodeRecord]) -> None:
    if batch.cleared:
        changes.clear()
    for n in batch.nodes:
        current = changes.nodes.get(n.path, _MISSING)
        old = base.get(n.path) if current is _MISSING else current
        if n.node_id is None:
            changes.delete_node(
                n.path, old.node_id if isinstance(old, NodeRecord) else None, n.path in base
            )
            continue
        assert n.node_type is not None and n.zarr_json is not None
        if isinstance(old, NodeRecord) and old.node_id != n.node_id:
            changes.chunks.pop(old.node_id, None)
        segments = old.segments if isinstance(old, NodeRecord) and old.node_id == n.node_id else ()
        changes.set_node(NodeRecord(n.path, n.node_id, n.node_type, n.zarr_json, segments))
    for node_id, coords, refs in batch.chunks:
        if not len(coords):
            continue
        assert isinstance(refs, list)  # decoded journals hold ChunkRef values
        table = changes.table(node_id, coords.shape[1])
        for c, ref in zip(coords.tolist(), refs):
            table.set(tuple(c), ref)


class _Missing:
    pass


_MISSING: Any = _Missing()


async def delete_journals(storage: Storage, fork_ids: Iterable[str]) -> None:
    """Remove the journals of ``fork_ids`` (best effort: gc removes what is left)."""
    for fork_id in sorted(set(fork_ids)):
        keys = await storage.list(fork_prefix(fork_id))
        if keys:
            await storage.delete(keys)
