"""Tests of ``frazil.format``: ids, encode/decode round trips, damage detection, and that
every Parquet object opens in pyarrow and duckdb. Pure: bytes in, objects out, no storage."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import pickle
import re
import struct
import time

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frazil.format import (
    ARRAY,
    FORMAT_VERSION,
    GROUP,
    ChunkId,
    ChunkKind,
    ChunkRef,
    CommitInfo,
    FormatError,
    FrazilError,
    ManifestId,
    NodeChange,
    NodeId,
    NodeRecord,
    SegmentRef,
    Snapshot,
    SnapshotId,
    TransactionLog,
    checksum,
    common,
    decode_commit_info,
    decode_manifest,
    decode_manifest_chunk_ids,
    decode_manifest_parts,
    decode_snapshot,
    decode_snapshot_segments,
    decode_transaction_log,
    encode_manifest,
    encode_snapshot,
    encode_transaction_log,
    txlog,
)
from frazil.format import manifest as manifest_mod
from frazil.format import snapshot as snapshot_mod
from frazil.format.common import WRITE_VERSION
from frazil.format.config import decode_config, encode_config
from frazil.format.refs import RefRecord, decode_ref, encode_ref

ID_TYPES = (SnapshotId, ManifestId, ChunkId, NodeId)
CROCKFORD = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
WHAT = "snapshots/XYZ"
T0 = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)


# -- builders ---------------------------------------------------------------------------------


def make_snapshot(nodes: bool = True) -> Snapshot:
    info = CommitInfo(
        snapshot_id=SnapshotId.new(),
        parent_id=SnapshotId.new(),
        written_at=dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC),
        message="add temperature ✓",
        metadata={"author": "ana", "tags": ["a", "b"], "n": 3},
        transaction_log_checksum=2**64 - 1,
    )
    if not nodes:
        return Snapshot(info, ())
    segs = (
        SegmentRef(ManifestId.new(), 2**63 + 5, 4096, 3, (0, 0), (4, 9)),
        SegmentRef(ManifestId.new(), 0, 1234, 100, (2, 1), (7, 3)),
    )
    return Snapshot(
        info,
        (
            NodeRecord("/", NodeId.new(), GROUP, b'{"zarr_format":3,"node_type":"group"}'),
            NodeRecord(
                "/g/temp", NodeId.new(), ARRAY, b'{"zarr_format":3,"node_type":"array"}', segs
            ),
            NodeRecord("/g", NodeId.new(), GROUP, b'{"attributes":{"title":"\xc3\xa9t\xc3\xa9"}}'),
            NodeRecord(
                "/scalar",
                NodeId.new(),
                ARRAY,
                b"{}",
                (SegmentRef(ManifestId.new(), 7, 99, 1, (), ()),),
            ),
            NodeRecord("/empty", NodeId.new(), ARRAY, b"{}"),
        ),
    )


def sample_refs() -> list[ChunkRef]:
    return [
        ChunkRef(ChunkKind.INLINE, data=b"\x00tiny chunk\xff", length=12),
        ChunkRef(ChunkKind.NATIVE, chunk_id=ChunkId.new(), length=1 << 20, checksum=2**64 - 1),
        ChunkRef(
            ChunkKind.VIRTUAL,
            location="s3://bucket/data/file.nc",
            offset=1 << 33,
            length=4096,
            etag='"abc123"',
            last_modified=T0,
        ),
        ChunkRef(ChunkKind.DELETED),
        ChunkRef(ChunkKind.VIRTUAL, location="https://example.com/f.h5", offset=0, length=8),
        ChunkRef(ChunkKind.INLINE, data=b"", length=0),
    ]


def make_manifest(
    coords: list[tuple[int, ...]], ndim: int, refs: list[ChunkRef] | None = None
) -> tuple[bytes, np.ndarray, list[ChunkRef]]:
    c = np.array(sorted(coords), dtype=np.int64).reshape(len(coords), ndim)
    if refs is None:
        pool = sample_refs()
        refs = [pool[i % len(pool)] for i in range(len(coords))]
    return encode_manifest(ManifestId.new(), NodeId.new(), c, refs), c, refs


def make_log(parent: bool = True) -> TransactionLog:
    a, g = NodeId.new(), NodeId.new()
    return TransactionLog(
        SnapshotId.new(),
        SnapshotId.new() if parent else None,
        (
            NodeChange(txlog.NEW_GROUP, "/g", g),
            NodeChange(txlog.NEW_ARRAY, "/g/a", a),
            NodeChange(txlog.UPDATED_GROUP, "/", NodeId.new()),
            NodeChange(txlog.UPDATED_ARRAY, "/g/a", a),
            NodeChange(txlog.CHUNKS, "/g/a", a, np.array([[0, 1], [2, 3], [5, 0]])),
            NodeChange(txlog.CHUNKS, "/v", NodeId.new(), np.array([[7], [8]])),
            NodeChange(txlog.CHUNKS, "/cube", NodeId.new(), np.array([[1, 2, 3]])),
            NodeChange(txlog.CHUNKS, "/s", NodeId.new(), np.zeros((1, 0), np.int64)),
            NodeChange(txlog.DELETED_ARRAY, "/old", NodeId.new()),
            NodeChange(txlog.DELETED_GROUP, "/oldg", NodeId.new()),
        ),
    )


def logs_equal(a: TransactionLog, b: TransactionLog) -> bool:
    if (a.snapshot_id, a.parent_id, len(a.changes)) != (b.snapshot_id, b.parent_id, len(b.changes)):
        return False
    for x, y in zip(a.changes, b.changes, strict=True):
        if (x.change, x.path, x.node_id) != (y.change, y.path, y.node_id):
            return False
        if (x.chunks is None) != (y.chunks is None):
            return False
        if x.chunks is not None and not (
            x.chunks.shape == y.chunks.shape and np.array_equal(x.chunks, y.chunks)
        ):
            return False
    return True


def header_of(data: bytes) -> dict:
    """The ``frazil`` header of a Parquet object (to craft variants with encode_parquet)."""
    return json.loads(pq.read_metadata(pa.BufferReader(data)).metadata[b"frazil"])


def resealed_snapshot_header(table: pa.Table, header: dict) -> dict:
    """``header`` with nodes_checksum and info_checksum recomputed for ``table``, as SPEC.md
    defines them (for crafting snapshots whose only fault is the one under test)."""
    cols = {c: table.column(c).to_pylist() for c in snapshot_mod.SCHEMA.names}
    header = {**header, "nodes_checksum": common.json_checksum(cols)}
    body = {k: v for k, v in header.items() if k not in ("format_version", "info_checksum")}
    return {**header, "info_checksum": common.json_checksum(body)}


def table_of(data: bytes) -> pa.Table:
    return pq.read_table(pa.BufferReader(data))


def flip(data: bytes, i: int, bit: int = 0x01) -> bytes:
    b = bytearray(data)
    b[i] ^= bit
    return bytes(b)


# -- ids --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ID_TYPES)
def test_new_ids_are_unique(cls):
    ids = [cls.new() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert len({i.raw for i in ids}) == len(ids)


@pytest.mark.parametrize("cls", (SnapshotId, ManifestId, ChunkId))
def test_ids_are_time_ordered(cls):
    before = time.time_ns() // 1_000_000
    a = cls.new()
    time.sleep(0.003)
    b = cls.new()
    assert before <= int.from_bytes(a.raw[:6], "big") <= before + 60_000
    assert a < b and str(a) < str(b)


@pytest.mark.parametrize(
    "cls,length", [(SnapshotId, 20), (ManifestId, 20), (ChunkId, 20), (NodeId, 13)]
)
def test_parse_round_trip_and_text_length(cls, length):
    for _ in range(200):
        i = cls.new()
        text = str(i)
        assert len(text) == length
        assert set(text) <= CROCKFORD
        back = cls.parse(text)
        assert back == i and type(back) is cls and back.raw == i.raw
        assert cls.parse(text.lower()) == i
    assert cls.parse(i) is i
    for raw in (bytes(cls.SIZE), b"\xff" * cls.SIZE):
        assert cls.parse(str(cls(raw))).raw == raw
    assert str(cls(bytes(cls.SIZE))) == "0" * length


@pytest.mark.parametrize("cls", ID_TYPES)
def test_text_sorts_like_bytes(cls):
    ids = [cls(os.urandom(cls.SIZE)) for _ in range(2000)]
    ids += [cls(bytes(cls.SIZE)), cls(b"\xff" * cls.SIZE), cls(b"\x00" * (cls.SIZE - 1) + b"\x01")]
    assert sorted(ids, key=str) == sorted(ids, key=lambda i: i.raw) == sorted(ids)


def test_ids_of_different_types_never_equal():
    raw = os.urandom(12)
    typed = [SnapshotId(raw), ManifestId(raw), ChunkId(raw)]
    for i, a in enumerate(typed):
        for j, b in enumerate(typed):
            assert (a == b) == (i == j)
    assert len(set(typed)) == 3
    assert SnapshotId(raw) != raw and SnapshotId(raw) != str(SnapshotId(raw))
    assert NodeId(raw[:8]) != SnapshotId(raw)


@pytest.mark.parametrize("cls", ID_TYPES)
def test_bad_id_text_is_a_format_error(cls):
    good = str(cls.new())
    n = len(good)
    bad = [
        "",
        good[:-1],
        good + "0",
        " " + good[1:],
        "!" + good[1:],
        "=" * n,
        "-" + good[1:],
        "U" + good[1:],
        "I" + good[1:],
        "L" + good[1:],
        "O" + good[1:],  # not in the alphabet
        "é" + good[1:],
        "ſ" + good[1:],  # non-ASCII (ſ upper-cases to S)
        good[:-1] + "Z",  # the last character's pad bits must be zero
        str((SnapshotId if cls is NodeId else NodeId).new()),  # another type's length
    ]
    for text in bad:
        with pytest.raises(FormatError):
            cls.parse(text)
    for not_text in (None, 5, good.encode(), [good]):
        with pytest.raises(FormatError):
            cls.parse(not_text)
    with pytest.raises(FormatError):
        cls(b"short")
    with pytest.raises(FormatError):
        cls("x" * cls.SIZE)


@pytest.mark.parametrize("cls", ID_TYPES)
def test_ids_pickle_and_are_immutable(cls):
    i = cls.new()
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(i, protocol=proto))
        assert back == i and type(back) is cls and hash(back) == hash(i)
    with pytest.raises(AttributeError):
        i.raw = b"x" * cls.SIZE
    assert repr(i) == f"{cls.__name__}({str(i)!r})"


def test_format_error_is_a_frazil_error():
    assert issubclass(FormatError, FrazilError) and issubclass(FrazilError, Exception)


# -- snapshots --------------------------------------------------------------------------------


def test_snapshot_round_trip():
    snap = make_snapshot()
    data = encode_snapshot(snap)
    back = decode_snapshot(data, "snapshots/x", checksum(data))
    assert back.info == snap.info
    assert back.id == snap.id
    assert back.nodes == tuple(sorted(snap.nodes, key=lambda n: n.path))
    temp = next(n for n in back.nodes if n.path == "/g/temp")
    assert temp.segments[0].checksum == 2**63 + 5
    assert temp.segments[0].covers((4, 9)) and not temp.segments[0].covers((5, 0))
    assert next(n for n in back.nodes if n.path == "/scalar").segments[0].covers(())
    assert back.info.written_at.utcoffset() == dt.timedelta(0)


def test_snapshot_round_trip_empty_and_minimal_info():
    info = CommitInfo(SnapshotId.new(), None, dt.datetime(2020, 1, 1, tzinfo=dt.UTC), "")
    snap = Snapshot(info, ())
    back = decode_snapshot(encode_snapshot(snap))
    assert back == snap
    assert back.info.parent_id is None and back.info.transaction_log_checksum is None
    assert back.info.metadata == {}
    assert decode_snapshot(encode_snapshot(make_snapshot(nodes=False))).nodes == ()


def test_snapshot_written_at_is_stored_in_utc():
    tz = dt.timezone(dt.timedelta(hours=-5))
    info = CommitInfo(SnapshotId.new(), None, dt.datetime(2024, 1, 1, 12, tzinfo=tz), "m")
    data = encode_snapshot(Snapshot(info, ()))
    assert header_of(data)["written_at"] == "2024-01-01T17:00:00+00:00"
    assert decode_snapshot(data).info.written_at == info.written_at


def test_decode_commit_info_from_tail():
    snap = make_snapshot()
    data = encode_snapshot(snap)
    footer = int.from_bytes(data[-8:-4], "little") + 8
    assert decode_commit_info(data) == snap.info
    assert decode_commit_info(data[-footer:]) == snap.info
    assert decode_commit_info(data[-(footer + 100) :]) == snap.info
    assert decode_commit_info(data[-(footer - 1) :]) is None  # footer not whole: read more
    assert decode_commit_info(data[-12:]) is None
    assert decode_commit_info(data[-11:]) is None
    assert decode_commit_info(b"") is None
    with pytest.raises(FormatError, match=re.escape(WHAT)):
        decode_commit_info(data[:-1], WHAT)  # not the end of a Parquet file
    with pytest.raises(FormatError, match=re.escape(WHAT)):
        decode_commit_info(
            encode_manifest(ManifestId.new(), NodeId.new(), np.zeros((0, 1), np.int64), []), WHAT
        )


def test_commit_info_checksum_catches_an_edited_header():
    data = encode_snapshot(make_snapshot())
    header = header_of(data)
    header["message"] = "something else"  # info_checksum not updated
    forged = common.encode_parquet(table_of(data), header)
    with pytest.raises(FormatError, match=re.escape(WHAT) + ".*commit info"):
        decode_snapshot(forged, WHAT)
    with pytest.raises(FormatError, match=re.escape(WHAT)):
        decode_commit_info(forged, WHAT)


def test_snapshot_with_unknown_node_type_is_refused():
    data = encode_snapshot(make_snapshot())
    t = table_of(data)
    t = t.set_column(2, "node_type", pa.array(["group", "array", "group", "link", "array"]))
    header = resealed_snapshot_header(t, header_of(data))
    with pytest.raises(FormatError, match=re.escape(WHAT) + ".*unknown type"):
        decode_snapshot(common.encode_parquet(t, header), WHAT)


# -- manifests --------------------------------------------------------------------------------


def test_manifest_round_trip_1d():
    coords = [(0,), (3,), (4,), (10,), (11,), (1000,)]
    data, c, refs = make_manifest(coords, 1)
    m = decode_manifest(data, "manifests/x", checksum(data))
    assert len(m) == 6 and m.coords.dtype == np.int64
    assert np.array_equal(m.coords, c)
    assert m.refs() == refs
    assert [int(k) for k in m.kinds] == [int(r.kind) for r in refs]
    for i, xy in enumerate(sorted(coords)):
        assert m.find(xy) == i
        assert m.ref(i) == refs[i]
    for miss in [(1,), (2,), (999,), (-1,), (1001,), (10**12,)]:
        assert m.find(miss) is None


def test_manifest_round_trip_3d():
    coords = [(0, 0, 0), (0, 0, 5), (0, 2, 1), (1, 0, 0), (3, 7, 2), (3, 7, 3)]
    data, c, refs = make_manifest(coords, 3)
    m = decode_manifest(data)
    assert m.coords.shape == (6, 3) and np.array_equal(m.coords, c)
    assert m.refs() == refs
    for i, xyz in enumerate(sorted(coords)):
        assert m.find(xyz) == i
    for miss in [
        (0, 0, 1),
        (0, 1, 0),
        (2, 0, 0),
        (3, 7, 4),
        (4, 0, 0),
        (0, 8, 0),
        (-1, 0, 0),
        (0, 0, -1),
    ]:
        assert m.find(miss) is None


def test_manifest_round_trip_0d():
    ref = ChunkRef(ChunkKind.INLINE, data=b"\x07\x00\x00\x00", length=4)
    mid, nid = ManifestId.new(), NodeId.new()
    data = encode_manifest(mid, nid, np.zeros((1, 0), np.int64), [ref])
    m = decode_manifest(data)
    assert (m.manifest_id, m.node_id) == (mid, nid)
    assert m.coords.shape == (1, 0)
    assert m.find(()) == 0 and m.refs() == [ref]


def test_manifest_round_trip_empty():
    for ndim in (0, 2):
        m = decode_manifest(
            encode_manifest(ManifestId.new(), NodeId.new(), np.zeros((0, ndim), np.int64), [])
        )
        assert len(m) == 0 and m.coords.shape == (0, ndim)
        assert m.find((0,) * ndim) is None and m.refs() == []


def test_manifest_very_sparse_coordinates():
    big = 2**40
    coords = [(0, 0, 0, 0), (0, big, 1, 0), (big, 0, 0, big), (big, big, big, big)]
    data, c, refs = make_manifest(coords, 4)
    m = decode_manifest(data)
    for i, xy in enumerate(sorted(coords)):
        assert m.find(xy) == i
    assert m.find((0, 0, 0, 1)) is None and m.find((big + 1, 0, 0, 0)) is None


def test_manifest_header_and_ids():
    mid, nid = ManifestId.new(), NodeId.new()
    data = encode_manifest(mid, nid, np.array([[1, 2]]), [ChunkRef(ChunkKind.DELETED)])
    m = decode_manifest(data)
    assert (m.manifest_id, m.node_id) == (mid, nid)
    h = header_of(data)
    assert h == {
        "format_version": WRITE_VERSION,
        "object_type": "manifest",
        "id": str(mid),
        "parts": [{"node_id": str(nid), "ndim": 2, "rows": 1}],
    }


def test_encode_manifest_refuses_mismatched_lengths():
    with pytest.raises(ValueError):
        encode_manifest(
            ManifestId.new(),
            NodeId.new(),
            np.zeros((2, 1), np.int64),
            [ChunkRef(ChunkKind.DELETED)],
        )


# -- transaction logs -------------------------------------------------------------------------


def test_transaction_log_round_trip():
    for log in (make_log(), make_log(parent=False)):
        data = encode_transaction_log(log)
        back = decode_transaction_log(data, "transactions/x", checksum(data))
        assert logs_equal(back, log)
        kinds = {c.change for c in back.changes}
        assert kinds == set(txlog.CHANGE_KINDS)
        s = next(c for c in back.changes if c.path == "/s")
        assert s.chunks.shape == (1, 0)


def test_transaction_log_round_trip_edge_cases():
    nid = NodeId.new()
    empty = TransactionLog(SnapshotId.new(), None, ())
    assert logs_equal(decode_transaction_log(encode_transaction_log(empty)), empty)
    two_scalars = TransactionLog(
        SnapshotId.new(),
        None,
        (
            NodeChange(txlog.CHUNKS, "/s", nid, np.zeros((2, 0), np.int64)),
            NodeChange(txlog.CHUNKS, "/t", nid, np.arange(12).reshape(3, 4)),
        ),
    )
    assert logs_equal(decode_transaction_log(encode_transaction_log(two_scalars)), two_scalars)
    # An empty coordinate list has no rows to tell its ndim: it comes back as 0 x 0.
    no_rows = TransactionLog(
        SnapshotId.new(), None, (NodeChange(txlog.CHUNKS, "/e", nid, np.zeros((0, 3), np.int64)),)
    )
    back = decode_transaction_log(encode_transaction_log(no_rows))
    assert back.changes[0].chunks is not None and back.changes[0].chunks.size == 0


def test_transaction_log_with_chunk_segments_is_version_2():
    """A large commit's log names the manifest segments holding the coordinates it wrote
    (SPEC §4.3); only such a log is written at version 2, so older readers refuse it
    rather than miss those coordinates, and keep reading every other log."""
    nid = NodeId.new()
    segs = (
        SegmentRef(ManifestId.new(), 2**64 - 1, 4096, 65536, (), (), 0),
        SegmentRef(ManifestId.new(), 7, 100, 3, (), (), 12),
    )
    log = TransactionLog(
        SnapshotId.new(),
        SnapshotId.new(),
        (
            NodeChange(txlog.NEW_ARRAY, "/b", nid),
            NodeChange(txlog.CHUNKS, "/a", NodeId.new(), np.array([[0, 1]]), segs),
            NodeChange(txlog.CHUNKS, "/b", nid, None, segs[:1]),
        ),
    )
    data = encode_transaction_log(log)
    assert header_of(data)["format_version"] == 2
    back = decode_transaction_log(data, WHAT, checksum(data))
    assert logs_equal(back, log)
    assert [c.segments for c in back.changes] == [(), segs, segs[:1]]
    assert table_of(data).column_names[-1] == "chunk_segments"
    assert header_of(encode_transaction_log(make_log()))["format_version"] == 1
    with pytest.raises(ValueError, match="lists no segments"):
        encode_transaction_log(
            TransactionLog(
                log.snapshot_id, None, (NodeChange(txlog.NEW_ARRAY, "/b", nid, None, segs),)
            )
        )
    # the column means something only at version 2: a version-1 log's is ignored
    t = table_of(data)
    header = header_of(data)
    v1 = common.encode_parquet(t, {k: v for k, v in header.items() if k != "format_version"})
    assert all(not c.segments for c in decode_transaction_log(v1, WHAT).changes)
    bad = t.set_column(
        t.num_columns - 1,
        "chunk_segments",
        pa.array(
            [
                None,
                [{"manifest_id": "nope", "checksum": 1, "size": 1, "rows": 1, "row_offset": 0}],
                None,
            ],
            t.schema.field("chunk_segments").type,
        ),
    )
    with pytest.raises(FormatError, match="damaged transaction log"):
        decode_transaction_log(common.encode_parquet(bad, header, 2), WHAT)


def test_transaction_log_unknown_change_kind():
    log = TransactionLog(SnapshotId.new(), None, (NodeChange("renamed", "/a", NodeId.new()),))
    with pytest.raises(ValueError):
        encode_transaction_log(log)
    data = encode_transaction_log(make_log())
    t = table_of(data)
    t = t.set_column(0, "change", pa.array(["renamed"] * t.num_rows))
    with pytest.raises(FormatError, match=re.escape(WHAT) + ".*unknown change kind"):
        decode_transaction_log(common.encode_parquet(t, header_of(data)), WHAT)


# -- refs and config --------------------------------------------------------------------------


def test_branch_ref_round_trip():
    sid = SnapshotId.new()
    data = encode_ref(common.BRANCH_REF, sid, 2**64 - 1, write_id="00112233aabbccdd")
    assert decode_ref(data, common.BRANCH_REF, "refs/branch.main/ref.json") == RefRecord(
        sid, 2**64 - 1, "00112233aabbccdd"
    )
    obj = json.loads(data)
    assert obj == {
        "format_version": 1,
        "object_type": "branch_ref",
        "snapshot": str(sid),
        "snapshot_checksum": "ffffffffffffffff",
        "write_id": "00112233aabbccdd",
    }
    assert data.endswith(b"\n") and list(obj) == sorted(obj)
    a = decode_ref(encode_ref(common.BRANCH_REF, sid, 0), common.BRANCH_REF, "r")
    b = decode_ref(encode_ref(common.BRANCH_REF, sid, 0), common.BRANCH_REF, "r")
    assert a.checksum == 0 and a.write_id != b.write_id and len(a.write_id) == 16
    assert (
        decode_ref(encode_ref(common.BRANCH_REF, sid, None), common.BRANCH_REF, "r").checksum
        is None
    )


def test_ref_records_its_name():
    sid = SnapshotId.new()
    data = encode_ref(common.BRANCH_REF, sid, 7, name="main")
    assert json.loads(data)["name"] == "main"
    key = "refs/branch.main/ref.json"
    assert decode_ref(data, common.BRANCH_REF, key, "main").snapshot_id == sid
    with pytest.raises(
        FormatError,
        match=r"refs/branch.dev/ref.json: holds the ref of "
        r"branch 'main', not of 'dev'",
    ):
        decode_ref(data, common.BRANCH_REF, "refs/branch.dev/ref.json", "dev")
    tomb = encode_ref(common.TAG_REF, None, None, deleted=True, name="v1")
    with pytest.raises(FormatError, match="holds the ref of tag 'v1'"):
        decode_ref(tomb, common.TAG_REF, "refs/tag.v2/ref.json", "v2")
    # refs written without a name (before names were recorded) read as before
    unnamed = encode_ref(common.BRANCH_REF, sid, 7)
    assert "name" not in json.loads(unnamed)
    assert (
        decode_ref(unnamed, common.BRANCH_REF, "refs/branch.dev/ref.json", "dev").snapshot_id == sid
    )


def test_tag_ref_and_tombstone_round_trip():
    sid = SnapshotId.new()
    rec = decode_ref(encode_ref(common.TAG_REF, sid, 42), common.TAG_REF, "refs/tag.v1/ref.json")
    assert (rec.snapshot_id, rec.checksum, rec.deleted) == (sid, 42, False)
    data = encode_ref(common.TAG_REF, None, None, deleted=True)
    assert "snapshot" not in json.loads(data) and json.loads(data)["deleted"] is True
    dead = decode_ref(data, common.TAG_REF, "refs/tag.v1/ref.json")
    assert dead.deleted and dead.snapshot_id is None and dead.checksum is None
    with pytest.raises(ValueError):
        encode_ref("note", sid, 1)
    with pytest.raises(ValueError):
        encode_ref(common.TAG_REF, None, None)


def test_config_round_trip_keeps_unknown_keys():
    settings = {
        "inline_chunk_threshold_bytes": 512,
        "manifest_split_rows": 65536,
        "virtual_chunk_containers": [{"url_prefix": "s3://bucket/", "store": {"region": "x"}}],
        "from_the_future": {"nested": [1, 2.5, None, True, "s"]},
    }
    data = encode_config(settings)
    assert decode_config(data) == settings
    obj = json.loads(data)
    assert obj["format_version"] == 1 and obj["object_type"] == "config"
    assert decode_config(encode_config({})) == {}


# -- errors -----------------------------------------------------------------------------------


def all_parquet_objects() -> list[tuple[str, bytes, object, object]]:
    """(name, bytes, decoder, original) for one object of each Parquet type."""
    snap = make_snapshot()
    log = make_log()
    mdata, _, _ = make_manifest([(0, 0), (0, 1), (2, 3), (4, 4), (5, 1), (9, 9)], 2)
    return [
        ("snapshot", encode_snapshot(snap), decode_snapshot, snap),
        ("manifest", mdata, decode_manifest, decode_manifest(mdata)),
        ("transaction_log", encode_transaction_log(log), decode_transaction_log, log),
    ]


def same_object(name: str, got, want) -> bool:
    if name == "snapshot":
        return got.info == want.info and got.nodes == tuple(
            sorted(want.nodes, key=lambda n: n.path)
        )
    if name == "manifest":
        return (
            got.manifest_id == want.manifest_id
            and got.node_id == want.node_id
            and np.array_equal(got.coords, want.coords)
            and got.refs() == want.refs()
        )
    return logs_equal(got, want)


def test_wrong_object_type():
    objs = {name: data for name, data, _, _ in all_parquet_objects()}
    decoders = {
        "snapshot": decode_snapshot,
        "manifest": decode_manifest,
        "transaction_log": decode_transaction_log,
    }
    for name, decode in decoders.items():
        for other, data in objs.items():
            if other == name:
                continue
            with pytest.raises(FormatError, match=re.escape(WHAT)) as e:
                decode(data, WHAT)
            assert name in str(e.value) and other in str(e.value)
    with pytest.raises(FormatError, match=re.escape(WHAT)):
        decode_commit_info(objs["manifest"], WHAT)


@pytest.mark.parametrize("version", [99, FORMAT_VERSION + 1])
def test_newer_format_version_is_refused(version):
    for name, data, decode, _ in all_parquet_objects():
        header = header_of(data)
        header["format_version"] = version
        newer = common.encode_parquet(table_of(data), header)
        assert (
            json.loads(pq.read_metadata(pa.BufferReader(newer)).metadata[b"frazil"])[
                "format_version"
            ]
            == version
        )
        with pytest.raises(FormatError, match=re.escape(WHAT)) as e:
            decode(newer, WHAT)
        msg = str(e.value)
        assert "newer" in msg and "upgrade" in msg and str(version) in msg, (name, msg)
        if name == "snapshot":
            with pytest.raises(FormatError, match="newer.*upgrade"):
                decode_commit_info(newer, WHAT)
    for what, data, decode in [
        (
            "refs/branch.main/ref.json",
            encode_ref(common.BRANCH_REF, SnapshotId.new(), 1),
            lambda d, w: decode_ref(d, common.BRANCH_REF, w),
        ),
        ("config.json", encode_config({"a": 1}), decode_config),
    ]:
        obj = json.loads(data)
        obj["format_version"] = version
        with pytest.raises(FormatError, match=re.escape(what) + ".*newer.*upgrade"):
            decode(json.dumps(obj).encode(), what)


@pytest.mark.parametrize("version", [0, -1, "1", None, 1.5, True])
def test_invalid_format_version_is_refused(version):
    data = encode_snapshot(make_snapshot())
    header = header_of(data)
    header["format_version"] = version
    with pytest.raises(FormatError, match=re.escape(WHAT) + ".*version"):
        decode_snapshot(common.encode_parquet(table_of(data), header), WHAT)


def test_truncated_objects():
    for _, data, decode, _ in all_parquet_objects():
        for cut in (data[:-1], data[:-8], data[: len(data) // 2], data[1:], data[:12], b""):
            with pytest.raises(FormatError, match=re.escape(WHAT)):
                decode(cut, WHAT)
            with pytest.raises(FormatError, match=re.escape(WHAT)):
                decode(cut, WHAT, checksum(data))


def test_altered_byte_with_checksum_is_refused():
    for _, data, decode, _ in all_parquet_objects():
        for i in (len(data) // 2, 0, len(data) - 1, 100):
            with pytest.raises(FormatError, match=re.escape(WHAT)) as e:
                decode(flip(data, i), WHAT, checksum(data))
            assert "checksum" in str(e.value) and "damaged" in str(e.value)
        assert decode(data, WHAT, checksum(data)) is not None


def test_altered_middle_byte_without_checksum_is_an_error_or_harmless():
    for name, data, decode, original in all_parquet_objects():
        for bit in (1, 2, 4, 8, 16, 32, 64, 128):
            try:
                got = decode(flip(data, len(data) // 2, bit), WHAT)
            except FormatError as e:
                assert WHAT in str(e)
            else:
                assert same_object(name, got, original), name


def footer_start(data: bytes) -> int:
    return len(data) - 8 - int.from_bytes(data[-8:-4], "little")


def test_any_altered_byte_without_checksum_is_an_error_or_harmless():
    """A strided sweep of single-bit flips over each whole object, read with no checksum.

    Never an exception other than FormatError. Never a different snapshot: snapshots are
    read without a referrer's checksum (parents, ids given by users), so their node table
    and commit info check themselves, footer included. Manifests and transaction logs are
    always read with their referrer's checksum; without it only their data pages are
    covered (page CRCs), so only there must they decode unchanged (see SPEC.md)."""
    for name, data, decode, original in all_parquet_objects():
        covered = len(data) if name == "snapshot" else footer_start(data)
        for i in range(len(name) % 5, len(data), 5):
            damaged = flip(data, i, 1 << (i % 8))
            try:
                got = decode(damaged, WHAT)
                if name == "manifest":
                    got.refs()
            except FormatError as e:
                assert WHAT in str(e)
            else:
                if i < covered:
                    assert same_object(name, got, original), (name, i)


def test_snapshot_node_table_checks_itself():
    data = encode_snapshot(make_snapshot())
    t, header = table_of(data), header_of(data)
    variants = [
        t.slice(0, t.num_rows - 1),  # a node lost
        t.set_column(0, "path", pa.array(["/", "/empty", "/g", "/h", "/scalar"])),
        t.set_column(4, "segments", t.column("segments").take([0, 1, 2, 4, 3])),
    ]
    for v in variants:
        with pytest.raises(FormatError, match=re.escape(WHAT) + ".*damaged node table"):
            decode_snapshot(common.encode_parquet(v, header), WHAT)
    # resealed, the same table passes; without nodes_checksum (an optional key) it is unchecked
    assert resealed_snapshot_header(t, header) == header
    del header["nodes_checksum"]
    body = {k: v for k, v in header.items() if k not in ("format_version", "info_checksum")}
    header["info_checksum"] = common.json_checksum(body)
    assert decode_snapshot(common.encode_parquet(t, header)) == decode_snapshot(data)


def test_data_page_damage_is_caught_by_page_checksums():
    data = encode_snapshot(make_snapshot())
    meta = pq.read_metadata(pa.BufferReader(data))
    col = meta.row_group(0).column(0)
    start = col.dictionary_page_offset or col.data_page_offset
    page = start + col.total_compressed_size - 2  # inside the column's last page's data
    with pytest.raises(FormatError, match=re.escape(WHAT)):
        decode_snapshot(flip(data, page, 0xFF), WHAT)


def test_garbage_is_not_parquet():
    plain = pa.BufferOutputStream()
    pq.write_table(pa.table({"x": [1, 2]}), plain)
    garbage = [
        os.urandom(1000),
        b'{"format_version": 1}',
        b"PAR1" + os.urandom(200) + b"PAR1",
        b"\x00" * 64,
        plain.getvalue().to_pybytes(),
    ]
    for blob in garbage:
        for decode in (decode_snapshot, decode_manifest, decode_transaction_log):
            with pytest.raises(FormatError, match=re.escape(WHAT)):
                decode(blob, WHAT)
    with pytest.raises(FormatError, match=re.escape(WHAT) + ".*no 'frazil' header"):
        decode_manifest(plain.getvalue().to_pybytes(), WHAT)


def test_missing_or_retyped_columns_are_refused():
    mdata, _, _ = make_manifest([(0,), (1,)], 1)
    t = table_of(mdata)
    h = header_of(mdata)
    variants = [
        t.drop_columns(["kind"]),
        t.set_column(2, "kind", pa.array([1, 1], pa.int32())),
        t.set_column(8, "location", pa.array([b"a", b"b"], pa.binary())),
        t.set_column(0, "node_id", pa.array([1, 1], pa.int64())),
        t.rename_columns(
            [
                "node_id",
                "coord",
                "kind",
                "inline",
                "chunk_id",
                "offset",
                "length",
                "checksum",
                "location",
                "etag",
                "modified",
                "block_size",
                "block_checksums",
            ]
        ),
        # the optional block columns: absent is fine (older manifests), retyped is not
        t.set_column(12, "block_checksums", pa.array(["a", "b"], pa.string())),
    ]
    for v in variants:
        with pytest.raises(FormatError, match=re.escape(WHAT) + ".*column"):
            decode_manifest(common.encode_parquet(v, h), WHAT)
    # an extra column after the known ones is ignored (compatible addition)
    extra = t.append_column("note", pa.array(["x", "y"]))
    assert decode_manifest(common.encode_parquet(extra, h)).refs() == decode_manifest(mdata).refs()
    older = t.drop_columns(["block_size", "block_checksums"])
    assert decode_manifest(common.encode_parquet(older, h)).refs() == decode_manifest(mdata).refs()
    sdata = encode_snapshot(make_snapshot())
    st_ = table_of(sdata)
    with pytest.raises(FormatError, match=re.escape(WHAT)):
        decode_snapshot(
            common.encode_parquet(st_.drop_columns(["zarr_json"]), header_of(sdata)), WHAT
        )
    assert decode_snapshot(
        common.encode_parquet(
            st_.append_column("note", pa.array([None] * st_.num_rows, pa.string())),
            header_of(sdata),
        )
    ) == decode_snapshot(sdata)


def test_bad_ids_inside_objects_name_the_object():
    mdata, _, _ = make_manifest([(0,)], 1)
    h = header_of(mdata)
    h["parts"][0]["node_id"] = "not-an-id"
    with pytest.raises(FormatError, match=re.escape(WHAT)):
        decode_manifest(common.encode_parquet(table_of(mdata), h), WHAT)
    # the node_id column must agree with the header
    t = table_of(mdata)
    t = t.set_column(0, "node_id", pa.array([str(NodeId.new())]))
    with pytest.raises(FormatError, match=re.escape(WHAT) + ".*does not match"):
        decode_manifest(common.encode_parquet(t, header_of(mdata)), WHAT)
    ldata = encode_transaction_log(make_log())
    t = table_of(ldata)
    t = t.set_column(2, "node_id", pa.array(["??"] * t.num_rows))
    with pytest.raises(FormatError, match=re.escape(WHAT)):
        decode_transaction_log(common.encode_parquet(t, header_of(ldata)), WHAT)


def test_refs_and_config_that_are_not_json_or_the_wrong_type():
    what = "refs/branch.main/ref.json"
    branch = encode_ref(common.BRANCH_REF, SnapshotId.new(), 1)
    tag = encode_ref(common.TAG_REF, SnapshotId.new(), 1)
    config = encode_config({"a": 1})
    not_json = [b"", b"{", b"\xff\xfe\x00garbage", b"PAR1\x00\x00PAR1", b"not json"]
    not_objects = [b"[]", b"null", b"42", b'"branch_ref"', b"{}"]
    for data in not_json + not_objects:
        with pytest.raises(FormatError, match=re.escape(what)):
            decode_ref(data, common.BRANCH_REF, what)
        with pytest.raises(FormatError, match=re.escape("config.json")):
            decode_config(data, "config.json")
    for data, kind in [
        (tag, common.BRANCH_REF),
        (branch, common.TAG_REF),
        (config, common.BRANCH_REF),
    ]:
        with pytest.raises(FormatError, match=re.escape(what) + ".*expected a"):
            decode_ref(data, kind, what)
    with pytest.raises(FormatError, match="config.json.*expected a config"):
        decode_config(branch, "config.json")
    for damaged in [
        {"snapshot": None},
        {"snapshot": "XYZ"},
        {"snapshot": 5},
        {"snapshot_checksum": "zz"},
        {"write_id": None},
    ]:
        obj = {**json.loads(branch), **damaged}
        if damaged.get("write_id", "") is None:
            del obj["write_id"]
        with pytest.raises(FormatError, match=re.escape(what)):
            decode_ref(json.dumps(obj).encode(), common.BRANCH_REF, what)


# -- a property test of manifests -------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_REF = st.one_of(
    st.builds(lambda d: ChunkRef(ChunkKind.INLINE, data=d, length=len(d)), st.binary(max_size=40)),
    st.builds(
        lambda ln, cs: ChunkRef(ChunkKind.NATIVE, chunk_id=ChunkId.new(), length=ln, checksum=cs),
        st.integers(0, 2**40),
        st.integers(0, 2**64 - 1),
    ),
    st.builds(
        lambda loc, off, ln, etag, lm: ChunkRef(
            ChunkKind.VIRTUAL,
            location=loc,
            offset=off,
            length=ln,
            etag=etag,
            last_modified=None if lm is None else dt.datetime.fromtimestamp(lm, dt.UTC),
        ),
        _TEXT,
        st.integers(0, 2**50),
        st.integers(0, 2**30),
        st.none() | _TEXT,
        st.none() | st.integers(0, 2**33),
    ),
    st.just(ChunkRef(ChunkKind.DELETED)),
)


@st.composite
def manifests(draw):
    ndim = draw(st.integers(0, 4))
    hi = draw(st.sampled_from([3, 50, 2**20, 2**40]))
    coord = st.tuples(*[st.integers(0, hi)] * ndim)
    coords = sorted(draw(st.sets(coord, max_size=1 if ndim == 0 else 40)))
    refs = draw(st.lists(_REF, min_size=len(coords), max_size=len(coords)))
    probes = draw(st.lists(st.tuples(*[st.integers(-2, hi + 2)] * ndim), max_size=20))
    return ndim, coords, refs, probes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests())
def test_manifest_property_round_trip_and_find(case):
    ndim, coords, refs, probes = case
    mid, nid = ManifestId.new(), NodeId.new()
    c = np.array(coords, dtype=np.int64).reshape(len(coords), ndim)
    data = encode_manifest(mid, nid, c, refs)
    m = decode_manifest(data, "manifests/p", checksum(data))
    assert (m.manifest_id, m.node_id, len(m)) == (mid, nid, len(coords))
    assert m.coords.shape == (len(coords), ndim) and np.array_equal(m.coords, c)
    assert m.refs() == refs
    index = {xy: i for i, xy in enumerate(coords)}
    for xy, i in index.items():
        assert m.find(xy) == i
    for xy in probes:
        assert m.find(xy) == index.get(xy)


# -- the objects open in pyarrow and duckdb ---------------------------------------------------


def _duck(sql: str) -> list[tuple]:
    con = duckdb.connect()
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_snapshot_opens_in_pyarrow_and_duckdb(tmp_path):
    snap = make_snapshot()
    path = tmp_path / "snap"
    path.write_bytes(encode_snapshot(snap))
    t = pq.read_table(path)
    assert t.column_names[:5] == ["path", "node_id", "node_type", "zarr_json", "segments"]
    rows = t.to_pylist()
    nodes = sorted(snap.nodes, key=lambda n: n.path)
    assert [r["path"] for r in rows] == [n.path for n in nodes]
    assert [r["node_id"] for r in rows] == [str(n.node_id) for n in nodes]
    assert [r["zarr_json"].encode() for r in rows] == [n.zarr_json for n in nodes]
    temp = next(r for r in rows if r["path"] == "/g/temp")
    seg = temp["segments"][0]
    want = next(n for n in nodes if n.path == "/g/temp").segments[0]
    assert seg == {
        "manifest_id": str(want.manifest_id),
        "checksum": want.checksum,
        "size": want.size,
        "rows": want.rows,
        "extent_min": list(want.extent_min),
        "extent_max": list(want.extent_max),
        "row_offset": want.row_offset,
    }
    header = json.loads(t.schema.metadata[b"frazil"])
    assert header["object_type"] == "snapshot" and header["id"] == str(snap.id)
    assert header["message"] == snap.info.message

    p = str(path)
    got = _duck(
        f"SELECT path, node_type, len(segments), segments[1].checksum, "
        f"segments[1].extent_max FROM read_parquet('{p}') ORDER BY path"
    )
    assert got == [
        (
            n.path,
            n.node_type,
            len(n.segments),
            n.segments[0].checksum if n.segments else None,
            list(n.segments[0].extent_max) if n.segments else None,
        )
        for n in nodes
    ]
    (kv,) = _duck(
        f"SELECT decode(value) FROM parquet_kv_metadata('{p}') WHERE decode(key) = 'frazil'"
    )
    assert json.loads(kv[0])["parent_id"] == str(snap.info.parent_id)


def test_manifest_opens_in_pyarrow_and_duckdb(tmp_path):
    coords = [(0, 0), (0, 1), (1, 0), (2, 2), (3, 1), (9, 9)]
    data, c, refs = make_manifest(coords, 2)
    path = tmp_path / "manifest"
    path.write_bytes(data)
    rows = pq.read_table(path).to_pylist()
    assert [r["coord"] for r in rows] == c.tolist()
    assert [r["kind"] for r in rows] == [int(r.kind) for r in refs]
    for row, ref in zip(rows, refs, strict=True):
        if ref.kind == ChunkKind.INLINE:
            assert row["inline"] == ref.data and row["length"] == ref.length
        elif ref.kind == ChunkKind.NATIVE:
            assert row["chunk_id"] == str(ref.chunk_id) and row["checksum"] == ref.checksum
            assert row["length"] == ref.length and row["inline"] is None
        elif ref.kind == ChunkKind.VIRTUAL:
            assert (row["location"], row["offset"], row["length"], row["etag"]) == (
                ref.location,
                ref.offset,
                ref.length,
                ref.etag,
            )
            assert row["last_modified"] == ref.last_modified
        else:
            assert row["inline"] is None and row["chunk_id"] is None and row["location"] is None

    p = str(path)
    got = _duck(
        f"SELECT coord, kind, inline, chunk_id, checksum, location, etag, "
        f"\"offset\", length FROM read_parquet('{p}')"
    )
    assert [list(g[0]) for g in got] == c.tolist()
    assert [g[1] for g in got] == [int(r.kind) for r in refs]
    assert got[1][2:5] == (None, str(refs[1].chunk_id), 2**64 - 1)
    assert bytes(got[0][2]) == refs[0].data
    assert got[2][5:9] == (refs[2].location, refs[2].etag, 1 << 33, 4096)
    (hit,) = _duck(f"SELECT kind FROM read_parquet('{p}') WHERE coord = [2, 2]")
    assert hit == (int(refs[3].kind),)
    (lm,) = _duck(f"SELECT epoch(last_modified) FROM read_parquet('{p}') WHERE coord = [1, 0]")
    assert lm == (T0.timestamp(),)


def test_transaction_log_opens_in_pyarrow_and_duckdb(tmp_path):
    log = make_log()
    path = tmp_path / "txlog"
    path.write_bytes(encode_transaction_log(log))
    t = pq.read_table(path)
    assert t.column_names == ["change", "path", "node_id", "chunks"]
    rows = t.to_pylist()
    assert [(r["change"], r["path"], r["node_id"]) for r in rows] == [
        (c.change, c.path, str(c.node_id)) for c in log.changes
    ]
    assert [r["chunks"] for r in rows] == [
        None if c.chunks is None else c.chunks.tolist() for c in log.changes
    ]
    header = json.loads(t.schema.metadata[b"frazil"])
    assert header["id"] == str(log.snapshot_id) and header["parent_id"] == str(log.parent_id)

    got = _duck(f"SELECT change, path, chunks FROM read_parquet('{path}') WHERE chunks IS NOT NULL")
    want = [(c.change, c.path, c.chunks.tolist()) for c in log.changes if c.chunks is not None]
    assert [(g[0], g[1], [list(x) for x in g[2]]) for g in got] == want


def test_snapshot_checksums_are_checkable_with_pyarrow_and_xxhash():
    """What SPEC.md says: info_checksum is the xxh3-64 of json.dumps(sort_keys=True) of the
    header without format_version and info_checksum; nodes_checksum that of the node
    table's columns as Python lists."""
    import xxhash

    def xxh(obj) -> str:
        return format(xxhash.xxh3_64_intdigest(json.dumps(obj, sort_keys=True).encode()), "016x")

    data = encode_snapshot(make_snapshot())
    t = pq.read_table(pa.BufferReader(data))
    header = json.loads(t.schema.metadata[b"frazil"])
    body = {k: v for k, v in header.items() if k not in ("format_version", "info_checksum")}
    assert header["info_checksum"] == xxh(body)
    cols = ["path", "node_id", "node_type", "zarr_json", "segments"]
    assert header["nodes_checksum"] == xxh({c: t.column(c).to_pylist() for c in cols})
    assert checksum(data) == xxhash.xxh3_64_intdigest(data)


