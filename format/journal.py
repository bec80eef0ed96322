"""Fork journals: what a copy of a fork staged on a worker, so that merging finds it.

A fork pickled to workers is copied there; a copy that writes records each batch of its
staged changes as one journal object, ``forks/<fork id>/<writer id>/<seq>``, before the
write returns. Merging a fork reads the journals of its copies that were not handed back,
so their writes reach the commit even when the copies never return (``ds.to_zarr(
fork.store)`` under a distributed scheduler).

A journal object is one compact JSON document (journals are written on the write path,
a few references at a time, where a Parquet file's fixed cost would dominate): the fork,
the writer, the sequence number, the node changes (each touched path with its node
record, or null fields for a deletion) and ``parts``, per array the chunk references in
columns named as the manifest's (``coords`` flattened, ``inline`` in base64, ``checksum``
in hex). A later object of one writer replaces what an earlier one said about the same
path or chunk; ``cleared`` says the writer discarded everything before it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa

from .common import FORK_JOURNAL, FormatError, check_header, load_json
from .ids import ChunkId, NodeId
from .keys import is_token
from .manifest import OPTIONAL, ROW_SCHEMA, TOMBSTONE, ChunkKind, ChunkRef

MAX_ROWS = 100_000
"""References per journal object at most (a larger batch is split over several), so that
each stays well under the JSON size readers accept."""


Rows: TypeAlias = "pa.Table | list[ChunkRef]"
"""A part's references: manifest rows (bulk staging) or refs (a few at a time)."""


@dataclass(frozen=True, slots=True)
class JournalNode:
    """A touched node: its record, or ``None`` fields for a deletion of ``path``."""

    path: str
    node_id: NodeId | None = None  # None: the node at ``path`` was deleted
    node_type: str | None = None
    zarr_json: bytes | None = None


@dataclass(frozen=True)
class JournalBatch:
    """One journal object: ``chunks`` are (node id, coords n x ndim, their refs: manifest
    rows or ``ChunkRef`` values; decoding gives ``ChunkRef`` values)."""

    fork_id: str
    writer_id: str
    seq: int
    nodes: tuple[JournalNode, ...] = ()
    chunks: tuple[tuple[NodeId, np.ndarray, Rows], ...] = ()
    cleared: bool = False


def _ref_columns(refs: list[ChunkRef]) -> dict[str, list[Any]]:
    return {
        "kind": [int(r.kind) for r in refs],
        "inline": [r.data for r in refs],
        "chunk_id": [None if r.chunk_id is None else str(r.chunk_id) for r in refs],
        "offset": [r.offset for r in refs],
        "length": [r.length for r in refs],
        "checksum": [r.checksum for r in refs],
        "location": [r.location for r in refs],
        "etag": [r.etag for r in refs],
        "last_modified": [r.last_modified for r in refs],
        "block_size": [r.block_size if r.blocks is not None else None for r in refs],
        "block_checksums": [r.blocks for r in refs],
    }


def _encode_rows(node_id: NodeId, coords: np.ndarray, rows: Rows) -> dict[str, Any]:
    if isinstance(rows, pa.Table):
        cols = {name: rows.column(name).to_pylist() for name in ROW_SCHEMA.names}
    else:
        cols = _ref_columns(rows)
    for name in ("inline", "block_checksums"):
        cols[name] = [
            None if v is None else base64.b64encode(v).decode("ascii") for v in cols[name]
        ]
    cols["checksum"] = [None if v is None else f"{v:016x}" for v in cols["checksum"]]
    cols["last_modified"] = [
        None if v is None else int(v.timestamp()) for v in cols["last_modified"]
    ]
    return {
        "node_id": str(node_id),
        "ndim": int(coords.shape[1]),
        "coords": coords.reshape(-1).tolist(),
        **cols,
    }


def encode_journal(batch: JournalBatch) -> bytes:
    nodes = [
        {
            "path": n.path,
            "node_id": None if n.node_id is None else str(n.node_id),
            "node_type": n.node_type,
            "zarr_json": None if n.zarr_json is None else n.zarr_json.decode("utf-8"),
        }
        for n in batch.nodes
    ]
    doc = {
        "format_version": 1,
        "object_type": FORK_JOURNAL,
        "fork_id": batch.fork_id,
        "writer_id": batch.writer_id,
        "seq": batch.seq,
        "cleared": batch.cleared,
        "nodes": nodes,
        "parts": [_encode_rows(*c) for c in batch.chunks],
    }
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def _blocks(size: Any, sums: Any) -> dict[str, Any]:
    if sums is None:
        return {}
    return {"block_size": int(size), "blocks": base64.b64decode(sums, validate=True)}


