"""Icechunk's public names in frazil: aliases, logging, and the Repository and Session
methods added so that ``import frazil as icechunk`` keeps Icechunk code running."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import logging
import os
import pickle
from collections.abc import Iterator
from importlib import metadata
from typing import Any

import numpy as np
import pytest
import zarr

import frazil
import frazil.distributed
import frazil.xarray
from frazil.logs import TRACE, parse_filter


@pytest.fixture
def repo() -> frazil.Repository:
    return frazil.Repository.create(frazil.in_memory_storage())


def write(session: frazil.Session, name: str = "x", value: int = 1) -> None:
    root = zarr.open_group(session.store, mode="a")
    arr = root.require_array(name, shape=(8,), chunks=(2,), dtype="i8", fill_value=0)
    arr[:] = value


def shape(fn: Any) -> str:
    """A signature as parameter names, kinds and defaults (annotations left out)."""
    sig = inspect.signature(fn)
    return str(
        sig.replace(
            parameters=[p.replace(annotation=p.empty) for p in sig.parameters.values()],
            return_annotation=sig.empty,
        )
    )


# -- names -----------------------------------------------------------------------------------
def test_aliases_are_frazils_own_objects() -> None:
    from frazil import IcechunkStore
    from frazil.zarr_adapter.store import FrazilStore

    assert IcechunkStore is FrazilStore and frazil.IcechunkStore is FrazilStore
    assert frazil.IcechunkError is frazil.FrazilError
    for error in (frazil.ConflictError, frazil.RebaseFailedError, frazil.NotFoundError):
        assert issubclass(error, frazil.IcechunkError)
    assert frazil.xarray.to_icechunk is frazil.xarray.to_frazil
    assert frazil.distributed.merge_sessions.__module__ == "frazil.distributed"
    assert callable(frazil.distributed.extract_session)
    from frazil.maintenance import ChunkStorageStats, GCSummary

    assert frazil.GCSummary is GCSummary and frazil.ChunkStorageStats is ChunkStorageStats
    for name in ("Diff", "SnapshotInfo", "ConflictError", "RebaseFailedError", "GCSummary"):
        assert name in frazil.__all__ and getattr(frazil, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Nonesuch'"):
        frazil.Nonesuch  # noqa: B018


def test_version_and_spec_version() -> None:
    assert frazil.__version__ == metadata.version("frazil")
    from frazil.format.common import WRITE_VERSION

    assert frazil.spec_version() == WRITE_VERSION and isinstance(frazil.spec_version(), int)


def test_extract_session(repo: frazil.Repository) -> None:
    session = repo.writable_session("main")
    write(session)
    arr = zarr.open_array(session.store, path="x")
    assert frazil.distributed.extract_session(arr, axis=0, keepdims=True) is session
    with pytest.raises(frazil.InvalidInputError, match="not stored in a frazil session"):
        frazil.distributed.extract_session(zarr.zeros((2,), store=zarr.storage.MemoryStore()))


# -- logging --------------------------------------------------------------------------------
@pytest.fixture
def clean_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("FRAZIL_LOG", "ICECHUNK_LOG"):
        monkeypatch.delenv(var, raising=False)
    names = ("frazil", "frazil.session", "s3fs")
    before = {n: logging.getLogger(n).level for n in names}
    handlers = list(logging.getLogger("frazil").handlers)
    yield
    for n, level in before.items():
        logging.getLogger(n).setLevel(level)
    logging.getLogger("frazil").handlers[:] = handlers


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("debug", {"frazil": logging.DEBUG}),
        ("trace", {"frazil": TRACE}),
        ("icechunk=trace,info", {"frazil": TRACE}),
        ("info,icechunk=trace", {"frazil": TRACE}),
        ("frazil=info", {"frazil": logging.INFO}),
        ("icechunk", {"frazil": TRACE}),
        ("icechunk::session=debug,warn", {"frazil.session": logging.DEBUG, "frazil": 30}),
        ("s3fs=debug,error", {"s3fs": logging.DEBUG, "frazil": logging.ERROR}),
        ("WARN", {"frazil": logging.WARNING}),
        ("off", {"frazil": logging.CRITICAL + 10}),
        ("", {}),
        ("icechunk:debug", {"frazil": logging.DEBUG}),  # ``target:level`` as people write it
        ("tokio::io:warn,info", {"tokio.io": logging.WARNING, "frazil": logging.INFO}),
        ("icechunk::repository:trace", {"frazil.repository": TRACE}),
    ],
)
def test_parse_filter(spec: str, expected: dict[str, int]) -> None:
    assert parse_filter(spec) == expected


@pytest.mark.parametrize(
    "spec",
    ["icechunk=loud", "=debug", "a b=info", "x[span]=info", "icechunk=debug=info", "a:b:c"],
)
def test_invalid_filters_are_refused(spec: str, clean_logs: None) -> None:
    with pytest.raises(frazil.InvalidInputError, match="log filter"):
        frazil.set_logs_filter(spec)


def test_set_logs_filter_sets_levels_and_shows_logs(
    clean_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    frazil.set_logs_filter("icechunk=debug,s3fs=error")
    assert logging.getLogger("frazil").level == logging.DEBUG
    assert logging.getLogger("s3fs").level == logging.ERROR
    logging.getLogger("frazil.session").debug("a debug line")
    assert "a debug line" in capsys.readouterr().out  # stdout, as Icechunk prints them
    frazil.set_logs_filter("error")  # directives replace the previous ones
    assert logging.getLogger("frazil").level == logging.ERROR
    assert logging.getLogger("s3fs").level == logging.NOTSET
    logging.getLogger("frazil").info("hidden")
    assert "hidden" not in capsys.readouterr().out
    ours = [
        h for h in logging.getLogger("frazil").handlers if getattr(h, "_frazil_logs_handler", 0)
    ]
    assert len(ours) == 1  # one handler, however often it is called


def test_filters_from_the_environment(clean_logs: None, monkeypatch: pytest.MonkeyPatch) -> None:
    frazil.initialize_logs()  # no variable: nothing changes
    assert not [
        h for h in logging.getLogger("frazil").handlers if getattr(h, "_frazil_logs_handler", 0)
    ]
    monkeypatch.setenv("ICECHUNK_LOG", "icechunk=info")
    frazil.initialize_logs()
    assert logging.getLogger("frazil").level == logging.INFO
    monkeypatch.setenv("FRAZIL_LOG", "debug")  # frazil's own variable first
    frazil.set_logs_filter(None)
    assert logging.getLogger("frazil").level == logging.DEBUG


def test_logs_show_only_when_asked(clean_logs: None, capfd: pytest.CaptureFixture[str]) -> None:
    frazil.Repository.create(frazil.in_memory_storage())
    assert capfd.readouterr().out == ""  # nothing by default
    frazil.set_logs_filter("debug")
    frazil.Repository.create(frazil.in_memory_storage())
    assert "Creating Repository" in capfd.readouterr().out
    frazil.set_logs_filter("warn")
    frazil.Repository.create(frazil.in_memory_storage())
    assert capfd.readouterr().out == ""


@pytest.mark.parametrize(
    ("spec", "warned"),
    [
        ("icehunk:trace", ["icehunk"]),
        ("debug,icecunk::store::manager:debug,tokio::io:warn", ["icecunk"]),
        ("frazzil=debug", ["frazzil"]),
        ("icechunk:debug,frazil::session=info", []),
        ("ice:debug,chunk:info,tokio:debug,my_app::module:warn,trace", []),
    ],
)
def test_misspelt_targets_are_warned_about(
    spec: str, warned: list[str], clean_logs: None, capfd: pytest.CaptureFixture[str]
) -> None:
    frazil.set_logs_filter(spec)
    err = capfd.readouterr().err
    assert err.count("WARNING") == len(warned)
    for name in warned:
        assert repr(name) in err
    assert "tokio" not in err


def test_small_caches_bound_and_warn(clean_logs: None, capfd: pytest.CaptureFixture[str]) -> None:
    frazil.set_logs_filter("warn")
    config = frazil.RepositoryConfig(
        caching=frazil.CachingConfig(num_chunk_refs=4, num_snapshot_nodes=10)
    )
    repo = frazil.Repository.create(frazil.in_memory_storage(), config=config)
    assert repo.reader.manifests.budget == 4 and repo.reader.snapshots.budget == 10
    session = repo.writable_session("main")
    for name in ("a", "b"):
        zarr.create_array(session.store, name=name, shape=(10,), chunks=(2,), dtype="i8")[:] = 1
    session.commit("two arrays of 5 chunks")
    out = capfd.readouterr().out
    assert out.count("WARNING") == 2  # once for manifests, once for snapshots
    assert "5 chunk references" in out and "keep 4 references" in out
    assert "3 nodes" in out and "keep 10 nodes" in out
    ro = repo.readonly_session("main")
    assert (ro.store and zarr.open_array(ro.store, path="a")[:] == 1).all()
    assert capfd.readouterr().out == ""  # warned once per repository
    # no CachingConfig: frazil's own bounds, no warning
    plain = frazil.Repository.create(frazil.in_memory_storage())
    assert plain.reader.manifests.budget == 512 << 20


def test_print_debug_info(capsys: pytest.CaptureFixture[str]) -> None:
    frazil.print_debug_info()
    out = capsys.readouterr().out
    assert f"frazil:  {frazil.__version__}" in out
    assert f"zarr:  {zarr.__version__}" in out and f"numpy:  {np.__version__}" in out
    assert "platform:" in out and "python:" in out


# -- Repository -----------------------------------------------------------------------------
def test_transaction_commits_on_clean_exit(repo: frazil.Repository) -> None:
    with repo.transaction("main", message="add x", metadata={"by": "test"}) as store:
        assert isinstance(store, frazil.IcechunkStore)
        zarr.create_array(store, name="x", shape=(4,), dtype="i4", fill_value=0)[:] = 7
    latest = next(repo.ancestry(branch="main"))
    assert latest.message == "add x" and latest.metadata == {"by": "test"}
    arr = zarr.open_array(repo.readonly_session("main").store, path="x", mode="r")
    assert arr[:].tolist() == [7] * 4


def test_transaction_discards_on_exception(repo: frazil.Repository) -> None:
    tip = repo.lookup_branch("main")
    with pytest.raises(RuntimeError, match="boom"):
        with repo.transaction("main", message="never") as store:
            zarr.create_array(store, name="x", shape=(4,), dtype="i4")
            raise RuntimeError("boom")
    assert repo.lookup_branch("main") == tip


def test_transaction_rebases_with_a_solver(repo: frazil.Repository) -> None:
    with repo.transaction("main", message="root") as store:
        zarr.open_group(store, mode="w")
    with repo.transaction("main", message="a", rebase_with=frazil.ConflictDetector()) as store:
        other = repo.writable_session("main")
        write(other, "y")
        other.commit("meanwhile")
        zarr.create_array(store, name="x", shape=(4,), dtype="i4")
    assert [s.message for s in repo.ancestry(branch="main")][:3] == ["a", "meanwhile", "root"]


def test_default_commit_metadata(repo: frazil.Repository) -> None:
    assert repo.default_commit_metadata() == {}
    repo.set_default_commit_metadata({"author": "ann", "run": 1})
    got = repo.default_commit_metadata()
    got["author"] = "changed"  # a copy
    assert repo.default_commit_metadata() == {"author": "ann", "run": 1}
    session = repo.writable_session("main")
    write(session)
    session.commit("one", metadata={"run": 2, "extra": True})
    assert next(repo.ancestry(branch="main")).metadata == {"author": "ann", "run": 2, "extra": True}
    with repo.transaction("main", message="two") as store:
        zarr.create_array(store, name="y", shape=(1,), dtype="i4")
    assert next(repo.ancestry(branch="main")).metadata == {"author": "ann", "run": 1}
    with pytest.raises(frazil.InvalidInputError, match="JSON"):
        repo.set_default_commit_metadata({"bad": object()})
    repo.set_default_commit_metadata({})
    session = repo.writable_session("main")
    write(session, "z")
    session.commit("three")
    assert next(repo.ancestry(branch="main")).metadata == {}


def test_readonly_session_as_of(repo: frazil.Repository) -> None:
    ids = []
    for value in (1, 2, 3):
        session = repo.writable_session("main")
        write(session, value=value)
        ids.append(session.commit(f"write {value}"))
    infos = {i.id: i for i in repo.ancestry(branch="main")}
    for k, sid in enumerate(ids):
        session = repo.readonly_session("main", as_of=infos[sid].written_at)
        assert session.snapshot_id == sid
        assert zarr.open_array(session.store, path="x", mode="r")[0] == k + 1
    later = repo.readonly_session("main", as_of=dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    assert later.snapshot_id == ids[-1]
    first = min(i.written_at for i in infos.values())
    with pytest.raises(frazil.NotFoundError, match="at or before"):
        repo.readonly_session("main", as_of=first - dt.timedelta(seconds=1))
    with pytest.raises(frazil.InvalidInputError, match="timezone-aware"):
        repo.readonly_session("main", as_of=dt.datetime.now())  # noqa: DTZ005
    with pytest.raises(frazil.InvalidInputError, match="branch= only"):
        repo.readonly_session(snapshot_id=ids[0], as_of=dt.datetime.now(dt.UTC))


def test_expire_snapshots_deletes_expired_branches_and_tags(repo: frazil.Repository) -> None:
    initial = repo.lookup_branch("main")
    repo.create_branch("stale", initial)
    repo.create_tag("old", initial)
    session = repo.writable_session("main")
    write(session)
    fresh = session.commit("fresh")
    repo.create_branch("live", fresh)
    repo.create_tag("new", fresh)
    cutoff = repo.lookup_snapshot(fresh).written_at
    assert repo.lookup_snapshot(initial).written_at < cutoff
    repo.expire_snapshots(cutoff)  # by default no ref is deleted
    assert repo.list_branches() == {"main", "stale", "live"}
    repo.expire_snapshots(cutoff, delete_expired_branches=True)
    assert repo.list_branches() == {"main", "live"} and repo.list_tags() == {"old", "new"}
    repo.expire_snapshots(cutoff, delete_expired_tags=True)
    assert repo.list_tags() == {"new"}
    old_main = frazil.Repository.create(frazil.in_memory_storage())
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    old_main.expire_snapshots(later, delete_expired_branches=True)
    assert old_main.list_branches() == {"main"}  # main is never deleted
    with pytest.raises(frazil.InvalidInputError, match="delete_expired_branches"):
        repo.expire_snapshots(cutoff, delete_expired_branches="yes")  # type: ignore[arg-type]
    with pytest.raises(frazil.InvalidInputError, match="timezone-aware"):
        repo.expire_snapshots(dt.datetime.now(), delete_expired_branches=True)  # noqa: DTZ005
    assert repo.list_branches() == {"main", "live"}


def test_total_chunks_storage(repo: frazil.Repository) -> None:
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="a")
    big = root.create_array("big", shape=(4096,), chunks=(2048,), dtype="f8", compressors=None)
    big[:] = np.arange(4096.0)
    session.commit("big chunks")
    with pytest.warns(DeprecationWarning, match="chunk_storage_stats"):
        total = repo.total_chunks_storage(max_snapshots_in_memory=1)
    assert total == repo.chunk_storage_stats().native_bytes > 0


def test_inspect_snapshot(repo: frazil.Repository) -> None:
    session = repo.writable_session("main")
    write(session)
    sid = session.commit("one", metadata={"k": 1})
    text = repo.inspect_snapshot(sid)
    assert "\n" in text and "\n" not in repo.inspect_snapshot(sid, pretty=False)
    doc = json.loads(text)
    assert doc["id"] == sid and doc["commit_message"] == "one" and doc["metadata"] == {"k": 1}
    assert doc["parent_id"] == repo.lookup_snapshot(sid).parent_id
    assert doc["flushed_at"].endswith("Z")
    nodes = {n["path"]: n for n in doc["nodes"]}
    assert nodes["/"]["node_type"] == "group" and "manifest_refs" not in nodes["/"]
    refs = nodes["/x"]["manifest_refs"]
    assert [r["extents"] for r in refs] == [[[0, 4]]]  # chunks 0..3, as [first, last + 1]
    assert {m["id"] for m in doc["manifests"]} == {r["id"] for r in refs}
    assert sum(m["num_chunk_refs"] for m in doc["manifests"]) == 4
    with pytest.raises(frazil.NotFoundError):
        repo.inspect_snapshot("0" * len(sid))


def test_async_forms(repo: frazil.Repository) -> None:
    async def go() -> None:
        storage = frazil.in_memory_storage()
        assert not await frazil.Repository.exists_async(storage)
        created = await frazil.Repository.create_async(storage)
        assert await frazil.Repository.exists_async(storage)
        opened = await frazil.Repository.open_async(storage)
        again = await frazil.Repository.open_or_create_async(storage)
        tip = await opened.lookup_branch_async("main")
        assert tip == created.lookup_branch("main") == again.lookup_branch("main")
        await opened.create_branch_async("dev", tip)
        assert await opened.list_branches_async() == {"main", "dev"}
        session = await opened.writable_session_async("dev")
        write(session)
        sid = await asyncio.to_thread(session.commit, "on dev")
        diff = await opened.diff_async(from_snapshot_id=tip, to_branch="dev")
        assert "/x" in diff.new_arrays
        assert (await opened.lookup_snapshot_async(sid)).message == "on dev"
        with pytest.raises(frazil.NotFoundError):
            await opened.lookup_branch_async("nonesuch")

    asyncio.run(go())


def test_async_forms_have_the_sync_signatures() -> None:
    names = [n for n in dir(frazil.Repository) if n.endswith("_async")]
    # Icechunk 1.x's 26, and 2.x's metadata, spec version, ops_log and rearrange ones
    assert len(names) == 32
    assert inspect.isasyncgen(frazil.Repository.create(frazil.in_memory_storage()).ops_log_async())
    for name in set(names) - {
        "create_async",
        "open_async",
        "open_or_create_async",
        "ops_log_async",
    }:
        sync = getattr(frazil.Repository, name.removesuffix("_async"))
        assert inspect.iscoroutinefunction(getattr(frazil.Repository, name)), name
        assert shape(getattr(frazil.Repository, name)) == shape(sync), name


OPENER = "(storage, config=None, authorize_virtual_chunk_access=None)"
# Icechunk 1.1.21's signatures of the names implemented here (annotations left out)
ICECHUNK_SIGNATURES = {
    "Repository.transaction": (
        "(self, branch, *, message, metadata=None, rebase_with=None, rebase_tries=1000)"
    ),
    "Repository.set_default_commit_metadata": "(self, metadata)",
    "Repository.default_commit_metadata": "(self)",
    "Repository.readonly_session": "(self, branch=None, *, tag=None, snapshot_id=None, as_of=None)",
    "Repository.total_chunks_storage": (
        "(self, *, max_snapshots_in_memory=50, max_compressed_manifest_mem_bytes=536870912, "
        "max_concurrent_manifest_fetches=500)"
    ),
    "Repository.inspect_snapshot": "(self, snapshot_id, *, pretty=True)",
    "Repository.create_async": OPENER[:-1] + ", *, spec_version=None)",  # 2.x's keyword
    "Repository.open_async": OPENER,
    "Repository.open_or_create_async": OPENER,
    "Repository.exists_async": "(storage)",
    "Repository.fetch_config": "(storage)",
    "Repository.fetch_config_async": "(storage)",
    "Repository.reopen": "(self, config=None, authorize_virtual_chunk_access=None)",
    "Repository.reopen_async": "(self, config=None, authorize_virtual_chunk_access=None)",
    "Repository.authorized_virtual_container_prefixes": "(self)",
    "Repository.async_ancestry": "(self, *, branch=None, tag=None, snapshot_id=None)",
    "Repository.rewrite_manifests": "(self, message, *, branch, metadata=None)",
    "Repository.rewrite_manifests_async": "(self, message, *, branch, metadata=None)",
    "RepositoryConfig.default": "()",
    "RepositoryConfig.merge": "(self, other)",
    "Session.chunk_coordinates": "(self, array_path, batch_size=1000)",
    "Session.allow_pickling": "(self)",
    "Session.flush": "(self, message, metadata=None)",
    "Session.flush_async": "(self, message, metadata=None)",
    "set_logs_filter": "(log_filter_directive)",
    "initialize_logs": "()",
    "print_debug_info": "()",
    "spec_version": "()",
    "distributed.merge_sessions": "(*sessions)",
    "distributed.extract_session": "(zarray, axis=None, keepdims=None)",
}


@pytest.mark.parametrize("name", sorted(ICECHUNK_SIGNATURES))
def test_signatures_match_icechunk(name: str) -> None:
    obj: Any = frazil
    for part in name.split("."):
        obj = getattr(obj, part)
    assert shape(obj) == ICECHUNK_SIGNATURES[name]


def test_expire_snapshots_signature_extends_icechunks() -> None:
    params = inspect.signature(frazil.Repository.expire_snapshots).parameters
    assert list(params)[:4] == [
        "self",
        "older_than",
        "delete_expired_branches",
        "delete_expired_tags",
    ]
    assert params["delete_expired_branches"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["delete_expired_tags"].default is False


# -- Session --------------------------------------------------------------------------------
def test_session_config(repo: frazil.Repository) -> None:
    assert repo.writable_session("main").config is repo.config
    assert repo.readonly_session("main").config is repo.config


def test_chunk_coordinates(repo: frazil.Repository) -> None:
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="a")
    arr = root.create_array("a", shape=(4, 6), chunks=(2, 2), dtype="i4", fill_value=0)
    arr[0:2, 2:6] = 1
    session.commit("two chunks")
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="a")[2:4, 0:2] = 5  # one more, staged

    async def collect(path: str, batch_size: int = 1000) -> list[tuple[int, ...]]:
        return [c async for c in session.chunk_coordinates(path, batch_size)]

    got = asyncio.run(collect("/a", batch_size=1))
    assert all(isinstance(c, tuple) for c in got)
    assert sorted(got) == [(0, 1), (0, 2), (1, 0)]
    with pytest.raises(frazil.NotFoundError):
        asyncio.run(collect("/nonesuch"))
    with pytest.raises(frazil.InvalidInputError, match="batch_size"):
        asyncio.run(collect("/a", batch_size=0))


def test_session_async_forms(repo: frazil.Repository) -> None:
    session = repo.writable_session("main")
    write(session)
    session.commit("x")
    session = repo.writable_session("main")
    fork = session.fork()
    zarr.open_array(fork.store, path="x")[0:2] = 9

    async def go() -> None:
        assert await session.chunk_type_async("/x", [0]) == frazil.ChunkType.INLINE
        assert await session.all_virtual_chunk_locations_async() == []
        await session.merge_async(fork)
        assert session.has_uncommitted_changes
        other = repo.writable_session("main")
        write(other, "y")
        other.commit("meanwhile")
        await session.rebase_async(frazil.ConflictDetector())
        assert session.snapshot_id == repo.lookup_branch("main")

    asyncio.run(go())
    session.commit("after rebase")
    assert zarr.open_array(repo.readonly_session("main").store, path="x")[0] == 9
    for method in (frazil.Session.chunk_type, frazil.Session.chunk_type_async):
        params = inspect.signature(method).parameters
        assert list(params) == ["self", "array_path", "chunk_coordinates"]
    reader = repo.readonly_session("main")
    assert reader.chunk_type(array_path="x", chunk_coordinates=(0,)) == frazil.ChunkType.INLINE


def test_flush_writes_a_snapshot_on_no_branch(repo: frazil.Repository) -> None:
    tip = repo.lookup_branch("main")
    repo.set_default_commit_metadata({"by": "flush"})
    session = repo.writable_session("main")
    write(session, value=4)
    sid = session.flush("detached", {"k": 1})
    assert repo.lookup_branch("main") == tip  # no branch moved
    assert session.read_only and session.branch is None and session.snapshot_id == sid
    info = repo.lookup_snapshot(sid)
    assert (info.parent_id, info.message, info.metadata) == (
        tip,
        "detached",
        {"by": "flush", "k": 1},
    )
    readback = repo.readonly_session(snapshot_id=sid)
    assert zarr.open_array(readback.store, path="x", mode="r")[:].tolist() == [4] * 8
    repo.create_branch("kept", sid)  # a ref makes it history like any other
    assert [i.id for i in repo.ancestry(branch="kept")][:2] == [sid, tip]
    with pytest.raises(frazil.ReadOnlyError):
        session.flush("again")
    empty = repo.writable_session("main")
    with pytest.raises(frazil.InvalidInputError, match="nothing to flush"):
        empty.flush("nothing")
    with pytest.raises(frazil.InvalidInputError, match="ForkSession"):
        empty.fork().flush("no")
    other = repo.writable_session("main")
    write(other, "y")
    assert asyncio.run(other.flush_async("async")) == other.snapshot_id


# Icechunk 1.1.21's public names (dir() of the module and classes, less zarr's Store API)
ICECHUNK_NAMES = {
    "": (
        "AnyAzureCredential AnyAzureStaticCredential AnyCredential AnyGcsCredential "
        "AnyGcsStaticCredential AnyObjectStoreConfig AnyS3Credential AzureCredentials "
        "AzureStaticCredentials BasicConflictSolver CachingConfig ChunkType CompressionAlgorithm "
        "CompressionConfig Conflict ConflictDetector ConflictError ConflictSolver ConflictType "
        "Credentials Diff ForkSession GCSummary GcsBearerCredential GcsCredentials "
        "GcsStaticCredentials IcechunkError IcechunkStore ManifestConfig ManifestFileInfo "
        "ManifestPreloadCondition ManifestPreloadConfig ManifestSplitCondition "
        "ManifestSplitDimCondition ManifestSplittingConfig ObjectStoreConfig RebaseFailedError "
        "Repository RepositoryConfig S3Credentials S3Options S3StaticCredentials Session "
        "SnapshotInfo SplitSizesDict Storage StorageConcurrencySettings StorageRetriesSettings "
        "StorageSettings VersionSelection VirtualChunkContainer VirtualChunkSpec "
        "azure_credentials azure_from_env_credentials azure_static_credentials azure_storage "
        "containers_credentials credentials from_dict gcs_credentials gcs_from_env_credentials "
        "gcs_refreshable_credentials gcs_static_credentials gcs_storage gcs_store http_store "
        "in_memory_storage initialize_logs local_filesystem_storage local_filesystem_store "
        "print_debug_info r2_storage repository s3_anonymous_credentials s3_credentials "
        "s3_from_env_credentials s3_refreshable_credentials s3_static_credentials s3_storage "
        "s3_store session set_logs_filter spec_version storage store tigris_storage to_dict vendor"
    ),
    "Repository": (
        "ancestry async_ancestry authorized_virtual_container_prefixes chunk_storage_stats "
        "chunk_storage_stats_async config create create_async create_branch create_branch_async "
        "create_tag create_tag_async default_commit_metadata delete_branch delete_branch_async "
        "delete_tag delete_tag_async diff diff_async exists exists_async expire_snapshots "
        "expire_snapshots_async fetch_config fetch_config_async garbage_collect "
        "garbage_collect_async inspect_snapshot inspect_snapshot_async list_branches "
        "list_branches_async list_tags list_tags_async lookup_branch lookup_branch_async "
        "lookup_snapshot lookup_snapshot_async lookup_tag lookup_tag_async open open_async "
        "open_or_create open_or_create_async readonly_session readonly_session_async reopen "
        "reopen_async reset_branch reset_branch_async rewrite_manifests rewrite_manifests_async "
        "save_config save_config_async set_default_commit_metadata storage total_chunks_storage "
        "total_chunks_storage_async transaction writable_session writable_session_async"
    ),
    "Session": (
        "all_virtual_chunk_locations all_virtual_chunk_locations_async allow_pickling branch "
        "chunk_coordinates chunk_type chunk_type_async commit commit_async config "
        "discard_changes flush flush_async fork has_uncommitted_changes merge merge_async "
        "rebase rebase_async snapshot_id status store read_only"
    ),
    "IcechunkStore": (
        "session set_partial_values set_virtual_ref set_virtual_ref_async set_virtual_refs "
        "set_virtual_refs_async sync_clear"
    ),
}


@pytest.mark.parametrize("owner", sorted(ICECHUNK_NAMES))
def test_compatibility_lists_every_icechunk_name(owner: str) -> None:
    """Every Icechunk 1.x public name is in COMPATIBILITY.md's table; a name the table calls
    *not yet* is absent from frazil, and one it does not is present."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "COMPATIBILITY.md").read_text()
    table = text[text.index("## Icechunk 1.x public names") :]
    heading = {"": "### Module level", "Repository": "### `Repository`"}.get(owner)
    section = table.split(heading or f"### `{owner}`")[1].split("\n### ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    target: Any = frazil if not owner else getattr(frazil, owner)
    for name in ICECHUNK_NAMES[owner].split():
        row = [r for r in rows if f"`{name}`" in r.split(" | ")[0]]
        assert row, f"{owner}.{name} is not in COMPATIBILITY.md's table"
        if name in ("repository", "session", "storage", "store", "credentials", "vendor"):
            continue  # submodules of another name
        if "| not yet" in row[0]:
            assert not hasattr(target, name), f"{owner}.{name} exists: the table says not yet"
        else:
            assert hasattr(target, name), f"{owner}.{name} is missing from frazil"


def test_error_message_object_store_storage_and_pickled_default_metadata(
    repo: frazil.Repository,
) -> None:
    err = frazil.InvalidInputError("bad thing at /x")
    assert isinstance(err, frazil.IcechunkError) and err.message == "bad thing at /x"
    params = inspect.signature(frazil.s3_object_store_storage).parameters
    assert list(params) == [
        "bucket",
        "prefix",
        "region",
        "endpoint_url",
        "allow_http",
        "access_key_id",
        "secret_access_key",
        "session_token",
        "expires_after",
        "anonymous",
        "from_env",
        "force_path_style",
    ]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    storage = frazil.s3_object_store_storage(
        bucket="b", prefix=None, endpoint_url="http://127.0.0.1:1", allow_http=True, anonymous=True
    )
    assert isinstance(storage, frazil.storage.S3Storage)
    repo.set_default_commit_metadata({"author": "test"})
    again = pickle.loads(pickle.dumps(repo))
    assert again.default_commit_metadata() == {"author": "test"}


def test_ancestry_of_a_deleted_snapshot_raises_at_the_call(tmp_path: Any) -> None:
    import shutil

    storage = frazil.local_filesystem_storage(tmp_path)
    frazil.Repository.create(storage)
    shutil.rmtree(tmp_path / "snapshots")
    repo = frazil.Repository.open(storage)
    with pytest.raises(frazil.NotFoundError, match="branch 'main'.*cannot be found"):
        repo.ancestry(branch="main")  # not only once iterated


class _NoJson:
    pass


@pytest.mark.parametrize("metadata", [{"k": _NoJson()}, ["not", "a", "dict"]])
def test_commit_metadata_of_the_wrong_type_is_a_type_error(
    repo: frazil.Repository, metadata: Any
) -> None:
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="a").attrs["x"] = 1
    with pytest.raises(frazil.InvalidTypeError) as info:
        session.commit("c", metadata)
    assert isinstance(info.value, TypeError) and isinstance(info.value, frazil.FrazilError)
    assert isinstance(info.value, frazil.InvalidInputError)
    if isinstance(metadata, dict):
        assert "object cannot be cast" in str(info.value)
    with pytest.raises(frazil.InvalidTypeError):
        repo.set_default_commit_metadata(metadata)


