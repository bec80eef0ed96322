"""frazil.dask.store_dask and frazil.xarray.to_frazil on a real multi-process dask cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import frazil
from frazil.dask import store_dask
from frazil.errors import ConflictError, InvalidInputError, ReadOnlyError
from frazil.xarray import to_frazil

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("dask.distributed")
xr = pytest.importorskip("xarray")
pd = pytest.importorskip("pandas")

pytestmark = pytest.mark.filterwarnings(
    # zarr warns that fixed-width strings have no finished Zarr v3 data type specification
    "ignore::zarr.core.dtype.common.UnstableSpecificationWarning",
)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """Two worker processes: every fork crosses a process boundary, both ways."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        with distributed.Client(cluster) as c:
            yield c


@pytest.fixture
def repo(tmp_path: Path) -> frazil.Repository:
    return frazil.Repository.create(frazil.local_filesystem_storage(tmp_path / "repo"))


def _read(repo: frazil.Repository, path: str) -> np.ndarray:
    return np.asarray(
        zarr.open_array(repo.readonly_session("main").store, path=path, mode="r")[...]
    )


def _write_tasks(client: Any, fn: Any) -> list[dict[str, Any]]:
    """The frazil write tasks that ran while ``fn()`` ran, one per block (dask fuses each
    write with the task making its block, and may leave an alias task under the write's
    own key beside it)."""
    with distributed.get_task_stream(client) as ts:
        fn()
    per_block: dict[Any, dict[str, Any]] = {}
    for t in ts.data:
        key = t["key"]
        name, index = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if "frazil-write-" in str(name):
            per_block.setdefault((str(name).split("frazil-write-")[1], index), t)
    return list(per_block.values())


# -- store_dask ------------------------------------------------------------------------------
def test_store_dask_into_uncommitted_array(client: Any, repo: frazil.Repository) -> None:
    session = repo.writable_session("main")
    z = zarr.create_array(
        session.store, name="grid/t", shape=(40, 30), chunks=(10, 10), dtype="f8", fill_value=np.nan
    )
    source = da.random.default_rng(1).random((40, 30), chunks=(20, 10))
    expected = source.compute()

    tasks = _write_tasks(client, lambda: store_dask([source], [z], split_every=2))

    assert len(tasks) == 6  # one per dask block, run on the workers
    assert {t["worker"] for t in tasks} <= set(client.scheduler_info()["workers"])
    assert session.has_uncommitted_changes
    np.testing.assert_array_equal(z[...], expected)  # the session sees the merged writes
    session.commit("random field")
    np.testing.assert_array_equal(_read(repo, "grid/t"), expected)


def test_store_dask_single_block_and_several_targets(client: Any, repo: frazil.Repository) -> None:
    session = repo.writable_session("main")
    a = zarr.create_array(session.store, name="a", shape=(5,), chunks=(5,), dtype="i4")
    b = zarr.create_array(session.store, name="b", shape=(12, 4), chunks=(3, 4), dtype="u2")
    src_a = da.arange(5, chunks=5, dtype="i4")
    src_b = da.ones((12, 4), chunks=(6, 4), dtype="u2") * 7  # one block, two zarr chunks
    store_dask([src_a, src_b], [a, b])
    session.commit("two arrays")
    np.testing.assert_array_equal(_read(repo, "a"), np.arange(5))
    np.testing.assert_array_equal(_read(repo, "b"), np.full((12, 4), 7))


def test_store_dask_regions(client: Any, repo: frazil.Repository) -> None:
    session = repo.writable_session("main")
    z = zarr.create_array(session.store, name="z", shape=(30, 8), chunks=(5, 4), dtype="f4")
    z[...] = -1
    session.commit("background")

    session = repo.writable_session("main")
    z = zarr.open_array(session.store, path="z", mode="r+")
    store_dask(da.zeros((10, 8), chunks=(5, 4), dtype="f4") + 3, z, regions=(slice(10, 20),))
    # a region whose start is not on a chunk boundary: only one block touches chunk 5..10
    store_dask(
        [da.full((3, 4), 9, chunks=(3, 4), dtype="f4"), da.ones((2, 1), chunks=(2, 1)) * 8],
        [z, z],
        regions=((slice(2, 5), slice(4, 8)), (slice(25, 27), slice(0, 1))),
    )
    session.commit("regions")

    expected = np.full((30, 8), -1, dtype="f4")
    expected[10:20] = 3
    expected[2:5, 4:8] = 9
    expected[25:27, 0] = 8
    np.testing.assert_array_equal(_read(repo, "z"), expected)


