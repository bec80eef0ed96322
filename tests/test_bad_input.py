"""Bad inputs at the public boundary: each refused with a clear FrazilError saying what and
where, and nothing written to storage."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.core.sync import sync

import frazil
from frazil import (
    FormatError,
    FrazilError,
    InvalidInputError,
    NotFoundError,
    Repository,
    RepositoryConfig,
    runtime,
)
from frazil.format import common, decode_snapshot, decode_transaction_log, encode_snapshot
from frazil.format import manifest as manifest_fmt
from frazil.format import txlog as txlog_fmt
from frazil.format.config import decode_config, encode_config
from frazil.format.refs import decode_ref, encode_ref

PROTO = default_buffer_prototype()
TRIED: list[str] = []
"""Every bad input tried in this run (the summary test counts them)."""


@dataclass
class Ctx:
    """A small committed repository: group ``g``, arrays ``arr`` (2-D, native chunks) and
    ``small`` (1-D, inline chunks); tag ``v1``."""

    repo: Repository
    storage: frazil.Storage
    sid: str

    def store(self) -> Any:
        return self.repo.writable_session("main").store


def _listing(storage: frazil.Storage) -> list[tuple[str, int]]:
    return [(i.key, i.size) for i in runtime.run(storage.list_info(""))]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Ctx:
    storage = frazil.local_filesystem_storage(tmp_path_factory.mktemp("bad") / "repo")
    repo = Repository.create(storage)
    s = repo.writable_session("main")
    root = zarr.group(s.store)
    root.create_group("g")
    arr = root.create_array("arr", shape=(8, 8), chunks=(4, 4), dtype="i8", compressors=None)
    arr[...] = np.arange(64).reshape(8, 8)
    small = root.create_array("small", shape=(8,), chunks=(4,), dtype="i1", compressors=None)
    small[...] = np.arange(8)
    sid = s.commit("data")
    repo.create_tag("v1", sid)
    return Ctx(repo, storage, sid)


def refused(
    ctx_storage: frazil.Storage, call: Callable[[], Any], error: type[BaseException], *says: str
) -> FrazilError:
    """``call`` raises ``error`` (a FrazilError) whose message holds every one of ``says``,
    and the storage's objects (keys and sizes) are the same afterwards."""
    assert issubclass(error, FrazilError)
    before = _listing(ctx_storage)
    with pytest.raises(FrazilError) as info:
        call()
    after = _listing(ctx_storage)
    assert isinstance(info.value, error), f"{type(info.value).__name__}: {info.value}"
    for s in says:
        assert s in str(info.value), f"{s!r} not in {str(info.value)!r}"
    assert after == before, "something was written before the input was refused"
    return info.value


# -- branch and tag names ----------------------------------------------------------------------
BAD_NAMES: list[Any] = [
    "",
    "a/b",
    "/main",
    " main",
    "main ",
    "a\x00b",
    "tab\tname",
    "new\nline",
    "del\x7f",
    "x" * 256,
    "back\\slash",
]
NOT_STR: list[Any] = [5, 1.5, b"main", ["main"], {"main": 1}]
NAME_OPS: dict[str, tuple[str, Callable[[Ctx, Any], Any]]] = {
    "create_branch": ("branch", lambda c, n: c.repo.create_branch(n, c.sid)),
    "create_tag": ("tag", lambda c, n: c.repo.create_tag(n, c.sid)),
    "lookup_branch": ("branch", lambda c, n: c.repo.lookup_branch(n)),
    "lookup_tag": ("tag", lambda c, n: c.repo.lookup_tag(n)),
    "delete_branch": ("branch", lambda c, n: c.repo.delete_branch(n)),
    "delete_tag": ("tag", lambda c, n: c.repo.delete_tag(n)),
    "reset_branch": ("branch", lambda c, n: c.repo.reset_branch(n, c.sid)),
    "writable_session": ("branch", lambda c, n: c.repo.writable_session(n)),
    "readonly_session(branch)": ("branch", lambda c, n: c.repo.readonly_session(n)),
    "readonly_session(tag)": ("tag", lambda c, n: c.repo.readonly_session(tag=n)),
    "ancestry(branch)": ("branch", lambda c, n: list(c.repo.ancestry(branch=n))),
    "diff(to_tag)": ("tag", lambda c, n: c.repo.diff(from_snapshot_id=c.sid, to_tag=n)),
    "compact": ("branch", lambda c, n: c.repo.compact(n)),
}


