"""Storage on obstore (the Python bindings of Rust's ``object_store``): the backend of every
cloud store reached through it (Azure Blob Storage, Google Cloud Storage), with conditional
writes.

* Conditional create is a put with ``mode="create"`` (Azure's ``If-None-Match: *``, GCS's
  ``x-goog-if-generation-match: 0``); compare-and-swap is a put with ``mode={<version key>:
  <version read>}`` (Azure: ``If-Match`` on the ETag; GCS: ``x-goog-if-generation-match`` on
  the generation; ``StoreSpec.version_key`` says which). A lost
  race is recognized by obstore's typed errors (``AlreadyExistsError``,
  ``PreconditionError``; ``NotFoundError`` for a swap of a missing key), never by message
  text, and is a ``PutResult(ok=False)`` with the key's current version.
* Versions are ETags (Azure) or generations (GCS) taken from the answer that carried the
  bytes, or from a fresh HEAD. Both change on every write, even of the same bytes.
* Retries: idempotent requests (reads, listings, deletes, puts of immutable objects) are
  retried by obstore itself on throttling, 5xx, timeouts and dropped connections, with
  frazil's attempts and backoff (``ObjectStoreSettings``). Conditional puts go through a
  second client that never retries on its own: an attempt that failed without a typed
  answer is an unknown outcome, retried by ``frazil.storage.retry.conditional_put``, which
  reads the object back to tell our landed write from another writer's.
* Errors are frazil's: ``NotFoundError`` for a missing key, ``StorageError`` naming the
  operation, the key and the store otherwise (the first line of obstore's message, without
  query strings, which can carry SAS signatures).
* Processes: stores are built lazily and again whenever the process changes (pid check),
  and shared by the storages of a process whose specs are equal (a cold open builds none);
  obstore's runtime does not survive ``os.fork``, so a forked child uses a fresh copy of
  its extension (``_obstore_runtime``). Pickling carries only the configuration.
* obstore's async calls run on any asyncio loop (no client belongs to a loop).
"""

from __future__ import annotations

import abc
import asyncio
import collections
import datetime as dt
import os
import re
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from ..errors import InvalidInputError, NotFoundError, StorageError, TransientStorageError
from ..runtime import at_fork_in_child
from . import _obstore_runtime
from .base import (
    ByteRange,
    ObjectInfo,
    ObjectInfos,
    PutResult,
    RangeInfo,
    Storage,
    validate_key,
)
from .retry import (
    RetrySettings,
    check_client_settings,
    conditional_put,
    read_back_with,
    retry_call,
)

T = TypeVar("T")

DELETE_BATCH = 256  # keys per obstore delete call


@dataclass(frozen=True, slots=True)
class ObjectStoreSettings:
    """Tuning of a backend on obstore.

    ``max_attempts`` (first try included), ``backoff_base`` and ``backoff_cap`` (seconds)
    govern retries of transient failures; ``connect_timeout`` and ``read_timeout`` are per
    request, in seconds; ``max_concurrency`` bounds the requests in flight per event loop."""

    max_attempts: int = 8
    backoff_base: float = 0.05
    backoff_cap: float = 5.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_concurrency: int = 64

    def __post_init__(self) -> None:
        check_client_settings(self)

    @property
    def retry(self) -> RetrySettings:
        return RetrySettings(self.max_attempts, self.backoff_base, self.backoff_cap)

    def client_options(self) -> dict[str, Any]:
        return {
            "connect_timeout": dt.timedelta(seconds=self.connect_timeout),
            "timeout": dt.timedelta(seconds=self.read_timeout),
        }

    def retry_config(self, retries: bool) -> dict[str, Any]:
        """obstore's retry configuration: ours, or none at all (conditional puts)."""
        backoff = {
            "init_backoff": dt.timedelta(seconds=max(self.backoff_base, 0.001)),
            "max_backoff": dt.timedelta(seconds=max(self.backoff_cap, 0.001)),
            "base": 2.0,
        }
        worst = self.max_attempts * (self.backoff_cap + self.read_timeout)
        return {
            "max_retries": self.max_attempts - 1 if retries else 0,
            "backoff": backoff,
            "retry_timeout": dt.timedelta(seconds=worst),
        }


