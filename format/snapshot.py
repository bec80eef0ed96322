"""Snapshots: the node table of one committed version, with its commit info.

A snapshot is a Parquet file with one row per node (group or array), sorted by path.
Each array row lists its manifest segments newest first, with the coordinate extents
each segment covers and, in a column after them, each small segment's membership filter.
The commit info (id, parent, time, message, metadata) lives in the
file's header so that history can be read from the footer alone.
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import pyarrow as pa

from .common import (
    SNAPSHOT,
    FormatError,
    check_header,
    check_schema,
    checksum,
    checksum_hex,
    decode_parquet,
    decode_parquet_header,
    encode_parquet,
    json_checksum,
    open_parquet,
    read_parquet_columns,
)
from .filters import check_filter, coord_hash, may_contain
from .ids import HistoryId, ManifestId, NodeId, SnapshotId
from .manifest import ChunkKind


class NodeType(StrEnum):
    """What a node is (the ``node_type`` column's values)."""

    GROUP = "group"
    ARRAY = "array"


GROUP = NodeType.GROUP
ARRAY = NodeType.ARRAY

_SEGMENT_TYPE = pa.struct(
    [
        ("manifest_id", pa.string()),
        ("checksum", pa.uint64()),
        ("size", pa.int64()),
        ("rows", pa.int64()),
        ("extent_min", pa.list_(pa.int64())),
        ("extent_max", pa.list_(pa.int64())),
        ("row_offset", pa.int64()),
    ]
)
SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("node_id", pa.string()),
        ("node_type", pa.string()),
        ("zarr_json", pa.string()),
        ("segments", pa.list_(_SEGMENT_TYPE)),
    ]
)
FILTERS_COLUMN = "segment_filters"
FILTERS_TYPE = pa.list_(pa.binary())
"""Per node, the filter of each of its segments (null where a segment has none), or null
when none has one; added after the columns of ``SCHEMA``, so older readers ignore it."""
REFS_COLUMN = "segment_refs"
REFS_SCHEMA = pa.schema([(REFS_COLUMN, pa.binary())])
"""Per node, its segments as fixed-size binary records (``REF_RECORD``, in the order of
``segments``; null where it has none), after ``FILTERS_COLUMN``: what garbage collection
reads instead of the node table (SPEC §4.1)."""
REF_RECORD = struct.Struct("<12sQqqq")
"""One segment in ``REFS_COLUMN``: the manifest id's bytes, checksum, size, rows and row
offset (44 bytes, little-endian)."""
RefRecord = tuple[bytes, int, int, int, int]
ROWS_COLUMN = "segment_rows"
ROWS_TYPE = pa.list_(pa.binary())
"""Per node, a copy of each small segment's rows (``inline_rows``; null where a segment has
none), or null when none has one; after ``REFS_COLUMN`` (SPEC §4.1)."""
INLINE_MAX_ROWS = 8  # segments of at most this many rows get a copy of their rows
INLINE_BUDGET = 64 * 1024  # at most this many bytes of such copies per snapshot
_CHUNK_ID_TEXT = 20  # characters of a chunk id's text form


def inline_rows(coords: Any, kinds: Any, chunk_ids: list[str | None]) -> bytes:
    """The ``segment_rows`` value of a segment (SPEC §4.1): its number of dimensions (one
    byte), its coordinates (n x ndim int64, little-endian, row-major, in row order), each
    row's kind (one byte), then the chunk id text (20 ASCII bytes) of each native row."""
    c = np.ascontiguousarray(coords, dtype="<i8")
    k = np.asarray(kinds, dtype=np.uint8)
    if c.ndim != 2 or len(c) != len(k) or len(chunk_ids) != len(k) or c.shape[1] > 255:
        raise FormatError("inline rows: coordinates, kinds and chunk ids do not match")
    ids: list[str] = []
    for cid, kind in zip(chunk_ids, k.tolist()):
        if kind == ChunkKind.NATIVE:
            if cid is None or len(cid) != _CHUNK_ID_TEXT or not cid.isascii():
                raise FormatError("inline rows: a native row without a chunk id")
            ids.append(cid)
    return bytes([c.shape[1]]) + c.tobytes() + k.tobytes() + "".join(ids).encode("ascii")


