"""``Diff``: what changed between two versions (any two snapshots), or what a session has
staged."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from frazil.format import ARRAY, CommitInfo, Coord, NodeId, NodeRecord, Snapshot, SnapshotId

from . import runtime
from .history import ancestry
from .objects import ObjectReader


@dataclass(frozen=True)
class Diff:
    """Groups and arrays created, deleted or whose metadata changed (by path), per
    array path the coordinates of the chunks written or deleted (a sorted list of lists of
    ints, as Icechunk gives them), and the nodes moved (``moved_nodes``: (from, to) pairs,
    sorted by the path moved to; a moved node is neither new nor deleted, and its other
    changes are listed under its new path)."""

    new_groups: set[str] = field(default_factory=set)
    new_arrays: set[str] = field(default_factory=set)
    deleted_groups: set[str] = field(default_factory=set)
    deleted_arrays: set[str] = field(default_factory=set)
    updated_groups: set[str] = field(default_factory=set)
    updated_arrays: set[str] = field(default_factory=set)
    updated_chunks: dict[str, list[list[int]]] = field(default_factory=dict)
    moved_nodes: list[tuple[str, str]] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not any(
            (
                self.new_groups,
                self.new_arrays,
                self.deleted_groups,
                self.deleted_arrays,
                self.updated_groups,
                self.updated_arrays,
                self.updated_chunks,
                self.moved_nodes,
            )
        )

    def __str__(self) -> str:
        lines = []
        if self.moved_nodes:
            lines.append("Nodes moved/renamed:")
            lines.extend(f"    {a} -> {b}" for a, b in self.moved_nodes)
        for title, paths in (
            ("New groups", self.new_groups),
            ("New arrays", self.new_arrays),
            ("Deleted groups", self.deleted_groups),
            ("Deleted arrays", self.deleted_arrays),
            ("Group metadata updated", self.updated_groups),
            ("Array metadata updated", self.updated_arrays),
        ):
            if paths:
                lines.append(f"{title}:")
                lines.extend(f"    {p}" for p in sorted(paths))
        if self.updated_chunks:
            lines.append("Chunks updated:")
            for path in sorted(self.updated_chunks):
                coords = sorted(self.updated_chunks[path])
                shown = ", ".join(f"[{', '.join(map(str, c))}]" for c in coords[:10])
                more = f" ... ({len(coords)} chunks)" if len(coords) > 10 else ""
                lines.append(f"    {path}: {shown}{more}")
        return "\n".join(lines) if lines else "No changes"

    def _repr_html_(self) -> str:
        from . import html

        return html.diff(self)


def node_diff(
    old: dict[str, NodeRecord], new: dict[str, NodeRecord], chunks: dict[NodeId, set[Coord]]
) -> Diff:
    """Compare two node tables (path -> record); ``chunks`` holds the chunk coordinates
    written per node id. Nodes are matched by id: a node id at another path was moved
    there; a path whose node id changed was deleted and created again."""
    d = Diff()
    old_paths = {rec.node_id: path for path, rec in old.items()}
    new_ids = {rec.node_id for rec in new.values()}
    for path, rec in sorted(new.items()):
        was = old_paths.get(rec.node_id)
        before = old.get(was) if was is not None else None
        if was is not None and was != path:
            d.moved_nodes.append((was, path))
        if before is None:
            (d.new_arrays if rec.node_type == ARRAY else d.new_groups).add(path)
        elif before.zarr_json != rec.zarr_json:
            (d.updated_arrays if rec.node_type == ARRAY else d.updated_groups).add(path)
        if rec.node_type == ARRAY:
            written = chunks.get(rec.node_id)
            if written:
                d.updated_chunks[path] = [list(c) for c in sorted(written)]
    for path, rec in old.items():
        if rec.node_id not in new_ids:
            (d.deleted_arrays if rec.node_type == ARRAY else d.deleted_groups).add(path)
    return d


def changed_coords(a: tuple[np.ndarray, pa.Table], b: tuple[np.ndarray, pa.Table]) -> np.ndarray:
    """Coordinates whose live reference differs between two arrays' contents, each given
    as (sorted coords, rows) from ``merge_segments``: present on one side only, or with
    another reference on the other."""
    (ca, ra), (cb, rb) = a, b
    ndim = ca.shape[1] if ca.ndim == 2 else cb.shape[1]
    both = np.concatenate([ca, cb]).reshape(-1, ndim)
    if not len(both):
        return both
    keys, inverse = np.unique(both, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    ia = np.full(len(keys), -1, np.int64)
    ib = np.full(len(keys), -1, np.int64)
    ia[inverse[: len(ca)]] = np.arange(len(ca))
    ib[inverse[len(ca) :]] = np.arange(len(cb))
    changed = (ia < 0) | (ib < 0)
    shared = np.flatnonzero(~changed)
    if len(shared):
        ta, tb = ra.take(pa.array(ia[shared])), rb.take(pa.array(ib[shared]))
        same = np.ones(len(shared), bool)
        for name in ta.column_names:
            x, y = ta.column(name), tb.column(name)
            eq = pc.or_kleene(
                pc.fill_null(pc.equal(x, y), False), pc.and_(pc.is_null(x), pc.is_null(y))
            )
            same &= eq.to_numpy(zero_copy_only=False)
        changed[shared[~same]] = True
    return keys[changed]


async def diff_snapshots(reader: ObjectReader, src: Snapshot, dst: Snapshot) -> Diff:
    """What changed from ``src`` to ``dst``, any two snapshots of the repository.

    The transaction logs of the commits from their common ancestor to each of them give
    the chunks that may differ (when ``src`` is an ancestor of ``dst``, only ``dst``'s
    side has commits). Where that path crosses a history cut (expiry dropped commits
    whose logs it would need), the two snapshots' contents are compared instead."""
    side_dst: list[CommitInfo] = []
    index: dict[SnapshotId, int] = {}
    found = False
    common: SnapshotId | None = None
    async for batch in ancestry(reader, dst.id):
        for info in batch:
            if info.snapshot_id == src.id:
                found = True
                break
            index[info.snapshot_id] = len(side_dst)
            side_dst.append(info)
        if found:
            break
    side_src: list[CommitInfo] = []
    if not found:
        async for batch in ancestry(reader, src.id):
            for info in batch:
                if info.snapshot_id in index:
                    common = info.snapshot_id
                    break
                side_src.append(info)
            if common is not None:
                break
        side_dst = side_dst[: index[common]] if common is not None else side_dst
    old = {n.path: n for n in src.nodes}
    new = {n.path: n for n in dst.nodes}
    cuts = reader.cut_map or {}
    path = [*side_dst, *side_src]
    if found or common is not None:
        if not any(i.snapshot_id in cuts for i in path):
            return node_diff(old, new, await _logged_chunks(reader, path))
    return node_diff(old, new, await _content_chunks(reader, old, new))