def test_schemas_are_the_documented_ones():
    assert snapshot_mod.SCHEMA.names == ["path", "node_id", "node_type", "zarr_json", "segments"]
    assert manifest_mod.SCHEMA.names == [
        "node_id",
        "coord",
        "kind",
        "inline",
        "chunk_id",
        "offset",
        "length",
        "checksum",
        "location",
        "etag",
        "last_modified",
        "block_size",
        "block_checksums",
    ]
    assert manifest_mod.OPTIONAL == ("block_size", "block_checksums")
    assert txlog.SCHEMA.names == ["change", "path", "node_id", "chunks"]
    assert [int(k) for k in ChunkKind] == [0, 1, 2, 3]
    assert [k.name for k in ChunkKind] == ["DELETED", "INLINE", "NATIVE", "VIRTUAL"]


def test_from_trusted_text_round_trips_and_rejects_garbage() -> None:
    from frazil.format import ChunkId, FormatError

    cid = ChunkId.new()
    assert ChunkId.from_trusted_text(str(cid)) == cid
    # the text it keeps (for keys) is the canonical one, whatever the case it was given
    assert str(ChunkId.from_trusted_text(str(cid).lower())) == str(cid)
    with pytest.raises(FormatError):
        ChunkId.from_trusted_text("!!not base32!!")