@pytest.mark.parametrize("op", list(NAME_OPS))
@pytest.mark.parametrize("name", BAD_NAMES + NOT_STR, ids=repr)
def test_bad_ref_name(ctx: Ctx, op: str, name: Any) -> None:
    TRIED.append(f"name {op} {name!r}")
    what, call = NAME_OPS[op]
    says = [f"{what} name", repr(name) if isinstance(name, str) else type(name).__name__]
    refused(ctx.storage, lambda: call(ctx, name), InvalidInputError, *says)


# -- zarr keys ---------------------------------------------------------------------------------
BAD_KEYS = [
    "../zarr.json",
    "/zarr.json",
    "/arr/c/0/0",
    "arr//c/0/0",
    "arr/c/0/0/",
    "zarr.json/",
    "arr/./c/0/0",
    "arr/../arr/zarr.json",
    "g/../zarr.json",
    "a\\b/zarr.json",
    "arr\\c\\0\\0",
    "arr/c/0\\0",
    "",
    "/",
    "..",
    "arr/c/../c/0/0",
]
BUF = cpu.Buffer.from_bytes(b"\x00" * 128)
KEY_OPS: dict[str, Callable[[Any, str], Any]] = {
    "set": lambda st, k: sync(st.set(k, BUF)),
    "set_if_not_exists": lambda st, k: sync(st.set_if_not_exists(k, BUF)),
    "get": lambda st, k: sync(st.get(k, PROTO)),
    "get_partial_values": lambda st, k: sync(st.get_partial_values(PROTO, [(k, None)])),
    "exists": lambda st, k: sync(st.exists(k)),
    "getsize": lambda st, k: sync(st.getsize(k)),
    "delete": lambda st, k: sync(st.delete(k)),
    "set_virtual_ref": lambda st, k: st.set_virtual_ref(k, "s3://b/f", offset=0, length=8),
}


@pytest.mark.parametrize("op", list(KEY_OPS))
@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_zarr_key(ctx: Ctx, op: str, key: str) -> None:
    TRIED.append(f"key {op} {key!r}")
    store = ctx.store()
    refused(ctx.storage, lambda: KEY_OPS[op](store, key), InvalidInputError, "zarr key", repr(key))
    assert not store.session.has_uncommitted_changes


# -- chunk coordinates -------------------------------------------------------------------------
OUTSIDE = ["arr/c/2/0", "arr/c/0/2", "arr/c/99/99", "small/c/2", "small/c/12345678901234567890"]
WRONG_NDIM = ["arr/c/0", "arr/c/0/0/0", "small/c/0/0", "arr/c"]


@pytest.mark.parametrize("key", OUTSIDE + WRONG_NDIM)
def test_chunk_key_outside_the_grid_or_of_the_wrong_rank(ctx: Ctx, key: str) -> None:
    TRIED.append(f"chunk set {key!r}")
    store = ctx.store()
    path = key.split("/")[0]
    err = refused(ctx.storage, lambda: sync(store.set(key, BUF)), InvalidInputError, f"'/{path}'")
    assert "grid" in str(err) or "dimensions" in str(err)
    assert not store.session.has_uncommitted_changes


@pytest.mark.parametrize("key", OUTSIDE + WRONG_NDIM)
def test_virtual_ref_outside_the_grid_or_of_the_wrong_rank(ctx: Ctx, key: str) -> None:
    TRIED.append(f"chunk set_virtual_ref {key!r}")
    store = ctx.store()
    err = refused(
        ctx.storage,
        lambda: store.set_virtual_ref(key, "s3://b/f", offset=0, length=8),
        InvalidInputError,
        f"'/{key.split('/')[0]}'",
    )
    assert "grid" in str(err) or "dimensions" in str(err)


@pytest.mark.parametrize("key", OUTSIDE + WRONG_NDIM)
def test_reading_a_chunk_key_that_cannot_exist_is_a_missing_key(ctx: Ctx, key: str) -> None:
    """zarr asks for keys that may not exist: a well-formed key outside the grid reads as
    absent (None / False), like any other missing key, and writes nothing."""
    TRIED.append(f"chunk get {key!r}")
    store = ctx.repo.readonly_session("main").store
    before = _listing(ctx.storage)
    assert sync(store.get(key, PROTO)) is None
    assert sync(store.exists(key)) is False
    assert _listing(ctx.storage) == before


