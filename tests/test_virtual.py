"""Virtual chunks: references to byte ranges of existing files (S3 on the SeaweedFS test
server, a static HTTP server on 127.0.0.1, local files), read through declared and
authorized containers only; real HDF5 files written with h5py; refusals with their
messages; coalescing of adjacent ranges; the columnar staging path."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import http.server
import os
import pickle
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow as pa
import pytest
import s3server
import xarray as xr
import zarr
from zarr.abc.store import RangeByteRequest
from zarr.core.buffer import default_buffer_prototype

import frazil
from frazil import (
    ChunkType,
    InvalidInputError,
    RepositoryConfig,
    VirtualChunkContainer,
    VirtualChunkError,
    VirtualChunkSpec,
    containers_credentials,
    s3_credentials,
    s3_store,
)

# -- sources --------------------------------------------------------------------------------


def write_hdf5(path: Path) -> dict[str, Any]:
    """A NetCDF4-style HDF5 file: a chunked 2-D float32 variable (uncompressed) and a
    contiguous 1-D int64 one. Returns the data and each chunk's (index, offset, size)."""
    temp = np.random.default_rng(5).random((20, 30), dtype=np.float32)
    time = np.arange(20, dtype="<i8") * 3600
    with h5py.File(path, "w") as f:
        d = f.create_dataset("temperature", data=temp, chunks=(5, 10), dtype="<f4")
        t = f.create_dataset("time", data=time, dtype="<i8")  # contiguous
        d.attrs["units"] = "K"
    with h5py.File(path, "r") as f:
        d = f["temperature"]
        chunks = []
        for i in range(d.id.get_num_chunks()):
            info = d.id.get_chunk_info(i)
            index = tuple(o // c for o, c in zip(info.chunk_offset, d.chunks))
            chunks.append((index, info.byte_offset, info.size))
        t = f["time"]
        time_ref = (t.id.get_offset(), t.id.get_storage_size())
    return {"temperature": temp, "time": time, "chunks": chunks, "time_ref": time_ref}


def hdf5_arrays(session: frazil.Session) -> None:
    root = zarr.group(session.store)
    root.create_array(
        "temperature",
        shape=(20, 30),
        chunks=(5, 10),
        dtype="<f4",
        compressors=None,
        fill_value=np.nan,
        dimension_names=["time", "x"],
        attributes={"units": "K"},
    )
    root.create_array(
        "time",
        shape=(20,),
        chunks=(20,),
        dtype="<i8",
        compressors=None,
        fill_value=0,
        dimension_names=["time"],
    )


def point_at_hdf5(
    session: frazil.Session, url: str, info: dict[str, Any], checksum: Any = None
) -> None:
    """Reference every chunk of the HDF5 file at ``url``: one by one for ``time``, in bulk
    (VirtualChunkSpec) for ``temperature``."""
    offset, size = info["time_ref"]
    session.store.set_virtual_ref(
        "time/c/0", url, offset=offset, length=size, checksum=checksum, validate_container=True
    )
    specs = [
        VirtualChunkSpec(
            list(index),
            url,
            off,
            size,
            etag_checksum=checksum if isinstance(checksum, str) else None,
            last_updated_at_checksum=checksum if isinstance(checksum, dt.datetime) else None,
        )
        for index, off, size in info["chunks"]
    ]
    assert session.store.set_virtual_refs("temperature", specs) is None


def check_hdf5_values(session: frazil.Session, info: dict[str, Any]) -> None:
    temp = zarr.open_array(session.store, path="temperature", mode="r")
    assert np.array_equal(temp[:], info["temperature"])
    assert np.array_equal(temp[3:17, 4:29], info["temperature"][3:17, 4:29])
    assert np.array_equal(zarr.open_array(session.store, path="time", mode="r")[:], info["time"])


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with Range, ETag and Last-Modified; every GET is logged."""

    log: list[tuple[str, str | None]] = []
    lock = threading.Lock()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        path = Path(self.translate_path(self.path))
        with self.lock:
            self.log.append((self.path, self.headers.get("Range")))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        st = path.stat()
        start, end = 0, len(data)
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range") or "")
        self.send_response(206 if match else 200)
        if match:
            start, end = int(match[1]), min(int(match[2]) + 1, len(data))
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.send_header("Content-Length", str(end - start))
        self.send_header("ETag", f'"{st.st_mtime_ns:x}-{st.st_size:x}"')
        self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
        self.end_headers()
        self.wfile.write(data[start:end])


@pytest.fixture
def http_source(tmp_path: Path) -> Iterator[tuple[str, Path, list[Any]]]:
    """(base URL, served folder, request log) of a static file server on 127.0.0.1."""
    folder = tmp_path / "served"
    folder.mkdir()
    log: list[Any] = []
    handler = type("Handler", (RangeHandler,), {"log": log})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder, log
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def local_repo(
    tmp_path: Path, prefix: str, *, authorize: bool = True, store: Any = None
) -> frazil.Repository:
    config = RepositoryConfig.default()
    config.set_virtual_chunk_container(
        VirtualChunkContainer(
            prefix, store or frazil.local_filesystem_store(prefix[len("file://") :])
        )
    )
    return frazil.Repository.create(
        frazil.local_filesystem_storage(tmp_path / "repo"),
        config,
        authorize_virtual_chunk_access=containers_credentials({prefix: None})
        if authorize
        else None,
    )


# -- the migration guide's example on S3 -----------------------------------------------------


@pytest.fixture(scope="module")
def testbucket() -> str:
    """The guide's bucket, ``testbucket``, on the test server."""
    srv = s3server.server()

    async def make() -> None:
        import s3fs

        fs = s3fs.S3FileSystem(
            key=s3server.ACCESS_KEY,
            secret=s3server.SECRET_KEY,
            endpoint_url=srv.endpoint_url,
            asynchronous=True,
            skip_instance_cache=True,
            client_kwargs={"region_name": "us-east-1"},
        )
        s3 = await fs.set_session()
        try:
            names = {b["Name"] for b in (await fs._call_s3("list_buckets"))["Buckets"]}
            if "testbucket" not in names:
                await fs._call_s3("create_bucket", Bucket="testbucket")
        finally:
            await s3.close()

    asyncio.run(make())
    return srv.endpoint_url


def put_s3(endpoint: str, key: str, data: bytes) -> str:
    """Write ``s3://testbucket/key``; returns its ETag."""

    async def go() -> str:
        import s3fs

        fs = s3fs.S3FileSystem(
            key=s3server.ACCESS_KEY,
            secret=s3server.SECRET_KEY,
            endpoint_url=endpoint,
            asynchronous=True,
            skip_instance_cache=True,
            client_kwargs={"region_name": "us-east-1"},
        )
        s3 = await fs.set_session()
        try:
            resp = await fs._call_s3("put_object", Bucket="testbucket", Key=key, Body=data)
            return str(resp["ETag"])
        finally:
            await s3.close()

    return asyncio.run(go())


def test_migration_guide_example_on_s3(testbucket: str, tmp_path: Path) -> None:
    info = write_hdf5(tmp_path / "air.nc")
    key = f"{s3server.new_prefix()}/air.nc"
    etag = put_s3(testbucket, key, (tmp_path / "air.nc").read_bytes())
    url = f"s3://testbucket/{key}"

    # the guide's code, with frazil for icechunk and the test server's endpoint
    store_config = s3_store(
        region="us-east-1", endpoint_url=testbucket, allow_http=True, force_path_style=True
    )
    container = VirtualChunkContainer("s3://testbucket", store_config)
    config = RepositoryConfig.default()
    config.set_virtual_chunk_container(container)
    credentials = containers_credentials(
        {
            "s3://testbucket": s3_credentials(
                access_key_id=s3server.ACCESS_KEY, secret_access_key=s3server.SECRET_KEY
            )
        }
    )
    storage = s3server.storage()
    repo = frazil.Repository.create(
        storage=storage, config=config, authorize_virtual_chunk_access=credentials
    )

    session = repo.writable_session("main")
    hdf5_arrays(session)
    point_at_hdf5(session, url, info, checksum=etag)
    check_hdf5_values(session, info)  # staged refs read before the commit
    session.commit("virtual air temperature")

    # a reader: containers come from the saved config, credentials from the reader, who
    # confirms the container's endpoint by passing the same config (a stored endpoint
    # alone never receives the reader's credentials)
    reader = frazil.Repository.open(
        s3server.storage(storage.config.prefix),
        config=config,
        authorize_virtual_chunk_access=credentials,
    )
    assert reader.config.virtual_chunk_containers == {"s3://testbucket": container}
    ro = reader.readonly_session("main")
    check_hdf5_values(ro, info)
    ds = xr.open_zarr(ro.store, consolidated=False)
    assert np.array_equal(ds["temperature"].values, info["temperature"])
    assert ds["temperature"].attrs["units"] == "K"
    assert float(ds["temperature"].isel(time=7).mean()) == pytest.approx(
        float(info["temperature"][7].mean())
    )
    assert ro.all_virtual_chunk_locations() == [url]

    # default secure: the same repository opened without authorization reads nothing
    closed = frazil.Repository.open(s3server.storage(storage.config.prefix))
    with pytest.raises(
        VirtualChunkError,
        match="'s3://testbucket' is not authorized.*authorize_virtual_chunk_access",
    ):
        zarr.open_array(closed.readonly_session("main").store, path="time", mode="r")[:]

    # the source is replaced: its ETag changes, the pinned refs are refused
    put_s3(testbucket, key, (tmp_path / "air.nc").read_bytes()[::-1])
    fresh = frazil.Repository.open(
        s3server.storage(storage.config.prefix),
        config=config,
        authorize_virtual_chunk_access=credentials,
    )
    with pytest.raises(VirtualChunkError, match=f"{re.escape(url)}.*has changed.*ETag"):
        zarr.open_array(fresh.readonly_session("main").store, path="temperature", mode="r")[:]


# -- local files -----------------------------------------------------------------------------


def test_hdf5_file_read_through_zarr(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    info = write_hdf5(src / "data.nc")
    prefix = f"file://{src}"
    repo = local_repo(tmp_path, prefix)
    session = repo.writable_session("main")
    hdf5_arrays(session)
    bound = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    point_at_hdf5(session, f"{prefix}/data.nc", info, checksum=bound)
    assert session.chunk_type("temperature", (1, 2)) == ChunkType.VIRTUAL
    session.commit("hdf5")
    ro = repo.readonly_session("main")
    check_hdf5_values(ro, info)
    xr.testing.assert_equal(
        xr.open_zarr(ro.store, consolidated=False)["temperature"].load(),
        xr.DataArray(
            info["temperature"],
            dims=["time", "x"],
            attrs={"units": "K"},
            coords={"time": info["time"]},
        ),
    )

    # modified after the recorded bound: refused, naming the file
    later = bound.timestamp() + 3600
    os.utime(src / "data.nc", (later, later))
    fresh = frazil.Repository.open(repo.storage, authorize_virtual_chunk_access={prefix: None})
    with pytest.raises(
        VirtualChunkError,
        match=f"'{re.escape(prefix)}/data.nc' has "
        "changed since the reference was made: modified at",
    ):
        zarr.open_array(fresh.readonly_session("main").store, path="time", mode="r")[:]


def test_raw_binary_columnar_and_coalescing(tmp_path: Path) -> None:
    """A raw little-endian file of 8 x 6 chunks, staged from numpy and from Arrow
    columns; adjacent chunks read by one get_partial_values call cost one request."""
    src = tmp_path / "raw"
    src.mkdir()
    values = np.arange(8 * 4 * 6 * 5, dtype="<i4").reshape(8, 6, 4, 5)  # chunk-major
    (src / "a.bin").write_bytes(b"\0" * 100 + values.tobytes())
    expected = values.transpose(0, 2, 1, 3).reshape(32, 30)
    prefix = f"file://{src}"
    repo = local_repo(tmp_path, prefix)
    session = repo.writable_session("main")
    for name in ("np", "arrow"):
        zarr.create_array(
            session.store,
            name=name,
            shape=(32, 30),
            chunks=(4, 5),
            dtype="<i4",
            compressors=None,
            fill_value=-1,
        )
    nbytes = 4 * 5 * 4
    offsets = 100 + np.arange(48, dtype=np.int64).reshape(8, 6) * nbytes
    lengths = np.full((8, 6), nbytes)
    locations = np.full((8, 6), f"{prefix}/a.bin")
    assert session.store.set_virtual_refs_arrays("np", locations, offsets, lengths) == 48
    idx = np.indices((8, 6)).reshape(2, -1).T[::-1]  # explicit indices, any order
    n = session.set_virtual_refs_arrays(
        "arrow",
        pa.array([f"{prefix}/a.bin"] * 48).dictionary_encode(),
        pa.array(offsets.reshape(-1)[::-1]),
        pa.array(lengths.reshape(-1)),
        indices=idx,
    )
    assert n == 48
    session.commit("raw")

    ro = repo.readonly_session("main")
    for name in ("np", "arrow"):
        assert np.array_equal(zarr.open_array(ro.store, path=name, mode="r")[:], expected)

    resolver = repo.virtual_resolver
    before = resolver.requests
    keys = [(f"np/c/2/{j}", None) for j in range(6)] + [("np/c/3/0", RangeByteRequest(8, 16))]

    async def partial() -> list[Any]:
        return await ro.store.get_partial_values(default_buffer_prototype(), keys)

    got = asyncio.run(partial())
    assert resolver.requests - before == 1  # seven ranges of one file, one request
    raw = (src / "a.bin").read_bytes()
    for j in range(6):
        start = 100 + (2 * 6 + j) * nbytes
        assert got[j].to_bytes() == raw[start : start + nbytes]
    assert got[6].to_bytes() == raw[100 + 18 * nbytes + 8 : 100 + 18 * nbytes + 16]

    # a file cut short is refused, never padded
    (src / "a.bin").write_bytes(raw[: 100 + 40 * nbytes])
    with pytest.raises(VirtualChunkError, match="shorter than referenced"):
        zarr.open_array(ro.store, path="np", mode="r")[28:]  # chunks 42-47 of 48


def test_refusals_undeclared_unauthorized_malformed(tmp_path: Path) -> None:
    src = tmp_path / "data"
    src.mkdir()
    (src / "f.bin").write_bytes(bytes(range(256)))
    prefix = f"file://{src}"
    repo = local_repo(tmp_path, prefix, authorize=False)
    session = repo.writable_session("main")
    zarr.create_array(
        session.store, name="x", shape=(4,), chunks=(1,), dtype="u1", compressors=None, fill_value=0
    )
    outside = f"file://{tmp_path}/elsewhere.bin"
    with pytest.raises(
        InvalidInputError,
        match="fall under no virtual chunk container.*set_virtual_chunk_container",
    ):
        session.store.set_virtual_ref("x/c/0", outside, offset=0, length=1, validate_container=True)
    with pytest.raises(InvalidInputError, match="'..' path segments"):
        session.store.set_virtual_ref("x/c/0", f"{prefix}/../secret", offset=0, length=1)
    with pytest.raises(InvalidInputError, match="under no virtual chunk container"):
        session.set_virtual_refs_arrays("x", [outside] * 4, [0] * 4, [1] * 4)
    # a prefix matches on a '/' boundary only
    sibling = f"{prefix}-other/f.bin"
    failed = session.store.set_virtual_refs(
        "x", [VirtualChunkSpec([1], f"{prefix}/f.bin", 1, 1), VirtualChunkSpec([2], sibling, 2, 1)]
    )
    assert failed == [(2,)]
    session.store.set_virtual_ref("x/c/0", outside, offset=0, length=1)  # not validated
    session.store.set_virtual_ref("x/c/3", f"{prefix}/f.bin", offset=3, length=1)
    assert session.chunk_type("x", (2,)) == ChunkType.UNINITIALIZED
    session.commit("refs")

    arr = zarr.open_array(repo.readonly_session("main").store, path="x", mode="r")
    with pytest.raises(
        VirtualChunkError,
        match=f"container '{re.escape(prefix)}' is not "
        "authorized.*authorize_virtual_chunk_access=frazil.containers_credentials",
    ):
        arr[3]
    authorized = frazil.Repository.open(repo.storage, authorize_virtual_chunk_access={prefix: None})
    arr = zarr.open_array(authorized.readonly_session("main").store, path="x", mode="r")
    assert arr[1] == 1 and arr[3] == 3 and arr[2] == 0
    with pytest.raises(
        VirtualChunkError,
        match=f"'{re.escape(outside)}'.*no virtual chunk container of this repository",
    ):
        arr[0]
    with pytest.raises(InvalidInputError, match="not a virtual chunk container"):
        frazil.Repository.open(repo.storage, authorize_virtual_chunk_access={"s3://nope": None})


# -- HTTP ------------------------------------------------------------------------------------


def test_http_source_coalesced_and_pinned(
    tmp_path: Path, http_source: tuple[str, Path, list[Any]]
) -> None:
    base, folder, log = http_source
    info = write_hdf5(folder / "air.nc")
    config = RepositoryConfig.default()
    config.set_virtual_chunk_container(VirtualChunkContainer(base, frazil.http_store()))
    repo = frazil.Repository.create(
        frazil.local_filesystem_storage(tmp_path / "repo"),
        config,
        authorize_virtual_chunk_access={base: None},
    )
    session = repo.writable_session("main")
    hdf5_arrays(session)
    st = (folder / "air.nc").stat()
    point_at_hdf5(session, f"{base}/air.nc", info, checksum=f'"{st.st_mtime_ns:x}-{st.st_size:x}"')
    session.commit("over http")

    ro = repo.readonly_session("main")
    log.clear()
    check_hdf5_values(ro, info)
    assert log and all(rng and rng.startswith("bytes=") for _, rng in log)  # ranges only
    # h5py wrote the 12 chunks back to back: they are fetched in far fewer requests
    log.clear()
    zarr.open_array(ro.store, path="temperature", mode="r")[:]
    assert 1 <= len(log) < len(info["chunks"]) // 2

    # a pickled repository (as sent to workers) keeps its authorization
    clone = pickle.loads(pickle.dumps(repo))
    assert np.array_equal(
        zarr.open_array(clone.readonly_session("main").store, path="time", mode="r")[:],
        info["time"],
    )
    assert "secret" not in repr(clone.virtual_resolver)

    # the file is rewritten: its ETag changes, reads are refused
    data = (folder / "air.nc").read_bytes()
    (folder / "air.nc").write_bytes(data)
    os.utime(folder / "air.nc", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(VirtualChunkError, match=f"'{re.escape(base)}/air.nc' has changed"):
        zarr.open_array(ro.store, path="time", mode="r")[:]


# -- staging semantics, config, forks --------------------------------------------------------


def one_file_repo(tmp_path: Path, size: int) -> tuple[frazil.Repository, str]:
    """A repository authorized for a folder holding ``f.bin`` (bytes 0, 1, ...)."""
    src = tmp_path / "d"
    src.mkdir()
    (src / "f.bin").write_bytes(bytes(range(size)))
    prefix = f"file://{src}"
    return local_repo(tmp_path, prefix), prefix


def test_staging_last_write_wins_and_inspection(tmp_path: Path) -> None:
    repo, prefix = one_file_repo(tmp_path, 100)
    s = repo.writable_session("main")
    arr = zarr.create_array(
        s.store, name="x", shape=(10,), chunks=(1,), dtype="u1", compressors=None, fill_value=255
    )
    s.set_virtual_refs_arrays("x", f"{prefix}/f.bin", np.arange(10) * 10, np.ones(10, int))
    arr[2] = 7  # inline write replaces the bulk ref
    s.store.set_virtual_ref("x/c/3", f"{prefix}/f.bin", offset=99, length=1)
    asyncio.run(s.store.delete("x/c/4"))
    s.set_virtual_refs_arrays(
        "x", [f"{prefix}/f.bin", None], [55, 0], [1, 1], indices=[[5], [6]]
    )  # a null location skips chunk 6
    assert list(arr[:]) == [0, 10, 7, 99, 255, 55, 60, 70, 80, 90]
    assert [s.chunk_type("x", (i,)) for i in (2, 3, 4, 5)] == [
        ChunkType.INLINE,
        ChunkType.VIRTUAL,
        ChunkType.UNINITIALIZED,
        ChunkType.VIRTUAL,
    ]
    s.commit("mixed")

    s = repo.writable_session("main")
    big = zarr.create_array(
        s.store,
        name="native",
        shape=(1000,),
        chunks=(1000,),
        dtype="u1",
        compressors=None,
        fill_value=0,
    )
    big[:] = 1
    assert s.chunk_type("native", (0,)) == ChunkType.NATIVE
    zarr.open_array(s.store, path="x")[:] = 1  # every virtual chunk replaced
    assert s.all_virtual_chunk_locations() == []
    ro = repo.readonly_session("main")
    assert ro.all_virtual_chunk_locations() == [f"{prefix}/f.bin"]
    with pytest.raises(InvalidInputError, match="outside the chunk grid"):
        ro.chunk_type("x", (10,))


def test_fork_stages_virtual_refs_and_merges(tmp_path: Path) -> None:
    repo, prefix = one_file_repo(tmp_path, 200)
    s = repo.writable_session("main")
    zarr.create_array(
        s.store, name="x", shape=(20,), chunks=(1,), dtype="u1", compressors=None, fill_value=0
    )
    s.commit("array")
    s = repo.writable_session("main")
    forks = []
    for half in (0, 1):
        fork = pickle.loads(pickle.dumps(s.fork()))
        idx = np.arange(half * 10, half * 10 + 10)
        fork.set_virtual_refs_arrays(
            "x", f"{prefix}/f.bin", idx * 10, np.ones(10, int), indices=idx[:, None]
        )
        forks.append(pickle.loads(pickle.dumps(fork)))
    clash = pickle.loads(pickle.dumps(s.fork()))
    clash.store.set_virtual_ref("x/c/3", f"{prefix}/f.bin", offset=0, length=1)
    with pytest.raises(frazil.ConflictError, match=r"\[3\]"):
        s.merge(*forks, clash)
    s.merge(*forks)
    s.commit("merged")
    got = zarr.open_array(repo.readonly_session("main").store, path="x", mode="r")[:]
    assert list(got) == [i * 10 for i in range(20)]


def test_containers_saved_merged_and_cleared(tmp_path: Path) -> None:
    config = RepositoryConfig.default()
    s3 = VirtualChunkContainer("s3://bucket/data/", s3_store(region="eu-west-1", anonymous=True))
    web = VirtualChunkContainer("https://example.org/files", frazil.http_store())
    config.set_virtual_chunk_container(s3)
    config.set_virtual_chunk_container(web)
    storage = frazil.local_filesystem_storage(tmp_path / "repo")
    frazil.Repository.create(storage, config)
    repo = frazil.Repository.open(storage)
    assert repo.config.virtual_chunk_containers == {s3.url_prefix: s3, web.url_prefix: web}

    extra = VirtualChunkContainer("gs://other", frazil.gcs_store())
    override = RepositoryConfig()
    override.set_virtual_chunk_container(extra)
    merged = frazil.Repository.open(storage, override).config.virtual_chunk_containers
    assert merged is not None and set(merged) == {s3.url_prefix, web.url_prefix, "gs://other"}

    repo.config.clear_virtual_chunk_containers()
    repo.save_config()
    assert frazil.Repository.open(storage).config.virtual_chunk_containers == {}

    with pytest.raises(InvalidInputError, match="does not fit a s3 store"):
        VirtualChunkContainer("https://x.org", s3_store())
    with pytest.raises(InvalidInputError, match="file:///absolute/path"):
        VirtualChunkContainer("file://relative", frazil.local_filesystem_store("relative"))
    creds = s3_credentials(access_key_id="AKIA", secret_access_key="very-secret")
    assert "very-secret" not in repr(creds) and "very-secret" not in repr(
        containers_credentials({"s3://bucket/data/": creds})
    )
    with pytest.raises(InvalidInputError, match="do not fit its http store"):
        frazil.Repository.open(
            storage, config, authorize_virtual_chunk_access={web.url_prefix: creds}
        )


def test_manifest_location_column_on_disk(tmp_path: Path) -> None:
    """Locations are dictionary-encoded in the manifest's Parquet, readable by duckdb;
    a damaged container list in config.json is refused as a format error."""
    import duckdb
    import pyarrow.parquet as pq

    repo = local_repo(tmp_path, "file:///data")
    s = repo.writable_session("main")
    zarr.create_array(
        s.store, name="x", shape=(3000,), chunks=(1,), dtype="u1", compressors=None, fill_value=0
    )
    files = np.array([f"file:///data/f{i}.nc" for i in range(3)])
    s.set_virtual_refs_arrays(
        "x", files[np.arange(3000) % 3], np.arange(3000), np.ones(3000, int), etags=["e"] * 3000
    )
    s.commit("3000 refs")
    manifests = list((tmp_path / "repo" / "manifests").iterdir())
    assert len(manifests) == 1
    meta = pq.ParquetFile(manifests[0]).metadata
    col = meta.schema.names.index("location")
    assert any("DICTIONARY" in e for e in meta.row_group(0).column(col).encodings)
    rows = duckdb.sql(
        f"SELECT location, count(*), min(etag) FROM read_parquet("
        f"'{manifests[0]}') WHERE kind = 3 GROUP BY location ORDER BY 1"
    ).fetchall()
    assert rows == [(f, 1000, "e") for f in files]

    config = tmp_path / "repo" / "config.json"
    config.write_text(config.read_text().replace('"type": "local"', '"type": "ftp"'))
    with pytest.raises(frazil.FormatError, match="virtual_chunk_containers.*unknown store"):
        frazil.Repository.open(repo.storage)


def test_store_async_virtual_refs_clear_and_partial_writes(tmp_path: Path) -> None:
    """Icechunk's store names: the async forms of set_virtual_ref(s), sync_clear, and
    set_partial_values refused (chunks are written whole)."""
    repo, prefix = one_file_repo(tmp_path, 100)
    s = repo.writable_session("main")
    arr = zarr.create_array(
        s.store, name="x", shape=(4,), chunks=(1,), dtype="u1", compressors=None, fill_value=255
    )
    url = f"{prefix}/f.bin"
    asyncio.run(s.store.set_virtual_ref_async("x/c/0", url, offset=42, length=1))
    specs = [VirtualChunkSpec([i], url, 10 * i, 1) for i in (1, 2)]
    assert asyncio.run(s.store.set_virtual_refs_async("x", specs)) is None
    assert list(arr[:]) == [42, 10, 20, 255]
    with pytest.raises(InvalidInputError, match="partial writes"):
        asyncio.run(s.store.set_partial_values([("x/c/0", 0, b"\x01")]))
    s.commit("refs")
    s = repo.writable_session("main")
    s.store.sync_clear()
    assert list(s.nodes()) == []
    s.commit("cleared")
    assert not asyncio.run(repo.readonly_session("main").store.exists("x/zarr.json"))
    assert asyncio.run(repo.readonly_session("main").store.is_empty(""))


@pytest.mark.parametrize("declared, authorized", [("/", ""), ("", "/")])
def test_authorization_names_a_container_with_or_without_its_slash(
    tmp_path: Path, declared: str, authorized: str
) -> None:
    src = tmp_path / "d"
    src.mkdir()
    (src / "f.bin").write_bytes(bytes(range(10)))
    prefix = f"file://{src}"
    config = RepositoryConfig.default()
    config.set_virtual_chunk_container(
        VirtualChunkContainer(prefix + declared, frazil.local_filesystem_store(str(src)))
    )
    storage = frazil.local_filesystem_storage(tmp_path / "repo")
    repo = frazil.Repository.create(
        storage, config, authorize_virtual_chunk_access={prefix + authorized: None}
    )
    s = repo.writable_session("main")
    arr = zarr.create_array(
        s.store, name="x", shape=(2,), chunks=(1,), dtype="u1", fill_value=0, compressors=None
    )
    s.store.set_virtual_ref("x/c/1", f"{prefix}/f.bin", offset=7, length=1)
    assert list(arr[:]) == [0, 7]
    assert repo.authorized_virtual_container_prefixes() == {prefix + declared}
    s.commit("one ref")
    again = frazil.Repository.open(
        storage, authorize_virtual_chunk_access={prefix + authorized: None}
    )
    assert zarr.open_array(again.readonly_session("main").store, path="x")[1] == 7