def decode_inline_rows(data: bytes, rows: int, what: str) -> tuple[Any, Any, list[str | None]]:
    """``inline_rows`` read back for a segment of ``rows`` rows: (coords n x ndim int64,
    kinds uint8, chunk id text or None per row); ``FormatError`` if it does not fit."""
    if not data or rows < 1:
        raise FormatError(f"{what}: damaged inline segment rows (empty)")
    ndim = data[0]
    body = 1 + rows * 8 * ndim
    if len(data) < body + rows:
        raise FormatError(f"{what}: damaged inline segment rows (too short)")
    coords = np.frombuffer(data, "<i8", rows * ndim, 1).reshape(rows, ndim)
    kinds = np.frombuffer(data, np.uint8, rows, body)
    native = kinds == int(ChunkKind.NATIVE)
    n = int(native.sum())
    if len(data) != body + rows + n * _CHUNK_ID_TEXT or int(kinds.max()) > 3:
        raise FormatError(f"{what}: damaged inline segment rows (length or kinds)")
    text = data[body + rows :].decode("ascii", errors="replace")
    it = iter(text[i : i + _CHUNK_ID_TEXT] for i in range(0, len(text), _CHUNK_ID_TEXT))
    ids: list[str | None] = [next(it) if nat else None for nat in native.tolist()]
    return coords, kinds, ids


def _rows_column(lists: list[tuple[SegmentRef, ...]]) -> list[list[bytes | None] | None]:
    """The ``segment_rows`` values of nodes with segment ``lists``: each small segment's
    copy while the snapshot's budget (``INLINE_BUDGET``) lasts, in node order."""
    budget = INLINE_BUDGET
    out: list[list[bytes | None] | None] = []
    for segs in lists:
        row: list[bytes | None] = []
        for seg in segs:
            value = seg.inline if seg.rows <= INLINE_MAX_ROWS else None
            if value is not None and len(value) <= budget:
                budget -= len(value)
                row.append(value)
            else:
                row.append(None)
        out.append(row if any(v is not None for v in row) else None)
    return out


def _rows_checksum(rows: list[list[bytes | None] | None]) -> str:
    """The self-check of the ``segment_rows`` column (SPEC §3): xxh3-64 of, per node, its
    count of values (int64 little-endian, -1 where null), then per value its length
    (int64, -1 where null), then every value's bytes, in order."""
    sizes: list[int] = []
    blobs: list[bytes] = []
    for row in rows:
        sizes.append(-1 if row is None else len(row))
        for v in row or ():
            sizes.append(-1 if v is None else len(v))
            if v:
                blobs.append(v)
    return checksum_hex(checksum(struct.pack(f"<{len(sizes)}q", *sizes) + b"".join(blobs)))


def _decoded_rows(
    table: pa.Table, header: dict[str, Any], counts: list[int], what: str
) -> list[list[bytes | None] | None]:
    """The ``segment_rows`` column checked against its checksum and the segment counts
    (all None where the snapshot has no such column)."""
    if ROWS_COLUMN not in table.schema.names and "segment_rows_checksum" not in header:
        return [None] * len(counts)
    try:
        col = table.column(ROWS_COLUMN)
        if not col.type.equals(ROWS_TYPE):
            raise FormatError(f"column {ROWS_COLUMN!r} has type {col.type}")
        rows = col.to_pylist()
        if header.get("segment_rows_checksum") != _rows_checksum(rows):
            raise FormatError("checksum mismatch")
        if len(rows) != len(counts):
            raise FormatError("not one value per node")
        for row, n in zip(rows, counts):
            if row is not None and len(row) != n:
                raise FormatError("not one value per segment")
    except (pa.ArrowException, ValueError, TypeError, KeyError, struct.error, FormatError) as e:
        raise FormatError(f"{what}: damaged inline segment rows ({e})") from e
    return rows


