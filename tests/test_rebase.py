"""Rebase on real storage: commits that find the branch moved, solvers deciding about the
commits that landed meanwhile, and several processes committing to one branch."""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zarr

import frazil
from frazil import (
    BasicConflictSolver,
    Conflict,
    ConflictDetector,
    ConflictError,
    ConflictType,
    RebaseFailedError,
    VersionSelection,
    runtime,
)

CT = ConflictType
ATTEMPTS = "frazil.commit_attempts"
N = 8


@pytest.fixture
def base(repo: frazil.Repository) -> str:
    """An array /a of N one-element chunks (fill -1) and a group /g; returns the commit."""
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(N,), chunks=(1,), dtype="i4", fill_value=-1)
    zarr.create_array(s.store, name="b", shape=(N,), chunks=(1,), dtype="i4", fill_value=-1)
    zarr.create_group(s.store, path="g")
    return s.commit("base")


def write(session: frazil.Session, values: dict[int, int], path: str = "a") -> None:
    arr = zarr.open_array(session.store, path=path)
    for i, v in values.items():
        arr[i] = v


def read(repo: frazil.Repository, path: str = "a", branch: str = "main") -> list[int]:
    return zarr.open_array(repo.readonly_session(branch).store, path=path)[:].tolist()


def expect(values: dict[int, int]) -> list[int]:
    return [values.get(i, -1) for i in range(N)]


def two_sessions(repo: frazil.Repository) -> tuple[frazil.Session, frazil.Session]:
    return repo.writable_session("main"), repo.writable_session("main")


def history(repo: frazil.Repository, branch: str = "main") -> list[frazil.SnapshotInfo]:
    return list(repo.ancestry(branch=branch))


def assert_linear(hist: list[frazil.SnapshotInfo]) -> None:
    for child, parent in zip(hist, hist[1:]):
        assert child.parent_id == parent.id
    assert hist[-1].parent_id is None


# -- two sessions, one branch --------------------------------------------------------------


def test_moved_branch_without_rebase_raises(repo: frazil.Repository, base: str) -> None:
    theirs, ours = two_sessions(repo)
    write(theirs, {0: 10})
    tip = theirs.commit("theirs")
    write(ours, {1: 20})
    with pytest.raises(ConflictError) as info:
        ours.commit("ours")
    err = info.value
    assert not isinstance(err, RebaseFailedError)
    assert err.expected_parent == base and err.actual_parent == tip
    # nothing landed, the session keeps its changes and can still rebase and commit
    assert repo.lookup_branch("main") == tip
    assert ours.has_uncommitted_changes and not ours.read_only
    assert ours.snapshot_id == base
    ours.commit("ours", rebase_with=ConflictDetector())
    assert read(repo) == expect({0: 10, 1: 20})


def test_rebase_with_detector_disjoint_chunks(repo: frazil.Repository, base: str) -> None:
    theirs, ours = two_sessions(repo)
    write(theirs, {0: 10, 2: 12})
    tip = theirs.commit("theirs")
    write(ours, {1: 21, 3: 23})
    write(ours, {5: 25}, path="b")
    mine = ours.commit("ours", {"who": "me"}, rebase_with=ConflictDetector())
    hist = history(repo)
    assert [h.id for h in hist[:3]] == [mine, tip, base]
    assert_linear(hist)
    assert hist[0].metadata == {"who": "me", ATTEMPTS: 2}
    assert ATTEMPTS not in hist[1].metadata  # committed without rebase_with
    assert read(repo) == expect({0: 10, 2: 12, 1: 21, 3: 23})
    assert read(repo, "b") == expect({5: 25})
    assert ours.read_only and ours.snapshot_id == mine
    # the committed session reads what it committed
    assert zarr.open_array(ours.store, path="a")[:].tolist() == read(repo)


