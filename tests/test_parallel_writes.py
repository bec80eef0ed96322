"""The Icechunk 1.0 migration guide's "Parallel Writes" example, with frazil: write a
dataset's structure and commit, fork the session, write one time step per worker process,
merge the returned forks and commit; the result equals the source dataset."""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import frazil

xr = pytest.importorskip("xarray")
pytest.importorskip("dask.array")

pytestmark = [
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]


def make_dataset() -> Any:
    """6 daily time steps of two 2-D variables; ``precip``'s chunks are large enough to be
    stored as separate objects, ``temperature``'s are inlined in the manifest."""
    rng = np.random.default_rng(42)
    ntime, ny, nx = 6, 10, 12
    return xr.Dataset(
        data_vars={
            "temperature": (
                ("time", "y", "x"),
                rng.normal(280, 5, (ntime, ny, nx)).astype("f4"),
                {"units": "K"},
            ),
            "precip": (("time", "y", "x"), rng.random((ntime, ny, nx))),
        },
        coords={
            "time": pd.date_range("2026-01-01", periods=ntime, freq="D", unit="ns"),
            "y": np.linspace(-45.0, 45.0, ny),
            "x": np.arange(nx, dtype="i4") * 30,
        },
        attrs={"title": "parallel writes"},
    )


# module level, as in the guide: workers started by "spawn" or "forkserver" rebuild it
ds = make_dataset()


def write_timestamp(*, itime: int, session: frazil.ForkSession) -> frazil.ForkSession:
    # region="auto": xarray finds where time step ``itime`` goes in the existing arrays
    ds.isel(time=slice(itime, itime + 1)).to_zarr(session.store, region="auto", consolidated=False)
    return session


def create_template(tmp_path: Path) -> frazil.Repository:
    """The dataset's structure (metadata and coordinates, no data), committed."""
    repo = frazil.Repository.create(frazil.local_filesystem_storage(tmp_path / "repo"))
    session = repo.writable_session("main")
    # dask-backed variables are not written with compute=False: only their metadata is
    ds.chunk({"time": 1}).to_zarr(session.store, compute=False, consolidated=False)
    session.commit("initialize dataset")
    empty = xr.open_zarr(repo.readonly_session("main").store, consolidated=False)
    assert empty.sizes == ds.sizes and bool(empty["precip"].isnull().all())
    return repo


def check_result(repo: frazil.Repository) -> None:
    result = xr.open_zarr(repo.readonly_session("main").store, consolidated=False)
    assert dict(result["temperature"].encoding["preferred_chunks"]) == {"time": 1, "y": 10, "x": 12}
    xr.testing.assert_identical(result.load(), ds)
    assert [s.message for s in repo.ancestry(branch="main")][:2] == [
        "finished writes",
        "initialize dataset",
    ]


def test_parallel_writes_example(tmp_path: Path) -> None:
    repo = create_template(tmp_path)

    # -- the guide's example, verbatim apart from the package name --------------------------
    session = repo.writable_session("main")
    with ProcessPoolExecutor() as executor:
        # obtain a writable session that can be pickled.
        fork = session.fork()
        # submit the writes, distribute `fork`
        futures = [
            executor.submit(write_timestamp, itime=i, session=fork) for i in range(ds.sizes["time"])
        ]
        # grab the Session objects from each individual write task
        remote_sessions = [f.result() for f in futures]
    # manually merge the remote sessions in to the local session
    session.merge(*remote_sessions)
    session.commit("finished writes")
    # ----------------------------------------------------------------------------------------

    assert all(isinstance(s, frazil.ForkSession) for s in remote_sessions)
    check_result(repo)


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_parallel_writes_every_start_method(tmp_path: Path, method: str) -> None:
    if method not in mp.get_all_start_methods():
        pytest.skip(f"no {method!r} start method here")
    repo = create_template(tmp_path)
    session = repo.writable_session("main")
    with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context(method)) as executor:
        fork = session.fork()
        futures = [
            executor.submit(write_timestamp, itime=i, session=fork) for i in range(ds.sizes["time"])
        ]
        remote_sessions = [f.result(timeout=120) for f in futures]
    session.merge(*remote_sessions)
    session.commit("finished writes")
    check_result(repo)


