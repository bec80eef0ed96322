"""Conflict detection and resolution: pure functions over change summaries, no storage.

A ``ChangeSummary`` says what one side changed relative to a common base: nodes created,
deleted or whose metadata changed, and per array the chunk coordinates written.
``detect_conflicts(ours, theirs)`` returns ``Conflict`` values; a solver
(``ConflictDetector``, ``BasicConflictSolver``) decides what to do with them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from frazil.format import Coord, NodeId

from .diff import Diff
from .errors import ConflictError, ErrorKind


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
    MoveOperationCannotBeRebased = 11


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

    default_kind = ErrorKind.REBASE_FAILED

    def __init__(self, snapshot_id: str, conflicts: Sequence[Conflict]) -> None:
        lines = "; ".join(str(c) for c in conflicts[:20])
        super().__init__(
            f"rebase onto snapshot {snapshot_id} failed: {len(conflicts)} conflict(s): {lines}",
            actual_parent=snapshot_id,
        )
        self.snapshot_id = snapshot_id
        self.conflicts = list(conflicts)


@dataclass(frozen=True)
class ChangeSummary(Diff):
    """What one side changed relative to the base: a ``Diff`` (paths are node paths), with
    the node ids of deleted nodes, to tell a deleted-and-recreated array from the old
    one. Its ``updated_chunks`` are sets of coordinate tuples (the rules intersect them),
    not the sorted lists a ``Diff`` shows users."""

    updated_chunks: dict[str, set[Coord]] = field(default_factory=dict)  # type: ignore[assignment]
    deleted_ids: dict[str, set[NodeId]] = field(default_factory=dict)
    #: arrays with chunk writes whose coordinates were not collected (merges compare
    #: the chunk tables themselves, in bulk)
    written: set[str] = field(default_factory=set)

    @property
    def new_nodes(self) -> set[str]:
        return self.new_groups | self.new_arrays

    @property
    def deleted_nodes(self) -> set[str]:
        return self.deleted_groups | self.deleted_arrays

    def replaced(self, path: str) -> bool:
        """A base node at ``path`` was deleted and a new one created there."""
        return path in self.deleted_nodes and path in self.new_nodes

    @property
    def moved_from(self) -> set[str]:
        """The paths nodes were moved away from."""
        return {src for src, _ in self.moved_nodes}

    def changed(self, path: str) -> bool:
        """The node at ``path`` (a base node) was deleted, replaced, moved, had its
        metadata updated or chunks written."""
        return (
            path in self.deleted_nodes
            or path in self.updated_arrays
            or path in self.updated_groups
            or self.wrote(path)
        )

    def add_chunks(self, path: str, coords: Iterable[Coord]) -> None:
        self.updated_chunks.setdefault(path, set()).update(coords)

    def wrote(self, path: str) -> bool:
        """Chunks of the array at ``path`` were written (or deleted)."""
        return bool(self.updated_chunks.get(path)) or path in self.written


def _parent_paths(path: str) -> list[str]:
    parts = path.strip("/").split("/") if path.strip("/") else []
    return ["/" + "/".join(parts[:i]) for i in range(len(parts))]


def _under_deleted_group(path: str, deleted_groups: set[str]) -> bool:
    return any(p in deleted_groups for p in _parent_paths(path))


# -- the rules -----------------------------------------------------------------------------
# Each rule yields (sort key, conflict); ``detect_conflicts`` returns the conflicts of the
# rules it is given in the order of their keys: (area, path, rank), the areas being new
# nodes (0, 1), metadata updates (2, 3), chunk writes (4), deletions (5, 6) and moves (7, 8).
Keyed = Iterator[tuple[tuple[int, str, int], Conflict]]
Rule = Callable[[ChangeSummary, ChangeSummary], Keyed]


def new_node_collides(ours: ChangeSummary, theirs: ChangeSummary) -> Keyed:
    """Both sides created a node at one path."""
    for path in sorted(ours.new_nodes & theirs.new_nodes):
        yield (0, path, 0), Conflict(ConflictType.NewNodeConflictsWithExistingNode, path)


def new_node_in_deleted_group(ours: ChangeSummary, theirs: ChangeSummary) -> Keyed:
    """A node one side created under a group the other side deleted, either way round
    (the second case is the one Icechunk misses)."""
    for path in sorted(ours.new_nodes - theirs.new_nodes):
        if _under_deleted_group(path, theirs.deleted_groups):
            yield (0, path, 1), Conflict(ConflictType.NewNodeInInvalidGroup, path)
    for path in sorted(theirs.new_nodes - ours.new_nodes):
        if _under_deleted_group(path, ours.deleted_groups):
            yield (1, path, 0), Conflict(ConflictType.NewNodeInInvalidGroup, path)


def metadata_of_deleted_node(ours: ChangeSummary, theirs: ChangeSummary) -> Keyed:
    """We updated the metadata of a node they deleted."""
    for area, updated, deleted, kind in (
        (
            2,
            ours.updated_arrays,
            theirs.deleted_arrays,
            ConflictType.ZarrMetadataUpdateOfDeletedArray,
        ),
        (
            3,
            ours.updated_groups,
            theirs.deleted_groups,
            ConflictType.ZarrMetadataUpdateOfDeletedGroup,
        ),
    ):
        for path in sorted(updated & deleted):
            yield (area, path, 0), Conflict(kind, path)


def metadata_updated_twice(ours: ChangeSummary, theirs: ChangeSummary) -> Keyed:
    """Both sides updated one node's metadata."""
    for area, mine, other, gone in (
        (2, ours.updated_arrays, theirs.updated_arrays, theirs.deleted_arrays),
        (3, ours.updated_groups, theirs.updated_groups, theirs.deleted_groups),
    ):
        for path in sorted((mine & other) - gone):
            yield (area, path, 0), Conflict(ConflictType.ZarrMetadataDoubleUpdate, path)


