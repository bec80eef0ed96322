"""Read-only storage over plain HTTP(S): a repository published by any static file server.

``http_storage("https://example.org/data/repo")`` reads object ``k`` at
``<base_url>/<k>`` with ``GET`` (and ``Range`` for byte ranges; a server that ignores
``Range`` and sends the whole object is handled by slicing it here), ``exists`` and
``size`` with ``HEAD``. It is enough for ``Repository.open(...)`` and read-only sessions
(``readonly_session(branch=/tag=/snapshot_id=)``), which only get objects and ranges.

What plain HTTP cannot do:

* **listing**: there is no standard way to list a folder, so ``list`` raises
  ``StorageError``, and with it whatever needs a listing (``list_branches``,
  ``list_tags``). Open a branch, tag or snapshot by name instead.
* **writes**: ``writable`` is False; every write raises ``ReadOnlyError``.

Versions are the server's ``ETag`` if it sends one, else a hash of the content. Missing
objects are 404 (or 410) answers; 429 and 5xx answers, timeouts and dropped
connections are retried with backoff (``max_attempts``, ``backoff_base``,
``backoff_cap``). One aiohttp session per running event loop, at most
``max_concurrency`` connections each.
"""

from __future__ import annotations

import email.utils
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import xxhash
import yarl

from ..errors import (
    InvalidInputError,
    NotFoundError,
    ReadOnlyError,
    StorageError,
    TransientStorageError,
)
from ._perloop import PerLoop
from .base import (
    ByteRange,
    PutResult,
    RangeInfo,
    Storage,
    range_header,
    slice_range,
    validate_key,
)
from .retry import RetrySettings, retry_call

T = TypeVar("T")

_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 8


@dataclass(frozen=True, slots=True)
class HTTPConfig:
    """All that an ``HTTPStorage`` pickles."""

    base_url: str
    max_attempts: int = 8
    backoff_base: float = 0.05
    backoff_cap: float = 5.0
    max_concurrency: int = 32
    timeout: float = 60.0
    headers: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.base_url, str) or not self.base_url.lower().startswith(
            ("http://", "https://")
        ):
            raise InvalidInputError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        RetrySettings(self.max_attempts, self.backoff_base, self.backoff_cap)
        if not isinstance(self.max_concurrency, int) or self.max_concurrency < 1:
            raise InvalidInputError("max_concurrency must be an int >= 1")
        if not self.timeout > 0:
            raise InvalidInputError("timeout must be > 0 seconds")


async def _close_session(session: Any) -> None:
    await session.close()