COORD_OPS: dict[str, Callable[[frazil.Session, tuple[Any, ...]], Any]] = {
    "chunk_type": lambda s, c: s.chunk_type("/arr", c),
    "set_virtual_ref": lambda s, c: s.set_virtual_ref("/arr", c, "s3://b/f", offset=0, length=8),
    "set_virtual_refs_arrays": lambda s, c: s.set_virtual_refs_arrays(
        "/arr", ["s3://b/f"], [0], [8], indices=[list(c)], validate_containers=False
    ),
}
BAD_COORDS: list[tuple[Any, ...]] = [(2, 0), (0, -1), (-1, 0), (0,), (0, 0, 0), ()]


@pytest.mark.parametrize("op", list(COORD_OPS))
@pytest.mark.parametrize("coord", BAD_COORDS, ids=repr)
def test_session_chunk_coordinates(ctx: Ctx, op: str, coord: tuple[int, ...]) -> None:
    TRIED.append(f"coord {op} {coord!r}")
    session = ctx.repo.writable_session("main")
    err = refused(ctx.storage, lambda: COORD_OPS[op](session, coord), InvalidInputError, "'/arr'")
    assert "grid" in str(err) or "dimensions" in str(err) or "x 2" in str(err)
    assert not session.has_uncommitted_changes


# -- zarr.json documents -----------------------------------------------------------------------
GOOD_ARRAY = {
    "zarr_format": 3,
    "node_type": "array",
    "shape": [4],
    "data_type": "int8",
    "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2]}},
    "chunk_key_encoding": {"name": "default"},
    "fill_value": 0,
    "codecs": [{"name": "bytes"}],
}
BAD_DOCS: dict[str, tuple[bytes, str]] = {
    "not json": (b"{not json", "not valid JSON"),
    "not utf-8": (b"\xff\xfe{}", "not valid JSON"),
    "empty": (b"", "not valid JSON"),
    "a list": (b"[1, 2]", "must be a JSON object"),
    "a string": (b'"zarr"', "must be a JSON object"),
    "null": (b"null", "must be a JSON object"),
    "zarr v2": (json.dumps({"zarr_format": 2}).encode(), "zarr_format 3"),
    "no zarr_format": (json.dumps({"node_type": "group"}).encode(), "zarr_format 3"),
    "zarr_format as text": (
        json.dumps({"zarr_format": "3", "node_type": "group"}).encode(),
        "zarr_format 3",
    ),
    "unknown node_type": (
        json.dumps({"zarr_format": 3, "node_type": "folder"}).encode(),
        "node_type",
    ),
    "no node_type": (json.dumps({"zarr_format": 3}).encode(), "node_type"),
    "negative shape": (json.dumps({**GOOD_ARRAY, "shape": [-1]}).encode(), "shape"),
    "shape not a list": (json.dumps({**GOOD_ARRAY, "shape": 4}).encode(), "shape"),
    "bad key encoding": (
        json.dumps(
            {
                **GOOD_ARRAY,
                "chunk_key_encoding": {"name": "default", "configuration": {"separator": "-"}},
            }
        ).encode(),
        "chunk_key_encoding",
    ),
}


@pytest.mark.parametrize("case", list(BAD_DOCS))
@pytest.mark.parametrize("key", ["zarr.json", "g/zarr.json", "new/zarr.json", "arr/zarr.json"])
def test_bad_zarr_json(ctx: Ctx, case: str, key: str) -> None:
    TRIED.append(f"zarr.json {case} at {key}")
    data, says = BAD_DOCS[case]
    store = ctx.store()
    path = "/" + key[: -len("/zarr.json")] if "/" in key else "/"
    refused(
        ctx.storage,
        lambda: sync(store.set(key, cpu.Buffer.from_bytes(data))),
        InvalidInputError,
        "zarr.json",
        repr(path),
        says,
    )
    assert not store.session.has_uncommitted_changes


