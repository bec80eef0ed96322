"""Retries of transient storage failures, and conditional puts whose outcome is unknown.

Two pieces, shared by ``RetryingStorage`` (around any ``Storage``) and the S3 backend:

* ``retry_call`` runs an operation again on ``TransientStorageError`` (throttling, a
  timeout, a dropped connection, a lost response) with exponential backoff and jitter, up
  to ``RetrySettings.max_attempts`` attempts. Every idempotent operation (get, put of an
  immutable object, list, delete, ...) is retried this way.

* ``conditional_put`` retries a conditional put (create-if-absent, replace-if-version).
  These are not idempotent: if the first attempt landed but its response was lost, the
  retry fails its precondition -- because of our own write. Reporting that as a lost race
  would make the engine rebase a commit onto itself. So when an attempt failed without an
  answer and a later attempt fails its precondition, the object is read back: if it holds
  exactly the bytes we tried to write, our write landed, and the put is reported as
  successful with the object's current version. This relies on every conditionally
  written payload being unique (frazil's refs carry a random ``write_id``): equal bytes
  mean ours. Limits: if another writer replaced our landed write before the read-back,
  the put is reported as lost (``PutResult.uncertain``: the engine then looks for its
  commit in the branch's history before treating it as a lost race); if attempts run
  out while the outcome is still unknown, ``TransientStorageError`` is raised rather
  than a guess.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import InvalidInputError, NotFoundError, TransientStorageError
from .base import ByteRange, ObjectInfos, PutResult, Storage

T = TypeVar("T")

ReadBack = Callable[[], Awaitable[tuple[bytes, str] | None]]


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """How transient failures are retried.

    ``max_attempts`` counts the first try. The wait before retry ``n`` (1, 2, ...) is
    drawn uniformly from ``[d/2, d]`` with ``d = min(backoff_cap, backoff_base * 2**(n-1))``
    seconds ("equal jitter": never zero under throttling, never in lockstep).
    """

    max_attempts: int = 8
    backoff_base: float = 0.05
    backoff_cap: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise InvalidInputError(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")
        if not self.backoff_base >= 0 or not self.backoff_cap >= 0:
            raise InvalidInputError("backoff_base and backoff_cap must be >= 0 seconds")

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed attempt."""
        d = min(self.backoff_cap, self.backoff_base * 2 ** min(failures - 1, 60))
        return random.uniform(d / 2, d)


def check_client_settings(settings: Any) -> None:
    """Validate a backend's tuning (S3's, obstore's): its retries (``max_attempts``,
    ``backoff_base``, ``backoff_cap``), ``max_concurrency`` and request timeouts."""
    RetrySettings(settings.max_attempts, settings.backoff_base, settings.backoff_cap)
    if not isinstance(settings.max_concurrency, int) or settings.max_concurrency < 1:
        raise InvalidInputError(
            f"max_concurrency must be an int >= 1, got {settings.max_concurrency!r}"
        )
    if not settings.connect_timeout > 0 or not settings.read_timeout > 0:
        raise InvalidInputError("connect_timeout and read_timeout must be > 0 seconds")


async def retry_call(
    op: Callable[[], Awaitable[T]], settings: RetrySettings, what: str = "storage operation"
) -> T:
    """``await op()``, retried on ``TransientStorageError``."""
    failures = 0
    while True:
        try:
            return await op()
        except TransientStorageError as e:
            failures += 1
            if failures >= settings.max_attempts:
                raise TransientStorageError(
                    f"{what}: gave up after {failures} attempts: {e}"
                ) from e
        await asyncio.sleep(settings.delay(failures))


def read_back_with(
    get_with_version: Callable[[], Awaitable[tuple[bytes, str]]], settings: RetrySettings, what: str
) -> ReadBack:
    """A read-back for ``conditional_put``: the object's bytes and version (retried), or
    None if it is absent."""

    async def read_back() -> tuple[bytes, str] | None:
        try:
            return await retry_call(get_with_version, settings, what)
        except NotFoundError:
            return None

    return read_back


async def conditional_put(
    attempt: Callable[[], Awaitable[PutResult]],
    read_back: ReadBack,
    data: bytes,
    settings: RetrySettings,
    what: str = "conditional put",
) -> PutResult:
    """Run a conditional put (``attempt``), retrying transient failures; when an earlier
    attempt's outcome is unknown, tell "ours landed" from "someone else's" by reading the
    object back and comparing bytes (see the module docstring)."""
    failures = 0
    last: TransientStorageError | None = None
    while failures < settings.max_attempts:
        try:
            result = await attempt()
        except TransientStorageError as e:
            failures += 1
            last = e
            if failures < settings.max_attempts:
                await asyncio.sleep(settings.delay(failures))
            continue
        if result.ok or failures == 0:
            return result
        # the precondition failed after an attempt that may have landed: was it ours?
        current = await read_back()
        if current is not None and current[0] == data:
            return PutResult(True, current[1])
        return PutResult(False, current[1] if current is not None else None, uncertain=True)
    # out of attempts, the last outcome unknown: the object itself may tell
    current = await read_back()
    if current is not None and current[0] == data:
        return PutResult(True, current[1])
    raise TransientStorageError(
        f"{what}: gave up after {failures} attempts; the write did not land as far as a "
        f"read-back shows: {last}"
    ) from last


