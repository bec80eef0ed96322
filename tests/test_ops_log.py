"""Repository.ops_log: what moved which ref, and what changed the repository, when."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import zarr

import frazil
from frazil import UpdateType
from frazil.format import oplog
from frazil.format.keys import OPS


def _commit(repo: frazil.Repository, branch: str, value: int) -> str:
    s = repo.writable_session(branch)
    zarr.open_array(s.store, path="a")[value] = value + 1
    return s.commit(f"write {value}", rebase_with=frazil.ConflictDetector())


def _repo(storage: frazil.Storage) -> tuple[frazil.Repository, str]:
    repo = frazil.Repository.create(storage)
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(64,), chunks=(1,), dtype="i4", fill_value=0)
    return repo, s.commit("array")


def test_every_kind_of_update_newest_first(repo: frazil.Repository) -> None:
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(64,), chunks=(1,), dtype="i4", fill_value=0)
    first = s.commit("array")
    repo.create_branch("dev", first)
    second = _commit(repo, "dev", 1)
    repo.reset_branch("dev", first)
    repo.delete_branch("dev")
    repo.create_branch("dev", second)  # over the tombstone: the branch's log goes on
    repo.create_tag("v1", first)
    repo.delete_tag("v1")
    repo.set_metadata({"owner": "me"})
    repo.update_metadata({"x": 1})
    repo.save_config()
    third = _commit(repo, "main", 3)
    repo.expire_snapshots(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))  # expires nothing: no entry
    repo.expire_snapshots(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    repo.garbage_collect(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    log = list(repo.ops_log())
    assert [u.kind for u in reversed(log)] == [
        UpdateType.RepoInitialized(),
        UpdateType.NewCommit("main", first),
        UpdateType.BranchCreated("dev"),
        UpdateType.NewCommit("dev", second),
        UpdateType.BranchReset("dev", second),
        UpdateType.BranchDeleted("dev", first),
        UpdateType.BranchCreated("dev"),
        UpdateType.TagCreated("v1"),
        UpdateType.TagDeleted("v1", first),
        UpdateType.MetadataChanged(),
        UpdateType.MetadataChanged(),
        UpdateType.ConfigChanged(),
        UpdateType.NewCommit("main", third),
        UpdateType.ExpirationRan(),
        UpdateType.GCRan(),
    ]
    times = [u.updated_at for u in log]
    assert times == sorted(times, reverse=True)
    assert all(t.tzinfo is not None and u.backup_path is None for t, u in zip(times, log))
    assert isinstance(log[0].kind, UpdateType)


def test_archives_keep_every_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past LIMIT entries a ref moves older ones to archive objects, linked newest to
    oldest; the log still lists every commit, and the ref stays small."""
    monkeypatch.setattr(oplog, "LIMIT", 6)
    monkeypatch.setattr(oplog, "KEEP", 2)
    storage = frazil.in_memory_storage()
    repo, first = _repo(storage)
    made = [first] + [_commit(repo, "main", i) for i in range(1, 20)]
    commits = [u.kind for u in repo.ops_log() if isinstance(u.kind, UpdateType.NewCommit)]
    assert [c.new_snap_id for c in commits] == made[::-1]
    archives = asyncio.run(storage.list(OPS))
    assert len(archives) >= 4
    ref = json.loads(asyncio.run(storage.get("refs/branch.main/ref.json")))
    assert len(ref["ops"]) <= 6 and ref["ops_next"] in {k[len(OPS) :] for k in archives}
    repo.garbage_collect(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    assert repo.fsck().ok
    assert set(asyncio.run(storage.list(OPS))) == set(archives)  # gc leaves the log alone
    after = [u.kind for u in repo.ops_log() if isinstance(u.kind, UpdateType.NewCommit)]
    assert after == commits


def test_concurrent_commits_are_logged_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries ride on the ref's compare-and-swap: a commit that lost a race leaves no
    entry (nor does an archive prepared for it), one that landed leaves exactly one."""
    monkeypatch.setattr(oplog, "LIMIT", 5)
    monkeypatch.setattr(oplog, "KEEP", 2)
    repo, _ = _repo(frazil.in_memory_storage())
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: _commit(repo, "main", i), range(1, 25)))
    history = [i.id for i in repo.ancestry(branch="main")][:-1]  # all but the initial one
    commits = [
        u.kind.new_snap_id for u in repo.ops_log() if isinstance(u.kind, UpdateType.NewCommit)
    ]
    assert sorted(commits) == sorted(history) and len(commits) == 25


def test_async_form() -> None:
    repo, first = _repo(frazil.in_memory_storage())

    async def go() -> list[frazil.Update]:
        return [u async for u in repo.ops_log_async()]

    assert [u.kind for u in asyncio.run(go())] == [
        UpdateType.NewCommit("main", first),
        UpdateType.RepoInitialized(),
    ]


def test_damaged_log_never_stops_a_commit_and_is_reported(tmp_path: Path) -> None:
    repo, _ = _repo(frazil.local_filesystem_storage(str(tmp_path)))
    ref = tmp_path / "refs" / "branch.main" / "ref.json"
    obj = json.loads(ref.read_text())
    obj["ops"] = [{"op": "no-such-op", "at": "yesterday"}]
    obj["ops_next"] = "../../config.json"
    ref.write_text(json.dumps(obj))
    with pytest.raises(frazil.FormatError, match="refs/branch.main/ref.json"):
        list(repo.ops_log())
    sid = _commit(repo, "main", 5)  # the damaged log starts over
    assert [u.kind for u in repo.ops_log()] == [UpdateType.NewCommit("main", sid)]


def test_archive_loop_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oplog, "LIMIT", 3)
    monkeypatch.setattr(oplog, "KEEP", 1)
    repo, _ = _repo(frazil.local_filesystem_storage(str(tmp_path)))
    for i in range(4):
        _commit(repo, "main", i)
    newest = json.loads((tmp_path / "refs" / "branch.main" / "ref.json").read_text())
    archive = tmp_path / "ops" / newest["ops_next"]
    obj = json.loads(archive.read_text())
    obj["ops_next"] = archive.name  # points at itself
    archive.write_text(json.dumps(obj))
    with pytest.raises(frazil.FormatError, match="loop"):
        list(repo.ops_log())


def test_logging_can_be_turned_off_for_benchmarks(monkeypatch: pytest.MonkeyPatch) -> None:
    from frazil import refs

    monkeypatch.setattr(refs, "RECORD_OPS", False)
    repo, _ = _repo(frazil.in_memory_storage())
    assert list(repo.ops_log()) == []
