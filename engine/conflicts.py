"""Conflict detection and resolution: pure functions over change summaries, no storage.

A ``ChangeSummary`` says what one side changed relative to a common base: nodes created,
deleted or whose metadata changed, and per array the chunk coordinates written.
``detect_conflicts(ours, theirs)`` returns ``Conflict`` values; a solver
(``ConflictDetector``, ``BasicConflictSolver``) decides what to do with them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from frazil.format import NodeId

from .errors import ConflictError

Coord = tuple[int, ...]


class ConflictType(enum.Enum):
    NewNodeConflictsWithExistingNode = 1
    NewNodeInInvalidGroup = 2
    ZarrMetadataDoubleUpdate = 3
    ZarrMetadataUpdateOfDeletedArray = 4
    ZarrMetadataUpdateOfDeletedGroup = 5
    ChunkDoubleUpdate = 6
    ChunksUpdatedInDeletedArray = 7
    ChunksUpdatedInUpdatedArray = 8
    DeleteOfUpdatedArray = 9
    DeleteOfUpdatedGroup = 10


class VersionSelection(enum.Enum):
    """What a solver does with a chunk both sides wrote."""

    Fail = 0
    UseOurs = 1
    UseTheirs = 2


@dataclass(frozen=True)
class Conflict:
    conflict_type: ConflictType
    path: str
    conflicted_chunks: tuple[Coord, ...] | None = None

    def __str__(self) -> str:
        text = f"{self.conflict_type.name} at {self.path}"
        if self.conflicted_chunks:
            shown = ", ".join(str(list(c)) for c in self.conflicted_chunks[:10])
            more = (
                f" and {len(self.conflicted_chunks) - 10} more"
                if len(self.conflicted_chunks) > 10
                else ""
            )
            text += f" (chunks {shown}{more})"
        return text


class RebaseFailedError(ConflictError):
    """Rebasing onto ``snapshot_id`` found conflicts the solver would not resolve."""

    def __init__(self, snapshot_id: str, conflicts: Sequence[Conflict]) -> None:
        lines = "; ".join(str(c) for c in conflicts[:20])
        super().__init__(
            f"rebase onto snapshot {snapshot_id} failed: {len(conflicts)} conflict(s): {lines}",
            actual_parent=snapshot_id,
        )
        self.snapshot_id = snapshot_id
        self.conflicts = list(conflicts)


@dataclass
class ChangeSummary:
    """What one side changed relative to the base. Paths are node paths ('/a/b')."""

    new_groups: set[str] = field(default_factory=set)
    new_arrays: set[str] = field(default_factory=set)
    deleted_groups: set[str] = field(default_factory=set)
    deleted_arrays: set[str] = field(default_factory=set)
    updated_groups: set[str] = field(default_factory=set)
    updated_arrays: set[str] = field(default_factory=set)
    chunks: dict[str, set[Coord]] = field(default_factory=dict)
    #: node ids of deleted nodes, to tell a deleted-and-recreated array from the old one
    deleted_ids: dict[str, set[NodeId]] = field(default_factory=dict)

    @property
    def new_nodes(self) -> set[str]:
        return self.new_groups | self.new_arrays

    @property
    def deleted_nodes(self) -> set[str]:
        return self.deleted_groups | self.deleted_arrays

    def add_chunks(self, path: str, coords: Iterable[Coord]) -> None:
        self.chunks.setdefault(path, set()).update(coords)


def _parent_paths(path: str) -> list[str]:
    parts = path.strip("/").split("/") if path.strip("/") else []
    return ["/" + "/".join(parts[:i]) for i in range(len(parts))]


def _under_deleted_group(path: str, deleted_groups: set[str]) -> bool:
    return any(p in deleted_groups for p in _parent_paths(path))


def detect_conflicts(ours: ChangeSummary, theirs: ChangeSummary) -> list[Conflict]:
    """Every conflict between our changes and theirs (both relative to one base)."""
    out: list[Conflict] = []
    add = out.append
    for path in sorted(ours.new_nodes):
        if path in theirs.new_nodes:
            add(Conflict(ConflictType.NewNodeConflictsWithExistingNode, path))
        elif _under_deleted_group(path, theirs.deleted_groups):
            add(Conflict(ConflictType.NewNodeInInvalidGroup, path))
    # the case Icechunk misses: we deleted a group under which they created a node
    for path in sorted(theirs.new_nodes - ours.new_nodes):
        if _under_deleted_group(path, ours.deleted_groups):
            add(Conflict(ConflictType.NewNodeInInvalidGroup, path))
    for path in sorted(ours.updated_arrays):
        if path in theirs.deleted_arrays:
            add(Conflict(ConflictType.ZarrMetadataUpdateOfDeletedArray, path))
        elif path in theirs.updated_arrays:
            add(Conflict(ConflictType.ZarrMetadataDoubleUpdate, path))
    for path in sorted(ours.updated_groups):
        if path in theirs.deleted_groups:
            add(Conflict(ConflictType.ZarrMetadataUpdateOfDeletedGroup, path))
        elif path in theirs.updated_groups:
            add(Conflict(ConflictType.ZarrMetadataDoubleUpdate, path))
    for path in sorted(ours.chunks):
        coords = ours.chunks[path]
        if not coords or path in ours.new_arrays:
            continue
        if path in theirs.deleted_arrays:
            add(Conflict(ConflictType.ChunksUpdatedInDeletedArray, path))
            continue
        if path in theirs.updated_arrays:
            add(Conflict(ConflictType.ChunksUpdatedInUpdatedArray, path))
        both = coords & theirs.chunks.get(path, set())
        if both:
            add(Conflict(ConflictType.ChunkDoubleUpdate, path, tuple(sorted(both))))
    # a path in both deleted_* and new_* was replaced: the old node is deleted all the same;
    # and a node they replaced (new at a path that was in the base) counts as updated
    for path in sorted(ours.deleted_arrays):
        if path in theirs.updated_arrays or path in theirs.new_nodes or theirs.chunks.get(path):
            add(Conflict(ConflictType.DeleteOfUpdatedArray, path))
    for path in sorted(ours.deleted_groups):
        if path in theirs.updated_groups or path in theirs.new_nodes:
            add(Conflict(ConflictType.DeleteOfUpdatedGroup, path))
    return out


@dataclass(frozen=True)
class Resolution:
    """A solver's decision: chunks of ours to drop (theirs win), per array path."""

    drop_chunks: dict[str, set[Coord]] = field(default_factory=dict)


