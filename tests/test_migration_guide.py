"""Icechunk 1.0's migration guide, run against frazil: its parallel-writes code in both
versions (the new fork/merge one, and the old allow_pickling/merge_sessions one, which
frazil still runs with a deprecation warning), and its virtual-chunk credentials change."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import frazil
import frazil as icechunk
from frazil import (
    Repository,
    RepositoryConfig,
    VirtualChunkContainer,
    containers_credentials,
    s3_credentials,
    s3_store,
)

xr = pytest.importorskip("xarray")
pytest.importorskip("dask.array")

pytestmark = [
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]


def make_dataset() -> Any:
    rng = np.random.default_rng(7)
    ntime, ny, nx = 4, 6, 8
    return xr.Dataset(
        data_vars={
            "temperature": (("time", "y", "x"), rng.normal(280, 5, (ntime, ny, nx)).astype("f4")),
            "precip": (("time", "y", "x"), rng.random((ntime, ny, nx))),
        },
        coords={
            "time": pd.date_range("2026-01-01", periods=ntime, freq="D", unit="ns"),
            "y": np.linspace(-45.0, 45.0, ny),
            "x": np.arange(nx, dtype="i4") * 30,
        },
    )


# module level, as in the guide (workers started by "fork" see it as it is)
ds = make_dataset()


def write_timestamp(*, itime: int, session: Any) -> Any:
    ds.isel(time=slice(itime, itime + 1)).to_zarr(session.store, region="auto", consolidated=False)
    return session


def write_and_forget(*, itime: int, session: Any) -> None:
    """A task whose session copy never comes back (as under ``ds.to_zarr`` with dask)."""
    write_timestamp(itime=itime, session=session)


def make_repo(tmp_path: Path) -> frazil.Repository:
    """The dataset's structure committed (metadata and coordinates, no data)."""
    repo = frazil.Repository.create(frazil.local_filesystem_storage(tmp_path / "repo"))
    session = repo.writable_session("main")
    ds.chunk({"time": 1}).to_zarr(session.store, compute=False, consolidated=False)
    session.commit("initialize dataset")
    return repo


def written(repo: frazil.Repository) -> Any:
    return xr.open_zarr(repo.readonly_session("main").store, consolidated=False).load()


def two_workers() -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("fork"))


