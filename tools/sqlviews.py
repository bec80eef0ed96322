"""duckdb views over a repository's own Parquet objects, for ``frazil sql`` and ``frazil stats``.

The objects are read through the repository's storage (local, S3 or HTTP alike) with
pyarrow, and registered in duckdb as Arrow tables, so no duckdb extension (httpfs) is
needed. Only the views a query names are built:

* ``snapshots``: one row per snapshot object (commit info from its footer): ``id``,
  ``parent_id``, ``written_at``, ``message``, ``metadata`` (JSON text);
* ``nodes``: one row per node per snapshot: ``snapshot_id`` and the snapshot's columns
  (``path``, ``node_id``, ``node_type``, ``zarr_json``, ``segments``);
* ``manifests``: one row per chunk reference: ``manifest_id``, ``node_id``, ``path`` (the
  array's path in the newest snapshot that has the node) and the segment's columns
  (``coord``; ``kind``, the code, and ``kind_name``, its name: deleted, inline, native or
  virtual; then ``inline``, ``chunk_id``, ``offset``, ``length``, ``checksum``,
  ``location``, ``etag``, ``last_modified``);
* ``transactions``: one row per change: ``snapshot_id`` and the log's columns (``change``,
  ``path``, ``node_id``, ``chunks``, and ``chunk_segments`` where a version-2 log has it);
* ``refs``: ``kind`` (branch or tag), ``name``, ``snapshot_id``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import frazil
from frazil import runtime
from frazil.format import ChunkKind
from frazil.format.common import load_json
from frazil.format.keys import OBJECT_FOLDERS as PREFIXES
from frazil.storage import Storage

VIEWS = ("snapshots", "nodes", "manifests", "transactions", "refs")
# the ``kind`` codes' names (format/SPEC.md), in code order
_KIND_NAMES = pa.array([k.name.lower() for k in sorted(ChunkKind)], pa.string())


def object_counts(storage: Storage) -> dict[str, tuple[int, int]]:
    """Per object kind (snapshot, transaction_log, manifest, chunk): count and bytes."""

    async def go() -> dict[str, tuple[int, int]]:
        out = {}
        for kind, prefix in PREFIXES.items():
            infos = await storage.list_info(prefix)
            out[kind] = (len(infos), sum(i.size for i in infos))
        return out

    return runtime.run(go())


async def _read_all(storage: Storage, prefix: str) -> list[tuple[str, pa.Table]]:
    keys = await storage.list(prefix)

    async def one(key: str) -> tuple[str, pa.Table]:
        data = await storage.get(key)
        table = await runtime.in_thread(_parquet, data)
        return key[len(prefix) :], table

    return await runtime.gather_limited([one(k) for k in keys], limit=32)


def _parquet(data: bytes) -> pa.Table:
    return pq.read_table(pa.BufferReader(data), page_checksum_verification=True)


def _header(table: pa.Table) -> dict[str, Any]:
    return load_json(
        (table.schema.metadata or {})[b"frazil"],
        "frazil header",
    )


def _with(table: pa.Table, **constants: str | None) -> pa.Table:
    """``table`` without schema metadata, with constant string columns in front."""
    table = table.replace_schema_metadata(None)
    for i, (name, value) in enumerate(constants.items()):
        table = table.add_column(i, name, pa.array([value] * table.num_rows, pa.string()))
    return table


def _concat(tables: list[pa.Table], empty: pa.Schema) -> pa.Table:
    if not tables:
        return empty.empty_table()
    return pa.concat_tables(tables, promote_options="default")


def build_views(repo: frazil.Repository, names: set[str]) -> dict[str, pa.Table]:
    """The Arrow tables of the views in ``names``."""
    storage = repo.storage
    out: dict[str, pa.Table] = {}

    async def go() -> None:
        snaps: list[tuple[str, pa.Table]] = []
        if names & {"snapshots", "nodes", "manifests"}:
            snaps = sorted(await _read_all(storage, PREFIXES["snapshot"]))
        if "snapshots" in names:
            headers = [_header(t) for _, t in snaps]
            cuts = {str(k): str(v) for k, v in (await repo.reader.load_cuts()).items()}
            for h in headers:  # the parent history gives it, where expiry cut it
                h["parent_id"] = cuts.get(h["id"], h.get("parent_id"))
            out["snapshots"] = pa.table(
                {
                    "id": pa.array([h["id"] for h in headers], pa.string()),
                    "parent_id": pa.array([h.get("parent_id") for h in headers], pa.string()),
                    "written_at": pa.array([h["written_at"] for h in headers], pa.string()).cast(
                        pa.timestamp("us", tz="UTC")
                    ),
                    "message": pa.array([h.get("message") for h in headers], pa.string()),
                    "metadata": pa.array(
                        [json.dumps(h.get("metadata") or {}) for h in headers], pa.string()
                    ),
                }
            )
        node_tables = [_with(t, snapshot_id=sid) for sid, t in snaps]
        if "nodes" in names:
            out["nodes"] = _concat(node_tables, pa.schema([("snapshot_id", pa.string())]))
        if "manifests" in names:
            paths: dict[str, str] = {}
            for t in node_tables:  # snapshots in id (time) order: the newest path wins
                paths.update(zip(t.column("node_id").to_pylist(), t.column("path").to_pylist()))
            tables = []
            for mid, t in await _read_all(storage, PREFIXES["manifest"]):
                # every row names its array (one object may hold several arrays' segments)
                node_ids = t.column("node_id").cast(pa.string())
                path_of = pa.array(
                    [paths.get(n) for n in pc.unique(node_ids).to_pylist()], pa.string()
                )
                t = t.drop_columns(["node_id"])
                t = _with(t, manifest_id=mid)
                t = t.add_column(1, "node_id", node_ids)
                t = t.add_column(
                    2, "path", path_of.take(pc.index_in(node_ids, value_set=pc.unique(node_ids)))
                )
                kind_at = t.schema.get_field_index("kind")
                t = t.add_column(kind_at + 1, "kind_name", _KIND_NAMES.take(t.column("kind")))
                tables.append(t)
            out["manifests"] = _concat(
                tables,
                pa.schema(
                    [("manifest_id", pa.string()), ("node_id", pa.string()), ("path", pa.string())]
                ),
            )
        if "transactions" in names:
            logs = await _read_all(storage, PREFIXES["transaction_log"])
            out["transactions"] = _concat(
                [_with(t, snapshot_id=sid) for sid, t in logs],
                pa.schema([("snapshot_id", pa.string())]),
            )

    runtime.run(go())
    if "refs" in names:
        rows = [("branch", b, repo.lookup_branch(b)) for b in sorted(repo.list_branches())]
        rows += [("tag", t, repo.lookup_tag(t)) for t in sorted(repo.list_tags())]
        out["refs"] = pa.table(
            {
                "kind": [r[0] for r in rows],
                "name": [r[1] for r in rows],
                "snapshot_id": [r[2] for r in rows],
            },
            schema=pa.schema(
                [("kind", pa.string()), ("name", pa.string()), ("snapshot_id", pa.string())]
            ),
        )
    return out


def run_sql(repo: frazil.Repository, query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run ``query`` in duckdb with the views it names registered; column names and rows."""
    import duckdb

    used = {v for v in VIEWS if re.search(rf"\b{v}\b", query, re.IGNORECASE)}
    con = duckdb.connect()
    try:
        for name, table in build_views(repo, used).items():
            con.register(name, table)
        try:
            cur = con.execute(query)
        except duckdb.Error as e:
            raise frazil.InvalidInputError(f"SQL: {e}") from None
        if cur.description is None:
            return [], []
        return [d[0] for d in cur.description], cur.fetchall()
    finally:
        con.close()
