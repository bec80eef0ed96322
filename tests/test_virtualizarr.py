"""VirtualiZarr and kerchunk against frazil, with real files: HDF5/NetCDF4 files written here
with h5py (chunked and compressed, and contiguous), referenced by VirtualiZarr's own
parsers, written by VirtualiZarr's own Icechunk writer through a module named
``icechunk`` that only forwards names to ``frazil`` (as a user switching by import has
it), appended along time, committed, and compared through xarray with what h5py wrote.
kerchunk's reference sets import through ``frazil.zarr_adapter.kerchunk``."""

from __future__ import annotations

import base64
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import kerchunk.hdf as kerchunk_hdf
import numpy as np
import pytest
import xarray as xr
import zarr

import frazil
from frazil.zarr_adapter.kerchunk import import_kerchunk, kerchunk_url


def write_nc(path: Path, t0: int) -> dict[str, np.ndarray]:
    """A NetCDF4-style HDF5 file: coordinates time and x, ``temperature`` chunked (2, 3)
    with shuffle + deflate, ``pressure`` contiguous. Returns what it holds."""
    data = {
        "time": np.arange(t0, t0 + 4, dtype="i8"),
        "x": np.arange(6, dtype="f4") / 2,
        "temperature": np.arange(24, dtype="f8").reshape(4, 6) * 0.5 + t0,
        "pressure": (np.arange(24, dtype="i4").reshape(4, 6) + 1) * (t0 + 1),
    }
    with h5py.File(path, "w") as f:
        time = f.create_dataset("time", data=data["time"])
        time.make_scale("time")
        x = f.create_dataset("x", data=data["x"])
        x.make_scale("x")
        temp = f.create_dataset(
            "temperature", data=data["temperature"], chunks=(2, 3), compression="gzip", shuffle=True
        )
        pres = f.create_dataset("pressure", data=data["pressure"])  # contiguous
        for var in (temp, pres):
            var.dims[0].attach_scale(time)
            var.dims[1].attach_scale(x)
        temp.attrs["units"] = "K"
    return data


@pytest.fixture
def as_icechunk(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """``import icechunk`` gives a module that forwards every name to frazil."""
    shim = types.ModuleType("icechunk")
    shim.__getattr__ = lambda name: getattr(frazil, name)  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, "icechunk", shim)
    yield shim


def repo_for(folder: Path) -> frazil.Repository:
    prefix = f"file://{folder}/"
    config = frazil.RepositoryConfig.default()
    config.set_virtual_chunk_container(
        frazil.VirtualChunkContainer(prefix, frazil.local_filesystem_store(str(folder)))
    )
    return frazil.Repository.create(
        frazil.local_filesystem_storage(folder / "repo"),
        config,
        authorize_virtual_chunk_access=frazil.containers_credentials({prefix: None}),
    )


def registry() -> Any:
    from obspec_utils.registry import ObjectStoreRegistry
    from obstore.store import LocalStore

    return ObjectStoreRegistry({"file://": LocalStore()})


def test_virtualizarr_hdf_write_append_commit(tmp_path: Path, as_icechunk: Any) -> None:
    from virtualizarr import open_virtual_dataset
    from virtualizarr.parsers import HDFParser

    files = [write_nc(tmp_path / f"part{i}.nc", 4 * i) for i in range(2)]
    vds = [
        open_virtual_dataset(
            f"file://{tmp_path}/part{i}.nc",
            registry=registry(),
            parser=HDFParser(),
            loadable_variables=["time", "x"],
        )
        for i in range(2)
    ]
    repo = repo_for(tmp_path)
    session = repo.writable_session("main")
    vds[0].vz.to_icechunk(session.store)  # VirtualiZarr's own writer, through "icechunk"
    first = session.commit("first file")
    session = repo.writable_session("main")
    vds[1].vz.to_icechunk(session.store, append_dim="time")
    session.commit("second file, appended along time")

    with xr.open_zarr(repo.readonly_session("main").store, consolidated=False) as ds:
        for name in ("time", "temperature", "pressure"):
            expected = np.concatenate([f[name] for f in files])
            np.testing.assert_array_equal(ds[name].values, expected)
        np.testing.assert_array_equal(ds["x"].values, files[0]["x"])
        assert ds["temperature"].attrs["units"] == "K"
        assert ds["temperature"].dims == ("time", "x")
    with xr.open_zarr(repo.readonly_session(snapshot_id=first).store, consolidated=False) as ds:
        assert ds.sizes["time"] == 4  # time travel to before the append
    stats = repo.chunk_storage_stats()
    assert stats.virtual_chunks == 2 * (4 + 1)  # temperature's 4 chunks and pressure's 1
    assert repo.fsck(verify_virtual=True).ok
    with open(tmp_path / "part1.nc", "r+b") as f:  # the appended file loses its tail
        f.truncate(2048)
    problems = repo.fsck(verify_virtual=True, verify_chunks=False).problems
    assert [(p.kind, p.key) for p in problems] == [("virtual", f"file://{tmp_path}/part1.nc")]