async def _logged_chunks(reader: ObjectReader, infos: list[CommitInfo]) -> dict[NodeId, set[Coord]]:
    logs = await runtime.gather_limited(
        [reader.transaction_log(i.snapshot_id, i.transaction_log_checksum) for i in infos],
        limit=16,
    )
    chunks: dict[NodeId, set[Coord]] = {}
    for log in [await reader.expanded_log(x) for x in logs]:
        for change in log.changes:
            if change.chunks is not None:
                chunks.setdefault(change.node_id, set()).update(map(tuple, change.chunks.tolist()))
    return chunks


async def _content_chunks(
    reader: ObjectReader, old: dict[str, NodeRecord], new: dict[str, NodeRecord]
) -> dict[NodeId, set[Coord]]:
    """Per array in both snapshots (same node), the coordinates whose reference differs."""
    from .merging import merge_segments  # merging imports commit, which imports this module
    from .zarrmeta import parse_zarr_json

    chunks: dict[NodeId, set[Coord]] = {}
    old_by_id = {n.node_id: n for n in old.values()}
    for path, rec in new.items():
        if rec.node_type != ARRAY:
            continue
        before = old_by_id.get(rec.node_id)  # by id: a moved array is the same array
        if before is not None:
            if before.segments == rec.segments:
                continue
            nodes = [before, rec]
        else:  # a new array: every chunk it has was written
            nodes = [dataclasses.replace(rec, segments=()), rec]
        ndim = parse_zarr_json(rec.zarr_json, path).ndim
        sides = []
        for node in nodes:
            loaded = await runtime.gather_limited(
                [reader.manifest(s) for s in node.segments], limit=16
            )
            sides.append(merge_segments(loaded, ndim))
        coords = changed_coords(sides[0], sides[1])
        if len(coords):
            chunks[rec.node_id] = set(map(tuple, coords.tolist()))
    return chunks