def test_id_text_matches_rfc4648_base32_in_crockford_letters() -> None:
    """The text form is RFC 4648 base32 (unpadded) with Crockford's alphabet, as SPEC.md says."""
    import base64
    import os

    from frazil.format import ChunkId, NodeId

    table = bytes.maketrans(
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    )
    for cls in (ChunkId, NodeId):
        for _ in range(500):
            raw = os.urandom(cls.SIZE)
            expected = base64.b32encode(raw).translate(table).rstrip(b"=").decode()
            assert str(cls(raw)) == expected
            assert cls.parse(expected) == cls(raw) == cls.from_trusted_text(expected)


def test_packed_manifest_holds_several_arrays_segments(tmp_path):
    from frazil.format.manifest import encode_manifest_parts, encode_manifest_rows, ref_rows

    pool = sample_refs()
    parts = []
    for ndim, cs in [
        (2, [(0, 1), (0, 4), (3, 0)]),
        (1, [(7,)]),
        (0, [()]),
        (3, [(0, 0, 0), (0, 0, 2), (1, 5, 0), (9, 9, 9)]),
    ]:
        coords = np.array(cs, np.int64).reshape(len(cs), ndim)
        refs = [pool[i % len(pool)] for i in range(len(coords))]
        parts.append((NodeId.new(), coords, ref_rows(refs), refs))
    mid = ManifestId.new()
    data = encode_manifest_parts(mid, [(nid, c, rows) for nid, c, rows, _ in parts])
    got = decode_manifest_parts(data, "manifests/p", checksum(data))
    offset = 0
    assert sorted(got) == list(got)
    for nid, coords, _, refs in parts:
        seg = got[offset]
        assert (seg.manifest_id, seg.node_id) == (mid, nid)
        assert seg.coords.tolist() == coords.tolist() and seg.refs() == refs
        for i, c in enumerate(coords.tolist()):
            assert seg.find(tuple(c)) == i
        offset += len(coords)
    with pytest.raises(FormatError, match="holds 4 segments"):
        decode_manifest(data, "manifests/p")
    # the same parts given as one table (as a commit packs them) encode to the same bytes
    one = pa.concat_tables([rows for _, _, rows, _ in parts])
    assert encode_manifest_rows(mid, [p[0] for p in parts], [p[1] for p in parts], one) == data
    with pytest.raises(ValueError, match="differ in length"):
        encode_manifest_rows(mid, [p[0] for p in parts], [p[1] for p in parts], one.slice(1))
    # one row per chunk ref with its array's node id: a query needs nothing but the file
    path = tmp_path / "packed"
    path.write_bytes(data)
    counts = dict(_duck(f"SELECT node_id, count(*) FROM read_parquet('{path}') GROUP BY 1"))
    assert counts == {str(nid): len(c) for nid, c, _, _ in parts}
    # a header whose parts do not cover the table, or disagree with the column, is refused
    h = header_of(data)
    for bad in (
        h["parts"][:-1],
        [*h["parts"][:-1], {**h["parts"][-1], "rows": 99}],
        [h["parts"][1], h["parts"][0], *h["parts"][2:]],
    ):
        with pytest.raises(FormatError, match="manifests/p"):
            decode_manifest_parts(
                common.encode_parquet(table_of(data), {**h, "parts": bad}), "manifests/p"
            )


