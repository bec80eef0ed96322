"""Shared encoding rules: the format version, object types, checksums and Parquet framing.

Every Parquet object carries a JSON header in the file's key-value metadata under the key
``frazil``: ``{"format_version": 1, "object_type": "...", ...}``. Objects are written with
zstd compression and Parquet page checksums (CRC32), which readers verify; referrers also
record an xxh3-64 checksum of the whole object.
"""

from __future__ import annotations

import contextlib
import json
import re
from enum import StrEnum
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from .errors import ErrorKind, FormatError

FORMAT_VERSION = 2
"""The newest version this code reads. Readers accept versions <= this and refuse newer
ones."""

WRITE_VERSION = 1
"""The version objects are written at, unless they use what only a newer version has (a
transaction log listing chunk segments is version 2, SPEC §8): older readers keep reading
everything else."""

HEADER_KEY = b"frazil"


class ObjectType(StrEnum):
    """The ``object_type`` every object's header names (the values are what is stored)."""

    SNAPSHOT = "snapshot"
    MANIFEST = "manifest"
    TRANSACTION_LOG = "transaction_log"
    BRANCH_REF = "branch_ref"
    TAG_REF = "tag_ref"
    CONFIG = "config"
    FORK_JOURNAL = "fork_journal"
    HISTORY = "history"
    HISTORY_CUTS = "history_cuts"
    REPO_INFO = "repo_info"
    OPS_ARCHIVE = "ops_archive"


SNAPSHOT = ObjectType.SNAPSHOT
MANIFEST = ObjectType.MANIFEST
TRANSACTION_LOG = ObjectType.TRANSACTION_LOG
BRANCH_REF = ObjectType.BRANCH_REF
TAG_REF = ObjectType.TAG_REF
CONFIG = ObjectType.CONFIG
FORK_JOURNAL = ObjectType.FORK_JOURNAL
HISTORY = ObjectType.HISTORY
HISTORY_CUTS = ObjectType.HISTORY_CUTS
REPO_INFO = ObjectType.REPO_INFO
OPS_ARCHIVE = ObjectType.OPS_ARCHIVE

_ROW_GROUP_ROWS = 1 << 20


def checksum(data: bytes | bytearray | memoryview) -> int:
    """xxh3-64 of ``data`` as an unsigned 64-bit int (the checksum every referrer records)."""
    return xxhash.xxh3_64_intdigest(data)


def checksum_hex(value: int) -> str:
    return f"{value:016x}"


def verify_checksum(data: bytes | memoryview, expected: int | None, what: str) -> None:
    """Raise ``FormatError`` naming ``what`` if ``data`` does not hash to ``expected``."""
    if expected is None:
        return
    got = checksum(data)
    if got != expected:
        raise FormatError(
            f"{what} is damaged: checksum {checksum_hex(got)} does not match the "
            f"{checksum_hex(expected)} recorded when it was written"
        )


_NUMPY_TYPES = {
    pa.int8(): np.int8,
    pa.int16(): np.int16,
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.uint8(): np.uint8,
    pa.uint16(): np.uint16,
    pa.uint32(): np.uint32,
    pa.uint64(): np.uint64,
    pa.float32(): np.float32,
    pa.float64(): np.float64,
}


