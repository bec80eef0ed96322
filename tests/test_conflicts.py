"""Conflict detection and solvers as pure functions: hand-built change summaries in,
exact ``Conflict`` lists and ``Resolution`` values out. No storage."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from frazil import (
    BasicConflictSolver,
    Conflict,
    ConflictDetector,
    ConflictError,
    ConflictType,
    InvalidInputError,
    RebaseFailedError,
    VersionSelection,
)
from frazil.changeset import ChangeSet
from frazil.conflicts import ChangeSummary, Resolution, detect_conflicts
from frazil.format import (
    ARRAY,
    GROUP,
    ChunkKind,
    ChunkRef,
    NodeChange,
    NodeId,
    NodeRecord,
    SnapshotId,
    TransactionLog,
    decode_transaction_log,
    encode_transaction_log,
)
from frazil.format import txlog as tx
from frazil.rebase import apply_resolution, summarize_changes, summarize_logs

CT = ConflictType


def summary(**kw: Any) -> ChangeSummary:
    """A ChangeSummary from keyword sets; ``chunks`` maps a path to a list of coords."""
    chunks = kw.pop("chunks", {})
    moves = kw.pop("moves", [])
    s = ChangeSummary(**{k: set(v) for k, v in kw.items()}, moved_nodes=list(moves))
    for path, coords in chunks.items():
        s.updated_chunks[path] = {tuple(c) for c in coords}
    return s


def C(kind: ConflictType, path: str, chunks: Any = None) -> Conflict:  # noqa: N802
    return Conflict(kind, path, None if chunks is None else tuple(tuple(c) for c in chunks))


# (id, ours, theirs, expected conflicts in detection order)
DETECT_ROWS: list[tuple[str, ChangeSummary, ChangeSummary, list[Conflict]]] = [
    # -- NewNodeConflictsWithExistingNode
    (
        "new-array-vs-new-array",
        summary(new_arrays={"/x"}),
        summary(new_arrays={"/x"}),
        [C(CT.NewNodeConflictsWithExistingNode, "/x")],
    ),
    (
        "new-group-vs-new-array",
        summary(new_groups={"/x"}),
        summary(new_arrays={"/x"}),
        [C(CT.NewNodeConflictsWithExistingNode, "/x")],
    ),
    (
        "new-group-vs-new-group",
        summary(new_groups={"/g/x"}),
        summary(new_groups={"/g/x"}),
        [C(CT.NewNodeConflictsWithExistingNode, "/g/x")],
    ),
    # -- NewNodeInInvalidGroup: ours new node under a group they deleted
    (
        "ours-new-under-their-deleted-group",
        summary(new_arrays={"/g/x"}),
        summary(deleted_groups={"/g"}),
        [C(CT.NewNodeInInvalidGroup, "/g/x")],
    ),
    (
        "ours-new-deep-under-their-deleted-group",
        summary(new_groups={"/g/h"}, new_arrays={"/g/h/x"}),
        summary(deleted_groups={"/g"}),
        [C(CT.NewNodeInInvalidGroup, "/g/h"), C(CT.NewNodeInInvalidGroup, "/g/h/x")],
    ),
    # -- the case Icechunk misses: we deleted the group, they created a node under it
    (
        "their-new-under-our-deleted-group",
        summary(deleted_groups={"/g"}),
        summary(new_arrays={"/g/x"}),
        [C(CT.NewNodeInInvalidGroup, "/g/x")],
    ),
    (
        "their-new-group-deep-under-our-deleted-group",
        summary(deleted_groups={"/g"}),
        summary(new_groups={"/g/h", "/g/h/i"}),
        [C(CT.NewNodeInInvalidGroup, "/g/h"), C(CT.NewNodeInInvalidGroup, "/g/h/i")],
    ),
    (
        "sibling-with-common-prefix-is-not-under-group",
        summary(deleted_groups={"/g"}),
        summary(new_arrays={"/gx", "/g2/x"}),
        [],
    ),
    (
        "ours-new-sibling-with-common-prefix",
        summary(new_arrays={"/gx"}),
        summary(deleted_groups={"/g"}),
        [],
    ),
    # -- ZarrMetadataDoubleUpdate
    (
        "array-metadata-double-update",
        summary(updated_arrays={"/a"}),
        summary(updated_arrays={"/a"}),
        [C(CT.ZarrMetadataDoubleUpdate, "/a")],
    ),
    (
        "group-metadata-double-update",
        summary(updated_groups={"/g"}),
        summary(updated_groups={"/g"}),
        [C(CT.ZarrMetadataDoubleUpdate, "/g")],
    ),
    (
        "root-group-metadata-double-update",
        summary(updated_groups={"/"}),
        summary(updated_groups={"/"}),
        [C(CT.ZarrMetadataDoubleUpdate, "/")],
    ),
    # -- ZarrMetadataUpdateOf...
    (
        "update-of-deleted-array",
        summary(updated_arrays={"/a"}),
        summary(deleted_arrays={"/a"}),
        [C(CT.ZarrMetadataUpdateOfDeletedArray, "/a")],
    ),
    (
        "update-of-replaced-array",  # they deleted it and made a new one at the same path
        summary(updated_arrays={"/a"}),
        summary(deleted_arrays={"/a"}, new_arrays={"/a"}),
        [C(CT.ZarrMetadataUpdateOfDeletedArray, "/a")],
    ),
    (
        "update-of-deleted-group",
        summary(updated_groups={"/g"}),
        summary(deleted_groups={"/g"}),
        [C(CT.ZarrMetadataUpdateOfDeletedGroup, "/g")],
    ),
    # -- ChunkDoubleUpdate, exactly the overlapping coordinates
    (
        "chunk-double-update-1d",
        summary(chunks={"/a": [(0,), (1,), (2,)]}),
        summary(chunks={"/a": [(2,), (1,), (9,)]}),
        [C(CT.ChunkDoubleUpdate, "/a", [(1,), (2,)])],
    ),
    (
        "chunk-double-update-2d",
        summary(chunks={"/a": [(0, 0), (1, 1), (2, 2), (5, 0)]}),
        summary(chunks={"/a": [(1, 1), (2, 2), (3, 3), (0, 5)]}),
        [C(CT.ChunkDoubleUpdate, "/a", [(1, 1), (2, 2)])],
    ),
    (
        "chunk-double-update-0d",
        summary(chunks={"/s": [()]}),
        summary(chunks={"/s": [()]}),
        [C(CT.ChunkDoubleUpdate, "/s", [()])],
    ),
    (
        "chunk-double-update-in-two-arrays",
        summary(chunks={"/b": [(3,)], "/a": [(1,), (4,)]}),
        summary(chunks={"/a": [(4,)], "/b": [(3,), (7,)]}),
        [C(CT.ChunkDoubleUpdate, "/a", [(4,)]), C(CT.ChunkDoubleUpdate, "/b", [(3,)])],
    ),
    # -- ChunksUpdatedInDeletedArray
    (
        "chunks-in-deleted-array",
        summary(chunks={"/a": [(0,)]}),
        summary(deleted_arrays={"/a"}),
        [C(CT.ChunksUpdatedInDeletedArray, "/a")],
    ),
    (
        "chunks-in-replaced-array",  # their new array's chunks do not count as a double update
        summary(chunks={"/a": [(0,)]}),
        summary(deleted_arrays={"/a"}, new_arrays={"/a"}, chunks={"/a": [(0,)]}),
        [C(CT.ChunksUpdatedInDeletedArray, "/a")],
    ),
    # -- ChunksUpdatedInUpdatedArray (and a double update on top when chunks overlap)
    (
        "chunks-in-updated-array",
        summary(chunks={"/a": [(0,)]}),
        summary(updated_arrays={"/a"}),
        [C(CT.ChunksUpdatedInUpdatedArray, "/a")],
    ),
    (
        "chunks-in-updated-array-overlapping",
        summary(chunks={"/a": [(0,), (1,)]}),
        summary(updated_arrays={"/a"}, chunks={"/a": [(1,)]}),
        [C(CT.ChunksUpdatedInUpdatedArray, "/a"), C(CT.ChunkDoubleUpdate, "/a", [(1,)])],
    ),
    # -- DeleteOfUpdatedArray: their metadata update or their chunk writes
    (
        "delete-of-array-with-their-metadata-update",
        summary(deleted_arrays={"/a"}),
        summary(updated_arrays={"/a"}),
        [C(CT.DeleteOfUpdatedArray, "/a")],
    ),
    (
        "delete-of-array-with-their-chunk-writes",
        summary(deleted_arrays={"/a"}),
        summary(chunks={"/a": [(3,)]}),
        [C(CT.DeleteOfUpdatedArray, "/a")],
    ),
    (
        "replace-of-array-with-their-chunk-writes",  # our delete+create still deletes theirs
        summary(deleted_arrays={"/a"}, new_arrays={"/a"}, chunks={"/a": [(0,)]}),
        summary(chunks={"/a": [(0,)]}),
        [C(CT.DeleteOfUpdatedArray, "/a")],
    ),
    (
        "replace-of-array-with-their-metadata-update",
        summary(deleted_arrays={"/a"}, new_groups={"/a"}),
        summary(updated_arrays={"/a"}),
        [C(CT.DeleteOfUpdatedArray, "/a")],
    ),
    (
        "delete-of-array-they-replaced",
        summary(deleted_arrays={"/a"}),
        summary(deleted_arrays={"/a"}, new_arrays={"/a"}),
        [C(CT.DeleteOfUpdatedArray, "/a")],
    ),
    # -- DeleteOfUpdatedGroup
    (
        "delete-of-updated-group",
        summary(deleted_groups={"/g"}),
        summary(updated_groups={"/g"}),
        [C(CT.DeleteOfUpdatedGroup, "/g")],
    ),
    (
        "replace-of-updated-group",
        summary(deleted_groups={"/g"}, new_arrays={"/g"}),
        summary(updated_groups={"/g"}),
        [C(CT.DeleteOfUpdatedGroup, "/g")],
    ),
    # -- no conflict
    ("nothing", summary(), summary(), []),
    (
        "ours-only",
        summary(new_arrays={"/x"}, updated_arrays={"/a"}, chunks={"/a": [(0,)]}),
        summary(),
        [],
    ),
    (
        "theirs-only",
        summary(),
        summary(
            new_arrays={"/x"}, deleted_groups={"/g"}, updated_arrays={"/a"}, chunks={"/a": [(0,)]}
        ),
        [],
    ),
    (
        "different-chunks-of-one-array",
        summary(chunks={"/a": [(0, 0), (0, 1)]}),
        summary(chunks={"/a": [(1, 0), (1, 1)]}),
        [],
    ),
    (
        "different-arrays",
        summary(updated_arrays={"/a"}, chunks={"/a": [(0,)]}),
        summary(updated_arrays={"/b"}, chunks={"/b": [(0,)]}),
        [],
    ),
    (
        "chunk-writes-to-array-ours-created",
        summary(new_arrays={"/n"}, chunks={"/n": [(0,), (1,)]}),
        summary(deleted_arrays={"/other"}, chunks={"/b": [(0,)]}),
        [],
    ),
    (
        "ours-recreated-an-array-they-deleted",  # our chunks go to our new array
        summary(deleted_arrays={"/a"}, new_arrays={"/a"}, chunks={"/a": [(0,)]}),
        summary(deleted_arrays={"/a"}),
        [],
    ),
    (
        "both-deleted-the-same-nodes",
        summary(deleted_arrays={"/g/a"}, deleted_groups={"/g"}),
        summary(deleted_arrays={"/g/a"}, deleted_groups={"/g"}),
        [],
    ),
    (
        "ours-metadata-update-their-chunks",  # the asymmetric case is not a conflict
        summary(updated_arrays={"/a"}),
        summary(chunks={"/a": [(0,)]}),
        [],
    ),
    (
        "empty-chunk-set-is-no-write",
        summary(chunks={"/a": []}),
        summary(deleted_arrays={"/a"}, chunks={"/a": [(0,)]}),
        [],
    ),
    (
        "new-node-under-group-they-created",
        summary(new_arrays={"/g/x"}),
        summary(new_groups={"/g"}),
        [],
    ),
    (
        "group-delete-and-update-elsewhere",
        summary(deleted_groups={"/g"}),
        summary(updated_groups={"/h"}, new_arrays={"/h/x"}),
        [],
    ),
    # -- several at once, in detection order
    (
        "many",
        summary(
            new_arrays={"/n", "/g/x"},
            deleted_groups={"/d"},
            updated_arrays={"/u"},
            updated_groups={"/ug"},
            deleted_arrays={"/da"},
            chunks={"/c": [(0,), (1,)], "/gone": [(2,)]},
        ),
        summary(
            new_arrays={"/n", "/d/y"},
            deleted_groups={"/g", "/ug"},
            updated_arrays={"/u", "/c"},
            deleted_arrays={"/gone"},
            chunks={"/c": [(1,)], "/da": [(5,)]},
            updated_groups={"/d"},
        ),
        [
            C(CT.NewNodeInInvalidGroup, "/g/x"),
            C(CT.NewNodeConflictsWithExistingNode, "/n"),
            C(CT.NewNodeInInvalidGroup, "/d/y"),
            C(CT.ZarrMetadataDoubleUpdate, "/u"),
            C(CT.ZarrMetadataUpdateOfDeletedGroup, "/ug"),
            C(CT.ChunksUpdatedInUpdatedArray, "/c"),
            C(CT.ChunkDoubleUpdate, "/c", [(1,)]),
            C(CT.ChunksUpdatedInDeletedArray, "/gone"),
            C(CT.DeleteOfUpdatedArray, "/da"),
            C(CT.DeleteOfUpdatedGroup, "/d"),
        ],
    ),
    # -- MoveOperationCannotBeRebased: a moved node the other side changed, either way round
    (
        "ours-move-vs-their-chunk-write",
        summary(deleted_arrays={"/a"}, new_arrays={"/b"}, moves=[("/a", "/b")]),
        summary(chunks={"/a": [(0,)]}),
        [C(CT.MoveOperationCannotBeRebased, "/a")],
    ),
    (
        "their-move-vs-our-metadata-update",
        summary(updated_arrays={"/a"}),
        summary(deleted_arrays={"/a"}, new_arrays={"/b"}, moves=[("/a", "/b")]),
        [
            C(CT.ZarrMetadataUpdateOfDeletedArray, "/a"),
            C(CT.MoveOperationCannotBeRebased, "/a"),
        ],
    ),
    (
        "both-moved-one-node",
        summary(deleted_groups={"/g"}, new_groups={"/h"}, moves=[("/g", "/h")]),
        summary(deleted_groups={"/g"}, new_groups={"/k"}, moves=[("/g", "/k")]),
        [C(CT.MoveOperationCannotBeRebased, "/g")],
    ),
    (
        "ours-move-vs-their-unrelated-write",
        summary(deleted_arrays={"/a"}, new_arrays={"/b"}, moves=[("/a", "/b")]),
        summary(chunks={"/c": [(0,)]}),
        [],
    ),
]


@pytest.mark.parametrize(
    "ours,theirs,expected", [r[1:] for r in DETECT_ROWS], ids=[r[0] for r in DETECT_ROWS]
)
def test_detect_conflicts(
    ours: ChangeSummary, theirs: ChangeSummary, expected: list[Conflict]
) -> None:
    assert detect_conflicts(ours, theirs) == expected


def test_every_conflict_type_has_a_row() -> None:
    seen = {c.conflict_type for row in DETECT_ROWS for c in row[3]}
    assert seen == set(ConflictType)


def test_detect_conflicts_does_not_mutate_inputs() -> None:
    ours = summary(deleted_groups={"/g"}, chunks={"/a": [(1,)]})
    theirs = summary(new_arrays={"/g/x"}, chunks={"/a": [(1,), (2,)]})
    before = (repr(ours), repr(theirs))
    detect_conflicts(ours, theirs)
    assert (repr(ours), repr(theirs)) == before


def test_conflict_str() -> None:
    assert str(C(CT.DeleteOfUpdatedGroup, "/g")) == "DeleteOfUpdatedGroup at /g"
    many = C(CT.ChunkDoubleUpdate, "/a", [(i, 0) for i in range(12)])
    text = str(many)
    assert text.startswith("ChunkDoubleUpdate at /a (chunks [0, 0], [1, 0],")
    assert text.endswith("and 2 more)")


# -- solvers -------------------------------------------------------------------------------

RESOLVABLE = {CT.ChunkDoubleUpdate, CT.DeleteOfUpdatedArray, CT.DeleteOfUpdatedGroup}
UNRESOLVABLE = sorted(set(ConflictType) - RESOLVABLE, key=lambda t: t.value)


def sample(kind: ConflictType) -> Conflict:
    if kind is CT.ChunkDoubleUpdate:
        return C(kind, "/a", [(0, 1), (2, 3)])
    return C(kind, f"/{kind.name}")


def test_detector_no_conflicts_gives_empty_resolution() -> None:
    res = ConflictDetector().solve([], "TIP")
    assert res == Resolution()
    assert res.drop_chunks == {}


@pytest.mark.parametrize("kind", list(ConflictType), ids=lambda k: k.name)
def test_detector_fails_on_any_conflict(kind: ConflictType) -> None:
    conflicts = [sample(kind), sample(CT.ChunkDoubleUpdate)]
    with pytest.raises(RebaseFailedError) as info:
        ConflictDetector().solve(conflicts, "TIP")
    err = info.value
    assert isinstance(err, ConflictError)
    assert err.conflicts == conflicts
    assert err.snapshot_id == "TIP" and err.actual_parent == "TIP"
    assert f"/{kind.name}" in str(err) or kind is CT.ChunkDoubleUpdate


# (id, solver kwargs, conflicts, expected drop_chunks or the list of unresolved conflicts)
SOLVER_ROWS: list[tuple[str, dict[str, Any], list[Conflict], Any]] = [
    ("no-conflicts", {}, [], {}),
    (
        "use-ours-chunk",
        {"on_chunk_conflict": VersionSelection.UseOurs},
        [C(CT.ChunkDoubleUpdate, "/a", [(0,), (3,)])],
        {},
    ),
    ("default-is-use-ours", {}, [C(CT.ChunkDoubleUpdate, "/a", [(0,)])], {}),
    (
        "use-theirs-chunk",
        {"on_chunk_conflict": VersionSelection.UseTheirs},
        [C(CT.ChunkDoubleUpdate, "/a", [(0,), (3,)])],
        {"/a": {(0,), (3,)}},
    ),
    (
        "use-theirs-two-arrays",
        {"on_chunk_conflict": VersionSelection.UseTheirs},
        [
            C(CT.ChunkDoubleUpdate, "/a", [(0, 0)]),
            C(CT.ChunkDoubleUpdate, "/b", [(1, 1)]),
            C(CT.ChunkDoubleUpdate, "/a", [(2, 2)]),
        ],
        {"/a": {(0, 0), (2, 2)}, "/b": {(1, 1)}},
    ),
    (
        "fail-chunk",
        {"on_chunk_conflict": VersionSelection.Fail},
        [C(CT.ChunkDoubleUpdate, "/a", [(0,)])],
        [C(CT.ChunkDoubleUpdate, "/a", [(0,)])],
    ),
    ("delete-of-updated-array-ours-wins", {}, [C(CT.DeleteOfUpdatedArray, "/a")], {}),
    ("delete-of-updated-group-ours-wins", {}, [C(CT.DeleteOfUpdatedGroup, "/g")], {}),
    (
        "fail-on-delete-of-updated-array",
        {"fail_on_delete_of_updated_array": True},
        [C(CT.DeleteOfUpdatedArray, "/a"), C(CT.DeleteOfUpdatedGroup, "/g")],
        [C(CT.DeleteOfUpdatedArray, "/a")],
    ),
    (
        "fail-on-delete-of-updated-group",
        {"fail_on_delete_of_updated_group": True},
        [C(CT.DeleteOfUpdatedArray, "/a"), C(CT.DeleteOfUpdatedGroup, "/g")],
        [C(CT.DeleteOfUpdatedGroup, "/g")],
    ),
    (
        "fail-on-both-deletes",
        {
            "fail_on_delete_of_updated_array": True,
            "fail_on_delete_of_updated_group": True,
            "on_chunk_conflict": VersionSelection.UseTheirs,
        },
        [
            C(CT.DeleteOfUpdatedGroup, "/g"),
            C(CT.ChunkDoubleUpdate, "/a", [(1,)]),
            C(CT.DeleteOfUpdatedArray, "/b"),
        ],
        [C(CT.DeleteOfUpdatedGroup, "/g"), C(CT.DeleteOfUpdatedArray, "/b")],
    ),
    (
        "fail-chunk-and-fail-deletes",
        {"on_chunk_conflict": VersionSelection.Fail, "fail_on_delete_of_updated_array": True},
        [
            C(CT.ChunkDoubleUpdate, "/a", [(1,)]),
            C(CT.DeleteOfUpdatedArray, "/b"),
            C(CT.DeleteOfUpdatedGroup, "/g"),
        ],
        [C(CT.ChunkDoubleUpdate, "/a", [(1,)]), C(CT.DeleteOfUpdatedArray, "/b")],
    ),
]


@pytest.mark.parametrize(
    "kwargs,conflicts,expected", [r[1:] for r in SOLVER_ROWS], ids=[r[0] for r in SOLVER_ROWS]
)
def test_basic_solver(kwargs: dict[str, Any], conflicts: list[Conflict], expected: Any) -> None:
    solver = BasicConflictSolver(**kwargs)
    if isinstance(expected, dict):
        assert solver.solve(conflicts, "TIP") == Resolution(expected)
    else:
        with pytest.raises(RebaseFailedError) as info:
            solver.solve(conflicts, "TIP")
        assert info.value.conflicts == expected
        assert info.value.snapshot_id == "TIP"


SOLVER_CONFIGS = [
    {
        "on_chunk_conflict": sel,
        "fail_on_delete_of_updated_array": a,
        "fail_on_delete_of_updated_group": g,
    }
    for sel in VersionSelection
    for a in (False, True)
    for g in (False, True)
]


@pytest.mark.parametrize("kind", UNRESOLVABLE, ids=lambda k: k.name)
@pytest.mark.parametrize(
    "kwargs", SOLVER_CONFIGS, ids=lambda kw: "-".join(str(v).split(".")[-1] for v in kw.values())
)
def test_basic_solver_unresolvable_always_fails(kind: ConflictType, kwargs: dict[str, Any]) -> None:
    """Unresolvable conflicts fail under every setting; the error lists exactly the
    conflicts left unresolved (the resolvable ones around them are not listed)."""
    solver = BasicConflictSolver(**kwargs)
    resolvable = [
        sample(CT.ChunkDoubleUpdate),
        sample(CT.DeleteOfUpdatedArray),
        sample(CT.DeleteOfUpdatedGroup),
    ]
    bad = sample(kind)
    also_unresolved = [
        c
        for c in resolvable
        if (
            c.conflict_type is CT.ChunkDoubleUpdate
            and kwargs["on_chunk_conflict"] is VersionSelection.Fail
        )
        or (
            c.conflict_type is CT.DeleteOfUpdatedArray and kwargs["fail_on_delete_of_updated_array"]
        )
        or (
            c.conflict_type is CT.DeleteOfUpdatedGroup and kwargs["fail_on_delete_of_updated_group"]
        )
    ]
    conflicts = [resolvable[0], bad, *resolvable[1:]]
    with pytest.raises(RebaseFailedError) as info:
        solver.solve(conflicts, "TIP")
    assert info.value.conflicts == [c for c in conflicts if c is bad or c in also_unresolved]


def test_basic_solver_rejects_bad_selection() -> None:
    with pytest.raises(InvalidInputError):
        BasicConflictSolver(on_chunk_conflict="ours")  # type: ignore[arg-type]
    assert "UseTheirs" in repr(BasicConflictSolver(on_chunk_conflict=VersionSelection.UseTheirs))


# -- summarize_changes ---------------------------------------------------------------------


def rec(
    path: str, kind: str = ARRAY, meta: bytes = b"{}", node_id: NodeId | None = None
) -> NodeRecord:
    return NodeRecord(path, node_id or NodeId.new(), kind, meta)


INLINE = ChunkRef(ChunkKind.INLINE, data=b"x", length=1)
DELETED = ChunkRef(ChunkKind.DELETED)


@pytest.fixture
def base() -> dict[str, NodeRecord]:
    nodes = [
        rec("/", GROUP),
        rec("/g", GROUP),
        rec("/h", GROUP),
        rec("/a"),
        rec("/b"),
        rec("/g/c"),
        rec("/m"),
    ]
    return {n.path: n for n in nodes}


def test_summarize_changes_every_kind(base: dict[str, NodeRecord]) -> None:
    cs = ChangeSet()
    # metadata updates (same node id, new zarr.json)
    cs.set_node(NodeRecord("/a", base["/a"].node_id, ARRAY, b'{"v": 2}'))
    cs.set_node(NodeRecord("/h", base["/h"].node_id, GROUP, b'{"v": 2}'))
    # a no-op metadata write is not an update
    cs.set_node(base["/m"])
    # deletes of an array and of a group (with the array under it)
    cs.delete_node("/b", base["/b"].node_id, True)
    cs.delete_node("/g/c", base["/g/c"].node_id, True)
    cs.delete_node("/g", base["/g"].node_id, True)
    # new nodes
    new_group = rec("/n", GROUP)
    new_array = rec("/n/x")
    cs.set_node(new_group)
    cs.set_node(new_array)
    # chunks: writes and a tombstone to a base array, writes to the new array
    cs.set_chunk(base["/a"].node_id, (0,), INLINE)
    cs.set_chunk(base["/a"].node_id, (7,), DELETED)
    cs.set_chunk(base["/m"].node_id, (2,), INLINE)
    cs.set_chunk(new_array.node_id, (1,), INLINE)
    s = summarize_changes(base, cs)
    assert s.new_groups == {"/n"} and s.new_arrays == {"/n/x"}
    assert s.deleted_groups == {"/g"} and s.deleted_arrays == {"/b", "/g/c"}
    assert s.updated_groups == {"/h"} and s.updated_arrays == {"/a"}
    assert s.updated_chunks == {"/a": {(0,), (7,)}, "/m": {(2,)}, "/n/x": {(1,)}}
    assert s.deleted_ids == {
        "/b": {base["/b"].node_id},
        "/g/c": {base["/g/c"].node_id},
        "/g": {base["/g"].node_id},
    }
    assert s.new_nodes == {"/n", "/n/x"}
    assert s.deleted_nodes == {"/g", "/b", "/g/c"}


def test_summarize_changes_replaced_node(base: dict[str, NodeRecord]) -> None:
    """A node replaced at the same path (new node id) is a delete plus a create; the new
    node's chunks are reported under the path."""
    cs = ChangeSet()
    cs.delete_node("/a", base["/a"].node_id, True)
    again = rec("/a", meta=b'{"v": 3}')
    cs.set_node(again)
    cs.set_chunk(again.node_id, (4, 4), INLINE)
    cs.set_node(rec("/g", ARRAY))  # a group replaced by an array
    s = summarize_changes(base, cs)
    assert s.deleted_arrays == {"/a"} and s.new_arrays == {"/a", "/g"}
    assert s.deleted_groups == {"/g"} and s.new_groups == set()
    assert s.updated_arrays == set() and s.updated_groups == set()
    assert s.updated_chunks == {"/a": {(4, 4)}}
    assert s.deleted_ids == {"/a": {base["/a"].node_id}, "/g": {base["/g"].node_id}}