def test_rebase_in_the_same_process_reads_no_transaction_log(
    repo: frazil.Repository, base: str
) -> None:
    """A commit leaves its transaction log in the repository's cache, so a session of the
    same repository rebasing over it reads nothing more from storage for it; a session
    of another Repository (another process) reads it from storage."""
    elsewhere = frazil.Repository.open(repo.storage).writable_session("main")
    theirs, ours = two_sessions(repo)
    write(theirs, {0: 10})
    tip = theirs.commit("theirs")
    runtime.run(repo.storage.delete([f"transactions/{tip}"]))  # only the cached copy is left
    write(ours, {1: 21})
    ours.commit("ours", rebase_with=ConflictDetector())
    assert read(repo) == expect({0: 10, 1: 21})
    write(elsewhere, {2: 32})
    with pytest.raises(frazil.NotFoundError, match=f"transactions/{tip}"):
        elsewhere.commit("elsewhere", rebase_with=ConflictDetector())


def test_commit_attempts_is_one_without_contention(repo: frazil.Repository, base: str) -> None:
    s = repo.writable_session("main")
    write(s, {0: 1})
    s.commit("alone", rebase_with=ConflictDetector())
    assert history(repo)[0].metadata == {ATTEMPTS: 1}


def test_rebase_over_several_commits(repo: frazil.Repository, base: str) -> None:
    ours = repo.writable_session("main")
    landed = []
    for i in (0, 1, 2):
        s = repo.writable_session("main")
        write(s, {i: 100 + i})
        landed.append(s.commit(f"theirs {i}"))
    write(ours, {5: 5, 6: 6})
    mine = ours.commit("ours", rebase_with=ConflictDetector())
    hist = history(repo)
    assert [h.id for h in hist[:5]] == [mine, *reversed(landed), base]
    assert hist[0].metadata[ATTEMPTS] == 2
    assert read(repo) == expect({0: 100, 1: 101, 2: 102, 5: 5, 6: 6})


def test_conflict_in_an_older_commit_of_the_chain(repo: frazil.Repository, base: str) -> None:
    ours = repo.writable_session("main")
    for i in (3, 0, 1):  # the conflicting write is the oldest of three
        s = repo.writable_session("main")
        write(s, {i: 100 + i})
        s.commit(f"theirs {i}")
    write(ours, {3: 3, 6: 6})
    with pytest.raises(RebaseFailedError) as info:
        ours.commit("ours", rebase_with=ConflictDetector())
    assert info.value.conflicts == [Conflict(CT.ChunkDoubleUpdate, "/a", ((3,),))]


# -- overlapping chunks --------------------------------------------------------------------


def overlap(repo: frazil.Repository) -> tuple[frazil.Session, str]:
    """Theirs wrote chunks 0 and 1 and landed; ours wrote 1 and 2 (not committed)."""
    theirs, ours = two_sessions(repo)
    write(theirs, {0: 10, 1: 11})
    tip = theirs.commit("theirs")
    write(ours, {1: 21, 2: 22})
    return ours, tip


def test_overlap_use_ours(repo: frazil.Repository, base: str) -> None:
    ours, tip = overlap(repo)
    solver = BasicConflictSolver(on_chunk_conflict=VersionSelection.UseOurs)
    mine = ours.commit("ours", rebase_with=solver)
    assert read(repo) == expect({0: 10, 1: 21, 2: 22})
    hist = history(repo)
    assert [h.id for h in hist[:3]] == [mine, tip, base]
    assert hist[0].metadata[ATTEMPTS] == 2
    assert repo.diff(from_snapshot_id=tip, to_snapshot_id=mine).updated_chunks == {"/a": [[1], [2]]}


def test_overlap_use_theirs(repo: frazil.Repository, base: str) -> None:
    ours, tip = overlap(repo)
    solver = BasicConflictSolver(on_chunk_conflict=VersionSelection.UseTheirs)
    mine = ours.commit("ours", rebase_with=solver)
    assert read(repo) == expect({0: 10, 1: 11, 2: 22})
    # our commit no longer writes the contested chunk
    assert repo.diff(from_snapshot_id=tip, to_snapshot_id=mine).updated_chunks == {"/a": [[2]]}