@dataclass(frozen=True, slots=True)
class SegmentRef:
    """Where one manifest segment of an array is, how to verify it, what it covers."""

    manifest_id: ManifestId
    checksum: int
    size: int
    rows: int
    extent_min: tuple[int, ...]
    extent_max: tuple[int, ...]
    row_offset: int = 0  # where the segment starts in its manifest object
    filter: bytes | None = None  # which coordinates it may hold (``filters``); None: any
    inline: bytes | None = field(default=None, compare=False)
    """a copy of a small segment's coordinates, kinds and chunk ids (``inline_rows``), for
    readers of many snapshots' segments (garbage collection); None: read the manifest"""

    def covers(self, coord: tuple[int, ...]) -> bool:
        return all(lo <= c <= hi for lo, c, hi in zip(self.extent_min, coord, self.extent_max))

    def may_hold(self, coord: tuple[int, ...], h: int | None = None) -> bool:
        """Whether the segment may hold ``coord``: inside its extents and admitted by its
        filter (``h``: ``filters.coord_hash(coord)``, if the caller has it)."""
        if not self.covers(coord):
            return False
        if self.filter is None:
            return True
        return may_contain(self.filter, coord_hash(coord) if h is None else h)


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """One group or array: its path, stable id, zarr.json document and, for arrays,
    its manifest segments newest first."""

    path: str
    node_id: NodeId
    node_type: str
    zarr_json: bytes
    segments: tuple[SegmentRef, ...] = ()


@dataclass(frozen=True, slots=True)
class CommitInfo:
    """What history shows of a snapshot; readable from the Parquet footer alone."""

    snapshot_id: SnapshotId
    parent_id: SnapshotId | None
    written_at: dt.datetime
    message: str
    metadata: dict[str, Any] = field(default_factory=dict)
    transaction_log_checksum: int | None = None


MAX_PENDING = 256
MAX_SEGMENTS = 4096


@dataclass(frozen=True, slots=True)
class HistorySegmentRef:
    """Where a history segment is, how to verify it, and how many commits it holds."""

    history_id: HistoryId
    checksum: int
    size: int
    rows: int


@dataclass(frozen=True, slots=True)
class HistoryIndex:
    """A snapshot's ancestors: ``pending`` ids (parent first), then ``segments``."""

    pending: tuple[SnapshotId, ...]
    segments: tuple[HistorySegmentRef, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "pending": [str(s) for s in self.pending],
            "segments": [
                {
                    "id": str(s.history_id),
                    "checksum": f"{s.checksum:016x}",
                    "size": s.size,
                    "rows": s.rows,
                }
                for s in self.segments
            ],
        }

    @classmethod
    def from_json(cls, value: object, what: str, *, pending: bool = True) -> HistoryIndex:
        """The index a snapshot's header holds; ``pending=False`` leaves the pending ids out
        (unparsed: for readers that need only the segments)."""
        try:
            if not isinstance(value, dict):
                raise TypeError("not an object")
            ids, segments = value["pending"], value["segments"]
            if not isinstance(ids, list) or not isinstance(segments, list):
                raise TypeError("pending and segments must be lists")
            if len(ids) > MAX_PENDING or len(segments) > MAX_SEGMENTS:
                raise ValueError("too many entries")
            refs = []
            for s in segments:
                rows, size = s["rows"], s["size"]
                if not all(isinstance(v, int) and not isinstance(v, bool) for v in (rows, size)):
                    raise TypeError("rows and size must be ints")
                if rows < 1 or size < 0:
                    raise ValueError("rows must be positive and size not negative")
                refs.append(
                    HistorySegmentRef(HistoryId.parse(s["id"]), int(s["checksum"], 16), size, rows)
                )
            return cls(tuple(SnapshotId.parse_many(ids)) if pending else (), tuple(refs))
        except (KeyError, TypeError, ValueError, FormatError) as e:
            raise FormatError(f"{what}: damaged history index ({e!r})") from e


@dataclass(frozen=True, slots=True)
class Snapshot:
    info: CommitInfo
    nodes: tuple[NodeRecord, ...]
    history: HistoryIndex | None = None  # absent in snapshots written before the index

    @property
    def id(self) -> SnapshotId:
        return self.info.snapshot_id


def _info_header(
    info: CommitInfo,
    nodes_checksum: str | None = None,
    history: HistoryIndex | None = None,
    filters_checksum: str | None = None,
    refs_checksum: str | None = None,
    rows_checksum: str | None = None,
) -> dict[str, Any]:
    header: dict[str, Any] = {
        "object_type": SNAPSHOT,
        "id": str(info.snapshot_id),
        "parent_id": str(info.parent_id) if info.parent_id else None,
        "written_at": info.written_at.astimezone(dt.UTC).isoformat(),
        "message": info.message,
        "metadata": info.metadata,
        "transaction_log_checksum": (
            None
            if info.transaction_log_checksum is None
            else f"{info.transaction_log_checksum:016x}"
        ),
    }
    if nodes_checksum is not None:
        header["nodes_checksum"] = nodes_checksum
    if history is not None:
        header["history"] = history.to_json()
    if filters_checksum is not None:
        header["filters_checksum"] = filters_checksum
    if refs_checksum is not None:
        header["segment_refs_checksum"] = refs_checksum
    if rows_checksum is not None:
        header["segment_rows_checksum"] = rows_checksum
    header["info_checksum"] = json_checksum(header)
    return header


