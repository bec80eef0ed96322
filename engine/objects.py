"""Verified, cached reads of a repository's immutable objects: snapshots, manifests, logs, chunks.

Every object read through a referrer is checked against the checksum the referrer
recorded; Parquet objects are also checked page by page. Decoded snapshots and manifest
segments are cached (by count and by bytes) and shared by all sessions of a repository;
concurrent loads of one object on one event loop share a single read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Container, Mapping
from typing import Any, Generic, TypeVar

import numpy as np

from frazil.format import (
    ChunkId,
    CommitInfo,
    HistoryId,
    HistoryIndex,
    HistorySegmentRef,
    ManifestId,
    ManifestSegment,
    NodeChange,
    SegmentRef,
    Snapshot,
    SnapshotId,
    SnapshotSegments,
    TransactionLog,
    checksum,
    decode_commit_header,
    decode_history,
    decode_manifest_parts,
    decode_snapshot,
    decode_snapshot_segments,
    decode_transaction_log,
)
from frazil.format.blocks import absolute_range, check_blocks, covering, verify_blocks
from frazil.format.common import verify_checksum
from frazil.format.cuts import decode_cuts
from frazil.format.keys import (
    CUTS,
    chunk_key,
    history_key,
    manifest_key,
    snapshot_key,
    transaction_log_key,
)

from . import runtime
from .errors import FormatError, NotFoundError
from .settings import CachingConfig
from .storage.base import ByteRange, Storage, slice_range

_log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")

_TAIL = 64 * 1024
_DECODE_BATCH = 16  # objects decoded per trip to the pool, in bulk reads
_DECODERS = os.cpu_count() or 2  # bulk decodes at once: one per core


class LRU(Generic[K, V]):
    """A thread-safe LRU bounded by total weight."""

    def __init__(self, budget: int, weigh: Callable[[V], int]) -> None:
        self.budget = budget
        self._weigh = weigh
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()
        runtime.reset_in_child(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return None
            self._items.move_to_end(key)
            return hit[0]

    def put(self, key: K, value: V) -> None:
        w = self._weigh(value)
        with self._lock:
            if key in self._items:
                return
            self._items[key] = (value, w)
            self._total += w
            while self._total > self.budget and len(self._items) > 1:
                _, (_, ow) = self._items.popitem(last=False)
                self._total -= ow

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._total = 0


class ObjectReader:
    """Reads and caches a repository's immutable objects."""

    def __init__(
        self,
        storage: Storage,
        manifest_cache_bytes: int = 512 << 20,
        chunk_cache_bytes: int = 64 << 20,
        *,
        caching: CachingConfig | None = None,
    ) -> None:
        self.storage = storage
        nodes = caching.num_snapshot_nodes if caching is not None else None
        refs = caching.num_chunk_refs if caching is not None else None
        chunk_bytes = caching.num_bytes_chunks if caching is not None else None
        self._warned: set[str] = set()
        # snapshots by count, or by nodes where the config bounds them
        self.snapshots: LRU[SnapshotId, Snapshot] = (
            LRU(64, lambda s: 1)
            if nodes is None
            else LRU(nodes, lambda s: self._weigh("snapshot", len(s.nodes), nodes))
        )
        # segments by (manifest object, first row): one object may hold several arrays';
        # by bytes, or by chunk references where the config bounds them
        self.manifests: LRU[tuple[ManifestId, int], ManifestSegment] = (
            LRU(manifest_cache_bytes, lambda m: m.nbytes)
            if refs is None
            else LRU(refs, lambda m: self._weigh("manifest", len(m), refs))
        )
        self.chunks: LRU[ChunkId, bytes] = LRU(
            chunk_cache_bytes if chunk_bytes is None else chunk_bytes, len
        )
        self.bounds_manifest_refs = refs is not None
        # transaction logs: what a rebase reads of every commit it moves over
        self.txlogs: LRU[SnapshotId, TransactionLog] = LRU(256, lambda t: 1)
        self.headers: LRU[SnapshotId, tuple[CommitInfo, HistoryIndex | None]] = LRU(
            4096, lambda h: 1
        )
        self.histories: LRU[HistoryId, list[CommitInfo]] = LRU(1 << 20, len)  # commits
        self.cut_map: dict[SnapshotId, SnapshotId] | None = None  # loaded on first use
        self._inflight: dict[tuple[int, Any], asyncio.Future[Any]] = {}
        self._lock = threading.Lock()
        runtime.reset_in_child(self)

    def _after_fork(self) -> None:
        self._inflight = {}
        self._lock = threading.Lock()

    def _weigh(self, kind: str, weight: int, capacity: int) -> int:
        """``weight``, after warning (once per reader and kind) when one object takes
        much of a cache that ``CachingConfig`` made small: over half of the manifest
        cache, over a fifth of the snapshot cache (Icechunk's thresholds)."""
        share = 2 if kind == "manifest" else 5
        if weight > capacity / share and kind not in self._warned:
            self._warned.add(kind)
            unit, field_ = (
                ("chunk references", "num_chunk_refs")
                if kind == "manifest"
                else ("nodes", "num_snapshot_nodes")
            )
            _log.warning(
                "A %s with %d %s is being loaded into the cache that can only keep %d %s; "
                "consider a larger %s in CachingConfig",
                "manifest segment" if kind == "manifest" else "snapshot",
                weight,
                unit,
                capacity,
                "references" if kind == "manifest" else "nodes",
                field_,
            )
        return weight

    def note_written_segment(self, rows: int) -> None:
        """A commit wrote a manifest segment of ``rows`` references, which later reads
        will load: the cache size warning applies to it as to a loaded one."""
        if self.bounds_manifest_refs:
            self._weigh("manifest", rows, self.manifests.budget)

    async def _once(self, key: Any, load: Callable[[], Awaitable[V]]) -> V:
        """Run ``load`` once per key per event loop, however many callers wait for it."""
        loop_key = (id(asyncio.get_running_loop()), key)
        with self._lock:
            fut = self._inflight.get(loop_key)
            mine = fut is None
            if mine:
                fut = asyncio.get_running_loop().create_future()
                self._inflight[loop_key] = fut
        assert fut is not None
        if not mine:
            return await asyncio.shield(fut)
        try:
            value = await load()
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved
            raise
        else:
            fut.set_result(value)
            return value
        finally:
            with self._lock:
                self._inflight.pop(loop_key, None)

    # -- the one verified read ---------------------------------------------------------
    async def fetch(
        self, key: str, what: str, *, size: int | None = None, byte_range: ByteRange | None = None
    ) -> bytes:
        """The bytes of ``key`` (``what`` names it in errors: "snapshot X does not
        exist"), checked against the ``size`` its referrer recorded; decoders check the
        checksum. Every read of an object goes through here."""
        try:
            data = await self.storage.get(key, byte_range)
        except NotFoundError:
            raise NotFoundError(f"{what} does not exist in storage") from None
        if size is not None and len(data) != size:
            raise FormatError(
                f"{what} is damaged: {len(data)} bytes, {size} recorded when it was written"
            )
        return data

    async def _snapshot_bytes(self, sid: SnapshotId) -> tuple[str, bytes]:
        key = snapshot_key(sid)
        return key, await self.fetch(key, f"snapshot {sid}")

    def _decoded_snapshot(
        self, sid: SnapshotId, key: str, data: bytes, checksum: int | None
    ) -> Snapshot:
        snap = decode_snapshot(data, key, checksum)
        if snap.id != sid:
            raise FormatError(f"{key}: holds snapshot {snap.id}, not {sid}")
        self.snapshots.put(sid, snap)
        return snap

    # -- objects -------------------------------------------------------------------------
    async def snapshot(
        self, sid: SnapshotId, checksum: int | None = None, *, decode_in_thread: bool = False
    ) -> Snapshot:
        """A snapshot, verified (cached). ``decode_in_thread``: decode in the I/O pool, for
        callers that load many at once (decoding then uses every core)."""
        hit = self.snapshots.get(sid)
        if hit is not None:
            return hit

        async def load() -> Snapshot:
            key, data = await self._snapshot_bytes(sid)
            if decode_in_thread:
                return await runtime.in_thread(self._decoded_snapshot, sid, key, data, checksum)
            return self._decoded_snapshot(sid, key, data, checksum)

        return await self._once(("s", sid), load)

    async def snapshot_segments(
        self,
        sids: list[SnapshotId],
        checksums: Mapping[SnapshotId, int | None],
        missing_ok: Container[SnapshotId] = (),
    ) -> list[SnapshotSegments]:
        """The segment lists of many snapshots (``decode_snapshot_segments``), each verified
        (against ``checksums.get(sid)`` where given), uncached: read concurrently, then
        decoded in the pool a batch per trip, so a thread hop is paid per batch, not per
        snapshot. Those in ``missing_ok`` that do not exist are left out; any other that
        does not exist raises."""

        async def read(sid: SnapshotId) -> tuple[SnapshotId, str, bytes] | None:
            try:
                return (sid, *await self._snapshot_bytes(sid))
            except NotFoundError:
                if sid in missing_ok:
                    return None
                raise

        found = [f for f in await runtime.gather_limited([read(s) for s in sids], 32) if f]

        memo: dict[Any, Any] = {}  # most snapshots share most segments

        def decode(batch: list[tuple[SnapshotId, str, bytes]]) -> list[SnapshotSegments]:
            out = []
            for sid, key, data in batch:
                snap = decode_snapshot_segments(data, key, checksums.get(sid), memo)
                if snap.info.snapshot_id != sid:
                    raise FormatError(f"{key}: holds snapshot {snap.info.snapshot_id}, not {sid}")
                out.append(snap)
            return out

        step = _DECODE_BATCH
        parts = await runtime.gather_limited(
            [runtime.in_thread(decode, found[i : i + step]) for i in range(0, len(found), step)],
            limit=_DECODERS,
        )
        return [snap for part in parts for snap in part]

    async def snapshot_checksum(self, sid: SnapshotId) -> int:
        """Read a snapshot whole, check it decodes, and return its checksum (for new refs)."""
        key, data = await self._snapshot_bytes(sid)
        self._decoded_snapshot(sid, key, data, None)
        return checksum(data)

    async def load_cuts(self) -> dict[SnapshotId, SnapshotId]:
        """The history cuts expiry recorded (SPEC §4.6), read afresh."""
        try:
            data = await self.storage.get(CUTS)
        except NotFoundError:
            cuts: dict[SnapshotId, SnapshotId] = {}
        else:
            cuts = await runtime.in_thread(decode_cuts, data, CUTS)
        self.cut_map = cuts
        return cuts

    async def cuts(self) -> dict[SnapshotId, SnapshotId]:
        """The history cuts as last read (read once, on first use)."""
        return self.cut_map if self.cut_map is not None else await self.load_cuts()

    async def commit_info(self, sid: SnapshotId) -> CommitInfo:
        """Commit info from the snapshot's footer (a small read, never the node table),
        with the parent that history cuts give it."""
        info = (await self.commit_header(sid))[0]
        cut = (await self.cuts()).get(sid)
        return info if cut is None else dataclasses.replace(info, parent_id=cut)

    async def parent_info(self, info: CommitInfo) -> CommitInfo | None:
        """The commit info of ``info``'s parent. A parent that is gone because another
        process expired history since the cuts were read is found again from fresh cuts."""
        if info.parent_id is None:
            return None
        try:
            return await self.commit_info(info.parent_id)
        except NotFoundError:
            before = self.cut_map
            if (await self.load_cuts()) == before:
                raise
            again = (await self.commit_info(info.snapshot_id)).parent_id
            if again is None or again == info.parent_id:
                raise
            return await self.commit_info(again)

    async def commit_header(self, sid: SnapshotId) -> tuple[CommitInfo, HistoryIndex | None]:
        """Commit info and history index from the snapshot's footer (cached)."""
        hit = self.snapshots.get(sid)
        if hit is not None:
            return hit.info, hit.history
        cached = self.headers.get(sid)
        if cached is not None:
            return cached
        key = snapshot_key(sid)
        tail = await self.fetch(key, f"snapshot {sid}", byte_range=(-_TAIL, None))
        found = decode_commit_header(tail, key)
        if found is None:
            snap = await self.snapshot(sid)
            found = snap.info, snap.history
        if found[0].snapshot_id != sid:
            raise FormatError(f"{key}: holds snapshot {found[0].snapshot_id}, not {sid}")
        self.headers.put(sid, found)
        return found

    async def history(self, seg: HistorySegmentRef) -> list[CommitInfo]:
        """The commit infos of a history segment, verified (cached)."""
        hit = self.histories.get(seg.history_id)
        if hit is not None:
            return hit
        key = history_key(seg.history_id)
        data = await self.fetch(key, f"history {key}", size=seg.size)
        infos = await runtime.in_thread(decode_history, data, key, seg.checksum, seg.rows)
        self.histories.put(seg.history_id, infos)
        return infos

    async def parent(self, sid: SnapshotId) -> SnapshotId | None:
        """The parent of snapshot ``sid`` (from its footer and the history cuts)."""
        found = await self.parent_info(await self.commit_info(sid))
        return None if found is None else found.snapshot_id

    async def manifest_bytes(self, seg: SegmentRef) -> tuple[str, bytes]:
        """A segment's manifest object, checked against its recorded size (decoders check
        its checksum): for readers that decode it themselves, uncached."""
        key = manifest_key(seg.manifest_id)
        return key, await self.fetch(key, f"manifest {key}", size=seg.size)

    async def manifest(self, seg: SegmentRef, *, cache: bool = True) -> ManifestSegment:
        """A segment, verified; from the shared cache, which it fills with every segment
        of its object (``cache=False``: neither, for one-off bulk reads)."""
        mid = seg.manifest_id
        hit = self.manifests.get((mid, seg.row_offset)) if cache else None
        if hit is not None:
            return hit

        async def load() -> dict[int, ManifestSegment]:
            key, data = await self.manifest_bytes(seg)
            parts = await runtime.in_thread(decode_manifest_parts, data, key, seg.checksum)
            if cache:
                for offset, part in parts.items():  # every array in the object, one read
                    self.manifests.put((mid, offset), part)
            return parts

        parts = await (self._once(("m", mid), load) if cache else load())
        m = parts.get(seg.row_offset)
        if m is None or len(m) != seg.rows:
            raise FormatError(
                f"{manifest_key(mid)}: has no segment of {seg.rows} rows at row {seg.row_offset}"
            )
        return m

    async def transaction_log(self, sid: SnapshotId, checksum: int | None = None) -> TransactionLog:
        hit = self.txlogs.get(sid)
        if hit is not None:
            return hit
        key = transaction_log_key(sid)
        data = await self.fetch(key, f"transaction log {key}")
        log = decode_transaction_log(data, key, checksum)
        if log.snapshot_id != sid:
            raise FormatError(f"{key}: is the transaction log of {log.snapshot_id}, not {sid}")
        self.txlogs.put(sid, log)
        return log

    async def expanded_log(self, log: TransactionLog) -> TransactionLog:
        """``log`` with every ``chunks`` change's coordinates listed: those of the manifest
        segments a large commit's log names instead (format version 2) are read and
        appended (uncached; such a log is big by construction)."""
        if not any(c.segments for c in log.changes):
            return log
        changes = []
        for c in log.changes:
            if c.segments:
                loaded = await runtime.gather_limited(
                    [self.manifest(s, cache=False) for s in c.segments], limit=16
                )
                listed = [] if c.chunks is None else [c.chunks]
                coords = np.concatenate([*listed, *(m.coords for m in loaded)])
                c = NodeChange(c.change, c.path, c.node_id, coords)
            changes.append(c)
        return dataclasses.replace(log, changes=tuple(changes))

    def forget(self) -> None:
        """Drop every cached object (after garbage collection deleted some)."""
        for cache in (self.snapshots, self.manifests, self.chunks, self.txlogs):
            cache.clear()
        self.cut_map = None

    async def chunk(
        self,
        cid: ChunkId,
        checksum: int | None,
        byte_range: ByteRange | None = None,
        *,
        length: int = 0,
        block_size: int = 0,
        blocks: bytes | None = None,
    ) -> bytes:
        """A native chunk's bytes, verified whole. A range of an object whose manifest row
        records block checksums (``blocks``, ``length``) is fetched alone with the blocks
        it covers, each verified; other ranges are cut from the verified whole object
        (kept for a while, so sharded reads of small objects fetch them once)."""
        cached = self.chunks.get(cid) if byte_range is not None else None
        if cached is None:
            key = chunk_key(cid)
            if byte_range is not None and blocks is not None:
                return await self._chunk_blocks(key, byte_range, length, block_size, blocks)
            data = await self.fetch(key, f"chunk object {key}")
            verify_checksum(data, checksum, f"chunk {key}")
            if byte_range is None:
                return data
            self.chunks.put(cid, data)
            cached = data
        return slice_range(cached, byte_range)

    async def _chunk_blocks(
        self, key: str, byte_range: ByteRange, length: int, block_size: int, blocks: bytes
    ) -> bytes:
        """``byte_range`` of the chunk object ``key``: only the blocks it covers are
        fetched, and each is checked against its recorded checksum (SPEC §5)."""
        what = f"chunk object {key}"
        check_blocks(length, block_size, blocks, what)
        start, stop = absolute_range(*byte_range, length)
        if start == stop:
            return b""
        first, lo, hi = covering(start, stop, length, block_size)
        data = await self.fetch(key, what, size=hi - lo, byte_range=(lo, hi))
        verify_blocks(data, first, blocks, block_size, what)
        return data[start - lo : stop - lo]