@pytest.mark.parametrize(
    "solver",
    [ConflictDetector(), BasicConflictSolver(on_chunk_conflict=VersionSelection.Fail)],
    ids=["detector", "basic-fail"],
)
def test_overlap_fails(repo: frazil.Repository, base: str, solver: frazil.ConflictSolver) -> None:
    ours, tip = overlap(repo)
    with pytest.raises(RebaseFailedError) as info:
        ours.commit("ours", rebase_with=solver)
    err = info.value
    assert err.conflicts == [Conflict(CT.ChunkDoubleUpdate, "/a", ((1,),))]
    assert err.snapshot_id == tip and isinstance(err, ConflictError)
    assert "/a" in str(err) and "[1]" in str(err)
    # branch unchanged, nothing of ours visible
    assert repo.lookup_branch("main") == tip
    assert [h.id for h in history(repo)[:2]] == [tip, base]
    assert read(repo) == expect({0: 10, 1: 11})
    # the session is untouched: same base, same staged changes, still writable
    assert ours.snapshot_id == base and not ours.read_only and ours.has_uncommitted_changes
    assert zarr.open_array(ours.store, path="a")[:].tolist() == expect({1: 21, 2: 22})
    assert ours.status().updated_chunks == {"/a": [[1], [2]]}
    # a second try with a lenient solver goes through
    ours.commit("ours", rebase_with=BasicConflictSolver())
    assert read(repo) == expect({0: 10, 1: 21, 2: 22})


def test_failed_rebase_via_session_rebase(repo: frazil.Repository, base: str) -> None:
    ours, tip = overlap(repo)
    with pytest.raises(RebaseFailedError):
        ours.rebase(ConflictDetector())
    assert ours.snapshot_id == base and ours.has_uncommitted_changes


# -- explicit rebase -----------------------------------------------------------------------


def test_explicit_rebase_then_commit(repo: frazil.Repository, base: str) -> None:
    theirs, ours = two_sessions(repo)
    write(theirs, {0: 10})
    tip = theirs.commit("theirs")
    write(ours, {1: 21})
    ours.rebase(ConflictDetector())
    assert ours.snapshot_id == tip and not ours.read_only
    # the rebased session sees their chunk and its own
    assert zarr.open_array(ours.store, path="a")[:].tolist() == expect({0: 10, 1: 21})
    mine = ours.commit("ours")  # no rebase needed any more
    hist = history(repo)
    assert [h.id for h in hist[:3]] == [mine, tip, base]
    assert ATTEMPTS not in hist[0].metadata
    assert read(repo) == expect({0: 10, 1: 21})


def test_explicit_rebase_use_theirs_drops_our_chunk(repo: frazil.Repository, base: str) -> None:
    ours, tip = overlap(repo)
    ours.rebase(BasicConflictSolver(on_chunk_conflict=VersionSelection.UseTheirs))
    assert ours.snapshot_id == tip
    assert zarr.open_array(ours.store, path="a")[:].tolist() == expect({0: 10, 1: 11, 2: 22})
    assert ours.status().updated_chunks == {"/a": [[2]]}
    ours.commit("ours")
    assert read(repo) == expect({0: 10, 1: 11, 2: 22})


def test_explicit_rebase_when_branch_did_not_move(repo: frazil.Repository, base: str) -> None:
    s = repo.writable_session("main")
    write(s, {0: 1})
    s.rebase(ConflictDetector())
    assert s.snapshot_id == base and s.has_uncommitted_changes
    s.commit("one")
    assert read(repo) == expect({0: 1})


def test_rebase_twice_then_commit(repo: frazil.Repository, base: str) -> None:
    ours = repo.writable_session("main")
    write(ours, {7: 7})
    for i in (0, 1):
        s = repo.writable_session("main")
        write(s, {i: 100 + i})
        s.commit(f"theirs {i}")
        ours.rebase(ConflictDetector())
        assert ours.snapshot_id == repo.lookup_branch("main")
    ours.commit("ours")
    assert read(repo) == expect({0: 100, 1: 101, 7: 7})
    assert_linear(history(repo))


def test_read_only_session_cannot_rebase(repo: frazil.Repository, base: str) -> None:
    with pytest.raises(frazil.ReadOnlyError):
        repo.readonly_session("main").rebase(ConflictDetector())


