"""Staging many virtual refs: past ``changeset.SPILL_ROWS`` live refs of an array, the
session writes them out as manifest segments while staging (here with a threshold of 40
refs and segments of 16 rows), and the commit lists them. Later writes win, reads,
status, diff, rebase and conflict detection see spilled refs, and nothing is visible
until the commit."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import numpy as np
import pytest
import zarr

import frazil
from frazil import (
    BasicConflictSolver,
    ChunkType,
    ConflictDetector,
    ConflictType,
    InvalidInputError,
    RebaseFailedError,
    VersionSelection,
    changeset,
    runtime,
)
from frazil.format import txlog as tx
from frazil.rebase import RowSet

PREFIX = "s3://bucket"
ROWS, COLS = 12, 10  # the chunk grid


@pytest.fixture(autouse=True)
def small_spills(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(changeset, "SPILL_ROWS", 40)
    yield


@pytest.fixture
def repo() -> frazil.Repository:
    cfg = frazil.RepositoryConfig.default()
    cfg.manifest_split_rows = 16
    cfg.set_virtual_chunk_container(
        frazil.VirtualChunkContainer(PREFIX, frazil.s3_store(region="us-east-1"))
    )
    repo = frazil.Repository.create(frazil.in_memory_storage(), cfg)
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(ROWS * 10, COLS * 10), chunks=(10, 10), dtype="<f4")
    s.commit("the array")
    return repo


def grid(lo: int, hi: int) -> np.ndarray:
    """Chunk coordinates number lo..hi-1 of the grid, in C order."""
    return np.stack(np.divmod(np.arange(lo, hi), COLS), axis=1)


def stage(s: frazil.Session, lo: int, hi: int, file: str, base: int = 0) -> int:
    """Refs for chunks lo..hi-1 into ``file``, at offset base + chunk number."""
    n = np.arange(lo, hi)
    return int(
        s.set_virtual_refs_arrays(
            "a", f"{PREFIX}/{file}", base + n, np.full(len(n), 4), indices=grid(lo, hi)
        )
    )


def table(s: frazil.Session) -> changeset.ChunkTable:
    (t,) = s._changes.chunks.values()
    return t


def refs(s: frazil.Session) -> dict[tuple[int, ...], tuple[str, int]]:
    """Every chunk's (location, offset), read one by one."""
    out = {}
    for c in map(tuple, grid(0, ROWS * COLS).tolist()):
        ref = runtime.run(s.chunk_ref("a", c))
        if ref is not None:
            assert ref.location is not None
            out[c] = (ref.location.rsplit("/", 1)[1], ref.offset)
    return out


def expected(*writes: tuple[int, int, str, int]) -> dict[tuple[int, ...], tuple[str, int]]:
    """What the writes (lo, hi, file, base) give, later ones winning."""
    out = {}
    for lo, hi, file, base in writes:
        for n, c in enumerate(map(tuple, grid(lo, hi).tolist()), start=lo):
            out[c] = (file, base + n)
    return out


def test_overlapping_batches_later_wins_everywhere(repo: frazil.Repository) -> None:
    s = repo.writable_session("main")
    writes = [(0, 60, "f1", 0), (30, 90, "f2", 1000), (50, 55, "f3", 5000), (80, 120, "f4", 9000)]
    for w in writes:
        stage(s, *w)
    t = table(s)
    assert t.spilled and t.block_rows() < changeset.SPILL_ROWS  # the spill path was taken
    want = expected(*writes)
    assert refs(s) == want  # staged reads see spilled refs, newest first
    assert s.chunk_type("a", (5, 3)) == ChunkType.VIRTUAL
    assert len(runtime.run(s.chunk_coords("a"))) == 120
    assert s.all_virtual_chunk_locations() == [f"{PREFIX}/f{i}" for i in (1, 2, 3, 4)]
    s.commit("many refs")
    r = repo.readonly_session("main")
    assert refs(r) == want
    node = r.node("/a")
    assert node is not None and len(node.segments) >= len(t.spilled)
    # the log names the spilled segments rather than listing their coordinates
    log = runtime.run(repo.reader.transaction_log(r._base.id))
    (change,) = [c for c in log.changes if c.change == tx.CHUNKS]
    assert len(change.segments) == len(t.spilled)


def test_single_writes_after_a_spill_win_and_deletes_hide(repo: frazil.Repository) -> None:
    s = repo.writable_session("main")
    stage(s, 0, 100, "f1")
    assert table(s).spilled
    s.set_virtual_ref("a", (0, 1), f"{PREFIX}/f9", offset=7, length=4)
    runtime.run(s.delete_chunk("a", (0, 2)))
    stage(s, 0, 1, "f8", 500)  # a small block after the spill
    want = expected((0, 100, "f1", 0))
    want[(0, 1)] = ("f9", 7)
    want[(0, 0)] = ("f8", 500)
    del want[(0, 2)]
    assert refs(s) == want
    s.commit("x")
    assert refs(repo.readonly_session("main")) == want


