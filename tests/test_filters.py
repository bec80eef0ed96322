"""Segment filters (SPEC §4.1): never a false negative, the documented hash, stored and
checked in snapshots, ignored where absent; and reads across many merged, filtered segments
equal a plain dict model."""

from __future__ import annotations

import dataclasses
import json
import re

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
    ARRAY,
    CommitInfo,
    FormatError,
    ManifestId,
    NodeId,
    NodeRecord,
    SegmentRef,
    Snapshot,
    SnapshotId,
    common,
    decode_snapshot,
    encode_snapshot,
    filters,
)
from frazil.format.snapshot import FILTERS_COLUMN

WHAT = "snapshots/XYZ"

coords_strategy = st.integers(0, 4).flatmap(
    lambda ndim: st.lists(
        st.tuples(*[st.integers(0, 2**40) | st.integers(0, 50) for _ in range(ndim)]),
        min_size=1,
        max_size=900,
        unique=True,
    )
)


def _matrix(coords: list[tuple[int, ...]]) -> np.ndarray:
    ndim = len(coords[0])
    return np.array(coords, np.int64).reshape(len(coords), ndim)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(coords_strategy)
def test_a_filter_admits_every_coordinate_it_was_built_from(coords: list[tuple[int, ...]]) -> None:
    m = _matrix(coords)
    data = filters.build_filter(m)
    if len(coords) > 819:  # over MAX_BITS: no filter (and then every segment is read)
        assert data is None
        return
    assert data is not None and filters.check_filter(data, WHAT) == data
    assert all(filters.may_contain(data, filters.coord_hash(c)) for c in coords)
    assert filters.may_contain_many(data, m).all()
    # the scalar hash (what readers use) is the bulk one (what writers use)
    assert filters.coord_hashes(m).tolist() == [filters.coord_hash(c) for c in coords]


