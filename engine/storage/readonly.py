"""``ReadOnlyStorage``: any backend with every write refused, for storage opened read-only."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from ..errors import ErrorKind, InvalidInputError, ReadOnlyError
from .base import ByteRange, ObjectInfos, PutResult, Storage, validate_key


class ReadOnlyStorage(Storage):
    """Reads go to ``inner``; every write, conditional or not, and every delete raises
    ``ReadOnlyError`` before reaching it. ``writable`` is False, so repositories refuse
    writable sessions, commits and maintenance that writes at once."""

    writable = False

    def __init__(self, inner: Storage) -> None:
        if not isinstance(inner, Storage):
            raise InvalidInputError(f"expected a frazil Storage, got {type(inner).__name__}")
        self.inner = inner
        self.supports_conditional_writes = inner.supports_conditional_writes
        self.versions_follow_content = inner.versions_follow_content
        self.supports_conditional_delete = inner.supports_conditional_delete

    def describe(self) -> str:
        return f"{self.inner.describe()} (read-only)"

    def __repr__(self) -> str:
        return f"<ReadOnlyStorage {self.inner.describe()}>"

    def __getstate__(self) -> dict[str, Any]:
        return {"inner": self.inner}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["inner"])  # type: ignore[misc]

    def _refuse(self, key: str) -> ReadOnlyError:
        validate_key(key)
        return ReadOnlyError(
            f"cannot write {key!r}: {self.describe()} was opened read-only",
            kind=ErrorKind.READ_ONLY_STORAGE,
        )

    async def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        return await self.inner.get(key, byte_range)

    async def get_with_version(self, key: str) -> tuple[bytes, str]:
        return await self.inner.get_with_version(key)

    async def put(self, key: str, data: bytes) -> None:
        raise self._refuse(key)

    async def put_if_absent(self, key: str, data: bytes) -> PutResult:
        raise self._refuse(key)

    async def put_if_version(self, key: str, data: bytes, version: str) -> PutResult:
        raise self._refuse(key)

    async def delete_if_version(self, key: str, version: str) -> bool:
        raise self._refuse(key)

    async def exists(self, key: str) -> bool:
        return await self.inner.exists(key)

    async def list(self, prefix: str) -> list[str]:
        return await self.inner.list(prefix)

    async def list_info(self, prefix: str) -> ObjectInfos:
        return await self.inner.list_info(prefix)

    async def size(self, key: str) -> int:
        return await self.inner.size(key)

    async def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            validate_key(key)
        raise ReadOnlyError(
            f"cannot delete objects: {self.describe()} was opened read-only",
            kind=ErrorKind.READ_ONLY_STORAGE,
        )

    async def remove_stale_temporaries(self, older_than: dt.datetime) -> int:
        raise ReadOnlyError(
            f"cannot remove files: {self.describe()} was opened read-only",
            kind=ErrorKind.READ_ONLY_STORAGE,
        )
