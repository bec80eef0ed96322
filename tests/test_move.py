"""Session.move: renaming and moving groups and arrays without rewriting chunks."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import zarr

import frazil
from frazil.conflicts import ChangeSummary, ConflictType, detect_conflicts


class CountingStorage(frazil.FaultInjectingStorage):
    """Counts reads and writes of manifests and chunks (injects no faults)."""

    def __init__(self, inner: frazil.Storage) -> None:
        super().__init__(inner)
        self.manifest_reads = 0
        self.data_writes = 0

    async def get(self, key: str, byte_range: tuple[int, int | None] | None = None) -> bytes:
        if key.startswith("manifests/"):
            self.manifest_reads += 1
        return await super().get(key, byte_range)

    async def put(self, key: str, data: bytes) -> None:
        if key.startswith(("manifests/", "chunks/")):
            self.data_writes += 1
        await super().put(key, data)


def _tree(repo: frazil.Repository) -> str:
    """/my/old/path/array (10 x 10 ints, chunks of 2 x 2, values 0..99) and /other."""
    s = repo.writable_session("main")
    root = zarr.group(store=s.store)
    group = root.create_group("my/old/path")
    a = group.create_array("array", shape=(10, 10), chunks=(2, 2), dtype="i4", fill_value=-1)
    a[:] = np.arange(100, dtype="i4").reshape(10, 10)
    root.create_array("other", shape=(4,), chunks=(2,), dtype="i4", fill_value=0)
    return s.commit("tree")


def _read(session: frazil.Session, path: str) -> np.ndarray:
    return zarr.open_array(session.store, path=path, mode="r")[:]


EXPECTED = np.arange(100, dtype="i4").reshape(10, 10)


def test_move_group_reads_back_and_time_travels(repo: frazil.Repository) -> None:
    first = _tree(repo)
    before = repo.readonly_session("main")
    ids = {p: before.get_node_id(p) for p in ("/my/old", "/my/old/path", "/my/old/path/array")}

    s = repo.writable_session("main")
    s.move("/my/old", "/my/new")
    assert s.node("/my/old") is None and s.node("/my/old/path/array") is None
    np.testing.assert_array_equal(_read(s, "my/new/path/array"), EXPECTED)  # before commit
    status = s.status()
    assert status.moved_nodes == [
        ("/my/old", "/my/new"),
        ("/my/old/path", "/my/new/path"),
        ("/my/old/path/array", "/my/new/path/array"),
    ]
    assert not (status.new_groups | status.new_arrays | status.deleted_groups)
    assert not status.deleted_arrays and not status.updated_chunks
    second = s.commit("renamed")

    after = repo.readonly_session("main")
    np.testing.assert_array_equal(_read(after, "my/new/path/array"), EXPECTED)
    group = zarr.open_group(after.store, mode="r")
    assert sorted(group["my"].group_keys()) == ["new"]
    assert after.get_node_id("/my/new") == ids["/my/old"]
    assert after.get_node_id("/my/new/path/array") == ids["/my/old/path/array"]
    with pytest.raises(frazil.NotFoundError):
        after.get_node_id("/my/old")

    old = repo.readonly_session(snapshot_id=first)  # time travel: the old names
    np.testing.assert_array_equal(_read(old, "my/old/path/array"), EXPECTED)
    assert old.node("/my/new") is None

    diff = repo.diff(from_snapshot_id=first, to_snapshot_id=second)
    assert set(diff.moved_nodes) == {
        ("/my/old", "/my/new"),
        ("/my/old/path", "/my/new/path"),
        ("/my/old/path/array", "/my/new/path/array"),
    }
    assert "Nodes moved/renamed:\n    /my/old -> /my/new" in str(diff)
    back = repo.diff(from_snapshot_id=second, to_snapshot_id=first)
    assert ("/my/new/path/array", "/my/old/path/array") in back.moved_nodes


def test_icechunk_2_basic_move(repo: frazil.Repository) -> None:
    """Icechunk 2.x's own first move example, through its names."""
    s = repo.writable_session("main")
    root = zarr.group(store=s.store, overwrite=True)
    root.create_group("my/old/path").create_array(
        "array", shape=(10, 10), chunks=(2, 2), dtype="i4", fill_value=42
    )
    s.commit("create array")
    s = repo.rearrange_session("main")
    s.move("/my/old", "/my/new")
    keys = sorted(asyncio.run(_keys(s.store)))
    assert keys == [
        "my/new/path/array/zarr.json",
        "my/new/path/zarr.json",
        "my/new/zarr.json",
        "my/zarr.json",
        "zarr.json",
    ]
    s.commit("directory renamed")
    group = zarr.open_group(store=repo.readonly_session("main").store, mode="r")
    np.testing.assert_array_equal(group["my/new/path/array"], 42)
    a, b, *_ = repo.ancestry(branch="main")
    diff = repo.diff(from_snapshot_id=b.id, to_snapshot_id=a.id)
    assert str(diff) == (
        "Nodes moved/renamed:\n"
        "    /my/old -> /my/new\n"
        "    /my/old/path -> /my/new/path\n"
        "    /my/old/path/array -> /my/new/path/array"
    )