# -- the lean decodes garbage collection uses ------------------------------------------------
def test_snapshot_segments_match_the_full_decode_and_check_themselves():
    snap = make_snapshot()
    data = encode_snapshot(snap)
    lean = decode_snapshot_segments(data, WHAT, checksum(data))
    full = decode_snapshot(data, WHAT)
    assert lean.info == full.info
    assert [[gc_fields(s) for s in segs] for segs in lean.lists] == [
        [gc_fields(s) for s in n.segments] for n in full.nodes if n.segments
    ]
    assert lean.history_segments == (full.history.segments if full.history else ())
    with pytest.raises(FormatError, match=re.escape(WHAT)):
        decode_snapshot_segments(data, WHAT, checksum(data) ^ 1)
    # without a checksum, every flipped bit is an error or gives the same lists
    for i in range(0, len(data), 7):
        try:
            got = decode_snapshot_segments(flip(data, i, 1 << (i % 8)), WHAT)
        except FormatError as e:
            assert WHAT in str(e)
        else:
            assert got.info == lean.info and got.lists == lean.lists, i


def gc_fields(s: SegmentRef) -> tuple:
    """What the ``segment_refs`` column records of a segment (no extents, no filter)."""
    return (s.manifest_id, s.checksum, s.size, s.rows, s.row_offset)