def test_store_dask_refuses_bad_input(client: Any, repo: frazil.Repository) -> None:
    session = repo.writable_session("main")
    z = zarr.create_array(session.store, name="z", shape=(20,), chunks=(5,), dtype="f8")
    with pytest.raises(InvalidInputError, match="not a multiple of the zarr chunk size 5"):
        store_dask(da.zeros(20, chunks=7), z)  # two blocks would share chunk 5..10
    with pytest.raises(InvalidInputError, match="shape"):
        store_dask(da.zeros(10, chunks=5), z)
    with pytest.raises(InvalidInputError, match="2 sources but 1 targets"):
        store_dask([da.zeros(20, chunks=5)] * 2, [z])
    with pytest.raises(InvalidInputError, match="dask array"):
        store_dask(np.zeros(20), z)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="not on a frazil"):
        store_dask(da.zeros(3, chunks=3), zarr.create_array({}, shape=(3,), dtype="f8"))
    assert session.status().updated_chunks == {}  # nothing was written
    session.commit("empty array")
    with pytest.raises(ReadOnlyError):
        store_dask(da.zeros(20, chunks=5), zarr.open_array(session.store, path="z"))


def test_store_dask_conflicts_with_staged_chunks(client: Any, repo: frazil.Repository) -> None:
    session = repo.writable_session("main")
    z = zarr.create_array(session.store, name="z", shape=(20,), chunks=(5,), dtype="i8")
    z[0:5] = 1  # staged in the session itself
    with pytest.raises(ConflictError, match="/z"):
        store_dask(da.full(20, 2, chunks=5, dtype="i8"), z)
    np.testing.assert_array_equal(z[...], [1] * 5 + [0] * 15)  # nothing was merged


def test_merging_a_fork_that_wrote_the_same_chunk_fails(
    client: Any, repo: frazil.Repository
) -> None:
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="z", shape=(20,), chunks=(5,), dtype="i8")
    session.commit("empty")

    session = repo.writable_session("main")
    fork = session.fork()  # taken while the session is clean

    def write_first_chunk(fork: frazil.ForkSession) -> frazil.ForkSession:
        zarr.open_array(fork.store, path="z", mode="r+")[0:5] = 5
        return fork

    returned = client.submit(write_first_chunk, fork).result()  # written on a worker
    z = zarr.open_array(session.store, path="z", mode="r+")
    store_dask(da.full(20, 2, chunks=5, dtype="i8"), z)
    with pytest.raises(ConflictError, match=r"ChunkDoubleUpdate at /z \(chunks \[0\]\)"):
        session.merge(returned)
    session.commit("dask wins")
    np.testing.assert_array_equal(_read(repo, "z"), [2] * 20)


def test_store_dask_threaded_scheduler_and_edge_cases(client: Any) -> None:
    """In-process scheduling works even on in-memory storage; 0-d and empty arrays, the
    target's write_empty_chunks setting and shard-aligned blocks."""
    import dask

    repo = frazil.Repository.create(frazil.in_memory_storage())
    session = repo.writable_session("main")
    scalar = zarr.create_array(session.store, name="scalar", shape=(), dtype="f8")
    empty = zarr.create_array(session.store, name="empty", shape=(0, 3), chunks=(2, 3), dtype="f8")
    zeros = zarr.create_array(
        session.store,
        name="zeros",
        shape=(20, 20),
        chunks=(5, 5),
        dtype="f8",
        config={"write_empty_chunks": True},
    )
    sharded = zarr.create_array(
        session.store, name="sharded", shape=(40,), chunks=(5,), shards=(20,), dtype="i4"
    )
    with pytest.raises(InvalidInputError, match="zarr shard size 20"):
        store_dask(da.arange(40, chunks=10, dtype="i4"), sharded)
    with dask.config.set(scheduler="threads"):
        store_dask(
            [
                da.from_array(np.array(3.5)),
                da.zeros((0, 3), chunks=(2, 3)),
                da.zeros((20, 20), chunks=(10, 10)),
                da.arange(40, chunks=20, dtype="i4"),
            ],
            [scalar, empty, zeros, sharded],
        )
    assert len(session.status().updated_chunks["/zeros"]) == 16  # fill-value chunks kept
    session.commit("edge cases")
    assert _read(repo, "scalar") == 3.5
    assert _read(repo, "empty").shape == (0, 3)
    np.testing.assert_array_equal(_read(repo, "zeros"), np.zeros((20, 20)))
    np.testing.assert_array_equal(_read(repo, "sharded"), np.arange(40))


def test_in_memory_storage_cannot_reach_worker_processes(client: Any) -> None:
    repo = frazil.Repository.create(frazil.in_memory_storage())
    session = repo.writable_session("main")
    z = zarr.create_array(session.store, name="z", shape=(4,), chunks=(2,), dtype="f8")
    with pytest.raises(InvalidInputError, match="in-memory storage cannot be shared with worker"):
        store_dask(da.zeros(4, chunks=2), z)
    assert session.status().new_arrays == {"/z"} and not session.status().updated_chunks