def test_parallel_writes_of_one_time_step_twice_conflict(tmp_path: Path) -> None:
    """Two workers writing the same time step: the merge names the arrays and chunks."""
    repo = create_template(tmp_path)
    session = repo.writable_session("main")
    fork = session.fork()
    with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("fork")) as executor:
        futures = [executor.submit(write_timestamp, itime=i, session=fork) for i in (2, 3, 2)]
        remote_sessions = [f.result(timeout=120) for f in futures]
    with pytest.raises(frazil.ConflictError) as info:
        session.merge(*remote_sessions)
    conflicts = {(c.path, c.conflicted_chunks) for c in info.value.conflicts}
    assert conflicts == {("/temperature", ((2, 0, 0),)), ("/precip", ((2, 0, 0),))}
    assert "[2, 0, 0]" in str(info.value)
    assert not session.has_uncommitted_changes


def write_and_forget(*, itime: int, session: frazil.ForkSession) -> None:
    """A worker that writes through its copy of the fork and returns nothing."""
    write_timestamp(itime=itime, session=session)


def write_then_fail(*, itime: int, session: frazil.ForkSession) -> None:
    write_timestamp(itime=itime, session=session)
    raise RuntimeError("the task failed after writing")


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_forks_that_never_come_back_reach_the_commit(tmp_path: Path, method: str) -> None:
    """Workers that do not return their fork: merging the fork object itself brings what
    its copies wrote (from their journals). Before: merge and commit succeeded with every
    chunk missing."""
    repo = create_template(tmp_path)
    session = repo.writable_session("main")
    fork = session.fork()
    with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context(method)) as executor:
        for f in [
            executor.submit(write_and_forget, itime=i, session=fork)
            for i in range(ds.sizes["time"])
        ]:
            f.result(timeout=120)
    session.merge(fork)
    session.commit("finished writes")
    check_result(repo)
    assert frazil.runtime.run(repo.storage.list("forks/")) == []  # journals removed


def test_returned_forks_merge_only_what_they_carry(tmp_path: Path) -> None:
    """Merging the forks handed back merges exactly those: a failed task's copy wrote
    (and journaled) its time step, but it was not handed back, so it is not merged; the
    fork object itself would bring it."""
    repo = create_template(tmp_path)
    session = repo.writable_session("main")
    fork = session.fork()
    with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("fork")) as executor:
        good = [executor.submit(write_timestamp, itime=i, session=fork) for i in range(5)]
        bad = executor.submit(write_then_fail, itime=5, session=fork)
        returned = [f.result(timeout=120) for f in good]
        with pytest.raises(RuntimeError, match="failed after writing"):
            bad.result(timeout=120)
    session.merge(*returned)
    result = xr.open_zarr(session.store, consolidated=False)
    assert bool(result["precip"].isel(time=5).isnull().all())  # the failed task's write
    xr.testing.assert_identical(result.isel(time=slice(0, 5)).load(), ds.isel(time=slice(0, 5)))
    # the fork itself brings the rest (its returned copies are not merged twice)
    session.merge(fork)
    session.commit("finished writes")
    check_result(repo)


def test_fork_without_journal_refuses_to_lose_writes(tmp_path: Path) -> None:
    """``fork(journal=False)``: copies keep no journal (a little faster when every fork is
    handed back). Returned forks merge as usual; merging the fork object after copies
    wrote without coming back refuses, naming the fix, instead of losing their writes."""
    repo = create_template(tmp_path)
    session = repo.writable_session("main")
    fork = session.fork(journal=False)
    with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("fork")) as executor:
        returned = [
            f.result(timeout=120)
            for f in [executor.submit(write_timestamp, itime=i, session=fork) for i in range(6)]
        ]
    session.merge(*returned)
    assert not frazil.runtime.run(repo.storage.list(f"forks/{fork._fork_id}/"))[0].endswith(
        "0000000000"
    )  # markers only, no journal objects
    session.commit("finished writes")
    check_result(repo)

    session = repo.writable_session("main")
    fork = session.fork(journal=False)
    with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("fork")) as executor:
        for f in [executor.submit(write_and_forget, itime=i, session=fork) for i in (0, 1)]:
            f.result(timeout=120)
    with pytest.raises(
        frazil.InvalidInputError,
        match=r"2 copies of this fork wrote.*"
        r"not handed back.*journal=True.*to_frazil",
    ):
        session.merge(fork)
    assert not session.has_uncommitted_changes
    with pytest.raises(frazil.InvalidInputError, match="journal must be True or False"):
        session.fork(journal="no")  # type: ignore[arg-type]