# -- byte ranges -------------------------------------------------------------------------------
BAD_RANGES: list[Any] = [
    RangeByteRequest(-1, 4),
    RangeByteRequest(4, 2),
    RangeByteRequest(-10, -5),
    OffsetByteRequest(-3),
    SuffixByteRequest(-1),
    (0, 4),
    slice(0, 4),
    "0-4",
    4,
]


@pytest.mark.parametrize("rng", BAD_RANGES, ids=repr)
@pytest.mark.parametrize("key", ["arr/c/0/0", "small/c/0", "zarr.json"])
@pytest.mark.parametrize("op", ["get", "get_partial_values"])
def test_bad_byte_range(ctx: Ctx, op: str, key: str, rng: Any) -> None:
    TRIED.append(f"range {op} {key} {rng!r}")
    store = ctx.repo.readonly_session("main").store
    if op == "get":
        call: Callable[[], Any] = lambda: sync(store.get(key, PROTO, rng))  # noqa: E731
    else:
        call = lambda: sync(store.get_partial_values(PROTO, [(key, None), (key, rng)]))  # noqa: E731
    refused(ctx.storage, call, InvalidInputError, "byte")


@pytest.mark.parametrize(
    "rng",
    [
        RangeByteRequest(0, 2**70),
        RangeByteRequest(2**62, 2**63),
        OffsetByteRequest(2**64),
        SuffixByteRequest(2**64),
    ],
    ids=repr,
)
@pytest.mark.parametrize("key", ["arr/c/0/0", "small/c/0", "zarr.json"])
def test_huge_byte_range_is_cut_to_the_object(ctx: Ctx, key: str, rng: Any) -> None:
    """A range past the end reads what there is (as a file would), never other bytes."""
    TRIED.append(f"huge range {key} {rng!r}")
    store = ctx.repo.readonly_session("main").store
    whole = sync(store.get(key, PROTO)).to_bytes()
    got = sync(store.get(key, PROTO, rng)).to_bytes()
    start = rng.start if isinstance(rng, RangeByteRequest) else getattr(rng, "offset", 0)
    assert got == (whole if isinstance(rng, SuffixByteRequest) else whole[start:])


# -- wrong argument types and values -----------------------------------------------------------
def _session(c: Ctx) -> frazil.Session:
    return c.repo.writable_session("main")


def _changed(c: Ctx) -> frazil.Session:
    s = _session(c)
    zarr.open_array(s.store, path="small", mode="r+")[0] = 9
    return s


