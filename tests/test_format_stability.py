"""Format stability: the committed format-v1 repository (tests/data/format-v1, written once by
tests/data/make_format_fixture.py) reads exactly as recorded in its expected.json."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

import frazil
from frazil import runtime
from frazil.errors import AlreadyExistsError, NotFoundError, VirtualChunkError
from frazil.format import FORMAT_VERSION

FIXTURE = Path(__file__).parent / "data" / "format-v1"


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURE / "expected.json").read_text())
    return data


@pytest.fixture(scope="module")
def pristine() -> dict[str, str]:
    """The fixture's files and hashes before any test ran."""
    return _digest(FIXTURE)


@pytest.fixture
def repo(tmp_path: Path, pristine: dict[str, str]) -> frazil.Repository:
    """The fixture copied to a temporary folder (the committed one is never opened)."""
    shutil.copytree(FIXTURE / "repo", tmp_path / "repo")
    return frazil.Repository.open(frazil.local_filesystem_storage(str(tmp_path / "repo")))


def _fill(value: Any) -> Any:
    return float("nan") if value == "NaN" else value


def read_tree(session: frazil.Session) -> dict[str, Any]:
    """Every node, the way expected.json records it (values of virtual chunks as fill)."""
    root = zarr.open_group(session.store, mode="r")
    out: dict[str, Any] = {"": {"type": "group", "attrs": dict(root.attrs)}}
    for path, node in root.members(max_depth=None):
        if not isinstance(node, zarr.Array):
            out[path] = {"type": "group", "attrs": dict(node.attrs)}
            continue
        types = {}
        values = np.full(node.shape, node.fill_value, dtype=node.dtype)
        grid = [-(-s // c) for s, c in zip(node.shape, node.chunks)]
        for coord in np.ndindex(*grid):
            kind = session.chunk_type(path, coord).name.lower()
            types[",".join(map(str, coord))] = kind
            if kind != "virtual":
                sel = tuple(
                    slice(i * c, min((i + 1) * c, s))
                    for i, c, s in zip(coord, node.chunks, node.shape)
                )
                values[sel] = node[sel]
        out[path] = {
            "type": "array",
            "attrs": dict(node.attrs),
            "shape": list(node.shape),
            "chunks": list(node.chunks),
            "dtype": str(node.dtype),
            "fill_value": node.fill_value.item(),
            "values": values,
            "chunk_types": types,
        }
    return out


def assert_tree(got: dict[str, Any], want: dict[str, Any], where: str) -> None:
    assert sorted(got) == sorted(want), where
    for path, w in want.items():
        g = got[path]
        assert (g["type"], g["attrs"]) == (w["type"], w["attrs"]), (where, path)
        if w["type"] == "group":
            continue
        for key in ("shape", "chunks", "dtype", "chunk_types"):
            assert g[key] == w[key], (where, path, key)
        fill = _fill(w["fill_value"])
        assert g["fill_value"] == fill or (np.isnan(fill) and np.isnan(g["fill_value"]))
        want_values = np.array(w["values"], dtype=w["dtype"]).reshape(w["shape"])
        assert np.array_equal(g["values"], want_values, equal_nan=True), (where, path)


def test_fixture_files_are_the_recorded_ones(expected: dict[str, Any]) -> None:
    ids = set(expected["snapshots"])
    assert {p.name for p in (FIXTURE / "repo" / "snapshots").iterdir()} == ids
    assert {p.name for p in (FIXTURE / "repo" / "transactions").iterdir()} == ids
    assert expected["format_version"] == 1
    assert json.loads((FIXTURE / "repo" / "config.json").read_text())["format_version"] == 1


def test_refs(repo: frazil.Repository, expected: dict[str, Any]) -> None:
    assert repo.list_branches() == set(expected["branches"])
    for name, sid in expected["branches"].items():
        assert repo.lookup_branch(name) == sid
    assert repo.list_tags() == set(expected["tags"])
    for name, sid in expected["tags"].items():
        assert repo.lookup_tag(name) == sid
        assert repo.readonly_session(tag=name).snapshot_id == sid
    for name in expected["deleted_tags"]:
        with pytest.raises(NotFoundError):
            repo.lookup_tag(name)
        with pytest.raises(AlreadyExistsError):  # the tombstone keeps the name used
            repo.create_tag(name, expected["branches"]["main"])
    assert repo.config.inline_chunk_threshold_bytes == expected["inline_chunk_threshold_bytes"]


def test_ancestry_and_commit_info(repo: frazil.Repository, expected: dict[str, Any]) -> None:
    for branch, ids in expected["ancestry"].items():
        history = list(repo.ancestry(branch=branch))
        assert [i.id for i in history] == ids
        for info in history:
            want = expected["snapshots"][info.id]
            assert info.parent_id == want["parent_id"]
            assert info.message == want["message"]
            assert info.metadata == want["metadata"]
            assert info.written_at == dt.datetime.fromisoformat(want["written_at"])
    tag_history = [i.id for i in repo.ancestry(tag="v1")]
    assert tag_history == expected["ancestry"]["main"][-len(tag_history) :]
    assert set(expected["commits"]) | {expected["ancestry"]["main"][-1]} == set(
        expected["snapshots"]
    )


def test_every_snapshot_reads_as_recorded(
    repo: frazil.Repository, expected: dict[str, Any]
) -> None:
    for sid, want in expected["snapshots"].items():
        session = repo.readonly_session(snapshot_id=sid)
        if want["parent_id"] is None:  # the empty first snapshot
            assert list(session.nodes()) == []
            continue
        assert_tree(read_tree(session), want["tree"], sid)


def test_deleted_nodes_stay_deleted(repo: frazil.Repository, expected: dict[str, Any]) -> None:
    dev = zarr.open_group(repo.readonly_session("dev").store, mode="r")
    assert "obs" not in dev and "raw" in dev
    main = zarr.open_group(repo.readonly_session("main").store, mode="r")
    assert "obs/count" in main and "deep" not in main


def test_virtual_reference(repo: frazil.Repository, expected: dict[str, Any]) -> None:
    v = expected["virtual"]
    session = repo.readonly_session(snapshot_id=v["snapshot"])
    assert session.chunk_type(v["path"], v["coord"]) == frazil.ChunkType.VIRTUAL
    assert session.all_virtual_chunk_locations() == [v["location"]]
    ref = runtime.run(session.chunk_ref(v["path"], tuple(v["coord"])))
    assert ref is not None
    assert (ref.location, ref.offset, ref.length) == (v["location"], v["offset"], v["length"])
    # the engine reads local virtual chunks only at absolute paths; resolve it by hand
    source = (FIXTURE / v["file"]).read_bytes()
    assert list(source[ref.offset : ref.offset + ref.length]) == v["values"]
    containers = repo.config.virtual_chunk_containers or {}
    assert [c.url_prefix for c in containers.values()] == [expected["virtual_prefix"]]
    with pytest.raises(VirtualChunkError):  # never authorized here: refused, not misread
        zarr.open_array(session.store, path=v["path"], mode="r")[:4]


def test_fsck(repo: frazil.Repository, expected: dict[str, Any]) -> None:
    report = repo.fsck()
    assert report.ok, report.problems
    assert report.snapshots == len(expected["snapshots"])
    assert report.transaction_logs == len(expected["snapshots"])
    assert report.refs == len(expected["branches"]) + len(expected["tags"])


def test_this_version_writes_on_top(repo: frazil.Repository, expected: dict[str, Any]) -> None:
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="flags", mode="r+")[0] = 7
    sid = session.commit("written by a later version")
    history = [i.id for i in repo.ancestry(branch="main")]
    assert history == [sid, *expected["ancestry"]["main"]]
    assert zarr.open_array(repo.readonly_session("main").store, path="flags", mode="r")[0] == 7
    assert repo.fsck().ok


def test_repository_metadata(repo: frazil.Repository, expected: dict[str, Any]) -> None:
    """A repository written before repository metadata existed has none, takes some, and
    reads and checks as before with it."""
    assert repo.metadata == {}
    repo.set_metadata({"owner": "fixture"})
    assert frazil.Repository.open(repo.storage).get_metadata() == {"owner": "fixture"}
    assert sorted(repo.list_branches()) == sorted(expected["branches"])
    assert repo.fsck().ok


def test_operations_log(repo: frazil.Repository, expected: dict[str, Any]) -> None:
    """Refs written before the operations log carry none: the log starts with the first
    later write, and the old refs read as before."""
    assert list(repo.ops_log()) == []
    sid = expected["ancestry"]["main"][0]
    repo.create_branch("later", sid)
    assert [u.kind for u in repo.ops_log()] == [frazil.UpdateType.BranchCreated("later")]
    assert repo.lookup_branch("later") == sid


def _bump_json(path: Path) -> None:
    obj = json.loads(path.read_text())
    obj["format_version"] = FORMAT_VERSION + 1
    path.write_text(json.dumps(obj))


def _bump_parquet(path: Path) -> None:
    table = pq.read_table(path)
    meta = dict(table.schema.metadata or {})
    header = json.loads(meta[b"frazil"])
    header["format_version"] = FORMAT_VERSION + 1
    meta[b"frazil"] = json.dumps(header, sort_keys=True).encode()
    pq.write_table(table.replace_schema_metadata(meta), path)


def test_newer_objects_are_refused_one_by_one(tmp_path: Path, expected: dict[str, Any]) -> None:
    """format/SPEC.md §8: a newer object stops the reads that need it, never others."""
    root = tmp_path / "repo"
    shutil.copytree(FIXTURE / "repo", root)
    storage = frazil.local_filesystem_storage(str(root))
    _bump_json(root / "refs" / "branch.dev" / "ref.json")
    repo = frazil.Repository.open(storage)
    with pytest.raises(frazil.FormatError, match="newer frazil"):
        repo.lookup_branch("dev")
    assert repo.lookup_branch("main") == expected["branches"]["main"]
    old = expected["commits"][0]  # in main's history, below its tip
    _bump_parquet(root / "snapshots" / old)
    repo = frazil.Repository.open(storage)
    with pytest.raises(frazil.FormatError, match="newer frazil"):
        repo.readonly_session(snapshot_id=old)
    assert repo.readonly_session(tag="v1").snapshot_id == expected["tags"]["v1"]
    before = _digest(root)
    with pytest.raises(frazil.FormatError):  # marking fails before anything is swept
        repo.garbage_collect(dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    assert _digest(root) == before
    assert not repo.fsck().ok
    _bump_json(root / "config.json")
    with pytest.raises(frazil.FormatError, match="newer frazil"):
        frazil.Repository.open(storage)


def test_committed_fixture_unchanged(pristine: dict[str, str], expected: dict[str, Any]) -> None:
    """Runs last in this module: nothing above touched the committed files."""
    assert _digest(FIXTURE) == pristine
