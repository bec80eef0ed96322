"""A Storage wrapper that injects faults: transient errors, latency, lost responses.

For testing that the engine survives an unreliable object store::

    flaky = FaultInjectingStorage(local_filesystem_storage(path), error_rate=0.2,
                                  drop_response_rate=0.2, latency=0.001, seed=7)
    repo = Repository.create(RetryingStorage(flaky))

Per call, in order:

* ``latency``: sleep a random time in ``[0, latency]`` seconds first;
* ``error_rate``: with this probability, raise ``TransientStorageError`` before calling
  the inner storage (the request never arrived);
* otherwise call the inner storage; then, with probability ``drop_response_rate``,
  raise ``TransientStorageError`` although the call ran (a lost acknowledgement: a put
  landed, a conditional put may have won, but the caller is not told).

``seed`` makes the sequence of faults reproducible for one sequence of calls. The
counters ``calls``, ``injected_errors`` and ``dropped_responses`` say what happened.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from ..errors import InvalidInputError, TransientStorageError
from .base import ByteRange, ObjectInfos, PutResult, Storage

T = TypeVar("T")


class FaultInjectingStorage(Storage):
    """See the module docstring."""

    def __init__(
        self,
        inner: Storage,
        *,
        error_rate: float = 0.0,
        latency: float = 0.0,
        drop_response_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if not isinstance(inner, Storage):
            raise InvalidInputError(f"expected a frazil Storage, got {type(inner).__name__}")
        for name, rate in (("error_rate", error_rate), ("drop_response_rate", drop_response_rate)):
            if not 0.0 <= rate <= 1.0:
                raise InvalidInputError(f"{name} must be between 0 and 1, got {rate!r}")
        if latency < 0:
            raise InvalidInputError(f"latency must be >= 0 seconds, got {latency!r}")
        self.inner = inner
        self.error_rate = error_rate
        self.latency = latency
        self.drop_response_rate = drop_response_rate
        self.seed = seed
        self._rng = random.Random(seed)
        self.writable = inner.writable
        self.supports_conditional_writes = inner.supports_conditional_writes
        self.supports_conditional_delete = inner.supports_conditional_delete
        self.versions_follow_content = inner.versions_follow_content
        self.calls = 0
        self.injected_errors = 0
        self.dropped_responses = 0

    def describe(self) -> str:
        return f"{self.inner.describe()} (with injected faults)"

    def __getstate__(self) -> dict[str, Any]:
        return {
            "inner": self.inner,
            "error_rate": self.error_rate,
            "latency": self.latency,
            "drop_response_rate": self.drop_response_rate,
            "seed": self.seed,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state.pop("inner"), **state)  # type: ignore[misc]

    async def _call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        self.calls += 1
        if self.latency:
            await asyncio.sleep(self._rng.uniform(0, self.latency))
        if self.error_rate and self._rng.random() < self.error_rate:
            self.injected_errors += 1
            raise TransientStorageError(f"injected fault: {what} failed before it was sent")
        result = await op()
        if self.drop_response_rate and self._rng.random() < self.drop_response_rate:
            self.dropped_responses += 1
            raise TransientStorageError(f"injected fault: the response to {what} was lost")
        return result

    async def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        return await self._call(f"get {key!r}", lambda: self.inner.get(key, byte_range))

    async def get_with_version(self, key: str) -> tuple[bytes, str]:
        return await self._call(f"get {key!r}", lambda: self.inner.get_with_version(key))

    async def put(self, key: str, data: bytes) -> None:
        data = bytes(data)
        await self._call(f"put {key!r}", lambda: self.inner.put(key, data))

    async def put_if_absent(self, key: str, data: bytes) -> PutResult:
        data = bytes(data)
        return await self._call(f"create {key!r}", lambda: self.inner.put_if_absent(key, data))

    async def put_if_version(self, key: str, data: bytes, version: str) -> PutResult:
        data = bytes(data)
        return await self._call(
            f"update {key!r}", lambda: self.inner.put_if_version(key, data, version)
        )

    async def delete_if_version(self, key: str, version: str) -> bool:
        return await self._call(
            f"delete {key!r} if unchanged", lambda: self.inner.delete_if_version(key, version)
        )

    async def exists(self, key: str) -> bool:
        return await self._call(f"exists {key!r}", lambda: self.inner.exists(key))

    async def list(self, prefix: str) -> list[str]:
        return await self._call(f"list {prefix!r}", lambda: self.inner.list(prefix))

    async def list_info(self, prefix: str) -> ObjectInfos:
        return await self._call(f"list {prefix!r}", lambda: self.inner.list_info(prefix))

    async def size(self, key: str) -> int:
        return await self._call(f"size {key!r}", lambda: self.inner.size(key))

    async def remove_stale_temporaries(self, older_than: dt.datetime) -> int:
        return await self._call(
            "remove stale temporaries", lambda: self.inner.remove_stale_temporaries(older_than)
        )

    async def delete(self, keys: Sequence[str]) -> None:
        keys = list(keys)
        await self._call(f"delete {len(keys)} objects", lambda: self.inner.delete(keys))