ARGS: dict[str, tuple[Callable[[Ctx], Any], type[FrazilError], tuple[str, ...]]] = {
    "snapshot id not an id": (
        lambda c: c.repo.readonly_session(snapshot_id="nope"),
        InvalidInputError,
        ("snapshot id", "'nope'"),
    ),
    "snapshot id an int": (
        lambda c: c.repo.readonly_session(snapshot_id=5),  # type: ignore[arg-type]
        InvalidInputError,
        ("snapshot id", "5"),
    ),
    "snapshot id bytes": (
        lambda c: c.repo.readonly_session(snapshot_id=c.sid.encode()),  # type: ignore[arg-type]
        InvalidInputError,
        ("snapshot id",),
    ),
    "snapshot id of 21 chars": (
        lambda c: c.repo.readonly_session(snapshot_id=c.sid + "0"),
        InvalidInputError,
        ("snapshot id",),
    ),
    "snapshot id with I": (
        lambda c: c.repo.readonly_session(snapshot_id="I" * 20),
        InvalidInputError,
        ("snapshot id",),
    ),
    "unknown snapshot id": (
        lambda c: c.repo.readonly_session(snapshot_id="0" * 20),
        NotFoundError,
        ("snapshot", "0" * 20),
    ),
    "branch and tag": (
        lambda c: c.repo.readonly_session("main", tag="v1"),
        InvalidInputError,
        ("exactly one",),
    ),
    "no version": (lambda c: c.repo.readonly_session(), InvalidInputError, ("exactly one",)),
    "create_branch int snapshot": (
        lambda c: c.repo.create_branch("x", 5),  # type: ignore[arg-type]
        InvalidInputError,
        ("snapshot id",),
    ),
    "create_branch None snapshot": (
        lambda c: c.repo.create_branch("x", None),  # type: ignore[arg-type]
        InvalidInputError,
        ("snapshot id",),
    ),
    "create_branch unknown snapshot": (
        lambda c: c.repo.create_branch("x", "0" * 20),
        NotFoundError,
        ("snapshot", "0" * 20),
    ),
    "create_tag bad snapshot": (
        lambda c: c.repo.create_tag("t", "main"),
        InvalidInputError,
        ("snapshot id", "'main'"),
    ),
    "reset_branch bad snapshot": (
        lambda c: c.repo.reset_branch("main", []),  # type: ignore[arg-type]
        InvalidInputError,
        ("snapshot id",),
    ),
    "reset_branch bad from": (
        lambda c: c.repo.reset_branch("main", c.sid, from_snapshot_id=1),  # type: ignore[arg-type]
        InvalidInputError,
        ("snapshot id",),
    ),
    "ancestry bad id": (
        lambda c: list(c.repo.ancestry(snapshot_id="x")),
        InvalidInputError,
        ("snapshot id", "'x'"),
    ),
    "lookup_snapshot int": (
        lambda c: c.repo.lookup_snapshot(7),  # type: ignore[arg-type]
        InvalidInputError,
        ("snapshot id",),
    ),
    "diff bad from": (
        lambda c: c.repo.diff(from_snapshot_id=3.0, to_branch="main"),  # type: ignore[arg-type]
        InvalidInputError,
        ("snapshot id",),
    ),
    "diff nothing": (lambda c: c.repo.diff(to_branch="main"), InvalidInputError, ("exactly one",)),
    "open on a path string": (
        lambda c: Repository.open("repo-dir"),  # type: ignore[arg-type]
        InvalidInputError,
        ("Storage", "str"),
    ),
    "create on None": (
        lambda c: Repository.create(None),  # type: ignore[arg-type]
        InvalidInputError,
        ("Storage", "NoneType"),
    ),
    "open with a dict config": (
        lambda c: Repository.open(c.storage, {"x": 1}),  # type: ignore[arg-type]
        InvalidInputError,
        ("RepositoryConfig", "dict"),
    ),
    "open with a str config": (
        lambda c: Repository.open(c.storage, "config"),  # type: ignore[arg-type]
        InvalidInputError,
        ("RepositoryConfig", "str"),
    ),
    "create with a dict config": (
        lambda c: Repository.create(c.storage, {"x": 1}),  # type: ignore[arg-type]
        InvalidInputError,
        ("RepositoryConfig", "dict"),
    ),
    "open_or_create with a list config": (
        lambda c: Repository.open_or_create(c.storage, [1]),  # type: ignore[arg-type]
        InvalidInputError,
        ("RepositoryConfig", "list"),
    ),
    "config negative threshold": (
        lambda c: RepositoryConfig(inline_chunk_threshold_bytes=-1),
        InvalidInputError,
        ("inline_chunk_threshold_bytes", "-1"),
    ),
    "config str split rows": (
        lambda c: RepositoryConfig(manifest_split_rows="10"),  # type: ignore[arg-type]
        InvalidInputError,
        ("manifest_split_rows", "'10'"),
    ),
    "config bool threshold": (
        lambda c: RepositoryConfig(inline_chunk_threshold_bytes=True),
        InvalidInputError,
        ("inline_chunk_threshold_bytes",),
    ),
    "commit message int": (
        lambda c: _changed(c).commit(5),  # type: ignore[arg-type]
        InvalidInputError,
        ("commit message", "int"),
    ),
    "commit metadata list": (
        lambda c: _changed(c).commit("m", [1]),  # type: ignore[arg-type]
        InvalidInputError,
        ("commit metadata",),
    ),
    "commit metadata int keys": (
        lambda c: _changed(c).commit("m", {1: 2}),  # type: ignore[dict-item]
        InvalidInputError,
        ("commit metadata", "string keys"),
    ),
    "commit metadata not JSON": (
        lambda c: _changed(c).commit("m", {"a": object()}),
        InvalidInputError,
        ("commit metadata", "JSON"),
    ),
    "commit rebase_with str": (
        lambda c: _changed(c).commit("m", rebase_with="yes"),  # type: ignore[arg-type]
        InvalidInputError,
        ("rebase_with", "ConflictSolver"),
    ),
    "commit rebase_tries 0": (
        lambda c: _changed(c).commit("m", rebase_tries=0),
        InvalidInputError,
        ("rebase_tries",),
    ),
    "commit nothing": (
        lambda c: _session(c).commit("m"),
        InvalidInputError,
        ("nothing to commit",),
    ),
    "store set bytes": (
        lambda c: sync(_session(c).store.set("small/c/0", b"\x00" * 4)),
        InvalidInputError,
        ("Buffer", "bytes"),
    ),
    "store set None": (
        lambda c: sync(_session(c).store.set("small/c/0", None)),
        InvalidInputError,
        ("Buffer", "NoneType"),
    ),
    "store key int": (
        lambda c: sync(_session(c).store.set(5, BUF)),  # type: ignore[arg-type]
        InvalidInputError,
        ("zarr key", "5"),
    ),
    "store get key None": (
        lambda c: sync(_session(c).store.get(None, PROTO)),  # type: ignore[arg-type]
        InvalidInputError,
        ("zarr key", "None"),
    ),
    "virtual offset negative": (
        lambda c: _session(c).store.set_virtual_ref("arr/c/0/0", "s3://b/f", offset=-1, length=8),
        InvalidInputError,
        ("offset", "-1"),
    ),
    "virtual length str": (
        lambda c: _session(c).store.set_virtual_ref("arr/c/0/0", "s3://b/f", offset=0, length="8"),  # type: ignore[arg-type]
        InvalidInputError,
        ("length", "'8'"),
    ),
    "virtual location int": (
        lambda c: _session(c).store.set_virtual_ref("arr/c/0/0", 5, offset=0, length=8),  # type: ignore[arg-type]
        InvalidInputError,
        ("location",),
    ),
    "virtual location relative": (
        lambda c: _session(c).store.set_virtual_ref("arr/c/0/0", "data.nc", offset=0, length=8),
        InvalidInputError,
        ("'data.nc'",),
    ),
    "virtual ref on a group": (
        lambda c: _session(c).set_virtual_ref("/g", (0,), "s3://b/f", offset=0, length=8),
        InvalidInputError,
        ("'/g'", "group"),
    ),
    "chunk_type of a missing array": (
        lambda c: _session(c).chunk_type("/nope", (0,)),
        NotFoundError,
        ("'/nope'",),
    ),
    "chunk_type path int": (
        lambda c: _session(c).chunk_type(5, (0,)),  # type: ignore[arg-type]
        InvalidInputError,
        ("path", "int"),
    ),
    "chunk_type coord str": (
        lambda c: _session(c).chunk_type("/arr", "00"),
        InvalidInputError,
        ("'/arr'",),
    ),
    "merge a non-fork": (
        lambda c: _session(c).merge(_session(c)),  # type: ignore[arg-type]
        InvalidInputError,
        ("ForkSession", "Session"),
    ),
    "gc naive datetime": (
        lambda c: c.repo.garbage_collect(dt.datetime(2020, 1, 1)),
        InvalidInputError,
        ("timezone",),
    ),
    "gc str cutoff": (
        lambda c: c.repo.garbage_collect("7d"),  # type: ignore[arg-type]
        InvalidInputError,
        ("datetime", "'7d'"),
    ),
    "expire int cutoff": (
        lambda c: c.repo.expire_snapshots(7),  # type: ignore[arg-type]
        InvalidInputError,
        ("datetime", "7"),
    ),
    "compact rows 0": (
        lambda c: c.repo.compact("main", rows_per_segment=0),
        InvalidInputError,
        ("rows_per_segment",),
    ),
    "compact rows str": (
        lambda c: c.repo.compact("main", rows_per_segment="5"),  # type: ignore[arg-type]
        InvalidInputError,
        ("rows_per_segment",),
    ),
    "compact paths str": (
        lambda c: c.repo.compact("main", paths="/arr"),  # type: ignore[arg-type]
        InvalidInputError,
        ("paths",),
    ),
    "delete main": (lambda c: c.repo.delete_branch("main"), InvalidInputError, ("main",)),
    "create existing tag": (
        lambda c: c.repo.create_tag("v1", c.sid),
        frazil.AlreadyExistsError,
        ("'v1'",),
    ),
}


