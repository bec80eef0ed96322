"""In-memory storage: a dict under a lock; for tests, notebooks and scratch work.

It lives in one process. Pickling it within that process gives back the same storage;
unpickling it in another process raises a clear error, since its objects cannot follow.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError, NotFoundError
from .base import ByteRange, ObjectInfo, ObjectInfos, PutResult, Storage, slice_range

_registry: weakref.WeakValueDictionary[str, InMemoryStorage] = weakref.WeakValueDictionary()


if TYPE_CHECKING:
    from ..settings import StorageSettings


class InMemoryStorage(Storage):
    """Objects in a dict. See the module docstring."""

    supports_conditional_delete = True

    def default_settings(self) -> StorageSettings:
        """No retries (nothing fails in memory); Icechunk's concurrency numbers for its
        in-memory store (saved, not used)."""
        from ..settings import (
            StorageConcurrencySettings,
            StorageRetriesSettings,
            StorageSettings,
        )

        return StorageSettings(
            concurrency=StorageConcurrencySettings(5, 1),
            retries=StorageRetriesSettings(max_tries=1, initial_backoff_ms=0, max_backoff_ms=0),
        )

    def __init__(self) -> None:
        self._objects: dict[str, tuple[bytes, str]] = {}
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._written: dict[str, dt.datetime] = {}  # last-modified times, for list_info
        self.token = f"{os.getpid()}-{os.urandom(8).hex()}"
        _registry[self.token] = self

    def describe(self) -> str:
        return "in-memory storage"

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_lookup, (self.token,))

    def _next_version(self, key: str) -> str:
        self._written[key] = dt.datetime.now(dt.UTC)
        return str(next(self._counter))

    @staticmethod
    def _check(key: str) -> None:
        # the same rule as the local backend, so a key valid here is valid everywhere
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
            raise InvalidInputError(f"invalid storage key {key!r}")

    async def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        self._check(key)
        try:
            data = self._objects[key][0]
        except KeyError:
            raise NotFoundError(f"object {key!r} not found in in-memory storage") from None
        return slice_range(data, byte_range)

    async def get_with_version(self, key: str) -> tuple[bytes, str]:
        self._check(key)
        try:
            return self._objects[key]
        except KeyError:
            raise NotFoundError(f"object {key!r} not found in in-memory storage") from None

    async def put(self, key: str, data: bytes) -> None:
        self._check(key)
        with self._lock:
            self._objects[key] = (bytes(data), self._next_version(key))

    async def put_if_absent(self, key: str, data: bytes) -> PutResult:
        self._check(key)
        with self._lock:
            if key in self._objects:
                return PutResult(False, self._objects[key][1])
            version = self._next_version(key)
            self._objects[key] = (bytes(data), version)
            return PutResult(True, version)

    async def put_if_version(self, key: str, data: bytes, version: str) -> PutResult:
        self._check(key)
        with self._lock:
            current = self._objects.get(key)
            if current is None or current[1] != version:
                return PutResult(False, current[1] if current else None)
            new = self._next_version(key)
            self._objects[key] = (bytes(data), new)
            return PutResult(True, new)

    async def delete_if_version(self, key: str, version: str) -> bool:
        self._check(key)
        with self._lock:
            current = self._objects.get(key)
            if current is None or current[1] != version:
                return False
            del self._objects[key]
            self._written.pop(key, None)
            return True

    async def exists(self, key: str) -> bool:
        self._check(key)
        return key in self._objects

    async def list(self, prefix: str) -> list[str]:
        with self._lock:
            return sorted(k for k in self._objects if k.startswith(prefix))

    async def list_info(self, prefix: str) -> ObjectInfos:
        with self._lock:
            return [
                ObjectInfo(k, len(self._objects[k][0]), self._written.get(k))
                for k in sorted(k for k in self._objects if k.startswith(prefix))
            ]

    async def size(self, key: str) -> int:
        return len((await self.get_with_version(key))[0])

    async def delete(self, keys: Sequence[str]) -> None:
        keys = list(keys)
        for k in keys:
            self._check(k)
        with self._lock:
            for k in keys:
                self._objects.pop(k, None)
                self._written.pop(k, None)


def _lookup(token: str) -> InMemoryStorage:
    storage = _registry.get(token)
    if storage is None:
        from ..errors import InvalidInputError as _E

        raise _E(
            "in-memory storage cannot be shared with another process; use "
            "local_filesystem_storage (or S3) to write from several processes"
        )
    return storage


def in_memory_storage() -> InMemoryStorage:
    """Storage that lives in this process's memory and vanishes with it."""
    return InMemoryStorage()
