"""Sessions, repositories and their errors as Icechunk users meet them: builtin exception
types, the fork-without-merge warning, forks of forks, names with dots, Icechunk's shapes
of diffs and expiry results, and ``store_dask`` on a fork's store."""

from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

import frazil
from frazil.distributed import merge_sessions


@pytest.fixture
def repo() -> frazil.Repository:
    return frazil.Repository.create(frazil.in_memory_storage())


def group(session: frazil.Session, path: str) -> None:
    zarr.create_group(session.store, path=path)


def test_read_only_errors_are_value_errors(repo: frazil.Repository) -> None:
    ro = repo.readonly_session("main")
    with pytest.raises(ValueError, match="can be pickled directly") as e:
        ro.fork()
    assert isinstance(e.value, frazil.ReadOnlyError)
    with pytest.raises(ValueError, match="read-only"):
        zarr.create_group(ro.store)


def test_committing_a_forked_session_without_merging_warns(repo: frazil.Repository) -> None:
    session = repo.writable_session("main")
    fork = session.fork()
    group(fork, "a")
    with pytest.warns(UserWarning, match="without merging"):
        with pytest.raises(frazil.InvalidInputError, match="cannot commit"):
            session.commit("nothing here")
    session.merge(fork)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # merged: no warning any more
        session.commit("the fork's group")
    assert "a" in dict(zarr.open_group(repo.readonly_session("main").store, mode="r").groups())


def test_forks_that_wrote_nothing_do_not_warn(repo: frazil.Repository) -> None:
    """Icechunk warns after any fork; frazil only when a fork wrote something that is not
    merged (Icechunk's own zarr state machine forks a clean session to pickle it, then
    commits: no writes were lost, so nothing to warn about)."""
    session = repo.writable_session("main")
    session.fork()
    kept = session.fork()
    group(session, "mine")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        session.commit("the session's own write")
    assert not kept.has_uncommitted_changes


def test_a_copy_elsewhere_that_wrote_makes_the_commit_warn(repo: frazil.Repository) -> None:
    """The fork object here is clean, but a copy of it (sent to a worker: here unpickled in
    this process) journaled a write: the commit warns, naming the fix."""
    import pickle

    session = repo.writable_session("main")
    fork = session.fork()
    copy = pickle.loads(pickle.dumps(fork))
    group(copy, "remote")
    assert not fork.has_uncommitted_changes
    group(session, "mine")
    with pytest.warns(UserWarning, match="without merging"):
        session.commit("forgot the fork")


def test_a_fork_cannot_commit_and_forks_again_while_clean(repo: frazil.Repository) -> None:
    session = repo.writable_session("main")
    fork1 = session.fork()
    fork2 = fork1.fork()  # clean: a fork at the same base
    assert isinstance(fork2, frazil.ForkSession) and fork2.snapshot_id == fork1.snapshot_id
    group(fork1, "one")
    group(fork2, "two")
    with pytest.raises(TypeError, match="Cannot commit a fork") as e:
        fork1.commit("no")
    assert isinstance(e.value, frazil.InvalidInputError)
    with pytest.raises(ValueError, match="cannot be forked"):
        fork1.fork()  # it has changes now
    with pytest.raises(TypeError, match="Received 'Session'"):
        merge_sessions(session, fork1, fork2)  # type: ignore[arg-type]
    session.merge(fork1, fork2)
    session.commit("both")
    groups = dict(zarr.open_group(repo.readonly_session("main").store, mode="r").groups())
    assert set(groups) == {"one", "two"}


def test_discard_changes_of_a_read_only_session_does_nothing(repo: frazil.Repository) -> None:
    ro = repo.readonly_session("main")
    ro.discard_changes()
    assert ro.read_only and not ro.has_uncommitted_changes


@pytest.mark.parametrize("name", [".Ds", "..", ".", "a..b", "-_."])
def test_names_with_dots(repo: frazil.Repository, name: str) -> None:
    sid = repo.lookup_branch("main")
    repo.create_branch(name, sid)
    repo.create_tag(name, sid)
    assert name in repo.list_branches() and name in repo.list_tags()
    session = repo.writable_session(name)
    group(session, "g")
    new = session.commit("on a dotted branch")
    assert repo.lookup_branch(name) == new and repo.lookup_branch("main") == sid
    repo.delete_branch(name)
    assert name not in repo.list_branches()


def test_updated_chunks_are_sorted_lists_of_lists(repo: frazil.Repository) -> None:
    session = repo.writable_session("main")
    arr = zarr.create_array(session.store, name="a", shape=(4, 4), chunks=(2, 2), dtype="i1")
    arr[2:, :] = 1
    want = [[1, 0], [1, 1]]
    assert session.status().updated_chunks == {"/a": want}
    parent = session.snapshot_id
    sid = session.commit("two chunks")
    assert repo.diff(from_snapshot_id=parent, to_snapshot_id=sid).updated_chunks == {"/a": want}