# -- node-level conflicts ------------------------------------------------------------------


def set_attr(session: frazil.Session, path: str, value: Any) -> None:
    node = zarr.open(session.store, path=path, mode="r+")
    node.attrs["x"] = value


@pytest.mark.parametrize("path", ["a", "g"])
@pytest.mark.parametrize(
    "solver", [ConflictDetector(), BasicConflictSolver()], ids=["detector", "basic"]
)
def test_metadata_double_update_fails(
    repo: frazil.Repository, base: str, path: str, solver: frazil.ConflictSolver
) -> None:
    theirs, ours = two_sessions(repo)
    set_attr(theirs, path, "theirs")
    tip = theirs.commit("theirs")
    set_attr(ours, path, "ours")
    with pytest.raises(RebaseFailedError) as info:
        ours.commit("ours", rebase_with=solver)
    assert info.value.conflicts == [Conflict(CT.ZarrMetadataDoubleUpdate, f"/{path}")]
    assert repo.lookup_branch("main") == tip
    assert (
        zarr.open(repo.readonly_session("main").store, path=path, mode="r").attrs["x"] == "theirs"
    )


def test_metadata_update_and_their_chunks_merge(repo: frazil.Repository, base: str) -> None:
    """Our metadata update on an array they wrote chunks to: no conflict, and the rebased
    node keeps their chunks (its manifest segments come from the new tip)."""
    theirs, ours = two_sessions(repo)
    write(theirs, {0: 10, 4: 14})
    theirs.commit("theirs")
    set_attr(ours, "a", "ours")
    ours.commit("ours", rebase_with=ConflictDetector())
    arr = zarr.open_array(repo.readonly_session("main").store, path="a")
    assert arr.attrs["x"] == "ours"
    assert arr[:].tolist() == expect({0: 10, 4: 14})


def test_chunks_in_updated_array_fails(repo: frazil.Repository, base: str) -> None:
    theirs, ours = two_sessions(repo)
    set_attr(theirs, "a", "theirs")
    theirs.commit("theirs")
    write(ours, {0: 1})
    with pytest.raises(RebaseFailedError) as info:
        ours.commit("ours", rebase_with=BasicConflictSolver())
    assert info.value.conflicts == [Conflict(CT.ChunksUpdatedInUpdatedArray, "/a")]


def test_chunks_in_deleted_array_fails(repo: frazil.Repository, base: str) -> None:
    theirs, ours = two_sessions(repo)
    theirs.delete_node("/a")
    theirs.commit("theirs")
    write(ours, {0: 1})
    with pytest.raises(RebaseFailedError) as info:
        ours.commit("ours", rebase_with=BasicConflictSolver())
    assert info.value.conflicts == [Conflict(CT.ChunksUpdatedInDeletedArray, "/a")]
    assert "/a" not in {n.path for n in repo.readonly_session("main").nodes()}


def test_delete_of_updated_array(repo: frazil.Repository, base: str) -> None:
    theirs, ours = two_sessions(repo)
    write(theirs, {3: 13})
    theirs.commit("theirs")
    ours.delete_node("/a")
    expected = [Conflict(CT.DeleteOfUpdatedArray, "/a")]
    for solver in (ConflictDetector(), BasicConflictSolver(fail_on_delete_of_updated_array=True)):
        with pytest.raises(RebaseFailedError) as info:
            ours.commit("ours", rebase_with=solver)
        assert info.value.conflicts == expected
    ours.commit("ours", rebase_with=BasicConflictSolver())  # our delete wins
    assert "/a" not in {n.path for n in repo.readonly_session("main").nodes()}
    assert read(repo, "b") == expect({})


