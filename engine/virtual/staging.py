"""Staging virtual chunk references: ``VirtualChunkSpec``, ``ChunkType``, the bulk columns of
``set_virtual_refs_arrays``, and which declared container (if any) holds a location and
whether a reader's authorization fits the repository's containers."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ..errors import InvalidInputError
from ..storage.azure import AnyAzureCredential
from ..storage.gcs import AnyGcsCredential
from .containers import AnyCredential, S3Credentials, VirtualChunkContainer, location_problem
from .locations import Location, LocationError, parse_location

if TYPE_CHECKING:
    from ..config import RepositoryConfig

_SLICE = 1 << 16  # locations converted to Arrow this many at a time


class ChunkType(enum.Enum):
    """What a chunk is (``Session.chunk_type``)."""

    UNINITIALIZED = "uninitialized"
    INLINE = "inline"
    NATIVE = "native"
    VIRTUAL = "virtual"


@dataclass(frozen=True)
class VirtualChunkSpec:
    """One virtual reference for ``store.set_virtual_refs`` (Icechunk's name): chunk
    ``index``, ``length`` bytes at ``offset`` of ``location``, optionally pinned by the
    source's ETag or by a last-modified bound."""

    index: Sequence[int]
    location: str
    offset: int
    length: int
    etag_checksum: str | None = None
    last_updated_at_checksum: dt.datetime | None = None


def split_checksum(checksum: object) -> tuple[str | None, dt.datetime | None]:
    """``set_virtual_ref``'s ``checksum``: an ETag string or a last-modified ``datetime``
    (naive means UTC) -> (etag, last_modified)."""
    if checksum is None:
        return None, None
    if isinstance(checksum, str):
        if not checksum:
            raise InvalidInputError("an ETag checksum must not be empty")
        return checksum, None
    if isinstance(checksum, dt.datetime):
        return None, utc_seconds(checksum)
    raise InvalidInputError(
        f"checksum must be an ETag (str) or a last-modified datetime, got {type(checksum).__name__}"
    )


def utc_seconds(t: dt.datetime) -> dt.datetime:
    t = t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)
    return t.replace(microsecond=0)


# -- bulk columns --------------------------------------------------------------------------
_ROW_TYPES = {
    "offset": pa.int64(),
    "length": pa.int64(),
    "location": pa.dictionary(pa.int32(), pa.string()),
    "etag": pa.string(),
    "last_modified": pa.timestamp("s", tz="UTC"),
}


def _arrow(values: Any) -> pa.Array | None:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    return values if isinstance(values, pa.Array) else None


def location_column(locations: Any, n: int) -> pa.DictionaryArray:
    """Locations as a dictionary-encoded Arrow array of ``n`` strings (nulls allowed):
    from one string (every chunk), an Arrow array, or a numpy array or sequence."""
    if isinstance(locations, str):
        return pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(n, np.int32)), pa.array([locations], pa.string())
        )
    arr = _arrow(locations)
    if arr is None:
        raw = np.asarray(locations)
        if raw.dtype.kind not in "US":  # Arrow converts fixed-width strings in bulk
            raw = np.asarray(locations, dtype=object)
        raw = raw.reshape(-1)
        # encoded slice by slice, so the full string column never exists at once
        parts = [
            pa.array(raw[i : i + _SLICE]).cast(pa.string()).dictionary_encode()
            for i in range(0, len(raw), _SLICE)
        ] or [pa.array([], pa.string()).dictionary_encode()]
        arr = pa.chunked_array(parts).unify_dictionaries().combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = pa.DictionaryArray.from_arrays(
            arr.indices.cast(pa.int32()), arr.dictionary.cast(pa.string())
        )
    else:
        arr = arr.cast(pa.string()).dictionary_encode()
    assert isinstance(arr, pa.DictionaryArray)
    if len(arr) != n:
        raise InvalidInputError(f"locations: expected {n} values, got {len(arr)}")
    return arr


def int_column(values: Any, n: int, name: str) -> np.ndarray:
    """Non-negative int64 values (numpy, Arrow or a sequence) as a flat numpy array."""
    arr = _arrow(values)
    if arr is not None:
        if arr.null_count:
            raise InvalidInputError(f"{name}: null values are not allowed")
        out = arr.cast(pa.int64()).to_numpy(zero_copy_only=False)
    else:
        out = np.asarray(values)
        if out.dtype.kind not in "iu":
            raise InvalidInputError(f"{name} must be integers, got dtype {out.dtype}")
        out = out.astype(np.int64, copy=False).reshape(-1)
    if len(out) != n:
        raise InvalidInputError(f"{name}: expected {n} values, got {len(out)}")
    if n and out.min() < 0:
        raise InvalidInputError(f"{name} must be >= 0")
    return out