class StoreSpec(abc.ABC):
    """Where the objects are and how to reach them: all an ``ObjectStoreStorage`` pickles.
    Subclasses (one per kind of store) are frozen dataclasses."""

    settings: ObjectStoreSettings
    #: which of obstore's metadata fields is the version a compare-and-swap is made on
    version_key: ClassVar[str] = "e_tag"

    @abc.abstractmethod
    def build(self, obstore: Any, *, retries: bool, shared: dict[str, Any]) -> Any:
        """A store of the obstore extension module ``obstore`` (see ``_obstore_runtime``),
        rooted at the repository's prefix; ``retries=False``: obstore never retries.
        ``shared``: a dict the builds of one process's clients share (e.g. one credential
        provider for both)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A URL-like name for messages (no secrets)."""


_QUERY = re.compile(r"\?[^\s]*")


def _short(e: BaseException) -> str:
    """The first line of an obstore error, with query strings (SAS tokens) cut out."""
    text = str(e).strip().split("\n", 1)[0]
    return _QUERY.sub("?...", text)[:500]


class _Stores:
    """The obstore clients of one process for one spec: ``main`` (obstore retries) and
    ``once`` (never retried: conditional puts; built on first use, so readers never pay
    for it). ``shared`` is what the spec's builds share (one credential provider)."""

    __slots__ = ("pid", "module", "spec", "shared", "main", "_once", "_lock")

    def __init__(self, module: Any, spec: StoreSpec) -> None:
        self.pid = os.getpid()
        self.module = module
        self.spec = spec
        self.shared: dict[str, Any] = {}
        self.main = spec.build(module, retries=True, shared=self.shared)
        self._once: Any = None
        self._lock = threading.Lock()

    def usable(self, module: Any) -> bool:
        return self.pid == os.getpid() and self.module is module

    @property
    def once(self) -> Any:
        if self._once is None:
            with self._lock:
                if self._once is None:
                    self._once = self.spec.build(self.module, retries=False, shared=self.shared)
        return self._once


_inherited_stores: list[_Stores] = []  # a forked child's copies of its parent's clients

#: clients shared by every storage of the process with an equal spec, so that a new storage
#: object (a cold open) reuses them instead of building HTTP clients again; least recently
#: used first, at most ``SHARED_CLIENTS``
SHARED_CLIENTS = 32
_shared: collections.OrderedDict[StoreSpec, _Stores] = collections.OrderedDict()
_shared_lock = threading.Lock()


def _reset_after_fork() -> None:
    global _shared_lock
    _shared_lock = threading.Lock()


at_fork_in_child(_reset_after_fork)


def _retire(stores: _Stores) -> None:
    """Stop using ``stores``: dropped if this process built them; a forked child keeps its
    parent's (dropping them could wait on threads that do not exist in the child)."""
    if stores.pid != os.getpid() or stores.module is not _obstore_runtime.extension():
        _inherited_stores.append(stores)


def _stores_for(spec: StoreSpec, module: Any) -> _Stores:
    """This process's clients for ``spec``: shared with equal specs where it is hashable."""
    try:
        hash(spec)
    except TypeError:  # e.g. a credential function that cannot be hashed
        return _Stores(module, spec)
    with _shared_lock:
        stores = _shared.get(spec)
        if stores is not None and stores.usable(module):
            _shared.move_to_end(spec)
            return stores
        if stores is not None:
            _retire(_shared.pop(spec))
        stores = _shared[spec] = _Stores(module, spec)
        while len(_shared) > SHARED_CLIENTS:
            _retire(_shared.popitem(last=False)[1])
        return stores