def test_reset_branch_from_a_moved_snapshot_says_branch_update_conflict(
    repo: frazil.Repository,
) -> None:
    first = repo.lookup_branch("main")
    session = repo.writable_session("main")
    group(session, "g")
    second = session.commit("g")
    with pytest.raises(frazil.ConflictError, match="branch update conflict"):
        repo.reset_branch("main", first, from_snapshot_id=first)
    assert repo.lookup_branch("main") == second


def test_expiry_lists_the_snapshots_of_the_refs_it_deleted(repo: frazil.Repository) -> None:
    session = repo.writable_session("main")
    group(session, "a")
    a = session.commit("a")
    repo.create_branch("branch", a)
    session = repo.writable_session("branch")
    group(session, "b")
    b = session.commit("b")
    session = repo.writable_session("main")
    group(session, "c")
    session.commit("c")
    cutoff = repo.lookup_snapshot(b).written_at + dt.timedelta(microseconds=1)
    assert repo.expire_snapshots(cutoff, delete_expired_branches=True) == {a, b}
    assert "branch" not in repo.list_branches()
    # nothing left to expire, and nothing deleted: nothing listed
    assert repo.expire_snapshots(cutoff, delete_expired_branches=True) == set()


def test_store_dask_on_a_fork_returns_the_merged_fork(tmp_path: Path) -> None:
    dask = pytest.importorskip("dask")
    import frazil.dask  # noqa: F401  (imports dask.array, as Icechunk's module does)

    source = dask.array.arange(40, chunks=10, dtype="i4")
    repo = frazil.Repository.create(frazil.local_filesystem_storage(tmp_path / "r"))
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="x", shape=(40,), chunks=(10,), dtype="i4")
    session.commit("array")
    session = repo.writable_session("main")
    fork = session.fork()
    target = zarr.open_array(fork.store, path="x")
    with dask.config.set(scheduler="threads"):
        merged = frazil.dask.store_dask(sources=[source], targets=[target])
    assert isinstance(merged, frazil.ForkSession) and merged is not fork
    assert not fork.has_uncommitted_changes  # left as it was, as in Icechunk
    session.merge(merged)
    session.commit("written")
    got = zarr.open_array(repo.readonly_session("main").store, path="x")[:]
    np.testing.assert_array_equal(got, np.arange(40))
    # on a session's store: merged into it, nothing returned
    session = repo.writable_session("main")
    target = zarr.open_array(session.store, path="x")
    with dask.config.set(scheduler="threads"):
        assert frazil.dask.store_dask(sources=[source + 1], targets=[target]) is None
    assert session.has_uncommitted_changes


def test_virtual_ref_messages_use_icechunks_words(repo: frazil.Repository) -> None:
    session = repo.writable_session("main")
    store = session.store
    zarr.create_array(store, name="v", shape=(4,), chunks=(1,), dtype="i4", compressors=None)
    with pytest.raises(frazil.FrazilError, match="invalid chunk location.*edit the repository"):
        store.set_virtual_ref(
            "v/c/0", "s3://nowhere/x", offset=0, length=4, validate_container=True
        )
    for bad in ("", "some/relative/url", "/no/protocol"):
        with pytest.raises(frazil.FrazilError, match="error parsing"):
            store.set_virtual_ref("v/c/0", bad, offset=0, length=4)


def test_to_icechunk_into_forks_then_merge(tmp_path: Path) -> None:
    """Icechunk's region writes from forks: each fork gets its region's writes, and the
    session merges the forks (their regions differ, so nothing conflicts)."""
    dask = pytest.importorskip("dask")
    xr = pytest.importorskip("xarray")
    from frazil.xarray import to_icechunk

    ds = xr.Dataset(
        {"t": (("x", "y"), np.arange(24.0).reshape(4, 6))}, coords={"x": np.arange(4)}
    ).chunk(x=1)
    repo = frazil.Repository.create(frazil.local_filesystem_storage(tmp_path / "r"))
    session = repo.writable_session("main")
    ds.to_zarr(session.store, mode="w", compute=False, consolidated=False, zarr_format=3)
    session.commit("template")
    session = repo.writable_session("main")
    forks = [session.fork() for _ in range(ds.sizes["x"])]
    with dask.config.set(scheduler="threads"):
        for i, fork in enumerate(forks):
            to_icechunk(ds.isel(x=[i]).drop_vars("x"), fork, region={"x": slice(i, i + 1)})
    assert all(f.has_uncommitted_changes for f in forks)
    session.merge(*forks)
    session.commit("four regions")
    got = xr.open_zarr(repo.readonly_session("main").store, consolidated=False)
    xr.testing.assert_identical(got.compute(), ds.compute())