@pytest.mark.parametrize("case", list(ARGS))
def test_bad_argument(ctx: Ctx, case: str) -> None:
    TRIED.append(f"argument {case}")
    call, error, says = ARGS[case]
    refused(ctx.storage, lambda: call(ctx), error, *says)


# -- locations that are not repositories -------------------------------------------------------
def _tree(root: Path) -> list[tuple[str, int]]:
    if root.is_file():
        return [(root.name, root.stat().st_size)]
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*")
    )


NOT_REPOS: dict[str, Callable[[Path], Path]] = {
    "empty dir": lambda p: p,
    "random files": lambda p: (
        (p / "notes.txt").write_text("hello"),
        (p / "sub").mkdir(),
        (p / "sub" / "data.bin").write_bytes(b"\x00\x01"),
        p,
    )[-1],
    "only a config": lambda p: ((p / "config.json").write_bytes(encode_config({})), p)[-1],
    "a zarr store": lambda p: (
        (p / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}'),
        p,
    )[-1],
    "a file": lambda p: ((p / "file.txt").write_text("not a repository"), p / "file.txt")[-1],
    "missing path": lambda p: p / "does" / "not" / "exist",
}


@pytest.mark.parametrize("case", list(NOT_REPOS))
def test_opening_what_is_not_a_repository(tmp_path: Path, case: str) -> None:
    TRIED.append(f"not a repository: {case}")
    where = NOT_REPOS[case](tmp_path)
    before = _tree(tmp_path)
    storage = frazil.local_filesystem_storage(where)
    with pytest.raises(FrazilError) as info:
        Repository.open(storage)
    assert isinstance(info.value, (NotFoundError, frazil.StorageError)), repr(info.value)
    assert "repository" in str(info.value) and str(where) in str(info.value)
    assert Repository.exists(storage) is False
    with pytest.raises(FrazilError):
        list(Repository.open(storage).ancestry(branch="main"))
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("case", ["random files", "a zarr store", "a file"])
def test_creating_over_what_is_not_a_repository(tmp_path: Path, case: str) -> None:
    TRIED.append(f"create over: {case}")
    where = NOT_REPOS[case](tmp_path)
    before = _tree(tmp_path)
    with pytest.raises(FrazilError) as info:
        Repository.create(frazil.local_filesystem_storage(where))
    assert isinstance(info.value, (frazil.AlreadyExistsError, frazil.StorageError))
    assert str(where) in str(info.value)
    assert _tree(tmp_path) == before


