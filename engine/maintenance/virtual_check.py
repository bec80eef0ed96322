"""fsck's check of virtual chunks: every virtual reference that a branch or tag tip reads
still has its source file, long enough, and unchanged since the reference was made.

Only tips are checked: an older snapshot may rightly name files replaced since (time
travel into it then fails with a clear error, as it should), and shadowed references are
never read. Each distinct (file, pins) is probed once, with a one-byte read at the end of
the furthest chunk any reference names, through the repository's own virtual resolver: so
only containers the opener authorized are read, credentials go only where the opener
confirmed, and the check is exactly what a read would find.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from frazil.format import ARRAY, ChunkKind, SnapshotId

from .. import runtime
from ..errors import FrazilError, VirtualChunkError
from ..merging import merge_segments
from ..objects import ObjectReader
from ..virtual.resolver import VirtualRead, VirtualResolver
from .reach import Problem

_PROBES_PER_BATCH = 1024
_PIN_COLUMNS = ("location", "etag", "last_modified")


async def _tip_targets(reader: ObjectReader, sid: SnapshotId) -> list[pa.Table]:
    """Per array of snapshot ``sid``: its live virtual refs grouped by (file, pins), with
    the furthest byte any of them needs (``end``)."""
    snap = await reader.snapshot(sid)
    out: list[pa.Table] = []
    for node in snap.nodes:
        if node.node_type != ARRAY or not node.segments:
            continue
        loaded = await runtime.gather_limited(
            [reader.manifest(s, cache=False) for s in node.segments], limit=16
        )
        if not any((m.kinds == int(ChunkKind.VIRTUAL)).any() for m in loaded if len(m)):
            continue
        ndim = next((m.coords.shape[1] for m in loaded if len(m)), 0)
        _, rows = merge_segments(loaded, ndim)
        rows = rows.filter(pc.equal(rows.column("kind"), int(ChunkKind.VIRTUAL)))
        if not rows.num_rows:
            continue
        ends = pc.add(rows.column("offset"), rows.column("length"))
        table = pa.table({**{c: rows.column(c) for c in _PIN_COLUMNS}, "end": ends})
        out.append(table.group_by(list(_PIN_COLUMNS)).aggregate([("end", "max"), ("end", "count")]))
    return out


def _probes(parts: Iterable[pa.Table]) -> tuple[list[VirtualRead], int]:
    """One probe per distinct (file, pins), and how many references they cover."""
    tables = [t for t in parts if t.num_rows]
    if not tables:
        return [], 0
    merged = (
        pa.concat_tables(tables)
        .group_by(list(_PIN_COLUMNS))
        .aggregate([("end_max", "max"), ("end_count", "sum")])
    )
    locations = merged.column("location").to_pylist()
    etags = merged.column("etag").to_pylist()
    modified: list[dt.datetime | None] = merged.column("last_modified").to_pylist()
    ends = merged.column("end_max_max").to_numpy(zero_copy_only=False).astype(np.int64)
    probes = [
        VirtualRead(loc, max(int(end) - 1, 0), int(end), etag, lm)
        for loc, etag, lm, end in zip(locations, etags, modified, ends)
    ]
    return probes, int(pc.sum(merged.column("end_count_sum")).as_py() or 0)


async def check_virtual(
    reader: ObjectReader,
    resolver: VirtualResolver,
    tips: dict[SnapshotId, str],
    problems: list[Problem],
) -> tuple[int, int]:
    """Probe the virtual sources the snapshots ``tips`` (id -> "branch main" ...) read;
    append a problem per source that is missing, too short, changed or not readable
    with this repository's authorization ("virtual-unchecked"). Returns (sources probed,
    references they cover)."""
    parts: list[pa.Table] = []
    for sid in tips:
        try:
            parts.extend(await _tip_targets(reader, sid))
        except FrazilError:
            continue  # the object checks report what cannot be read
    probes, refs = _probes(parts)
    readable: list[VirtualRead] = []
    for probe in probes:
        try:  # not authorized / outside every container / unconfirmed endpoint: unchecked
            resolver.authorized_container(probe.location)
        except VirtualChunkError as e:
            problems.append(Problem("virtual-unchecked", probe.location, _message(e, probe)))
            continue
        readable.append(probe)
    for start in range(0, len(readable), _PROBES_PER_BATCH):
        batch = readable[start : start + _PROBES_PER_BATCH]
        for probe, res in zip(batch, await resolver.read_many(batch)):
            if isinstance(res, BaseException):
                problems.append(Problem("virtual", probe.location, _message(res, probe)))
    return len(readable), refs


def _message(e: BaseException, probe: VirtualRead) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{text} (references need its bytes up to offset {probe.end})"