def numpy_of(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numeric Arrow array without nulls as a read-only numpy array, zero-copy where it
    can be. Arrow's own ``to_numpy`` imports pandas on first use where pandas is installed
    (0.3 s and 30 MiB for a process that only wants to read a chunk); this does not. Null
    slots would read as whatever their slots hold: callers check ``null_count`` first."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    dtype = _NUMPY_TYPES.get(arr.type)
    if dtype is None:
        return np.asarray(arr.to_numpy(zero_copy_only=False))
    data = arr.buffers()[1]
    if data is None or len(arr) == 0:
        return np.zeros(len(arr), dtype)
    return np.frombuffer(data, dtype, len(arr), arr.offset * np.dtype(dtype).itemsize)


def check_header(header: Any, object_type: str, what: str) -> dict[str, Any]:
    """Validate a decoded header dict: the right object type and a known format version."""
    if not isinstance(header, dict):
        raise FormatError(f"{what}: not a frazil object (no header)")
    found = header.get("object_type")
    if found != object_type:
        raise FormatError(f"{what}: expected a {object_type}, found a {found!r}")
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise FormatError(f"{what}: invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise FormatError(
            f"{what}: written by a newer frazil (format version {version}; this version "
            f"reads up to {FORMAT_VERSION}); upgrade frazil to read it",
            kind=ErrorKind.UNSUPPORTED_SPEC_VERSION,
        )
    return header


def encode_parquet(
    table: pa.Table,
    header: dict[str, Any],
    version: int | None = None,
    no_statistics: tuple[str, ...] = (),
    no_dictionary: tuple[str, ...] = (),
) -> bytes:
    """Frame ``table`` as a Parquet file with ``header`` in its key-value metadata, marked
    with format ``version`` (default ``WRITE_VERSION``). Columns named in
    ``no_statistics`` get no min/max statistics (for opaque binary values, which the
    statistics would copy twice more into the file); columns named in ``no_dictionary``
    are written plain, without dictionary encoding (for values unique per row, where a
    dictionary costs time and bytes and saves nothing)."""
    full = {"format_version": WRITE_VERSION if version is None else version, **header}
    table = table.replace_schema_metadata({HEADER_KEY: json.dumps(full, sort_keys=True)})
    sink = pa.BufferOutputStream()
    statistics: bool | list[str] = True
    if no_statistics:
        statistics = [
            path for path in _leaf_paths(table.schema) if path.split(".", 1)[0] not in no_statistics
        ]
    use_dictionary: bool | list[str] = True
    if no_dictionary:
        use_dictionary = [
            path for path in _leaf_paths(table.schema) if path.split(".", 1)[0] not in no_dictionary
        ]
    pq.write_table(
        table,
        sink,
        compression="zstd",
        use_dictionary=use_dictionary,
        write_page_checksum=True,
        row_group_size=_ROW_GROUP_ROWS,
        write_statistics=statistics,
    )
    return sink.getvalue().to_pybytes()


def _leaf_paths(schema: pa.Schema) -> list[str]:
    """The Parquet column paths of ``schema``'s leaves (as ``write_statistics`` names them:
    lists as ``.list.element``, struct fields as ``.name``)."""
    out: list[str] = []

    def walk(path: str, typ: pa.DataType) -> None:
        if pa.types.is_list(typ):
            walk(path + ".list.element", typ.value_type)
        elif pa.types.is_struct(typ):
            for i in range(typ.num_fields):
                walk(path + "." + typ.field(i).name, typ.field(i).type)
        else:
            out.append(path)

    for field in schema:
        walk(field.name, field.type)
    return out


def decode_parquet(
    data: bytes,
    object_type: str,
    what: str,
    expected_checksum: int | None = None,
    schema: pa.Schema | None = None,
    read_dictionary: tuple[str, ...] = (),
    columns: tuple[str, ...] | None = None,
) -> tuple[pa.Table, dict[str, Any]]:
    """Verify and parse a Parquet object; returns its table and its header.

    With ``schema``, every column of it must be present with exactly its type (columns
    not in ``schema`` are allowed and ignored), so a damaged footer cannot pass off a
    column of another type or name. Columns named in ``read_dictionary`` are read
    dictionary-encoded (their schema type is that of the dictionary's values). With
    ``columns``, only those columns are read (their pages verified as every page is).

    Objects are small and many: one ``ParquetFile`` read on this thread costs a fraction
    of ``pq.read_table``'s dataset machinery.
    """
    file, found, header = open_parquet(
        data, object_type, what, expected_checksum, read_dictionary=read_dictionary
    )
    if schema is not None:
        check_schema(found, schema, what)
    return read_parquet_columns(file, what, columns), header


def open_parquet(
    data: bytes,
    object_type: str,
    what: str,
    expected_checksum: int | None = None,
    *,
    read_dictionary: tuple[str, ...] = (),
    verify_pages: bool = True,
) -> tuple[pq.ParquetFile, pa.Schema, dict[str, Any]]:
    """A Parquet object opened (its footer parsed, no column read), its Arrow schema (made
    once: ``ParquetFile.schema_arrow`` makes it anew at each use) and its header, checked
    against ``expected_checksum`` where given. Page CRCs are verified as columns are read
    unless the checksum covers every byte already, or ``verify_pages`` is False (for a
    caller that checks what it reads itself)."""
    # the referrer's checksum covers every byte, so page CRCs would check nothing more
    # (and cost a third of a small object's read)
    crc = verify_pages and expected_checksum is None
    if expected_checksum is not None:
        verify_checksum(data, expected_checksum, what)
    try:
        try:
            file = pq.ParquetFile(
                pa.BufferReader(data),
                page_checksum_verification=crc,
                read_dictionary=list(read_dictionary) or None,
            )
        except KeyError:  # no such column: the header and schema checks say what is wrong
            file = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=crc)
        found = file.schema_arrow
    except (pa.ArrowException, OSError, ValueError, KeyError, IndexError) as e:
        raise FormatError(f"{what}: not a readable Parquet object ({e})") from e
    header = _header_from_metadata(found.metadata, what)
    return file, found, check_header(header, object_type, what)