def test_segment_refs_column_is_the_bytes_spec_md_gives():
    """SPEC §4.1: per node, 44-byte records (raw id, then checksum, size, rows, row_offset
    little-endian), null where a node has none; its checksum frames each row's length."""
    snap = make_snapshot()
    data = encode_snapshot(snap)
    t, header = table_of(data), header_of(data)
    i = t.schema.get_field_index("segment_refs")
    assert t.schema.names[i - 1] == "segment_filters" and t.schema.field(i).type == pa.binary()
    nodes = sorted(snap.nodes, key=lambda n: n.path)
    want = [
        b"".join(
            s.manifest_id.raw + struct.pack("<Qqqq", s.checksum, s.size, s.rows, s.row_offset)
            for s in n.segments
        )
        or None
        for n in nodes
    ]
    assert t.column("segment_refs").to_pylist() == want
    assert None in want and any(want)
    lengths = b"".join(struct.pack("<q", -1 if w is None else len(w)) for w in want)
    digest = checksum(lengths + b"".join(w or b"" for w in want))
    assert header["segment_refs_checksum"] == f"{digest:016x}"


def snapshot_with_inline_rows() -> tuple[Snapshot, bytes, bytes]:
    """``make_snapshot`` whose "/scalar" segment (1 row, 0-D, native) and a 2-row 2-D
    segment (inline chunks) of "/g/temp" carry copies of their rows."""
    snap = make_snapshot()
    cid = str(ChunkId.new())
    scalar_rows = snapshot_mod.inline_rows(np.zeros((1, 0), np.int64), [2], [cid])
    temp_rows = snapshot_mod.inline_rows(np.array([[0, 0], [4, 9]]), [1, 0], [None, None])
    nodes = []
    for n in snap.nodes:
        if n.path == "/scalar":
            n = dataclasses.replace(
                n, segments=(dataclasses.replace(n.segments[0], inline=scalar_rows),)
            )
        elif n.path == "/g/temp":
            small = SegmentRef(ManifestId.new(), 9, 77, 2, (0, 0), (4, 9), 0, None, temp_rows)
            n = dataclasses.replace(n, segments=(small, *n.segments))
        nodes.append(n)
    return Snapshot(snap.info, tuple(nodes)), scalar_rows, temp_rows