class HTTPStorage(Storage):
    """See the module docstring. Build one with ``http_storage(base_url)``."""

    writable = False
    supports_conditional_writes = False
    #: ``list`` is not available over plain HTTP
    supports_listing = False

    def __init__(self, config: HTTPConfig) -> None:
        if not isinstance(config, HTTPConfig):
            raise InvalidInputError("HTTPStorage takes an HTTPConfig; use frazil.http_storage")
        self.config = config
        self._base = config.base_url.rstrip("/") + "/"
        self._origin = yarl.URL(self._base).origin()
        self._retry = RetrySettings(config.max_attempts, config.backoff_base, config.backoff_cap)
        self._sessions: PerLoop[Any] = PerLoop(self._make_session, _close_session)

    def describe(self) -> str:
        return f"read-only HTTP storage at {self._base}"

    def __repr__(self) -> str:
        return f"<HTTPStorage {self._base}>"

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"])  # type: ignore[misc]

    def _make_session(self) -> Any:
        import aiohttp

        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.config.max_concurrency),
            timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            headers={"Accept-Encoding": "identity", **self.config.headers},
        )

    def _url(self, key: str) -> str:
        return self._base + quote(validate_key(key), safe="/~-._")

    def _retrying(self, op: Callable[[], Awaitable[T]], what: str) -> Awaitable[T]:
        return retry_call(op, self._retry, what)

    async def _request(
        self,
        method: str,
        key: str,
        headers: dict[str, str] | None = None,
        *,
        limit: int | None = None,
        upto: int | None = None,
    ) -> tuple[int, bytes, Any]:
        """(status, body, response headers); errors mapped to frazil's. Redirects are
        followed only within this storage's origin (scheme, host and port); one to
        anywhere else is refused, so bytes from another host are never taken for this
        one's. With ``limit`` (a range request), a partial answer longer than ``limit``
        bytes is refused unread, and of a whole-object answer only the first ``upto``
        bytes are read (the range's end)."""
        import aiohttp

        session = await self._sessions.get()
        what = f"{method} {key!r} from {self.describe()}"
        url = yarl.URL(self._url(key), encoded=True)
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                async with session.request(
                    method, url, headers=headers or {}, allow_redirects=False
                ) as r:
                    status = r.status
                    if status in _REDIRECTS:
                        url = self._redirect_target(url, r.headers.get("Location"), what)
                        continue
                    return await self._answer(r, method, key, what, limit, upto)
            raise StorageError(f"{what}: more than {_MAX_REDIRECTS} redirects")
        except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as e:
            raise TransientStorageError(f"{what}: {type(e).__name__}: {e}") from e
        except aiohttp.ClientError as e:
            raise StorageError(f"{what}: {type(e).__name__}: {e}") from e

    def _redirect_target(self, current: yarl.URL, target: str | None, what: str) -> yarl.URL:
        if not target:
            raise StorageError(f"{what}: a redirect without a Location header")
        new = current.join(yarl.URL(target))
        if (new.scheme, new.host, new.port) != (
            self._origin.scheme,
            self._origin.host,
            self._origin.port,
        ):
            raise StorageError(
                f"{what}: the server redirects to {new.scheme}://{new.host}:{new.port}, "
                f"outside {self._origin}; frazil follows redirects only within the origin "
                "it was given"
            )
        return new

    async def _answer(
        self, r: Any, method: str, key: str, what: str, limit: int | None, upto: int | None
    ) -> tuple[int, bytes, Any]:
        status = r.status
        if status in (404, 410):
            raise NotFoundError(f"object {key!r} not found in {self.describe()}")
        if status in _TRANSIENT_STATUS:
            raise TransientStorageError(f"{what}: HTTP {status} {r.reason}")
        if status == 416:
            return status, b"", r.headers
        if status >= 400:
            raise StorageError(f"{what}: HTTP {status} {r.reason}")
        if method != "GET":
            return status, b"", r.headers
        if limit is None:
            return status, await r.read(), r.headers
        if status != 206:  # the range was ignored: only the bytes up to its end are needed
            return status, await _read_at_most(r.content, upto or limit), r.headers
        length = r.content_length
        if length is not None and length > limit:
            raise StorageError(
                f"{what}: the server sends {length} bytes for a range of "
                f"{limit}; refusing the answer"
            )
        body = await _read_at_most(r.content, limit + 1)
        if len(body) > limit:
            raise StorageError(
                f"{what}: the server sends more than the {limit} bytes "
                "asked for; refusing the answer"
            )
        return status, body, r.headers

    # -- reads -----------------------------------------------------------------------------
    async def get_range_info(self, key: str, start: int, end: int) -> RangeInfo:
        """A range with the answer's ETag and Last-Modified; a partial answer longer than
        the range is refused, and of a whole-object answer only the bytes up to the
        range's end are read."""
        validate_key(key)
        status, data, headers = await self._retrying(
            lambda: self._request(
                "GET", key, {"Range": f"bytes={start}-{end - 1}"}, limit=end - start, upto=end
            ),
            f"get bytes {start}-{end - 1} of {key!r}",
        )
        if status == 416:
            data = b""
        elif status != 206:  # the server ignored the range
            data = data[start:end]
        lm = headers.get("Last-Modified")
        return RangeInfo(
            data, headers.get("ETag"), email.utils.parsedate_to_datetime(lm) if lm else None
        )

    async def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        validate_key(key)
        header = range_header(byte_range)
        if header == "":  # an empty range: only check that the object exists
            await self.size(key)
            return b""
        status, data, _ = await self._retrying(
            lambda: self._request("GET", key, {"Range": header} if header else None), f"get {key!r}"
        )
        if status == 416:
            return b""
        if header is not None and status != 206:  # the server sent the whole object
            data = slice_range(data, byte_range)
        return data

    async def get_with_version(self, key: str) -> tuple[bytes, str]:
        validate_key(key)
        _, data, headers = await self._retrying(lambda: self._request("GET", key), f"get {key!r}")
        etag = headers.get("ETag")
        return data, str(etag) if etag else "xxh3-" + xxhash.xxh3_128_hexdigest(data)

    async def exists(self, key: str) -> bool:
        validate_key(key)
        try:
            await self._retrying(lambda: self._request("HEAD", key), f"head {key!r}")
        except NotFoundError:
            return False
        return True

    async def size(self, key: str) -> int:
        validate_key(key)
        _, _, headers = await self._retrying(lambda: self._request("HEAD", key), f"head {key!r}")
        length = headers.get("Content-Length")
        if length is not None:
            return int(length)
        return len(await self.get(key))

    async def list(self, prefix: str) -> list[str]:
        raise StorageError(
            f"{self.describe()} cannot list objects (plain HTTP has no listing): open "
            "branches, tags and snapshots by name"
        )

    # -- writes: refused -----------------------------------------------------------------
    def _refuse(self, key: str) -> ReadOnlyError:
        validate_key(key)
        return ReadOnlyError(f"{self.describe()} is read-only: cannot write {key!r}")

    async def put(self, key: str, data: bytes) -> None:
        raise self._refuse(key)

    async def put_if_absent(self, key: str, data: bytes) -> PutResult:
        raise self._refuse(key)

    async def put_if_version(self, key: str, data: bytes, version: str) -> PutResult:
        raise self._refuse(key)

    async def delete(self, keys: Sequence[str]) -> None:
        for k in keys:
            validate_key(k)
        raise ReadOnlyError(f"{self.describe()} is read-only: cannot delete objects")