def _node_columns(table: pa.Table) -> dict[str, list[Any]]:
    """The node table as Python values; ``nodes_checksum`` is the ``json_checksum`` of this.

    Snapshots are also read without a referrer's checksum (a parent, an id given by a
    user), and Parquet's page CRCs do not cover its footer (row counts, column offsets), so
    the node table checks itself."""
    return {name: table.column(name).to_pylist() for name in SCHEMA.names}


def _info_from_header(header: dict[str, Any], what: str) -> CommitInfo:
    claimed = header.get("info_checksum")
    body = {k: v for k, v in header.items() if k not in ("info_checksum", "format_version")}
    if claimed != json_checksum(body):
        raise FormatError(f"{what}: damaged commit info (checksum mismatch)")
    try:
        tlc = header["transaction_log_checksum"]
        return CommitInfo(
            snapshot_id=SnapshotId.parse(header["id"]),
            parent_id=SnapshotId.parse(header["parent_id"]) if header["parent_id"] else None,
            written_at=dt.datetime.fromisoformat(header["written_at"]),
            message=header["message"],
            metadata=header["metadata"],
            transaction_log_checksum=int(tlc, 16) if tlc else None,
        )
    except (KeyError, TypeError, ValueError, FormatError) as e:
        raise FormatError(f"{what}: damaged commit info ({e!r})") from e


def encode_snapshot(snapshot: Snapshot) -> bytes:
    nodes = sorted(snapshot.nodes, key=lambda n: n.path)
    table = pa.table(
        {
            "path": [n.path for n in nodes],
            "node_id": [str(n.node_id) for n in nodes],
            "node_type": [n.node_type for n in nodes],
            "zarr_json": [n.zarr_json.decode("utf-8") for n in nodes],
            "segments": [
                [
                    {
                        "manifest_id": str(s.manifest_id),
                        "checksum": s.checksum,
                        "size": s.size,
                        "rows": s.rows,
                        "extent_min": list(s.extent_min),
                        "extent_max": list(s.extent_max),
                        "row_offset": s.row_offset,
                    }
                    for s in n.segments
                ]
                for n in nodes
            ],
        },
        schema=SCHEMA,
    )
    nodes_checksum = json_checksum(_node_columns(table))
    filters = [
        [s.filter for s in n.segments] if any(s.filter for s in n.segments) else None for n in nodes
    ]
    table = table.append_column(
        pa.field(FILTERS_COLUMN, FILTERS_TYPE), pa.array(filters, FILTERS_TYPE)
    )
    refs = _refs_column([n.segments for n in nodes])
    table = table.append_column(REFS_SCHEMA.field(0), refs)
    inline = _rows_column([n.segments for n in nodes])
    table = table.append_column(pa.field(ROWS_COLUMN, ROWS_TYPE), pa.array(inline, ROWS_TYPE))
    header = _info_header(
        snapshot.info,
        nodes_checksum,
        snapshot.history,
        _filters_checksum(filters),
        _refs_checksum(refs.to_pylist()),
        _rows_checksum(inline),
    )
    return encode_parquet(table, header, no_statistics=(REFS_COLUMN, ROWS_COLUMN))


def _refs_column(lists: list[tuple[SegmentRef, ...]]) -> pa.Array:
    """The ``segment_refs`` column of nodes with segment ``lists``."""
    pack = REF_RECORD.pack
    rows = [
        b"".join(pack(s.manifest_id.raw, s.checksum, s.size, s.rows, s.row_offset) for s in segs)
        or None
        for segs in lists
    ]
    return pa.array(rows, pa.binary())


