"""Merging manifest segments in every commit: the size-tiered policy that keeps the number of
segments of an array bounded as history grows, and the merge a commit does by it.

Each commit that writes chunks of an array puts a small segment in front of the array's list.
Left alone, the list (and with it the snapshot, every read of a chunk that is in no recent
segment, and every full listing) grows with the number of commits. So a commit first
merges, in the arrays it writes, the runs of segments the policy picks:

* A segment's *tier* is ``floor(log_F(rows))`` for the fanout ``F``
  (``RepositoryConfig.manifest_merge_fanout``, default 8), capped at the *top* tier, the
  tier of ``manifest_split_rows / F`` rows, or of ``cells / F`` rows (but at least tier
  1) if that is lower, for an array of ``cells`` chunks in its grid: no merged segment
  holds more rows than the array has chunks, so above that tier merging no longer makes
  segments larger, only more of them (an array of 1,000 chunks rewritten at random would
  keep up to ``F - 1`` segments of 512 to 1,000 rows, each read by most reads).
* ``F`` or more adjacent segments of one tier below the top are merged into one run of
  segments (newest reference per coordinate; tombstones kept unless the run reaches the
  oldest segment, cut into pieces of at most ``manifest_split_rows`` rows). The result is of
  a higher tier (or the same one if the run mostly rewrote the same chunks), and fewer.
* Adjacent top-tier segments (large ones, such as a whole array written in one commit) are
  merged only when they hold more references than the grid cells of their bounding box:
  then some coordinate is there twice, and merging frees the shadowed references.

So an array's list holds at most ``F - 1`` segments per tier and tier run besides its
large segments, a reference is rewritten about once per tier it climbs, and a commit's
merging work is amortised: most commits merge nothing, one in ``F`` merges ``F`` small
segments, one in ``F^2`` merges ``F`` of those, and so on. Merging replaces segments by
segments with the same live references in the same place of the list, so content never
changes; it happens while the commit is prepared, against the commit's own base, and is
redone on the new base if the commit rebases.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from frazil.format import (
    ARRAY,
    ChunkKind,
    ManifestId,
    ManifestSegment,
    NodeId,
    NodeRecord,
    SegmentRef,
    Snapshot,
)
from frazil.format.manifest import SCHEMA as MANIFEST_SCHEMA

from . import runtime
from .commit import RegionSizes, build_segments, same_region
from .objects import ObjectReader
from .storage.base import Storage
from .zarrmeta import parse_zarr_json

_ROW_COLUMNS = [f.name for f in MANIFEST_SCHEMA if f.name != "coord"]
DEFAULT_FANOUT = 8
_MAX_MERGES = 64  # per array and commit; each merge shrinks the list, this is a backstop


def live_rows(
    segments: list[ManifestSegment], ndim: int, *, keep_tombstones: bool = False
) -> np.ndarray:
    """Row numbers (into the segments' rows concatenated, newest segment first) of the
    live refs, in coordinate order: per coordinate the newest row, tombstones dropped
    (``keep_tombstones``: kept, for merging segments that older ones follow)."""
    sizes = [len(m) for m in segments]
    if not segments or not sum(sizes):
        return np.zeros(0, np.int64)
    coords = np.concatenate([m.coords for m in segments])
    age = np.repeat(np.arange(len(segments), dtype=np.int32), sizes)
    kinds = np.concatenate([m.kinds for m in segments])
    order = np.lexsort((age, *[coords[:, d] for d in range(ndim - 1, -1, -1)]))
    ordered = coords[order]
    first = np.ones(len(order), bool)
    if len(order) > 1:
        first[1:] = (ordered[1:] != ordered[:-1]).any(axis=1) if ndim else False
    keep = order[first]
    return keep if keep_tombstones else keep[kinds[keep] != int(ChunkKind.DELETED)]


def merge_segments(
    segments: list[ManifestSegment], ndim: int, *, keep_tombstones: bool = False
) -> tuple[np.ndarray, pa.Table]:
    """The live refs of ``segments`` (newest first): (sorted coords, rows without
    ``coord``); for each coordinate the newest segment's row, tombstones dropped unless
    ``keep_tombstones``."""
    keep = live_rows(segments, ndim, keep_tombstones=keep_tombstones)
    if not len(keep):
        return np.zeros((0, ndim), np.int64), pa.table(
            {n: pa.array([], MANIFEST_SCHEMA.field(n).type) for n in _ROW_COLUMNS}
        )
    coords = np.concatenate([m.coords for m in segments])[keep]
    rows = pa.concat_tables([m.table.select(_ROW_COLUMNS) for m in segments])
    return coords, rows.take(pa.array(keep))  # take gathers across chunks: no combined copy


def split_parts(
    coords: np.ndarray, rows: pa.Table, size: int
) -> Iterator[tuple[np.ndarray, pa.Table]]:
    for start in range(0, len(coords), size):
        yield coords[start : start + size], rows.slice(start, size)


def tier(rows: int, fanout: int) -> int:
    """``floor(log_fanout(rows))``, 0 for empty segments."""
    t, size = 0, fanout
    while rows >= size:
        t, size = t + 1, size * fanout
    return t


def top_tier(split_rows: int, fanout: int, cells: int | None = None) -> int:
    """The tier of large segments: those of at least ``split_rows / fanout`` rows, or
    ``cells / fanout`` rows for an array of ``cells`` chunks (None: unknown), whichever
    is fewer; but for the array's size, never below tier 1 (else every commit rewriting a
    chunk of a small array would merge, writing an object of its own)."""
    top = tier(max(1, split_rows // fanout), fanout)
    if cells is None:
        return top
    return min(top, max(1, tier(max(1, cells // fanout), fanout)))


def grid_cells(node: NodeRecord) -> int | None:
    """The number of chunks in ``node``'s chunk grid (None: not a regular grid)."""
    grid = parse_zarr_json(node.zarr_json, node.path).grid
    return None if grid is None else math.prod(grid)


