"""Fork journals: what a copy of a fork staged on a worker, so that merging finds it.

A fork pickled to workers is copied there; a copy that writes records each batch of its
staged changes as one journal object, ``forks/<fork id>/<writer id>/<seq>``, before the
write returns. Merging a fork reads the journals of its copies that were not handed back,
so their writes reach the commit even when the copies never return (``ds.to_zarr(
fork.store)`` under a distributed scheduler).

A journal object is a Parquet file with the manifest's columns (``node_id``, ``coord``,
``kind``, ...: one row per chunk reference, a tombstone for a deleted chunk) and a header
naming the fork, the writer, the sequence number and the node changes: each touched
path with its node record (id, type, zarr.json) or null for a deletion. A later object of
one writer replaces what an earlier one said about the same path or chunk; ``cleared``
says the writer discarded everything before it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .common import FORK_JOURNAL, FormatError, decode_parquet, encode_parquet
from .ids import NodeId
from .manifest import _ROW_SCHEMA, SCHEMA, encode_manifest_columns, split_parts

_TOKEN = re.compile(r"^[0-9a-f]{16,64}$")


@dataclass(frozen=True, slots=True)
class JournalNode:
    """A touched node: its record, or ``None`` fields for a deletion of ``path``."""

    path: str
    node_id: NodeId | None = None  # None: the node at ``path`` was deleted
    node_type: str | None = None
    zarr_json: bytes | None = None


@dataclass(frozen=True)
class JournalBatch:
    """One journal object: ``chunks`` are (node id, coords n x ndim, manifest rows)."""

    fork_id: str
    writer_id: str
    seq: int
    nodes: tuple[JournalNode, ...] = ()
    chunks: tuple[tuple[NodeId, np.ndarray, pa.Table], ...] = ()
    cleared: bool = False


def journal_key(fork_id: str, writer_id: str, seq: int) -> str:
    return f"forks/{fork_id}/{writer_id}/{seq:010d}"


def parse_journal_key(key: str) -> tuple[str, str, int] | None:
    """(fork id, writer id, seq) of a journal key, or None if it is not one."""
    parts = key.split("/")
    if (len(parts) != 4 or parts[0] != "forks" or not _TOKEN.match(parts[1])
            or not _TOKEN.match(parts[2]) or not parts[3].isdigit()):
        return None
    return parts[1], parts[2], int(parts[3])


def encode_journal(batch: JournalBatch) -> bytes:
    table, parts = encode_manifest_columns(list(batch.chunks))
    nodes = [{"path": n.path, "node_id": None if n.node_id is None else str(n.node_id),
              "node_type": n.node_type,
              "zarr_json": None if n.zarr_json is None else n.zarr_json.decode("utf-8")}
             for n in batch.nodes]
    return encode_parquet(table, {
        "object_type": FORK_JOURNAL, "fork_id": batch.fork_id, "writer_id": batch.writer_id,
        "seq": batch.seq, "nodes": nodes, "parts": parts, "cleared": batch.cleared})


def decode_journal(data: bytes, what: str = "fork journal") -> JournalBatch:
    table, header = decode_parquet(data, FORK_JOURNAL, what, None, SCHEMA,
                                   read_dictionary=("node_id",))
    try:
        fork_id, writer_id, seq = header["fork_id"], header["writer_id"], header["seq"]
        if not (isinstance(fork_id, str) and _TOKEN.match(fork_id) and isinstance(writer_id, str)
                and _TOKEN.match(writer_id) and isinstance(seq, int) and seq >= 0):
            raise FormatError("bad fork, writer or sequence number")
        nodes = []
        for n in header["nodes"]:
            if not isinstance(n["path"], str):
                raise FormatError("bad node path")
            if n["node_id"] is None:
                nodes.append(JournalNode(n["path"]))
                continue
            if n["node_type"] not in ("group", "array") or not isinstance(n["zarr_json"], str):
                raise FormatError(f"bad node record at {n['path']!r}")
            nodes.append(JournalNode(n["path"], NodeId.parse(n["node_id"]), n["node_type"],
                                     n["zarr_json"].encode("utf-8")))
        rows_table = table.select(list(_ROW_SCHEMA.names))
        chunks = [(nid, coords, rows_table.slice(row, len(coords)))
                  for nid, row, coords in split_parts(table, header["parts"])]
        return JournalBatch(fork_id, writer_id, seq, tuple(nodes), tuple(chunks),
                            bool(header.get("cleared", False)))
    except (KeyError, TypeError, ValueError, AttributeError, pa.ArrowException,
            FormatError) as e:
        raise FormatError(f"{what}: damaged fork journal ({e!r})") from e