# -- objects of a newer format version ---------------------------------------------------------
def _newer(fn: Callable[[], bytes]) -> bytes:
    """Encode with the format's own code as a writer of the next version would."""
    saved = common.WRITE_VERSION
    common.WRITE_VERSION = NEWER_VERSION
    try:
        return fn()
    finally:
        common.WRITE_VERSION = saved


NEWER_VERSION = common.FORMAT_VERSION + 1


def _json_v2(data: bytes) -> bytes:
    obj = json.loads(data)
    obj["format_version"] = NEWER_VERSION
    return common.encode_json(obj)


@pytest.fixture
def copy(ctx: Ctx, tmp_path: Path) -> Iterator[frazil.Storage]:
    storage = frazil.local_filesystem_storage(tmp_path / "copy")

    async def fill() -> None:
        for key in await ctx.storage.list(""):
            await storage.put(key, await ctx.storage.get(key))

    runtime.run(fill())
    yield storage


def _rewrite_tip(storage: frazil.Storage, edit: Callable[[Any], Any]) -> tuple[str, str]:
    """Re-encode main's tip snapshot after ``edit(snapshot)``, and point main at the new
    bytes (same id, new checksum): only what ``edit`` changed differs. Returns
    (snapshot key, snapshot id)."""
    ref_key = "refs/branch.main/ref.json"
    ref = decode_ref(runtime.run(storage.get(ref_key)), common.BRANCH_REF, ref_key)
    key = f"snapshots/{ref.snapshot_id}"
    snap = decode_snapshot(runtime.run(storage.get(key)), key)
    data = edit(snap)
    runtime.run(storage.put(key, data))
    runtime.run(
        storage.put(ref_key, encode_ref(common.BRANCH_REF, ref.snapshot_id, common.checksum(data)))
    )
    return key, str(ref.snapshot_id)


