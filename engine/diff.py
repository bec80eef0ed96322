"""``Diff``: what changed between two versions, or what a session has staged."""

from __future__ import annotations

from dataclasses import dataclass, field

from frazil.format import ARRAY, Coord, NodeId, NodeRecord


@dataclass(frozen=True)
class Diff:
    """Groups and arrays created, deleted or whose metadata changed (by path), and per
    array path the coordinates of the chunks written or deleted."""

    new_groups: set[str] = field(default_factory=set)
    new_arrays: set[str] = field(default_factory=set)
    deleted_groups: set[str] = field(default_factory=set)
    deleted_arrays: set[str] = field(default_factory=set)
    updated_groups: set[str] = field(default_factory=set)
    updated_arrays: set[str] = field(default_factory=set)
    updated_chunks: dict[str, set[Coord]] = field(default_factory=dict)

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
            )
        )

    def __str__(self) -> str:
        lines = []
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


def node_diff(
    old: dict[str, NodeRecord], new: dict[str, NodeRecord], chunks: dict[NodeId, set[Coord]]
) -> Diff:
    """Compare two node tables (path -> record); ``chunks`` holds the chunk coordinates
    written per node id. Nodes are matched by path and id: a path whose node id changed
    was deleted and created again."""
    d = Diff()
    for path, rec in new.items():
        before = old.get(path)
        if before is None or before.node_id != rec.node_id:
            (d.new_arrays if rec.node_type == ARRAY else d.new_groups).add(path)
        elif before.zarr_json != rec.zarr_json:
            (d.updated_arrays if rec.node_type == ARRAY else d.updated_groups).add(path)
        if rec.node_type == ARRAY:
            written = chunks.get(rec.node_id)
            if written:
                d.updated_chunks[path] = set(written)
    for path, rec in old.items():
        after = new.get(path)
        if after is None or after.node_id != rec.node_id:
            (d.deleted_arrays if rec.node_type == ARRAY else d.deleted_groups).add(path)
    return d
