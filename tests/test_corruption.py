"""End to end corruption: every stored object damaged (truncated, altered, swapped) is caught
through the public API by a FrazilError naming it, and zarr never gets wrong bytes."""

from __future__ import annotations

import collections
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import s3server
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

import frazil
from frazil import (
    ConflictDetector,
    FormatError,
    FrazilError,
    NotFoundError,
    Repository,
    RepositoryConfig,
    VirtualChunkContainer,
    containers_credentials,
    runtime,
)
from frazil.format import common

PROTO = default_buffer_prototype()
ARRAYS = {  # name -> (shape, chunks, dtype): native, inline and virtual chunks
    "nat": ((512,), (128,), "i8"),  # 1 KiB chunks: chunks/<id> objects
    "inl": ((16,), (4,), "i4"),  # 16-byte chunks: inline in the manifest
    "vir": ((8,), (4,), "i8"),  # virtual refs into a local file
}
CAUGHT: collections.Counter[tuple[str, str]] = collections.Counter()
"""(object type, way) -> damaged objects caught (a FrazilError naming the object)."""
HARMLESS: collections.Counter[tuple[str, str]] = collections.Counter()
"""(object type, way) -> damage that changed nothing readable (every answer exact)."""
ERRORS: collections.Counter[tuple[str, str]] = collections.Counter()
"""(object type, error class) -> operations that raised it."""
RAN: list[str] = []
"""The damage cases started in this run."""


# -- the template repository -------------------------------------------------------------------
@dataclass
class Template:
    root: Path  # a local repository to copy for each case
    prefix: str  # the virtual chunk container's url prefix
    snaps: list[str]  # S0 (initial) .. S3 (main's tip)
    keys: dict[str, str]  # role -> key of the object playing it
    objects: dict[str, bytes]  # key -> pristine bytes

    def auth(self) -> Any:
        return containers_credentials({self.prefix: None})


def _write_array(store: Any, name: str, values: np.ndarray) -> None:
    zarr.open_array(store, path=name, mode="r+")[...] = values


def _values(name: str) -> np.ndarray:
    shape, _, dtype = ARRAYS[name]
    return (np.arange(int(np.prod(shape)), dtype=dtype) * 7 + 3).reshape(shape)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    base = tmp_path_factory.mktemp("corruption")
    vdir = base / "virtual"
    vdir.mkdir()
    (vdir / "data.bin").write_bytes(_values("vir").tobytes())
    prefix = "file://" + str(vdir)
    config = RepositoryConfig.default()
    config.set_virtual_chunk_container(
        VirtualChunkContainer(prefix, frazil.local_filesystem_store(str(vdir)))
    )
    storage = frazil.local_filesystem_storage(base / "template")
    repo = Repository.create(
        storage, config, authorize_virtual_chunk_access=containers_credentials({prefix: None})
    )
    snaps = [repo.lookup_branch("main")]
    s = repo.writable_session("main")
    root = zarr.group(s.store)
    for name, (shape, chunks, dtype) in ARRAYS.items():
        root.create_array(
            name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, compressors=None
        )
    _write_array(s.store, "nat", _values("nat"))
    snaps.append(s.commit("one"))
    s = repo.writable_session("main")
    _write_array(s.store, "inl", _values("inl"))
    snaps.append(s.commit("two"))
    repo.create_tag("v1", snaps[2])
    repo.create_branch("dev", snaps[2])
    s = repo.writable_session("main")
    for i in range(2):
        s.store.set_virtual_ref(f"vir/c/{i}", f"{prefix}/data.bin", offset=32 * i, length=32)
    snaps.append(s.commit("three"))

    def segment(sid: str, path: str) -> str:
        session = repo.readonly_session(snapshot_id=sid)
        rec = session.node(path)
        assert rec is not None and len(rec.segments) >= 1
        return f"manifests/{rec.segments[0].manifest_id}"

    objects = {k: runtime.run(storage.get(k)) for k in runtime.run(storage.list(""))}
    chunks = sorted(k for k in objects if k.startswith("chunks/"))
    assert len(chunks) == 4
    keys = {
        "config": "config.json",
        "branch_ref": "refs/branch.main/ref.json",
        "other_branch_ref": "refs/branch.dev/ref.json",
        "tag_ref": "refs/tag.v1/ref.json",
        "snapshot_tip": f"snapshots/{snaps[3]}",
        "snapshot_tagged": f"snapshots/{snaps[2]}",
        "snapshot_old": f"snapshots/{snaps[1]}",
        "snapshot_initial": f"snapshots/{snaps[0]}",
        "manifest_native": segment(snaps[3], "/nat"),
        "manifest_inline": segment(snaps[3], "/inl"),
        "manifest_virtual": segment(snaps[3], "/vir"),
        "txlog_tip": f"transactions/{snaps[3]}",
        "txlog_tagged": f"transactions/{snaps[2]}",
        "txlog_old": f"transactions/{snaps[1]}",
        "chunk": chunks[0],
        "other_chunk": chunks[1],
    }
    assert len(set(keys.values())) == len(keys)
    return Template(base / "template", prefix, snaps, keys, objects)