def test_segment_rows_column_is_the_bytes_spec_md_gives():
    """SPEC §4.1: per segment, ndim, then coordinates (int64 LE), kinds, native chunk ids;
    null where a segment carries none, a null row where no segment of the node does; the
    checksum frames each row's count and each value's length (SPEC §3)."""
    snap, scalar_rows, temp_rows = snapshot_with_inline_rows()
    cid = scalar_rows[-20:].decode()
    assert scalar_rows == bytes([0]) + bytes([2]) + cid.encode()
    assert temp_rows == (bytes([2]) + struct.pack("<4q", 0, 0, 4, 9) + bytes([1, 0]))
    data = encode_snapshot(snap)
    t, header = table_of(data), header_of(data)
    assert t.schema.names[-1] == "segment_rows"
    assert t.schema.field(-1).type == pa.list_(pa.binary())
    by_path = dict(zip(t.column("path").to_pylist(), t.column("segment_rows").to_pylist()))
    assert by_path == {
        "/": None,
        "/empty": None,
        "/g": None,
        "/g/temp": [temp_rows, None, None],
        "/scalar": [scalar_rows],
    }
    sizes, blobs = [], b""
    for row in t.column("segment_rows").to_pylist():
        sizes.append(-1 if row is None else len(row))
        for v in row or ():
            sizes.append(-1 if v is None else len(v))
            blobs += v or b""
    digest = checksum(struct.pack(f"<{len(sizes)}q", *sizes) + blobs)
    assert header["segment_rows_checksum"] == f"{digest:016x}"
    # both readers give the copies back, as they were made
    back = {n.path: [s.inline for s in n.segments] for n in decode_snapshot(data).nodes}
    assert back["/g/temp"] == [temp_rows, None, None] and back["/scalar"] == [scalar_rows]
    lean = snapshot_mod.decode_snapshot_segments(data)
    assert sorted(tuple(s.inline for s in segs) for segs in lean.lists) == sorted(
        [(temp_rows, None, None), (scalar_rows,)], key=repr
    )
    coords, kinds, ids = snapshot_mod.decode_inline_rows(temp_rows, 2, "x")
    assert coords.tolist() == [[0, 0], [4, 9]] and kinds.tolist() == [1, 0] and ids == [None, None]
    assert snapshot_mod.decode_inline_rows(scalar_rows, 1, "x")[2] == [cid]