def test_summarize_changes_skips_empty_and_unknown_tables(base: dict[str, NodeRecord]) -> None:
    cs = ChangeSet()
    cs.set_chunk(base["/a"].node_id, (0,), INLINE)
    cs.chunks[base["/a"].node_id].discard([(0,)])  # emptied
    cs.set_chunk(NodeId.new(), (1,), INLINE)  # no such node
    s = summarize_changes(base, cs)
    assert s == ChangeSummary()


def test_summarize_changes_empty(base: dict[str, NodeRecord]) -> None:
    assert summarize_changes(base, ChangeSet()) == ChangeSummary()
    assert summarize_changes({}, ChangeSet()) == ChangeSummary()


# -- summarize_logs ------------------------------------------------------------------------


def log(*changes: NodeChange) -> TransactionLog:
    return TransactionLog(SnapshotId.new(), SnapshotId.new(), tuple(changes))


def coords(*cs: tuple[int, ...]) -> np.ndarray:
    ndim = len(cs[0]) if cs else 1
    return np.array(cs, np.int64).reshape(len(cs), ndim)


def test_summarize_logs_union() -> None:
    a, b, d, g, n = (NodeId.new() for _ in range(5))
    logs = [
        log(
            NodeChange(tx.NEW_GROUP, "/n", n),
            NodeChange(tx.CHUNKS, "/a", a, coords((0, 0), (1, 2))),
        ),
        log(
            NodeChange(tx.DELETED_ARRAY, "/b", b),
            NodeChange(tx.UPDATED_ARRAY, "/a", a),
            NodeChange(tx.CHUNKS, "/a", a, coords((1, 2), (3, 3))),
        ),
        log(
            NodeChange(tx.DELETED_GROUP, "/d", d),
            NodeChange(tx.UPDATED_GROUP, "/g", g),
            NodeChange(tx.NEW_ARRAY, "/n/s", NodeId.new()),
            NodeChange(tx.CHUNKS, "/n/s", NodeId.new(), coords(())),
        ),
        log(),
    ]
    s = summarize_logs(logs)
    assert s.new_groups == {"/n"} and s.new_arrays == {"/n/s"}
    assert s.deleted_arrays == {"/b"} and s.deleted_groups == {"/d"}
    assert s.updated_arrays == {"/a"} and s.updated_groups == {"/g"}
    assert s.updated_chunks == {"/a": {(0, 0), (1, 2), (3, 3)}, "/n/s": {()}}
    assert s.deleted_ids == {"/b": {b}, "/d": {d}}
    assert all(
        type(c) is tuple and all(type(x) is int for x in c)
        for cs in s.updated_chunks.values()
        for c in cs
    )