def test_virtualizarr_kerchunk_json(tmp_path: Path, as_icechunk: Any) -> None:
    """kerchunk's JSON (bare local paths) read by VirtualiZarr's kerchunk parser and
    written by its Icechunk writer."""
    from virtualizarr import open_virtual_dataset
    from virtualizarr.parsers import KerchunkJSONParser

    data = write_nc(tmp_path / "a.nc", 0)
    refs = kerchunk_hdf.SingleHdf5ToZarr(str(tmp_path / "a.nc"), inline_threshold=0).translate()
    assert refs["refs"]["temperature/0.0"][0] == str(tmp_path / "a.nc")  # a bare path
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    vds = open_virtual_dataset(
        f"file://{tmp_path}/refs.json", registry=registry(), parser=KerchunkJSONParser()
    )
    repo = repo_for(tmp_path)
    session = repo.writable_session("main")
    vds.vz.to_icechunk(session.store)
    session.commit("from kerchunk")
    with xr.open_zarr(repo.readonly_session("main").store, consolidated=False) as ds:
        np.testing.assert_array_equal(ds["temperature"].values, data["temperature"])
        np.testing.assert_array_equal(ds["pressure"].values, data["pressure"])


def test_import_kerchunk(tmp_path: Path) -> None:
    data = write_nc(tmp_path / "a.nc", 3)
    refs = kerchunk_hdf.SingleHdf5ToZarr(str(tmp_path / "a.nc"), inline_threshold=0).translate()
    repo = repo_for(tmp_path)
    session = repo.writable_session("main")
    staged = import_kerchunk(session, refs, path="nc")
    assert staged == {"nc/temperature": 4, "nc/pressure": 1, "nc/time": 1, "nc/x": 1}
    session.commit("kerchunk import")
    group = zarr.open_group(repo.readonly_session("main").store, path="nc", mode="r")
    for name, values in data.items():
        np.testing.assert_array_equal(group[name][...], values)
    temp = group["temperature"]
    assert temp.metadata.dimension_names == ("time", "x")
    assert temp.attrs["units"] == "K" and "_ARRAY_DIMENSIONS" not in temp.attrs
    reader = repo.readonly_session("main")
    assert reader.all_virtual_chunk_locations() == [f"file://{tmp_path}/a.nc"]
    assert str(reader.chunk_type("nc/temperature", [1, 1])).lower().endswith("virtual")


def test_import_kerchunk_locations_inline_and_refusals(tmp_path: Path) -> None:
    src = tmp_path / "raw.bin"
    src.write_bytes(np.arange(8, dtype="<i4").tobytes())
    zarray = {
        "shape": [8],
        "chunks": [2],
        "dtype": "<i4",
        "fill_value": 0,
        "order": "C",
        "filters": None,
        "compressor": None,
        "zarr_format": 2,
    }
    refs: dict[str, Any] = {
        ".zgroup": json.dumps({"zarr_format": 2}),
        "v/.zarray": json.dumps(zarray),
        "v/0": ["raw.bin", 0, 8],  # relative: needs base
        "v/1": [str(src), 8, 8],  # bare absolute path
        "v/2": "base64:" + base64.b64encode(np.array([40, 50], "<i4").tobytes()).decode(),
        "v/3": [f"file://{src}", 24, 8],
    }
    repo = repo_for(tmp_path)
    session = repo.writable_session("main")
    with pytest.raises(frazil.InvalidInputError, match=r"'raw.bin'.*relative path; pass base="):
        import_kerchunk(session, {"version": 1, "refs": refs})
    staged = import_kerchunk(session, {"version": 1, "refs": refs}, base=str(tmp_path))
    assert staged == {"v": 3}
    session.commit("mixed")
    got = zarr.open_array(repo.readonly_session("main").store, path="v", mode="r")[...]
    np.testing.assert_array_equal(got, [0, 1, 2, 3, 40, 50, 6, 7])

    assert kerchunk_url("/a b/c.nc") == "file:///a%20b/c.nc"
    assert kerchunk_url("s3://bucket/x.nc") == "s3://bucket/x.nc"
    assert kerchunk_url("sub/x.nc", "s3://bucket/root/") == "s3://bucket/root/sub/x.nc"
    bad = repo.writable_session("main")
    with pytest.raises(frazil.InvalidInputError, match="whole file"):
        import_kerchunk(bad, {**refs, "v/0": [str(src)]}, base=str(tmp_path))
    outside = repo.writable_session("main")
    with pytest.raises(frazil.InvalidInputError):  # under no declared container
        import_kerchunk(outside, {**refs, "v/0": ["/elsewhere/x.nc", 0, 8]}, base=str(tmp_path))
    with pytest.raises(frazil.InvalidInputError, match="templates"):
        import_kerchunk(outside, {"version": 1, "refs": refs, "templates": {"a": "b"}})
    with pytest.raises(frazil.InvalidInputError, match="not JSON"):
        import_kerchunk(outside, "{not json")
