"""Virtual chunks: staging values (``VirtualChunkSpec``, bulk columns), ``ChunkType``, and the
resolver that reads byte ranges of external files through authorized containers.

Reading (``VirtualResolver``):

* a location resolves through the declared container with the longest prefix containing
  it, and only if whoever opened the repository authorized that prefix
  (``authorize_virtual_chunk_access``); otherwise ``VirtualChunkError`` names the prefix
  (or the lack of one) and how to fix it. Nothing is authorized by default;
* only byte ranges are requested. Reads made together (one ``get_partial_values`` call,
  or the concurrent ``get`` calls of one zarr read, gathered over a few event-loop
  turns) are grouped by file and adjacent ranges (gaps up to ``COALESCE_GAP`` bytes,
  requests up to ``COALESCE_MAX`` bytes) are fetched by one request; requests run
  concurrently;
* a reference with an ETag is served only if the response that carried its bytes has
  that ETag; one with a last-modified bound only if that response says the file was not
  modified after it. Anything else, and a file shorter than the reference, is a
  ``VirtualChunkError`` naming the location: other bytes are never returned;
* S3 goes through s3fs (frazil's S3 backend, one per bucket, with the container's store
  settings and the authorized credentials), HTTP(S) through frazil's read-only HTTP
  backend (aiohttp, as fsspec's HTTP filesystem), local files through fsspec's local
  filesystem in the I/O thread pool, GCS through gcsfs when it is installed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import enum
import fcntl
import json
import os
import stat
import weakref
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from frazil.format import ChunkKind, ChunkRef

from . import _aio
from .containers import (
    AnyCredential,
    S3Credentials,
    S3StoreConfig,
    VirtualChunkContainer,
    location_problem,
)
from .errors import (
    FrazilError,
    InvalidInputError,
    NotFoundError,
    StorageError,
    VirtualChunkError,
)
from .locations import Location, LocationError, parse_location
from .storage.base import ByteRange

if TYPE_CHECKING:
    from .config import RepositoryConfig

COALESCE_GAP = 64 * 1024
COALESCE_MAX = 32 << 20
_SETTLE_TURNS = 4
_SLICE = 1 << 16  # event-loop turns a batch of reads waits for more to join it


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
        return None, _utc_seconds(checksum)
    raise InvalidInputError(
        f"checksum must be an ETag (str) or a last-modified datetime, got {type(checksum).__name__}"
    )


def _utc_seconds(t: dt.datetime) -> dt.datetime:
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
                [_utc_seconds(v) if isinstance(v, dt.datetime) else v for v in raw.tolist()]
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
        f"virtual chunk location(s) {shown}{more} fall under no virtual chunk "
        f"container of this repository (declared: {declared or 'none'}); declare one "
        "with config.set_virtual_chunk_container(VirtualChunkContainer(prefix, store))"
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
    out: dict[str, AnyCredential | None] = {}
    for prefix, cred in auth.items():
        container = declared.get(prefix)
        if container is None:
            raise InvalidInputError(
                f"authorize_virtual_chunk_access names {prefix!r}, which is not a virtual "
                f"chunk container of this repository (declared: {sorted(declared) or 'none'})"
            )
        if cred is not None and not (
            isinstance(cred, S3Credentials) and container.store.type == "s3"
        ):
            raise InvalidInputError(
                f"credentials for {prefix!r} do not fit its {container.store.type} store"
            )
        out[prefix] = cred
    return out


# -- reading -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class VirtualRead:
    """Bytes ``start``..``end`` (absolute, end exclusive) of ``location``, with the
    reference's pins."""

    location: str
    start: int
    end: int
    etag: str | None = None
    last_modified: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class _Fetched:
    data: bytes
    etag: str | None
    last_modified: dt.datetime | None


def read_for(ref: ChunkRef, byte_range: ByteRange | None) -> VirtualRead:
    """The absolute range of ``ref``'s file that ``byte_range`` of its chunk selects."""
    assert ref.location is not None and ref.kind == ChunkKind.VIRTUAL
    n = ref.length
    if byte_range is None:
        s, e = 0, n
    else:
        s, end = byte_range
        if s < 0:
            s, e = max(n + s, 0), n
        else:
            s = min(s, n)
            e = n if end is None else max(min(end, n), s)
    return VirtualRead(ref.location, ref.offset + s, ref.offset + e, ref.etag, ref.last_modified)


