"""``frazil import-icechunk`` and ``frazil.tools.icechunk_import``: an Icechunk repository
(icechunk==1.1.21, the test extra's pin) copied into frazil, compared commit by commit.

Icechunk's tokio runtime hangs children forked after it started, and this suite has tests
that fork in the same pytest process. So nothing here imports icechunk in the pytest
process: every case that needs it runs in a fresh Python subprocess (``_run``: this file
run as a script with the case's name), which asserts and exits non-zero on a failure; the
test checks the exit status and shows the child's output. Only the test of the
missing-package error and a unit test of the diff check run in process, with no icechunk
(blocked in ``sys.modules`` for the former).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype

import frazil
from frazil.tools import cli
from frazil.tools.icechunk_import import SNAPSHOT_KEY, WORK_PREFIX, WRITTEN_AT_KEY

needs_icechunk = pytest.mark.skipif(
    importlib.util.find_spec("icechunk") is None, reason="icechunk is not installed"
)


def _run(case: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, __file__, case, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"case {case} failed:\n{proc.stdout}\n{proc.stderr}"
    assert f"case {case} ok" in proc.stdout


# -- the tests (run in this process) ------------------------------------------------------------
@needs_icechunk
def test_history_branches_tags_and_content(tmp_path: Path) -> None:
    _run("history", tmp_path)


@needs_icechunk
def test_resumes_after_interruption_without_duplicates(tmp_path: Path) -> None:
    _run("resume", tmp_path)


@needs_icechunk
@pytest.mark.slow
def test_long_history_resumed_many_times(tmp_path: Path) -> None:
    _run("long", tmp_path)


@needs_icechunk
def test_virtual_chunks_arrive_as_native(tmp_path: Path) -> None:
    _run("virtual", tmp_path)


@needs_icechunk
def test_cli_json(tmp_path: Path) -> None:
    _run("cli", tmp_path)


@needs_icechunk
def test_refuses_destination_with_other_commits(tmp_path: Path) -> None:
    _run("foreign", tmp_path)


def test_cli_error_without_icechunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "icechunk", None)  # import icechunk -> ImportError
    with pytest.raises(SystemExit) as exc:
        cli.main(["import-icechunk", str(tmp_path / "src"), str(tmp_path / "dest")])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "needs the icechunk package" in err and "pip install icechunk" in err
    assert err.count("\n") == 1  # one line, no traceback


def test_refuses_a_diff_with_changes_it_cannot_copy() -> None:
    from types import SimpleNamespace

    from frazil.errors import InvalidInputError
    from frazil.tools.icechunk_import import _check_handled

    diff = SimpleNamespace(new_arrays={"/a"}, updated_chunks={"/a": [[0]]}, moved_nodes=[])
    _check_handled(diff, "snapshot X")  # empty unknown kinds are fine
    diff.moved_nodes = [("/a", "/b")]
    with pytest.raises(InvalidInputError, match="snapshot X.*'moved_nodes'"):
        _check_handled(diff, "snapshot X")


# -- the cases (run in a subprocess, where icechunk may start its runtime) ----------------------
def _build(path: Path) -> Any:
    """An Icechunk repository: main with 5 commits, dev with 2 of its own, tag v1 on main,
    tag experiment on a commit of a deleted branch."""
    import icechunk as ic

    repo = ic.Repository.create(ic.local_filesystem_storage(str(path)))
    s = repo.writable_session("main")
    root = zarr.group(s.store, attributes={"title": "demo"})
    t = root.create_array(
        "temp", shape=(6, 4), chunks=(2, 2), dtype="f8", dimension_names=("y", "x")
    )
    t[:] = np.arange(24, dtype="f8").reshape(6, 4)
    s.commit("temp", metadata={"author": "ana", "n": 1})

    s = repo.writable_session("main")
    root = zarr.open_group(s.store)
    g = root.create_group("g", attributes={"kind": "group"})
    b = g.create_array("b", shape=(5,), chunks=(2,), dtype="i4", dimension_names=("i",))
    b[:] = [1, 2, 3, 4, 5]
    cube = root.create_array(
        "cube", shape=(2, 3, 4), chunks=(1, 2, 3), dtype="u1", dimension_names=("t", "u", "v")
    )
    cube[:] = np.arange(24, dtype="u1").reshape(2, 3, 4)
    base = s.commit("group g, arrays g/b and cube")

    s = repo.writable_session("main")
    root = zarr.open_group(s.store)
    root["temp"][0:2, 0:2] = -1.0
    root["temp"].attrs["units"] = "K"
    root.attrs["title"] = "demo, revised"
    asyncio.run(s.store.delete("temp/c/2/1"))  # one chunk deleted
    s.commit("update and delete chunks of temp", metadata={"author": "bo"})
    repo.create_tag("v1", repo.lookup_branch("main"))

    s = repo.writable_session("main")
    root = zarr.open_group(s.store)
    del root["g/b"]
    s.commit("delete g/b")

    s = repo.writable_session("main")
    zarr.open_group(s.store)["g"].attrs["kind"] = "empty group"
    s.commit("group attributes")

    repo.create_branch("dev", base)
    s = repo.writable_session("dev")
    root = zarr.open_group(s.store)
    root["g/b"][0:2] = [10, 20]
    d = root.create_array("dev_only", shape=(), dtype="i8", dimension_names=())
    d[()] = 42
    s.commit("dev: write b, scalar dev_only")
    s = repo.writable_session("dev")
    root = zarr.open_group(s.store)
    del root["cube"]
    s.commit("dev: delete cube", metadata={"reason": "cleanup"})

    repo.create_branch("scratch", repo.lookup_branch("main"))
    s = repo.writable_session("scratch")
    zarr.open_group(s.store).attrs["scratch"] = True
    repo.create_tag("experiment", s.commit("scratch: an attribute"))
    repo.delete_branch("scratch")  # its commit is reachable from the tag only
    return repo


def _snapshot_ids(repo: Any) -> list[str]:
    ids: dict[str, None] = {}
    for b in sorted(repo.list_branches()):
        ids.update((i.id, None) for i in repo.ancestry(branch=b))
    for t in sorted(repo.list_tags()):
        ids.update((i.id, None) for i in repo.ancestry(tag=t))
    return list(ids)


def _contents(store: Any) -> dict[str, bytes]:
    proto = default_buffer_prototype()

    async def go() -> dict[str, bytes]:
        out = {}
        async for k in store.list():
            buf = await store.get(k, proto)
            assert buf is not None, k
            out[k] = buf.to_bytes()
        return out

    return asyncio.run(go())


def _arrays(store: Any) -> dict[str, Any]:
    root = zarr.open_group(store, mode="r")
    out: dict[str, Any] = {"/": dict(root.attrs)}
    for path, node in root.members(max_depth=None):
        if isinstance(node, zarr.Array):
            out[path] = (node.shape, str(node.dtype), node[...].tolist(), dict(node.attrs))
        else:
            out[path] = dict(node.attrs)
    return out


def _check_same(ic_repo: Any, fz: frazil.Repository, mapping: dict[str, str]) -> None:
    for ic_id, fz_id in mapping.items():
        a = ic_repo.readonly_session(snapshot_id=ic_id).store
        b = fz.readonly_session(snapshot_id=fz_id).store
        assert _contents(a) == _contents(b), f"snapshot {ic_id} -> {fz_id}: keys differ"
        if _contents(a):
            assert _arrays(a) == _arrays(b), f"snapshot {ic_id} -> {fz_id}: arrays differ"


def _check_history(ic_repo: Any, fz: frazil.Repository, mapping: dict[str, str]) -> None:
    ic_infos = {i: ic_repo.lookup_snapshot(i) for i in mapping}
    for ic_id, info in ic_infos.items():
        f = fz.lookup_snapshot(mapping[ic_id])
        assert f.message == info.message
        if info.parent_id is None:
            assert f.parent_id is None
            continue
        assert f.parent_id == mapping[info.parent_id]
        assert f.metadata[SNAPSHOT_KEY] == ic_id
        assert f.metadata[WRITTEN_AT_KEY] == info.written_at.isoformat()
        assert {k: f.metadata[k] for k in info.metadata} == info.metadata
    for b in ic_repo.list_branches():
        assert fz.lookup_branch(b) == mapping[ic_repo.lookup_branch(b)]
    for t in ic_repo.list_tags():
        assert fz.lookup_tag(t) == mapping[ic_repo.lookup_tag(t)]
    assert fz.list_branches() == ic_repo.list_branches()
    assert fz.list_tags() == ic_repo.list_tags()
    frazil_ids = {i.id for b in fz.list_branches() for i in fz.ancestry(branch=b)}
    frazil_ids |= {i.id for t in fz.list_tags() for i in fz.ancestry(tag=t)}
    assert frazil_ids == set(mapping.values())  # one frazil commit per Icechunk commit


def case_history(tmp: Path) -> None:
    import xarray as xr

    from frazil.tools.icechunk_import import import_icechunk

    ic_repo = _build(tmp / "ic")
    seen: list[tuple[str, int, int | None]] = []
    s = import_icechunk(str(tmp / "ic"), str(tmp / "fz"), progress=lambda *a: seen.append(a))
    fz = frazil.Repository.open(frazil.local_filesystem_storage(str(tmp / "fz")))
    ids = _snapshot_ids(ic_repo)
    assert set(s.snapshots) == set(ids) and len(ids) == 9
    assert s.commits_imported == 8 and s.commits_already_there == 1  # the initial one
    assert seen[-1] == ("commits", 9, 9)
    assert s.chunks_deleted == 1 and s.chunks_copied > 0
    _check_history(ic_repo, fz, s.snapshots)
    _check_same(ic_repo, fz, s.snapshots)
    assert not [b for b in fz.list_branches() if b.startswith(WORK_PREFIX)]
    # through xarray, at the tips
    for ref in ("main", "dev"):
        a = xr.open_zarr(ic_repo.readonly_session(ref).store, consolidated=False)
        b = xr.open_zarr(fz.readonly_session(ref).store, consolidated=False)
        xr.testing.assert_identical(a.load(), b.load())
    # a rerun changes nothing
    again = import_icechunk(str(tmp / "ic"), str(tmp / "fz"))
    assert again.commits_imported == 0 and again.snapshots == s.snapshots


class _Stop(Exception):
    pass


def case_resume(tmp: Path) -> None:
    from frazil.tools.icechunk_import import import_icechunk

    ic_repo = _build(tmp / "ic")
    total = len(_snapshot_ids(ic_repo))

    def stop_at(n: int) -> Callable[[str, int, int | None], None]:
        def progress(stage: str, done: int, of: int | None) -> None:
            if stage == "commits" and done == n:
                raise _Stop(n)

        return progress

    runs = []
    for n in (3, 6, total):  # stops after commits, the last time before the refs are set
        try:
            import_icechunk(str(tmp / "ic"), str(tmp / "fz"), progress=stop_at(n))
        except _Stop:
            pass
        else:
            raise AssertionError(f"the import did not reach commit {n}")
        fz = frazil.Repository.open(frazil.local_filesystem_storage(str(tmp / "fz")))
        imported = [
            i.metadata[SNAPSHOT_KEY]
            for b in fz.list_branches()
            for i in fz.ancestry(branch=b)
            if SNAPSHOT_KEY in i.metadata
        ]
        runs.append(len(set(imported)))
        assert fz.list_tags() == set()  # refs come last
    assert runs == [2, 5, total - 1]
    s = import_icechunk(str(tmp / "ic"), str(tmp / "fz"))
    assert s.commits_imported == 0 and s.commits_already_there == total
    fz = frazil.Repository.open(frazil.local_filesystem_storage(str(tmp / "fz")))
    _check_history(ic_repo, fz, s.snapshots)
    _check_same(ic_repo, fz, s.snapshots)


def _stop_at_call(n: int) -> Callable[[str, int, int | None], None]:
    calls = 0

    def progress(stage: str, done: int, of: int | None) -> None:
        nonlocal calls
        if stage == "commits":
            calls += 1
            if calls == n:
                raise _Stop()

    return progress


def case_long(tmp: Path) -> None:
    """The long form of ``case_resume``: 4 branches forking from each other over 120
    commits, random chunk writes and deletions, the import stopped every 9 commits."""
    import icechunk as ic

    from frazil.tools.icechunk_import import import_icechunk

    repo = ic.Repository.create(ic.local_filesystem_storage(str(tmp / "ic")))
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(40, 40), chunks=(4, 4), dtype="i2")
    s.commit("empty array")
    rng = np.random.default_rng(7)
    branches = ["main"]
    for i in range(120):
        if i % 30 == 29:
            name = f"b{i}"
            repo.create_branch(name, repo.lookup_branch(branches[int(rng.integers(len(branches)))]))
            branches.append(name)
        b = branches[int(rng.integers(len(branches)))]
        s = repo.writable_session(b)
        a = zarr.open_array(s.store, path="a")
        y, x = (int(v) * 4 for v in rng.integers(10, size=2))
        a[y : y + 8, x : x + 4] = i + 1 if i % 5 else 0  # 0: the fill value, chunks deleted
        if i % 11 == 0:
            repo.create_tag(f"t{i}", s.commit(f"{b} {i}", metadata={"i": i}))
        else:
            s.commit(f"{b} {i}", metadata={"i": i})
    total = len(_snapshot_ids(repo))
    stops = 0
    while True:
        try:  # the first call reports what is there already: 9 commits, then a stop
            s = import_icechunk(str(tmp / "ic"), str(tmp / "fz"), progress=_stop_at_call(10))
            break
        except _Stop:
            stops += 1
    assert stops == (total - 1) // 9
    fz = frazil.Repository.open(frazil.local_filesystem_storage(str(tmp / "fz")))
    _check_history(repo, fz, s.snapshots)
    _check_same(repo, fz, s.snapshots)


def case_virtual(tmp: Path) -> None:
    import icechunk as ic

    from frazil.tools.icechunk_import import import_icechunk

    src = tmp / "files"
    src.mkdir()
    np.arange(8, dtype="<i4").tofile(src / "data.bin")
    prefix = src.as_uri() + "/"
    config = ic.RepositoryConfig.default()
    config.set_virtual_chunk_container(
        ic.VirtualChunkContainer(prefix, ic.local_filesystem_store(str(src)))
    )
    auth = {prefix: None}
    repo = ic.Repository.create(
        ic.local_filesystem_storage(str(tmp / "ic")), config, authorize_virtual_chunk_access=auth
    )
    s = repo.writable_session("main")
    zarr.create_array(
        s.store, name="v", shape=(8,), chunks=(4,), dtype="<i4", compressors=None, filters=None
    )
    for i in range(2):
        s.store.set_virtual_ref(f"v/c/{i}", f"{prefix}data.bin", offset=16 * i, length=16)
    s.commit("virtual refs")
    try:  # without the container authorized, the chunks cannot be read: a clear failure
        import_icechunk(str(tmp / "ic"), str(tmp / "refused"))
    except Exception as e:
        assert "data.bin" in str(e) or "authoriz" in str(e).lower(), e
    else:
        raise AssertionError("an unauthorized virtual read was not refused")
    s = import_icechunk(str(tmp / "ic"), str(tmp / "fz"), authorize_virtual_chunk_access=auth)
    assert s.chunks_copied == 2 and s.bytes_copied == 32
    (src / "data.bin").unlink()  # frazil's copy no longer needs the source
    fz = frazil.Repository.open(frazil.local_filesystem_storage(str(tmp / "fz")))
    session = fz.readonly_session("main")
    assert session.all_virtual_chunk_locations() == []
    assert all(session.chunk_type("v", [i]).name != "VIRTUAL" for i in range(2))
    assert zarr.open_array(session.store, path="v", mode="r")[:].tolist() == list(range(8))


def case_cli(tmp: Path) -> None:
    ic_repo = _build(tmp / "ic")
    cmd = [sys.executable, "-m", "frazil.tools.cli", "import-icechunk"]
    proc = subprocess.run(
        [*cmd, str(tmp / "ic"), str(tmp / "fz"), "--json"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["commits_imported"] == 8 and out["chunks_deleted"] == 1
    assert set(out["branches"]) == {"main", "dev"} and set(out["tags"]) == {"v1", "experiment"}
    assert out["snapshots"][ic_repo.lookup_tag("v1")] == out["tags"]["v1"]
    proc = subprocess.run([*cmd, str(tmp / "ic"), str(tmp / "fz")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("imported 0 commits from"), proc.stdout
    assert "9 already there" in proc.stdout and "2 branches, 2 tags" in proc.stdout
    proc = subprocess.run([*cmd, "--help"], capture_output=True, text=True)
    assert "native chunk" in " ".join(proc.stdout.split()), proc.stdout


def case_foreign(tmp: Path) -> None:
    from frazil.errors import InvalidInputError
    from frazil.tools.icechunk_import import import_icechunk

    _build(tmp / "ic")
    (tmp / "fz").mkdir()
    fz = frazil.Repository.create(frazil.local_filesystem_storage(str(tmp / "fz")))
    s = fz.writable_session("main")
    zarr.group(s.store)
    sid = s.commit("my own work")
    try:
        import_icechunk(str(tmp / "ic"), str(tmp / "fz"))
    except InvalidInputError as e:
        assert "was not imported from Icechunk" in str(e) and sid in str(e), e
    else:
        raise AssertionError("a destination with other commits was accepted")
    assert fz.lookup_branch("main") == sid and fz.list_branches() == {"main"}


CASES = {
    "history": case_history,
    "resume": case_resume,
    "long": case_long,
    "virtual": case_virtual,
    "cli": case_cli,
    "foreign": case_foreign,
}

if __name__ == "__main__":
    name, where = sys.argv[1], Path(sys.argv[2])
    os.environ.setdefault("RUST_LOG", "error")  # Icechunk's local-storage warning
    CASES[name](where)
    print(f"case {name} ok")