def _newer_snapshot(storage: frazil.Storage) -> str:
    return _rewrite_tip(storage, lambda s: _newer(lambda: encode_snapshot(s)))[0]


def _newer_manifest(storage: frazil.Storage) -> str:
    box: list[str] = []

    def edit(snap: Any) -> bytes:
        mid = next(n for n in snap.nodes if n.path == "/arr").segments[0].manifest_id
        mkey = f"manifests/{mid}"
        parts = manifest_fmt.decode_manifest_parts(runtime.run(storage.get(mkey)), mkey)
        data = _newer(
            lambda: manifest_fmt.encode_manifest_parts(
                mid, [(m.node_id, m.coords, m.table) for _, m in sorted(parts.items())]
            )
        )
        runtime.run(storage.put(mkey, data))
        box.append(mkey)
        nodes = tuple(
            dataclasses.replace(
                n,
                segments=tuple(
                    dataclasses.replace(g, checksum=common.checksum(data), size=len(data))
                    if g.manifest_id == mid
                    else g
                    for g in n.segments
                ),
            )
            for n in snap.nodes
        )
        return encode_snapshot(dataclasses.replace(snap, nodes=nodes))

    _rewrite_tip(storage, edit)
    return box[0]


def _newer_txlog(storage: frazil.Storage) -> str:
    box: list[str] = []

    def edit(snap: Any) -> bytes:
        tkey = f"transactions/{snap.id}"
        log = decode_transaction_log(runtime.run(storage.get(tkey)), tkey)
        data = _newer(lambda: txlog_fmt.encode_transaction_log(log))
        runtime.run(storage.put(tkey, data))
        box.append(tkey)
        info = dataclasses.replace(snap.info, transaction_log_checksum=common.checksum(data))
        return encode_snapshot(dataclasses.replace(snap, info=info))

    _rewrite_tip(storage, edit)
    return box[0]


def _newer_json(key: str) -> Callable[[frazil.Storage], str]:
    def go(storage: frazil.Storage) -> str:
        runtime.run(storage.put(key, _json_v2(runtime.run(storage.get(key)))))
        return key

    return go


NEWER: dict[str, Callable[[frazil.Storage], str]] = {
    "config": _newer_json("config.json"),
    "branch ref": _newer_json("refs/branch.main/ref.json"),
    "tag ref": _newer_json("refs/tag.v1/ref.json"),
    "snapshot": _newer_snapshot,
    "manifest": _newer_manifest,
    "transaction log": _newer_txlog,
}
NEWER_READS: dict[str, Callable[[Repository], Any]] = {
    "config": lambda r: r,
    "branch ref": lambda r: r.readonly_session("main"),
    "tag ref": lambda r: r.readonly_session(tag="v1"),
    "snapshot": lambda r: r.readonly_session("main"),
    "manifest": lambda r: zarr.open_array(r.readonly_session("main").store, path="arr", mode="r")[
        ...
    ],
    "transaction log": lambda r: r.diff(
        from_snapshot_id=r.lookup_snapshot(r.lookup_branch("main")).parent_id, to_branch="main"
    ),
}


@pytest.mark.parametrize("what", list(NEWER))
def test_object_of_a_newer_format_version(copy: frazil.Storage, what: str) -> None:
    TRIED.append(f"newer version: {what}")
    key = NEWER[what](copy)
    # only the version differs: the same bytes at version 1 decode like the original
    data = runtime.run(copy.get(key))
    if key.endswith(".json"):
        obj = json.loads(data)
        assert obj["format_version"] == NEWER_VERSION
        obj["format_version"] = 1
        (
            decode_config
            if key == "config.json"
            else lambda d, k: decode_ref(d, json.loads(d)["object_type"], k)
        )(common.encode_json(obj), key)
    err = refused(
        copy,
        lambda: NEWER_READS[what](Repository.open(copy)),
        FormatError,
        key,
        "newer frazil",
        f"format version {NEWER_VERSION}",
        "upgrade",
    )
    assert isinstance(err, FormatError)


def test_zz_summary() -> None:
    """Runs last: how many bad inputs were tried."""
    print(f"\nbad inputs tried: {len(TRIED)}")
    assert len(TRIED) == len(set(TRIED))