def _written(ours: ChangeSummary) -> Iterator[tuple[str, set[Coord]]]:
    """Our chunk writes to arrays that existed before (a new array's are ours alone),
    with their coordinates where they were collected."""
    for path in sorted(set(ours.updated_chunks) | ours.written):
        if ours.wrote(path) and path not in ours.new_arrays:
            yield path, ours.updated_chunks.get(path, set())


def chunks_in_deleted_array(ours: ChangeSummary, theirs: ChangeSummary) -> Keyed:
    """We wrote chunks of an array they deleted."""
    for path, _ in _written(ours):
        if path in theirs.deleted_arrays:
            yield (4, path, 0), Conflict(ConflictType.ChunksUpdatedInDeletedArray, path)


def chunks_in_updated_array(ours: ChangeSummary, theirs: ChangeSummary) -> Keyed:
    """We wrote chunks of an array whose metadata (so perhaps its chunk grid) they
    changed."""
    for path, _ in _written(ours):
        if path not in theirs.deleted_arrays and path in theirs.updated_arrays:
            yield (4, path, 1), Conflict(ConflictType.ChunksUpdatedInUpdatedArray, path)


def chunk_written_twice(ours: ChangeSummary, theirs: ChangeSummary) -> Keyed:
    """Both sides wrote one chunk."""
    for path, coords in _written(ours):
        both = coords & theirs.updated_chunks.get(path, set())
        if path not in theirs.deleted_arrays and both:
            yield (4, path, 2), Conflict(ConflictType.ChunkDoubleUpdate, path, tuple(sorted(both)))


def delete_of_changed_node(ours: ChangeSummary, theirs: ChangeSummary) -> Keyed:
    """We deleted a node they changed (updated, wrote chunks of, or replaced: a path in
    both their deleted and new nodes was replaced, and counts as changed)."""
    moved = ours.moved_from  # a move is no delete: ``moved_node_changed`` has those
    for path in sorted(ours.deleted_arrays - moved):
        if path in theirs.updated_arrays or path in theirs.new_nodes or theirs.wrote(path):
            yield (5, path, 0), Conflict(ConflictType.DeleteOfUpdatedArray, path)
    for path in sorted(ours.deleted_groups - moved):
        if path in theirs.updated_groups or path in theirs.new_nodes:
            yield (6, path, 0), Conflict(ConflictType.DeleteOfUpdatedGroup, path)


def replacement_of_changed_node(ours: ChangeSummary, theirs: ChangeSummary) -> Keyed:
    """One side replaced a node (deleted it and created another at its path) that the
    other changed: two different nodes at one path. Merges only: merged into one node,
    the replacement would bring back the chunks it dropped."""
    for one, other in ((ours, theirs), (theirs, ours)):
        for path in sorted(p for p in one.new_nodes if one.replaced(p)):
            if (
                path in other.updated_arrays or path in other.updated_groups or other.wrote(path)
            ) and not other.replaced(path):
                yield (0, path, 0), Conflict(ConflictType.NewNodeConflictsWithExistingNode, path)


def moved_node_changed(ours: ChangeSummary, theirs: ChangeSummary) -> Keyed:
    """One side moved a node (or a group holding it) that the other changed in any way:
    updated, wrote chunks of, deleted, replaced or moved too. Either way round, and no
    solver resolves it: a write to a moved array is never dropped nor silently kept at
    a path that no longer exists."""
    for one, other, area in ((ours, theirs, 7), (theirs, ours, 8)):
        for path in sorted(one.moved_from):
            if other.changed(path):
                yield (area, path, 0), Conflict(ConflictType.MoveOperationCannotBeRebased, path)


REBASE_RULES: tuple[Rule, ...] = (
    new_node_collides,
    new_node_in_deleted_group,
    metadata_of_deleted_node,
    metadata_updated_twice,
    chunks_in_deleted_array,
    chunks_in_updated_array,
    chunk_written_twice,
    delete_of_changed_node,
    moved_node_changed,
)
"""What a rebase checks: our staged changes against the commits that landed meanwhile."""

MERGE_RULES: tuple[Rule, ...] = (
    new_node_collides,
    new_node_in_deleted_group,
    replacement_of_changed_node,
    metadata_of_deleted_node,
    metadata_updated_twice,
    chunks_in_deleted_array,
    delete_of_changed_node,
    moved_node_changed,
)
"""What a merge checks, a fork's changes against what is merged so far: the rebase's rules
but chunks written to an array whose metadata another fork updated (forks of one session
share its chunk grid), and with replacements of changed nodes. Chunks both wrote are found
by comparing the chunk tables in bulk as they are folded (``rebase.merge_changes``)."""


def detect_conflicts(
    ours: ChangeSummary, theirs: ChangeSummary, rules: Sequence[Rule] = REBASE_RULES
) -> list[Conflict]:
    """Every conflict between our changes and theirs (both relative to one base) that
    ``rules`` find, in a stable order (by area, path and rule), each reported once."""
    found = sorted(
        ((key, c) for rule in rules for key, c in rule(ours, theirs)), key=lambda kc: kc[0]
    )
    out: list[Conflict] = []
    for _, c in found:
        if c not in out:
            out.append(c)
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
