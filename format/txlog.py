"""Transaction logs: what one commit changed, for history, diff and rebase.

One Parquet row per change: a node created, deleted or whose zarr.json changed, or the
set of chunk coordinates an array's chunks were written or deleted at.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pyarrow as pa

from .common import TRANSACTION_LOG, FormatError, decode_parquet, encode_parquet
from .ids import NodeId, SnapshotId


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


@dataclass(frozen=True, slots=True)
class NodeChange:
    """One change. ``chunks`` (k x ndim) only for ``change == "chunks"``."""

    change: str
    path: str
    node_id: NodeId
    chunks: np.ndarray | None = None


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
    table = pa.table(
        {
            "change": pa.array([c.change for c in log.changes], pa.string()),
            "path": pa.array([c.path for c in log.changes], pa.string()),
            "node_id": pa.array([str(c.node_id) for c in log.changes], pa.string()),
            "chunks": _chunks_column(log.changes),
        },
        schema=SCHEMA,
    )
    header = {
        "object_type": TRANSACTION_LOG,
        "id": str(log.snapshot_id),
        "parent_id": str(log.parent_id) if log.parent_id else None,
    }
    return encode_parquet(table, header)


def decode_transaction_log(
    data: bytes, what: str = "transaction log", expected_checksum: int | None = None
) -> TransactionLog:
    table, header = decode_parquet(data, TRANSACTION_LOG, what, expected_checksum, SCHEMA)
    try:
        kinds = table.column("change").to_pylist()
        paths = table.column("path").to_pylist()
        nids = table.column("node_id").to_pylist()
        chunks_col = table.column("chunks").combine_chunks()
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
            changes.append(NodeChange(kind, path, NodeId.parse(nid), coords))
        return TransactionLog(
            snapshot_id=SnapshotId.parse(header["id"]),
            parent_id=SnapshotId.parse(header["parent_id"]) if header["parent_id"] else None,
            changes=tuple(changes),
        )
    except (KeyError, TypeError, ValueError, pa.ArrowException, FormatError) as e:
        raise FormatError(f"{what}: damaged transaction log ({e!r})") from e
