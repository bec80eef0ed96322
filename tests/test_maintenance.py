"""Compaction, garbage collection, snapshot expiry, fsck and chunk statistics (the library
beneath ``frazil compact/gc/expire/fsck/stats``)."""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import frazil
from frazil import runtime
from frazil.format import (
    ChunkId,
    ChunkKind,
    ChunkRef,
    ManifestId,
    NodeId,
    SegmentRef,
    SnapshotId,
    checksum,
    decode_manifest_chunk_ids,
)
from frazil.format.manifest import TOMBSTONE, encode_manifest_parts, ref_rows
from frazil.format.snapshot import INLINE_MAX_ROWS
from frazil.maintenance import id_times_ms, reach
from frazil.maintenance.reach import live_chunk_ids
from frazil.objects import ObjectReader
from frazil.storage.base import ObjectInfo, Storage

UTC = dt.UTC


def now() -> dt.datetime:
    return dt.datetime.now(UTC)


def small_config(**kw: Any) -> frazil.RepositoryConfig:
    # chunks of 2x2 int32 are 16 bytes: inline below 8, so set 8 to get native ones too;
    # no merging at commit unless asked: these tests count the segments commits leave
    kw.setdefault("manifest_merge_fanout", 0)
    return frazil.RepositoryConfig(inline_chunk_threshold_bytes=kw.pop("inline", 8), **kw)


def write(
    repo: frazil.Repository, branch: str, message: str, fn: Callable[[zarr.Group], None]
) -> str:
    s = repo.writable_session(branch)
    fn(zarr.open_group(s.store))
    return s.commit(message)


def content(repo: frazil.Repository, **ref: str) -> dict[str, np.ndarray]:
    s = repo.readonly_session(**ref)
    g = zarr.open_group(s.store, mode="r")
    return {name: arr[...] for name, arr in sorted(g.arrays())}


def new_repo(storage: Storage, **kw: Any) -> frazil.Repository:
    repo = frazil.Repository.create(storage, small_config(**kw))

    def init(g: zarr.Group) -> None:
        # uncompressed: "a"'s chunks are 16 bytes (native), "b"'s 1 byte (inline)
        g.create_array(
            "a", shape=(8, 8), chunks=(2, 2), dtype="i4", fill_value=-1, compressors=None
        )
        g.create_array("b", shape=(10,), chunks=(1,), dtype="u1", fill_value=0, compressors=None)

    write(repo, "main", "arrays", init)
    return repo


def segments(repo: frazil.Repository, path: str, branch: str = "main") -> int:
    node = repo.readonly_session(branch).node(path)
    assert node is not None
    return len(node.segments)


# -- Storage.list_info, ids ------------------------------------------------------------------
def test_list_info_every_backend(storage_factory: Callable[[], Storage]) -> None:
    storage = storage_factory()
    before = now() - dt.timedelta(seconds=5)
    runtime.run(storage.put("chunks/x1", b"abc"))
    runtime.run(storage.put("chunks/x2", b"defgh"))
    runtime.run(storage.put("other", b"z"))
    infos = runtime.run(storage.list_info("chunks/"))
    assert [(i.key, i.size) for i in infos] == [("chunks/x1", 3), ("chunks/x2", 5)]
    for i in infos:
        assert i.last_modified is not None and i.last_modified.tzinfo is not None
        assert before <= i.last_modified <= now() + dt.timedelta(seconds=5)
    assert runtime.run(storage.list("chunks/")) == ["chunks/x1", "chunks/x2"]


def test_list_info_fallback_of_a_backend_without_it() -> None:
    class Plain(frazil.storage.InMemoryStorage):
        list_info = Storage.list_info  # the interface's fallback

    s = Plain()
    runtime.run(s.put("k/a", b"1234"))
    assert runtime.run(s.list_info("k/")) == [ObjectInfo("k/a", 4, None)]


def test_id_times_in_bulk() -> None:
    ids = [SnapshotId.new() for _ in range(5)]
    got = id_times_ms([str(i) for i in ids] + ["not-an-id", "I" * 20])
    assert got[:5].tolist() == [int.from_bytes(i.raw[:6], "big") for i in ids]
    assert got[5:].tolist() == [-1, -1]


