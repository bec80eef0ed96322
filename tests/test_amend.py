"""``Session.amend`` (Icechunk 2.x): the branch's tip replaced by a snapshot with its changes
and the session's, as a child of the tip's parent, by one compare-and-swap."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import zarr

import frazil
from frazil.conflicts import ConflictDetector


@pytest.fixture
def repo() -> frazil.Repository:
    repo = frazil.Repository.create(frazil.in_memory_storage())
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(8,), chunks=(2,), dtype="i4", fill_value=0)
    s.commit("c1")
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="a")[2:4] = 1
    zarr.create_group(s.store, path="g")
    s.commit("c2")
    return repo


def values(repo: frazil.Repository, ref: str = "main") -> list[int]:
    return zarr.open_array(repo.readonly_session(ref).store, path="a", mode="r")[...].tolist()


def test_amend_replaces_the_tip(repo: frazil.Repository) -> None:
    c1, old = [i.id for i in repo.ancestry(branch="main")][1::-1]
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="a")[4:6] = 2
    new = s.amend("c2, amended", metadata={"why": "forgot a chunk"})
    assert s.read_only and s.snapshot_id == new == repo.lookup_branch("main")
    history = list(repo.ancestry(branch="main"))
    assert [i.message for i in history] == ["c2, amended", "c1", "Repository initialized"]
    assert history[0].parent_id == c1 and history[0].metadata["why"] == "forgot a chunk"
    assert old not in {i.id for i in history}
    assert values(repo) == [0, 0, 1, 1, 2, 2, 0, 0]
    d = repo.diff(from_snapshot_id=c1, to_branch="main")  # one log for both commits
    assert d.updated_chunks == {"/a": [[1], [2]]} and d.new_groups == {"/g"}
    assert repo.readonly_session(snapshot_id=old).snapshot_id == old  # until gc
    assert repo.fsck().ok
    summary = repo.garbage_collect(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    assert summary.snapshots_deleted == 1
    with pytest.raises(frazil.NotFoundError):
        repo.readonly_session(snapshot_id=old)
    assert values(repo) == [0, 0, 1, 1, 2, 2, 0, 0] and repo.fsck().ok


def test_amend_that_undoes_the_tips_changes(repo: frazil.Repository) -> None:
    c1 = list(repo.ancestry(branch="main"))[1].id
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="a")[2:4] = 0  # back to the fill value
    root = zarr.open_group(s.store)
    del root["g"]
    s.amend("nothing after all")
    d = repo.diff(from_snapshot_id=c1, to_branch="main")
    assert not d.new_groups and not d.deleted_groups  # g came and went within the amend
    assert values(repo) == [0] * 8


def test_amend_only_the_message(repo: frazil.Repository) -> None:
    s = repo.writable_session("main")
    with pytest.raises(frazil.InvalidInputError, match="no changes"):
        s.amend("same content")
    sid = s.amend("a better message", allow_empty=True)
    info = repo.lookup_snapshot(sid)
    assert info.message == "a better message" and values(repo) == [0, 0, 1, 1, 0, 0, 0, 0]
    assert len(list(repo.ancestry(branch="main"))) == 3


def test_first_snapshot_cannot_be_amended() -> None:
    repo = frazil.Repository.create(frazil.in_memory_storage())
    s = repo.writable_session("main")
    zarr.create_group(s.store, path="x")
    with pytest.raises(frazil.InvalidInputError, match="first"):
        s.amend("no parent")
    assert s.has_uncommitted_changes  # nothing lost: it can still commit
    s.commit("committed instead")


def test_amend_of_a_moved_branch_is_a_conflict(repo: frazil.Repository) -> None:
    late = repo.writable_session("main")
    other = repo.writable_session("main")
    zarr.open_array(other.store, path="a")[0] = 9
    other.commit("landed first")
    zarr.open_array(late.store, path="a")[6] = 3
    with pytest.raises(frazil.ConflictError):
        late.amend("too late")
    assert values(repo)[0] == 9 and values(repo)[6] == 0


def test_a_session_on_the_old_tip_cannot_commit_over_the_amend(repo: frazil.Repository) -> None:
    """A session started at the tip that was then amended: its commit must not land on
    top of history that no longer holds its base without being checked."""
    stale = repo.writable_session("main")
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="a")[0] = 5
    s.amend("amended")
    zarr.open_array(stale.store, path="a")[0] = 7
    with pytest.raises(frazil.ConflictError):
        stale.commit("on the old tip")
    with pytest.raises(frazil.ConflictError, match="not in its history"):
        stale.commit("on the old tip", rebase_with=ConflictDetector())
    assert values(repo)[0] == 5
    assert np.array_equal(values(repo), [5, 0, 1, 1, 0, 0, 0, 0])


def test_amend_is_icechunks_signature() -> None:
    import inspect

    sig = inspect.signature(frazil.Session.amend)
    assert list(sig.parameters) == ["self", "message", "metadata", "allow_empty"]
    assert sig.parameters["metadata"].kind is inspect.Parameter.KEYWORD_ONLY
