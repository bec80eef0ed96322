"""Other fsspec filesystems: refused for writing unless the unsafe settings are off (then
a warning), readable with read_only=True; file:// and s3:// go to frazil's own backends,
which have conditional writes."""

from __future__ import annotations

import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
import s3server
import zarr

import frazil
from frazil.errors import InvalidInputError, ReadOnlyError
from frazil.storage import FsspecStorage, LocalFileSystemStorage, S3Storage, fsspec_storage


def memory_url() -> str:
    return f"memory://frazil-{uuid.uuid4().hex}"


def test_filesystem_without_conditional_writes_is_refused_for_writing() -> None:
    url = memory_url()
    for settings in (
        {},
        {"unsafe_use_conditional_update": False},
        {"unsafe_use_conditional_create": False},
    ):
        with pytest.raises(InvalidInputError) as info:
            fsspec_storage(url, **settings)  # type: ignore[arg-type]
        msg = str(info.value)
        assert url in msg and "no conditional writes" in msg
        assert "unsafe_use_conditional_update=False" in msg and "read_only=True" in msg


def test_unsafe_settings_off_warn_and_work_for_a_single_writer() -> None:
    url = memory_url()
    with pytest.warns(UserWarning, match="concurrent commits .* can be lost"):
        storage = fsspec_storage(
            url, unsafe_use_conditional_update=False, unsafe_use_conditional_create=False
        )
    assert isinstance(storage, FsspecStorage) and not storage.supports_conditional_writes
    repo = frazil.Repository.create(storage)
    s = repo.writable_session("main")
    a = zarr.create_array(s.store, name="a", shape=(6,), chunks=(2,), dtype="i4")
    a[:] = np.arange(6)
    first = s.commit("one")
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="a")[0] = 9
    s.commit("two")
    # a stale session still gets a ConflictError from the check-then-put
    stale = repo.writable_session("main")
    repo.reset_branch("main", first)
    zarr.open_array(stale.store, path="a")[1] = 7
    with pytest.raises(frazil.ConflictError):
        stale.commit("stale")

    # read-only: no warning, reads work, writes are refused with a clear error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ro = fsspec_storage(url, read_only=True)
    assert "read-only" in ro.describe()
    r = frazil.Repository.open(ro)
    assert list(zarr.open_array(r.readonly_session("main").store, path="a", mode="r")[:]) == [
        0,
        1,
        2,
        3,
        4,
        5,
    ]
    with pytest.raises(ReadOnlyError, match="read-only"):
        r.create_branch("dev", first)
    assert r.list_branches() == {"main"}


def test_file_and_s3_urls_use_frazils_own_backends(tmp_path: Path) -> None:
    local = fsspec_storage(f"file://{tmp_path}/repo")
    assert isinstance(local, LocalFileSystemStorage) and local.supports_conditional_writes
    srv = s3server.server()
    prefix = s3server.new_prefix()
    s3 = fsspec_storage(
        f"s3://{s3server.BUCKET}/{prefix}",
        storage_options={
            "key": s3server.ACCESS_KEY,
            "secret": s3server.SECRET_KEY,
            "client_kwargs": {"endpoint_url": srv.endpoint_url, "region_name": "us-east-1"},
        },
    )
    assert isinstance(s3, S3Storage) and s3.supports_conditional_writes
    repo = frazil.Repository.create(s3)
    assert frazil.Repository.open(s3server.storage(prefix)).list_branches() == {"main"}
    assert repo.list_branches() == {"main"}


@pytest.mark.parametrize("url", ["not a url", "", "nosuchprotocol-xyz://a/b"])
def test_bad_urls_are_clear_errors(url: str) -> None:
    with pytest.raises(InvalidInputError, match="fsspec"):
        fsspec_storage(url, read_only=True)


def test_read_only_holds_for_file_and_s3_urls(tmp_path: Path) -> None:
    """``read_only=True`` is read-only on every route: a commit, a branch, a tag, gc and
    a config save through it are refused, and storage is unchanged."""
    srv = s3server.server()
    prefix = s3server.new_prefix()
    s3_options = {
        "key": s3server.ACCESS_KEY,
        "secret": s3server.SECRET_KEY,
        "client_kwargs": {"endpoint_url": srv.endpoint_url, "region_name": "us-east-1"},
    }
    for url, options, writer in (
        (f"file://{tmp_path}/repo", None, lambda: fsspec_storage(f"file://{tmp_path}/repo")),
        (f"s3://{s3server.BUCKET}/{prefix}", s3_options, lambda: s3server.storage(prefix)),
    ):
        repo = frazil.Repository.create(writer())
        s = repo.writable_session("main")
        zarr.create_array(s.store, name="a", shape=(4,), chunks=(2,), dtype="i4")[:] = 1
        tip = s.commit("data")
        ro = fsspec_storage(url, storage_options=options, read_only=True)
        assert not ro.writable and "read-only" in ro.describe()
        reader = frazil.Repository.open(ro)
        assert list(
            zarr.open_array(reader.readonly_session("main").store, path="a", mode="r")[:]
        ) == [1, 1, 1, 1]
        with pytest.raises(ReadOnlyError):
            reader.writable_session("main")
        for attempt, args in (
            (reader.create_branch, ("dev", tip)),
            (reader.create_tag, ("v1", tip)),
            (reader.save_config, ()),
            (reader.reset_branch, ("main", tip)),
        ):
            with pytest.raises(ReadOnlyError):
                attempt(*args)  # type: ignore[operator]
        import datetime as dt

        with pytest.raises(ReadOnlyError):
            reader.garbage_collect(dt.datetime.now(dt.UTC))
        with pytest.raises(ReadOnlyError):
            frazil.Repository.create(
                fsspec_storage(url.rstrip("/") + "-new", storage_options=options, read_only=True)
            )
        assert repo.list_branches() == {"main"} and repo.list_tags() == set()
        assert repo.lookup_branch("main") == tip


@pytest.mark.parametrize(
    "url,options,bad",
    [
        ("file:///tmp/x", {"auto_mkdirs": True}, "auto_mkdirs"),
        ("s3://bucket/p", {"secret_key": "s"}, "secret_key"),
        ("s3://bucket/p", {"key": "k", "secret": "s", "endpoint": "http://h"}, "endpoint"),
        ("s3://bucket/p", {"client_kwargs": {"region": "us-east-1"}}, "region"),
    ],
)
def test_unknown_storage_options_are_refused(
    url: str, options: dict[str, object], bad: str
) -> None:
    with pytest.raises(InvalidInputError, match=f"'{bad}'.*not understood"):
        fsspec_storage(url, storage_options=options)