def test_the_hash_is_the_documented_one() -> None:
    """SPEC §4.1 spelled out with plain Python integers."""
    mask = (1 << 64) - 1

    def mix(z: int) -> int:
        z = (z + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    for coord in [(), (0,), (3, 7), (2**40, 1, 0), (1, 2, 3, 4)]:
        h = 0x6672617A696C6631
        for c in coord:
            h = mix(h ^ c)
        assert filters.coord_hash(coord) == h
    data = filters.build_filter(np.array([[3, 7], [5, 1]], np.int64))
    assert data is not None
    k, bits = data[0], (len(data) - 1) * 8
    assert bits == 64 and k == 16  # round(64 / 2 * ln 2) = 22, clamped
    h = filters.coord_hash((3, 7))
    for j in range(k):
        b = ((h & 0xFFFFFFFF) + j * ((h >> 32) | 1)) % bits
        assert data[1 + b // 8] >> (b % 8) & 1


def test_false_admissions_are_rare() -> None:
    rng = np.random.default_rng(0)
    members = np.unique(rng.integers(0, 10**6, size=(500, 2)), axis=0)
    data = filters.build_filter(members)
    assert data is not None and len(data) == 1 + 8192 // 8
    others = rng.integers(10**6, 2 * 10**6, size=(20_000, 2))
    assert filters.may_contain_many(data, others).mean() < 0.02


@pytest.mark.parametrize(
    "data",
    [b"", b"\x07", b"\x07" + bytes(7), b"\x07" + bytes(24), b"\x00" + bytes(8), b"\x11" + bytes(8)],
)
def test_malformed_filters_are_refused(data: bytes) -> None:
    with pytest.raises(FormatError, match="damaged segment filter"):
        filters.check_filter(data, WHAT)


# -- in snapshots ---------------------------------------------------------------------------


def _snapshot() -> Snapshot:
    f = filters.build_filter(np.array([[1, 2], [3, 4]], np.int64))
    info = CommitInfo(SnapshotId.new(), None, common_now(), "m")
    segs = (
        SegmentRef(ManifestId.new(), 1, 10, 2, (1, 2), (3, 4), 0, f),
        SegmentRef(ManifestId.new(), 2, 20, 100, (0, 0), (9, 9)),
    )
    return Snapshot(
        info,
        (
            NodeRecord("/a", NodeId.new(), ARRAY, b"{}", segs),
            NodeRecord("/b", NodeId.new(), ARRAY, b"{}", segs[1:]),
        ),
    )


def common_now():  # type: ignore[no-untyped-def]
    import datetime as dt

    return dt.datetime(2024, 5, 6, tzinfo=dt.UTC)


def _table_and_header(data: bytes) -> tuple[pa.Table, dict]:  # type: ignore[type-arg]
    t = pq.read_table(pa.BufferReader(data))
    header = json.loads(t.schema.metadata[b"frazil"])
    header.pop("format_version")
    return t.replace_schema_metadata(None), header


def test_filters_round_trip_through_a_snapshot() -> None:
    snap = _snapshot()
    data = encode_snapshot(snap)
    assert decode_snapshot(data) == snap
    t, header = _table_and_header(data)
    assert t.schema.names[:5] == ["path", "node_id", "node_type", "zarr_json", "segments"]
    assert t.column(FILTERS_COLUMN).to_pylist() == [[snap.nodes[0].segments[0].filter, None], None]
    assert "filters_checksum" in header


def test_a_damaged_filter_column_is_refused() -> None:
    data = encode_snapshot(_snapshot())
    t, header = _table_and_header(data)
    row = t.column(FILTERS_COLUMN).to_pylist()
    f = bytearray(row[0][0])
    f[3] ^= 0x10  # one bit: a coordinate the segment holds could be rejected
    damaged = [[bytes(f), None], None]
    i = t.schema.get_field_index(FILTERS_COLUMN)
    for column in (
        damaged,
        [[row[0][0]], None],  # not one filter per segment
        [[b"\x07" + bytes(5), None], None],  # malformed
    ):
        v = t.set_column(i, FILTERS_COLUMN, pa.array(column, pa.list_(pa.binary())))
        with pytest.raises(FormatError, match=re.escape(WHAT) + ".*damaged segment filters"):
            decode_snapshot(common.encode_parquet(v, header), WHAT)


def test_a_snapshot_without_the_column_reads_as_one_without_filters() -> None:
    """What an older reader does (ignores the column) and what a newer reader does with an
    older writer's snapshot (no column): the same nodes, no segment skipped by a filter."""
    snap = _snapshot()
    t, header = _table_and_header(encode_snapshot(snap))
    plain = decode_snapshot(common.encode_parquet(t.drop_columns([FILTERS_COLUMN]), header))
    assert plain.nodes == tuple(
        dataclasses.replace(
            n, segments=tuple(dataclasses.replace(s, filter=None) for s in n.segments)
        )
        for n in snap.nodes
    )


# -- in a repository ------------------------------------------------------------------------

SHAPE = (12, 10)  # chunk grid: 120 chunks, so fanout 8 makes segments of 8+ rows


class CountingStorage(frazil.FaultInjectingStorage):
    """Counts manifest reads (injects no faults)."""

    manifest_reads = 0

    async def get(self, key: str, byte_range: tuple[int, int | None] | None = None) -> bytes:
        if key.startswith("manifests/"):
            self.manifest_reads += 1
        return await super().get(key, byte_range)


def _open_array(session: frazil.Session) -> zarr.Array:
    return zarr.open_array(session.store, path="a")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fanout=st.sampled_from([2, 3, 8]),
    ops=st.lists(
        st.tuples(st.integers(0, SHAPE[0] - 1), st.integers(0, SHAPE[1] - 1), st.integers(-1, 99)),
        min_size=20,
        max_size=120,
    ),
)
def test_reads_across_merged_filtered_segments_equal_a_dict_model(
    fanout: int, ops: list[tuple[int, int, int]]
) -> None:
    """One chunk per commit (value -1: deleted, a tombstone); after each commit and at a few
    old snapshots, every chunk reads as the model says, from a fresh repository object
    (cold caches), whose filters may skip segments but never one that has the chunk."""
    storage = frazil.in_memory_storage()
    repo = frazil.Repository.create(
        storage, config=frazil.RepositoryConfig(manifest_merge_fanout=fanout)
    )
    s = repo.writable_session("main")
    zarr.create_array(
        s.store, name="a", shape=SHAPE, chunks=(1, 1), dtype="i8", fill_value=-1, compressors=None
    )
    s.commit("create")
    model: dict[tuple[int, int], int] = {}
    history: list[tuple[str, dict[tuple[int, int], int]]] = []
    for r, c, v in ops:
        s = repo.writable_session("main")
        _open_array(s)[r, c] = v
        if v == -1:
            model.pop((r, c), None)
        else:
            model[(r, c)] = v
        history.append((s.commit(f"{r},{c}={v}"), dict(model)))
    for sid, expected in history[:: max(1, len(history) // 4)] + history[-1:]:
        fresh = frazil.Repository.open(storage)
        session = fresh.readonly_session(snapshot_id=sid)
        for r in range(SHAPE[0]):
            for c in range(SHAPE[1]):
                got = runtime.run(session.get_chunk("a", (r, c)))
                want = expected.get((r, c))
                assert (got is None) == (want is None), (sid, r, c)
                if want is not None:
                    assert got is not None
                    assert int(np.frombuffer(got, "<i8")[0]) == want, (sid, r, c)


def test_filters_spare_cold_reads_the_segments_that_lack_the_chunk() -> None:
    inner = frazil.in_memory_storage()
    repo = frazil.Repository.create(inner, config=frazil.RepositoryConfig(manifest_merge_fanout=0))
    s = repo.writable_session("main")
    a = zarr.create_array(
        s.store, name="a", shape=(1000,), chunks=(1,), dtype="i8", fill_value=-1, compressors=None
    )
    a[:] = np.arange(1000)
    s.commit("all")
    for i in range(10):  # ten sparse segments spanning the whole array, none holding 500
        s = repo.writable_session("main")
        a = _open_array(s)
        a[i] = -5
        a[999 - i] = -5
        s.commit(f"{i}")
    snap = runtime.run(repo.reader.snapshot(SnapshotId.parse(repo.lookup_branch("main"))))
    segments = next(n for n in snap.nodes if n.path == "/a").segments
    assert len(segments) == 11 and all(s.filter is not None for s in segments[:10])
    counting = CountingStorage(inner)
    fresh = frazil.Repository.open(counting)
    session = fresh.readonly_session(branch="main")
    assert runtime.run(session.get_chunk("a", (500,))) == np.int64(500).tobytes()
    assert counting.manifest_reads <= 3  # the base, and at worst a false admission or two
    assert runtime.run(session.get_chunk("a", (3,))) == np.int64(-5).tobytes()


def test_fsck_reports_a_filter_that_rejects_coordinates_of_its_segment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = frazil.Repository.create(frazil.in_memory_storage())
    s = repo.writable_session("main")
    a = zarr.create_array(
        s.store, name="a", shape=(1000,), chunks=(1,), dtype="i8", fill_value=-1, compressors=None
    )
    a[:] = np.arange(1000)
    s.commit("all")
    assert repo.fsck().ok
    real = frazil.commit.build_filter
    # a writer bug: the filter of other coordinates (readers would miss these chunks)
    monkeypatch.setattr(frazil.commit, "build_filter", lambda coords: real(coords + 1))
    s = repo.writable_session("main")
    a = _open_array(s)
    a[10] = 7
    a[500] = 7
    s.commit("bad filter")
    report = repo.fsck()
    assert not report.ok
    assert any("filter" in p.message and p.kind == "damaged" for p in report.problems)