def _plain_etag(etag: str) -> str:
    etag = etag.strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    return etag.strip('"')


def _check_pins(read: VirtualRead, got: _Fetched) -> None:
    if read.etag is not None:
        if got.etag is None:
            raise VirtualChunkError(
                f"virtual chunk source {read.location!r}: the reference is pinned to ETag "
                f"{read.etag!r} but the source reports no ETag, so it cannot be verified; "
                "refusing to read it",
                location=read.location,
            )
        if _plain_etag(got.etag) != _plain_etag(read.etag):
            raise VirtualChunkError(
                f"virtual chunk source {read.location!r} has changed since the reference "
                f"was made: its ETag is {got.etag!r}, the reference expects {read.etag!r}; "
                "refusing to read it",
                location=read.location,
            )
    if read.last_modified is not None:
        if got.last_modified is None:
            raise VirtualChunkError(
                f"virtual chunk source {read.location!r}: the reference is pinned to a "
                "last-modified time but the source reports none; refusing to read it",
                location=read.location,
            )
        bound = _utc_seconds(read.last_modified)
        if _utc_seconds(got.last_modified) > bound:
            raise VirtualChunkError(
                f"virtual chunk source {read.location!r} has changed since the reference "
                f"was made: modified at {got.last_modified.isoformat()}, after "
                f"{bound.isoformat()}; refusing to read it",
                location=read.location,
            )


class _S3Source:
    """S3 objects through frazil's S3 backend, one per bucket."""

    def __init__(self, container: VirtualChunkContainer, cred: AnyCredential | None) -> None:
        self.container = container
        self.cred = cred
        self._buckets: dict[str, Any] = {}

    def _storage(self, bucket: str) -> Any:
        from .storage.s3 import S3Config, S3Storage

        st = self._buckets.get(bucket)
        if st is None:
            store: Any = self.container.store
            cred = self.cred
            anonymous = store.anonymous or (cred is not None and cred.kind == "anonymous")
            static = cred is not None and cred.kind == "static" and not anonymous
            st = self._buckets[bucket] = S3Storage(
                S3Config(
                    bucket=bucket,
                    prefix="",
                    region=store.region,
                    endpoint_url=store.endpoint_url,
                    allow_http=store.allow_http,
                    access_key_id=cred.access_key_id if static else None,  # type: ignore[union-attr]
                    secret_access_key=cred.secret_access_key if static else None,  # type: ignore[union-attr]
                    session_token=cred.session_token if static else None,  # type: ignore[union-attr]
                    anonymous=anonymous,
                    from_env=not anonymous and not static,
                    force_path_style=store.force_path_style,
                )
            )
        return st

    async def fetch(self, loc: Location, start: int, end: int) -> _Fetched:
        from .storage.retry import retry_call

        st = self._storage(loc.host)
        what = f"reading bytes {start}-{end - 1} of virtual chunk source {loc}"
        try:
            data, resp, ranged = await retry_call(
                lambda: st.get_response(loc.key, f"bytes={start}-{end - 1}"), st._retry, what
            )
        except NotFoundError:
            raise NotFoundError(f"virtual chunk source {loc} does not exist") from None
        if not ranged:
            data = data[start:end]
        lm = resp.get("LastModified")
        return _Fetched(data, resp.get("ETag"), lm if isinstance(lm, dt.datetime) else None)


class _HttpSource:
    """Files over HTTP(S) through frazil's read-only HTTP backend, one per origin; a
    redirect to another scheme, host or port is refused (``HTTPStorage``)."""

    def __init__(self, container: VirtualChunkContainer, cred: AnyCredential | None) -> None:
        self._origins: dict[str, Any] = {}

    async def fetch(self, loc: Location, start: int, end: int) -> _Fetched:
        from .storage.http import HTTPConfig, HTTPStorage

        st = self._origins.get(loc.origin)
        if st is None:
            st = self._origins[loc.origin] = HTTPStorage(HTTPConfig(loc.origin))
        what = f"reading bytes {start}-{end - 1} of virtual chunk source {loc}"
        try:
            status, data, headers = await st._retrying(
                lambda: st._request(
                    "GET",
                    loc.key,
                    {"Range": f"bytes={start}-{end - 1}"},
                    limit=end - start,
                    upto=end,
                ),
                what,
            )
        except NotFoundError:
            raise NotFoundError(f"virtual chunk source {loc} does not exist") from None
        if status == 416:
            data = b""
        elif status != 206:  # the server ignored the range
            data = data[start:end]
        lm = headers.get("Last-Modified")
        return _Fetched(
            data, headers.get("ETag"), email.utils.parsedate_to_datetime(lm) if lm else None
        )


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NONBLOCK", 0)