def test_a_write_before_the_spill_is_replaced(repo: frazil.Repository) -> None:
    s = repo.writable_session("main")
    s.set_virtual_ref("a", (1, 1), f"{PREFIX}/f9", offset=7, length=4)
    stage(s, 0, 100, "f1")
    assert refs(s) == expected((0, 100, "f1", 0))
    s.commit("x")
    assert refs(repo.readonly_session("main")) == expected((0, 100, "f1", 0))


def test_status_and_diff_list_spilled_chunks(repo: frazil.Repository) -> None:
    s = repo.writable_session("main")
    parent = s.snapshot_id
    stage(s, 0, 70, "f1")
    stage(s, 60, 110, "f2")
    want = sorted(map(list, set(expected((0, 110, "f", 0)))))  # Icechunk's sorted lists
    assert s.status().updated_chunks == {"/a": want}
    sid = s.commit("x")
    diff = repo.diff(from_snapshot_id=parent, to_snapshot_id=sid)
    assert diff.updated_chunks == {"/a": want}


def test_nothing_is_visible_until_the_commit(repo: frazil.Repository) -> None:
    tip = repo.lookup_branch("main")
    s = repo.writable_session("main")
    stage(s, 0, 100, "f1")
    assert table(s).spilled
    assert repo.lookup_branch("main") == tip
    assert refs(repo.readonly_session("main")) == {}
    s.discard_changes()
    assert refs(s) == {}
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    summary = repo.garbage_collect(later)
    assert summary.manifests_deleted >= len(expected((0, 100, "f", 0))) // 16
    assert refs(repo.readonly_session("main")) == {}


def test_rebase_over_a_concurrent_commit(repo: frazil.Repository) -> None:
    ours, theirs = repo.writable_session("main"), repo.writable_session("main")
    stage(ours, 0, 100, "f1")
    assert table(ours).spilled
    stage(theirs, 100, 120, "f2")
    theirs.commit("theirs")
    ours.commit("ours", rebase_with=ConflictDetector())
    assert refs(repo.readonly_session("main")) == expected((0, 100, "f1", 0), (100, 120, "f2", 0))


def test_their_spilled_chunks_conflict_with_ours(repo: frazil.Repository) -> None:
    ours, theirs = repo.writable_session("main"), repo.writable_session("main")
    stage(theirs, 0, 100, "f2")
    assert table(theirs).spilled
    theirs.commit("theirs")
    ours.set_virtual_ref("a", (4, 4), f"{PREFIX}/f1", offset=1, length=4)
    with pytest.raises(RebaseFailedError) as info:
        ours.commit("ours", rebase_with=ConflictDetector())
    (c,) = info.value.conflicts
    assert c.conflict_type == ConflictType.ChunkDoubleUpdate and c.conflicted_chunks == ((4, 4),)


def test_our_spilled_chunk_conflicts_and_theirs_can_win(repo: frazil.Repository) -> None:
    ours, theirs = repo.writable_session("main"), repo.writable_session("main")
    stage(ours, 0, 100, "f1")
    assert table(ours).spilled
    theirs.set_virtual_ref("a", (2, 3), f"{PREFIX}/f2", offset=9, length=4)
    theirs.commit("theirs")
    with pytest.raises(RebaseFailedError) as info:
        ours.commit("ours", rebase_with=ConflictDetector())
    assert info.value.conflicts[0].conflicted_chunks == ((2, 3),)
    ours.commit(
        "ours", rebase_with=BasicConflictSolver(on_chunk_conflict=VersionSelection.UseTheirs)
    )
    want = expected((0, 100, "f1", 0))
    want[(2, 3)] = ("f2", 9)
    assert refs(repo.readonly_session("main")) == want


def test_merging_forks_into_a_spilled_session_is_refused(repo: frazil.Repository) -> None:
    s = repo.writable_session("main")
    fork = s.fork()
    stage(s, 0, 100, "f1")
    with pytest.raises(InvalidInputError, match="commit them first"):
        s.merge(fork)


def test_forks_do_not_spill(repo: frazil.Repository) -> None:
    s = repo.writable_session("main")
    fork = s.fork()
    stage(fork, 0, 100, "f1")
    assert not table(fork).spilled
    s.merge(fork)
    s.commit("x")
    assert refs(repo.readonly_session("main")) == expected((0, 100, "f1", 0))