def test_summarize_logs_replaced_array_across_commits() -> None:
    """Deleted in one commit and recreated in the next: both facts survive the union."""
    old, new = NodeId.new(), NodeId.new()
    s = summarize_logs(
        [
            log(NodeChange(tx.DELETED_ARRAY, "/a", old)),
            log(
                NodeChange(tx.NEW_ARRAY, "/a", new), NodeChange(tx.CHUNKS, "/a", new, coords((5,)))
            ),
        ]
    )
    assert s.deleted_arrays == {"/a"} and s.new_arrays == {"/a"}
    assert s.deleted_ids == {"/a": {old}}
    ours = summary(chunks={"/a": [(5,)]})
    assert detect_conflicts(ours, s) == [C(CT.ChunksUpdatedInDeletedArray, "/a")]


def test_summarize_logs_after_encode_roundtrip() -> None:
    a = NodeId.new()
    original = log(
        NodeChange(tx.CHUNKS, "/a", a, coords((0, 1, 2), (3, 4, 5))),
        NodeChange(tx.CHUNKS, "/z", NodeId.new(), coords(())),
        NodeChange(tx.UPDATED_ARRAY, "/a", a),
    )
    decoded = decode_transaction_log(encode_transaction_log(original))
    assert summarize_logs([decoded]) == summarize_logs([original])
    assert summarize_logs([decoded]).updated_chunks == {"/a": {(0, 1, 2), (3, 4, 5)}, "/z": {()}}