async def _keys(store: zarr.abc.store.Store) -> list[str]:
    return [k async for k in store.list()]


def test_move_rewrites_no_chunk_or_manifest() -> None:
    storage = CountingStorage(frazil.in_memory_storage())
    repo = frazil.Repository.create(storage)
    _tree(repo)
    s = repo.writable_session("main")
    storage.manifest_reads = storage.data_writes = 0
    s.move("/my/old/path/array", "/my/renamed")
    s.commit("rename an array")
    assert storage.data_writes == 0
    assert storage.manifest_reads == 0
    np.testing.assert_array_equal(_read(repo.readonly_session("main"), "my/renamed"), EXPECTED)


def test_moved_array_keeps_staged_and_later_writes(repo: frazil.Repository) -> None:
    _tree(repo)
    s = repo.writable_session("main")
    a = zarr.open_array(s.store, path="my/old/path/array")
    a[0, 0] = 1000  # staged before the move: follows the node
    s.move("/my/old/path/array", "/moved")
    b = zarr.open_array(s.store, path="moved")
    b[9, 9] = 2000  # written at the new path
    assert s.status().updated_chunks == {"/moved": [[0, 0], [4, 4]]}
    s.commit("write, move, write")
    want = EXPECTED.copy()
    want[0, 0], want[9, 9] = 1000, 2000
    np.testing.assert_array_equal(_read(repo.readonly_session("main"), "moved"), want)


def test_move_of_new_node_and_move_back(repo: frazil.Repository) -> None:
    _tree(repo)
    s = repo.writable_session("main")
    root = zarr.open_group(s.store)
    root.create_array("fresh", shape=(2,), chunks=(1,), dtype="i4", fill_value=0)[:] = [7, 8]
    s.move("/fresh", "/my/fresh")
    s.move("/my/old", "/tmp")
    s.move("/tmp", "/my/old")  # back where it was: no change left
    status = s.status()
    assert status.moved_nodes == [] and status.new_arrays == {"/my/fresh"}
    s.commit("new array, moved")
    r = repo.readonly_session("main")
    np.testing.assert_array_equal(_read(r, "my/fresh"), [7, 8])
    np.testing.assert_array_equal(_read(r, "my/old/path/array"), EXPECTED)


@pytest.mark.parametrize(
    ("src", "dst", "error", "words"),
    [
        ("/", "/x", frazil.InvalidInputError, "root group cannot be moved"),
        ("/nope", "/x", frazil.NotFoundError, "no group or array at '/nope'"),
        ("/my", "/other", frazil.AlreadyExistsError, "already at '/other'"),
        ("/my", "/", frazil.AlreadyExistsError, "root group's path is taken"),
        ("/my/old", "/my/old/path/x", frazil.InvalidInputError, "its own subtree"),
        ("/my/old", "/my/old", frazil.InvalidInputError, "into itself"),
        ("/my/old", "/missing/x", frazil.NotFoundError, "no group at '/missing'"),
        ("/my/old", "/other/x", frazil.InvalidInputError, "'/other' is an array"),
        ("/my/old", "/a/../b", frazil.InvalidInputError, "invalid node path"),
    ],
)
def test_move_refusals(
    repo: frazil.Repository, src: str, dst: str, error: type[Exception], words: str
) -> None:
    _tree(repo)
    s = repo.writable_session("main")
    with pytest.raises(error, match=words.replace("(", r"\(")) as e:
        s.move(src, dst)
    assert isinstance(e.value, frazil.FrazilError)
    assert src in str(e.value) or "invalid node path" in words
    assert not s.has_uncommitted_changes


def test_move_needs_a_writable_session(repo: frazil.Repository) -> None:
    _tree(repo)
    with pytest.raises(frazil.ReadOnlyError):
        repo.readonly_session("main").move("/my", "/your")


def test_move_of_group_onto_taken_descendant_path(repo: frazil.Repository) -> None:
    """A node under the destination exists without the destination itself: refused."""
    _tree(repo)
    s = repo.writable_session("main")
    s.set_metadata("/d/old", b'{"zarr_format": 3, "node_type": "group"}')  # no /d
    with pytest.raises(frazil.AlreadyExistsError, match="'/my/old' would move onto '/d/old'"):
        s.move("/my", "/d")
    assert s.node("/my/old/path/array") is not None


# -- concurrent commits ---------------------------------------------------------------------


def _write(repo: frazil.Repository, path: str, index: tuple[int, ...], value: int) -> str:
    s = repo.writable_session("main")
    zarr.open_array(s.store, path=path)[index] = value
    return s.commit(f"write {path}")