def test_a_spill_removes_what_it_replaces_from_earlier_spills(repo: frazil.Repository) -> None:
    """Spilled segments never overlap: a spill rewrites the earlier segments holding refs
    it replaces (and only those), so no shadowed ref is committed for a later merge."""
    s = repo.writable_session("main")
    stage(s, 0, 60, "f1")  # 4 segments: 0-15, 16-31, 32-47, 48-59
    first = list(table(s).spilled)
    assert [seg.rows for seg in first] == [16, 16, 16, 12]
    stage(s, 44, 100, "f2")  # replaces 44-59: the last two are rewritten
    spilled = table(s).spilled
    assert spilled[:2] == first[:2] and first[2] not in spilled and first[3] not in spilled
    assert [seg.rows for seg in spilled[:3]] == [16, 16, 12]  # 32-43; 48-59 all replaced
    assert sum(seg.rows for seg in spilled) == 100
    stage(s, 0, 120, "f3", 100)  # replaces everything: nothing older is left
    assert sum(seg.rows for seg in table(s).spilled) == 120
    s.commit("overlapping")
    r = repo.readonly_session("main")
    assert refs(r) == expected((0, 120, "f3", 100))
    node = r.node("/a")
    assert node is not None and sum(seg.rows for seg in node.segments) == 120


def test_an_array_created_in_the_same_session(repo: frazil.Repository) -> None:
    """A new array's spilled refs, with a later delete: its tombstone must still hide the
    spilled ref (tombstones are dropped only where nothing older can hold the chunk)."""
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="b", shape=(ROWS * 10, COLS * 10), chunks=(10, 10), dtype="<f4")
    n = np.arange(100)
    s.set_virtual_refs_arrays("b", f"{PREFIX}/f1", n, np.full(100, 4), indices=grid(0, 100))
    assert s._changes.chunks[s.node("/b").node_id].spilled  # type: ignore[union-attr]
    runtime.run(s.delete_chunk("b", (3, 3)))
    s.commit("new array")
    r = repo.readonly_session("main")
    assert runtime.run(r.chunk_ref("b", (3, 3))) is None
    ref = runtime.run(r.chunk_ref("b", (3, 4)))
    assert ref is not None and ref.offset == 34
    assert len(runtime.run(r.chunk_coords("b"))) == 99


def test_both_sides_spilled_conflict_and_ours_can_win(repo: frazil.Repository) -> None:
    ours, theirs = repo.writable_session("main"), repo.writable_session("main")
    stage(theirs, 0, 60, "f2")
    stage(ours, 50, 120, "f1")
    assert table(ours).spilled and table(theirs).spilled
    theirs.commit("theirs")
    with pytest.raises(RebaseFailedError) as info:
        ours.commit("ours", rebase_with=ConflictDetector())
    (c,) = info.value.conflicts
    assert c.conflicted_chunks == tuple(map(tuple, grid(50, 60).tolist()))
    ours.commit("ours", rebase_with=BasicConflictSolver())  # UseOurs
    assert refs(repo.readonly_session("main")) == expected((0, 60, "f2", 0), (50, 120, "f1", 0))


@pytest.mark.parametrize("big", [False, True])
def test_rowset_finds_common_rows(big: bool) -> None:
    """``RowSet`` packs coordinates into int64 keys, and keeps whole rows when some do
    not fit (a coordinate of 2^40 in 2-D does not)."""
    far = 1 << 40 if big else 7
    mine = RowSet([np.array([[0, 1], [2, 3]]), np.array([[far, 0], [5, 5]])], 2)
    assert (mine.keys is None) == big
    other = np.array([[5, 5], [0, 2], [far, 0], [1 << 50, 1], [-1, 0], [0, 1]])
    assert mine.common(other).tolist() == [[5, 5], [far, 0], [0, 1]]
    assert mine.common(np.zeros((0, 2), np.int64)).shape == (0, 2)
    scalar = RowSet([np.zeros((1, 0), np.int64)], 0)
    assert scalar.common(np.zeros((2, 0), np.int64)).shape == (2, 0)
    assert RowSet([], 0).common(np.zeros((1, 0), np.int64)).shape == (0, 0)


def test_a_failed_spill_loses_nothing() -> None:
    """The store refuses the spill's writes: the call raises, the refs stay staged in
    memory, and the next spill (or the commit) writes them."""
    flaky = frazil.FaultInjectingStorage(frazil.in_memory_storage(), seed=1)
    cfg = frazil.RepositoryConfig.default()
    cfg.manifest_split_rows = 16
    cfg.set_virtual_chunk_container(
        frazil.VirtualChunkContainer(PREFIX, frazil.s3_store(region="us-east-1"))
    )
    repo = frazil.Repository.create(flaky, cfg)
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(ROWS * 10, COLS * 10), chunks=(10, 10), dtype="<f4")
    s.commit("the array")
    s = repo.writable_session("main")
    flaky.error_rate = 1.0
    with pytest.raises(frazil.StorageError):
        stage(s, 0, 60, "f1")
    assert not table(s).spilled and table(s).block_rows() == 60
    assert refs(s) == expected((0, 60, "f1", 0))
    flaky.error_rate = 0.0
    stage(s, 60, 61, "f2")
    assert table(s).spilled and table(s).block_rows() == 0
    s.commit("x")
    assert refs(repo.readonly_session("main")) == expected((0, 60, "f1", 0), (60, 61, "f2", 0))
