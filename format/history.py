"""History index: the commit infos of a snapshot's ancestors in a few shared objects, so
listing N commits takes a bounded number of reads instead of N sequential ones (SPEC §4.5).

A snapshot's header may carry ``history``: the ids of its nearest ancestors not yet in a
history segment (``pending``, parent first) and the history segments that hold the
ancestors after them (``segments``, newest first). A history segment (``history/<id>``) is
a Parquet table of commit infos, newest first, each row the parent of the row before.
Segments are immutable and shared by every snapshot whose history runs through them.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .common import HISTORY, FormatError, decode_parquet, encode_parquet, load_json
from .ids import HistoryId, SnapshotId
from .snapshot import CommitInfo, HistoryIndex, HistorySegmentRef

__all__ = ["SCHEMA", "HistoryIndex", "HistorySegmentRef", "decode_history", "encode_history"]

SCHEMA = pa.schema(
    [
        ("snapshot_id", pa.string()),
        ("parent_id", pa.string()),
        ("written_at", pa.string()),
        ("message", pa.string()),
        ("metadata", pa.string()),
        ("transaction_log_checksum", pa.string()),
    ]
)


def encode_history(hid: HistoryId, infos: list[CommitInfo]) -> bytes:
    """A history segment of ``infos`` (newest first, each the parent of the one before)."""
    table = pa.table(
        {
            "snapshot_id": [str(i.snapshot_id) for i in infos],
            "parent_id": [str(i.parent_id) if i.parent_id else None for i in infos],
            "written_at": [i.written_at.astimezone(dt.UTC).isoformat() for i in infos],
            "message": [i.message for i in infos],
            "metadata": [json.dumps(i.metadata, sort_keys=True) for i in infos],
            "transaction_log_checksum": [
                None if i.transaction_log_checksum is None else f"{i.transaction_log_checksum:016x}"
                for i in infos
            ],
        },
        schema=SCHEMA,
    )
    return encode_parquet(table, {"object_type": HISTORY, "id": str(hid), "rows": len(infos)})


def decode_history(
    data: bytes, what: str, expected_checksum: int | None, rows: int
) -> list[CommitInfo]:
    """The commit infos of a history segment, checked: ``rows`` of them, each row the
    parent of the one before."""
    table, header = decode_parquet(data, HISTORY, what, expected_checksum, SCHEMA)
    if header.get("rows") != rows or table.num_rows != rows:
        raise FormatError(f"{what}: holds {table.num_rows} commits, its referrer says {rows}")
    sids, pids = table.column("snapshot_id"), table.column("parent_id")
    if rows > 1:  # one chain: each row's parent is the next row (checked in bulk)
        linked = pc.equal(pids.slice(0, rows - 1), sids.slice(1)).combine_chunks()
        if linked.null_count or not pc.all(linked).as_py():
            bad = np.flatnonzero(~linked.fill_null(False).to_numpy(zero_copy_only=False))[0]
            raise FormatError(f"{what}: history is not one chain at {sids[int(bad)]}")
    try:
        ids = SnapshotId.parse_many(sids.to_pylist())
        last = pids[rows - 1].as_py() if rows else None
        parents = [*ids[1:], SnapshotId.parse(last) if last else None][:rows]
        cols = [
            table.column(n).to_pylist()
            for n in ("written_at", "message", "metadata", "transaction_log_checksum")
        ]
        infos = [
            CommitInfo(
                snapshot_id=sid,
                parent_id=pid,
                written_at=dt.datetime.fromisoformat(at),
                message=msg,
                metadata={} if meta == "{}" else load_json(meta, what),
                transaction_log_checksum=int(tlc, 16) if tlc else None,
            )
            for sid, pid, at, msg, meta, tlc in zip(ids, parents, *cols)
        ]
    except (TypeError, ValueError, AttributeError, FormatError) as e:
        raise FormatError(f"{what}: damaged history ({e!r})") from e
    if any(not isinstance(i.metadata, dict) or not isinstance(i.message, str) for i in infos):
        raise FormatError(f"{what}: damaged history (message or metadata of the wrong type)")
    return infos