class ObjectStoreStorage(Storage):
    """Objects under a prefix of a store reached through obstore (see the module
    docstring). Built by ``azure_storage(...)`` and ``gcs_storage(...)``."""

    versions_follow_content = False

    def __init__(self, spec: StoreSpec) -> None:
        if not isinstance(spec, StoreSpec):
            raise InvalidInputError(
                "ObjectStoreStorage takes a StoreSpec; use azure_storage(...) or gcs_storage(...)"
            )
        self.spec = spec
        self._retry = spec.settings.retry
        self._stores: _Stores | None = None
        self._limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    def _limit(self) -> asyncio.Semaphore:
        """This event loop's bound on requests in flight (a semaphore belongs to a loop)."""
        loop = asyncio.get_running_loop()
        limit = self._limits.get(loop)
        if limit is None:
            limit = self._limits.setdefault(
                loop, asyncio.Semaphore(self.spec.settings.max_concurrency)
            )
        return limit

    def describe(self) -> str:
        return self.spec.describe()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"])  # type: ignore[misc]

    # -- clients -----------------------------------------------------------------------
    def _clients(self) -> _Stores:
        stores = self._stores
        module = _obstore_runtime.extension()
        if stores is not None and stores.usable(module):
            return stores
        if stores is not None and stores.pid != os.getpid():
            _inherited_stores.append(stores)  # built by another process: never used again
        try:
            stores = _stores_for(self.spec, module)
        except InvalidInputError:
            raise
        except Exception as e:
            raise InvalidInputError(f"cannot configure {self.describe()}: {_short(e)}") from e
        self._stores = stores
        return stores

    def _once_store(self, stores: _Stores) -> Any:
        """The never-retrying client of ``stores`` (built on first use)."""
        try:
            return stores.once
        except Exception as e:
            raise InvalidInputError(f"cannot configure {self.describe()}: {_short(e)}") from e

    def _error(self, e: BaseException, module: Any, what: str, key: str | None) -> BaseException:
        """frazil's error for obstore's exception ``e``."""
        where = f"{what} {key!r} in {self.describe()}" if key else f"{what} in {self.describe()}"
        x = module.exceptions
        if isinstance(e, x.NotFoundError | FileNotFoundError):
            return NotFoundError(f"{where}: not found")
        if isinstance(e, x.PermissionDeniedError | x.UnauthenticatedError):
            return StorageError(f"{where}: access refused ({type(e).__name__}): {_short(e)}")
        if isinstance(e, x.BaseError):
            return StorageError(f"{where}: {type(e).__name__}: {_short(e)}")
        return StorageError(f"{where}: {type(e).__name__}: {e}")

    async def _call(self, what: str, key: str | None, op: Callable[[Any, Any], Awaitable[T]]) -> T:
        """``await op(module, store)`` on the retrying client, errors translated."""
        stores = self._clients()
        try:
            async with self._limit():
                return await op(stores.module, stores.main)
        except Exception as e:
            raise self._error(e, stores.module, what, key) from e

    # -- reads -------------------------------------------------------------------------
    async def _get(self, key: str, options: dict[str, Any] | None) -> tuple[bytes, dict[str, Any]]:
        async def op(m: Any, store: Any) -> tuple[bytes, dict[str, Any]]:
            result = await m.get_async(store, key, options=options)
            data = await result.bytes_async()
            return bytes(data), dict(result.meta)

        return await self._call("reading", key, op)

    async def _head(self, key: str) -> dict[str, Any] | None:
        try:
            meta: dict[str, Any] = await self._call(
                "looking up", key, lambda m, store: m.head_async(store, key)
            )
        except NotFoundError:
            return None
        return meta

    async def _ranged(self, key: str, start: int, end: int | None) -> tuple[bytes, dict[str, Any]]:
        """Bytes ``start`` to ``end`` (None: to the end), fewer at the object's end; a
        negative ``start`` (and no end): the last ``-start`` bytes."""
        if start < 0 or (end is not None and end <= start):
            # Azure has no suffix ranges, and an empty range asks nothing: the size first
            meta = await self._head(key)
            if meta is None:
                raise NotFoundError(f"reading {key!r} in {self.describe()}: not found")
            if end is not None:
                return b"", meta
            start = max(0, int(meta["size"]) + start)
        wanted: Any = {"offset": start} if end is None else (start, end)
        try:
            return await self._get(key, {"range": wanted})
        except NotFoundError:
            raise
        except StorageError:
            # a range past the end is refused (416, an untyped error): an object that
            # exists and ends before ``start`` gives no bytes
            meta = await self._head(key)
            if meta is None:
                raise NotFoundError(f"reading {key!r} in {self.describe()}: not found") from None
            if start >= int(meta["size"]):
                return b"", meta
            raise

    async def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        validate_key(key)
        if byte_range is None:
            return (await self._get(key, None))[0]
        return (await self._ranged(key, byte_range[0], byte_range[1]))[0]

    async def get_range_info(self, key: str, start: int, end: int) -> RangeInfo:
        validate_key(key)
        data, meta = await self._ranged(key, start, end)
        lm = meta.get("last_modified")
        return RangeInfo(data, meta.get("e_tag"), lm if isinstance(lm, dt.datetime) else None)

    async def get_with_version(self, key: str) -> tuple[bytes, str]:
        validate_key(key)
        data, meta = await self._get(key, None)
        return data, str(meta.get(self.spec.version_key) or "")

    async def exists(self, key: str) -> bool:
        validate_key(key)
        return await self._head(key) is not None

    async def size(self, key: str) -> int:
        validate_key(key)
        meta = await self._head(key)
        if meta is None:
            raise NotFoundError(f"object {key!r} not found in {self.describe()}")
        return int(meta["size"])

    async def list(self, prefix: str) -> list[str]:
        return [i.key for i in await self.list_info(prefix)]

    async def list_info(self, prefix: str) -> ObjectInfos:
        # obstore lists by path (a folder), frazil by key prefix: list the folder, filter
        folder = prefix.rpartition("/")[0] or None
        if folder is not None and any(p in ("", ".", "..") for p in folder.split("/")):
            return []  # no valid key lies under it

        async def op(m: Any, store: Any) -> ObjectInfos:
            out: ObjectInfos = []
            async for batch in m.list(store, folder, chunk_size=1000):
                for meta in batch:
                    path = str(meta["path"])
                    if path.startswith(prefix):
                        lm = meta.get("last_modified")
                        out.append(ObjectInfo(path, int(meta["size"]), lm))
            return out

        infos = await self._call("listing", prefix, op)
        return sorted(infos, key=lambda i: i.key)

    # -- writes ------------------------------------------------------------------------
    async def put(self, key: str, data: bytes) -> None:
        validate_key(key)
        data = bytes(data)
        try:
            await self._call("writing", key, lambda m, store: m.put_async(store, key, data))
        except NotFoundError as e:  # a put never misses its key: its container is missing
            raise self._missing_container(key) from e

    def _missing_container(self, key: str) -> StorageError:
        return StorageError(
            f"writing {key!r} to {self.describe()}: not found: the container does not exist"
        )

    async def _version_now(self, key: str) -> str | None:
        meta = await retry_call(lambda: self._head(key), self._retry, f"head {key!r}")
        return None if meta is None else str(meta.get(self.spec.version_key) or "")

    async def _put_once(self, key: str, data: bytes, mode: Any) -> PutResult:
        """One conditional put on the client that never retries: a lost race is a
        result, an untyped failure an unknown outcome (``TransientStorageError``)."""
        stores = self._clients()
        once = self._once_store(stores)
        m = stores.module
        x = m.exceptions
        try:
            async with self._limit():
                result = await m.put_async(once, key, data, mode=mode)
        except (x.AlreadyExistsError, x.PreconditionError):
            return PutResult(False, await self._version_now(key))
        except (x.NotFoundError, FileNotFoundError) as e:
            if mode == "create":  # the container itself is missing
                raise self._missing_container(key) from e
            return PutResult(False, await self._version_now(key))
        except (x.PermissionDeniedError, x.UnauthenticatedError, x.InvalidPathError) as e:
            raise self._error(e, m, "writing", key) from e
        except x.BaseError as e:  # no answer we understand: it may or may not have landed
            raise TransientStorageError(
                f"writing {key!r} to {self.describe()}: {type(e).__name__}: {_short(e)}"
            ) from e
        version = result.get(self.spec.version_key)
        return PutResult(True, str(version) if version else await self._version_now(key))

    async def put_if_absent(self, key: str, data: bytes) -> PutResult:
        validate_key(key)
        data = bytes(data)
        return await conditional_put(
            lambda: self._put_once(key, data, "create"),
            self._read_back(key),
            data,
            self._retry,
            f"create {key!r} in {self.describe()}",
        )

    async def put_if_version(self, key: str, data: bytes, version: str) -> PutResult:
        validate_key(key)
        data = bytes(data)
        return await conditional_put(
            lambda: self._put_once(key, data, {self.spec.version_key: version}),
            self._read_back(key),
            data,
            self._retry,
            f"update {key!r} in {self.describe()}",
        )

    def _read_back(self, key: str) -> Callable[[], Awaitable[tuple[bytes, str] | None]]:
        return read_back_with(lambda: self.get_with_version(key), self._retry, f"read back {key!r}")

    async def delete(self, keys: Sequence[str]) -> None:
        paths = sorted({validate_key(k) for k in keys})
        for i in range(0, len(paths), DELETE_BATCH):
            batch = paths[i : i + DELETE_BATCH]

            async def op(m: Any, store: Any, batch: list[str] = batch) -> None:
                try:
                    await m.delete_async(store, batch)
                except (m.exceptions.NotFoundError, FileNotFoundError):
                    # some stores report a missing key: delete the others one by one
                    for path in batch:
                        try:
                            await m.delete_async(store, path)
                        except (m.exceptions.NotFoundError, FileNotFoundError):
                            pass

            await self._call("deleting", f"{len(batch)} objects", op)