def test_delete_of_updated_group(repo: frazil.Repository, base: str) -> None:
    theirs, ours = two_sessions(repo)
    set_attr(theirs, "g", "theirs")
    theirs.commit("theirs")
    ours.delete_node("/g")
    with pytest.raises(RebaseFailedError) as info:
        ours.commit("ours", rebase_with=BasicConflictSolver(fail_on_delete_of_updated_group=True))
    assert info.value.conflicts == [Conflict(CT.DeleteOfUpdatedGroup, "/g")]
    ours.commit("ours", rebase_with=BasicConflictSolver())
    assert "/g" not in {n.path for n in repo.readonly_session("main").nodes()}


def test_replacing_an_array_they_wrote_to_is_a_conflict(repo: frazil.Repository, base: str) -> None:
    """Regression: replacing /a (new node id at the same path) deletes the array their
    commit wrote to; ConflictDetector used to let that through silently."""
    theirs, ours = two_sessions(repo)
    write(theirs, {0: 10})
    theirs.commit("theirs")
    zarr.create_array(
        ours.store, name="a", shape=(2, 2), chunks=(1, 1), dtype="i4", fill_value=0, overwrite=True
    )
    with pytest.raises(RebaseFailedError) as info:
        ours.commit("ours", rebase_with=ConflictDetector())
    assert info.value.conflicts == [Conflict(CT.DeleteOfUpdatedArray, "/a")]
    assert read(repo) == expect({0: 10})


def test_new_node_at_same_path(repo: frazil.Repository, base: str) -> None:
    theirs, ours = two_sessions(repo)
    zarr.create_group(theirs.store, path="new")
    theirs.commit("theirs")
    zarr.create_group(ours.store, path="new")
    with pytest.raises(RebaseFailedError) as info:
        ours.commit("ours", rebase_with=BasicConflictSolver())
    assert info.value.conflicts == [Conflict(CT.NewNodeConflictsWithExistingNode, "/new")]


def test_they_create_under_the_group_we_delete(repo: frazil.Repository, base: str) -> None:
    theirs, ours = two_sessions(repo)
    zarr.create_array(theirs.store, name="g/x", shape=(2,), chunks=(1,), dtype="i4")
    theirs.commit("theirs")
    ours.delete_tree("/g")
    with pytest.raises(RebaseFailedError) as info:
        ours.commit("ours", rebase_with=BasicConflictSolver())
    assert info.value.conflicts == [Conflict(CT.NewNodeInInvalidGroup, "/g/x")]
    assert "/g/x" in {n.path for n in repo.readonly_session("main").nodes()}


def test_we_create_under_the_group_they_delete(repo: frazil.Repository, base: str) -> None:
    theirs, ours = two_sessions(repo)
    theirs.delete_tree("/g")
    theirs.commit("theirs")
    zarr.create_array(ours.store, name="g/x", shape=(2,), chunks=(1,), dtype="i4")
    with pytest.raises(RebaseFailedError) as info:
        ours.commit("ours", rebase_with=BasicConflictSolver())
    assert info.value.conflicts == [Conflict(CT.NewNodeInInvalidGroup, "/g/x")]


def _they_delete(s: frazil.Session) -> None:
    s.delete_node("/a")


def _they_replace(s: frazil.Session) -> None:
    zarr.create_array(
        s.store, name="a", shape=(2, 2), chunks=(1, 1), dtype="i4", fill_value=0, overwrite=True
    )
    zarr.open_array(s.store, path="a")[:] = 3


def _they_update(s: frazil.Session) -> None:
    set_attr(s, "a", "theirs")
    write(s, {0: 10})


def _noop_set_metadata(s: frazil.Session) -> None:
    node = s.node("/a")
    assert node is not None
    s.set_metadata("/a", node.zarr_json)  # the same document again


def _noop_attrs_roundtrip(s: frazil.Session) -> None:
    arr = zarr.open_array(s.store, path="a")
    arr.attrs["tmp"] = 1
    del arr.attrs["tmp"]  # back to the base document


