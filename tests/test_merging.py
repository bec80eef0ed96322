"""The size-tiered merge every commit does (frazil.merging): bounded segment lists as history
grows, content unchanged at every snapshot, tombstones that still hide, concurrent commits."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import frazil
from frazil import runtime
from frazil.format import ManifestId, SegmentRef, SnapshotId
from frazil.merging import next_run, tier, top_tier

CHUNK = 4


def seg(rows: int, lo: int, hi: int) -> SegmentRef:
    return SegmentRef(ManifestId.new(), 0, 0, rows, (lo,), (hi,))


def test_tiers() -> None:
    assert [tier(r, 8) for r in (0, 1, 7, 8, 63, 64, 512)] == [0, 0, 0, 1, 1, 2, 3]
    assert top_tier(65_536, 8) == tier(8192, 8) == 4


def test_policy_merges_a_full_tier_and_leaves_the_rest() -> None:
    small = tuple(seg(1, i, i) for i in range(7))
    big = (seg(1000, 0, 999),)
    assert next_run(small + big, 8, 65_536) is None  # 7 of tier 0: not yet
    run = next_run((seg(1, 9, 9), *small, *big), 8, 65_536)
    assert run == slice(0, 8)
    assert next_run((seg(1, 9, 9), *small, *big), 0, 65_536) is None  # fanout 0: never


def test_policy_merges_large_segments_only_when_they_overlap() -> None:
    # two whole-array rewrites of 20,000 chunks in full segments of 10,000: a shadowed copy
    rewrite = (seg(10_000, 10_000, 19_999), seg(10_000, 0, 9_999))
    assert next_run(rewrite, 8, 10_000) is None  # disjoint: nothing to gain
    assert next_run(rewrite * 2, 8, 10_000) == slice(0, 4)
    appends = tuple(seg(10_000, 10_000 * i, 10_000 * i + 9_999) for i in range(20, 0, -1))
    assert next_run(appends, 8, 10_000) is None


def _array(session: frazil.Session, n: int) -> zarr.Array:
    return zarr.create_array(
        session.store, name="a", shape=(n * CHUNK,), chunks=(CHUNK,), dtype="i8", fill_value=-1
    )


def _segments(repo: frazil.Repository, sid: str) -> int:
    snapshot = runtime.run(repo.reader.snapshot(SnapshotId.parse(sid)))
    node = next(n for n in snapshot.nodes if n.path == "/a")
    return len(node.segments)


@pytest.mark.parametrize("fanout", [2, 4, 8])
def test_long_history_keeps_lists_bounded_and_every_snapshot_reads(fanout: int) -> None:
    repo = frazil.Repository.create(
        frazil.in_memory_storage(),
        config=frazil.RepositoryConfig(manifest_merge_fanout=fanout, manifest_split_rows=64),
    )
    n = 50
    s = repo.writable_session("main")
    _array(s, n)[:] = np.repeat(np.arange(n), CHUNK)
    model = np.repeat(np.arange(n), CHUNK)
    history = [(s.commit("init"), model.copy())]
    rng = np.random.default_rng(fanout)
    for i in range(300):
        s = repo.writable_session("main")
        a = zarr.open_array(s.store, path="a")
        c = int(rng.integers(n))
        # every 17th commit writes the fill value: zarr deletes the chunk (a tombstone),
        # which must keep hiding the older refs through every merge
        value = -1 if i % 17 == 5 else 1000 + i
        a[c * CHUNK : (c + 1) * CHUNK] = value
        model[c * CHUNK : (c + 1) * CHUNK] = value
        history.append((s.commit(f"c{i}"), model.copy()))
    counts = [_segments(repo, sid) for sid, _ in history]
    # at most fanout-1 per tier: tiers 0..top, plus the large segments of the first write
    print(fanout, max(counts), counts[-10:])
    assert max(counts) <= (fanout - 1) * 8 + 2, counts
    assert max(counts[-50:]) < 300 / 4
    for sid, expected in history:
        got = zarr.open_array(repo.readonly_session(snapshot_id=sid).store, path="a", mode="r")
        np.testing.assert_array_equal(got[:], expected)


def test_the_top_tier_stops_at_the_size_of_the_array() -> None:
    # 1,000 chunks: merged segments never hold more, so segments of 64+ rows are top-tier
    assert top_tier(65_536, 8, 1000) == tier(125, 8) == 2
    assert top_tier(65_536, 8, 10**7) == top_tier(65_536, 8) == 4
    # a segment of 70 rows spread over the array, and the whole array behind it: merged
    # (before, tier 2 was below the top and up to 7 such segments waited for an eighth)
    spread = (seg(70, 3, 990), seg(1000, 0, 999))
    assert next_run(spread, 8, 65_536) is None
    assert next_run(spread, 8, 65_536, 1000) == slice(0, 2)
    # disjoint large segments of a sparse array are left alone
    assert next_run((seg(100, 500, 699), seg(100, 0, 199)), 8, 65_536, 1000) is None


def test_random_rewrites_of_a_small_array_keep_few_segments() -> None:
    """1,000 chunks, one rewritten per commit: at most 7 segments of tiers 0 and 1 and the
    merged rest, so a read looks in few segments (and filters skip most small ones)."""
    repo = frazil.Repository.create(frazil.in_memory_storage())
    s = repo.writable_session("main")
    n = 1000
    _array(s, n)[:] = np.repeat(np.arange(n), CHUNK)
    model = np.repeat(np.arange(n), CHUNK)
    s.commit("init")
    rng = np.random.default_rng(1)
    counts = []
    for i in range(600):
        s = repo.writable_session("main")
        c = int(rng.integers(n))
        zarr.open_array(s.store, path="a")[c * CHUNK : (c + 1) * CHUNK] = 10_000 + i
        model[c * CHUNK : (c + 1) * CHUNK] = 10_000 + i
        sid = s.commit(f"c{i}")
        counts.append(_segments(repo, sid))
    assert max(counts) <= 7 * 2 + 2, counts
    got = zarr.open_array(repo.readonly_session(branch="main").store, path="a", mode="r")
    np.testing.assert_array_equal(got[:], model)


def test_the_top_tier_of_a_tiny_array_is_tier_1() -> None:
    # 14 chunks: tier 0 would make every rewrite merge (and write an object of its own)
    assert top_tier(65_536, 8, 14) == 1
    assert next_run((seg(3, 1, 3), seg(3, 0, 2)), 8, 65_536, 14) is None
    assert top_tier(64, 8) == top_tier(64, 8, 14) == 1
