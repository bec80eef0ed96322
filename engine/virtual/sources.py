"""Where virtual chunk bytes come from: one source per container store type (S3 through
frazil's S3 backend, Azure through its Azure backend, HTTP(S) through its read-only HTTP
backend, local files checked against the container's folder, GCS through its GCS backend),
each
fetching one byte range with what the response says about the file (ETag, last-modified)
for the resolver's pins."""

from __future__ import annotations

import datetime as dt
import os
import stat
from dataclasses import dataclass
from typing import Any

from .. import runtime
from ..errors import NotFoundError, StorageError, VirtualChunkError
from ..storage.azure import AzureCredentials
from ..storage.gcs import AnyGcsCredential, GcsCredentials
from .containers import AnyCredential, S3Credentials, VirtualChunkContainer
from .locations import Location

try:  # absent on Windows
    import fcntl
except ImportError:
    fcntl = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Fetched:
    """Bytes fetched from a source, with the ETag and last-modified time of the response
    that carried them."""

    data: bytes
    etag: str | None
    last_modified: dt.datetime | None


def _credentials_of(
    container: VirtualChunkContainer, cred: AnyCredential | None, kind: type[Any] | Any
) -> Any:
    """``cred`` if it is of the kind the container's store takes (or None)."""
    if cred is not None and not isinstance(cred, kind):
        raise VirtualChunkError(
            f"virtual chunk container {container.url_prefix!r} is a {container.store.type} "
            f"store, but its credentials are {type(cred).__qualname__}",
            url_prefix=container.url_prefix,
        )
    return cred


class _BucketSource:
    """Objects of a bucket-like store through one of frazil's storage backends, one
    storage per bucket (or Azure container): subclasses say which credentials the
    container takes (``CREDENTIALS``) and how to open one bucket (``_open``)."""

    CREDENTIALS: Any

    def __init__(self, container: VirtualChunkContainer, cred: AnyCredential | None) -> None:
        self.container = container
        self.cred = _credentials_of(container, cred, self.CREDENTIALS)
        self._buckets: dict[str, Any] = {}

    def _open(self, bucket: str) -> Any:
        raise NotImplementedError

    def _storage(self, bucket: str) -> Any:
        st = self._buckets.get(bucket)
        if st is None:
            st = self._buckets[bucket] = self._open(bucket)
        return st

    async def fetch(self, loc: Location, start: int, end: int) -> Fetched:
        try:
            got = await self._storage(loc.host).get_range_info(loc.key, start, end)
        except NotFoundError:
            raise NotFoundError(f"virtual chunk source {loc} does not exist") from None
        return Fetched(got.data, got.etag, got.last_modified)


class _S3Source(_BucketSource):
    """S3 objects through frazil's S3 backend (on obstore), one per bucket."""

    CREDENTIALS = S3Credentials

    def _open(self, bucket: str) -> Any:
        from ..storage.s3 import S3Config, s3_storage_from_config

        store: Any = self.container.store
        cred = self.cred
        anonymous = store.anonymous or (cred is not None and cred.kind == "anonymous")
        static = cred is not None and cred.kind == "static" and not anonymous
        refreshable = cred is not None and cred.kind == "refreshable" and not anonymous
        return s3_storage_from_config(
            S3Config(
                bucket=bucket,
                prefix="",
                region=store.region,
                endpoint_url=store.endpoint_url,
                allow_http=store.allow_http,
                access_key_id=cred.access_key_id if static else None,
                secret_access_key=cred.secret_access_key if static else None,
                session_token=cred.session_token if static else None,
                anonymous=anonymous,
                from_env=not anonymous and not static and not refreshable,
                force_path_style=store.force_path_style,
                get_credentials=cred.get_credentials if refreshable else None,
                current_credentials=cred.current if refreshable else None,
            )
        )


class _AzureSource(_BucketSource):
    """Azure blobs (``az://container/path``) through frazil's Azure backend, one per
    container."""

    CREDENTIALS = AzureCredentials.FromEnv | AzureCredentials.Static

    def _open(self, name: str) -> Any:
        from ..storage.azure import AzureSpec, AzureStorage

        store: Any = self.container.store
        options = tuple(sorted(store.options.items()))
        creds = self.cred if self.cred is not None else AzureCredentials.FromEnv()
        return AzureStorage(AzureSpec(store.account, name, "", creds, options))


