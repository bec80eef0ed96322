"""A hostile repository tried against its readers: virtual locations that step out of their
container (percent-encoded dot segments, symbolic links), stored endpoints that would
receive the reader's credentials, HTTP redirects to other hosts, JSON nested to exhaust
the parser, references far longer than their files, and Parquet objects with extra,
missing or retyped columns.

A hostile repository is built the way an attacker would: by writing what frazil's own
checks refuse directly into a session's change set (or into storage), then committing,
so that the objects on storage are valid, checksummed and hostile."""

from __future__ import annotations

import http.server
import json
import os
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

import frazil
from frazil import (
    FormatError,
    InvalidInputError,
    RepositoryConfig,
    VirtualChunkContainer,
    VirtualChunkError,
    containers_credentials,
    s3_credentials,
    s3_store,
)
from frazil.format import ChunkKind, ChunkRef, NodeRecord
from frazil.format.common import MAX_JSON_DEPTH, load_json
from frazil.virtual.locations import LocationError, parse_location

SECRET = b"the secret outside the container"

# -- helpers ----------------------------------------------------------------------------------


def stage_raw(session: frazil.Session, path: str, coord: tuple[int, ...], ref: ChunkRef) -> None:
    """Stage ``ref`` as an attacker would write it: past every check of the API."""
    rec = session.node(path)
    assert rec is not None
    session._changes.set_chunk(rec.node_id, coord, ref)


