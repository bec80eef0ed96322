"""The storage interface: bytes under keys, with conditional puts as the one concurrency primitive.

Contract every backend keeps (and ``tests/test_storage.py`` checks for each):

* **Atomic visibility.** A put becomes visible whole or not at all; a reader never sees
  a partially written object.
* **Immutable objects.** Keys outside ``refs/`` and ``config.json`` are written once by
  ``put`` with a fresh, unique key; frazil never overwrites them.
* **One winner per conditional put.** Of any number of concurrent ``put_if_absent`` calls
  on one key, exactly one succeeds. Of any number of concurrent ``put_if_version`` calls
  with the same expected version, at most one succeeds. Losers get a result with
  ``ok=False`` (never an exception) and the key's current version.
* **Read-after-write.** Once a put returns, every get and list on the same storage
  (from any process on any machine that can reach it) sees the object.
* **Conditional deletes.** Where ``supports_conditional_delete`` is True,
  ``delete_if_version`` removes a key only if its version is still the one given (so a
  delete never removes what a concurrent write put there). frazil never relies on it for
  correctness: a deleted branch is first replaced by a tombstone with ``put_if_version``;
  the conditional delete only tidies the tombstone away where the backend can.
* **Versions.** ``get_with_version`` returns an opaque version token that changes on
  every successful write of the key. Exception: on backends whose versions are content
  hashes (``versions_follow_content = True``: S3, whose ETag is the MD5 of the bytes),
  rewriting *identical* bytes keeps the version, so a compare-and-swap cannot tell two
  writes of the same bytes apart. frazil never conditionally writes the same bytes twice:
  every ref payload carries a random ``write_id``.
* **Errors.** A missing key raises ``NotFoundError``; any other failure raises
  ``StorageError`` (never a bare ``OSError``); writes to read-only storage raise
  ``ReadOnlyError``. A failure that may pass if retried (throttling, timeout, lost
  connection or response) is a ``TransientStorageError``; its operation may or may not
  have taken effect (see ``frazil.storage.retry``).

All methods are coroutines; the engine runs them on its own event loop.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError

if TYPE_CHECKING:
    from ..settings import StorageSettings

ByteRange = tuple[int, int | None]
"""``(start, end)``: bytes ``start`` to ``end`` (exclusive; None = to the end of the object).
A negative ``start`` with ``end=None`` means the last ``-start`` bytes."""


@dataclass(frozen=True, slots=True)
class PutResult:
    """Outcome of a conditional put: ``ok`` and the key's version after the call
    (ours if ``ok``, the current one otherwise; None if the key is absent).

    ``uncertain`` (with ``ok=False``): an earlier attempt's answer was lost, and the key
    now holds another writer's bytes, so ours may have landed and been replaced since.
    The caller settles it from what it knows (a commit looks for its snapshot in the
    branch's history)."""

    ok: bool
    version: str | None
    uncertain: bool = False


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object: its key, size in bytes and when it was last written (UTC;
    None where the backend cannot say)."""

    key: str
    size: int
    last_modified: dt.datetime | None


@dataclass(frozen=True, slots=True)
class RangeInfo:
    """Bytes of a range read, with what the answer said of the object (for pinned virtual
    chunks): its ETag and last-modified time, where the backend reports them."""

    data: bytes
    etag: str | None
    last_modified: dt.datetime | None


ObjectInfos = list[ObjectInfo]  # (inside a Storage class, ``list`` names the method)


def validate_key(key: str) -> str:
    """Refuse keys that are not relative, normalized object paths (the local backend's
    rule, which every backend applies so that a key valid on one is valid on all)."""
    if (
        not isinstance(key, str)
        or not key
        or key.startswith("/")
        or any(p in ("", ".", "..") for p in key.split("/"))
    ):
        raise InvalidInputError(f"invalid storage key {key!r}")
    return key


def range_header(byte_range: ByteRange | None) -> str | None:
    """The HTTP ``Range`` header value for ``byte_range``: None for the whole object, ""
    for an empty range (nothing to request)."""
    if byte_range is None:
        return None
    start, end = byte_range
    if start < 0:
        if end is not None:
            raise InvalidInputError(f"a suffix range takes no end: {byte_range!r}")
        return f"bytes={start}"
    if end is None:
        return f"bytes={start}-"
    return "" if end <= start else f"bytes={start}-{end - 1}"


def slice_range(data: bytes, byte_range: ByteRange | None) -> bytes:
    """The part of ``data`` that ``byte_range`` selects (see ``ByteRange``)."""
    if byte_range is None:
        return data
    start, end = byte_range
    if start < 0:
        return data[max(0, len(data) + start) :]
    return data[start:end]


class Storage(abc.ABC):
    """Bytes under string keys. See the module docstring for the contract."""

    #: conditional puts are atomic on this backend
    supports_conditional_writes: bool = True
    #: writes are allowed
    writable: bool = True
    #: the version token is a hash of the content (identical bytes, identical version)
    versions_follow_content: bool = False
    #: ``delete_if_version`` is atomic on this backend
    supports_conditional_delete: bool = False

    @abc.abstractmethod
    async def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        """The object's bytes (or a range of them); ``NotFoundError`` if absent."""

    @abc.abstractmethod
    async def get_with_version(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and its current version token."""

    @abc.abstractmethod
    async def put(self, key: str, data: bytes) -> None:
        """Write an immutable object at a fresh key."""

    @abc.abstractmethod
    async def put_if_absent(self, key: str, data: bytes) -> PutResult:
        """Create ``key`` only if it does not exist."""

    @abc.abstractmethod
    async def put_if_version(self, key: str, data: bytes, version: str) -> PutResult:
        """Replace ``key`` only if its current version is ``version``."""

    @abc.abstractmethod
    async def exists(self, key: str) -> bool:
        """Whether ``key`` holds an object."""

    @abc.abstractmethod
    async def list(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix`` (a key prefix, not only a folder), sorted."""

    @abc.abstractmethod
    async def size(self, key: str) -> int:
        """Size in bytes of the object at ``key``."""

    @abc.abstractmethod
    async def delete(self, keys: Sequence[str]) -> None:
        """Delete the objects; missing keys are ignored."""

    async def get_range_info(self, key: str, start: int, end: int) -> RangeInfo:
        """Bytes ``start`` to ``end`` (exclusive) of ``key`` (fewer at its end), with the
        ETag and last-modified time of the answer that carried them; retried like
        ``get``. Backends that can say more than ``get`` does override it."""
        return RangeInfo(await self.get(key, (start, end)), None, None)

    async def delete_if_version(self, key: str, version: str) -> bool:
        """Delete ``key`` only if its current version is ``version``; True if it was
        deleted. Only on backends with ``supports_conditional_delete``."""
        raise NotImplementedError(f"{self.describe()} has no conditional delete")

    async def list_info(self, prefix: str) -> ObjectInfos:
        """Like ``list``, with each object's size and last-modified time (for garbage
        collection and statistics). Backends override this with one listing; this
        fallback asks each object's size and knows no times."""
        keys = await self.list(prefix)
        sizes = [await self.size(k) for k in keys]
        return [ObjectInfo(k, s, None) for k, s in zip(keys, sizes)]

    async def remove_stale_temporaries(self, older_than: dt.datetime) -> int:
        """Delete what writers that died mid-put left behind outside any object (the local
        backend's hidden temporary files), if last written before ``older_than``; returns
        how many. Garbage collection calls it. Backends whose interrupted puts leave
        nothing behind have nothing to do."""
        return 0

    def describe(self) -> str:
        """A short human description (for messages)."""
        return type(self).__name__

    # -- Icechunk's names ------------------------------------------------------------------
    def default_settings(self) -> StorageSettings:
        """Icechunk's ``Storage.default_settings()``: a ``StorageSettings`` to start a
        ``RepositoryConfig.storage`` from. frazil saves those settings and does not act
        on them (each backend takes its tuning where it is made); backends report what
        they really do where a field says it (S3: retries, conditional writes), and
        Icechunk's defaults otherwise."""
        from ..settings import StorageSettings

        return StorageSettings()

    @staticmethod
    def new_s3(
        config: Any, bucket: str, prefix: str | None = None, credentials: Any = None
    ) -> Storage:
        """Icechunk's ``Storage.new_s3(config=S3Options(...), bucket, prefix,
        credentials)``: S3 storage (``s3_storage``) from its options and credentials."""
        from .s3 import s3_storage_from_options

        return s3_storage_from_options(config, bucket, prefix, credentials)

    @staticmethod
    def new_in_memory() -> Storage:
        """Icechunk's ``Storage.new_in_memory()``: ``in_memory_storage()``."""
        from .memory import in_memory_storage

        return in_memory_storage()

    @staticmethod
    def new_local_filesystem(path: Any) -> Storage:
        """Icechunk's ``Storage.new_local_filesystem(path)``: ``local_filesystem_storage``."""
        from .local import local_filesystem_storage

        return local_filesystem_storage(path)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()
