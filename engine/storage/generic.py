"""Storage on any other fsspec filesystem (GCS, Azure, SFTP, fsspec's memory, ...), refused
for writing unless the user accepts that it has no conditional writes.

frazil's commits are safe because a branch ref moves only by an atomic compare-and-swap.
fsspec's generic API has no conditional put, so on a filesystem reached only through it
two writers can both "win" and one commit is silently lost. ``fsspec_storage`` therefore:

* sends ``file://`` and ``s3://`` URLs to frazil's own backends, which do have
  conditional writes (``local_filesystem_storage``, ``s3_storage``), read-only
  (``ReadOnlyStorage``) with ``read_only=True``; their ``storage_options`` are mapped to
  those backends' arguments, and an option they do not understand is refused, never
  dropped;
* opens any other filesystem read-only when ``read_only=True``;
* refuses to open it for writing, with an error that says why and what to pass, unless
  ``unsafe_use_conditional_update=False`` and ``unsafe_use_conditional_create=False``
  (Icechunk's setting names): then refs are written by check-then-put and a warning says
  that concurrent commits can be lost. Use that only with a single writer.

Versions are the xxh3 checksum of an object's bytes (``versions_follow_content``). The
filesystem's blocking calls run in the engine's thread pool.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Sequence
from typing import Any

from frazil.format.common import checksum, checksum_hex

from ..errors import InvalidInputError, NotFoundError, ReadOnlyError, StorageError
from .base import ByteRange, PutResult, Storage, slice_range, validate_key


def _unsafe_hint() -> str:
    return (
        "pass unsafe_use_conditional_update=False and unsafe_use_conditional_create="
        "False to write anyway with a single writer (concurrent commits can then be "
        "lost), or read_only=True to read"
    )


class FsspecStorage(Storage):
    """Objects under ``root`` of an fsspec filesystem. Build one with ``fsspec_storage``."""

    supports_conditional_writes = False
    versions_follow_content = True

    def __init__(self, fs: Any, root: str, *, read_only: bool, url: str | None = None) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.read_only = read_only
        self.url = url or self.fs.unstrip_protocol(self.root)

    def describe(self) -> str:
        return self.url + (" (read-only)" if self.read_only else "")

    def __repr__(self) -> str:
        return f"<FsspecStorage {self.describe()}>"

    def __getstate__(self) -> dict[str, Any]:
        return {"fs": self.fs, "root": self.root, "read_only": self.read_only, "url": self.url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["fs"],
            state["root"],
            read_only=state["read_only"],
            url=state["url"],
        )

    def _path(self, key: str) -> str:
        return f"{self.root}/{validate_key(key)}"

    async def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFoundError(f"{what} in {self.describe()}: not found") from None
        except OSError as e:
            raise StorageError(f"{what} in {self.describe()}: {e}") from e

    def _check_writable(self, key: str) -> None:
        if self.read_only:
            raise ReadOnlyError(f"cannot write {key!r}: {self.describe()} was opened read-only")

    def _read(self, path: str) -> bytes:
        if not self.fs.isfile(path):  # a folder (a prefix of keys) is not an object
            raise FileNotFoundError(path)
        return bytes(self.fs.cat_file(path))

    async def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        data = await self._call(f"reading {key!r}", self._read, self._path(key))
        return slice_range(data, byte_range)

    async def get_with_version(self, key: str) -> tuple[bytes, str]:
        data = await self.get(key)
        return data, checksum_hex(checksum(data))

    async def put(self, key: str, data: bytes) -> None:
        self._check_writable(key)
        await self._call(f"writing {key!r}", self.fs.pipe_file, self._path(key), bytes(data))

    async def _current(self, key: str) -> str | None:
        try:
            return (await self.get_with_version(key))[1]
        except NotFoundError:
            return None

    async def put_if_absent(self, key: str, data: bytes) -> PutResult:
        return await self.put_if_version(key, data, None)

    async def put_if_version(self, key: str, data: bytes, version: str | None) -> PutResult:
        """Check, then put: not atomic (this filesystem has no conditional writes)."""
        self._check_writable(key)
        current = await self._current(key)
        if current != version:
            return PutResult(False, current)
        await self.put(key, data)
        return PutResult(True, checksum_hex(checksum(bytes(data))))

    async def exists(self, key: str) -> bool:
        return bool(await self._call(f"looking up {key!r}", self.fs.isfile, self._path(key)))

    async def list(self, prefix: str) -> list[str]:
        base = self.root + "/"

        def walk() -> list[str]:
            if not self.fs.exists(self.root):
                return []
            return [
                p[len(base) :]
                for p in self.fs.find(self.root)
                if p.startswith(base) and p[len(base) :].startswith(prefix)
            ]

        found: list[str] = await self._call(f"listing {prefix!r}", walk)
        return sorted(found)

    async def size(self, key: str) -> int:
        path = self._path(key)

        def size() -> int:
            if not self.fs.isfile(path):
                raise FileNotFoundError(path)
            return int(self.fs.size(path))

        return int(await self._call(f"looking up {key!r}", size))

    async def delete(self, keys: Sequence[str]) -> None:
        if keys:
            self._check_writable(keys[0])
        paths = [self._path(k) for k in keys]

        def remove() -> None:
            for p in paths:
                try:
                    if self.fs.isfile(p):
                        self.fs.rm_file(p)
                except FileNotFoundError:
                    pass

        await self._call("deleting objects", remove)


_LOCAL_OPTIONS = frozenset({"auto_mkdir"})  # frazil creates folders as it writes anyway
_S3_OPTIONS = frozenset({"key", "secret", "token", "anon", "endpoint_url", "client_kwargs"})
_S3_CLIENT_OPTIONS = frozenset({"endpoint_url", "region_name"})


def _refuse_unknown(
    url: str, options: dict[str, Any], known: frozenset[str], what: str = "storage_options"
) -> None:
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidInputError(
            f"fsspec_storage({url!r}): {what} {unknown} are not understood by frazil's "
            f"backend for this URL (known: {sorted(known) or 'none'}); nothing is dropped "
            "silently: remove them, or build the storage with local_filesystem_storage() / "
            "s3_storage() and their own arguments"
        )


def _s3_from_options(
    url: str, path: str, options: dict[str, Any], conditional_update: bool, conditional_create: bool
) -> Storage:
    from .s3 import s3_storage

    _refuse_unknown(url, options, _S3_OPTIONS)
    client = options.get("client_kwargs") or {}
    if not isinstance(client, dict):
        raise InvalidInputError(f"fsspec_storage({url!r}): client_kwargs must be a dict")
    _refuse_unknown(url, client, _S3_CLIENT_OPTIONS, "client_kwargs")
    bucket, _, prefix = path.partition("/")
    endpoint = options.get("endpoint_url") or client.get("endpoint_url")
    return s3_storage(
        bucket=bucket,
        prefix=prefix,
        endpoint_url=endpoint,
        region=client.get("region_name"),
        allow_http=bool(endpoint and endpoint.startswith("http://")),
        access_key_id=options.get("key"),
        secret_access_key=options.get("secret"),
        session_token=options.get("token"),
        anonymous=bool(options.get("anon", False)),
        unsafe_use_conditional_update=conditional_update,
        unsafe_use_conditional_create=conditional_create,
    )


def fsspec_storage(
    url: str,
    *,
    storage_options: dict[str, Any] | None = None,
    read_only: bool = False,
    unsafe_use_conditional_update: bool = True,
    unsafe_use_conditional_create: bool = True,
) -> Storage:
    """Storage at an fsspec URL. See the module docstring for what is accepted."""
    import fsspec
    import fsspec.core

    if not isinstance(url, str) or "://" not in url:
        raise InvalidInputError(
            f"fsspec_storage takes a URL such as 'gcs://bucket/prefix', got {url!r}"
        )
    if storage_options is not None and not isinstance(storage_options, dict):
        raise InvalidInputError(
            f"storage_options must be a dict, got {type(storage_options).__name__}"
        )
    options = dict(storage_options or {})
    protocol, path = url.split("://", 1)
    protocol = protocol.lower()
    own: Storage | None = None
    if protocol == "file":
        from .local import local_filesystem_storage

        _refuse_unknown(url, options, _LOCAL_OPTIONS)
        own = local_filesystem_storage("/" + path.lstrip("/"))
    elif protocol in ("s3", "s3a"):
        own = _s3_from_options(
            url, path, options, unsafe_use_conditional_update, unsafe_use_conditional_create
        )
    if own is not None:
        if read_only:
            from .readonly import ReadOnlyStorage

            return ReadOnlyStorage(own)
        return own
    try:
        fs, root = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as e:
        raise InvalidInputError(f"cannot open {url!r} with fsspec: {e}") from e
    storage = FsspecStorage(fs, root, read_only=read_only, url=url.rstrip("/"))
    if read_only:
        return storage
    if unsafe_use_conditional_update or unsafe_use_conditional_create:
        raise InvalidInputError(
            f"{storage.describe()}: this filesystem has no conditional writes, so frazil "
            f"cannot move branches atomically and concurrent commits could be lost; "
            f"{_unsafe_hint()}"
        )
    warnings.warn(
        f"{storage.describe()}: no conditional writes: refs are written with plain "
        "check-then-put, so concurrent commits (and concurrent branch or tag creation) can "
        "be lost; use this only with a single writer",
        UserWarning,
        stacklevel=2,
    )
    return storage