def local_layout(tmp_path: Path) -> tuple[Path, Path, str]:
    """(allowed folder with a file, the secret file outside it, the container prefix)."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "ok.bin").write_bytes(bytes(range(64)))
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    return allowed, secret, f"file://{allowed}"


def hostile_local_repo(
    tmp_path: Path, prefix: str, locations: list[str], length: int = len(SECRET)
) -> frazil.Repository:
    """A repository whose array ``x`` has one virtual chunk per location (written past
    the API's checks), opened by a reader who authorized the container."""
    config = RepositoryConfig.default()
    config.set_virtual_chunk_container(
        VirtualChunkContainer(prefix, frazil.local_filesystem_store(prefix[len("file://") :]))
    )
    storage = frazil.local_filesystem_storage(tmp_path / "repo")
    repo = frazil.Repository.create(storage, config)
    s = repo.writable_session("main")
    zarr.create_array(
        s.store,
        name="x",
        shape=(len(locations) * length,),
        chunks=(length,),
        dtype="u1",
        compressors=None,
        fill_value=0,
    )
    for i, loc in enumerate(locations):
        stage_raw(s, "/x", (i,), ChunkRef(ChunkKind.VIRTUAL, location=loc, offset=0, length=length))
    s.commit("hostile refs")
    return frazil.Repository.open(
        storage, authorize_virtual_chunk_access=containers_credentials({prefix: None})
    )


def read_chunk(repo: frazil.Repository, coord: tuple[int, ...]) -> bytes | None:
    session = repo.readonly_session("main")
    return frazil.runtime.run(session.get_chunk("/x", coord))


# -- 1. locations are parsed once; encoded dot segments and symbolic links do not escape -----

ESCAPES = [
    "%2e%2e/secret",
    "..%2fsecret",
    "%2E%2E%2Fsecret",
    "%2e%2e%2fsecret",
    ".%2e/secret",
    "%2e./secret",
    "sub/%2e%2e/%2e%2e/secret",
]


@pytest.mark.parametrize("escape", ESCAPES)
def test_percent_encoded_dot_segments_never_escape(tmp_path: Path, escape: str) -> None:
    allowed, _, prefix = local_layout(tmp_path)
    (allowed / "sub").mkdir()
    repo = hostile_local_repo(tmp_path, prefix, [f"{prefix}/{escape}"])
    with pytest.raises(VirtualChunkError, match=r"'\.' or '\.\.' path segments"):
        read_chunk(repo, (0,))
    # and the API refuses to stage it in the first place
    s = repo.writable_session("main")
    with pytest.raises(InvalidInputError, match="path segments"):
        s.store.set_virtual_ref("x/c/0", f"{prefix}/{escape}", offset=0, length=1)


def test_one_canonical_form_for_every_scheme() -> None:
    for url in (
        "s3://bucket/a/%2e%2e/b",
        "gs://bucket/%2E%2E/b",
        "http://h/a/..%2Fb",
        "file:///a/%2e/b",
        "https://h/a/%2e%2E/b",
    ):
        with pytest.raises(LocationError, match="path segments"):
            parse_location(url)
    # decoded exactly once: a double-encoded name stays a literal name
    assert parse_location("file:///d/%252e%252e/x").path == "/d/%2e%2e/x"
    assert parse_location("s3://b/k%20x").key == "k x"
    assert parse_location("GCS://b/k") == parse_location("gs://b/k")
    assert parse_location("HTTPS://Example.ORG:443/a").url == "https://example.org/a"
    for bad, why in (
        ("http://trusted.org@evil.org/x", "user information"),
        ("file://evil-host/etc/passwd", "localhost"),
        ("s3://b/k?versionId=1", "query"),
        ("s3://b/k\\..\\x", "backslash"),
        ("s3://b/%ff", "UTF-8"),
        ("s3://b/a%00b", "control"),
    ):
        with pytest.raises(LocationError, match=why):
            parse_location(bad)
    # containment compares canonical forms segment by segment
    c = parse_location("https://Data.org/pub")
    assert c.contains(parse_location("https://data.org:443/pub/x.nc"))
    assert not c.contains(parse_location("https://data.org/public/x.nc"))
    assert not c.contains(parse_location("http://data.org/pub/x.nc"))


def test_symlink_out_of_the_container_is_refused(tmp_path: Path) -> None:
    allowed, secret, prefix = local_layout(tmp_path)
    (allowed / "link").symlink_to(secret)  # a link inside, to a file outside
    (allowed / "dirlink").symlink_to(tmp_path)  # a link inside, to a folder outside
    (allowed / "inside").symlink_to(allowed / "ok.bin")  # a link that stays inside
    repo = hostile_local_repo(
        tmp_path, prefix, [f"{prefix}/link", f"{prefix}/dirlink/secret", f"{prefix}/inside"]
    )
    for coord in ((0,), (1,)):
        with pytest.raises(VirtualChunkError, match="outside its container.*symbolic link"):
            read_chunk(repo, coord)
    assert read_chunk(repo, (2,)) == bytes(range(len(SECRET)))


def test_container_root_reached_through_a_symlink_still_reads(tmp_path: Path) -> None:
    allowed, _, _ = local_layout(tmp_path)
    alias = tmp_path / "alias"
    alias.symlink_to(allowed)  # the container is declared by a path that is a link
    prefix = f"file://{alias}"
    repo = hostile_local_repo(tmp_path, prefix, [f"{prefix}/ok.bin"], length=8)
    assert read_chunk(repo, (0,)) == bytes(range(8))


def test_hard_link_is_a_file_of_the_container(tmp_path: Path) -> None:
    """A hard link is the same file under another name in the container's folder: only
    someone who can write that folder (and read the target) can make one, so it holds as
    any other file of the container does; reads of it are not escapes."""
    allowed, secret, prefix = local_layout(tmp_path)
    os.link(secret, allowed / "hard")
    repo = hostile_local_repo(tmp_path, prefix, [f"{prefix}/hard"])
    assert read_chunk(repo, (0,)) == SECRET


def test_special_files_are_refused(tmp_path: Path) -> None:
    allowed, _, prefix = local_layout(tmp_path)
    os.mkfifo(allowed / "fifo")  # opening a FIFO for reading would block forever
    (allowed / "folder").mkdir()
    repo = hostile_local_repo(tmp_path, prefix, [f"{prefix}/fifo", f"{prefix}/folder"])
    for coord in ((0,), (1,)):
        with pytest.raises((VirtualChunkError, frazil.StorageError)):
            read_chunk(repo, coord)


# -- 2. credentials go only to endpoints the reader confirmed ---------------------------------


class Recorder(http.server.BaseHTTPRequestHandler):
    """An endpoint that records every request's headers and answers 404."""

    seen: list[dict[str, str]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.seen.append({k.lower(): v for k, v in self.headers.items()})
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []
    handler = type("Handler", (Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_stored_endpoint_never_receives_the_readers_credentials(
    tmp_path: Path, recorder: tuple[str, list[dict[str, str]]]
) -> None:
    evil, seen = recorder
    # the repository declares the prefix the reader trusts, with its own endpoint
    hostile = s3_store(
        region="us-east-1", endpoint_url=evil, allow_http=True, force_path_style=True
    )
    config = RepositoryConfig.default()
    config.set_virtual_chunk_container(VirtualChunkContainer("s3://trusted-data", hostile))
    storage = frazil.local_filesystem_storage(tmp_path / "repo")
    repo = frazil.Repository.create(storage, config)
    s = repo.writable_session("main")
    zarr.create_array(
        s.store, name="x", shape=(4,), chunks=(4,), dtype="u1", compressors=None, fill_value=0
    )
    s.store.set_virtual_ref("x/c/0", "s3://trusted-data/file.bin", offset=0, length=4)
    s.commit("points at the trusted bucket")

    credentials = containers_credentials(
        {
            "s3://trusted-data": s3_credentials(
                access_key_id="AKIAREADERSKEY",
                secret_access_key="readers-secret",
                session_token="readers-session-token",
            )
        }
    )
    for cred in (credentials, {"s3://trusted-data": None}):  # given keys, or the environment's
        reader = frazil.Repository.open(storage, authorize_virtual_chunk_access=cred)
        arr = zarr.open_array(reader.readonly_session("main").store, path="x", mode="r")
        with pytest.raises(
            VirtualChunkError,
            match=(
                "would send your credentials to http://127.0.0.1:[0-9]+ over plain http, an "
                "endpoint named by the repository's stored config.*confirm it.*config="
            ),
        ):
            arr[:]
    assert seen == []  # not one request reached the endpoint

    # anonymous reads send nothing secret: allowed without confirmation
    anon = frazil.Repository.open(
        storage,
        authorize_virtual_chunk_access={"s3://trusted-data": frazil.s3_anonymous_credentials()},
    )
    with pytest.raises(frazil.FrazilError):
        zarr.open_array(anon.readonly_session("main").store, path="x", mode="r")[:]
    assert seen and all("authorization" not in h for h in seen)
    seen.clear()

    # a reader who confirms the endpoint (passes the same container) sends to it
    mine = RepositoryConfig()
    mine.set_virtual_chunk_container(VirtualChunkContainer("s3://trusted-data", hostile))
    confirmed = frazil.Repository.open(
        storage, config=mine, authorize_virtual_chunk_access=credentials
    )
    with pytest.raises(frazil.FrazilError):  # the recorder answers 404
        zarr.open_array(confirmed.readonly_session("main").store, path="x", mode="r")[:]
    assert seen and "AKIAREADERSKEY" in seen[0].get("authorization", "")


def test_reader_settings_replace_the_stored_endpoint(
    tmp_path: Path, recorder: tuple[str, list[dict[str, str]]]
) -> None:
    """A reader passing the container with its own settings uses those, never the stored
    endpoint (and needs no confirmation of it)."""
    evil, seen = recorder
    config = RepositoryConfig.default()
    config.set_virtual_chunk_container(
        VirtualChunkContainer("s3://data", s3_store(endpoint_url=evil, allow_http=True))
    )
    storage = frazil.local_filesystem_storage(tmp_path / "repo")
    frazil.Repository.create(storage, config)
    mine = RepositoryConfig()
    mine.set_virtual_chunk_container(
        VirtualChunkContainer("s3://data", s3_store(region="eu-west-1"))
    )
    reader = frazil.Repository.open(
        storage,
        config=mine,
        authorize_virtual_chunk_access={
            "s3://data": s3_credentials(access_key_id="k", secret_access_key="s")
        },
    )
    assert reader.config.virtual_chunk_containers["s3://data"].store.endpoint_url is None
    container, _ = reader.virtual_resolver.authorized_container("s3://data/x.nc")
    assert container.store.region == "eu-west-1"
    assert seen == []


def test_confirmation_travels_with_a_pickled_repository(tmp_path: Path) -> None:
    import pickle

    config = RepositoryConfig.default()
    config.set_virtual_chunk_container(
        VirtualChunkContainer(
            "s3://data", s3_store(endpoint_url="http://127.0.0.1:9", allow_http=True)
        )
    )
    storage = frazil.local_filesystem_storage(tmp_path / "repo")
    frazil.Repository.create(storage, config)
    auth = {"s3://data": s3_credentials(access_key_id="k", secret_access_key="s")}
    unconfirmed = pickle.loads(
        pickle.dumps(frazil.Repository.open(storage, authorize_virtual_chunk_access=auth))
    )
    with pytest.raises(VirtualChunkError, match="would send your credentials"):
        unconfirmed.virtual_resolver.authorized_container("s3://data/x")
    confirmed = pickle.loads(
        pickle.dumps(
            frazil.Repository.open(storage, config=config, authorize_virtual_chunk_access=auth)
        )
    )
    confirmed.virtual_resolver.authorized_container("s3://data/x")


# -- 3. HTTP redirects stay on the container's origin -------------------------------------------


def serve(handler: type[http.server.BaseHTTPRequestHandler]) -> tuple[Any, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_redirect_to_another_host_is_refused(tmp_path: Path) -> None:
    other_bytes = b"bytes from the attacker's host!!"
    good_bytes = b"bytes from the container's host!"

    class Other(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{len(other_bytes) - 1}/32")
            self.send_header("Content-Length", str(len(other_bytes)))
            self.end_headers()
            self.wfile.write(other_bytes)

    other, other_url = serve(Other)

    class Origin(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/data/away.bin":
                self.send_response(302)
                self.send_header("Location", f"{other_url}/x.bin")
            elif self.path == "/data/moved.bin":  # a redirect within the origin is fine
                self.send_response(301)
                self.send_header("Location", "/data/good.bin")
            else:
                self.send_response(206)
                self.send_header("Content-Range", f"bytes 0-{len(good_bytes) - 1}/32")
                self.send_header("Content-Length", str(len(good_bytes)))
                self.end_headers()
                self.wfile.write(good_bytes)
                return
            self.send_header("Content-Length", "0")
            self.end_headers()

    origin, origin_url = serve(Origin)
    try:
        prefix = f"{origin_url}/data"
        config = RepositoryConfig.default()
        config.set_virtual_chunk_container(VirtualChunkContainer(prefix, frazil.http_store()))
        repo = frazil.Repository.create(
            frazil.local_filesystem_storage(tmp_path / "repo"),
            config,
            authorize_virtual_chunk_access={prefix: None},
        )
        s = repo.writable_session("main")
        zarr.create_array(
            s.store, name="x", shape=(64,), chunks=(32,), dtype="u1", compressors=None, fill_value=0
        )
        s.store.set_virtual_ref("x/c/0", f"{prefix}/away.bin", offset=0, length=32)
        s.store.set_virtual_ref("x/c/1", f"{prefix}/moved.bin", offset=0, length=32)
        s.commit("refs")
        ro = repo.readonly_session("main")
        with pytest.raises(
            frazil.StorageError, match="redirects to http://127.0.0.1:[0-9]+.*outside"
        ):
            frazil.runtime.run(ro.get_chunk("/x", (0,)))
        assert frazil.runtime.run(ro.get_chunk("/x", (1,))) == good_bytes
    finally:
        for server in (origin, other):
            server.shutdown()
            server.server_close()


# -- 7. hostile JSON and sizes --------------------------------------------------------------


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def test_load_json_refuses_deep_nesting_before_parsing() -> None:
    for n in (MAX_JSON_DEPTH + 1, 10_000, 1_000_000):
        with pytest.raises(FormatError, match="nested.*levels deep"):
            load_json(deep(n), "doc")
    assert load_json(deep(MAX_JSON_DEPTH), "doc") is not None
    # brackets inside strings do not count
    assert load_json(json.dumps({"a": "[" * 10_000}).encode(), "doc") == {"a": "[" * 10_000}
    # text (as Parquet string columns give it) is held to the same rules as bytes
    for n in (MAX_JSON_DEPTH + 1, 10_000):
        with pytest.raises(FormatError, match="nested.*levels deep"):
            load_json(deep(n).decode(), "doc")
    assert load_json(deep(MAX_JSON_DEPTH).decode(), "doc") is not None
    assert load_json(json.dumps({"a": "[" * 10_000}), "doc") == {"a": "[" * 10_000}


@pytest.mark.parametrize("doc", ['{"a": 1}', ' {"a": 1}\n', '{"a":1}', "1", '"x"'])
def test_load_json_reads_text_and_bytes_alike(doc: str) -> None:
    assert load_json(doc, "doc") == load_json(doc.encode(), "doc") == json.loads(doc)


@pytest.mark.parametrize("doc", ['{"a": 1} {"b": 2}', '{"a": 1', "", " ", '{"a": 1}]', "NaNx"])
def test_load_json_refuses_invalid_text(doc: str) -> None:
    with pytest.raises(FormatError, match="doc: not valid JSON"):
        load_json(doc, "doc")
    with pytest.raises(FormatError, match="doc: not valid JSON"):
        load_json(doc.encode(), "doc")


def test_deep_zarr_json_in_a_snapshot(tmp_path: Path) -> None:
    storage = frazil.local_filesystem_storage(tmp_path / "repo")
    repo = frazil.Repository.create(storage)
    s = repo.writable_session("main")
    zarr.group(s.store)
    hostile = (
        b'{"zarr_format": 3, "node_type": "group", "attributes": {"a": ' + deep(50_000) + b"}}"
    )
    s._changes.set_node(NodeRecord("/g", frazil.format.NodeId.new(), "group", hostile))
    s.commit("a hostile group")
    reader = frazil.Repository.open(storage)
    ro = reader.readonly_session("main")
    with pytest.raises(FormatError, match="node '/g'.*nested.*levels deep"):
        zarr.open_group(ro.store, path="g", mode="r")
    # the maintenance commands report or survive it; none dies of a RecursionError
    reader.fsck()
    reader.chunk_storage_stats()
    reader.garbage_collect(frazil_now(), dry_run=True)


def frazil_now() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.UTC)


@pytest.mark.parametrize(
    "where", ["config.json", "refs/branch.main/ref.json", "refs/branch.dev/ref.json"]
)
def test_deep_json_in_config_and_refs(tmp_path: Path, where: str) -> None:
    storage = frazil.local_filesystem_storage(tmp_path / "repo")
    repo = frazil.Repository.create(storage)
    repo.create_branch("dev", repo.lookup_branch("main"))
    (tmp_path / "repo" / where).write_bytes(deep(100_000))
    if where == "config.json":
        with pytest.raises(FormatError, match="config.json.*nested"):
            frazil.Repository.open(storage)
        return
    name = where.split(".", 1)[1].split("/")[0]
    reader = frazil.Repository.open(storage) if name != "main" else None
    if reader is None:  # main itself is hostile: the repository cannot be used
        repo2 = frazil.Repository.__new__(frazil.Repository)
        repo2.__init__(storage, repo.config)  # type: ignore[misc]
        reader = repo2
    with pytest.raises(FormatError, match="nested.*levels deep"):
        reader.lookup_branch(name)
    report = reader.fsck()
    assert not report.ok and any("nested" in p for p in map(str, report.problems))
    for call in (
        lambda: reader.garbage_collect(frazil_now()),
        lambda: reader.expire_snapshots(frazil_now()),
    ):
        with pytest.raises(FormatError, match="nested"):
            call()


def test_virtual_length_far_past_the_file_allocates_nothing(tmp_path: Path) -> None:
    allowed, _, prefix = local_layout(tmp_path)
    repo = hostile_local_repo(tmp_path, prefix, [f"{prefix}/ok.bin"], length=2**40)
    tracemalloc.start()
    try:
        with pytest.raises(VirtualChunkError, match="shorter than referenced"):
            read_chunk(repo, (0,))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


# -- Parquet objects with extra, missing or retyped columns -----------------------------------


def _rewrite(path: Path, change: str, column: str) -> None:
    table = pq.read_table(path)
    meta = table.schema.metadata
    if change == "extra":
        table = table.append_column("surprise", pa.array(np.zeros(len(table), np.int8)))
    elif change == "missing":
        table = table.drop_columns([column])
    else:  # retyped: the same name, another type
        i = table.schema.get_field_index(column)
        table = table.set_column(
            i, column, pa.array([str(v) for v in table.column(column).to_pylist()])
        )
    pq.write_table(table.replace_schema_metadata(meta), path)


@pytest.mark.parametrize("change", ["extra", "missing", "retyped"])
@pytest.mark.parametrize(
    "folder,column",
    [("manifests", "length"), ("snapshots", "segments"), ("transactions", "chunks")],
)
def test_parquet_with_changed_columns(
    tmp_path: Path, change: str, folder: str, column: str
) -> None:
    """Columns beyond the schema are ignored; a missing or retyped one is a FormatError
    naming the object. (The referrer's checksum also catches the rewrite: checked here
    with the checksum check bypassed, as a hostile writer would recompute it.)"""
    from frazil.format import decode_manifest_parts, decode_snapshot, decode_transaction_log

    storage = frazil.local_filesystem_storage(tmp_path / "repo")
    repo = frazil.Repository.create(storage)
    s = repo.writable_session("main")
    a = zarr.create_array(s.store, name="a", shape=(8,), chunks=(2,), dtype="i4", fill_value=0)
    a[:] = np.arange(8)
    sid = s.commit("data")
    key = f"{folder}/" + (
        sid if folder != "manifests" else os.listdir(tmp_path / "repo" / "manifests")[0]
    )
    path = tmp_path / "repo" / key
    _rewrite(path, change, column)
    decode = {
        "manifests": decode_manifest_parts,
        "snapshots": decode_snapshot,
        "transactions": decode_transaction_log,
    }[folder]
    if change == "extra":
        decode(path.read_bytes(), key)
        return
    with pytest.raises(FormatError, match=f"{key}.*column '{column}'"):
        decode(path.read_bytes(), key)