def _decode_rows(part: dict[str, Any]) -> tuple[NodeId, np.ndarray, list[ChunkRef]]:
    nid, ndim = NodeId.parse(part["node_id"]), int(part["ndim"])
    flat = np.asarray(part["coords"], np.int64)
    kinds = part["kind"]
    n = len(kinds)
    if ndim < 0 or flat.ndim != 1 or len(flat) != n * ndim:
        raise FormatError("coordinates do not match the declared shape")
    # journals written before block checksums have no such keys
    cols = {name: part.get(name, [None] * n) for name in OPTIONAL}
    cols.update({name: part[name] for name in ROW_SCHEMA.names if name not in OPTIONAL})
    if not all(isinstance(v, list) and len(v) == n for v in cols.values()):
        raise FormatError("columns of different lengths")
    refs = []
    for i, kind in enumerate(kinds):
        if kind == ChunkKind.INLINE:
            data = base64.b64decode(cols["inline"][i], validate=True)
            refs.append(ChunkRef(ChunkKind.INLINE, data=data, length=len(data)))
        elif kind == ChunkKind.NATIVE:
            refs.append(
                ChunkRef(
                    ChunkKind.NATIVE,
                    chunk_id=ChunkId.parse(cols["chunk_id"][i]),
                    offset=int(cols["offset"][i] or 0),
                    length=int(cols["length"][i]),
                    checksum=int(cols["checksum"][i], 16),
                    **_blocks(cols["block_size"][i], cols["block_checksums"][i]),
                )
            )
        elif kind == ChunkKind.VIRTUAL:
            lm = cols["last_modified"][i]
            location, etag = cols["location"][i], cols["etag"][i]
            if not isinstance(location, str) or not (etag is None or isinstance(etag, str)):
                raise FormatError("bad virtual reference")
            refs.append(
                ChunkRef(
                    ChunkKind.VIRTUAL,
                    location=location,
                    offset=int(cols["offset"][i]),
                    length=int(cols["length"][i]),
                    etag=etag,
                    last_modified=None
                    if lm is None
                    else dt.datetime.fromtimestamp(int(lm), dt.UTC),
                )
            )
        elif kind == ChunkKind.DELETED:
            refs.append(TOMBSTONE)
        else:
            raise FormatError(f"unknown chunk kind {kind!r}")
    return nid, flat.reshape(n, ndim), refs


def decode_journal(data: bytes, what: str = "fork journal") -> JournalBatch:
    doc = check_header(load_json(data, what), FORK_JOURNAL, what)
    try:
        fork_id, writer_id, seq = doc["fork_id"], doc["writer_id"], doc["seq"]
        if not (
            isinstance(fork_id, str)
            and is_token(fork_id)
            and isinstance(writer_id, str)
            and is_token(writer_id)
            and isinstance(seq, int)
            and seq >= 0
        ):
            raise FormatError("bad fork, writer or sequence number")
        nodes = []
        for n in doc["nodes"]:
            if not isinstance(n["path"], str):
                raise FormatError("bad node path")
            if n["node_id"] is None:
                nodes.append(JournalNode(n["path"]))
                continue
            if n["node_type"] not in ("group", "array") or not isinstance(n["zarr_json"], str):
                raise FormatError(f"bad node record at {n['path']!r}")
            nodes.append(
                JournalNode(
                    n["path"],
                    NodeId.parse(n["node_id"]),
                    n["node_type"],
                    n["zarr_json"].encode("utf-8"),
                )
            )
        chunks = tuple(_decode_rows(p) for p in doc["parts"])
        return JournalBatch(
            fork_id, writer_id, seq, tuple(nodes), chunks, bool(doc.get("cleared", False))
        )
    except (KeyError, TypeError, ValueError, AttributeError, pa.ArrowException, FormatError) as e:
        raise FormatError(f"{what}: damaged fork journal ({e!r})") from e


def split_batch(batch: JournalBatch) -> list[JournalBatch]:
    """``batch`` as objects of at most ``MAX_ROWS`` references each (numbered from its
    ``seq`` on; nodes and ``cleared`` go with the first)."""
    out: list[JournalBatch] = []
    parts: list[tuple[NodeId, np.ndarray, Rows]] = []
    rows = 0
    for nid, coords, table in batch.chunks:
        for start in range(0, max(len(coords), 1), MAX_ROWS):
            piece = (
                nid,
                coords[start : start + MAX_ROWS],
                table.slice(start, MAX_ROWS)
                if isinstance(table, pa.Table)
                else table[start : start + MAX_ROWS],
            )
            if parts and rows + len(piece[1]) > MAX_ROWS:
                out.append(JournalBatch(batch.fork_id, batch.writer_id, 0, (), tuple(parts)))
                parts, rows = [], 0
            parts.append(piece)
            rows += len(piece[1])
    out.append(JournalBatch(batch.fork_id, batch.writer_id, 0, (), tuple(parts)))
    first = out[0]
    out[0] = JournalBatch(
        first.fork_id, first.writer_id, 0, batch.nodes, first.chunks, batch.cleared
    )
    return [
        JournalBatch(b.fork_id, b.writer_id, batch.seq + i, b.nodes, b.chunks, b.cleared)
        for i, b in enumerate(out)
    ]