class _HttpSource:
    """Files over HTTP(S) through frazil's read-only HTTP backend, one per origin; a
    redirect to another scheme, host or port is refused (``HTTPStorage``)."""

    def __init__(self, container: VirtualChunkContainer, cred: AnyCredential | None) -> None:
        self._origins: dict[str, Any] = {}

    async def fetch(self, loc: Location, start: int, end: int) -> Fetched:
        from ..storage.http import HTTPConfig, HTTPStorage

        st = self._origins.get(loc.origin)
        if st is None:
            st = self._origins[loc.origin] = HTTPStorage(HTTPConfig(loc.origin))
        try:
            got = await st.get_range_info(loc.key, start, end)
        except NotFoundError:
            raise NotFoundError(f"virtual chunk source {loc} does not exist") from None
        return Fetched(got.data, got.etag, got.last_modified)


# O_BINARY: without it Windows opens in text mode (CRLF and Ctrl-Z translated)
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_BINARY", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_NONBLOCK", 0)
)


def _opened_path(fd: int, path: str) -> str:
    """Where the open file ``fd`` really is (symlinks resolved by the kernel's own record
    of what it opened, so a link swapped after a check cannot redirect the read). Where
    the system keeps no such record to read (Windows), the name resolved just after the
    open."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc (macOS and others): F_GETPATH, else the resolved name
        get_path = getattr(fcntl, "F_GETPATH", None)
        if get_path is not None:
            raw = fcntl.fcntl(fd, get_path, b"\0" * 1024)
            return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        return os.path.realpath(path)


def _pread(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes at ``offset`` of ``fd``: ``os.pread``, else (Windows) a seek and a
    read (the descriptor is this call's own, so no other read moves its position)."""
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, size)


def _read_local(path: str, root: str, start: int, end: int) -> Fetched:
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
        data = _pread(fd, stop - start, start) if stop > start else b""
        while len(data) < stop - start:  # short reads of large ranges
            more = _pread(fd, stop - start - len(data), start + len(data))
            if not more:
                break
            data += more
    except OSError as e:
        raise StorageError(f"reading virtual chunk source {where}: {e}") from e
    finally:
        os.close(fd)
    # the same form as object_store's local ETag: inode, mtime (µs) and size in hex
    etag = f"{st.st_ino:x}-{st.st_mtime_ns // 1000:x}-{st.st_size:x}"
    return Fetched(data, etag, dt.datetime.fromtimestamp(st.st_mtime, dt.UTC))


def local_etag(path: str | os.PathLike[str]) -> str:
    """The ETag frazil reports for a local file (to pin references to local files)."""
    st = os.stat(path)
    return f"{st.st_ino:x}-{st.st_mtime_ns // 1000:x}-{st.st_size:x}"


class _LocalSource:
    """Files under the container's folder (its prefix's path); a file reached through a
    symbolic link that leads outside that folder is refused."""

    def __init__(self, container: VirtualChunkContainer, cred: AnyCredential | None) -> None:
        self.root = container.location.path or "/"

    async def fetch(self, loc: Location, start: int, end: int) -> Fetched:
        return await runtime.in_thread(_read_local, loc.path, self.root, start, end)


class _GcsSource(_BucketSource):
    """GCS objects (``gs://bucket/path``) through frazil's GCS backend, one per bucket."""

    CREDENTIALS = AnyGcsCredential

    def _open(self, bucket: str) -> Any:
        from ..storage.gcs import GcsSpec, GcsStorage

        store: Any = self.container.store
        options = tuple(sorted(store.opts.items()))
        creds = self.cred if self.cred is not None else GcsCredentials.FromEnv()
        return GcsStorage(GcsSpec(bucket, "", creds, options))


SOURCES: dict[str, type[Any]] = {
    "s3": _S3Source,
    "http": _HttpSource,
    "local": _LocalSource,
    "gcs": _GcsSource,
    "azure": _AzureSource,
}