# -- what a reader sees: every public read, as comparable values -------------------------------
def _read_session(session: frazil.Session) -> dict[str, Any]:
    out: dict[str, Any] = {"snapshot": session.snapshot_id}
    store = session.store
    for name, (shape, chunks, _) in ARRAYS.items():
        if session.node(f"/{name}") is None:  # the initial snapshot is empty
            continue
        arr = zarr.open_array(store, path=name, mode="r")
        out[name] = arr[...].tobytes()
        for i in range(shape[0] // chunks[0]):  # the raw bytes zarr would be handed
            buf = sync(store.get(f"{name}/c/{i}", PROTO))
            out[f"{name}/c/{i}"] = None if buf is None else buf.to_bytes()
    return out


def _probe(storage: frazil.Storage, t: Template) -> Iterator[tuple[str, Callable[[], Any]]]:
    """The public operations a damaged object may be met by, named, in order."""
    s0, s1, s2, s3 = t.snaps
    holder: dict[str, Repository] = {}

    def repo() -> Repository:
        return holder["repo"]

    def open_() -> str:
        holder["repo"] = Repository.open(storage, authorize_virtual_chunk_access=t.auth())
        return "opened"

    def rebase() -> Any:
        session = repo().writable_session("dev")
        zarr.open_array(session.store, path="inl", mode="r+")[0:4] = -1
        repo().reset_branch("dev", s3)
        session.rebase(ConflictDetector())
        return _read_session(session)

    yield "open", open_
    yield "lookup_branch", lambda: repo().lookup_branch("main")
    yield "lookup_tag", lambda: repo().lookup_tag("v1")
    yield "list_branches", lambda: repo().list_branches()
    yield "list_tags", lambda: repo().list_tags()
    yield "ancestry main", lambda: list(repo().ancestry(branch="main"))
    yield "ancestry v1", lambda: list(repo().ancestry(tag="v1"))
    yield "ancestry S1", lambda: list(repo().ancestry(snapshot_id=s1))
    yield "lookup_snapshot S1", lambda: repo().lookup_snapshot(s1)
    yield "read main", lambda: _read_session(repo().readonly_session("main"))
    yield "read v1", lambda: _read_session(repo().readonly_session(tag="v1"))
    for i, sid in enumerate(t.snaps):
        yield f"read S{i}", lambda sid=sid: _read_session(repo().readonly_session(snapshot_id=sid))
    yield "writable main", lambda: _read_session(repo().writable_session("main"))
    yield "diff S0..main", lambda: repo().diff(from_snapshot_id=s0, to_branch="main")
    yield "diff S1..v1", lambda: repo().diff(from_snapshot_id=s1, to_tag="v1")
    yield "rebase dev onto S3", rebase


def _run_probe(storage: frazil.Storage, t: Template) -> dict[str, Any]:
    """op -> its result, or the FrazilError it raised. Any other exception propagates:
    an unclear error is a failure of its own."""
    results: dict[str, Any] = {}
    for name, op in _probe(storage, t):
        try:
            results[name] = op()
        except FrazilError as e:
            results[name] = e
            if name == "open":
                break
    return results


@pytest.fixture(scope="module")
def expected(template: Template) -> dict[str, Any]:
    storage = _copy(template, "local", template.root.parent / "pristine")
    got = _run_probe(storage, template)
    errors = {k: v for k, v in got.items() if isinstance(v, BaseException)}
    assert not errors, errors
    assert got["read main"]["nat"] == _values("nat").tobytes()
    assert got["read main"]["vir"] == _values("vir").tobytes()
    assert got["read S1"]["inl"] == bytes(64)
    return got


def _copy(t: Template, backend: str, where: Path) -> frazil.Storage:
    storage: frazil.Storage
    if backend == "local":
        shutil.copytree(t.root, where)
        return frazil.local_filesystem_storage(where)
    storage = (
        frazil.in_memory_storage()
        if backend == "memory"
        else s3server.storage(s3server.new_prefix())
    )

    async def fill() -> None:
        await runtime.gather_limited([storage.put(k, v) for k, v in t.objects.items()])

    runtime.run(fill())
    return storage


# -- the damage --------------------------------------------------------------------------------
TYPES = {  # object type -> (role damaged, role whose bytes it is swapped with)
    "config": ("config", None),
    "branch_ref": ("branch_ref", "tag_ref"),  # a tag's bytes under a branch key
    "tag_ref": ("tag_ref", "branch_ref"),
    "snapshot_tip": ("snapshot_tip", "snapshot_tagged"),  # reached through refs (checksums)
    "snapshot_old": ("snapshot_old", "snapshot_initial"),  # reached by id and parent only
    "manifest_native": ("manifest_native", "manifest_inline"),
    "manifest_inline": ("manifest_inline", "manifest_virtual"),
    "manifest_virtual": ("manifest_virtual", "manifest_native"),
    "txlog_tip": ("txlog_tip", "txlog_tagged"),
    "txlog_old": ("txlog_old", "txlog_tip"),
    "chunk": ("chunk", "other_chunk"),  # same size, other values
}
UNCHECKED = {"config", "branch_ref", "tag_ref", "snapshot_old"}
"""Objects no referrer records a checksum for: damage that leaves their meaning unchanged
(whitespace, a ref's write_id, a Parquet file's leading magic) is harmless, so for these
an exact answer everywhere is accepted. Everything else must be caught."""


def _flip(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


def _swap_pair(data: bytes, i: int) -> bytes:
    """Swap the first pair of unequal neighbouring bytes at or after ``i`` (wrapping)."""
    n = len(data)
    for j in [*range(i, n - 1), *range(0, i)]:
        if data[j] != data[j + 1]:
            return data[:j] + bytes([data[j + 1], data[j]]) + data[j + 2 :]
    raise AssertionError("no unequal neighbours")


WAYS: dict[str, Callable[[bytes, bytes | None], bytes]] = {
    "truncated to 0": lambda d, o: b"",
    "truncated to half": lambda d, o: d[: len(d) // 2],
    "truncated by 1": lambda d, o: d[:-1],
    "altered start": lambda d, o: _flip(d, 0),
    "altered middle": lambda d, o: _flip(d, len(d) // 2),
    "altered end": lambda d, o: _flip(d, len(d) - 1),
    "swapped object": lambda d, o: o if o is not None else d,
    "swapped pair start": lambda d, o: _swap_pair(d, 0),
    "swapped pair middle": lambda d, o: _swap_pair(d, len(d) // 2),
    "swapped pair end": lambda d, o: _swap_pair(d, len(d) - 2),
}
S3_WAYS = ("truncated to half", "altered middle", "swapped object")
CASES = [
    pytest.param(backend, typ, way, id=f"{backend}-{typ}-{way.replace(' ', '_')}")
    for backend in ("local", "memory", "s3")
    for typ in TYPES
    for way in WAYS
    if (backend != "s3" or way in S3_WAYS)
    and not (way == "swapped object" and TYPES[typ][1] is None)
]


def _names(t: Template, role: str) -> list[str]:
    """What an error about the object playing ``role`` may call it."""
    key = t.keys[role]
    if role.endswith("_ref"):
        kind, name = key.split("/")[1].split(".", 1)
        return [key, f"{kind} {name!r}"]
    if role == "config" or role.startswith("txlog"):  # a log's id is its snapshot's
        return [key]
    return [key, key.split("/", 1)[1]]  # the key, or the object's id


@pytest.mark.parametrize(("backend", "typ", "way"), CASES)
def test_damaged_object_is_caught(
    template: Template, expected: dict[str, Any], tmp_path: Path, backend: str, typ: str, way: str
) -> None:
    RAN.append(f"{backend}-{typ}-{way}")
    role, other = TYPES[typ]
    key = template.keys[role]
    original = template.objects[key]
    damaged = WAYS[way](original, template.objects[template.keys[other]] if other else None)
    assert damaged != original
    storage = _copy(template, backend, tmp_path / "repo")
    runtime.run(storage.put(key, damaged))
    got = _run_probe(storage, template)
    names = _names(template, role)
    caught = []
    for op, want in expected.items():
        if op not in got:  # not reached: the repository did not open
            assert isinstance(got.get("open"), FrazilError), op
            continue
        result = got[op]
        if isinstance(result, FrazilError):
            assert any(n in str(result) for n in names), (
                f"{op}: {type(result).__name__} does not name {names}: {result}"
            )
            # damage is a FormatError; a ref damaged into naming another snapshot id
            # (one that does not exist) is a NotFoundError naming the ref
            allowed = (FormatError, NotFoundError) if role.endswith("_ref") else FormatError
            assert isinstance(result, allowed), f"{op}: {type(result).__name__}: {result}"
            ERRORS[(typ, type(result).__name__)] += 1
            caught.append(op)
        else:  # never wrong data: an answer is the exact original one
            assert result == want, f"{op}: wrong answer after {way} {key}"
    if typ not in UNCHECKED:
        assert caught, f"{way} {key} was not caught by any operation"
    (CAUGHT if caught else HARMLESS)[(typ, way)] += 1


def test_same_type_ref_swap_is_caught(
    template: Template, expected: dict[str, Any], tmp_path: Path
) -> None:
    """A branch ref holding another branch's bytes: refs record their own name, so this
    is caught (a FormatError naming the ref), never served as a silent reset."""
    RAN.append("branch_ref-swapped with a branch's ref")
    storage = _copy(template, "local", tmp_path / "repo")
    key = template.keys["branch_ref"]
    runtime.run(storage.put(key, template.objects[template.keys["other_branch_ref"]]))
    got = _run_probe(storage, template)
    for op in ("lookup_branch", "read main", "ancestry main"):
        assert isinstance(got[op], FormatError), (op, got[op])
        assert key in str(got[op]) and "holds the ref of branch" in str(got[op])
    assert got["read S3"] == expected["read S3"]  # the other refs are untouched
    report = Repository.open(storage, authorize_virtual_chunk_access=template.auth()).fsck()
    assert [p.key for p in report.problems] == [key]
    CAUGHT[("branch_ref", "swapped with a branch's ref")] += 1


@pytest.mark.parametrize(
    "settings",
    [
        {"inline_chunk_threshold_bytes": "512"},
        {"manifest_split_rows": -5},
        {"compact_when_segments_exceed": 0},
        {"virtual_chunk_containers": {"s3://x": 1}},
    ],
    ids=repr,
)
def test_config_with_damaged_settings(
    template: Template, tmp_path: Path, settings: dict[str, Any]
) -> None:
    """Valid JSON whose settings have the wrong type or range: a FormatError naming it."""
    RAN.append(f"config settings {settings!r}")
    storage = _copy(template, "local", tmp_path / "repo")
    doc = json.loads(template.objects["config.json"])
    runtime.run(storage.put("config.json", common.encode_json({**doc, **settings})))
    with pytest.raises(FormatError, match="config.json"):
        Repository.open(storage, authorize_virtual_chunk_access=template.auth())
    CAUGHT[("config", "damaged settings")] += 1


def test_zz_summary() -> None:
    """Runs last: prints how many damaged objects were caught, by type and way."""
    total = sum(CAUGHT.values())
    by_type: collections.Counter[str] = collections.Counter()
    by_way: collections.Counter[str] = collections.Counter()
    for (typ, way), n in CAUGHT.items():
        by_type[typ] += n
        by_way[way] += n
    print(
        f"\ncorrupted objects caught: {total}; harmless (meaning unchanged, every answer "
        f"exact): {sum(HARMLESS.values())}"
    )
    print("  by type: " + ", ".join(f"{k} {v}" for k, v in sorted(by_type.items())))
    print("  by way: " + ", ".join(f"{k} {v}" for k, v in sorted(by_way.items())))
    print("  errors raised: " + ", ".join(f"{t}/{c} {n}" for (t, c), n in sorted(ERRORS.items())))
    if HARMLESS:
        print("  harmless: " + ", ".join(f"{t}/{w} {n}" for (t, w), n in sorted(HARMLESS.items())))
    assert total + sum(HARMLESS.values()) == len(RAN)