@pytest.mark.parametrize(
    "ours",
    [_noop_set_metadata, _noop_attrs_roundtrip],
    ids=["set-same-metadata", "attrs-set-and-delete"],
)
@pytest.mark.parametrize(
    "theirs",
    [_they_delete, _they_replace, _they_update],
    ids=["they-delete", "they-replace", "they-update"],
)
def test_noop_metadata_write_does_not_undo_theirs(
    repo: frazil.Repository,
    base: str,
    ours: Callable[[frazil.Session], None],
    theirs: Callable[[frazil.Session], None],
) -> None:
    """Regression: a staged record identical to the base node is no change (so no
    conflict), and it must not survive the rebase either: it used to resurrect an array
    they deleted (empty), replace their new array by the old one, or revert their
    zarr.json to the base document."""
    t, o = two_sessions(repo)
    theirs(t)
    tip = t.commit("theirs")
    expected = {n.path: n for n in repo.readonly_session("main").nodes()}
    ours(o)
    write(o, {1: 21}, path="b")
    o.commit("ours", rebase_with=ConflictDetector())
    after = {n.path: n for n in repo.readonly_session("main").nodes()}
    assert after.keys() == expected.keys()
    for path, node in expected.items():
        assert after[path].node_id == node.node_id
        assert after[path].zarr_json == node.zarr_json
    assert read(repo, "b") == expect({1: 21})
    assert repo.diff(from_snapshot_id=tip, to_branch="main").updated_chunks == {"/b": [[1]]}
    if "/a" in after:
        before = zarr.open_array(repo.readonly_session(snapshot_id=tip).store, path="a")[:]
        now = zarr.open_array(repo.readonly_session("main").store, path="a")[:]
        assert now.tolist() == before.tolist()


# -- history that does not contain our base -----------------------------------------------


def unrelated_reset(repo: frazil.Repository) -> str:
    """Reset main to a commit made on another branch from the repository's first
    snapshot: the branch's new history does not contain the old tip."""
    root = history(repo)[-1].id
    repo.create_branch("other", root)
    s = repo.writable_session("other")
    zarr.create_group(s.store, path="elsewhere")
    other = s.commit("other")
    repo.reset_branch("main", other)
    return other


def test_reset_to_unrelated_snapshot_commit(repo: frazil.Repository, base: str) -> None:
    ours = repo.writable_session("main")
    write(ours, {0: 1})
    other = unrelated_reset(repo)
    with pytest.raises(ConflictError) as info:
        ours.commit("ours", rebase_with=BasicConflictSolver())
    err = info.value
    assert not isinstance(err, RebaseFailedError)
    assert err.expected_parent == base and err.actual_parent == other
    assert repo.lookup_branch("main") == other
    assert ours.has_uncommitted_changes and ours.snapshot_id == base


def test_reset_to_unrelated_snapshot_rebase(repo: frazil.Repository, base: str) -> None:
    ours = repo.writable_session("main")
    write(ours, {0: 1})
    other = unrelated_reset(repo)
    with pytest.raises(ConflictError) as info:
        ours.rebase(ConflictDetector())
    assert not isinstance(info.value, RebaseFailedError)
    assert info.value.actual_parent == other


def test_reset_to_ancestor(repo: frazil.Repository, base: str) -> None:
    """A reset backwards also leaves our base out of the branch's history."""
    s = repo.writable_session("main")
    write(s, {0: 1})
    s.commit("one")
    ours = repo.writable_session("main")
    write(ours, {1: 2})
    repo.reset_branch("main", base)
    with pytest.raises(ConflictError) as info:
        ours.commit("ours", rebase_with=ConflictDetector())
    assert not isinstance(info.value, RebaseFailedError)


def test_rebase_tries_exhausted(repo: frazil.Repository, base: str) -> None:
    theirs, ours = two_sessions(repo)
    write(theirs, {0: 10})
    tip = theirs.commit("theirs")
    write(ours, {1: 21})
    with pytest.raises(ConflictError) as info:
        ours.commit("ours", rebase_with=ConflictDetector(), rebase_tries=1)
    assert info.value.actual_parent == tip
    assert ours.has_uncommitted_changes
    with pytest.raises(frazil.InvalidInputError):
        ours.commit("ours", rebase_with=ConflictDetector(), rebase_tries=0)
    with pytest.raises(frazil.InvalidInputError):
        ours.commit("ours", rebase_with="detector")  # type: ignore[arg-type]
    ours.commit("ours", rebase_with=ConflictDetector(), rebase_tries=2)
    assert read(repo) == expect({0: 10, 1: 21})