def _refs_checksum(rows: list[bytes | None]) -> str:
    """The self-check of the ``segment_refs`` column (SPEC §3): xxh3-64 of each row's
    length in bytes (int64 little-endian, -1 where null), then every row's bytes."""
    lengths = struct.pack(f"<{len(rows)}q", *(-1 if r is None else len(r) for r in rows))
    return checksum_hex(checksum(lengths + b"".join(r for r in rows if r)))


def _decoded_refs(table: pa.Table, header: dict[str, Any], what: str) -> list[list[RefRecord]]:
    """The ``segment_refs`` column checked against its checksum: per node the records of
    its segments (none where null)."""
    try:
        col = table.column(REFS_COLUMN)
        if not col.type.equals(pa.binary()):
            raise FormatError(f"column {REFS_COLUMN!r} has type {col.type}")
        rows = col.to_pylist()
        if header.get("segment_refs_checksum") != _refs_checksum(rows):
            raise FormatError("checksum mismatch")
        out = []
        for row in rows:
            if row and len(row) % REF_RECORD.size:
                raise FormatError(f"a row is not a whole number of {REF_RECORD.size}-byte records")
            recs = list(REF_RECORD.iter_unpack(row)) if row else []
            if recs and min(min(r[2], r[3], r[4]) for r in recs) < 0:
                raise FormatError("a negative size, row count or row offset")
            out.append(recs)
    except (pa.ArrowException, ValueError, TypeError, KeyError, struct.error, FormatError) as e:
        raise FormatError(f"{what}: damaged segment refs ({e})") from e
    return out


def _filters_checksum(filters: list[list[bytes | None] | None]) -> str:
    """The self-check of the filter column (SPEC §3): a damaged filter could hide a chunk."""
    hexed = [
        None if row is None else [None if f is None else f.hex() for f in row] for row in filters
    ]
    return json_checksum(hexed)


def _decode_filters(
    table: pa.Table, header: dict[str, Any], counts: list[int], what: str
) -> list[list[bytes | None] | None]:
    """The filter column checked against its checksum and the segment lists (all None
    when the snapshot has no such column: written before filters, or by another writer)."""
    if FILTERS_COLUMN not in table.schema.names:
        return [None] * len(counts)
    try:
        col = table.column(FILTERS_COLUMN)
        if not col.type.equals(FILTERS_TYPE):
            raise FormatError(f"column {FILTERS_COLUMN!r} has type {col.type}")
        filters = col.to_pylist()
        if header.get("filters_checksum") != _filters_checksum(filters):
            raise FormatError("checksum mismatch")
        for row, n in zip(filters, counts):
            if row is not None:
                if len(row) != n:
                    raise FormatError("not one filter per segment")
                for f in row:
                    if f is not None:
                        check_filter(f, what)
    except (pa.ArrowException, ValueError, TypeError, FormatError) as e:
        raise FormatError(f"{what}: damaged segment filters ({e})") from e
    return filters


def _verified_node_table(
    data: bytes, what: str, expected_checksum: int | None
) -> tuple[
    CommitInfo,
    dict[str, Any],
    dict[str, list[Any]],
    list[list[bytes | None] | None],
    list[list[bytes | None] | None],
]:
    """Commit info, header, node columns (Python values), segment filters and inline
    segment rows of a snapshot, verified: the whole-object checksum if one is given, the
    commit info's, the node table's and the filters' and rows' own."""
    table, header = decode_parquet(data, SNAPSHOT, what, expected_checksum, SCHEMA)
    info = _info_from_header(header, what)
    if table.schema.names[: len(SCHEMA.names)] != SCHEMA.names:
        raise FormatError(f"{what}: unexpected columns {table.schema.names}")
    try:
        cols = _node_columns(table)
    except (pa.ArrowException, ValueError) as e:
        raise FormatError(f"{what}: damaged node table ({e!r})") from e
    claimed = header.get("nodes_checksum")
    if claimed is not None and claimed != json_checksum(cols):
        raise FormatError(f"{what}: damaged node table (checksum mismatch)")
    counts = [len(segs or ()) for segs in cols["segments"]]
    filters = _decode_filters(table, header, counts, what)
    _check_refs(table, header, cols["segments"], what)
    inline = _decoded_rows(table, header, counts, what)
    return info, header, cols, filters, inline