def _opened_path(fd: int, path: str) -> str:
    """Where the open file ``fd`` really is (symlinks resolved by the kernel's own record
    of what it opened, so a link swapped after a check cannot redirect the read)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc (macOS and others): F_GETPATH, else the resolved name
        get_path = getattr(fcntl, "F_GETPATH", None)
        if get_path is not None:
            raw = fcntl.fcntl(fd, get_path, b"\0" * 1024)
            return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        return os.path.realpath(path)


def _read_local(path: str, root: str, start: int, end: int) -> _Fetched:
    """Bytes ``start``..``end`` of the file at ``path``, refused unless the file the
    kernel opened lies inside ``root`` (resolved) and is a regular file. Never reads or
    allocates past the end of the file."""
    where = f"file://{path}"
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFoundError(f"virtual chunk source {where} does not exist") from None
    except OSError as e:
        raise StorageError(f"reading virtual chunk source {where}: {e}") from e
    try:
        real = _opened_path(fd, path)
        real_root = os.path.realpath(root)
        if os.path.commonpath([real, real_root]) != real_root:
            raise VirtualChunkError(
                f"virtual chunk source {where} resolves to {real}, outside its container "
                f"{real_root} (through a symbolic link); refusing to read it",
                location=where,
            )
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise VirtualChunkError(
                f"virtual chunk source {where} is not a regular file; refusing to read it",
                location=where,
            )
        stop = max(start, min(end, st.st_size))  # never past the end of the file
        data = os.pread(fd, stop - start, start) if stop > start else b""
        while len(data) < stop - start:  # short reads of large ranges
            more = os.pread(fd, stop - start - len(data), start + len(data))
            if not more:
                break
            data += more
    except OSError as e:
        raise StorageError(f"reading virtual chunk source {where}: {e}") from e
    finally:
        os.close(fd)
    # the same form as object_store's local ETag: inode, mtime (µs) and size in hex
    etag = f"{st.st_ino:x}-{st.st_mtime_ns // 1000:x}-{st.st_size:x}"
    return _Fetched(data, etag, dt.datetime.fromtimestamp(st.st_mtime, dt.UTC))


def local_etag(path: str | os.PathLike[str]) -> str:
    """The ETag frazil reports for a local file (to pin references to local files)."""
    st = os.stat(path)
    return f"{st.st_ino:x}-{st.st_mtime_ns // 1000:x}-{st.st_size:x}"


class _LocalSource:
    """Files under the container's folder (its prefix's path); a file reached through a
    symbolic link that leads outside that folder is refused."""

    def __init__(self, container: VirtualChunkContainer, cred: AnyCredential | None) -> None:
        self.root = container.location.path or "/"

    async def fetch(self, loc: Location, start: int, end: int) -> _Fetched:
        return await _aio.in_thread(_read_local, loc.path, self.root, start, end)


class _GcsSource:
    def __init__(self, container: VirtualChunkContainer, cred: AnyCredential | None) -> None:
        self._fs: Any = None

    async def fetch(self, loc: Location, start: int, end: int) -> _Fetched:
        try:
            import gcsfs
        except ImportError:
            raise VirtualChunkError(
                f"reading {loc} needs gcsfs: pip install gcsfs", location=str(loc)
            ) from None
        fs = gcsfs.GCSFileSystem()
        path = f"{loc.host}/{loc.key}"
        before = await _aio.in_thread(fs.info, path)
        data = await _aio.in_thread(fs.cat_file, path, start, end)
        after = await _aio.in_thread(fs.info, path)
        if before.get("generation") != after.get("generation"):
            raise VirtualChunkError(
                f"virtual chunk source {loc} changed while it was read", location=str(loc)
            )
        updated = after.get("updated")
        lm = dt.datetime.fromisoformat(updated.replace("Z", "+00:00")) if updated else None
        return _Fetched(bytes(data), after.get("etag"), lm)


_SOURCES: dict[str, type[Any]] = {
    "s3": _S3Source,
    "http": _HttpSource,
    "local": _LocalSource,
    "gcs": _GcsSource,
}


class _Batcher:
    """Reads submitted on one loop within a few turns of each other go out together."""

    def __init__(self, resolver: VirtualResolver, loop: asyncio.AbstractEventLoop) -> None:
        self.resolver = resolver
        self.loop = loop
        self.pending: list[tuple[VirtualRead, asyncio.Future[bytes]]] = []
        self.turns = 0
        self.seen = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def submit(self, read: VirtualRead) -> asyncio.Future[bytes]:
        fut: asyncio.Future[bytes] = self.loop.create_future()
        self.pending.append((read, fut))
        if len(self.pending) == 1:
            self.turns, self.seen = 0, 1
            self.loop.call_soon(self._tick)
        return fut

    def _tick(self) -> None:
        if len(self.pending) != self.seen and self.turns < _SETTLE_TURNS:
            self.turns += 1
            self.seen = len(self.pending)
            self.loop.call_soon(self._tick)
            return
        items, self.pending = self.pending, []
        task = self.loop.create_task(self._run(items))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, items: list[tuple[VirtualRead, asyncio.Future[bytes]]]) -> None:
        try:
            results = await self.resolver.read_many([r for r, _ in items])
        except BaseException as e:  # never leave a reader waiting
            results = [e] * len(items)
        for (_, fut), res in zip(items, results):
            if fut.done():
                continue
            if isinstance(res, BaseException):
                fut.set_exception(res)
            else:
                fut.set_result(res)


class VirtualResolver:
    """Reads virtual chunks of one repository: its config's containers (looked up live),
    the authorization it was opened with, and which stored containers the opener did not
    confirm (``untrusted``: prefix -> the container as the stored config declares it)."""

    def __init__(
        self,
        config: RepositoryConfig,
        auth: Mapping[str, AnyCredential | None],
        untrusted: Mapping[str, VirtualChunkContainer] | None = None,
    ) -> None:
        self.config = config
        self.auth = dict(auth)
        self.untrusted = dict(untrusted or {})
        self.requests = 0  # requests sent to sources (for tests and benchmarks)
        self._sources: dict[tuple[str, str], Any] = {}
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Batcher] = (
            weakref.WeakKeyDictionary()
        )
        _aio.reset_in_child(self)

    def _after_fork(self) -> None:
        self._sources = {}
        self._batchers = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"<VirtualResolver authorized={sorted(self.auth)}>"

    def authorized_container(self, location: str) -> tuple[VirtualChunkContainer, Location]:
        """The container to read ``location`` through and the location's canonical form
        (the only form used to read it), or ``VirtualChunkError``."""
        try:
            loc = parse_location(location)
        except LocationError as e:
            raise VirtualChunkError(
                f"cannot read virtual chunk: {e}",
                location=location if isinstance(location, str) else None,
            ) from None
        container = container_for(self.config, loc)
        if container is None:
            raise VirtualChunkError(
                outside_message([location], self.config) + ", and authorize it when "
                "opening the repository",
                location=location,
            )
        prefix = container.url_prefix
        if prefix not in self.auth:
            raise VirtualChunkError(
                f"virtual chunk container {prefix!r} is not authorized, so frazil refuses "
                f"to read {location!r}: open the repository with "
                f"authorize_virtual_chunk_access=frazil.containers_credentials("
                f"{{{prefix!r}: credentials}}) (credentials None: those of the "
                "environment)",
                location=location,
                url_prefix=prefix,
            )
        problem = unconfirmed_endpoint(container, self.auth[prefix], self.untrusted)
        if problem is not None:
            raise VirtualChunkError(problem, location=location, url_prefix=prefix)
        return container, loc

    def _source(self, container: VirtualChunkContainer) -> Any:
        key = (container.url_prefix, json.dumps(container.to_dict(), sort_keys=True))
        src = self._sources.get(key)
        if src is None:
            src = self._sources[key] = _SOURCES[container.store.type](
                container, self.auth.get(container.url_prefix)
            )
        return src

    async def read(self, ref: ChunkRef, byte_range: ByteRange | None = None) -> bytes:
        """One chunk (or a range of it); batched with reads made at about the same time."""
        read = read_for(ref, byte_range)
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            batcher = self._batchers[loop] = _Batcher(self, loop)
        return await batcher.submit(read)

    async def read_many(self, reads: Sequence[VirtualRead]) -> list[bytes | BaseException]:
        """Every read's bytes or its error; adjacent ranges of a file are coalesced."""
        out: list[bytes | BaseException] = [b""] * len(reads)
        by_file: dict[Location, list[int]] = {}
        containers: dict[Location, VirtualChunkContainer] = {}
        for i, r in enumerate(reads):
            try:
                container, loc = self.authorized_container(r.location)
            except VirtualChunkError as e:
                out[i] = e
                continue
            containers[loc] = container
            if r.end > r.start:
                by_file.setdefault(loc, []).append(i)
        jobs: list[Awaitable[None]] = []
        for loc, idx in by_file.items():
            idx.sort(key=lambda i: reads[i].start)
            group = [idx[0]]
            lo, hi = reads[idx[0]].start, reads[idx[0]].end
            for i in idx[1:]:
                r = reads[i]
                if r.start <= hi + COALESCE_GAP and max(hi, r.end) - lo <= COALESCE_MAX:
                    group.append(i)
                    hi = max(hi, r.end)
                    continue
                jobs.append(self._fetch(containers[loc], loc, lo, hi, group, reads, out))
                group, lo, hi = [i], r.start, r.end
            jobs.append(self._fetch(containers[loc], loc, lo, hi, group, reads, out))
        await _aio.gather_limited(jobs)
        return out

    async def _fetch(
        self,
        container: VirtualChunkContainer,
        loc: Location,
        lo: int,
        hi: int,
        group: list[int],
        reads: Sequence[VirtualRead],
        out: list[bytes | BaseException],
    ) -> None:
        self.requests += 1
        try:
            got = await self._source(container).fetch(loc, lo, hi)
        except FrazilError as e:
            for i in group:
                out[i] = e
            return
        except Exception as e:  # an unexpected library error: still the caller's error
            err = StorageError(f"reading virtual chunk source {loc}: {type(e).__name__}: {e}")
            for i in group:
                out[i] = err
            return
        for i in group:
            r = reads[i]
            data = got.data[r.start - lo : r.end - lo]
            try:
                if len(data) != r.end - r.start:
                    raise VirtualChunkError(
                        f"virtual chunk source {r.location!r} is shorter than referenced: "
                        f"bytes {r.start}-{r.end - 1} asked, {len(data)} of them there; "
                        "refusing to read it",
                        location=r.location,
                    )
                _check_pins(r, got)
            except VirtualChunkError as e:
                out[i] = e
                continue
            out[i] = data


