"""Manifest objects: immutable, coordinate-sorted tables of chunk references.

A manifest object holds one or more *segments*, each belonging to one array (node) and
occupying a contiguous run of rows (a commit packs the small deltas of many arrays into one
object, so a commit touching 100 arrays writes one manifest, not 100). A row is one chunk:
its array's node id, its grid coordinates and where its bytes are: inline in the row, a
native object ``chunks/<id>``, or a byte range of a virtual (external) file; or a tombstone
saying the chunk was deleted.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from .common import MANIFEST, FormatError, decode_parquet, encode_parquet, numpy_of
from .ids import ChunkId, ManifestId, NodeId

Coord = tuple[int, ...]
"""A chunk's position in its array's chunk grid (``()`` for a 0-d array)."""

SCHEMA = pa.schema(
    [
        ("node_id", pa.string()),
        ("coord", pa.list_(pa.int64())),
        ("kind", pa.int8()),
        ("inline", pa.binary()),
        ("chunk_id", pa.string()),
        ("offset", pa.int64()),
        ("length", pa.int64()),
        ("checksum", pa.uint64()),
        ("location", pa.string()),
        ("etag", pa.string()),
        ("last_modified", pa.timestamp("s", tz="UTC")),
        # optional (added within version 1): absent in older manifests, read as nulls
        ("block_size", pa.int64()),
        ("block_checksums", pa.binary()),
    ]
)
OPTIONAL = ("block_size", "block_checksums")
"""Columns older manifests lack: a decoded table gets them as nulls."""
REQUIRED_SCHEMA = pa.schema([f for f in SCHEMA if f.name not in OPTIONAL])


class ChunkKind(IntEnum):
    """The ``kind`` column."""

    DELETED = 0
    INLINE = 1
    NATIVE = 2
    VIRTUAL = 3


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """Where one chunk's bytes are.

    INLINE: ``data``. NATIVE: ``chunks/<chunk_id>``, ``length`` bytes, xxh3 ``checksum``,
    and for large objects ``blocks``, the xxh3 of each ``block_size`` block (``blocks.py``).
    VIRTUAL: ``length`` bytes at ``offset`` of ``location``, optionally pinned by ``etag``
    or ``last_modified``. DELETED: a tombstone hiding older segments' refs.
    """

    kind: ChunkKind
    data: bytes | None = None
    chunk_id: ChunkId | None = None
    offset: int = 0
    length: int = 0
    checksum: int | None = None
    location: str | None = None
    etag: str | None = None
    last_modified: dt.datetime | None = None
    block_size: int = 0
    blocks: bytes | None = None


TOMBSTONE = ChunkRef(ChunkKind.DELETED)
_KINDS = tuple(ChunkKind)


def encode_manifest(
    manifest_id: ManifestId, node_id: NodeId, coords: np.ndarray, refs: list[ChunkRef]
) -> bytes:
    """Encode refs for the coordinates ``coords`` (n x ndim, sorted lexicographically)."""
    if coords.shape[0] != len(refs):
        raise ValueError("coords and refs differ in length")
    return encode_manifest_table(manifest_id, node_id, coords, ref_rows(refs))


def coord_bounds(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The smallest and largest coordinate per dimension of ``coords`` (n x ndim; zeros if
    n is 0). Column by column: numpy's ``min(axis=0)`` on n x 2 is 40 times slower."""
    n, ndim = coords.shape
    lo, hi = np.zeros(ndim, np.int64), np.zeros(ndim, np.int64)
    if n:
        for d in range(ndim):
            column = coords[:, d]
            lo[d], hi[d] = column.min(), column.max()
    return lo, hi