def _cells(segments: tuple[SegmentRef, ...]) -> int:
    """Grid cells in the bounding box of ``segments`` (1 for 0-D arrays)."""
    lo = [min(v) for v in zip(*(s.extent_min for s in segments))]
    hi = [max(v) for v in zip(*(s.extent_max for s in segments))]
    return math.prod(h - low + 1 for low, h in zip(lo, hi))


def tier_runs(tiers: list[int]) -> Iterator[slice]:
    """The maximal runs of adjacent equal tiers, newest first."""
    start = 0
    while start < len(tiers):
        stop = start + 1
        while stop < len(tiers) and tiers[stop] == tiers[start]:
            stop += 1
        yield slice(start, stop)
        start = stop


def next_run(
    segments: tuple[SegmentRef, ...], fanout: int, split_rows: int, cells: int | None = None
) -> slice | None:
    """The newest run of ``segments`` (newest first, of an array of ``cells`` chunks) the
    policy merges, or None."""
    if fanout < 2 or len(segments) < 2:
        return None
    top = top_tier(split_rows, fanout, cells)
    tiers = [min(tier(s.rows, fanout), top) for s in segments]
    for run in tier_runs(tiers):
        part = segments[run]
        if tiers[run.start] < top and len(part) >= fanout:
            return run
        if tiers[run.start] == top and len(part) >= 2 and sum(s.rows for s in part) > _cells(part):
            return run
    return None


async def merge_node(
    reader: ObjectReader, storage: Storage, node: NodeRecord, fanout: int, split_rows: int
) -> NodeRecord:
    """``node`` with every run the policy picks merged. A merge may take the output of the
    one before it (kept in memory); only the segments of the final list are written."""
    ndim = parse_zarr_json(node.zarr_json, node.path).ndim
    cells = grid_cells(node)
    segments = node.segments
    made: dict[ManifestId, tuple[ManifestSegment, tuple[str, bytes]]] = {}

    async def load(seg: SegmentRef) -> ManifestSegment:
        return made[seg.manifest_id][0] if seg.manifest_id in made else await reader.manifest(seg)

    for _ in range(_MAX_MERGES):
        run = next_run(segments, fanout, split_rows, cells)
        if run is None:
            break
        loaded = await runtime.gather_limited([load(s) for s in segments[run]])
        last = run.stop == len(segments)  # nothing older: tombstones hide nothing
        coords, rows = merge_segments(loaded, ndim, keep_tombstones=not last)
        parts = list(split_parts(coords, rows, split_rows))
        merged, objects, _ = build_segments(node.node_id, parts)
        for ref, obj, (part, part_rows) in zip(merged, objects, parts):
            made[ref.manifest_id] = (
                ManifestSegment(ref.manifest_id, node.node_id, part, part_rows),
                obj,
            )
        segments = (*segments[: run.start], *merged, *segments[run.stop :])
    final = [made[s.manifest_id][1] for s in segments if s.manifest_id in made]
    await runtime.gather_limited([storage.put(k, b) for k, b in final])
    return dataclasses.replace(node, segments=segments)


async def merge_for_commit(
    reader: ObjectReader,
    storage: Storage,
    base: Snapshot,
    touched: set[NodeId],
    fanout: int,
    split_rows: int,
    region_sizes: RegionSizes | None = None,
) -> Snapshot:
    """``base`` with the arrays in ``touched`` merged by the policy (the commit then adds
    its own segments in front); the merged segments are written before it returns, so
    before the snapshot that refers to them (if the commit does not land, they are
    garbage for ``garbage_collect``, like any unpublished object)."""
    todo: dict[NodeId, list[tuple[SegmentRef, ...]]] = {}
    for n in base.nodes:
        if n.node_id not in touched or n.node_type != ARRAY:
            continue
        groups = by_region(n, region_sizes)
        cells = grid_cells(n) if len(groups) == 1 else None
        if any(next_run(g, fanout, split_rows, cells) is not None for g in groups):
            todo[n.node_id] = groups
    if not todo:
        return base
    nodes = []
    for n in base.nodes:
        if n.node_id in todo:
            merged = [
                await merge_node(
                    reader, storage, dataclasses.replace(n, segments=g), fanout, split_rows
                )
                for g in todo[n.node_id]
            ]
            n = dataclasses.replace(n, segments=tuple(s for m in merged for s in m.segments))
        nodes.append(n)
    return dataclasses.replace(base, nodes=tuple(nodes))


def by_region(node: NodeRecord, region_sizes: RegionSizes | None) -> list[tuple[SegmentRef, ...]]:
    """``node``'s segments in the groups the policy merges within: one per region of the
    array's manifest split sizes (regions never overlap, so the groups' order does not
    matter to reads; each keeps its newest-first order), or all of them together where the
    array is not split or some segment spans regions (written before the split)."""
    sizes = region_sizes(node) if region_sizes is not None else None
    if sizes is None:
        return [node.segments]
    groups: dict[tuple[int, ...], list[SegmentRef]] = {}
    for seg in node.segments:
        key = same_region(seg, sizes)
        if key is None:
            return [node.segments]
        groups.setdefault(key, []).append(seg)
    return [tuple(g) for g in groups.values()]