class ConflictSolver:
    """Decides about conflicts; raises ``RebaseFailedError`` for those it will not resolve."""

    def solve(self, conflicts: Sequence[Conflict], tip: str) -> Resolution:
        raise NotImplementedError


class ConflictDetector(ConflictSolver):
    """Rebase only when there is no conflict at all; otherwise fail, listing them."""

    def solve(self, conflicts: Sequence[Conflict], tip: str) -> Resolution:
        if conflicts:
            raise RebaseFailedError(tip, conflicts)
        return Resolution()

    def __repr__(self) -> str:
        return "ConflictDetector()"


class BasicConflictSolver(ConflictSolver):
    """Resolves chunk double-updates by ``on_chunk_conflict`` and, unless told to fail,
    lets our deletes win over their updates; every other conflict fails the rebase."""

    def __init__(
        self,
        *,
        on_chunk_conflict: VersionSelection = VersionSelection.UseOurs,
        fail_on_delete_of_updated_array: bool = False,
        fail_on_delete_of_updated_group: bool = False,
    ) -> None:
        if not isinstance(on_chunk_conflict, VersionSelection):
            from .errors import InvalidInputError

            raise InvalidInputError("on_chunk_conflict must be a VersionSelection")
        self.on_chunk_conflict = on_chunk_conflict
        self.fail_on_delete_of_updated_array = fail_on_delete_of_updated_array
        self.fail_on_delete_of_updated_group = fail_on_delete_of_updated_group

    def __repr__(self) -> str:
        return (
            f"BasicConflictSolver(on_chunk_conflict={self.on_chunk_conflict}, "
            f"fail_on_delete_of_updated_array={self.fail_on_delete_of_updated_array}, "
            f"fail_on_delete_of_updated_group={self.fail_on_delete_of_updated_group})"
        )

    def solve(self, conflicts: Sequence[Conflict], tip: str) -> Resolution:
        unresolved: list[Conflict] = []
        drop: dict[str, set[Coord]] = {}
        for c in conflicts:
            t = c.conflict_type
            if t is ConflictType.ChunkDoubleUpdate:
                if self.on_chunk_conflict is VersionSelection.Fail:
                    unresolved.append(c)
                elif self.on_chunk_conflict is VersionSelection.UseTheirs:
                    drop.setdefault(c.path, set()).update(c.conflicted_chunks or ())
            elif t is ConflictType.DeleteOfUpdatedArray:
                if self.fail_on_delete_of_updated_array:
                    unresolved.append(c)
            elif t is ConflictType.DeleteOfUpdatedGroup:
                if self.fail_on_delete_of_updated_group:
                    unresolved.append(c)
            else:
                unresolved.append(c)
        if unresolved:
            raise RebaseFailedError(tip, unresolved)
        return Resolution(drop)