class ManifestSegment:
    """A decoded segment: coordinates as a numpy matrix, refs materialized on demand."""

    __slots__ = (
        "manifest_id",
        "node_id",
        "coords",
        "kinds",
        "_table",
        "_keys",
        "_lo",
        "_spans",
        "_box",
        "_cols",
        "nbytes",
    )

    def __init__(
        self, manifest_id: ManifestId, node_id: NodeId, coords: np.ndarray, table: pa.Table
    ) -> None:
        self.manifest_id = manifest_id
        self.node_id = node_id
        self.coords = coords
        self._table = table
        self.kinds = numpy_of(table.column("kind"))
        self._cols: dict[str, Any] = {}
        self.nbytes = int(table.nbytes) + coords.nbytes
        n, ndim = coords.shape
        self._lo, hi = coord_bounds(coords)
        self._spans = (hi - self._lo + 1).astype(np.int64)
        #: (low, span) per dimension as Python ints, for ``find`` (one lookup per chunk read)
        self._box = tuple(zip(self._lo.tolist(), self._spans.tolist()))
        total = 1
        for s in self._spans.tolist():
            total *= s
        if total < (1 << 62):
            keys = np.zeros(n, np.int64)
            for d in range(ndim):
                keys = keys * self._spans[d] + (coords[:, d] - self._lo[d])
            self._keys: np.ndarray | None = keys
        else:  # astronomically sparse box: fall back to a row scan
            self._keys = None

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def find(self, coord: tuple[int, ...]) -> int | None:
        """Row index of ``coord`` or None."""
        n = len(self)
        if n == 0:
            return None
        if self._keys is None:
            hits = np.flatnonzero((self.coords == np.asarray(coord)).all(axis=1))
            return int(hits[0]) if len(hits) else None
        key = 0
        for c, (lo, span) in zip(coord, self._box):
            off = c - lo
            if off < 0 or off >= span:
                return None
            key = key * span + off
        i = int(np.searchsorted(self._keys, key))
        return i if i < n and int(self._keys[i]) == key else None

    def _col(self, name: str) -> Any:
        col = self._cols.get(name)
        if col is None:
            chunked = self._table.column(name)  # one chunk (a slice): used as is, no copy
            col = chunked.chunk(0) if chunked.num_chunks == 1 else chunked.combine_chunks()
            self._cols[name] = col
        return col

    def _num(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """A numeric column as numpy (null slots unspecified) and its validity mask (None:
        no nulls);
        converted once per segment, in bulk."""
        key = "#" + name
        hit = self._cols.get(key)
        if hit is None:
            col = self._col(name)
            valid = None  # null slots hold anything: ``valid`` says which to ignore
            if col.null_count:
                valid = numpy_of(col.is_valid().cast(pa.uint8())).astype(bool)
            hit = self._cols[key] = (numpy_of(col), valid)
        return hit

    def _int(self, name: str, i: int) -> int | None:
        values, valid = self._num(name)
        return None if valid is not None and not valid[i] else int(values[i])

    def ref(self, i: int) -> ChunkRef:
        kind = _KINDS[int(self.kinds[i])]
        if kind == ChunkKind.INLINE:
            return ChunkRef(
                kind, data=self._col("inline")[i].as_py(), length=self._int("length", i) or 0
            )
        if kind == ChunkKind.NATIVE:
            return ChunkRef(
                kind,
                chunk_id=ChunkId.from_trusted_text(self._col("chunk_id")[i].as_py()),
                offset=self._int("offset", i) or 0,
                length=self._int("length", i) or 0,
                checksum=self._int("checksum", i),
                block_size=self._int("block_size", i) or 0,
                blocks=self._col("block_checksums")[i].as_py(),
            )
        if kind == ChunkKind.VIRTUAL:
            return ChunkRef(
                kind,
                location=self._col("location")[i].as_py(),
                offset=self._int("offset", i) or 0,
                length=self._int("length", i) or 0,
                etag=self._col("etag")[i].as_py(),
                last_modified=self._col("last_modified")[i].as_py(),
            )
        return TOMBSTONE

    def refs(self) -> list[ChunkRef]:
        return [self.ref(i) for i in range(len(self))]

    @property
    def table(self) -> pa.Table:
        return self._table


def with_optional_columns(table: pa.Table, what: str) -> pa.Table:
    """``table`` with every ``OPTIONAL`` column: null where an older manifest lacks it;
    ``FormatError`` if one is there with another type."""
    for name in OPTIONAL:
        field = SCHEMA.field(name)
        i = table.schema.get_field_index(name)
        if i < 0:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
        elif table.schema.field(i).type != field.type:
            raise FormatError(f"{what}: column {name!r} has type {table.schema.field(i).type}")
    return table


def _all_equal(col: pa.ChunkedArray, value: str) -> bool:
    """Whether every entry of a dictionary-encoded string column is ``value`` (checked on
    the dictionary and the indices, without materializing the strings)."""
    for chunk in col.chunks:
        if not len(chunk):
            continue
        if chunk.null_count:
            return False
        hits = [i for i, v in enumerate(chunk.dictionary.to_pylist()) if v == value]
        if len(hits) != 1:
            return False
        indices = numpy_of(chunk.indices)
        if not bool((indices == hits[0]).all()):
            return False
    return True


def split_parts(table: pa.Table, parts: Any) -> list[tuple[NodeId, int, np.ndarray]]:
    """The header's ``parts`` list checked against ``table``: per part its node id, first
    row and coordinates (n x ndim); ``FormatError`` if they do not tile the table."""
    coord = table.column("coord").combine_chunks()
    flat = numpy_of(coord.flatten()).astype(np.int64, copy=False)
    list_offsets = numpy_of(coord.offsets)
    out, row = [], 0
    for part in parts:
        nid, ndim, n = NodeId.parse(part["node_id"]), int(part["ndim"]), int(part["rows"])
        if n < 0 or ndim < 0 or row + n > table.num_rows:
            raise FormatError("parts exceed the table")
        lo, hi = int(list_offsets[row]), int(list_offsets[row + n])
        if hi - lo != n * ndim:
            raise FormatError("coordinates do not match the declared shape")
        out.append((nid, row, flat[lo:hi].reshape(n, ndim)))
        row += n
    if row != table.num_rows:
        raise FormatError("rows not covered by any part")
    return out


def decode_manifest_parts(
    data: bytes, what: str = "manifest", expected_checksum: int | None = None
) -> dict[int, ManifestSegment]:
    """Every segment of a manifest object, by the row where it starts."""
    table, header = decode_parquet(
        data, MANIFEST, what, expected_checksum, REQUIRED_SCHEMA, read_dictionary=("node_id",)
    )
    table = with_optional_columns(table, what)
    try:
        mid = ManifestId.parse(header["id"])
        parts = header["parts"]
        if not isinstance(parts, list) or not parts:
            raise FormatError("no parts")
        node_col = table.column("node_id")
        if table.column("kind").null_count:
            raise FormatError("null chunk kinds")
        kinds = numpy_of(table.column("kind"))
        out: dict[int, ManifestSegment] = {}
        for nid, row, coords in split_parts(table, parts):
            n = len(coords)
            if n and not _all_equal(node_col.slice(row, n), str(nid)):
                raise FormatError("node_id column does not match the header")
            out[row] = ManifestSegment(mid, nid, coords, table.slice(row, n))
    except (KeyError, TypeError, ValueError, pa.ArrowException, FormatError) as e:
        raise FormatError(f"{what}: damaged manifest ({e!r})") from e
    if len(kinds) and (kinds.min() < 0 or kinds.max() > 3):
        raise FormatError(f"{what}: unknown chunk kind")
    return out


@dataclass(frozen=True, slots=True)
class ChunkIdRows:
    """What garbage collection reads of a segment: its coordinates (n x ndim, sorted),
    each row's kind, and each row's chunk id (null unless the row is native)."""

    coords: np.ndarray
    kinds: np.ndarray
    chunk_ids: pa.Array

    def __len__(self) -> int:
        return int(self.coords.shape[0])


_CHUNK_ID_COLUMNS = ("coord", "kind", "chunk_id")


def decode_manifest_chunk_ids(
    data: bytes, what: str, expected_checksum: int
) -> dict[int, ChunkIdRows]:
    """Every segment of a manifest object, by the row where it starts, with only the columns
    that say which chunk a row names: for readers of many segments that need nothing
    else (garbage collection). The checksum is required: it covers the columns that are
    not read (and the whole footer), so a damaged object is an error here too."""
    table, header = decode_parquet(
        data, MANIFEST, what, expected_checksum, REQUIRED_SCHEMA, columns=_CHUNK_ID_COLUMNS
    )
    try:
        ManifestId.parse(header["id"])
        parts = header["parts"]
        if not isinstance(parts, list) or not parts:
            raise FormatError("no parts")
        kind_col = table.column("kind")
        if kind_col.null_count:
            raise FormatError("a row has no kind")
        kinds = numpy_of(kind_col)  # not to_numpy: that imports pandas (0.3 s) if installed
        ids = table.column("chunk_id").combine_chunks()
        out = {
            row: ChunkIdRows(coords, kinds[row : row + len(coords)], ids.slice(row, len(coords)))
            for _, row, coords in split_parts(table, parts)
        }
    except (KeyError, TypeError, ValueError, pa.ArrowException, FormatError) as e:
        raise FormatError(f"{what}: damaged manifest ({e!r})") from e
    if len(kinds) and (kinds.min() < 0 or kinds.max() > 3):
        raise FormatError(f"{what}: unknown chunk kind")
    return out


def decode_manifest(
    data: bytes, what: str = "manifest", expected_checksum: int | None = None
) -> ManifestSegment:
    """The one segment of a single-array manifest object (see ``decode_manifest_parts``)."""
    parts = decode_manifest_parts(data, what, expected_checksum)
    if len(parts) != 1:
        raise FormatError(f"{what}: holds {len(parts)} segments, expected one")
    return parts[0]


# -- bulk row builders (used by commits: columns built by Arrow, not row by row) -----------
ROW_SCHEMA = pa.schema([f for f in SCHEMA if f.name not in ("node_id", "coord")])


def _rows(n: int, **columns: pa.Array) -> pa.Table:
    return pa.table(
        {f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in ROW_SCHEMA}, schema=ROW_SCHEMA
    )


def inline_rows(datas: list[bytes]) -> pa.Table:
    """Manifest rows (without ``coord``) for inline chunks holding ``datas``."""
    n = len(datas)
    inline = pa.array(datas, pa.binary())
    return _rows(
        n,
        kind=pa.array(np.full(n, int(ChunkKind.INLINE), np.int8)),
        inline=inline,
        offset=pa.array(np.zeros(n, np.int64)),
        length=pa.compute.binary_length(inline).cast(pa.int64()),
    )


def tombstone_rows(n: int) -> pa.Table:
    """Manifest rows (without ``coord``) for ``n`` deleted chunks."""
    return _rows(n, kind=pa.array(np.zeros(n, np.int8)))


def ref_rows(refs: list[ChunkRef]) -> pa.Table:
    """Manifest rows (without ``coord``) for any refs."""
    n = len(refs)
    sums = [r.blocks for r in refs]
    blocked = sums.count(None) < n
    return _rows(
        n,
        kind=pa.array([int(r.kind) for r in refs], pa.int8()),
        inline=pa.array([r.data for r in refs], pa.binary()),
        chunk_id=pa.array(
            [str(r.chunk_id) if r.chunk_id is not None else None for r in refs], pa.string()
        ),
        offset=pa.array([r.offset for r in refs], pa.int64()),
        length=pa.array([r.length for r in refs], pa.int64()),
        checksum=pa.array([r.checksum for r in refs], pa.uint64()),
        location=pa.array([r.location for r in refs], pa.string()),
        etag=pa.array([r.etag for r in refs], pa.string()),
        last_modified=pa.array([r.last_modified for r in refs], pa.timestamp("s", tz="UTC")),
        **(
            {
                "block_size": pa.array(
                    [r.block_size if r.blocks is not None else None for r in refs], pa.int64()
                ),
                "block_checksums": pa.array(sums, pa.binary()),
            }
            if blocked
            else {}
        ),
    )


#: columns whose values are unique per row (random ids and hashes), written without
#: dictionary encoding (SPEC §4.2): 10,000 native refs encode in 2.2 ms instead of 3.6 ms,
#: and the manifest is 25% smaller
UNIQUE_COLUMNS = ("chunk_id", "checksum", "block_checksums")


def encode_manifest_table(
    manifest_id: ManifestId, node_id: NodeId, coords: np.ndarray, rows: pa.Table
) -> bytes:
    """Encode ``rows`` (every column but ``node_id`` and ``coord``) for ``coords``
    (n x ndim, sorted) as a manifest object holding one segment."""
    return encode_manifest_parts(manifest_id, [(node_id, coords, rows)])


def encode_manifest_parts(
    manifest_id: ManifestId, parts: list[tuple[NodeId, np.ndarray, pa.Table]]
) -> bytes:
    """Encode several arrays' segments, each (node id, sorted coords, rows), as one
    manifest object; segment ``i`` starts at the sum of the rows before it."""
    if not parts:
        raise ValueError("a manifest holds at least one segment")
    table, header_parts = encode_manifest_columns(parts)
    return encode_parquet(
        table,
        {"object_type": MANIFEST, "id": str(manifest_id), "parts": header_parts},
        no_dictionary=UNIQUE_COLUMNS,
    )


def encode_manifest_columns(
    parts: list[tuple[NodeId, np.ndarray, pa.Table]],
) -> tuple[pa.Table, list[dict[str, Any]]]:
    """The manifest table of several (node id, coords, rows) parts, and the header's
    ``parts`` list describing them (shared by manifests and fork journals)."""
    for _, coords, rows in parts:
        if rows.num_rows != coords.shape[0]:
            raise ValueError("coords and rows differ in length")
    rows = pa.table(
        {
            f.name: pa.concat_arrays(
                [c for _, _, r in parts for c in r.column(f.name).chunks] or [pa.array([], f.type)]
            )
            for f in ROW_SCHEMA
        },
        schema=ROW_SCHEMA,
    )
    return manifest_columns([n for n, _, _ in parts], [c for _, c, _ in parts], rows)


def encode_manifest_rows(
    manifest_id: ManifestId, node_ids: list[NodeId], coords: list[np.ndarray], rows: pa.Table
) -> bytes:
    """``encode_manifest_parts`` for parts given as one table: part ``i`` is ``node_ids[i]``,
    ``coords[i]`` (sorted) and the next ``len(coords[i])`` rows of ``rows`` (every column
    but ``node_id`` and ``coord``). The same bytes, without a table per part."""
    if not node_ids:
        raise ValueError("a manifest holds at least one segment")
    table, header_parts = manifest_columns(node_ids, coords, rows)
    return encode_parquet(
        table,
        {"object_type": MANIFEST, "id": str(manifest_id), "parts": header_parts},
        no_dictionary=UNIQUE_COLUMNS,
    )


def manifest_columns(
    node_ids: list[NodeId], coords: list[np.ndarray], rows: pa.Table
) -> tuple[pa.Table, list[dict[str, Any]]]:
    """The manifest table and header ``parts`` of parts ``(node_ids[i], coords[i])`` whose
    rows follow one another in ``rows``: columns built once, not per part."""
    counts = np.array([c.shape[0] for c in coords], np.int64)
    ndims = np.array([c.shape[1] for c in coords], np.int64)
    if int(counts.sum()) != rows.num_rows:
        raise ValueError("coords and rows differ in length")
    widths = np.repeat(ndims, counts)  # coordinate values per row
    if int(widths.sum()) >= 2**31:
        raise ValueError("too many coordinates for one manifest object")
    offsets = np.zeros(len(widths) + 1, np.int32)
    np.cumsum(widths, out=offsets[1:])
    flat = np.concatenate(
        [np.zeros(0, np.int64)]
        + [np.ascontiguousarray(c, dtype=np.int64).reshape(-1) for c in coords]
    )
    coord = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int64()))
    names = [str(n) for n in node_ids]
    node_col = pa.array(np.repeat(np.array(names, object), counts), pa.string())
    columns: dict[str, Any] = {"node_id": node_col, "coord": coord}
    for f in ROW_SCHEMA:
        col = rows.column(f.name)
        columns[f.name] = col if col.type.equals(f.type) else col.cast(f.type)
    header_parts = [
        {"node_id": name, "ndim": int(d), "rows": int(n)}
        for name, d, n in zip(names, ndims.tolist(), counts.tolist())
    ]
    return pa.table(columns, schema=SCHEMA), header_parts


def virtual_rows(
    offset: pa.Array,
    length: pa.Array,
    location: pa.Array,
    etag: pa.Array | None = None,
    last_modified: pa.Array | None = None,
) -> pa.Table:
    """Manifest rows (without ``coord``) for virtual chunks, from columns: ``location``
    may be dictionary-encoded (it is written as plain strings, which Parquet then
    dictionary-encodes on disk)."""
    n = len(offset)
    if pa.types.is_dictionary(location.type):
        location = location.cast(pa.string())
    columns = {
        "kind": pa.array(np.full(n, int(ChunkKind.VIRTUAL), np.int8)),
        "offset": offset,
        "length": length,
        "location": location,
    }
    if etag is not None:
        columns["etag"] = etag
    if last_modified is not None:
        columns["last_modified"] = last_modified
    return _rows(n, **columns)