async def _read_at_most(stream: Any, n: int) -> bytes:
    """Up to ``n`` bytes of a response body (fewer only at its end), never more."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        part = await stream.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def http_storage(
    base_url: str,
    opts: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    *,
    max_attempts: int = 8,
    backoff_base: float = 0.05,
    backoff_cap: float = 5.0,
    max_concurrency: int = 32,
    timeout: float = 60.0,
) -> HTTPStorage:
    """Read-only storage for a repository served over HTTP(S) at ``base_url`` (the URL of
    the folder holding ``config.json`` and ``refs/``). See ``frazil.storage.http``.

    ``opts`` and ``headers`` as Icechunk's ``http_storage``: ``headers`` are sent with every
    request (e.g. ``{"authorization": "Bearer <token>"}``); of object_store's client options
    in ``opts``, ``timeout`` (seconds, or a duration such as ``"30s"``, ``"2m"``) is used,
    and the others are refused (``InvalidInputError``) rather than silently ignored."""
    if opts:
        if not isinstance(opts, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in opts.items()
        ):
            raise InvalidInputError("http_storage: opts must be a dict of str to str")
        unknown = sorted(set(opts) - {"timeout"})
        if unknown:
            raise InvalidInputError(
                f"http_storage: option(s) {', '.join(unknown)} are not supported by frazil's "
                "HTTP storage (only 'timeout')"
            )
        if "timeout" in opts:
            timeout = _seconds(opts["timeout"])
    return HTTPStorage(
        HTTPConfig(
            base_url,
            max_attempts,
            backoff_base,
            backoff_cap,
            max_concurrency,
            timeout,
            dict(headers or {}),
        )
    )


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(text: str) -> float:
    """``"30"``, ``"30s"``, ``"500ms"``, ``"2m"``, ``"1h"`` in seconds (> 0)."""
    value = text.strip().lower()
    unit = next((u for u in ("ms", "s", "m", "h") if value.endswith(u)), "")
    try:
        seconds = float(value[: len(value) - len(unit)]) * _UNITS.get(unit, 1.0)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise InvalidInputError(f"http_storage: invalid timeout {text!r}")
    return seconds