def _check_refs(table: pa.Table, header: dict[str, Any], segments: list[Any], what: str) -> None:
    """The ``segment_refs`` column, where the snapshot has one (with its checksum, or
    neither), lists exactly the segments of the node table: readers that read only it
    (garbage collection) then see what every other reader sees."""
    if REFS_COLUMN not in table.schema.names and "segment_refs_checksum" not in header:
        return
    found = _decoded_refs(table, header, what)
    try:
        if [len(r) for r in found] != [len(segs or ()) for segs in segments]:
            raise FormatError("not the segment counts of the node table")
        flat = [seg for segs in segments for seg in segs or ()]
        ids = ManifestId.parse_many([seg["manifest_id"] for seg in flat])
        want = [
            (m.raw, seg["checksum"], seg["size"], seg["rows"], seg["row_offset"])
            for m, seg in zip(ids, flat)
        ]
        if [r for recs in found for r in recs] != want:
            raise FormatError("not the segments of the node table")
    except (TypeError, KeyError, ValueError, FormatError) as e:
        raise FormatError(f"{what}: damaged segment refs ({e})") from e


def _segment_refs(segs: Any, filters: Any = None, inline: Any = None) -> tuple[SegmentRef, ...]:
    return tuple(
        SegmentRef(
            manifest_id=ManifestId.parse(s["manifest_id"]),
            checksum=s["checksum"],
            size=s["size"],
            rows=s["rows"],
            extent_min=tuple(s["extent_min"]),
            extent_max=tuple(s["extent_max"]),
            row_offset=s["row_offset"],
            filter=None if filters is None else filters[i],
            inline=None if inline is None else inline[i],
        )
        for i, s in enumerate(segs or ())
    )


def decode_snapshot(
    data: bytes, what: str = "snapshot", expected_checksum: int | None = None
) -> Snapshot:
    info, header, cols, filters, inline = _verified_node_table(data, what, expected_checksum)
    try:
        nodes = tuple(
            NodeRecord(
                path=path,
                node_id=NodeId.parse(nid),
                node_type=ntype,
                zarr_json=zj.encode("utf-8"),
                segments=_segment_refs(segs, fs, rows),
            )
            for path, nid, ntype, zj, segs, fs, rows in zip(
                cols["path"],
                cols["node_id"],
                cols["node_type"],
                cols["zarr_json"],
                cols["segments"],
                filters,
                inline,
            )
        )
    except (TypeError, AttributeError, KeyError, ValueError, FormatError) as e:
        raise FormatError(f"{what}: damaged node table ({e!r})") from e
    for n in nodes:
        if n.node_type not in (GROUP, ARRAY):
            raise FormatError(f"{what}: node {n.path!r} has unknown type {n.node_type!r}")
    return Snapshot(info=info, nodes=nodes, history=_history_from_header(header, what))


@dataclass(frozen=True, slots=True)
class SnapshotSegments:
    """What garbage collection reads of a snapshot: its commit info, the history segments
    its index names, and each array's segment list (newest first; read from the
    ``segment_refs`` column, its refs carry no extents and no filters)."""

    info: CommitInfo
    history_segments: tuple[HistorySegmentRef, ...]
    lists: tuple[tuple[SegmentRef, ...], ...]


def decode_snapshot_segments(
    data: bytes,
    what: str = "snapshot",
    expected_checksum: int | None = None,
    memo: dict[Any, Any] | None = None,
) -> SnapshotSegments:
    """A snapshot's segment lists and history segments, verified as ``decode_snapshot``
    verifies it, without the rest: no node records, zarr.json or pending history ids.

    ``memo`` (shared by the calls of one reader of many snapshots, which list mostly the
    same segments) gives back the ``SegmentRef`` made before for the same stored values.

    A snapshot with a ``segment_refs`` column is read from that column alone (checked
    against its own checksum: the commit info's covers that checksum); its refs then carry
    no extents and no filters. Others are read and verified whole."""
    memo = {} if memo is None else memo
    file, schema, header = open_parquet(data, SNAPSHOT, what, expected_checksum, verify_pages=False)
    if REFS_COLUMN in schema.names or "segment_refs_checksum" in header:
        info = _info_from_header(header, what)
        check_schema(schema, REFS_SCHEMA, what)
        has_rows = ROWS_COLUMN in schema.names or "segment_rows_checksum" in header
        columns = (REFS_COLUMN, ROWS_COLUMN) if has_rows else (REFS_COLUMN,)
        table = read_parquet_columns(file, what, columns)
        recs = _decoded_refs(table, header, what)
        inline = _decoded_rows(table, header, [len(r) for r in recs], what)
        found = _refs_lists(recs, inline, memo)
        return SnapshotSegments(info, _history_segments(header, what, memo), found)
    info, header, cols, filters, inline = _verified_node_table(data, what, expected_checksum)
    try:
        lists = []
        for segs, fs, rows in zip(cols["segments"], filters, inline):
            if not segs:
                continue
            refs = []
            for i, s in enumerate(segs):
                f = None if fs is None else fs[i]
                v = None if rows is None else rows[i]
                key = (
                    s["manifest_id"],
                    s["checksum"],
                    s["size"],
                    s["rows"],
                    tuple(s["extent_min"]),
                    tuple(s["extent_max"]),
                    s["row_offset"],
                    f,
                    v,
                )
                ref = memo.get(key)
                if ref is None:
                    ref = memo.setdefault(key, _segment_refs([s], [f], [v])[0])
                refs.append(ref)
            lists.append(tuple(refs))
    except (TypeError, AttributeError, KeyError, ValueError, FormatError) as e:
        raise FormatError(f"{what}: damaged node table ({e!r})") from e
    return SnapshotSegments(info, _history_segments(header, what, memo), tuple(lists))


