"""xarray over FrazilStore: exact round trips, appends in a later commit, time travel."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest

import frazil

xr = pytest.importorskip("xarray")
pytest.importorskip("dask.array")

pytestmark = pytest.mark.filterwarnings(
    # zarr warns that fixed-width strings have no finished Zarr v3 data type specification
    "ignore::zarr.core.dtype.common.UnstableSpecificationWarning",
)


@pytest.fixture(params=["memory", "local"])
def repo(request: pytest.FixtureRequest, tmp_path: Any) -> frazil.Repository:
    if request.param == "memory":
        return frazil.Repository.create(frazil.in_memory_storage())
    return frazil.Repository.create(frazil.local_filesystem_storage(tmp_path / "repo"))


def make_dataset(ntime: int = 12, start: str = "2024-01-01") -> Any:
    rng = np.random.default_rng(0)
    # nanosecond times: what xarray decodes to by default, so dtypes round-trip exactly
    time = pd.date_range(start, periods=ntime, freq="D", unit="ns")
    lat = np.linspace(-10.0, 10.0, 5)
    lon = np.arange(8, dtype="i4") * 45
    ds = xr.Dataset(
        data_vars={
            # float, dask-chunked (its chunks become the zarr chunks)
            "temperature": (
                ("time", "lat", "lon"),
                rng.normal(280, 5, (ntime, 5, 8)).astype("f4"),
                {"units": "K", "long_name": "air temperature"},
            ),
            "count": (("time", "lon"), rng.integers(0, 1000, (ntime, 8)).astype("i8")),
            "flag": (("time",), rng.integers(0, 2, ntime).astype(bool)),
            # bytes larger than the inline threshold: stored as separate chunk objects
            "big": (("time", "lat", "lon"), rng.random((ntime, 5, 8))),
            "elapsed": (("time",), (np.arange(ntime) * 3_600_000_000_000).astype("m8[ns]")),
            "observed_at": (("time",), (time + pd.Timedelta(hours=6)).values),
        },
        coords={
            "time": time,
            "lat": ("lat", lat, {"units": "degrees_north"}),
            "lon": ("lon", lon),
            "station": ("lon", np.array([f"st{i}" for i in range(8)])),  # fixed-width str
            "name": ("lat", np.array(["a", "bb", "ccc", "dddd", "e"], dtype=object)),  # vlen str
        },
        attrs={"title": "frazil test", "version": 1, "tags": ["a", "b"], "pi": 3.14},
    )
    ds["temperature"] = ds["temperature"].chunk({"time": 4, "lat": 5, "lon": 4})
    ds["big"].encoding["chunks"] = (3, 5, 8)
    return ds


def _open(store: Any) -> Any:
    return xr.open_zarr(store, consolidated=False)


def assert_identical(actual: Any, expected: Any) -> None:
    """``xr.testing.assert_identical`` plus equal dtypes (it compares values only).

    Variable-length strings written from ``object`` arrays come back as numpy's
    ``StringDType`` (zarr's decoding, the same on any store), so those two count as equal.
    """
    xr.testing.assert_identical(actual, expected)
    for name in expected.variables:
        got, want = actual[name].dtype, expected[name].dtype
        if want == np.dtype(object):
            assert got.kind in "OT", name
        else:
            assert got == want, name


def test_round_trip_identical(repo: frazil.Repository) -> None:
    ds = make_dataset()
    session = repo.writable_session("main")
    ds.to_zarr(session.store, consolidated=False, zarr_format=3)

    staged = _open(session.store)
    assert staged["temperature"].chunks is not None  # open_zarr gives dask arrays
    assert_identical(staged.load(), ds.load())
    assert staged["temperature"].encoding["chunks"] == (4, 5, 4)
    assert staged["big"].encoding["chunks"] == (3, 5, 8)

    session.commit("dataset")
    for store in (session.store, repo.readonly_session("main").store):
        assert_identical(_open(store).load(), ds.load())
    # a lazily opened variable reads only part of the data
    lazy = _open(repo.readonly_session("main").store)
    np.testing.assert_array_equal(
        lazy["temperature"].isel(time=slice(3, 9), lon=[1, 6]).values,
        ds["temperature"].isel(time=slice(3, 9), lon=[1, 6]).values,
    )


def test_round_trip_dtypes_decode_exactly(repo: frazil.Repository) -> None:
    """Each dtype comes back with its dtype, not only equal values."""
    ds = make_dataset(ntime=5)
    session = repo.writable_session("main")
    ds.to_zarr(session.store, consolidated=False)
    session.commit("dataset")
    back = _open(repo.readonly_session("main").store).load()
    assert back["time"].dtype == np.dtype("datetime64[ns]")
    assert back["observed_at"].dtype == np.dtype("datetime64[ns]")
    assert back["elapsed"].dtype.kind == "m"
    assert back["count"].dtype == np.dtype("i8")
    assert back["flag"].dtype == np.dtype(bool)
    assert back["temperature"].dtype == np.dtype("f4")
    assert back["lon"].dtype == np.dtype("i4")
    assert back["station"].dtype.kind == "U"
    assert list(back["name"].values) == ["a", "bb", "ccc", "dddd", "e"]
    assert back.attrs == ds.attrs


def test_append_along_time_and_time_travel(repo: frazil.Repository) -> None:
    first = make_dataset(ntime=6, start="2024-01-01")
    s1 = repo.writable_session("main")
    first.to_zarr(s1.store, consolidated=False)
    sid1 = s1.commit("first six days")

    more = make_dataset(ntime=4, start="2024-01-07")
    # the appended part may only hold variables along the append dimension
    more = more.drop_vars(["lat", "lon", "station", "name"])
    s2 = repo.writable_session("main")
    more.to_zarr(s2.store, consolidated=False, append_dim="time")
    combined = xr.concat(
        [
            first,
            more.assign_coords(
                station=first["station"], name=first["name"], lat=first["lat"], lon=first["lon"]
            ),
        ],
        dim="time",
        data_vars="minimal",
        coords="minimal",
        compat="override",
    )
    # the writable session sees the appended data before commit; the branch does not yet
    assert_identical(_open(s2.store).load(), combined.load())
    assert _open(repo.readonly_session("main").store).sizes["time"] == 6
    sid2 = s2.commit("four more days")

    latest = _open(repo.readonly_session("main").store)
    assert latest.sizes["time"] == 10
    assert_identical(latest.load(), combined.load())
    assert str(latest["time"].values[-1])[:10] == "2024-01-10"

    # time travel: the first snapshot still has the original length and values
    old = _open(repo.readonly_session(snapshot_id=sid1).store)
    assert old.sizes["time"] == 6
    assert_identical(old.load(), first.load())
    assert [s.id for s in repo.ancestry(branch="main")][:2] == [sid2, sid1]


def test_region_write_and_overwrite(repo: frazil.Repository) -> None:
    ds = make_dataset(ntime=8)
    s1 = repo.writable_session("main")
    ds.to_zarr(s1.store, consolidated=False)
    s1.commit("base")

    s2 = repo.writable_session("main")
    patch = ds[["temperature"]].isel(time=slice(4, 8)).copy(deep=True)
    patch["temperature"] = patch["temperature"] + 100
    patch.drop_vars(["lat", "lon", "station", "name"]).to_zarr(
        s2.store, consolidated=False, region={"time": slice(4, 8)}
    )
    s2.commit("patched")

    new = _open(repo.readonly_session("main").store).load()
    expected = ds["temperature"].values.copy()
    expected[4:8] += 100
    np.testing.assert_array_equal(new["temperature"].values, expected)
    assert_identical(new.drop_vars("temperature"), ds.drop_vars("temperature"))

    s3 = repo.writable_session("main")
    small = xr.Dataset({"only": ("x", np.arange(3))}, attrs={"mode": "w"})
    small.to_zarr(s3.store, consolidated=False, mode="w")  # replaces everything
    s3.commit("replaced")
    assert_identical(_open(repo.readonly_session("main").store).load(), small)


def test_open_zarr_on_read_only_session_refuses_writes(repo: frazil.Repository) -> None:
    ds = make_dataset(ntime=3)
    s1 = repo.writable_session("main")
    ds.to_zarr(s1.store, consolidated=False)
    s1.commit("base")
    ro = repo.readonly_session("main")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises((frazil.ReadOnlyError, ValueError)):
            ds.to_zarr(ro.store, consolidated=False, mode="a")
        with pytest.raises((frazil.ReadOnlyError, ValueError)):  # s1 is committed
            ds.to_zarr(s1.store, consolidated=False, mode="r+")
    assert_identical(_open(ro.store).load(), ds.load())
