"""Chunk statistics: native, inline and virtual chunks and their bytes over everything
reachable."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from frazil.format import (
    ChunkKind,
)

from .. import runtime
from ..compaction import Progress
from ..objects import ObjectReader
from ..storage.base import Storage
from .reach import manifest_rows, mark


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
