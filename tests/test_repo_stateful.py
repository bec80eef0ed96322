"""Hypothesis state machine of repository operations (commits, branches, tags, resets,
compaction, expiry, garbage collection, time travel, errors) against a plain Python model;
run as is, and with merging at commit so frequent (fanout 2, segments of at most 2
references) that most commits merge manifest segments. After every step every branch and
tag reads what the model says."""

from __future__ import annotations

import dataclasses
import datetime as dt
import tempfile
from dataclasses import dataclass
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, note, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from zarr.core.sync import sync
from zarr.testing.stateful import with_frequency

import frazil
from frazil.errors import (
    AlreadyExistsError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
)

# "a" has 2-byte chunks (inline), "b" 32-byte chunks (native, above the threshold)
CONFIG = frazil.RepositoryConfig(inline_chunk_threshold_bytes=24)
# merging at commit as often as it gets: segments of at most 2 references, runs of 2 merged
MERGING = frazil.RepositoryConfig(
    inline_chunk_threshold_bytes=24, manifest_merge_fanout=2, manifest_split_rows=2
)
ARRAYS: dict[str, tuple[tuple[int, ...], tuple[int, ...], str]] = {
    "a": ((6,), (2,), "int8"),
    "b": ((4, 4), (2, 2), "float64"),
}
BRANCHES = ["main", "dev", "feature", "x"]
TAGS = ["v1", "v2", "v3"]
EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)

Content = dict[str, np.ndarray]


@dataclass
class Snap:
    """What the model knows of one snapshot."""

    parent: str | None
    content: Content
    message: str
    written_at: dt.datetime


def read_content(repo: frazil.Repository, sid: str) -> Content:
    """Every array of the snapshot, read through zarr."""
    store = repo.readonly_session(snapshot_id=sid).store

    async def keys() -> list[str]:
        return [k async for k in store.list()]

    present = set(sync(keys()))
    out: Content = {}
    for name in ARRAYS:
        if f"{name}/zarr.json" in present:
            out[name] = np.asarray(zarr.open_array(store, path=name, mode="r")[...])
    return out


def same_content(a: Content, b: Content) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a
    )