# -- to_frazil -------------------------------------------------------------------------------
def make_dataset(ntime: int = 12, start: str = "2024-01-01") -> Any:
    rng = np.random.default_rng(0)
    time = pd.date_range(start, periods=ntime, freq="D", unit="ns")
    temperature = rng.normal(280, 5, (ntime, 6, 8)).astype("f4")
    temperature[0, 0, 0] = np.nan
    ds = xr.Dataset(
        data_vars={
            "temperature": (("time", "lat", "lon"), temperature, {"units": "K"}),
            "count": (("time", "lon"), rng.integers(0, 1000, (ntime, 8)).astype("i8")),
            # dask-backed and CF-encoded on write (datetime -> int64 with units)
            "observed_at": (("time",), (time + pd.Timedelta(hours=6)).values),
            "eager": (("lat", "lon"), rng.random((6, 8))),  # stays in memory
        },
        coords={
            "time": time,
            "lat": np.linspace(-10.0, 10.0, 6),
            "lon": np.arange(8, dtype="i4") * 45,
        },
        attrs={"title": "frazil dask test"},
    )
    return ds.chunk({"time": 4, "lat": 3, "lon": 4}).assign(eager=ds["eager"])


def _open(repo: frazil.Repository, **kw: Any) -> Any:
    return xr.open_zarr(repo.readonly_session("main").store, consolidated=False, **kw)


def test_to_frazil_round_trip(client: Any, repo: frazil.Repository) -> None:
    ds = make_dataset()
    assert ds["temperature"].chunks is not None and ds["eager"].chunks is None
    session = repo.writable_session("main")
    tasks = _write_tasks(client, lambda: to_frazil(ds, session))
    assert len(tasks) == 3 * 2 * 2 + 3 * 2 + 3  # temperature, count, observed_at blocks
    session.commit("dataset")
    got = _open(repo)
    xr.testing.assert_identical(got.compute(), ds.compute())
    assert got["observed_at"].dtype == ds["observed_at"].dtype


def test_to_frazil_in_a_group_and_a_dataarray(client: Any, repo: frazil.Repository) -> None:
    ds = make_dataset(ntime=8)
    session = repo.writable_session("main")
    to_frazil(ds, session, group="nested/group")
    to_frazil(ds["temperature"].rename("t"), session, group="arrays")
    session.commit("group and dataarray")
    xr.testing.assert_identical(_open(repo, group="nested/group").compute(), ds.compute())
    got = _open(repo, group="arrays")["t"].compute()
    xr.testing.assert_identical(got, ds["temperature"].rename("t").compute())


def test_to_frazil_append_in_a_second_session(client: Any, repo: frazil.Repository) -> None:
    ds = make_dataset(ntime=16)
    # the appended data starts in the middle of zarr chunk 4..8, which its first block
    # completes (read-modify-write in a fork, against the committed first part)
    first = ds.isel(time=slice(0, 6))
    more = ds.isel(time=slice(6, 16)).chunk({"time": (2, 4, 4)})

    session = repo.writable_session("main")
    to_frazil(first, session)
    session.commit("first 6 days")

    session = repo.writable_session("main")
    to_frazil(more.drop_vars("eager"), session, append_dim="time", split_every=3)
    session.commit("10 more days")

    xr.testing.assert_identical(_open(repo).compute(), ds.compute())
    messages = [c.message for c in repo.ancestry(branch="main")]
    assert messages[:2] == ["10 more days", "first 6 days"]


def test_to_frazil_region(client: Any, repo: frazil.Repository) -> None:
    ds = make_dataset()
    session = repo.writable_session("main")
    to_frazil(xr.zeros_like(ds), session)
    session.commit("zeros")

    session = repo.writable_session("main")
    part = ds.isel(time=slice(4, 8)).drop_vars(["eager", "lat", "lon"])
    to_frazil(part.drop_vars("time"), session, region={"time": slice(4, 8)})
    session.commit("days 4..8")

    session = repo.writable_session("main")
    to_frazil(ds.isel(time=slice(8, 12)).drop_vars("eager"), session, region="auto")
    session.commit("days 8..12 (auto region)")

    got = _open(repo).compute()
    zeros = xr.zeros_like(ds).compute()
    xr.testing.assert_identical(got.isel(time=slice(0, 4)), zeros.isel(time=slice(0, 4)))
    xr.testing.assert_identical(
        got.isel(time=slice(4, 12)),
        ds.isel(time=slice(4, 12)).assign(eager=zeros["eager"]).compute(),
    )