# -- compaction -----------------------------------------------------------------------------
ops = st.lists(
    st.tuples(
        st.sampled_from(["set", "del"]), st.integers(0, 3), st.integers(0, 3), st.integers(0, 1000)
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    commits=st.lists(ops, min_size=1, max_size=6), rows=st.integers(1, 5), seed=st.integers(0, 3)
)
def test_compaction_keeps_content(
    commits: list[list[tuple[str, int, int, int]]], rows: int, seed: int
) -> None:
    repo = new_repo(frazil.in_memory_storage())
    for n, batch in enumerate(commits):

        def apply(g: zarr.Group, batch: list[tuple[str, int, int, int]] = batch) -> None:
            a = g["a"]
            for op, i, j, v in batch:
                if op == "set":  # small values inline, big ones native (threshold 8 bytes)
                    a[2 * i : 2 * i + 2, 2 * j : 2 * j + 2] = (
                        v if (v + seed) % 2 else np.arange(4).reshape(2, 2) + v
                    )
                else:
                    a[2 * i : 2 * i + 2, 2 * j : 2 * j + 2] = -1  # the fill value: a tombstone

        write(repo, "main", f"c{n}", apply)
    before = content(repo, branch="main")
    live_before = runtime.run(repo.readonly_session("main").chunk_coords("/a"))
    summary = repo.compact("main", rows_per_segment=rows)
    fresh = frazil.Repository.open(repo.storage)
    assert {k: v.tolist() for k, v in content(fresh, branch="main").items()} == {
        k: v.tolist() for k, v in before.items()
    }
    assert sorted(runtime.run(fresh.readonly_session("main").chunk_coords("/a"))) == sorted(
        live_before
    )
    node = fresh.readonly_session("main").node("/a")
    assert node is not None
    if "/a" in summary.arrays:
        assert len(node.segments) <= max(1, -(-len(live_before) // rows))
    else:  # left alone only when already compacted: at most one segment not full
        assert sum(1 for seg in node.segments if seg.rows != rows) <= 1
    if summary.snapshot_id is not None:
        assert fresh.lookup_branch("main") == summary.snapshot_id
        info = fresh.lookup_snapshot(summary.snapshot_id)
        assert info.metadata["frazil.compaction"] is True
        assert fresh.diff(
            from_snapshot_id=info.parent_id or "", to_snapshot_id=summary.snapshot_id
        ).is_empty()


def test_compaction_bounds_segments_and_extents() -> None:
    repo = new_repo(frazil.in_memory_storage())
    for i in range(4):
        for j in range(4):
            write(
                repo,
                "main",
                f"{i},{j}",
                lambda g, i=i, j=j: g["a"].__setitem__(
                    (slice(2 * i, 2 * i + 2), slice(2 * j, 2 * j + 2)), i * 4 + j
                ),
            )
    assert segments(repo, "/a") == 16
    before = content(repo, branch="main")
    s = repo.compact("main", rows_per_segment=4)
    assert s.arrays == {"/a": (16, 4)} and s.refs == 16
    node = repo.readonly_session("main").node("/a")
    assert node is not None
    # cut in coordinate order: each segment holds one row of the chunk grid
    assert [(seg.extent_min, seg.extent_max) for seg in node.segments] == [
        ((i, 0), (i, 3)) for i in range(4)
    ]
    assert all(v.tolist() == before[k].tolist() for k, v in content(repo, branch="main").items())
    assert repo.compact("main", rows_per_segment=4).snapshot_id is None  # nothing left to do


class RacingStorage(frazil.storage.InMemoryStorage):
    """Runs ``hook`` (once) when the first transaction log is written while armed."""

    hook: Any = None

    async def put(self, key: str, data: bytes) -> None:
        hook, self.hook = (
            (self.hook, None) if key.startswith("transactions/") else (None, self.hook)
        )
        if hook is not None:
            await hook()
        await super().put(key, data)


def test_compaction_rebases_over_a_concurrent_commit() -> None:
    storage = RacingStorage()
    repo = new_repo(storage)
    for i in range(5):
        write(repo, "main", f"b{i}", lambda g, i=i: g["b"].__setitem__(i, i + 1))
    other = repo.writable_session("main")
    zarr.open_array(other.store, path="b")[7] = 70
    zarr.open_array(other.store, path="a")[0:2, 0:2] = 5

    async def land() -> None:
        await other.commit_async("landed during the compaction")

    storage.hook = land
    summary = repo.compact("main")
    assert summary.attempts == 2 and summary.arrays == {"/b": (5, 1)}
    messages = [i.message for i in repo.ancestry(branch="main")]
    assert messages[:2] == ["frazil: compact manifests", "landed during the compaction"]
    got = content(frazil.Repository.open(storage), branch="main")
    assert got["b"].tolist() == [1, 2, 3, 4, 5, 0, 0, 70, 0, 0]
    assert (got["a"][0:2, 0:2] == 5).all()
    # the concurrent commit's segment stays in front of the compacted one
    assert segments(repo, "/b") == 2


def test_compaction_racing_threads_loses_no_commit(tmp_path: Path) -> None:
    repo = new_repo(frazil.local_filesystem_storage(tmp_path / "r"))
    for i in range(6):
        write(repo, "main", f"seed{i}", lambda g, i=i: g["b"].__setitem__(i, 1))
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(6, 10):
                s = repo.writable_session("main")
                zarr.open_array(s.store, path="b")[i] = i
                s.commit(f"w{i}", rebase_with=frazil.ConflictDetector())
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    for _ in range(3):
        repo.compact("main", rows_per_segment=2)
    t.join()
    assert not errors
    assert content(repo, branch="main")["b"].tolist() == [1] * 6 + [6, 7, 8, 9]
    messages = {i.message for i in repo.ancestry(branch="main")}
    assert {f"w{i}" for i in range(6, 10)} <= messages
    assert repo.fsck().ok


def test_automatic_compaction_at_commit() -> None:
    repo = new_repo(frazil.in_memory_storage(), compact_when_segments_exceed=3)
    expected = np.zeros(10, np.uint8)
    for i in range(8):
        write(repo, "main", f"b{i}", lambda g, i=i: g["b"].__setitem__(i, i + 1))
        expected[i] = i + 1
        assert segments(repo, "/b") <= 3
        assert content(repo, branch="main")["b"].tolist() == expected.tolist()
    compacted = [i for i in repo.ancestry(branch="main") if "frazil.compacted_arrays" in i.metadata]
    assert compacted and all(i.metadata["frazil.compacted_arrays"] == ["/b"] for i in compacted)
    with pytest.raises(frazil.InvalidInputError):
        frazil.RepositoryConfig(compact_when_segments_exceed=0)


# -- garbage collection ----------------------------------------------------------------------
def build_history(repo: frazil.Repository) -> dict[str, Any]:
    """Branches, a tag, a deleted branch and a reset: some objects become unreachable."""
    write(
        repo,
        "main",
        "m1",
        lambda g: g["a"].__setitem__((slice(0, 4), slice(0, 4)), np.arange(16).reshape(4, 4)),
    )
    repo.create_tag("v1", repo.lookup_branch("main"))
    repo.create_branch("dev", repo.lookup_branch("main"))
    write(repo, "dev", "d1", lambda g: g["a"].__setitem__((slice(4, 8), slice(4, 8)), 7))
    repo.create_branch("doomed", repo.lookup_branch("main"))
    write(
        repo,
        "doomed",
        "x1",
        lambda g: g["a"].__setitem__((slice(0, 8), slice(0, 8)), np.arange(64).reshape(8, 8) + 100),
    )
    repo.delete_branch("doomed")
    keep = repo.lookup_branch("main")
    write(repo, "main", "m2 (reset away)", lambda g: g["b"].__setitem__(slice(0, 10), 9))
    repo.reset_branch("main", keep)
    write(repo, "main", "m3", lambda g: g["b"].__setitem__(3, 3))
    return {
        ref: content(repo, **{kind: ref})
        for kind, ref in [("branch", "main"), ("branch", "dev"), ("tag", "v1")]
    }


def all_keys(storage: Storage) -> set[str]:
    return set(runtime.run(storage.list("")))


def test_gc_removes_unreachable_and_keeps_every_ref_readable(
    storage_factory: Callable[[], Storage],
) -> None:
    repo = new_repo(storage_factory())
    expected = build_history(repo)
    objects = all_keys(repo.storage)
    assert repo.garbage_collect(now() - dt.timedelta(hours=1)).objects_deleted == 0  # too young
    dry = repo.garbage_collect(now() + dt.timedelta(seconds=1), dry_run=True)
    assert all_keys(repo.storage) == objects
    # doomed's x1 and main's m2: snapshot + log each; x1's 16 native chunks + 1 manifest,
    # m2's inline chunks: 1 manifest
    assert (
        dry.snapshots_deleted,
        dry.transaction_logs_deleted,
        dry.manifests_deleted,
        dry.chunks_deleted,
    ) == (2, 2, 2, 16)
    summary = repo.garbage_collect(now() + dt.timedelta(seconds=1))
    assert summary.objects_deleted == dry.objects_deleted and summary.bytes_deleted > 0
    assert len(objects - all_keys(repo.storage)) == summary.objects_deleted
    fresh = frazil.Repository.open(repo.storage)
    for ref, arrays in expected.items():
        kind = "tag" if ref == "v1" else "branch"
        got = content(fresh, **{kind: ref})
        assert {k: v.tolist() for k, v in got.items()} == {k: v.tolist() for k, v in arrays.items()}
    assert fresh.fsck().ok
    assert fresh.garbage_collect(now() + dt.timedelta(seconds=1)).objects_deleted == 0


def test_gc_never_deletes_young_objects_of_a_running_session(tmp_path: Path) -> None:
    """Chunks a session has written but not yet committed are unreachable; gc deletes
    them only when they are older than the cutoff."""
    repo = new_repo(frazil.local_filesystem_storage(tmp_path / "r"))
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="a")[:] = np.arange(64).reshape(8, 8)
    plan_keys_before = all_keys(repo.storage)
    cutoff = now() + dt.timedelta(seconds=1)
    new_chunks = {k for k in plan_keys_before if k.startswith("chunks/")}
    assert new_chunks  # staged native chunks are written already
    dry = repo.garbage_collect(cutoff, dry_run=True)
    assert dry.chunks_deleted == len(new_chunks)  # unpublished and old enough: garbage
    assert repo.garbage_collect(now() - dt.timedelta(minutes=5)).objects_deleted == 0
    s.commit("published after gc")
    assert repo.fsck().ok


def test_gc_reclaims_chunks_that_newer_segments_shadow() -> None:
    repo = new_repo(frazil.in_memory_storage())
    write(repo, "main", "first", lambda g: g["a"].__setitem__((0, 0), 1))  # chunk (0, 0)
    cutoff = now()
    write(repo, "main", "again", lambda g: g["a"].__setitem__((0, 0), 2))  # shadows it
    chunks = set(frazil.runtime.run(repo.storage.list("chunks/")))
    assert len(chunks) == 2
    snap = repo.readonly_session(branch="main")
    assert len(runtime_segments(repo, snap.snapshot_id)) == 2  # both segments still listed
    repo.expire_snapshots(cutoff)
    summary = repo.garbage_collect(now() + dt.timedelta(seconds=1))
    assert summary.chunks_deleted == 1  # the old chunk: only the shadowed reference named it
    left = set(frazil.runtime.run(repo.storage.list("chunks/")))
    assert len(left) == 1 and left < chunks
    assert content(repo, branch="main")["a"][0, 0] == 2
    assert repo.fsck().ok


def runtime_segments(repo: frazil.Repository, sid: str) -> tuple[Any, ...]:
    snap = frazil.runtime.run(repo.reader.snapshot(SnapshotId.parse(sid)))
    return next(n for n in snap.nodes if n.path == "/a").segments


def test_rebase_refuses_to_cross_expired_history() -> None:
    repo = new_repo(frazil.in_memory_storage())
    stale = repo.writable_session("main")  # based on "arrays"
    zarr.open_group(stale.store)["b"][9] = 9
    write(repo, "main", "old", lambda g: g["b"].__setitem__(0, 1))
    cutoff = now()
    write(repo, "main", "new", lambda g: g["b"].__setitem__(1, 1))
    repo.expire_snapshots(cutoff)  # "new" now follows the first snapshot: "old" is cut out
    with pytest.raises(frazil.ConflictError, match="was expired"):
        stale.rebase(frazil.ConflictDetector())
    s = repo.writable_session("main")  # a new session commits as usual
    zarr.open_group(s.store)["b"][9] = 9
    s.commit("fresh")
    assert content(repo, branch="main")["b"].tolist() == [1, 1] + [0] * 7 + [9]


def test_gc_refuses_naive_datetimes() -> None:
    repo = new_repo(frazil.in_memory_storage())
    with pytest.raises(frazil.InvalidInputError, match="timezone-aware"):
        repo.garbage_collect(dt.datetime.now())


# -- expiry ----------------------------------------------------------------------------------
def test_expire_then_gc(storage_factory: Callable[[], Storage]) -> None:
    repo = new_repo(storage_factory())
    for i in range(4):
        write(repo, "main", f"old{i}", lambda g, i=i: g["b"].__setitem__(i, i + 1))
    repo.create_tag("old-tag", list(repo.ancestry(branch="main"))[2].id)
    cutoff = now()
    for i in range(4, 6):
        write(repo, "main", f"new{i}", lambda g, i=i: g["b"].__setitem__(i, i + 1))
    ids = {i.message: i.id for i in repo.ancestry(branch="main")}
    tip_before = content(repo, branch="main")
    tag_before = content(repo, tag="old-tag")
    files_before = frazil.runtime.run(repo.storage.list("snapshots/"))
    expired = repo.expire_snapshots(cutoff)
    history = list(repo.ancestry(branch="main"))
    kept = ["new5", "new4", "Repository initialized"]
    assert [i.message for i in history] == kept
    assert [i.id for i in history] == [ids[m] for m in kept]  # ids stay: nothing rewritten
    assert history[1].parent_id == history[2].id
    assert (
        frazil.runtime.run(repo.storage.list("snapshots/")) == files_before
    )  # and nothing written
    assert expired == {ids[m] for m in ("arrays", "old0", "old2", "old3")}  # old1: the tag's
    assert [i.message for i in repo.ancestry(tag="old-tag")] == ["old1", "Repository initialized"]
    assert repo.lookup_snapshot(ids["new4"]).parent_id == ids["Repository initialized"]
    assert {k: v.tolist() for k, v in content(repo, branch="main").items()} == {
        k: v.tolist() for k, v in tip_before.items()
    }
    root = history[-1].id
    d = repo.diff(from_snapshot_id=root, to_branch="main")  # by content: the logs are cut
    assert d.new_arrays == {"/a", "/b"} and d.updated_chunks == {"/b": [[i] for i in range(6)]}
    summary = repo.garbage_collect(now() + dt.timedelta(seconds=1))
    assert summary.snapshots_deleted == 4 and summary.transaction_logs_deleted == 4
    fresh = frazil.Repository.open(repo.storage)
    assert [i.id for i in fresh.ancestry(branch="main")] == [ids[m] for m in kept]
    assert content(fresh, tag="old-tag")["b"].tolist() == tag_before["b"].tolist()
    assert fresh.fsck().ok
    assert fresh.expire_snapshots(cutoff) == set()  # nothing older left on the branch
    s = fresh.writable_session("main")  # commits go on over the cut history
    zarr.open_group(s.store)["b"][7] = 70
    s.commit("after")
    assert [i.message for i in fresh.ancestry(branch="main")] == ["after", *kept]


def test_expire_keeps_every_ref_tip() -> None:
    repo = new_repo(frazil.in_memory_storage())
    write(repo, "main", "old", lambda g: g["b"].__setitem__(0, 1))
    repo.create_branch("frozen", repo.lookup_branch("main"))
    repo.create_branch("side", repo.lookup_branch("main"))
    cutoff = now()
    write(repo, "main", "m", lambda g: g["b"].__setitem__(1, 1))
    write(repo, "side", "s", lambda g: g["b"].__setitem__(2, 1))
    expired = repo.expire_snapshots(cutoff)
    assert len(expired) == 1  # "arrays"; "old" stays: it is frozen's tip
    assert [i.message for i in repo.ancestry(branch="main")] == ["m", "Repository initialized"]
    assert [i.message for i in repo.ancestry(branch="side")] == ["s", "Repository initialized"]
    frozen = list(repo.ancestry(branch="frozen"))
    assert [i.message for i in frozen] == ["old", "Repository initialized"]
    assert content(repo, branch="side")["b"].tolist() == [1, 0, 1] + [0] * 7
    d = repo.diff(from_branch="frozen", to_branch="side")  # not an ancestor: by content
    assert d.updated_chunks == {"/b": [[2]]}


def test_diff_between_any_two_snapshots() -> None:
    repo = new_repo(frazil.in_memory_storage())
    base = repo.lookup_branch("main")
    repo.create_branch("dev", base)
    write(repo, "main", "m", lambda g: g["b"].__setitem__(1, 5))
    write(repo, "dev", "d", lambda g: g["b"].__setitem__(2, 5))
    d = repo.diff(from_branch="main", to_branch="dev")  # through their common ancestor
    assert d.updated_chunks == {"/b": [[1], [2]]} and not d.new_arrays
    back = repo.diff(from_branch="dev", to_branch="main")
    assert back.updated_chunks == d.updated_chunks
    assert repo.diff(from_branch="main", to_branch="main").is_empty()
    s = repo.writable_session("dev")
    zarr.open_group(s.store).create_array("c", shape=(2,), chunks=(1,), dtype="i4")
    s.commit("c")
    d = repo.diff(from_branch="main", to_branch="dev")
    assert d.new_arrays == {"/c"} and repo.diff(
        from_branch="dev", to_branch="main"
    ).deleted_arrays == {"/c"}


# -- fsck ------------------------------------------------------------------------------------
def test_fsck_reports_every_problem(tmp_path: Path) -> None:
    root = tmp_path / "r"
    repo = new_repo(frazil.local_filesystem_storage(root))
    write(
        repo, "main", "data", lambda g: g["a"].__setitem__(slice(None), np.arange(64).reshape(8, 8))
    )
    write(repo, "main", "more", lambda g: g["b"].__setitem__(slice(None), 5))
    report = repo.fsck()
    assert report.ok and report.chunks == 16 and report.snapshots == 4
    chunks = sorted((root / "chunks").iterdir())
    chunks[0].unlink()
    manifest = sorted((root / "manifests").iterdir())[-1]
    data = bytearray(manifest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    manifest.write_bytes(bytes(data))
    chunk = chunks[1]
    chunk.write_bytes(chunk.read_bytes()[:-1] + b"?")
    report = frazil.Repository.open(frazil.local_filesystem_storage(root)).verify()
    assert not report.ok
    found = {(p.kind, p.key) for p in report.problems}
    assert ("missing", f"chunks/{chunks[0].name}") in found
    assert ("damaged", f"chunks/{chunk.name}") in found
    assert ("damaged", f"manifests/{manifest.name}") in found
    assert len(report.problems) == 3
    quick = repo.fsck(verify_chunks=False)  # presence and size only
    assert {(p.kind, p.key) for p in quick.problems} == found - {
        ("damaged", f"chunks/{chunk.name}")
    }


def test_gc_reads_small_segments_from_their_copies_and_fsck_checks_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small segments carry a copy of their rows in the snapshot: gc reads no manifest of
    theirs (it gives the same answer as from the manifests); a copy that differs from its
    manifest (a writer's bug, simulated) is what fsck reports."""
    root = tmp_path / "r"
    repo = new_repo(frazil.local_filesystem_storage(root))
    for i in range(6):
        write(repo, "main", f"w{i}", lambda g, i=i: g["a"].__setitem__((i, i), i))
    tip = runtime_segments(repo, repo.lookup_branch("main"))
    assert tip and all(s.inline is not None for s in tip if s.rows <= INLINE_MAX_ROWS)
    read: list[str] = []
    original = ObjectReader.manifest_bytes

    async def spy(self: ObjectReader, seg: Any) -> Any:
        read.append(str(seg.manifest_id))
        return await original(self, seg)

    monkeypatch.setattr(ObjectReader, "manifest_bytes", spy)
    later = now() + dt.timedelta(seconds=1)
    with_copies = repo.garbage_collect(later, dry_run=True)
    assert read == []  # every segment here is small
    stripped = _without_copies(repo)  # now only manifests can say
    assert set(read) >= {str(s.manifest_id) for s in tip}
    assert stripped == with_copies
    monkeypatch.setattr(ObjectReader, "manifest_bytes", original)
    assert repo.fsck().ok

    # a writer whose copies name another chunk kind than its manifest rows
    from frazil import commit as commit_mod

    real = commit_mod.inline_rows
    monkeypatch.setattr(
        commit_mod, "inline_rows", lambda c, k, ids: real(c, [3] * len(k), [None] * len(k))
    )
    write(repo, "main", "bad copy", lambda g: g["a"].__setitem__((7, 7), 7))
    report = repo.fsck()
    assert [p.kind for p in report.problems] == ["damaged"]
    assert "differs from the segment" in report.problems[0].message


def _without_copies(repo: frazil.Repository) -> Any:
    """gc's dry run with every ref's copy of its rows ignored (read from manifests)."""
    import dataclasses as dc

    original = reach.SegmentTree.__init__

    def init(self: Any, lists: Any) -> None:
        original(self, [tuple(dc.replace(s, inline=None) for s in segs) for segs in lists])
        self.refs = {k: dc.replace(v, inline=None) for k, v in self.refs.items()}

    reach.SegmentTree.__init__ = init  # type: ignore[method-assign]
    try:
        return repo.garbage_collect(now() + dt.timedelta(seconds=1), dry_run=True)
    finally:
        reach.SegmentTree.__init__ = original  # type: ignore[method-assign]


def test_fsck_finds_a_missing_snapshot_parent(tmp_path: Path) -> None:
    root = tmp_path / "r"
    repo = new_repo(frazil.local_filesystem_storage(root))
    write(repo, "main", "x", lambda g: g["b"].__setitem__(0, 1))
    parent = list(repo.ancestry(branch="main"))[1].id
    os.unlink(root / "snapshots" / parent)
    report = frazil.Repository.open(frazil.local_filesystem_storage(root)).fsck()
    assert [(p.kind, p.key) for p in report.problems] == [("missing", f"snapshots/{parent}")]


# -- statistics ------------------------------------------------------------------------------
def test_chunk_storage_stats() -> None:
    repo = new_repo(frazil.in_memory_storage())
    write(
        repo,
        "main",
        "native",
        lambda g: g["a"].__setitem__((slice(0, 4), slice(0, 4)), np.arange(16).reshape(4, 4)),
    )  # 4 chunks of 16 bytes
    write(repo, "main", "inline", lambda g: g["b"].__setitem__(slice(0, 3), 1))  # 3 x 1 byte
    s = repo.chunk_storage_stats()
    assert (s.native_chunks, s.native_bytes) == (4, 64)
    assert (s.inlined_chunks, s.inlined_bytes) == (3, 3)
    assert (s.virtual_chunks, s.total_bytes) == (0, 67)


# -- marking: the segment tree and its verified reads ----------------------------------------
class _Manifests:
    """A stand-in reader holding manifest objects in memory."""

    def __init__(self) -> None:
        self.objects: dict[ManifestId, bytes] = {}

    async def manifest_bytes(self, seg: SegmentRef) -> tuple[str, bytes]:
        return f"manifests/{seg.manifest_id}", self.objects[seg.manifest_id]


def _random_segments(rng: np.random.Generator, reader: _Manifests, n: int) -> list[SegmentRef]:
    """``n`` segments of a 6 x 6 grid (native, inline or deleted rows), some two to an
    object (as a commit writing two arrays packs them)."""
    out: list[SegmentRef] = []
    while len(out) < n:
        parts, coords_of = [], []
        for _ in range(int(rng.integers(1, 3))):
            cells = sorted(rng.choice(36, size=int(rng.integers(1, 8)), replace=False).tolist())
            coords = np.array([divmod(c, 6) for c in cells], np.int64).reshape(-1, 2)
            kinds = rng.integers(0, 3, len(cells))
            refs = [
                ChunkRef(ChunkKind.NATIVE, chunk_id=ChunkId.new(), length=1, checksum=0)
                if k == 2
                else ChunkRef(ChunkKind.INLINE, data=b"x", length=1)
                if k == 1
                else TOMBSTONE
                for k in kinds
            ]
            parts.append((NodeId.new(), coords, ref_rows(refs)))
            coords_of.append(coords)
        mid = ManifestId.new()
        data = encode_manifest_parts(mid, parts)
        reader.objects[mid] = data
        offset = 0
        for coords in coords_of:
            lo = coords.min(axis=0) if len(coords) else np.zeros(2, np.int64)
            hi = coords.max(axis=0) if len(coords) else np.zeros(2, np.int64)
            out.append(
                SegmentRef(
                    mid, checksum(data), len(data), len(coords), tuple(lo), tuple(hi), offset
                )
            )
            offset += len(coords)
    return out


def _brute_force_live(reader: _Manifests, lists: set[tuple[SegmentRef, ...]]) -> set[str]:
    """Per list, the newest row of each coordinate; the native chunk ids among them."""
    live: set[str] = set()
    for refs in lists:
        seen: set[tuple[int, ...]] = set()
        for seg in refs:
            rows = decode_manifest_chunk_ids(reader.objects[seg.manifest_id], "m", seg.checksum)[
                seg.row_offset
            ]
            ids = rows.chunk_ids.to_pylist()
            for coord, kind, cid in zip(map(tuple, rows.coords.tolist()), rows.kinds, ids):
                if coord not in seen and kind == ChunkKind.NATIVE:
                    live.add(cid)
                seen.add(coord)
    return live


@pytest.mark.parametrize("batch_rows", [1 << 21, 4])
def test_live_chunk_ids_of_a_segment_tree_are_those_of_every_list(
    batch_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random histories: lists grow by a new segment in front, fork, merge a few newest
    into one, share objects; the tree gives what resolving every list alone gives (in one
    batch, and in batches of a few rows' subtrees)."""
    monkeypatch.setattr(reach, "_BATCH_ROWS", batch_rows)
    rng = np.random.default_rng(7)
    for _ in range(20):
        reader = _Manifests()
        pool = _random_segments(rng, reader, 30)
        lists: list[tuple[SegmentRef, ...]] = [(pool[0],)]
        for seg in pool[1:]:
            if rng.random() < 0.15:  # another array (or a history of its own)
                lists.append((seg,))
                continue
            base = lists[int(rng.integers(len(lists)))]
            if rng.random() < 0.2 and len(base) > 2:  # a merge replaces the newest few
                base = base[int(rng.integers(1, len(base))) :]
            lists.append((seg, *base))
        kept = {lists[i] for i in rng.choice(len(lists), size=12, replace=False)}
        got = runtime.run(live_chunk_ids(reader, kept, lambda s, e: False))  # type: ignore[arg-type]
        assert set(got.to_pylist()) == _brute_force_live(reader, kept)


def test_gc_refuses_a_damaged_manifest_naming_it(tmp_path: Path) -> None:
    repo = new_repo(frazil.local_filesystem_storage(tmp_path / "r"))
    # all 16 chunks: a segment too big to carry a copy of its rows (INLINE_MAX_ROWS)
    write(repo, "main", "one", lambda g: g["a"].__setitem__(slice(None), 1))
    write(repo, "main", "two", lambda g: g["a"].__setitem__((4, 4), 2))
    seg = runtime_segments(repo, repo.lookup_branch("main"))[-1]  # the oldest
    assert seg.rows > INLINE_MAX_ROWS and seg.inline is None
    path = tmp_path / "r" / "manifests" / str(seg.manifest_id)
    path.write_bytes(flip_byte(path.read_bytes(), len(path.read_bytes()) // 2))
    before = all_keys(repo.storage)
    with pytest.raises(frazil.FormatError, match=f"manifests/{seg.manifest_id}"):
        repo.garbage_collect(now() + dt.timedelta(seconds=1))
    assert all_keys(repo.storage) == before


def test_gc_refuses_a_damaged_snapshot_naming_it(tmp_path: Path) -> None:
    """An ancestor (no ref records its checksum) damaged in its data pages: every flipped
    bit that matters (gc reads only the ``segment_refs`` column) is an error naming it;
    nothing is deleted."""
    repo = new_repo(frazil.local_filesystem_storage(tmp_path / "r"))
    write(repo, "main", "one", lambda g: g["a"].__setitem__((0, 0), 1))
    mid = [i.id for i in repo.ancestry(branch="main")][1]
    write(repo, "main", "two", lambda g: g["a"].__setitem__((0, 0), 2))
    cutoff = now() + dt.timedelta(seconds=1)
    clean = repo.garbage_collect(cutoff, dry_run=True)
    path = tmp_path / "r" / "snapshots" / mid
    data = path.read_bytes()
    footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    before = all_keys(repo.storage)
    errors = 0
    group = pq.ParquetFile(pa.BufferReader(data)).metadata.row_group(0)
    (refs,) = [
        c for c in map(group.column, range(group.num_columns)) if c.path_in_schema == "segment_refs"
    ]
    start = refs.dictionary_page_offset or refs.data_page_offset
    column = range(start, start + refs.total_compressed_size, 3)
    for i in [*range(4, footer, 61), *column]:  # the data pages, which a history walk never reads
        path.write_bytes(flip_byte(data, i))
        fresh = frazil.Repository.open(repo.storage)
        try:
            got = fresh.garbage_collect(cutoff, dry_run=True)
        except frazil.FormatError as e:
            assert f"snapshots/{mid}" in str(e)
            errors += 1
        else:
            assert got == clean, i
    path.write_bytes(data)
    assert errors > 0 and all_keys(repo.storage) == before


def flip_byte(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1 :]