# -- several processes, one branch ---------------------------------------------------------


def _ctx() -> Any:
    methods = mp.get_all_start_methods()
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


def _run_workers(
    target: Callable[..., None], nproc: int, args: tuple[Any, ...], timeout: float = 120
) -> list[Any]:
    ctx = _ctx()
    barrier = ctx.Barrier(nproc)
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(k, barrier, results, *args)) for k in range(nproc)]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=timeout) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errors = [o for o in outcomes if isinstance(o, str)]
    assert errors == []
    return sorted(outcomes)


def _disjoint_worker(k: int, barrier: Any, results: Any, root: str, m: int, lockstep: bool) -> None:
    """Commit i of process k writes chunk k*m+i = 1000*k+i, rebasing as needed. In
    lockstep, every process stages commit i, then all wait for each other and commit."""
    try:
        repo = frazil.Repository.open(frazil.local_filesystem_storage(root))
        barrier.wait(timeout=60)
        attempts = []
        for i in range(m):
            s = repo.writable_session("main")
            zarr.open_array(s.store, path="a")[k * m + i] = 1000 * k + i
            if lockstep:
                barrier.wait(timeout=60)
            s.commit(f"{k}/{i}", {"k": k, "i": i}, rebase_with=ConflictDetector())
            attempts.append(repo.lookup_snapshot(s.snapshot_id).metadata[ATTEMPTS])
        results.put((k, attempts))
    except BaseException as e:  # report, never hang the parent
        results.put(f"worker {k}: {e!r}")


@pytest.mark.parametrize("lockstep", [False, True], ids=["free-running", "lockstep"])
def test_processes_disjoint_chunks_with_detector(tmp_path: Path, lockstep: bool) -> None:
    """K processes x M commits on one branch, each writing its own chunks: every commit
    lands exactly once, in each process's order, and every chunk reads back."""
    K, M = 4, 25
    root = str(tmp_path / "repo")
    repo = frazil.Repository.create(frazil.local_filesystem_storage(root))
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(K * M,), chunks=(1,), dtype="i4", fill_value=-1)
    created = s.commit("create")

    t0 = time.perf_counter()
    outcomes = _run_workers(_disjoint_worker, K, (root, M, lockstep))
    elapsed = time.perf_counter() - t0

    hist = history(repo)
    assert_linear(hist)
    assert hist[K * M].id == created and len(hist) == K * M + 2
    landed = [h.message for h in hist[: K * M]]
    assert sorted(landed) == sorted(f"{k}/{i}" for k in range(K) for i in range(M))
    # each process's commits are in its own order
    for k in range(K):
        mine = [int(msg.split("/")[1]) for msg in reversed(landed) if msg.startswith(f"{k}/")]
        assert mine == list(range(M))
    values = zarr.open_array(repo.readonly_session("main").store, path="a")[:]
    assert values.tolist() == [1000 * k + i for k in range(K) for i in range(M)]
    assert [o[0] for o in outcomes] == list(range(K))
    rebased = sum(a > 1 for _, attempts in outcomes for a in attempts)
    assert rebased == sum(h.metadata[ATTEMPTS] > 1 for h in hist[: K * M])
    if lockstep:  # all sessions of a round share a base: one lands as is, the rest rebase
        assert rebased >= (K - 1) * M
    print(
        f"\n{K}x{M} commits ({'lockstep' if lockstep else 'free-running'}) in "
        f"{elapsed:.1f} s, {rebased} needed a rebase, max attempts "
        f"{max(a for _, attempts in outcomes for a in attempts)}"
    )


