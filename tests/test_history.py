"""The history index (frazil.history, SPEC §4.5): ancestry in a bounded number of reads,
the same answer as walking parent links, old snapshots still followed, damage caught, and
garbage collection that keeps what the index needs."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import zarr

import frazil
from frazil import runtime
from frazil.format import SnapshotId
from frazil.storage.faults import FaultInjectingStorage

DATA = Path(__file__).parent / "data" / "format-v1"
T = TypeVar("T")


def commit_many(repo: frazil.Repository, n: int, branch: str = "main") -> list[str]:
    ids = []
    for i in range(n):
        s = repo.writable_session(branch)
        a = zarr.open_array(s.store, path="a")
        a[i % 10] = i
        ids.append(s.commit(f"commit {i}", metadata={"i": i}))
    return ids


def new_repo(storage: frazil.Storage) -> frazil.Repository:
    repo = frazil.Repository.create(storage)
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(10,), chunks=(1,), dtype="i8")
    s.commit("array")
    return repo


def walk_parents(repo: frazil.Repository, sid: str) -> list[str]:
    """History the slow way: one footer read per commit, following parent links."""
    out: list[str | None] = [sid]
    while out[-1] is not None:
        info = runtime.run(repo.reader.commit_info(SnapshotId.parse(out[-1])))
        out.append(str(info.parent_id) if info.parent_id else None)
    return [s for s in out if s is not None]


@pytest.mark.parametrize("n", [1, 7, 8, 9, 63, 64, 65, 600])
def test_ancestry_through_the_index_is_the_parent_chain(n: int) -> None:
    repo = new_repo(frazil.in_memory_storage())
    ids = commit_many(repo, n)
    fresh = frazil.Repository.open(repo.storage)
    history = list(fresh.ancestry(branch="main"))
    assert [h.id for h in history] == walk_parents(fresh, ids[-1])
    assert [h.message for h in history[:n]] == [f"commit {i}" for i in reversed(range(n))]
    assert history[0].metadata == {"i": n - 1}
    assert history[-1].message == "Repository initialized" and history[-1].parent_id is None
    for newer, older in zip(history, history[1:]):
        assert newer.parent_id == older.id


class RoundCounting(FaultInjectingStorage):
    """Counts calls, and rounds: a call's round is one more than the latest round of the
    calls that had finished when it started, so calls made together share a round and
    ``rounds`` is the length of the longest chain of calls that waited for each other
    (what a network's latency multiplies)."""

    def __init__(self, inner: frazil.Storage) -> None:
        super().__init__(inner)
        self.rounds = 0

    async def _call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        self.calls += 1
        start = self.rounds
        await asyncio.sleep(0)  # let the calls made together all start first
        try:
            return await op()
        finally:
            self.rounds = max(self.rounds, start + 1)


def test_ancestry_takes_a_bounded_number_of_reads_in_three_rounds() -> None:
    counting = RoundCounting(frazil.in_memory_storage())
    repo = new_repo(counting)
    ids = commit_many(repo, 1_003)
    index = runtime.run(repo.reader.commit_header(SnapshotId.parse(ids[-1])))[1]
    assert index is not None and index.pending and len(index.segments) > 8
    fresh = frazil.Repository.open(counting)
    calls, rounds = counting.calls, counting.rounds
    assert len(list(fresh.ancestry(branch="main"))) == 1_005
    # one ref, one footer and the cuts, at most 7 pending footers and the segments
    # (<= 7 per tier); in three rounds: the ref, then the cuts with the tip's footer, then
    # the pending footers with every segment the footer lists
    assert counting.calls - calls <= 40, counting.calls - calls
    assert counting.rounds - rounds == 3


def test_ancestry_from_any_snapshot_and_a_tag() -> None:
    repo = new_repo(frazil.in_memory_storage())
    ids = commit_many(repo, 100)
    repo.create_tag("t", ids[49])
    assert [h.id for h in repo.ancestry(tag="t")] == walk_parents(repo, ids[49])
    assert [h.id for h in repo.ancestry(snapshot_id=ids[10])] == walk_parents(repo, ids[10])
    assert next(iter(repo.ancestry(branch="main"))).id == ids[-1]


def test_commits_on_an_old_repository_read_past_the_index(tmp_path: Path) -> None:
    root = tmp_path / "old"
    shutil.copytree(DATA / "repo", root)
    repo = frazil.Repository.open(frazil.local_filesystem_storage(root))
    old = [h.id for h in repo.ancestry(branch="main")]
    for i in range(20):  # snapshots written before the index, then 20 with it
        s = repo.writable_session("main")
        zarr.open_group(s.store).attrs["n"] = i
        s.commit(f"new {i}")
    history = [h.id for h in repo.ancestry(branch="main")]
    assert history[20:] == old
    assert history == walk_parents(repo, history[0])
    assert repo.fsck().ok


def test_a_damaged_history_segment_is_caught(tmp_path: Path) -> None:
    root = tmp_path / "r"
    repo = new_repo(frazil.local_filesystem_storage(root))
    commit_many(repo, 30)
    victim = sorted((root / "history").iterdir())[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    fresh = frazil.Repository.open(frazil.local_filesystem_storage(root))
    with pytest.raises(frazil.FormatError, match="history"):
        list(fresh.ancestry(branch="main"))
    report = fresh.fsck()
    assert any(p.key == f"history/{victim.name}" for p in report.problems), report.problems


def test_gc_keeps_what_the_index_names_and_sweeps_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "r"
    repo = new_repo(frazil.local_filesystem_storage(root))
    ids = commit_many(repo, 200)
    repo.create_branch("side", ids[100])
    commit_many(repo, 30, "side")
    orphan = sorted((root / "history").iterdir())[-1].read_bytes()
    (root / "history" / "06H0000000000000ZZZG").write_bytes(orphan)  # nothing names it
    summary = repo.garbage_collect(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    assert summary.history_segments_deleted == 1
    assert summary.manifests_deleted == 0  # merges write only what a snapshot names
    fresh = frazil.Repository.open(frazil.local_filesystem_storage(root))
    for branch in ("main", "side"):
        history = [h.id for h in fresh.ancestry(branch=branch)]
        assert history == walk_parents(fresh, history[0])
    assert fresh.fsck().ok


def test_content_after_a_long_history_reads_at_every_snapshot() -> None:
    repo = new_repo(frazil.in_memory_storage())
    ids = commit_many(repo, 120)
    model = np.zeros(10, np.int64)
    for i, sid in enumerate(ids):
        model[i % 10] = i
        got = zarr.open_array(repo.readonly_session(snapshot_id=sid).store, path="a", mode="r")
        np.testing.assert_array_equal(got[:], model)


def _put_cuts(repo: frazil.Repository, data: bytes) -> None:
    runtime.run(repo.storage.put("refs/cuts.json", data))


def test_hostile_cuts_are_refused() -> None:
    from frazil.format import encode_cuts

    repo = new_repo(frazil.in_memory_storage())
    ids = commit_many(repo, 3)  # oldest first
    newest, middle = SnapshotId.parse(ids[-1]), SnapshotId.parse(ids[-2])
    _put_cuts(repo, encode_cuts({middle: newest}))  # middle's parent: its own child
    with pytest.raises(frazil.FormatError, match="loops back"):
        list(frazil.Repository.open(repo.storage).ancestry(branch="main"))
    _put_cuts(repo, b'{"format_version": 1, "object_type": "history_cuts", "cuts": {"x": 1}}')
    with pytest.raises(frazil.FormatError, match="refs/cuts.json"):
        list(frazil.Repository.open(repo.storage).ancestry(branch="main"))
    _put_cuts(repo, b"[" * 100_000)
    with pytest.raises(frazil.FormatError, match="refs/cuts.json"):
        list(frazil.Repository.open(repo.storage).ancestry(branch="main"))


def test_expiry_over_a_long_history_is_one_write() -> None:
    repo = new_repo(frazil.in_memory_storage())
    commit_many(repo, 150)
    cutoff = dt.datetime.now(dt.UTC)
    tip = commit_many(repo, 1)[-1]
    before = set(runtime.run(repo.storage.list("")))
    expired = repo.expire_snapshots(cutoff)
    assert len(expired) >= 150
    assert set(runtime.run(repo.storage.list(""))) - before == {"refs/cuts.json"}  # only it
    history = list(repo.ancestry(branch="main"))
    assert [i.id for i in history][0] == tip and len(history) == 2
    assert repo.garbage_collect(dt.datetime.now(dt.UTC)).snapshots_deleted == len(expired)
    assert repo.fsck().ok
    assert [i.id for i in frazil.Repository.open(repo.storage).ancestry(branch="main")] == [
        i.id for i in history
    ]


# -- a long history, every snapshot read back -------------------------------------------------
LONG_CONFIG = frazil.RepositoryConfig(
    inline_chunk_threshold_bytes=64, manifest_merge_fanout=2, manifest_split_rows=4
)
SMALL, BIG = 4, 32  # int64 values per chunk: "s" inline (32 bytes), "g" native (256 bytes)


class LongHistory:
    """main's commits and what each snapshot holds; parents as history (and its cuts) say."""

    def __init__(self, repo: frazil.Repository) -> None:
        self.repo = repo
        self.content: dict[str, dict[str, np.ndarray]] = {}
        self.parent: dict[str, str | None] = {}
        self.written: dict[str, dt.datetime] = {}
        self.tags: dict[str, str] = {}
        root = repo.lookup_branch("main")
        self._add(root, None, {})

    def _add(self, sid: str, parent: str | None, content: dict[str, np.ndarray]) -> None:
        self.content[sid], self.parent[sid] = content, parent
        self.written[sid] = self.repo.lookup_snapshot(sid).written_at

    @property
    def tip(self) -> str:
        return self.repo.lookup_branch("main")

    def chain(self, sid: str | None) -> list[str]:
        out = []
        while sid is not None:
            out.append(sid)
            sid = self.parent[sid]
        return out

    def commit(self, rng: np.random.Generator, i: int) -> None:
        tip = self.tip
        content = {k: v.copy() for k, v in self.content[tip].items()}
        s = self.repo.writable_session("main")
        if not content:  # the first commit makes the arrays
            for name, chunks in (("s", SMALL), ("g", BIG)):
                zarr.create_array(
                    s.store, name=name, shape=(16 * chunks,), chunks=(chunks,), dtype="i8"
                )
                content[name] = np.zeros(16 * chunks, "i8")
        for _ in range(int(rng.integers(1, 4))):
            name = "s" if rng.random() < 0.5 else "g"
            size = SMALL if name == "s" else BIG
            c = int(rng.integers(16))
            # now and then the fill value: zarr deletes the chunk (a tombstone through merges)
            value = 0 if rng.random() < 0.1 else i
            zarr.open_array(s.store, path=name)[c * size : (c + 1) * size] = value
            content[name][c * size : (c + 1) * size] = value
        self._add(s.commit(f"commit {i}", metadata={"i": i}), tip, content)

    def compact(self) -> None:
        tip = self.tip
        sid = self.repo.compact("main").snapshot_id
        assert sid is not None
        self._add(sid, tip, {k: v.copy() for k, v in self.content[tip].items()})

    def expire_and_collect(self, cutoff: dt.datetime) -> None:
        """Expiry at ``cutoff``, then gc: the model's expectations (as SPEC §10.2 says:
        every ref keeps its tip, the first snapshot and what is not older) checked."""
        keeps = {
            tip: [
                s
                for s in self.chain(tip)
                if s == tip or self.parent[s] is None or self.written[s] >= cutoff
            ]
            for tip in {self.tip, *self.tags.values()}
        }
        kept = {s for keep in keeps.values() for s in keep}
        before = {s for tip in keeps for s in self.chain(tip)}
        assert self.repo.expire_snapshots(cutoff) == before - kept
        for keep in keeps.values():
            for s, below in zip(keep, [*keep[1:], None]):
                self.parent[s] = below
        gone = set(self.content) - kept
        summary = self.repo.garbage_collect(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1))
        assert summary.snapshots_deleted == len(gone)
        for sid in gone:
            with pytest.raises(frazil.NotFoundError):
                self.repo.readonly_session(snapshot_id=sid)
            del self.content[sid], self.parent[sid], self.written[sid]

    def check(self, only: set[str] | None = None) -> None:
        """Every snapshot (or those in ``only``) reads back what was committed at that
        point; main's and every tag's history is the model's."""
        for ref, tip in [({"branch": "main"}, self.tip)] + [
            ({"tag": t}, sid) for t, sid in self.tags.items()
        ]:
            assert [h.id for h in self.repo.ancestry(**ref)] == self.chain(tip)  # type: ignore[arg-type]
        for sid, content in self.content.items():
            if only is not None and sid not in only:
                continue
            store = self.repo.readonly_session(snapshot_id=sid).store
            for name in ("s", "g"):
                if name in content:
                    got = zarr.open_array(store, path=name, mode="r")[...]
                    np.testing.assert_array_equal(got, content[name], err_msg=f"{sid} {name}")


@pytest.mark.parametrize(
    "commits", [300, pytest.param(3_000, marks=pytest.mark.slow, id="3000-slow")]
)
def test_every_snapshot_of_a_long_history_reads_back(commits: int) -> None:
    """Thousands of small commits merging manifest segments at commit (fanout 2) and
    history segments (fanout 8), compactions, tags, and expiry + gc of the older part now
    and then: every snapshot left reads exactly what was committed at that point, through
    a fresh repository too, and fsck is clean."""
    repo = frazil.Repository.create(frazil.in_memory_storage(), LONG_CONFIG)
    model = LongHistory(repo)
    rng = np.random.default_rng(commits)
    every = min(commits // 2, 600)  # commits between expiries
    checked: set[str] = set()
    for i in range(1, commits + 1):
        model.commit(rng, i)
        if i % 97 == 0:
            model.compact()
        if i % (every // 2) == every // 4:
            name = f"t{i}"
            repo.create_tag(name, model.tip)
            model.tags[name] = model.tip
        if i % every == 0:
            model.check(set(model.content) - checked)  # the snapshots made since the last
            # keep the newest third of these commits and what the tags hold
            model.expire_and_collect(model.written[model.chain(model.tip)[every // 3]])
            if i == commits:  # the last time through a fresh repository (nothing cached)
                model.repo = frazil.Repository.open(repo.storage)
            model.check()  # every snapshot left, after gc
            checked = set(model.content)
    assert len(model.chain(model.tip)) > every // 3 and len(model.tags) >= 2
    assert repo.fsck().ok