@pytest.mark.parametrize(
    "solver", [frazil.ConflictDetector(), frazil.BasicConflictSolver()], ids=["detector", "basic"]
)
def test_concurrent_write_to_moved_array_conflicts(
    repo: frazil.Repository, solver: frazil.ConflictSolver
) -> None:
    _tree(repo)
    mover = repo.writable_session("main")
    mover.move("/my/old", "/my/new")
    _write(repo, "my/old/path/array", (0, 0), 555)  # lands first
    with pytest.raises(frazil.RebaseFailedError) as e:
        mover.commit("move", rebase_with=solver)
    kinds = {(c.conflict_type, c.path) for c in e.value.conflicts}
    assert (ConflictType.MoveOperationCannotBeRebased, "/my/old/path/array") in kinds
    r = repo.readonly_session("main")  # the write is there, under the old name
    assert _read(r, "my/old/path/array")[0, 0] == 555


@pytest.mark.parametrize(
    "solver", [frazil.ConflictDetector(), frazil.BasicConflictSolver()], ids=["detector", "basic"]
)
def test_write_then_concurrent_move_conflicts(
    repo: frazil.Repository, solver: frazil.ConflictSolver
) -> None:
    _tree(repo)
    writer = repo.writable_session("main")
    zarr.open_array(writer.store, path="my/old/path/array")[0, 0] = 555
    mover = repo.writable_session("main")
    mover.move("/my/old/path", "/my/path")
    mover.commit("move")
    with pytest.raises(frazil.RebaseFailedError) as e:
        writer.commit("write", rebase_with=solver)
    paths = {c.path for c in e.value.conflicts}
    assert "/my/old/path/array" in paths
    np.testing.assert_array_equal(_read(repo.readonly_session("main"), "my/path/array"), EXPECTED)


@pytest.mark.parametrize("order", ["move-first", "delete-first"])
def test_move_and_concurrent_delete_conflict(repo: frazil.Repository, order: str) -> None:
    _tree(repo)
    mover = repo.writable_session("main")
    mover.move("/my/old", "/moved")
    deleter = repo.writable_session("main")
    deleter.delete_node("/my/old/path/array")
    first, second = (mover, deleter) if order == "move-first" else (deleter, mover)
    first.commit("first")
    with pytest.raises(frazil.RebaseFailedError) as e:
        second.commit("second", rebase_with=frazil.BasicConflictSolver())
    assert any(
        c.conflict_type is ConflictType.MoveOperationCannotBeRebased for c in e.value.conflicts
    )


def test_move_rebases_over_unrelated_commits(repo: frazil.Repository) -> None:
    _tree(repo)
    mover = repo.writable_session("main")
    mover.move("/my/old/path/array", "/my/array")
    zarr.open_array(mover.store, path="my/array")[1, 1] = 111
    _write(repo, "other", (0,), 9)  # another array
    repo.compact(paths=["/my/old/path/array"])  # layout only: no conflict
    mover.commit("move", rebase_with=frazil.ConflictDetector())
    r = repo.readonly_session("main")
    want = EXPECTED.copy()
    want[1, 1] = 111
    np.testing.assert_array_equal(_read(r, "my/array"), want)
    assert _read(r, "other")[0] == 9
    assert r.node("/my/old/path/array") is None


def test_concurrent_moves_to_one_path_conflict(repo: frazil.Repository) -> None:
    _tree(repo)
    a, b = repo.writable_session("main"), repo.writable_session("main")
    a.move("/other", "/taken")
    b.move("/my", "/taken")
    a.commit("a")
    with pytest.raises(frazil.RebaseFailedError) as e:
        b.commit("b", rebase_with=frazil.BasicConflictSolver())
    assert ConflictType.NewNodeConflictsWithExistingNode in {
        c.conflict_type for c in e.value.conflicts
    }


def test_fork_moves_merge(repo: frazil.Repository) -> None:
    _tree(repo)
    s = repo.writable_session("main")
    fork = s.fork()
    fork.move("/other", "/my/other")
    s.merge(fork)
    assert s.status().moved_nodes == [("/other", "/my/other")]
    s.commit("merged a fork's move")
    assert repo.readonly_session("main").node("/my/other") is not None


# -- the rule, as data ---------------------------------------------------------------------


def test_move_rule_is_symmetric_and_unresolvable() -> None:
    moved = ChangeSummary(deleted_arrays={"/a"}, new_arrays={"/b"}, moved_nodes=[("/a", "/b")])
    for other in (
        ChangeSummary(updated_chunks={"/a": {(0,)}}),
        ChangeSummary(updated_arrays={"/a"}),
        ChangeSummary(deleted_arrays={"/a"}),
        ChangeSummary(written={"/a"}),
    ):
        for ours, theirs in ((moved, other), (other, moved)):
            found = detect_conflicts(ours, theirs)
            assert _types(found) >= {ConflictType.MoveOperationCannotBeRebased}
            with pytest.raises(frazil.RebaseFailedError):
                frazil.BasicConflictSolver().solve(found, "tip")
    assert detect_conflicts(moved, ChangeSummary(updated_chunks={"/c": {(0,)}})) == []


def _types(found: list[frazil.Conflict]) -> set[ConflictType]:
    return {c.conflict_type for c in found}