def _overlap_worker(k: int, barrier: Any, results: Any, root: str, m: int, selection: str) -> None:
    """Round i: every process stages the contested chunk 0 = 1000*k+i and its own chunk
    1+k*m+i, waits for the others, then commits; all sessions of a round share a base."""
    try:
        repo = frazil.Repository.open(frazil.local_filesystem_storage(root))
        solver = BasicConflictSolver(on_chunk_conflict=VersionSelection[selection])
        done, failed = [], []
        for i in range(m):
            s = repo.writable_session("main")
            arr = zarr.open_array(s.store, path="a")
            arr[0] = 1000 * k + i
            arr[1 + k * m + i] = 1000 * k + i
            barrier.wait(timeout=60)
            try:
                s.commit(f"{k}/{i}", {"k": k, "i": i}, rebase_with=solver)
                done.append(i)
            except RebaseFailedError as e:
                assert e.conflicts == [Conflict(CT.ChunkDoubleUpdate, "/a", ((0,),))], e
                assert s.has_uncommitted_changes and not s.read_only
                failed.append(i)
        results.put((k, done, failed))
    except BaseException as e:  # report, never hang the parent
        barrier.abort()
        results.put(f"worker {k}: {e!r}")


def _overlap_setup(tmp_path: Path, k: int, m: int) -> tuple[str, frazil.Repository, str]:
    root = str(tmp_path / "repo")
    repo = frazil.Repository.create(frazil.local_filesystem_storage(root))
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(1 + k * m,), chunks=(1,), dtype="i4", fill_value=-1)
    return root, repo, s.commit("create")


def test_processes_overlapping_chunks_use_ours(tmp_path: Path) -> None:
    K, M = 3, 8
    root, repo, created = _overlap_setup(tmp_path, K, M)
    outcomes = _run_workers(_overlap_worker, K, (root, M, "UseOurs"))
    assert all(done == list(range(M)) and failed == [] for _, done, failed in outcomes)

    hist = history(repo)
    assert_linear(hist)
    commits = hist[: K * M]
    assert hist[K * M].id == created
    assert sorted((h.metadata["k"], h.metadata["i"]) for h in commits) == sorted(
        (k, i) for k in range(K) for i in range(M)
    )
    # every commit kept its write of the contested chunk (ours wins at each rebase) ...
    for h in commits:
        written = repo.diff(from_snapshot_id=h.parent_id, to_snapshot_id=h.id).updated_chunks
        k, i = h.metadata["k"], h.metadata["i"]
        assert written == {"/a": [[0], [1 + k * M + i]]}
    # ... so the value that stays is the one of the newest commit in history
    values = zarr.open_array(repo.readonly_session("main").store, path="a")[:].tolist()
    last = commits[0].metadata
    assert values[0] == 1000 * last["k"] + last["i"]
    assert values[1:] == [1000 * k + i for k in range(K) for i in range(M)]
    # and every rebased round saw the commits that landed before it
    assert sum(h.metadata[ATTEMPTS] > 1 for h in commits) >= (K - 1) * M


def test_processes_overlapping_chunks_fail(tmp_path: Path) -> None:
    K, M = 3, 6
    root, repo, created = _overlap_setup(tmp_path, K, M)
    outcomes = _run_workers(_overlap_worker, K, (root, M, "Fail"))
    done = {(k, i) for k, d, _ in outcomes for i in d}
    failed = {(k, i) for k, _, f in outcomes for i in f}
    assert done | failed == {(k, i) for k in range(K) for i in range(M)}
    assert not done & failed
    # all sessions of a round share one base: exactly one commit per round lands
    assert sorted(i for _, i in done) == list(range(M))
    assert len(failed) == (K - 1) * M

    hist = history(repo)
    assert_linear(hist)
    assert hist[M].id == created and len(hist) == M + 2
    assert {(h.metadata["k"], h.metadata["i"]) for h in hist[:M]} == done
    assert [h.metadata["i"] for h in hist[:M]] == list(reversed(range(M)))
    values = zarr.open_array(repo.readonly_session("main").store, path="a")[:].tolist()
    last = hist[0].metadata
    assert values[0] == 1000 * last["k"] + last["i"]
    for k in range(K):
        for i in range(M):
            want = 1000 * k + i if (k, i) in done else -1  # no data from failed commits
            assert values[1 + k * M + i] == want
    assert not {1000 * k + i for k, i in failed} & set(values)