def test_summarize_logs_empty() -> None:
    assert summarize_logs([]) == ChangeSummary()


def test_summaries_feed_detect_conflicts(base: dict[str, NodeRecord]) -> None:
    """End to end without storage: staged changes vs. logs of the commits that landed."""
    cs = ChangeSet()
    a = base["/a"].node_id
    for c in [(0,), (1,), (2,)]:
        cs.set_chunk(a, c, INLINE)
    cs.delete_node("/b", base["/b"].node_id, True)
    theirs = summarize_logs(
        [
            log(NodeChange(tx.CHUNKS, "/a", a, coords((2,), (3,)))),
            log(
                NodeChange(tx.CHUNKS, "/b", base["/b"].node_id, coords((0,))),
                NodeChange(tx.NEW_ARRAY, "/g/new", NodeId.new()),
            ),
        ]
    )
    ours = summarize_changes(base, cs)
    assert detect_conflicts(ours, theirs) == [
        C(CT.ChunkDoubleUpdate, "/a", [(2,)]),
        C(CT.DeleteOfUpdatedArray, "/b"),
    ]


# -- apply_resolution ----------------------------------------------------------------------


def test_apply_resolution_drops_only_given_chunks(base: dict[str, NodeRecord]) -> None:
    cs = ChangeSet()
    a, m = base["/a"].node_id, base["/m"].node_id
    for c in [(0,), (1,), (2,)]:
        cs.set_chunk(a, c, INLINE)
    cs.set_chunk(m, (1,), DELETED)
    new = rec("/new")
    cs.set_node(new)
    cs.set_chunk(new.node_id, (1,), INLINE)
    apply_resolution(base, cs, Resolution({"/a": {(1,), (9,)}, "/m": {(1,)}, "/nowhere": {(0,)}}))
    assert {c for c, _ in cs.chunks[a].items()} == {(0,), (2,)}
    assert len(cs.chunks[m]) == 0
    assert {c for c, _ in cs.chunks[new.node_id].items()} == {(1,)}
    apply_resolution(base, cs, Resolution())
    assert {c for c, _ in cs.chunks[a].items()} == {(0,), (2,)}


def test_apply_resolution_drops_noop_node_records(base: dict[str, NodeRecord]) -> None:
    """Staged records that change nothing are dropped (summarize_changes does not count
    them, so they must not reach the new base); real changes stay."""
    cs = ChangeSet()
    cs.set_node(base["/a"])  # no-op
    cs.set_node(NodeRecord("/h", base["/h"].node_id, GROUP, b"{}"))  # no-op (same json)
    updated = NodeRecord("/m", base["/m"].node_id, ARRAY, b'{"v": 2}')
    cs.set_node(updated)
    replaced = rec("/b", meta=base["/b"].zarr_json)  # same json, new node: a replacement
    cs.set_node(replaced)
    cs.delete_node("/g/c", base["/g/c"].node_id, True)
    created = rec("/new")
    cs.set_node(created)
    cs.set_chunk(base["/a"].node_id, (0,), INLINE)
    assert summarize_changes(base, cs).updated_arrays == {"/m"}
    apply_resolution(base, cs, Resolution())
    assert cs.nodes == {"/m": updated, "/b": replaced, "/g/c": None, "/new": created}
    assert {c for c, _ in cs.chunks[base["/a"].node_id].items()} == {(0,)}