def optional_column(values: Any, n: int, name: str) -> pa.Array | None:
    """An optional etag (string) or last_modified (timestamp, whole seconds) column."""
    if values is None:
        return None
    want = _ROW_TYPES[name]
    arr = _arrow(values)
    if arr is None:
        raw = np.asarray(values).reshape(-1)
        if name == "last_modified" and raw.dtype.kind == "M":
            arr = pa.array(raw.astype("datetime64[s]")).cast(want)
        else:
            arr = pa.array(
                [utc_seconds(v) if isinstance(v, dt.datetime) else v for v in raw.tolist()]
                if name == "last_modified"
                else raw,
                want if name == "etag" else None,
            )
    try:
        if name == "last_modified" and pa.types.is_timestamp(arr.type) and arr.type.tz is None:
            arr = arr.cast(pa.timestamp(arr.type.unit, tz="UTC"))
        arr = arr.cast(want, safe=False)
    except (pa.ArrowException, ValueError) as e:
        raise InvalidInputError(f"{name}: cannot use these values ({e})") from None
    if len(arr) != n:
        raise InvalidInputError(f"{name}: expected {n} values, got {len(arr)}")
    return arr


def block_rows(
    locations: pa.DictionaryArray,
    offsets: np.ndarray,
    lengths: np.ndarray,
    etags: pa.Array | None,
    last_modified: pa.Array | None,
) -> pa.Table:
    """The Arrow table a ``VirtualBlock`` keeps."""
    cols: dict[str, Any] = {
        "offset": pa.array(offsets, pa.int64()),
        "length": pa.array(lengths, pa.int64()),
        "location": locations,
    }
    if etags is not None:
        cols["etag"] = etags
    if last_modified is not None:
        cols["last_modified"] = last_modified
    return pa.table(cols)


def check_locations(
    values: Sequence[str | None], config: RepositoryConfig, validate: bool
) -> list[str]:
    """Refuse malformed locations; with ``validate``, return those under no container."""
    outside = []
    for loc in values:
        if loc is None:
            continue
        problem = location_problem(loc)
        if problem is not None:
            raise InvalidInputError(problem)
        if validate and container_for(config, loc) is None:
            outside.append(loc)
    return outside


def outside_message(locations: Sequence[str], config: RepositoryConfig) -> str:
    declared = sorted(config.virtual_chunk_containers or {})
    shown = ", ".join(repr(x) for x in locations[:5])
    more = f" and {len(locations) - 5} more" if len(locations) > 5 else ""
    return (
        f"invalid chunk location(s) {shown}{more}: they fall under no virtual chunk "
        f"container of this repository (declared: {declared or 'none'}); to use them, edit "
        "the repository configuration: declare one with "
        "config.set_virtual_chunk_container(VirtualChunkContainer(prefix, store))"
    )


# -- containers and authorization ------------------------------------------------------------
def container_for(
    config: RepositoryConfig, location: str | Location
) -> VirtualChunkContainer | None:
    """The declared container with the longest prefix containing ``location`` (compared
    in canonical form, prefix length counted in path segments)."""
    if isinstance(location, str):
        try:
            location = parse_location(location)
        except LocationError:
            return None
    best, depth = None, -1
    for c in (config.virtual_chunk_containers or {}).values():
        if c.contains(location) and len(c.location.segments) > depth:
            best, depth = c, len(c.location.segments)
    return best


def check_authorization(
    config: RepositoryConfig, auth: Mapping[str, AnyCredential | None] | None
) -> dict[str, AnyCredential | None]:
    """Validate ``authorize_virtual_chunk_access`` against the declared containers."""
    if auth is None:
        return {}
    if not isinstance(auth, Mapping):
        raise InvalidInputError(
            "authorize_virtual_chunk_access must be a dict (see frazil.containers_credentials)"
        )
    declared = config.virtual_chunk_containers or {}
    # a prefix names its container with or without the trailing "/" (prefixes match on
    # "/" boundaries, so both spellings mean the same locations)
    unslashed = {p.rstrip("/"): c for p, c in declared.items()}
    out: dict[str, AnyCredential | None] = {}
    for prefix, cred in auth.items():
        container = declared.get(prefix)
        if container is None and isinstance(prefix, str):
            container = unslashed.get(prefix.rstrip("/"))
        if container is None:
            raise InvalidInputError(
                f"authorize_virtual_chunk_access names {prefix!r}, which is not a virtual "
                f"chunk container of this repository (declared: {sorted(declared) or 'none'})"
            )
        if cred is not None and not (
            (isinstance(cred, S3Credentials) and container.store.type == "s3")
            or (isinstance(cred, AnyAzureCredential) and container.store.type == "azure")
            or (isinstance(cred, AnyGcsCredential) and container.store.type == "gcs")
        ):
            raise InvalidInputError(
                f"credentials for {prefix!r} do not fit its {container.store.type} store"
            )
        out[container.url_prefix] = cred
    return out
