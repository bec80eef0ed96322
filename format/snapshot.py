"""Snapshots: the node table of one committed version, with its commit info.

A snapshot is a Parquet file with one row per node (group or array), sorted by path.
Each array row lists its manifest segments newest first, with the coordinate extents
each segment covers and, in a column after them, each small segment's membership filter.
The commit info (id, parent, time, message, metadata) lives in the
file's header so that history can be read from the footer alone.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pyarrow as pa

from .common import (
    SNAPSHOT,
    FormatError,
    check_header,
    decode_parquet,
    decode_parquet_header,
    encode_parquet,
    json_checksum,
)
from .filters import check_filter, coord_hash, may_contain
from .ids import HistoryId, ManifestId, NodeId, SnapshotId


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
    header = _info_header(
        snapshot.info, nodes_checksum, snapshot.history, _filters_checksum(filters)
    )
    return encode_parquet(table, header)


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
) -> tuple[CommitInfo, dict[str, Any], dict[str, list[Any]], list[list[bytes | None] | None]]:
    """Commit info, header, node columns (Python values) and segment filters of a snapshot,
    verified: the whole-object checksum if one is given, the commit info's, the node
    table's and the filters' own."""
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
    filters = _decode_filters(table, header, [len(segs or ()) for segs in cols["segments"]], what)
    return info, header, cols, filters


def _segment_refs(segs: Any, filters: Any = None) -> tuple[SegmentRef, ...]:
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
        )
        for i, s in enumerate(segs or ())
    )


def decode_snapshot(
    data: bytes, what: str = "snapshot", expected_checksum: int | None = None
) -> Snapshot:
    info, header, cols, filters = _verified_node_table(data, what, expected_checksum)
    try:
        nodes = tuple(
            NodeRecord(
                path=path,
                node_id=NodeId.parse(nid),
                node_type=ntype,
                zarr_json=zj.encode("utf-8"),
                segments=_segment_refs(segs, fs),
            )
            for path, nid, ntype, zj, segs, fs in zip(
                cols["path"],
                cols["node_id"],
                cols["node_type"],
                cols["zarr_json"],
                cols["segments"],
                filters,
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
    its index names, and each array's segment list (newest first)."""

    info: CommitInfo
    history_segments: tuple[HistorySegmentRef, ...]
    lists: tuple[tuple[SegmentRef, ...], ...]


def decode_snapshot_segments(
    data: bytes,
    what: str = "snapshot",
    expected_checksum: int | None = None,
    memo: dict[tuple[Any, ...], SegmentRef] | None = None,
) -> SnapshotSegments:
    """A snapshot's segment lists and history segments, verified as ``decode_snapshot``
    verifies it, without the rest: no node records, zarr.json or pending history ids.

    ``memo`` (shared by the calls of one reader of many snapshots, which list mostly the
    same segments) gives back the ``SegmentRef`` made before for the same stored values."""
    info, header, cols, filters = _verified_node_table(data, what, expected_checksum)
    memo = {} if memo is None else memo
    try:
        lists = []
        for segs, fs in zip(cols["segments"], filters):
            if not segs:
                continue
            refs = []
            for i, s in enumerate(segs):
                f = None if fs is None else fs[i]
                key = (
                    s["manifest_id"],
                    s["checksum"],
                    s["size"],
                    s["rows"],
                    tuple(s["extent_min"]),
                    tuple(s["extent_max"]),
                    s["row_offset"],
                    f,
                )
                ref = memo.get(key)
                if ref is None:
                    ref = memo.setdefault(key, _segment_refs([s], [f])[0])
                refs.append(ref)
            lists.append(tuple(refs))
    except (TypeError, AttributeError, KeyError, ValueError, FormatError) as e:
        raise FormatError(f"{what}: damaged node table ({e!r})") from e
    value = header.get("history")
    index = None if value is None else HistoryIndex.from_json(value, what, pending=False)
    return SnapshotSegments(info, () if index is None else index.segments, tuple(lists))


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
