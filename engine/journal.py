"""Fork journals: a fork copy's staged writes recorded on storage, and read back by merge.

A ``ForkSession`` pickled to a worker arrives there as a copy. Writes through the copy
stage changes in the copy's memory, which a merge sees only if the copy comes back. So
that they are never lost when it does not (``ds.to_zarr(fork.store)`` under a distributed
scheduler drops the copies it made), a copy records what it staged: before a write
through ``fork.store`` returns, the chunks and nodes it touched are written as one
journal object (``frazil.format.journal``); writes made together share one object (the
first waiting writer writes everything recorded by then; the others find theirs done).

``Session.merge(fork)`` lists the journals of the fork's copies, skips the writers whose
changes it was handed (each change set names the writers it holds), replays the others
into change sets and merges them like returned forks: conflicts between copies (the same
chunk written with different bytes) are reported, identical writes (a retried task) are
not. Journals are garbage: the merging session deletes them after its commit, and
``garbage_collect`` removes any older than its cutoff.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from frazil.format import ChunkRef, ManifestId, NodeId, NodeRecord
from frazil.format.journal import (
    JournalBatch,
    JournalNode,
    decode_journal,
    encode_journal,
    journal_key,
    parse_journal_key,
)
from frazil.format.manifest import ManifestSegment, ref_rows

from . import _aio
from .changeset import ChangeSet, Coord
from .storage.base import Storage

FORKS_PREFIX = "forks/"


def new_token() -> str:
    return os.urandom(8).hex()


class ForkJournal:
    """The journal of one writer (a fork copy): what it touched since the last flush."""

    def __init__(self, storage: Storage, fork_id: str) -> None:
        self.storage = storage
        self.fork_id = fork_id
        self.writer_id = new_token()
        self._seq = 0
        self._nodes: set[str] = set()
        self._chunks: dict[NodeId, set[Coord]] = {}
        self._blocks: list[tuple[NodeId, np.ndarray, pa.Table]] = []
        self._cleared = False
        self._recorded = 0  # changes recorded, and of those, written to storage
        self._flushed = 0
        self._lock = threading.Lock()
        self._flushing: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary())
        _aio.reset_in_child(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._flushing = weakref.WeakKeyDictionary()

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
        """Write what was recorded so far (if a flush running now did not already)."""
        if not self.pending:
            return
        loop = _aio.loop()
        if asyncio.get_running_loop() is not loop:  # one loop orders every flush
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
                self.flush(changes), loop))
            return
        wanted = self._recorded
        lock = self._flushing.get(loop)
        if lock is None:
            lock = self._flushing[loop] = asyncio.Lock()
        async with lock:
            if self._flushed >= wanted:
                return  # a flush that ran while we waited wrote ours too
            with self._lock:
                upto = self._recorded
                nodes, self._nodes = self._nodes, set()
                chunks, self._chunks = self._chunks, {}
                blocks, self._blocks = self._blocks, []
                cleared, self._cleared = self._cleared, False
                seq = self._seq
                self._seq += 1
            batch = _batch(self.fork_id, self.writer_id, seq, changes, nodes, chunks,
                           blocks, cleared)
            await self.storage.put(journal_key(self.fork_id, self.writer_id, seq),
                                   encode_journal(batch))
            self._flushed = upto


def _batch(fork_id: str, writer_id: str, seq: int, changes: ChangeSet, nodes: set[str],
           chunks: dict[NodeId, set[Coord]], blocks: list[tuple[NodeId, np.ndarray, pa.Table]],
           cleared: bool) -> JournalBatch:
    """The journal object for what was touched: each node and chunk as it is staged
    now (bulk blocks first, as staged; single chunks after, as they stand now)."""
    out_nodes = []
    for path in sorted(nodes):
        rec = changes.nodes.get(path)
        out_nodes.append(JournalNode(path) if rec is None else
                         JournalNode(path, rec.node_id, rec.node_type, rec.zarr_json))
    parts: list[tuple[NodeId, np.ndarray, pa.Table]] = list(blocks)
    for node_id, coords in chunks.items():
        table = changes.chunks.get(node_id)
        if table is None:  # the node was deleted since: its node entry says so
            continue
        staged = [(c, table.get(c)) for c in sorted(coords)]
        staged = [(c, r) for c, r in staged if r is not None]
        if staged:
            parts.append((node_id, np.array([c for c, _ in staged], np.int64).reshape(
                len(staged), table.ndim), ref_rows([r for _, r in staged])))
    return JournalBatch(fork_id, writer_id, seq, tuple(out_nodes), tuple(parts), cleared)


# -- reading journals back ----------------------------------------------------------------
async def read_journals(storage: Storage, fork_ids: Iterable[str], skip: set[str],
                        base: Mapping[str, NodeRecord]
                        ) -> dict[str, ChangeSet]:
    """The change sets of every writer of ``fork_ids`` not in ``skip``, replayed from its
    journal objects in order, by writer id."""
    keys: dict[str, list[tuple[int, str]]] = {}
    for fork_id in sorted(set(fork_ids)):
        for key in await storage.list(f"{FORKS_PREFIX}{fork_id}/"):
            parsed = parse_journal_key(key)
            if parsed is not None and parsed[1] not in skip:
                keys.setdefault(parsed[1], []).append((parsed[2], key))
    ordered = [(writer, key) for writer, items in sorted(keys.items())
               for _, key in sorted(items)]
    datas = await _aio.gather_limited([storage.get(key) for _, key in ordered])
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
            changes.delete_node(n.path, old.node_id if isinstance(old, NodeRecord) else None,
                                n.path in base)
            continue
        assert n.node_type is not None and n.zarr_json is not None
        if isinstance(old, NodeRecord) and old.node_id != n.node_id:
            changes.chunks.pop(old.node_id, None)
        segments = old.segments if isinstance(old, NodeRecord) and \
            old.node_id == n.node_id else ()
        changes.set_node(NodeRecord(n.path, n.node_id, n.node_type, n.zarr_json, segments))
    for node_id, coords, rows in batch.chunks:
        if not len(coords):
            continue
        segment = ManifestSegment(ManifestId.new(), node_id, coords, rows)
        table = changes.table(node_id, coords.shape[1])
        for i, c in enumerate(coords.tolist()):
            ref: ChunkRef = segment.ref(i)
            table.set(tuple(c), ref)


class _Missing:
    pass


_MISSING: Any = _Missing()


async def delete_journals(storage: Storage, fork_ids: Iterable[str]) -> None:
    """Remove the journals of ``fork_ids`` (best effort: gc removes what is left)."""
    for fork_id in sorted(set(fork_ids)):
        keys = await storage.list(f"{FORKS_PREFIX}{fork_id}/")
        if keys:
            await storage.delete(keys)