class RetryingStorage(Storage):
    """Any ``Storage`` with transient failures retried (``retry_call``) and conditional
    puts made safe against lost responses (``conditional_put``).

    ``RetryingStorage(inner, attempts=8, backoff_base=0.05, backoff_cap=5.0)``. Only
    ``TransientStorageError`` is retried; ``NotFoundError``, ``ReadOnlyError``,
    ``InvalidInputError`` and other ``StorageError`` go straight to the caller.
    """

    def __init__(
        self,
        inner: Storage,
        attempts: int = 8,
        *,
        backoff_base: float = 0.05,
        backoff_cap: float = 5.0,
    ) -> None:
        if not isinstance(inner, Storage):
            raise InvalidInputError(f"expected a frazil Storage, got {type(inner).__name__}")
        self.inner = inner
        self.settings = RetrySettings(attempts, backoff_base, backoff_cap)
        self.writable = inner.writable
        self.supports_conditional_writes = inner.supports_conditional_writes
        self.supports_conditional_delete = inner.supports_conditional_delete
        self.versions_follow_content = inner.versions_follow_content

    def describe(self) -> str:
        return f"{self.inner.describe()} (retrying)"

    def __getstate__(self) -> dict[str, Any]:
        return {"inner": self.inner, "settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        s: RetrySettings = state["settings"]
        self.__init__(  # type: ignore[misc]
            state["inner"],
            s.max_attempts,
            backoff_base=s.backoff_base,
            backoff_cap=s.backoff_cap,
        )

    def _retry(self, op: Callable[[], Awaitable[T]], what: str) -> Awaitable[T]:
        return retry_call(op, self.settings, what)

    async def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        return await self._retry(lambda: self.inner.get(key, byte_range), f"get {key!r}")

    async def get_with_version(self, key: str) -> tuple[bytes, str]:
        return await self._retry(lambda: self.inner.get_with_version(key), f"get {key!r}")

    async def put(self, key: str, data: bytes) -> None:
        data = bytes(data)
        await self._retry(lambda: self.inner.put(key, data), f"put {key!r}")

    async def put_if_absent(self, key: str, data: bytes) -> PutResult:
        data = bytes(data)
        return await conditional_put(
            lambda: self.inner.put_if_absent(key, data),
            read_back_with(
                lambda: self.inner.get_with_version(key), self.settings, f"read back {key!r}"
            ),
            data,
            self.settings,
            f"create {key!r}",
        )

    async def put_if_version(self, key: str, data: bytes, version: str) -> PutResult:
        data = bytes(data)
        return await conditional_put(
            lambda: self.inner.put_if_version(key, data, version),
            read_back_with(
                lambda: self.inner.get_with_version(key), self.settings, f"read back {key!r}"
            ),
            data,
            self.settings,
            f"update {key!r}",
        )

    async def delete_if_version(self, key: str, version: str) -> bool:
        # a retry after a lost answer finds the key gone or changed and says False: the
        # caller (tidying a tombstone) cannot tell, and need not
        return await self._retry(
            lambda: self.inner.delete_if_version(key, version), f"delete {key!r} if unchanged"
        )

    async def exists(self, key: str) -> bool:
        return await self._retry(lambda: self.inner.exists(key), f"exists {key!r}")

    async def list(self, prefix: str) -> list[str]:
        return await self._retry(lambda: self.inner.list(prefix), f"list {prefix!r}")

    async def list_info(self, prefix: str) -> ObjectInfos:
        return await self._retry(lambda: self.inner.list_info(prefix), f"list {prefix!r}")

    async def size(self, key: str) -> int:
        return await self._retry(lambda: self.inner.size(key), f"size {key!r}")

    async def remove_stale_temporaries(self, older_than: dt.datetime) -> int:
        return await self._retry(
            lambda: self.inner.remove_stale_temporaries(older_than), "remove stale temporaries"
        )

    async def delete(self, keys: Sequence[str]) -> None:
        keys = list(keys)
        await self._retry(lambda: self.inner.delete(keys), f"delete {len(keys)} objects")