def unconfirmed_endpoint(
    container: VirtualChunkContainer,
    cred: AnyCredential | None,
    untrusted: Mapping[str, VirtualChunkContainer],
) -> str | None:
    """Why the reader's credentials must not be sent through ``container``, or None.

    Credentials (keys given, or the environment's) are sent only to store settings the
    reader confirmed: a container whose S3 store names an endpoint of its own, or allows
    plain http, counts as confirmed when the reader passed it (in ``config=`` when
    opening, or by creating the repository), not when it comes only from the stored
    config. Anonymous reads send nothing secret and need no confirmation."""
    store = container.store
    if not isinstance(store, S3StoreConfig) or store.anonymous:
        return None
    if cred is not None and cred.kind == "anonymous":
        return None
    if store.endpoint_url is None and not store.allow_http:
        return None  # the provider's own endpoint, over https
    if untrusted.get(container.url_prefix) != container:
        return None  # the reader passed these settings
    where = store.endpoint_url or "the default endpoint"
    how = " over plain http" if store.allow_http else ""
    return (
        f"virtual chunk container {container.url_prefix!r} would send your credentials to "
        f"{where}{how}, an endpoint named by the repository's stored config, not by you; "
        "frazil does not send credentials where a repository alone says. If you trust it, "
        "confirm it when opening: Repository.open(storage, config=cfg, "
        "authorize_virtual_chunk_access=...) with cfg.set_virtual_chunk_container("
        f"VirtualChunkContainer({container.url_prefix!r}, s3_store(endpoint_url="
        f"{store.endpoint_url!r}, allow_http={store.allow_http!r}, ...))); or read it "
        "with frazil.s3_anonymous_credentials()"
    )