async def test_total_chunks_storage_async_warns_under_its_own_name(
    repo: frazil.Repository,
) -> None:
    with pytest.warns(DeprecationWarning, match="total_chunks_storage_async"):
        assert await repo.total_chunks_storage_async() == 0


def test_local_storage_repr_is_icechunks(tmp_path: Any) -> None:
    storage = frazil.local_filesystem_storage(tmp_path)
    assert repr(storage) == (
        f"ObjectStorage(backend=LocalFileSystemObjectStoreBackend(path={os.path.abspath(tmp_path)}))"
    )
    assert repr(pickle.loads(pickle.dumps(storage))) == repr(storage)


@pytest.mark.parametrize(
    ("env", "shown"),
    [
        ({"ICECHUNK_LOG": "debug"}, True),
        ({"FRAZIL_LOG": "frazil:debug"}, True),
        ({"ICECHUNK_LOG": "debug", "ICECHUNK_NO_LOGS": "1"}, False),
        ({}, False),
    ],
)
def test_logs_from_the_environment_at_import(env: dict[str, str], shown: bool) -> None:
    import subprocess
    import sys

    code = "import frazil; frazil.Repository.create(frazil.in_memory_storage())"
    clean = {k: v for k, v in os.environ.items() if "_LOG" not in k}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert ("Creating Repository" in out.stdout) is shown


def test_credentials_wrappers_and_unions() -> None:
    """Icechunk's ``Credentials.S3/.Gcs/.Azure`` and ``Any*Credential`` names, and the
    ``credentials`` module with every credential name."""
    s3 = frazil.s3_static_credentials(access_key_id="k", secret_access_key="s")
    gcs = frazil.gcs_credentials(bearer_token="t")
    azure = frazil.azure_credentials(access_key="a")
    for cred, kind in ((s3, frazil.Credentials.S3), (gcs, frazil.Credentials.Gcs)):
        assert kind(cred) is cred and isinstance(cred, kind)
        assert isinstance(cred, frazil.AnyCredential)
    assert frazil.Credentials.Azure(azure) is azure
    assert isinstance(s3, frazil.AnyS3Credential) and not isinstance(gcs, frazil.Credentials.S3)
    with pytest.raises(frazil.InvalidInputError, match="Credentials.Azure takes Azure"):
        frazil.Credentials.Azure(s3)
    assert frazil.credentials.gcs_refreshable_credentials is frazil.gcs_refreshable_credentials
    assert set(frazil.credentials.__all__) >= {"AnyCredential", "Credentials", "s3_credentials"}
