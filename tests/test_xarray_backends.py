"""xarray's own zarr backend tests (``xarray.tests.test_backends``: ``ZarrBase`` and
``TestZarrRegionAuto``) run with frazil stores: a writable session's store on local disk
and in memory (and on the S3 test server in the long run).

The tests write through ``to_zarr`` and read back through ``open_zarr`` on one session's
store, as a user does before committing; ``roundtrip_with_commit`` also commits and reads
from a new read-only session. What frazil does differently by design is marked below with
the reason; nothing else is skipped.
"""

from __future__ import annotations

import contextlib
import pickle
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
import s3server
import xarray as xr
import zarr
from xarray.testing import assert_identical

# xarray's fixtures, imported so that pytest finds them for the inherited tests
from xarray.tests.conftest import time_unit  # noqa: F401
from xarray.tests.conftest import use_dask as use_dask  # noqa: F401
from xarray.tests.test_backends import (
    TestZarrRegionAuto,
    ZarrBase,
    default_zarr_format,  # noqa: F401
    tmp_store,  # noqa: F401
)

import frazil
from frazil.xarray import to_frazil


class _FrazilBase(ZarrBase):
    """``ZarrBase`` with every target a writable frazil session's store."""

    @contextlib.contextmanager
    def create_repo(self) -> Iterator[frazil.Repository]:
        raise NotImplementedError

    @contextlib.contextmanager
    def create_zarr_target(self) -> Iterator[Any]:
        if zarr.config.config["default_zarr_format"] == 2:
            pytest.skip("frazil stores zarr v3 only")
        with self.create_repo() as repo:
            yield repo.writable_session("main").store

    # frazil keeps no consolidated metadata: listing a snapshot is already one read, so
    # xarray's consolidated variants have nothing to test (COMPATIBILITY.md)
    @pytest.mark.parametrize("consolidated", [False, True, None])
    @pytest.mark.parametrize("compute", [False, True])
    @pytest.mark.parametrize("use_dask", [False, True])
    @pytest.mark.parametrize("write_empty", [False, True, None])
    def test_write_region(
        self, consolidated: Any, compute: Any, use_dask: Any, write_empty: Any
    ) -> None:
        if consolidated is not False:
            pytest.skip("frazil keeps no consolidated metadata")
        super().test_write_region(consolidated, compute, use_dask, write_empty)

    @pytest.mark.parametrize("consolidated", [False, True, None])
    def test_roundtrip_consolidated(self, consolidated: Any) -> None:
        if consolidated is not False:
            pytest.skip("frazil keeps no consolidated metadata")
        super().test_roundtrip_consolidated(consolidated)

    @contextlib.contextmanager
    def roundtrip_with_commit(self, ds: xr.Dataset) -> Iterator[xr.Dataset]:
        with self.create_repo() as repo:
            session = repo.writable_session("main")
            to_frazil(ds, session)
            snapshot = session.commit("written by xarray")
            reader = repo.readonly_session(snapshot_id=snapshot)
            with xr.open_zarr(reader.store) as opened:
                yield opened

    # xarray's pickling tests pickle a dataset opened on a *writable* session, which frazil
    # refuses (pickling staged writes would copy them silently: fork() is the way to hand
    # a writable session to workers). The same tests on a committed, read-only session:
    def test_pickle(self) -> None:
        expected = xr.Dataset({"foo": ("x", [42])})
        with self.roundtrip_with_commit(expected) as roundtripped:
            with pickle.loads(pickle.dumps(roundtripped)) as unpickled:
                assert_identical(expected, unpickled)

    def test_pickle_dataarray(self) -> None:
        expected = xr.Dataset({"foo": ("x", [42])})
        with self.roundtrip_with_commit(expected) as roundtripped:
            unpickled = pickle.loads(pickle.dumps(roundtripped["foo"]))
            assert_identical(expected["foo"], unpickled)


class TestFrazilLocal(_FrazilBase):
    @contextlib.contextmanager
    def create_repo(self) -> Iterator[frazil.Repository]:
        with tempfile.TemporaryDirectory() as tmp:
            yield frazil.Repository.create(frazil.local_filesystem_storage(tmp))


class TestFrazilMemory(_FrazilBase):
    @contextlib.contextmanager
    def create_repo(self) -> Iterator[frazil.Repository]:
        yield frazil.Repository.create(frazil.in_memory_storage())

    def test_pickle(self) -> None:
        pytest.skip("an in-memory repository lives in one process: it does not pickle")

    def test_pickle_dataarray(self) -> None:
        pytest.skip("an in-memory repository lives in one process: it does not pickle")


@pytest.mark.slow
class TestFrazilS3(_FrazilBase):
    @contextlib.contextmanager
    def create_repo(self) -> Iterator[frazil.Repository]:
        yield frazil.Repository.create(s3server.storage(f"xarray-backends-{time.time_ns()}"))


@pytest.mark.filterwarnings("ignore:Failed to open:RuntimeWarning")
class TestFrazilRegionAuto(TestZarrRegionAuto):
    @contextlib.contextmanager
    def create_zarr_target(self) -> Iterator[Any]:
        if zarr.config.config["default_zarr_format"] == 2:
            pytest.skip("frazil stores zarr v3 only")
        with tempfile.TemporaryDirectory() as tmp:
            repo = frazil.Repository.create(frazil.local_filesystem_storage(tmp))
            yield repo.writable_session("main").store


def test_suite_is_collected() -> None:
    """The inherited tests are really here (an xarray upgrade that renames its base classes
    must fail loudly, not collect nothing)."""
    inherited = [n for n in dir(TestFrazilLocal) if n.startswith("test_")]
    assert len(inherited) > 100