def read_parquet_columns(
    file: pq.ParquetFile, what: str, columns: tuple[str, ...] | None = None
) -> pa.Table:
    """The columns (default: all) of an object ``open_parquet`` opened."""
    try:
        return file.read(columns=None if columns is None else list(columns), use_threads=False)
    except (pa.ArrowException, OSError, ValueError, KeyError, IndexError) as e:
        raise FormatError(f"{what}: not a readable Parquet object ({e})") from e


_PASSED: dict[int, tuple[pa.Schema, list[pa.Schema]]] = {}
"""Schemas found to pass ``check_schema``, per expected schema (a few each): objects of
one kind mostly share one, and an equal schema passes again without the field walk."""


def check_schema(found: pa.Schema, expected: pa.Schema, what: str) -> None:
    """Every column of ``expected`` is in ``found``, with exactly its type."""
    seen = _PASSED.get(id(expected))
    if seen is not None and seen[0] is expected and any(found.equals(s) for s in seen[1]):
        return
    _check_fields(found, expected, what)
    if seen is None or seen[0] is not expected:
        seen = _PASSED[id(expected)] = (expected, [])
    if len(seen[1]) < 8:
        seen[1].append(found.remove_metadata())


def _check_fields(found: pa.Schema, expected: pa.Schema, what: str) -> None:
    try:
        for field in expected:
            want = field.type
            if pa.types.is_timestamp(want) and want.unit == "s":  # Parquet stores these as ms
                want = pa.timestamp("ms", tz=want.tz)
            i = found.get_field_index(field.name)
            got = found.field(i).type if i >= 0 else None
            if got is not None and pa.types.is_dictionary(got):
                got = got.value_type
            if got is None or not got.equals(want):
                raise FormatError(
                    f"{what}: column {field.name!r} is missing or has the wrong type (want {want})"
                )
    except (pa.ArrowException, ValueError) as e:  # e.g. a column name that is not UTF-8
        raise FormatError(f"{what}: damaged schema ({e})") from e


def decode_parquet_header(tail: bytes, object_type: str, what: str) -> dict[str, Any] | None:
    """Parse the header from the last bytes of a Parquet object, without its row data.

    Returns None if ``tail`` does not hold the whole footer (read more and retry).
    """
    if len(tail) < 12 or tail[-4:] != b"PAR1":
        if len(tail) >= 12:
            raise FormatError(f"{what}: not a Parquet object (no trailing magic)")
        return None
    footer_len = int.from_bytes(tail[-8:-4], "little")
    if footer_len + 8 > len(tail):
        return None
    try:
        meta = pq.read_metadata(pa.BufferReader(b"PAR1" + tail[-(footer_len + 8) :]))
    except (pa.ArrowException, OSError, ValueError) as e:
        raise FormatError(f"{what}: unreadable Parquet footer ({e})") from e
    header = _header_from_metadata(meta.metadata, what)
    return check_header(header, object_type, what)


def _header_from_metadata(metadata: dict[bytes, bytes] | None, what: str) -> Any:
    raw = (metadata or {}).get(HEADER_KEY)
    if raw is None:
        raise FormatError(f"{what}: not a frazil object (no '{HEADER_KEY.decode()}' header)")
    try:
        return load_json(raw, f"{what}: header")
    except FormatError as e:
        raise FormatError(f"{what}: damaged header ({e})") from e


MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects accepted in any JSON frazil reads (headers, refs,
config, zarr.json, commit metadata). Real documents nest a few levels; hostile ones nest
thousands deep to exhaust the parser's stack."""

MAX_JSON_BYTES = 64 << 20
"""Largest JSON document accepted (zarr.json with large attributes stays far below)."""

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPEN = re.compile(rb"[\[{]")
_OPENERS = np.frombuffer(b"[{", np.uint8)
_CLOSERS = np.frombuffer(b"]}", np.uint8)


def json_depth(data: bytes) -> int:
    """The deepest nesting of ``[`` / ``{`` in a JSON text (strings skipped), computed
    without parsing it (so without recursion), in bulk."""
    if not _OPEN.search(data):
        return 0
    codes = np.frombuffer(_STRING.sub(b"", data), np.uint8)
    steps = np.isin(codes, _OPENERS).astype(np.int64) - np.isin(codes, _CLOSERS).astype(np.int64)
    return int(np.cumsum(steps).max(initial=0))


def load_json(data: bytes | bytearray | memoryview | str, what: str) -> Any:
    """Parse untrusted JSON: ``FormatError`` naming ``what`` for invalid text, for more
    than ``MAX_JSON_BYTES`` or for nesting deeper than ``MAX_JSON_DEPTH`` (checked before
    parsing, so a hostile document never reaches the recursive parser). Text is parsed
    as it is (no round trip through bytes)."""
    if isinstance(data, str):
        doc: str | bytes = data
        raw = None if 4 * len(data) <= MAX_JSON_BYTES else data.encode("utf-8", "surrogatepass")
        openers = data.count("[") + data.count("{")
    else:
        doc = raw = bytes(data)
        openers = raw.count(b"[") + raw.count(b"{")
    if raw is not None and len(raw) > MAX_JSON_BYTES:
        raise FormatError(
            f"{what}: {len(raw)} bytes of JSON, more than the {MAX_JSON_BYTES} accepted"
        )
    # nesting is at most the number of openers: find the depth only of a text that could
    # be too deep
    if openers > MAX_JSON_DEPTH:
        text = doc.encode("utf-8", "surrogatepass") if isinstance(doc, str) else doc
        depth = json_depth(text)
        if depth > MAX_JSON_DEPTH:
            raise FormatError(
                f"{what}: JSON nested {depth} levels deep, more than the {MAX_JSON_DEPTH} accepted"
            )
    try:
        if isinstance(doc, str):  # compact text parses without json.loads' scans
            with contextlib.suppress(ValueError):
                value, end = _DECODER.raw_decode(doc)
                if end == len(doc):
                    return value
        return json.loads(doc)  # whitespace around the value, or the error to report
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise FormatError(f"{what}: not valid JSON ({e})") from None


_DECODER = json.JSONDecoder()


def encode_json(obj: dict[str, Any]) -> bytes:
    """Canonical JSON for small objects (refs, config): sorted keys, UTF-8, newline."""
    return (json.dumps(obj, sort_keys=True, indent=1) + "\n").encode("utf-8")


def encode_json_with_log(obj: dict[str, Any], ops: list[Any] | None) -> bytes:
    """``encode_json(obj)`` with an operations log (SPEC §6.1) as a last key, ``ops``, on
    one compact line: the log is most of the document, and JSON's indenting encoder is
    slow."""
    text = json.dumps(obj, sort_keys=True, indent=1)
    if ops is not None:
        log = json.dumps(ops, sort_keys=True, separators=(",", ":"))
        text = f'{text[:-2]},\n "ops": {log}\n}}' if obj else f'{{\n "ops": {log}\n}}'
    return (text + "\n").encode("utf-8")


def decode_json(data: bytes, object_type: str, what: str) -> dict[str, Any]:
    return check_header(load_json(data, what), object_type, what)


def json_checksum(obj: Any) -> str:
    """Checksum of a JSON value's canonical text; used to self-check small headers."""
    return checksum_hex(checksum(json.dumps(obj, sort_keys=True).encode("utf-8")))
