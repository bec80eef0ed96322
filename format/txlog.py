"""Transaction logs: what one commit changed, for history, diff and rebase.

One Parquet row per change: a node created, deleted or whose zarr.json changed, or the
set of chunk coordinates an array's chunks were written or deleted at: listed, or (for
large writes, format version 2) given as the manifest segments that hold them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pyarrow as pa

from .common import TRANSACTION_LOG, FormatError, decode_parquet, encode_parquet
from .ids import ManifestId, NodeId, SnapshotId
from .snapshot import SegmentRef


class ChangeKind(StrEnum):
    """What one row of a transaction log says changed (the ``change`` column's values)."""

    NEW_GROUP = "new_group"
    NEW_ARRAY = "new_array"
    DELETED_GROUP = "deleted_group"
    DELETED_ARRAY = "deleted_array"
    UPDATED_GROUP = "updated_group"
    UPDATED_ARRAY = "updated_array"
    CHUNKS = "chunks"


NEW_GROUP = ChangeKind.NEW_GROUP
NEW_ARRAY = ChangeKind.NEW_ARRAY
DELETED_GROUP = ChangeKind.DELETED_GROUP
DELETED_ARRAY = ChangeKind.DELETED_ARRAY
UPDATED_GROUP = ChangeKind.UPDATED_GROUP
UPDATED_ARRAY = ChangeKind.UPDATED_ARRAY
CHUNKS = ChangeKind.CHUNKS
CHANGE_KINDS = (
    NEW_GROUP,
    NEW_ARRAY,
    DELETED_GROUP,
    DELETED_ARRAY,
    UPDATED_GROUP,
    UPDATED_ARRAY,
    CHUNKS,
)

SCHEMA = pa.schema(
    [
        ("change", pa.string()),
        ("path", pa.string()),
        ("node_id", pa.string()),
        ("chunks", pa.list_(pa.list_(pa.int64()))),
    ]
)
_SEGMENT_TYPE = pa.struct(
    [
        ("manifest_id", pa.string()),
        ("checksum", pa.uint64()),
        ("size", pa.int64()),
        ("rows", pa.int64()),
        ("row_offset", pa.int64()),
    ]
)
SEGMENTS_FIELD = pa.field("chunk_segments", pa.list_(_SEGMENT_TYPE))
"""The version-2 column: manifest segments whose coordinates were written too."""
SEGMENTS_VERSION = 2


@dataclass(frozen=True, slots=True)
class NodeChange:
    """One change. For ``change == "chunks"``: the coordinates written are ``chunks``
    (k x ndim, or None) and every coordinate of the manifest segments ``segments`` (their
    extents are not recorded: ``()``)."""

    change: str
    path: str
    node_id: NodeId
    chunks: np.ndarray | None = None
    segments: tuple[SegmentRef, ...] = ()


@dataclass(frozen=True, slots=True)
class TransactionLog:
    snapshot_id: SnapshotId
    parent_id: SnapshotId | None
    changes: tuple[NodeChange, ...]


def _chunks_column(changes: tuple[NodeChange, ...]) -> pa.Array:
    counts = np.array([0 if c.chunks is None else c.chunks.shape[0] for c in changes], np.int64)
    ndims = [c.chunks.shape[1] for c in changes if c.chunks is not None]
    outer = np.zeros(len(changes) + 1, np.int64)
    np.cumsum(counts, out=outer[1:])
    present = np.array([c.chunks is not None for c in changes], bool)
    per_coord = (
        np.repeat(np.array(ndims, np.int64), counts[present]) if ndims else np.zeros(0, np.int64)
    )
    inner = np.zeros(len(per_coord) + 1, np.int64)
    np.cumsum(per_coord, out=inner[1:])
    flat = [
        np.ascontiguousarray(c.chunks, np.int64).reshape(-1)
        for c in changes
        if c.chunks is not None
    ]
    values = pa.array(np.concatenate(flat) if flat else np.zeros(0, np.int64), pa.int64())
    inner_list = pa.ListArray.from_arrays(pa.array(inner.astype(np.int32)), values)
    mask = pa.array([c.chunks is None for c in changes], pa.bool_())
    return pa.ListArray.from_arrays(pa.array(outer.astype(np.int32)), inner_list, mask=mask)


def encode_transaction_log(log: TransactionLog) -> bytes:
    for c in log.changes:
        if c.change not in CHANGE_KINDS:
            raise ValueError(f"unknown change kind {c.change!r}")
        if c.segments and c.change != CHUNKS:
            raise ValueError(f"a {c.change!r} change lists no segments")
    columns = {
        "change": pa.array([c.change for c in log.changes], pa.string()),
        "path": pa.array([c.path for c in log.changes], pa.string()),
        "node_id": pa.array([str(c.node_id) for c in log.changes], pa.string()),
        "chunks": _chunks_column(log.changes),
    }
    schema, version = SCHEMA, None
    if any(c.segments for c in log.changes):  # only then version 2: old readers keep going
        columns[SEGMENTS_FIELD.name] = pa.array(
            [
                [
                    {
                        "manifest_id": str(s.manifest_id),
                        "checksum": s.checksum,
                        "size": s.size,
                        "rows": s.rows,
                        "row_offset": s.row_offset,
                    }
                    for s in c.segments
                ]
                if c.segments
                else None
                for c in log.changes
            ],
            SEGMENTS_FIELD.type,
        )
        schema, version = SCHEMA.append(SEGMENTS_FIELD), SEGMENTS_VERSION
    header = {
        "object_type": TRANSACTION_LOG,
        "id": str(log.snapshot_id),
        "parent_id": str(log.parent_id) if log.parent_id else None,
    }
    return encode_parquet(pa.table(columns, schema=schema), header, version)


def decode_transaction_log(
    data: bytes, what: str = "transaction log", expected_checksum: int | None = None
) -> TransactionLog:
    table, header = decode_parquet(data, TRANSACTION_LOG, what, expected_checksum, SCHEMA)
    try:
        kinds = table.column("change").to_pylist()
        paths = table.column("path").to_pylist()
        nids = table.column("node_id").to_pylist()
        chunks_col = table.column("chunks").combine_chunks()
        segs_col: list[list[dict[str, object]] | None] = [None] * len(kinds)
        if (
            header["format_version"] >= SEGMENTS_VERSION
            and SEGMENTS_FIELD.name in table.schema.names
        ):
            if table.schema.field(SEGMENTS_FIELD.name).type != SEGMENTS_FIELD.type:
                raise FormatError(f"{what}: column {SEGMENTS_FIELD.name!r} has the wrong type")
            segs_col = table.column(SEGMENTS_FIELD.name).to_pylist()
        changes = []
        for i, (kind, path, nid) in enumerate(zip(kinds, paths, nids)):
            if kind not in CHANGE_KINDS:
                raise FormatError(f"{what}: unknown change kind {kind!r}")
            coords = None
            if chunks_col[i].is_valid:
                rows = chunks_col[i].values  # ListArray of coords
                k = len(rows)
                flat = rows.flatten().to_numpy(zero_copy_only=False) if k else np.zeros(0)
                ndim = len(flat) // k if k else 0
                coords = flat.astype(np.int64).reshape(k, ndim)
            segments = tuple(_segment(s) for s in segs_col[i] or ())
            if segments and kind != CHUNKS:
                raise FormatError(f"{what}: a {kind!r} change lists chunk segments")
            changes.append(NodeChange(kind, path, NodeId.parse(nid), coords, segments))
        return TransactionLog(
            snapshot_id=SnapshotId.parse(header["id"]),
            parent_id=SnapshotId.parse(header["parent_id"]) if header["parent_id"] else None,
            changes=tuple(changes),
        )
    except (KeyError, TypeError, ValueError, pa.ArrowException, FormatError) as e:
        raise FormatError(f"{what}: damaged transaction log ({e!r})") from e


def _segment(s: dict[str, object]) -> SegmentRef:
    values = [s["checksum"], s["size"], s["rows"], s["row_offset"]]
    if not all(isinstance(v, int) and v >= 0 for v in values):
        raise ValueError(f"invalid chunk segment {s!r}")
    return SegmentRef(
        ManifestId.parse(str(s["manifest_id"])),
        int(s["checksum"]),  # type: ignore[call-overload]
        int(s["size"]),  # type: ignore[call-overload]
        int(s["rows"]),  # type: ignore[call-overload]
        (),
        (),
        int(s["row_offset"]),  # type: ignore[call-overload]
    )