def test_to_frazil_encoding_and_overwrite(client: Any, repo: frazil.Repository) -> None:
    ds = make_dataset()
    session = repo.writable_session("main")
    # zarr chunks smaller than the dask chunks: each block fills two zarr chunks
    to_frazil(ds, session, encoding={"temperature": {"chunks": (2, 3, 4)}})
    session.commit("dataset")
    assert zarr.open_array(repo.readonly_session("main").store, path="temperature").chunks == (
        2,
        3,
        4,
    )
    xr.testing.assert_identical(_open(repo).compute(), ds.compute())

    small = make_dataset(ntime=4, start="2030-01-01")
    session = repo.writable_session("main")
    to_frazil(small, session, mode="w")  # replaces every array, refilled on the workers
    session.commit("replaced")
    xr.testing.assert_identical(_open(repo).compute(), small.compute())


def test_to_frazil_refuses_read_only_sessions(client: Any, repo: frazil.Repository) -> None:
    session = repo.writable_session("main")
    to_frazil(make_dataset(ntime=4), session)
    session.commit("x")
    with pytest.raises(ReadOnlyError):
        to_frazil(make_dataset(ntime=4), session, mode="w")
    with pytest.raises(InvalidInputError, match="Dataset or DataArray"):
        to_frazil(np.zeros(3), repo.writable_session("main"))  # type: ignore[arg-type]


# -- fork copies that never come back (issue 11, item 8) ---------------------------------------
def test_to_zarr_on_a_fork_store_reaches_the_commit(client: Any, repo: frazil.Repository) -> None:
    """``ds.to_zarr(fork.store)`` on a process cluster: dask pickles the fork into every
    task and never returns the copies. Their writes are journaled on storage, so merging
    the fork finds them (before: merge and commit succeeded with every chunk missing)."""
    ds = make_dataset(12).chunk({"time": 3})
    session = repo.writable_session("main")
    ds.to_zarr(session.store, compute=False, consolidated=False, zarr_format=3)  # metadata
    session.commit("template")

    session = repo.writable_session("main")
    fork = session.fork()
    tasks = _write_tasks(client, lambda: None)
    assert tasks == []
    with distributed.get_task_stream(client) as ts:
        ds.to_zarr(fork.store, region="auto", consolidated=False, zarr_format=3)
    workers = {t["worker"] for t in ts.data}
    assert len(workers) >= 1 and all(w in client.scheduler_info()["workers"] for w in workers)
    assert not fork.has_uncommitted_changes  # the copies wrote, the original did not
    session.merge(fork)
    session.commit("written by the workers")
    assert repo.list_branches() == {"main"}
    back = _open(repo)
    xr.testing.assert_identical(back.load(), ds.load())
    # the journals were read and removed with the commit
    keys = frazil.runtime.run(repo.storage.list("forks/"))
    assert keys == []


def test_journaled_copies_conflict_unless_identical(client: Any, repo: frazil.Repository) -> None:
    """Two copies writing one chunk with different bytes: the merge names it. The same
    chunk written twice with the same bytes (a task dask retried) merges."""
    session = repo.writable_session("main")
    z = zarr.create_array(
        session.store, name="a", shape=(4,), chunks=(2,), dtype="i4", fill_value=0
    )
    session.commit("array")
    del z

    def write(fork: frazil.ForkSession, values: list[int]) -> None:
        zarr.open_array(fork.store, path="a", mode="r+")[:2] = values

    for values, conflict in (([1, 2], False), ([3, 4], True)):
        session = repo.writable_session("main")
        fork = session.fork()
        client.gather(
            [
                client.submit(write, fork, [1, 2], pure=False),
                client.submit(write, fork, values, pure=False),
            ]
        )
        if conflict:
            with pytest.raises(ConflictError, match=r"ChunkDoubleUpdate.*\[0\]"):
                session.merge(fork)
            assert not session.has_uncommitted_changes
        else:
            session.merge(fork)
            session.commit("twice the same")
            assert list(_read(repo, "a")) == [1, 2, 0, 0]


def test_plain_session_store_on_a_process_cluster_names_the_fix(
    client: Any, repo: frazil.Repository
) -> None:
    """``ds.to_zarr(session.store)`` with dask on worker processes cannot work (the
    session stays in this process): the error is frazil's, pointing at fork() and
    frazil.xarray.to_frazil, not dask's "Could not serialize object"."""
    ds = make_dataset(6).chunk({"time": 2})
    session = repo.writable_session("main")
    with pytest.raises(Exception) as info:
        ds.to_zarr(session.store, consolidated=False, zarr_format=3)
    text = "".join(str(e) for e in _chain(info.value))
    assert "session.fork()" in text and "to_frazil" in text, text
    assert "writable Session" in str(info.value) or "writable Session" in text


def _chain(e: BaseException | None) -> Iterator[BaseException]:
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__