def test_new_version_fork_and_merge(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    # -- the guide's code, word for word ------------------------------------------------------
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
    # -----------------------------------------------------------------------------------------
    xr.testing.assert_identical(written(repo), ds)


def test_old_version_allow_pickling_and_merge_sessions(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    with pytest.warns(DeprecationWarning, match=r"fork\(\)") as caught:
        # -- the guide's code, word for word but the import and `sessions`, which the
        # -- guide never defines (as printed it raises NameError): the remote sessions
        from frazil.distributed import merge_sessions

        session = repo.writable_session("main")
        with ProcessPoolExecutor() as executor:
            # obtain a writable session that can be pickled.
            with session.allow_pickling():
                # submit the writes, distribute `session`
                futures = [
                    executor.submit(write_timestamp, itime=i, session=session)
                    for i in range(ds.sizes["time"])
                ]
                # grab the Session objects from each individual write task
                remote_sessions = [f.result() for f in futures]
        # manually merge the remote sessions in to the local session
        session = merge_sessions(session, *remote_sessions)
        session.commit("finished writes")
        # -------------------------------------------------------------------------------------
    assert any(__file__ == w.filename for w in caught)  # points at the caller's line
    xr.testing.assert_identical(written(repo), ds)
    assert [s.message for s in repo.ancestry(branch="main")][:2] == [
        "finished writes",
        "initialize dataset",
    ]
    assert frazil.runtime.run(repo.storage.list("forks/")) == [], "the journals are removed"


def test_allow_pickling_copies_that_never_come_back_are_merged(tmp_path: Path) -> None:
    """Copies dropped by their tasks: their journals bring what they wrote."""
    repo = make_repo(tmp_path)
    session = repo.writable_session("main")
    with pytest.warns(DeprecationWarning), two_workers() as pool:
        with session.allow_pickling():
            futures = [
                pool.submit(write_and_forget, itime=i, session=session)
                for i in range(ds.sizes["time"])
            ]
            assert [f.result() for f in futures] == [None] * ds.sizes["time"]
    merged = icechunk.distributed.merge_sessions(session)
    assert merged is session
    session.commit("finished writes")
    xr.testing.assert_identical(written(repo), ds)


def test_allow_pickling_half_returned_half_dropped(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    session = repo.writable_session("main")
    with pytest.warns(DeprecationWarning), two_workers() as pool:
        with session.allow_pickling():
            kept = [pool.submit(write_timestamp, itime=i, session=session) for i in (0, 1)]
            dropped = [pool.submit(write_and_forget, itime=i, session=session) for i in (2, 3)]
            returned = [f.result() for f in kept]
            [f.result() for f in dropped]
    assert all(isinstance(s, frazil.ForkSession) for s in returned)
    frazil.distributed.merge_sessions(session, returned)  # lists are flattened
    session.commit("finished writes")
    xr.testing.assert_identical(written(repo), ds)


def test_allow_pickling_with_threads_writes_into_the_session(tmp_path: Path) -> None:
    """No pickling at all (threads): the tasks write into the session itself, and merging
    it with itself is a no-op."""
    repo = make_repo(tmp_path)
    session = repo.writable_session("main")
    with pytest.warns(DeprecationWarning), ThreadPoolExecutor(2) as pool:
        with session.allow_pickling():
            futures = [
                pool.submit(write_timestamp, itime=i, session=session)
                for i in range(ds.sizes["time"])
            ]
            remote_sessions = [f.result() for f in futures]
    assert all(s is session for s in remote_sessions)
    assert frazil.distributed.merge_sessions(session, *remote_sessions) is session
    session.commit("finished writes")
    xr.testing.assert_identical(written(repo), ds)


def test_pickling_outside_allow_pickling_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    session = repo.writable_session("main")
    with pytest.raises(frazil.InvalidInputError, match="fork"):
        pickle.dumps(session)
    with pytest.warns(DeprecationWarning), session.allow_pickling():
        copy = pickle.loads(pickle.dumps(session))
        store = pickle.loads(pickle.dumps(session.store))
    assert isinstance(copy, frazil.ForkSession) and copy.snapshot_id == session.snapshot_id
    assert isinstance(store, frazil.IcechunkStore)
    with pytest.raises(frazil.InvalidInputError, match="fork"):  # the block is over
        pickle.dumps(session)
    with pytest.raises(frazil.InvalidInputError, match="ForkSession"):
        copy.commit("no")


def test_merge_sessions_refuses_what_it_cannot_merge(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    session = repo.writable_session("main")
    with pytest.raises(frazil.InvalidInputError, match="allow_pickling"):
        frazil.distributed.merge_sessions(session)  # never pickled: nothing to merge
    with pytest.raises(frazil.InvalidInputError, match="ForkSession"):
        frazil.distributed.merge_sessions(session.fork(), session)
    with pytest.raises(frazil.InvalidInputError, match="at least one"):
        frazil.distributed.merge_sessions()
    forks = [session.fork() for _ in range(3)]
    for i, f in enumerate(forks):
        write_timestamp(itime=i, session=f)
    merged = frazil.distributed.merge_sessions([forks[0], [forks[1]]], forks[2])
    assert merged is forks[0]
    session.merge(merged)
    session.commit("three of four")
    assert bool(written(repo)["precip"].isel(time=3).isnull().all())
    xr.testing.assert_identical(written(repo).isel(time=slice(0, 3)), ds.isel(time=slice(0, 3)))


def test_allow_pickling_warns_even_when_not_used(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    session = repo.writable_session("main")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with session.allow_pickling():
            pass
    (w,) = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert "session.fork()" in str(w.message) and w.filename == __file__
    readonly = repo.readonly_session("main")
    with pytest.raises(frazil.ReadOnlyError), pytest.warns(DeprecationWarning):
        with readonly.allow_pickling():
            pass


# -- virtual chunks ------------------------------------------------------------------------
def test_virtual_chunk_container_example(tmp_path: Path) -> None:
    # -- the guide's code, word for word but for storage=... ----------------------------------
    # The store defines the type of Storage that will be used for the virtual chunks
    # other options are gcs_store, local_filesystem_store and http_store
    store_config = s3_store(region="us-east-1")
    # we create a container by giving it the url prefix and the store config
    container = VirtualChunkContainer("s3://testbucket", store_config)
    # we add it to the repo config
    config = RepositoryConfig.default()
    config.set_virtual_chunk_container(container)
    # we set credentials for the virtual chunk container
    # repo readers will also need this to be able to resolve the virtual chunks
    credentials = containers_credentials(
        {
            # we identify for which container we are passing credentials
            # by using its url_prefx
            # If the value in the map is None, Icechunk will use the "natural" credential
            # type, usually fetching them from the process environment
            "s3://testbucket": s3_credentials(access_key_id="abcd", secret_access_key="0123")
        }
    )
    # When we create the repo, its configuration will be saved to disk
    # including its virtual chunk containers
    repo = Repository.create(
        storage=frazil.local_filesystem_storage(tmp_path / "repo"),
        config=config,
        authorize_virtual_chunk_access=credentials,
    )
    # -----------------------------------------------------------------------------------------
    reopened = Repository.open(frazil.local_filesystem_storage(tmp_path / "repo"))
    assert list(reopened.config.virtual_chunk_containers or {}) == ["s3://testbucket"]
    assert repo.virtual_resolver is not None


@pytest.mark.parametrize("how", ["create", "open", "open_or_create"])
def test_virtual_chunk_credentials_names_its_replacement(tmp_path: Path, how: str) -> None:
    storage = frazil.local_filesystem_storage(tmp_path / "repo")
    if how == "open":
        Repository.create(storage)
    credentials = containers_credentials({"s3://testbucket": None})
    with pytest.raises(frazil.InvalidInputError, match="authorize_virtual_chunk_access="):
        getattr(Repository, how)(storage, virtual_chunk_credentials=credentials)
    assert Repository.exists(storage) == (how == "open")  # nothing was created


def test_allow_pickling_into_arrays_not_yet_committed(tmp_path: Path) -> None:
    """The copies start with the session's staged nodes: arrays created in the session
    and not committed are written on workers, by copies returned and copies dropped."""
    repo = frazil.Repository.create(frazil.local_filesystem_storage(tmp_path / "repo"))
    session = repo.writable_session("main")
    ds.chunk({"time": 1}).to_zarr(session.store, compute=False, consolidated=False)
    with pytest.warns(DeprecationWarning), two_workers() as pool:
        with session.allow_pickling():
            kept = [pool.submit(write_timestamp, itime=i, session=session) for i in (0, 1)]
            dropped = [pool.submit(write_and_forget, itime=i, session=session) for i in (2, 3)]
            returned = [f.result() for f in kept]
            [f.result() for f in dropped]
    frazil.distributed.merge_sessions(session, *returned)
    session.commit("everything at once")
    xr.testing.assert_identical(written(repo), ds)