def test_segment_rows_are_checked():
    """A damaged copy (the column resealed so only the check under test fails) or a column
    without its checksum is refused by both readers; a copy that does not fit its segment
    is refused when it is used."""
    snap, scalar_rows, _ = snapshot_with_inline_rows()
    data = encode_snapshot(snap)
    t, header = table_of(data), header_of(data)
    i = t.schema.get_field_index("segment_rows")
    rows = t.column("segment_rows").to_pylist()
    k = next(j for j, r in enumerate(rows) if r and r[0] == scalar_rows)
    flipped = [*rows[:k], [flip(scalar_rows, 1)], *rows[k + 1 :]]
    v = t.set_column(i, "segment_rows", pa.array(flipped, pa.list_(pa.binary())))
    body = {k2: x for k2, x in header.items() if k2 not in ("format_version", "info_checksum")}
    sealed = {**header, "info_checksum": common.json_checksum(body)}
    for read in (decode_snapshot, snapshot_mod.decode_snapshot_segments):
        with pytest.raises(FormatError, match=re.escape(WHAT) + ".*damaged inline segment rows"):
            read(common.encode_parquet(v, sealed), WHAT)
    no_sum = {k2: x for k2, x in header.items() if k2 != "segment_rows_checksum"}
    body = {k2: x for k2, x in no_sum.items() if k2 not in ("format_version", "info_checksum")}
    no_sum["info_checksum"] = common.json_checksum(body)
    for read in (decode_snapshot, snapshot_mod.decode_snapshot_segments):
        with pytest.raises(FormatError, match=re.escape(WHAT) + ".*damaged inline segment rows"):
            read(common.encode_parquet(t, no_sum), WHAT)
    for bad, n in ((scalar_rows[:-1], 1), (scalar_rows, 2), (b"", 1), (scalar_rows + b"x", 1)):
        with pytest.raises(FormatError, match="damaged inline segment rows"):
            snapshot_mod.decode_inline_rows(bad, n, "x")
    with pytest.raises(FormatError, match="damaged inline segment rows"):
        snapshot_mod.decode_inline_rows(bytes([0, 7]), 1, "x")  # kind 7