def _history_segments(
    header: dict[str, Any], what: str, memo: dict[Any, Any]
) -> tuple[HistorySegmentRef, ...]:
    """The history segments of the header's index; ``memo`` keeps each entry parsed
    before (the snapshots of one history name mostly the same segments)."""
    value = header.get("history")
    if value is None:
        return ()
    entries = value.get("segments") if isinstance(value, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        return HistoryIndex.from_json(value, what, pending=False).segments  # raises
    pending = value.get("pending")
    try:  # the values ``from_json`` reads (other keys are ignored)
        keys = [
            ("history", *(e.get(k) for k in ("id", "checksum", "size", "rows"))) for e in entries
        ]
        hit = all(k in memo for k in keys)
    except TypeError:  # unhashable values: ``from_json`` says what is wrong
        keys, hit = [], False
    bounded = len(entries) <= MAX_SEGMENTS and isinstance(pending, list)
    if not (hit and bounded and len(pending) <= MAX_PENDING):
        found = HistoryIndex.from_json(value, what, pending=False).segments
        memo.update(zip(keys, found))
        return found
    return tuple(memo[k] for k in keys)


def _refs_lists(
    found: list[list[RefRecord]],
    inline: list[list[bytes | None] | None],
    memo: dict[Any, Any],
) -> tuple[tuple[SegmentRef, ...], ...]:
    """Each non-empty segment list of ``segment_refs`` records (``_decoded_refs``), with
    the inline rows ``segment_rows`` gives (``_decoded_rows``)."""
    lists = []
    for recs, copies in zip(found, inline):
        if not recs:
            continue
        refs = []
        for i, rec in enumerate(recs):
            copy = None if copies is None else copies[i]
            key = rec if copy is None else (rec, copy)
            ref = memo.get(key)
            if ref is None:
                raw, value, size, rows, row_offset = rec
                ref = memo[key] = SegmentRef(
                    manifest_id=ManifestId(raw),
                    checksum=value,
                    size=size,
                    rows=rows,
                    extent_min=(),
                    extent_max=(),
                    row_offset=row_offset,
                    inline=copy,
                )
            refs.append(ref)
        lists.append(tuple(refs))
    return tuple(lists)


def _history_from_header(header: dict[str, Any], what: str) -> HistoryIndex | None:
    value = header.get("history")
    return None if value is None else HistoryIndex.from_json(value, what)


def decode_commit_info(tail: bytes, what: str = "snapshot") -> CommitInfo | None:
    """Commit info from the last bytes of a snapshot; None if ``tail`` is too short."""
    found = decode_commit_header(tail, what)
    return None if found is None else found[0]


def decode_commit_header(
    tail: bytes, what: str = "snapshot"
) -> tuple[CommitInfo, HistoryIndex | None] | None:
    """Commit info and history index from the last bytes of a snapshot; None if ``tail``
    is too short."""
    header = decode_parquet_header(tail, SNAPSHOT, what)
    if header is None:
        return None
    header = check_header(header, SNAPSHOT, what)
    info = _info_from_header(header, what)
    return info, _history_from_header(header, what)