class RepoMachine(RuleBasedStateMachine):
    def __init__(self, storage: frazil.Storage, config: frazil.RepositoryConfig = CONFIG) -> None:
        super().__init__()
        self.storage = storage
        self.repo = frazil.Repository.create(storage, config)
        root = self.repo.lookup_branch("main")
        info = self.repo.lookup_snapshot(root)
        self.snaps: dict[str, Snap] = {root: Snap(None, {}, info.message, info.written_at)}
        self.gone: set[str] = set()  # snapshots garbage collection deleted
        self.branches: dict[str, str] = {"main": root}
        self.tags: dict[str, str] = {}
        self.dead_tags: set[str] = set()
        self.n = 0
        self.orphans = 0  # snapshots of commits that lost a race: garbage from the start

    # -- model helpers ------------------------------------------------------------------
    def chain(self, sid: str) -> list[str]:
        out: list[str] = []
        cur: str | None = sid
        while cur is not None:
            out.append(cur)
            cur = self.snaps[cur].parent
        return out

    def reachable(self) -> set[str]:
        out: set[str] = set()
        for tip in [*self.branches.values(), *self.tags.values()]:
            out.update(self.chain(tip))
        return out

    def check_snapshot(self, sid: str) -> None:
        got = read_content(self.repo, sid)
        assert same_content(got, self.snaps[sid].content), (sid, got, self.snaps[sid].content)

    def check_ancestry(self, **ref: str) -> None:
        tip = self.branches[ref["branch"]] if "branch" in ref else self.tags[ref["tag"]]
        got = list(self.repo.ancestry(**ref))
        want = self.chain(tip)
        assert [i.id for i in got] == want
        assert [i.parent_id for i in got] == [self.snaps[s].parent for s in want]
        assert [i.message for i in got] == [self.snaps[s].message for s in want]

    def snapshot_ids(self) -> st.SearchStrategy[str]:
        return st.sampled_from(sorted(self.snaps))

    # -- commits -------------------------------------------------------------------------
    @rule(data=st.data(), times=st.integers(1, 3))
    def commit(self, data: st.DataObject, times: int) -> None:
        for _ in range(times):
            self._commit(data)

    def _commit(self, data: st.DataObject) -> None:
        branch = data.draw(st.sampled_from(sorted(self.branches)), label="branch")
        tip = self.branches[branch]
        session = self.repo.writable_session(branch)
        assert session.snapshot_id == tip
        content = {k: v.copy() for k, v in self.snaps[tip].content.items()}
        root = zarr.open_group(session.store, mode="a")
        for _ in range(data.draw(st.integers(1, 3), label="writes")):
            name = data.draw(st.sampled_from(sorted(ARRAYS)), label="array")
            shape, chunks, dtype = ARRAYS[name]
            if name in content and data.draw(st.integers(0, 5), label="delete?") == 0:
                del root[name]
                del content[name]
                continue
            if name not in content:
                root.create_array(
                    name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, compressors=None
                )
                content[name] = np.zeros(shape, dtype)
            arr = zarr.open_array(session.store, path=name)
            sel = tuple(slice(data.draw(st.integers(0, n - 1)), None) for n in shape)
            value = data.draw(st.integers(-100, 100), label="value")
            arr[sel] = value
            content[name][sel] = value
        self.n += 1
        root.attrs["n"] = self.n  # a change even if the writes cancel out
        message = f"commit {self.n} on {branch}"
        sid = session.commit(message, metadata={"n": self.n})
        note(f"commit {sid} on {branch}: {message}")
        assert sid not in self.snaps
        info = self.repo.lookup_snapshot(sid)
        assert info.parent_id == tip and info.message == message and info.metadata["n"] == self.n
        self.snaps[sid] = Snap(tip, content, message, info.written_at)
        self.branches[branch] = sid

    @rule(data=st.data())
    @with_frequency(0.5)
    def stale_commit_conflicts(self, data: st.DataObject) -> None:
        """Two sessions from one tip: the second commit raises ConflictError."""
        branch = data.draw(st.sampled_from(sorted(self.branches)), label="branch")
        tip = self.branches[branch]
        first = self.repo.writable_session(branch)
        second = self.repo.writable_session(branch)
        zarr.open_group(second.store, mode="a").attrs["stale"] = True
        zarr.open_group(first.store, mode="a").attrs["won"] = True
        self.n += 1
        message = f"commit {self.n} on {branch} (attributes)"
        sid = first.commit(message)
        info = self.repo.lookup_snapshot(sid)
        content = {k: v.copy() for k, v in self.snaps[tip].content.items()}
        self.snaps[sid] = Snap(tip, content, message, info.written_at)
        self.branches[branch] = sid
        with pytest.raises(ConflictError) as e:
            second.commit("loses")  # it sees the branch moved before writing anything
        assert e.value.expected_parent == tip and e.value.actual_parent == sid
        assert self.repo.lookup_branch(branch) == sid

    # -- branches ------------------------------------------------------------------------
    @rule(name=st.sampled_from(BRANCHES), data=st.data())
    def create_branch(self, name: str, data: st.DataObject) -> None:
        target = data.draw(self.snapshot_ids(), label="target")
        if name in self.branches:
            with pytest.raises(AlreadyExistsError):
                self.repo.create_branch(name, target)
            assert self.repo.lookup_branch(name) == self.branches[name]
        else:
            self.repo.create_branch(name, target)
            self.branches[name] = target

    @rule(name=st.sampled_from(BRANCHES))
    def delete_branch(self, name: str) -> None:
        if name == "main":
            with pytest.raises(InvalidInputError):
                self.repo.delete_branch(name)
        elif name not in self.branches:
            with pytest.raises(NotFoundError):
                self.repo.delete_branch(name)
            with pytest.raises(NotFoundError):
                self.repo.writable_session(name)
        else:
            self.repo.delete_branch(name)
            del self.branches[name]
            with pytest.raises(NotFoundError):
                self.repo.lookup_branch(name)

    @rule(name=st.sampled_from(BRANCHES), data=st.data())
    def reset_branch(self, name: str, data: st.DataObject) -> None:
        target = data.draw(self.snapshot_ids(), label="target")
        if name not in self.branches:
            with pytest.raises(NotFoundError):
                self.repo.reset_branch(name, target)
            return
        if data.draw(st.booleans(), label="guarded") and target != self.branches[name]:
            with pytest.raises(ConflictError):  # a guard naming another snapshot
                self.repo.reset_branch(name, target, from_snapshot_id=target)
        self.repo.reset_branch(name, target, from_snapshot_id=self.branches[name])
        self.branches[name] = target
        assert self.repo.lookup_branch(name) == target

    # -- tags ----------------------------------------------------------------------------
    @rule(name=st.sampled_from(TAGS), data=st.data())
    @with_frequency(0.5)
    def create_tag(self, name: str, data: st.DataObject) -> None:
        target = data.draw(self.snapshot_ids(), label="target")
        if name in self.tags or name in self.dead_tags:
            with pytest.raises(AlreadyExistsError):
                self.repo.create_tag(name, target)
        else:
            self.repo.create_tag(name, target)
            self.tags[name] = target
        if name in self.tags:  # tags never move
            assert self.repo.lookup_tag(name) == self.tags[name]

    @rule(name=st.sampled_from(TAGS))
    @with_frequency(0.5)
    def delete_tag(self, name: str) -> None:
        if name not in self.tags:
            with pytest.raises(NotFoundError):
                self.repo.delete_tag(name)
        else:
            self.repo.delete_tag(name)
            del self.tags[name]
            self.dead_tags.add(name)
        with pytest.raises(NotFoundError):
            self.repo.lookup_tag(name)
        with pytest.raises(NotFoundError):
            self.repo.readonly_session(tag=name)

    # -- invalid input -------------------------------------------------------------------
    @rule(
        name=st.sampled_from(["", "a/b", "a\\b", " pad", "x\x00"]),
        kind=st.sampled_from(["branch", "tag"]),
    )
    @with_frequency(0.5)
    def invalid_names(self, name: str, kind: str) -> None:
        target = self.branches["main"]
        with pytest.raises(InvalidInputError):
            if kind == "branch":
                self.repo.create_branch(name, target)
            else:
                self.repo.create_tag(name, target)

    @precondition(lambda self: bool(self.gone))
    @rule(data=st.data())
    def refs_to_collected_snapshots(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(sorted(self.gone)), label="collected snapshot")
        with pytest.raises(NotFoundError):
            self.repo.create_branch("never", sid)
        with pytest.raises(NotFoundError):
            self.repo.create_tag("never", sid)
        for repo in (self.repo, frazil.Repository.open(self.storage)):
            with pytest.raises(NotFoundError):
                repo.readonly_session(snapshot_id=sid)
            with pytest.raises(NotFoundError):
                repo.lookup_snapshot(sid)

    # -- maintenance ---------------------------------------------------------------------
    @rule(data=st.data(), rows=st.sampled_from([None, 1, 3]))
    def compact(self, data: st.DataObject, rows: int | None) -> None:
        """A compaction commits the branch's content unchanged, in fewer segments."""
        branch = data.draw(st.sampled_from(sorted(self.branches)), label="branch")
        tip = self.branches[branch]
        summary = self.repo.compact(branch, rows_per_segment=rows)
        note(f"compact {branch} (rows {rows}): {summary}")
        if summary.snapshot_id is None:  # every array already compacted
            assert self.repo.lookup_branch(branch) == tip
            return
        info = self.repo.lookup_snapshot(summary.snapshot_id)
        assert info.parent_id == tip and summary.snapshot_id not in self.snaps
        content = {k: v.copy() for k, v in self.snaps[tip].content.items()}
        self.snaps[summary.snapshot_id] = Snap(tip, content, info.message, info.written_at)
        self.branches[branch] = summary.snapshot_id

    @rule(data=st.data())
    def expire_snapshots(self, data: st.DataObject) -> None:
        if data.draw(st.booleans(), label="cutoff at a snapshot"):
            cutoff = self.snaps[data.draw(self.snapshot_ids(), label="cutoff")].written_at
        else:
            cutoff = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
        refs = [*self.branches.values(), *self.tags.values()]
        keeps: dict[str, list[str]] = {}
        for tip in refs:
            keeps[tip] = [
                s
                for s in self.chain(tip)
                if s == tip or self.snaps[s].parent is None or self.snaps[s].written_at >= cutoff
            ]
        kept = {s for keep in keeps.values() for s in keep}
        want = {s for tip in refs for s in self.chain(tip)} - kept
        got = self.repo.expire_snapshots(cutoff)
        note(f"expire before {cutoff}: dropped {sorted(got)}")
        assert got == want
        for keep in keeps.values():  # each kept snapshot's parent: the next kept below it
            for s, below in zip(keep, [*keep[1:], None]):
                assert below is not None or self.snaps[s].parent is None
                self.snaps[s] = dataclasses.replace(self.snaps[s], parent=below)
        for ref in [{"branch": b} for b in self.branches] + [{"tag": t} for t in self.tags]:
            self.check_ancestry(**ref)  # the same ids: nothing was rewritten

    @rule(future=st.booleans())
    def garbage_collect(self, future: bool) -> None:
        if not future:  # nothing is older than the cutoff: nothing goes
            summary = self.repo.garbage_collect(EPOCH)
            assert summary.objects_deleted == 0
            return
        live = self.reachable()
        doomed = set(self.snaps) - live
        summary = self.repo.garbage_collect(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1))
        note(f"gc: {summary}")
        assert summary.snapshots_deleted == len(doomed) + self.orphans
        assert summary.transaction_logs_deleted == len(doomed) + self.orphans
        self.orphans = 0
        for sid in doomed:
            del self.snaps[sid]
        self.gone |= doomed
        for sid in live:  # everything a ref reaches reads the same as before
            self.check_snapshot(sid)

    # -- reads ---------------------------------------------------------------------------
    @rule(data=st.data())
    @with_frequency(0.5)
    def time_travel(self, data: st.DataObject) -> None:
        self.check_snapshot(data.draw(self.snapshot_ids(), label="snapshot"))

    @rule(data=st.data())
    def read_refs(self, data: st.DataObject) -> None:
        branch = data.draw(st.sampled_from(sorted(self.branches)), label="branch")
        self.check_ancestry(branch=branch)
        got = read_content(self.repo, self.repo.readonly_session(branch).snapshot_id)
        assert same_content(got, self.snaps[self.branches[branch]].content)
        if self.tags:
            tag = data.draw(st.sampled_from(sorted(self.tags)), label="tag")
            self.check_ancestry(tag=tag)
            assert self.repo.readonly_session(tag=tag).snapshot_id == self.tags[tag]

    @invariant()
    def refs_match(self) -> None:
        assert self.repo.list_branches() == set(self.branches)
        assert self.repo.list_tags() == set(self.tags)

    @invariant()
    def refs_read_as_modelled(self) -> None:
        """Every branch and tag reads what the model says, after every step (each
        snapshot once)."""
        for sid in {*self.branches.values(), *self.tags.values()}:
            self.check_snapshot(sid)

    def teardown(self) -> None:
        for sid in self.snaps:
            self.check_snapshot(sid)
        for b in self.branches:
            self.check_ancestry(branch=b)
        for t in self.tags:
            self.check_ancestry(tag=t)
        report = self.repo.fsck()
        assert report.ok, report.problems