def test_segment_rows_stay_within_the_budget():
    """Copies beyond INLINE_BUDGET bytes per snapshot are left out (null), in node order."""
    snap = make_snapshot(nodes=False)
    one = snapshot_mod.inline_rows(np.zeros((8, 4), np.int64), [0] * 8, [None] * 8)
    per_node = 8
    nodes = []
    n_nodes = snapshot_mod.INLINE_BUDGET // (len(one) * per_node) + 2
    for j in range(n_nodes):
        segs = tuple(
            SegmentRef(ManifestId.new(), 1, 2, 8, (0,) * 4, (9,) * 4, 0, None, one)
            for _ in range(per_node)
        )
        nodes.append(NodeRecord(f"/a{j:04d}", NodeId.new(), ARRAY, b"{}", segs))
    data = encode_snapshot(Snapshot(snap.info, tuple(nodes)))
    rows = table_of(data).column("segment_rows").to_pylist()
    kept = sum(1 for row in rows for v in row or () if v is not None)
    assert kept == snapshot_mod.INLINE_BUDGET // len(one)
    assert rows[0] == [one] * per_node and rows[-1] is None


def test_segment_refs_must_agree_with_the_node_table():
    """A column that lists other segments than the node table (resealed, so it checks
    itself) is damage for every full reader; the lean read checks the column's checksum."""
    data = encode_snapshot(make_snapshot())
    t, header = table_of(data), header_of(data)
    i = t.schema.get_field_index("segment_refs")
    rows = t.column("segment_refs").to_pylist()
    k = next(j for j, r in enumerate(rows) if r)
    bad = rows[k][:20] + bytes([rows[k][20] ^ 1]) + rows[k][21:]  # one size byte
    for variant in ([*rows[:k], bad, *rows[k + 1 :]], [*rows[:k], None, *rows[k + 1 :]]):
        v = t.set_column(i, "segment_refs", pa.array(variant, pa.binary()))
        lengths = b"".join(struct.pack("<q", -1 if r is None else len(r)) for r in variant)
        digest = checksum(lengths + b"".join(r or b"" for r in variant))
        sealed = resealed_snapshot_header(v, {**header, "segment_refs_checksum": f"{digest:016x}"})
        with pytest.raises(FormatError, match=re.escape(WHAT) + ".*damaged segment refs"):
            decode_snapshot(common.encode_parquet(v, sealed), WHAT)
        # unsealed: the lean read refuses the column itself
        with pytest.raises(FormatError, match=re.escape(WHAT) + ".*damaged segment refs"):
            decode_snapshot_segments(common.encode_parquet(v, header), WHAT)
    # a header that names the column's checksum without the column, or the reverse
    for v, h in ((t.drop_columns(["segment_refs"]), header), (t, dict(header))):
        if v is t:
            del h["segment_refs_checksum"]
        sealed = resealed_snapshot_header(v, h)
        for decode in (decode_snapshot, decode_snapshot_segments):
            with pytest.raises(FormatError, match=re.escape(WHAT)):
                decode(common.encode_parquet(v, sealed), WHAT)


def test_snapshots_without_segment_refs_are_read_whole():
    """Snapshots written before the column (as the format-v1 fixture's) give the lean
    reader the node table's segment lists, extents and filters included."""
    snap = make_snapshot()
    data = encode_snapshot(snap)
    t, header = table_of(data), header_of(data)
    del header["segment_refs_checksum"]
    old = common.encode_parquet(
        t.drop_columns(["segment_refs"]), resealed_snapshot_header(t, header)
    )
    lean = decode_snapshot_segments(old, WHAT)
    assert lean.lists == tuple(n.segments for n in decode_snapshot(old, WHAT).nodes if n.segments)
    assert decode_snapshot(old, WHAT).nodes == decode_snapshot(data, WHAT).nodes


def test_manifest_chunk_ids_match_the_full_decode_and_need_the_checksum():
    coords = [(0, 0), (0, 1), (2, 3), (4, 4), (5, 1), (9, 9)]
    data, c, refs = make_manifest(coords, 2)
    rows = decode_manifest_chunk_ids(data, WHAT, checksum(data))
    assert list(rows) == [0]
    assert np.array_equal(rows[0].coords, c)
    assert rows[0].kinds.tolist() == [int(r.kind) for r in refs]
    assert rows[0].chunk_ids.to_pylist() == [
        None if r.chunk_id is None else str(r.chunk_id) for r in refs
    ]
    for i in range(0, len(data), 5):  # any flipped bit: the checksum says so, naming it
        with pytest.raises(FormatError, match=re.escape(WHAT)):
            decode_manifest_chunk_ids(flip(data, i, 1 << (i % 8)), WHAT, checksum(data))


def test_manifest_writes_unique_columns_plain_and_others_with_dictionaries() -> None:
    """Ids and hashes (unique per row) are written PLAIN, other columns with a dictionary
    (SPEC §4.2); both read back the same refs."""
    import io
    import os

    import pyarrow.parquet as pq

    from frazil.format import ChunkId, ManifestId, NodeId
    from frazil.format.manifest import (
        UNIQUE_COLUMNS,
        decode_manifest,
        encode_manifest_table,
        ref_rows,
    )

    refs = [
        ChunkRef(
            ChunkKind.NATIVE,
            chunk_id=ChunkId.new(),
            length=100 + i,
            checksum=int.from_bytes(os.urandom(8), "little"),
            block_size=32768,
            blocks=os.urandom(16),
        )
        for i in range(50)
    ]
    coords = np.stack([np.arange(50), np.zeros(50, np.int64)], axis=1)
    data = encode_manifest_table(ManifestId.new(), NodeId.new(), coords, ref_rows(refs))
    group = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0)
    encodings = {
        group.column(i).path_in_schema.split(".")[0]: group.column(i).encodings
        for i in range(group.num_columns)
    }
    for name in UNIQUE_COLUMNS:
        assert not any("DICTIONARY" in e for e in encodings[name]), name
    assert any("DICTIONARY" in e for e in encodings["location"])
    m = decode_manifest(data, "manifest")
    assert [m.ref(i) for i in range(len(m))] == refs