def test_collected_snapshot_is_gone_for_the_collecting_repository() -> None:
    """The repository object that ran garbage_collect does not serve deleted snapshots
    from its cache (it used to open them, then fail on their missing manifests)."""
    repo = frazil.Repository.create(frazil.in_memory_storage(), CONFIG)
    root = repo.lookup_branch("main")
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="a").create_array(
        "b", shape=(4, 4), chunks=(2, 2), dtype="float64", compressors=None
    )[:] = 1.0
    sid = session.commit("one")
    assert same_content(read_content(repo, sid), {"b": np.ones((4, 4))})
    repo.reset_branch("main", root)
    summary = repo.garbage_collect(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1))
    assert summary.snapshots_deleted == 1 and summary.chunks_deleted == 4
    with pytest.raises(NotFoundError):
        repo.readonly_session(snapshot_id=sid)
    with pytest.raises(NotFoundError):
        list(repo.ancestry(snapshot_id=sid))
    assert read_content(repo, root) == {}


def _settings(examples: int, steps: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def test_repository_memory() -> None:
    run_state_machine_as_test(
        lambda: RepoMachine(frazil.in_memory_storage()), settings=_settings(40, 30)
    )


def test_repository_local(tmp_path: Path) -> None:
    def make() -> RepoMachine:
        return RepoMachine(frazil.local_filesystem_storage(tempfile.mkdtemp(dir=tmp_path)))

    run_state_machine_as_test(make, settings=_settings(6, 20))


def test_repository_merging_memory() -> None:
    run_state_machine_as_test(
        lambda: RepoMachine(frazil.in_memory_storage(), MERGING), settings=_settings(25, 30)
    )


def test_repository_merging_local(tmp_path: Path) -> None:
    def make() -> RepoMachine:
        storage = frazil.local_filesystem_storage(tempfile.mkdtemp(dir=tmp_path))
        return RepoMachine(storage, MERGING)

    run_state_machine_as_test(make, settings=_settings(4, 20))


def test_the_merging_config_merges_at_commit() -> None:
    """What the merging runs rely on: with MERGING, commits of these arrays merge their
    segments (the count stays far below one segment per commit) and read back."""
    repo = frazil.Repository.create(frazil.in_memory_storage(), MERGING)
    session = repo.writable_session("main")
    zarr.open_group(session.store, mode="a").create_array(
        "b", shape=(4, 4), chunks=(2, 2), dtype="float64", fill_value=0, compressors=None
    )
    session.commit("b")
    model = np.zeros((4, 4))
    for i in range(16):
        session = repo.writable_session("main")
        where = ((i % 2) * 2, (i // 2 % 2) * 2)
        zarr.open_array(session.store, path="b")[where] = i
        model[where] = i
        session.commit(f"write {i}")
    node = next(n for n in repo.readonly_session("main").nodes() if n.path == "/b")
    assert 0 < len(node.segments) <= 4, node.segments
    got = zarr.open_array(repo.readonly_session("main").store, path="b", mode="r")[...]
    np.testing.assert_array_equal(got, model)


@pytest.mark.slow
def test_repository_memory_long() -> None:
    run_state_machine_as_test(
        lambda: RepoMachine(frazil.in_memory_storage()), settings=_settings(300, 60)
    )


@pytest.mark.slow
def test_repository_merging_memory_long() -> None:
    run_state_machine_as_test(
        lambda: RepoMachine(frazil.in_memory_storage(), MERGING), settings=_settings(300, 60)
    )
