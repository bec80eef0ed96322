"""S3 (and S3-compatible) storage on s3fs's async API, with conditional writes.

* Conditional create is ``PutObject`` with ``If-None-Match: *`` (tags, new branches);
  compare-and-swap of a branch ref is ``PutObject`` with ``If-Match: <ETag read>``. A
  failed precondition is recognized by botocore's error code (``PreconditionFailed``) or
  the HTTP status 412, on the exception or its ``__cause__`` (s3fs wraps botocore's
  ``ClientError`` in an ``OSError``), never by message text. Some servers answer 412 to
  ``If-Match`` on a missing key (SeaweedFS), others 404 (moto): both mean "not swapped".
* Versions are ETags, always taken from the response that carried the bytes
  (``GetObject``) or from a fresh ``HeadObject``, never from a cached listing. An ETag is
  a hash of the content, so rewriting identical bytes keeps the version: frazil never
  does that with a conditional put (its refs carry a random ``write_id``).
* Transient failures (503 SlowDown and other throttling, 5xx, timeouts, dropped
  connections) are retried with exponential backoff and jitter (``S3Settings``);
  botocore's and s3fs's own retries are turned off so that a conditional put is never
  retried blindly. A conditional put whose response was lost is settled by reading the
  object back (``frazil.storage.retry.conditional_put``): equal bytes mean ours landed.
* Async all the way: one s3fs filesystem per running event loop (``PerLoop``), with at
  most ``max_concurrency`` requests in flight per loop.
* Reads and writes take a fast path (``_s3get``): GETs and PUTs signed with SigV4 and
  sent over aiohttp, at a third of botocore's CPU per request; anything it does not
  understand goes through botocore (``S3Settings.direct_get=False`` and
  ``direct_put=False`` turn it off).
* Stores without conditional writes: ``unsafe_use_conditional_create=False`` /
  ``unsafe_use_conditional_update=False`` replace them by check-then-put (racy; a warning
  says that concurrent commits can then be lost).
* Pickling carries only the configuration (bucket, prefix, endpoint, credentials,
  settings); clients are rebuilt lazily in the process that unpickles it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import threading
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .. import runtime
from ..errors import InvalidInputError, NotFoundError, StorageError, TransientStorageError
from ._perloop import PerLoop
from ._s3get import DirectClient, PreconditionFailed, RangeNotSatisfiable, base_url
from .base import (
    ByteRange,
    ObjectInfo,
    ObjectInfos,
    PutResult,
    RangeInfo,
    Storage,
    range_header,
    slice_range,
    validate_key,
)
from .retry import (
    RetrySettings,
    check_client_settings,
    conditional_put,
    read_back_with,
    retry_call,
)

if TYPE_CHECKING:
    from ..settings import StorageSettings

T = TypeVar("T")

#: error codes that mean "try again later"
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequests",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "EC2ThrottledException",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "InternalError",
        "ServiceUnavailable",
        "ConditionalRequestConflict",
        "OperationAborted",
    }
)
TRANSIENT_STATUS = frozenset({408, 429, 499, 500, 502, 503, 504})  # 499: Tigris
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
DELETE_BATCH = 1000  # DeleteObjects' limit
Keys = list[str]  # (inside S3Storage, ``list`` names the method)


@dataclass(frozen=True, slots=True)
class S3Settings:
    """Tuning of the S3 backend.

    ``max_attempts`` (first try included), ``backoff_base`` and ``backoff_cap`` (seconds)
    govern retries of transient failures; ``max_concurrency`` bounds the requests in
    flight per event loop (and the connection pool); ``connect_timeout`` and
    ``read_timeout`` are per request, in seconds. ``unsafe_use_conditional_update`` and
    ``unsafe_use_conditional_create`` (default True) say whether the store supports
    ``If-Match`` and ``If-None-Match`` on ``PutObject``; turning them off makes commits
    use racy check-then-put (a warning is given). ``direct_get`` and ``direct_put`` send
    GETs and PUTs signed with SigV4 straight over aiohttp instead of through botocore's
    pipeline.
    """

    max_attempts: int = 8
    backoff_base: float = 0.05
    backoff_cap: float = 5.0
    max_concurrency: int = 64
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    unsafe_use_conditional_update: bool = True
    unsafe_use_conditional_create: bool = True
    direct_get: bool = True
    direct_put: bool = True

    def __post_init__(self) -> None:
        check_client_settings(self)

    @property
    def retry(self) -> RetrySettings:
        return RetrySettings(self.max_attempts, self.backoff_base, self.backoff_cap)


def check_endpoint(endpoint_url: str | None, allow_http: bool, what: str = "") -> None:
    """Refuse an ``endpoint_url`` that is not http(s), or plain http without
    ``allow_http``."""
    if endpoint_url is None:
        return
    scheme = endpoint_url.split("://", 1)[0].lower()
    if scheme not in ("http", "https") or "://" not in endpoint_url:
        raise InvalidInputError(f"{what}endpoint_url must be an http(s) URL, got {endpoint_url!r}")
    if scheme == "http" and not allow_http:
        raise InvalidInputError(
            f"{what}endpoint {endpoint_url!r} is plain http; pass allow_http=True to allow it"
        )


@dataclass(frozen=True, slots=True)
class S3Config:
    """Where the repository is and how to reach it: all that an ``S3Storage`` pickles."""

    bucket: str
    prefix: str
    region: str | None = None
    endpoint_url: str | None = None
    allow_http: bool = False
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    anonymous: bool = False
    from_env: bool = False
    force_path_style: bool = False
    settings: S3Settings = field(default_factory=S3Settings)
    #: refreshable credentials: called (in a worker thread) for ``S3StaticCredentials``
    #: when the current ones are about to expire; ``current_credentials`` are used first
    get_credentials: Callable[[], Any] | None = field(default=None, repr=False)
    current_credentials: Any = field(default=None, repr=False)
    #: headers added to every read (GET, HEAD, list) and every write (PUT, DELETE) request,
    #: e.g. Tigris's consistency headers (``tigris_storage``)
    read_headers: tuple[tuple[str, str], ...] = ()
    write_headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.bucket, str) or not self.bucket or "/" in self.bucket:
            raise InvalidInputError(f"invalid S3 bucket name {self.bucket!r}")
        if not isinstance(self.prefix, str):
            raise InvalidInputError(f"S3 prefix must be a string, got {self.prefix!r}")
        if any(p in (".", "..") for p in self.prefix.strip("/").split("/")):
            raise InvalidInputError(f"invalid S3 prefix {self.prefix!r}")
        check_endpoint(self.endpoint_url, self.allow_http)
        explicit = (self.access_key_id, self.secret_access_key, self.session_token)
        if any(v is not None for v in explicit):
            if self.access_key_id is None or self.secret_access_key is None:
                raise InvalidInputError(
                    "access_key_id and secret_access_key must be given together"
                )
            if self.anonymous:
                raise InvalidInputError("anonymous=True cannot be combined with credentials")
            if self.from_env:
                raise InvalidInputError("from_env=True cannot be combined with credentials")
        if self.anonymous and self.from_env:
            raise InvalidInputError("anonymous=True cannot be combined with from_env=True")
        if self.get_credentials is not None and (
            not callable(self.get_credentials)
            or any(v is not None for v in explicit)
            or self.anonymous
            or self.from_env
        ):
            raise InvalidInputError(
                "get_credentials must be a callable, and excludes keys, anonymous and from_env"
            )
        if not isinstance(self.settings, S3Settings):
            raise InvalidInputError("settings must be an S3Settings")
        for headers in (self.read_headers, self.write_headers):
            if not all(
                isinstance(h, tuple) and len(h) == 2 and all(isinstance(x, str) for x in h)
                for h in headers
            ):
                raise InvalidInputError("read_headers and write_headers are (name, value) pairs")

    @property
    def root(self) -> str:
        """The key prefix under the bucket, with a trailing '/' (or '' for the bucket root)."""
        p = self.prefix.strip("/")
        return p + "/" if p else ""


NO_EXPIRY = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
NO_READ_TIMEOUT = 86_400.0  # network_stream_timeout_seconds=0: "no timeout", one day


#: how long credentials that ``get_credentials`` returned already expired are used: botocore
#: refreshes whatever expires within minutes before each request, so they are asked for
#: again at the next request (as Icechunk does: it uses them and asks again)
EXPIRED_GRACE = dt.timedelta(seconds=60)


def _credential_metadata(creds: Any) -> dict[str, Any]:
    """botocore's refresh metadata for ``S3StaticCredentials`` (or static ``S3Credentials``).

    Credentials already expired are used for the request at hand (the server decides)
    and renewed before the next one, rather than refused."""
    key = getattr(creds, "access_key_id", None)
    secret = getattr(creds, "secret_access_key", None)
    if not isinstance(key, str) or not isinstance(secret, str):
        raise InvalidInputError(
            f"get_credentials returned {type(creds).__name__}, which cannot be cast to "
            "S3StaticCredentials"
        )
    expiry = getattr(creds, "expires_after", None) or NO_EXPIRY
    expiry = max(expiry, dt.datetime.now(dt.UTC) + EXPIRED_GRACE)
    return {
        "access_key": key,
        "secret_key": secret,
        "token": getattr(creds, "session_token", None),
        "expiry_time": expiry.isoformat(),
    }


def _refreshable_credentials(c: S3Config) -> Any:
    from aiobotocore.credentials import (
        AioDeferredRefreshableCredentials,
        AioRefreshableCredentials,
    )

    fn = c.get_credentials
    assert fn is not None

    async def refresh() -> dict[str, Any]:
        return _credential_metadata(await asyncio.to_thread(fn))

    current = c.current_credentials
    if current is not None:
        return AioRefreshableCredentials.create_from_metadata(
            _credential_metadata(current), refresh, "frazil-refreshable"
        )
    return AioDeferredRefreshableCredentials(refresh, "frazil-refreshable")


#: S3 operations that write (the others read)
WRITE_OPERATIONS = frozenset(
    {
        "PutObject",
        "DeleteObject",
        "DeleteObjects",
        "CopyObject",
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
        "AbortMultipartUpload",
    }
)


class _ExtraHeaders:
    """botocore ``before-sign`` handler adding ``S3Config.read_headers`` or
    ``write_headers`` to each request (signed with it)."""

    def __init__(
        self, read: tuple[tuple[str, str], ...], write: tuple[tuple[str, str], ...]
    ) -> None:
        self.read, self.write = read, write

    def __call__(self, request: Any, operation_name: str = "", **kwargs: Any) -> None:
        for name, value in self.write if operation_name in WRITE_OPERATIONS else self.read:
            request.headers[name] = value


_CONDITION_HEADERS = {"IfNoneMatch": "If-None-Match", "IfMatch": "If-Match"}


class _Precondition(Exception):
    """The server refused a conditional put (412): internal to this module."""


class _RangeNotSatisfiable(Exception):
    """416: the object exists, the range selects nothing."""


def _client_error(e: BaseException) -> Any:
    """botocore's ClientError, on ``e`` or its ``__cause__`` (s3fs wraps it)."""
    from botocore.exceptions import ClientError

    for x in (e, e.__cause__):
        if isinstance(x, ClientError):
            return x
    return None


def _code_and_status(e: BaseException) -> tuple[str, int | None]:
    ce = _client_error(e)
    if ce is None:
        return "", None
    response = getattr(ce, "response", None) or {}
    code = str((response.get("Error") or {}).get("Code") or "")
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code, status if isinstance(status, int) else None


def is_precondition_failed(e: BaseException) -> bool:
    code, status = _code_and_status(e)
    return code == "PreconditionFailed" or status == 412


def _is_transient_transport(e: BaseException) -> bool:
    import aiohttp
    from botocore import exceptions as bx

    for x in (e, e.__cause__):
        if x is None:
            continue
        if isinstance(x, bx.SSLError):
            return False
        if isinstance(
            x,
            (
                bx.HTTPClientError,
                bx.ConnectionError,
                bx.IncompleteReadError,
                bx.ResponseStreamingError,
                bx.ChecksumError,
                aiohttp.ClientPayloadError,
                aiohttp.ClientConnectionError,
                asyncio.TimeoutError,
                TimeoutError,
                ConnectionError,
            ),
        ):
            return True
        if type(x).__name__ == "ResponseParserError":
            return True
    return False


def translate(e: BaseException, what: str) -> BaseException:
    """The frazil error for an exception from s3fs/botocore/aiohttp."""
    code, status = _code_and_status(e)
    if code == "PreconditionFailed" or status == 412:
        return _Precondition(what)
    if code == "InvalidRange" or status == 416:
        return _RangeNotSatisfiable(what)
    detail = f"{code or type(e).__name__}: {e}"
    if code in NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket"):
        return NotFoundError(f"{what}: not found")
    if (
        code in TRANSIENT_CODES
        or status in TRANSIENT_STATUS
        or (not code and _is_transient_transport(e))
    ):
        return TransientStorageError(f"{what}: {detail}")
    if code == "NoSuchBucket":
        return StorageError(f"{what}: the bucket does not exist ({detail})")
    return StorageError(f"{what}: {detail}")


_loader_lock = threading.Lock()
_loader: Any = None


def _reset_loader_lock() -> None:
    global _loader_lock
    _loader_lock = threading.Lock()


runtime.at_fork_in_child(_reset_loader_lock)


def _shared_loader() -> Any:
    """botocore's data loader (service models, endpoint rules), shared by every client of
    the process: loading them costs ~60 ms per new session, and a client is made per
    event loop."""
    global _loader
    with _loader_lock:
        if _loader is None:
            import botocore.loaders

            _loader = botocore.loaders.create_loader()
        return _loader


class _Client:
    __slots__ = ("fs", "limit", "direct", "direct_ready")

    def __init__(self, fs: Any, limit: int) -> None:
        self.fs = fs
        self.limit = asyncio.Semaphore(limit)
        self.direct: DirectClient | None = None
        self.direct_ready = False


async def _close_client(client: _Client) -> None:
    if client.direct is not None:
        await client.direct.close()
    s3 = getattr(client.fs, "_s3", None)
    if s3 is not None:
        await s3.close()


class S3Storage(Storage):
    """Objects under ``s3://bucket/prefix/``. Build one with ``s3_storage(...)``."""

    versions_follow_content = True  # ETags are MD5s of the content

    @property
    def supports_conditional_delete(self) -> bool:  # type: ignore[override]
        """DeleteObject with If-Match (with the store's conditional writes)."""
        return self.config.settings.unsafe_use_conditional_update

    def __init__(self, config: S3Config) -> None:
        self._setup(config, warn=True)

    def _setup(self, config: S3Config, *, warn: bool) -> None:
        if not isinstance(config, S3Config):
            raise InvalidInputError("S3Storage takes an S3Config; use frazil.s3_storage(...)")
        self.config = config
        self._root = config.root
        self._retry = config.settings.retry
        s = config.settings
        self.supports_conditional_writes = (
            s.unsafe_use_conditional_update and s.unsafe_use_conditional_create
        )
        self._clients: PerLoop[_Client] = PerLoop(self._make_client, _close_client)
        if warn and not self.supports_conditional_writes:
            off = [
                n
                for n in ("unsafe_use_conditional_update", "unsafe_use_conditional_create")
                if not getattr(s, n)
            ]
            warnings.warn(
                f"{self.describe()}: {' and '.join(off)} = False: refs are written with "
                "plain check-then-put, so concurrent commits (and concurrent branch or tag "
                "creation) can be lost; use this only with a single writer",
                UserWarning,
                stacklevel=4,
            )

    def default_settings(self) -> StorageSettings:
        """What this storage does, as Icechunk's ``StorageSettings``: its retries and
        whether it writes conditionally (concurrency is left unset: frazil bounds requests
        with ``S3Settings.max_concurrency``)."""
        from ..settings import StorageRetriesSettings, StorageSettings

        s = self.config.settings
        return StorageSettings(
            retries=StorageRetriesSettings(
                max_tries=s.max_attempts,
                initial_backoff_ms=round(s.backoff_base * 1000),
                max_backoff_ms=round(s.backoff_cap * 1000),
            ),
            unsafe_use_conditional_create=s.unsafe_use_conditional_create,
            unsafe_use_conditional_update=s.unsafe_use_conditional_update,
        )

    def describe(self) -> str:
        where = f"s3://{self.config.bucket}/{self._root}"
        return f"{where} at {self.config.endpoint_url}" if self.config.endpoint_url else where

    def __repr__(self) -> str:
        return f"<S3Storage {self.describe()}>"

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._setup(state["config"], warn=False)

    # -- clients -----------------------------------------------------------------------
    def _make_client(self) -> _Client:
        import aiobotocore.session
        import s3fs

        c, s = self.config, self.config.settings
        config_kwargs: dict[str, Any] = {
            "retries": {"mode": "standard", "total_max_attempts": 1},  # ours, not botocore's
            "max_pool_connections": s.max_concurrency,
            "connect_timeout": s.connect_timeout,
            "read_timeout": s.read_timeout,
            # frazil verifies what it reads (checksums recorded by referrers); botocore's
            # extra CRC32 on every request and response costs client CPU for nothing
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        }
        if c.force_path_style or c.endpoint_url is not None:
            config_kwargs["s3"] = {"addressing_style": "path"}
        client_kwargs: dict[str, Any] = {}
        region = c.region or ("us-east-1" if c.endpoint_url else None)
        if region:
            client_kwargs["region_name"] = region
        use_ssl = not (c.endpoint_url or "").lower().startswith("http://")
        session = aiobotocore.session.AioSession()
        session.register_component("data_loader", _shared_loader())
        if c.get_credentials is not None:
            # botocore refreshes these before each request that finds them within
            # minutes of expiry (the signer and the direct path both read them)
            session._credentials = _refreshable_credentials(c)
        fs = s3fs.S3FileSystem(
            anon=c.anonymous,
            key=c.access_key_id,
            secret=c.secret_access_key,
            token=c.session_token,
            endpoint_url=c.endpoint_url,
            use_ssl=use_ssl,
            client_kwargs=client_kwargs,
            config_kwargs=config_kwargs,
            asynchronous=True,
            skip_instance_cache=True,
            cache_regions=False,
            session=session,
        )
        fs.retries = 1  # s3fs's own retry loop: one attempt, we retry above it
        if c.read_headers or c.write_headers:
            session.register("before-sign.s3", _ExtraHeaders(c.read_headers, c.write_headers))
        return _Client(fs, s.max_concurrency)

    def _key(self, key: str) -> str:
        return self._root + validate_key(key)

    async def _call(self, method: str, what: str, **kwargs: Any) -> Any:
        client = await self._clients.get()
        async with client.limit:
            try:
                return await client.fs._call_s3(method, Bucket=self.config.bucket, **kwargs)
            except InvalidInputError:  # from our own code: get_credentials gave no credentials
                raise
            except Exception as e:
                err = translate(e, f"{what} in {self.describe()}")
                if isinstance(err, _RangeNotSatisfiable):
                    err = StorageError(f"{what} in {self.describe()}: {e}")
                raise err from e

    def _retrying(self, op: Callable[[], Awaitable[T]], what: str) -> Awaitable[T]:
        return retry_call(op, self._retry, what)

    # -- single attempts -----------------------------------------------------------------
    async def _direct(self, client: _Client) -> DirectClient | None:
        if not client.direct_ready:
            client.direct_ready = True
            c, s = self.config, self.config.settings
            base = base_url(c.bucket, c.region, c.endpoint_url, c.force_path_style)
            if (s.direct_get or s.direct_put) and base is not None:
                await client.fs.set_session()
                client.direct = DirectClient(
                    base,
                    c.region or "us-east-1",
                    client.fs._s3,
                    c.anonymous,
                    s.connect_timeout,
                    s.read_timeout,
                    s.max_concurrency,
                    c.read_headers,
                    c.write_headers,
                )
        return client.direct

    async def _get_once(self, key: str, range_header: str | None) -> tuple[bytes, str, bool]:
        """(bytes, ETag, whether the server applied the range); b'' on 416."""
        data, resp, ranged = await self.get_response(key, range_header)
        return data, str(resp.get("ETag", "")), ranged

    async def get_response(
        self, key: str, range_header: str | None
    ) -> tuple[bytes, dict[str, Any], bool]:
        """One GetObject, not retried: (bytes, the response's metadata (``ETag``,
        ``LastModified``, ...), whether the server applied the range); b'' on 416."""
        kwargs: dict[str, Any] = {"Key": self._key(key)}
        if range_header is not None:
            kwargs["Range"] = range_header
        client = await self._clients.get()
        what = f"reading {key!r} from {self.describe()}"
        direct = client.direct if client.direct_ready else await self._direct(client)
        async with client.limit:
            if direct is not None and self.config.settings.direct_get:
                try:
                    got = await direct.get(kwargs["Key"], range_header, what)
                except RangeNotSatisfiable:
                    return b"", {}, True
                if got is not None:
                    return got
            try:
                resp = await client.fs._call_s3("get_object", Bucket=self.config.bucket, **kwargs)
                body = resp["Body"]
                try:
                    data = await body.read()
                finally:
                    body.close()
            except InvalidInputError:  # from our own code: get_credentials gave no credentials
                raise
            except Exception as e:
                err = translate(e, what)
                if isinstance(err, _RangeNotSatisfiable):
                    return b"", {}, True
                if isinstance(err, _Precondition):
                    err = StorageError(f"{what}: unexpected precondition failure")
                raise err from e
        return bytes(data), resp, "ContentRange" in resp

    async def _head_once(self, key: str) -> dict[str, Any] | None:
        what = f"looking up {key!r}"
        try:
            out: dict[str, Any] = await self._call("head_object", what, Key=self._key(key))
            return out
        except NotFoundError:
            return None
        except StorageError as e:
            code, status = _code_and_status(e.__cause__ or e)
            if status == 403 and code in (None, "", "403", "Forbidden"):
                await self._why_forbidden(key, what)
            raise

    async def _why_forbidden(self, key: str, what: str) -> None:
        """A HEAD answered 403, which has no body to say why: ask with a one-byte GET of
        the same key, whose error body carries the server's code (``InvalidAccessKeyId``,
        ``SignatureDoesNotMatch``, ``AccessDenied``...), and raise that error. Returns if
        the GET is not refused (the HEAD's error stands)."""
        try:
            resp = await self._call("get_object", what, Key=self._key(key), Range="bytes=0-0")
        except NotFoundError:
            return
        resp["Body"].close()

    async def _head(self, key: str) -> dict[str, Any] | None:
        return await self._retrying(lambda: self._head_once(key), f"head {key!r}")

    async def _version_once(self, key: str) -> str | None:
        head = await self._head_once(key)
        return None if head is None else str(head.get("ETag", ""))

    async def _put_once(self, key: str, data: bytes, **conditions: str) -> PutResult:
        try:
            etag = await self._put_direct(key, data, conditions)
            if etag is None:
                resp = await self._call(
                    "put_object", f"writing {key!r}", Key=self._key(key), Body=data, **conditions
                )
                etag = resp.get("ETag")
        except _Precondition as e:
            if not conditions:
                raise StorageError(
                    f"writing {key!r} to {self.describe()}: unexpected "
                    "precondition failure on an unconditional put"
                ) from e
            return PutResult(False, await self._version_once(key))
        except NotFoundError:  # If-Match on a missing key, on stores that say 404
            if "IfMatch" not in conditions:
                raise
            return PutResult(False, await self._version_once(key))
        if not etag:  # some S3-compatible stores leave it out: ask
            etag = await self._version_once(key)
        return PutResult(True, str(etag or ""))

    async def _put_direct(self, key: str, data: bytes, conditions: dict[str, str]) -> str | None:
        """A PutObject on the fast path: the ETag (or '' if the server sent none), or
        None where botocore must make the request. Raises ``_Precondition`` on 412."""
        if not self.config.settings.direct_put:
            return None
        client = await self._clients.get()
        direct = client.direct if client.direct_ready else await self._direct(client)
        if direct is None:
            return None
        headers = {_CONDITION_HEADERS[name]: value for name, value in conditions.items()}
        async with client.limit:
            try:
                etag = await direct.put(
                    self._key(key), data, headers, f"writing {key!r} to {self.describe()}"
                )
            except PreconditionFailed as e:
                raise _Precondition(str(e)) from e
        return etag

    # -- the Storage interface -------------------------------------------------------------
    async def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        validate_key(key)
        header = range_header(byte_range)
        if header == "":  # an empty range: only check that the object exists
            await self.size(key)
            return b""
        data, _, ranged = await self._retrying(lambda: self._get_once(key, header), f"get {key!r}")
        if header is not None and not ranged:  # the server sent the whole object
            data = slice_range(data, byte_range)
        return data

    async def get_range_info(self, key: str, start: int, end: int) -> RangeInfo:
        validate_key(key)
        what = f"reading bytes {start}-{end - 1} of {key!r} in {self.describe()}"
        data, resp, ranged = await self._retrying(
            lambda: self.get_response(key, f"bytes={start}-{end - 1}"), what
        )
        if not ranged:
            data = data[start:end]
        lm = resp.get("LastModified")
        return RangeInfo(data, resp.get("ETag"), lm if isinstance(lm, dt.datetime) else None)

    async def get_with_version(self, key: str) -> tuple[bytes, str]:
        validate_key(key)
        data, etag, _ = await self._retrying(lambda: self._get_once(key, None), f"get {key!r}")
        return data, etag

    async def put(self, key: str, data: bytes) -> None:
        validate_key(key)
        data = bytes(data)
        await self._retrying(lambda: self._put_once(key, data), f"put {key!r}")

    async def put_if_absent(self, key: str, data: bytes) -> PutResult:
        validate_key(key)
        data = bytes(data)
        if not self.config.settings.unsafe_use_conditional_create:
            return await self._racy_put(key, data, None)
        return await conditional_put(
            lambda: self._put_once(key, data, IfNoneMatch="*"),
            self._read_back(key),
            data,
            self._retry,
            f"create {key!r}",
        )

    async def put_if_version(self, key: str, data: bytes, version: str) -> PutResult:
        validate_key(key)
        data = bytes(data)
        if not self.config.settings.unsafe_use_conditional_update:
            return await self._racy_put(key, data, version)
        return await conditional_put(
            lambda: self._put_once(key, data, IfMatch=version),
            self._read_back(key),
            data,
            self._retry,
            f"update {key!r}",
        )

    def _read_back(self, key: str) -> Callable[[], Awaitable[tuple[bytes, str] | None]]:
        return read_back_with(
            lambda: self._get_with_version_once(key), self._retry, f"read back {key!r}"
        )

    async def _get_with_version_once(self, key: str) -> tuple[bytes, str]:
        data, etag, _ = await self._get_once(key, None)
        return data, etag

    async def _racy_put(self, key: str, data: bytes, version: str | None) -> PutResult:
        """Check, then put: for stores without conditional writes (not atomic)."""
        head = await self._head(key)
        current = None if head is None else str(head.get("ETag", ""))
        if current != version:
            return PutResult(False, current)
        result = await self._retrying(lambda: self._put_once(key, data), f"put {key!r}")
        return result

    async def delete_if_version(self, key: str, version: str) -> bool:
        validate_key(key)

        async def once() -> bool:
            try:
                await self._call(
                    "delete_object", f"deleting {key!r}", Key=self._key(key), IfMatch=version
                )
            except (_Precondition, NotFoundError):
                return False
            return True

        return await self._retrying(once, f"delete {key!r} if unchanged")

    async def exists(self, key: str) -> bool:
        validate_key(key)
        return await self._head(key) is not None

    async def size(self, key: str) -> int:
        validate_key(key)
        head = await self._head(key)
        if head is None:
            raise NotFoundError(f"object {key!r} not found in {self.describe()}")
        return int(head.get("ContentLength", 0))

    async def list(self, prefix: str) -> list[str]:
        return [i.key for i in await self.list_info(prefix)]

    async def list_info(self, prefix: str) -> ObjectInfos:
        full = self._root + prefix
        return await self._retrying(lambda: self._list_once(full), f"list {prefix!r}")

    async def _list_once(self, full: str) -> ObjectInfos:
        out: ObjectInfos = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": full}
            if token:
                kwargs["ContinuationToken"] = token
            resp = await self._call("list_objects_v2", f"listing {full!r}", **kwargs)
            for item in resp.get("Contents") or ():
                k = str(item["Key"])
                # some servers normalize the prefix ("a//" lists "a/"): filter here
                if k.startswith(full) and not k.endswith("/"):
                    out.append(
                        ObjectInfo(
                            k[len(self._root) :], int(item.get("Size", 0)), item.get("LastModified")
                        )
                    )
            token = resp.get("NextContinuationToken")
            if not resp.get("IsTruncated") or not token:
                break
        return sorted(out, key=lambda i: i.key)

    async def delete(self, keys: Sequence[str]) -> None:
        full = sorted({self._key(k) for k in keys})
        batches = [full[i : i + DELETE_BATCH] for i in range(0, len(full), DELETE_BATCH)]
        await runtime.gather_limited([self._delete_batch(b) for b in batches], limit=8)

    async def _delete_batch(self, batch: Keys) -> None:
        await self._retrying(lambda: self._delete_once(batch), f"delete {len(batch)} objects")

    async def _delete_once(self, batch: Keys) -> None:
        resp = await self._call(
            "delete_objects",
            f"deleting {len(batch)} objects",
            Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
        )
        errors = [e for e in resp.get("Errors") or () if e.get("Code") not in NOT_FOUND_CODES]
        if errors:
            first = errors[0]
            code = str(first.get("Code", ""))
            cls = TransientStorageError if code in TRANSIENT_CODES else StorageError
            raise cls(
                f"deleting {first.get('Key')!r} from {self.describe()}: {code}: "
                f"{first.get('Message', '')} ({len(errors)} failed)"
            )


def s3_storage(
    *,
    bucket: str,
    prefix: str,
    region: str | None = None,
    endpoint_url: str | None = None,
    allow_http: bool = False,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    anonymous: bool = False,
    from_env: bool = False,
    force_path_style: bool = False,
    settings: S3Settings | None = None,
    expires_after: dt.datetime | None = None,
    get_credentials: Callable[[], Any] | None = None,
    scatter_initial_credentials: bool = False,
    network_stream_timeout_seconds: int | None = None,
    requester_pays: bool = False,
    **setting_overrides: Any,
) -> S3Storage:
    """Storage in an S3 bucket (or an S3-compatible store at ``endpoint_url``).

    Credentials: explicit ``access_key_id``/``secret_access_key`` (and
    ``session_token``), or ``anonymous=True`` (unsigned requests), or else the standard
    AWS chain (environment, config files, instance roles; ``from_env=True`` says so
    explicitly). ``allow_http`` permits a plain-http ``endpoint_url``. Tuning goes in
    ``settings`` (an ``S3Settings``) or as keyword arguments naming its fields, e.g.
    ``s3_storage(..., max_attempts=10, max_concurrency=32)``.

    ``get_credentials`` (Icechunk's): a picklable function returning
    ``S3StaticCredentials``; it is called again whenever the current credentials are
    within minutes of their ``expires_after`` (``scatter_initial_credentials=True`` calls it
    at once, and the result travels with pickled copies; otherwise each copy calls it
    anew). Credentials it returns already expired are used for one request and asked for
    again before the next, as Icechunk does. ``expires_after`` of explicit keys is accepted
    and not used (they are not refreshed).

    ``network_stream_timeout_seconds`` (Icechunk's) sets ``read_timeout``, the longest
    wait for bytes of a response (0: no practical limit, one day). ``requester_pays=True``
    is refused (not supported).
    """
    if requester_pays is not False:
        raise InvalidInputError("s3_storage: requester_pays=True is not supported by frazil")
    if network_stream_timeout_seconds is not None:
        t = network_stream_timeout_seconds
        if not isinstance(t, int) or isinstance(t, bool) or t < 0:
            raise InvalidInputError(
                f"s3_storage: network_stream_timeout_seconds must be an int >= 0, got {t!r}"
            )
        setting_overrides.setdefault("read_timeout", float(t) if t else NO_READ_TIMEOUT)
    current = None
    if get_credentials is not None and scatter_initial_credentials:
        current = get_credentials()
        _credential_metadata(current)  # checks its type
    base = settings if settings is not None else S3Settings()
    if not isinstance(base, S3Settings):
        raise InvalidInputError("settings must be an S3Settings")
    unknown = set(setting_overrides) - {f.name for f in dataclasses.fields(S3Settings)}
    if unknown:
        raise InvalidInputError(f"unknown S3 settings: {', '.join(sorted(unknown))}")
    if setting_overrides:
        base = dataclasses.replace(base, **setting_overrides)
    return S3Storage(
        S3Config(
            bucket=bucket,
            prefix=prefix,
            region=region,
            endpoint_url=endpoint_url,
            allow_http=allow_http,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            session_token=session_token,
            anonymous=anonymous,
            from_env=from_env,
            force_path_style=force_path_style,
            settings=base,
            get_credentials=get_credentials,
            current_credentials=current,
        )
    )


def s3_storage_from_options(
    options: Any, bucket: str, prefix: str | None = None, credentials: Any = None
) -> S3Storage:
    """S3 storage from Icechunk's ``S3Options`` and ``S3Credentials`` (``Storage.new_s3``)."""
    from ..virtual.containers import S3Credentials, S3Options

    if not isinstance(options, S3Options):
        raise InvalidInputError(f"Storage.new_s3: config must be S3Options, got {options!r}")
    if credentials is not None and not isinstance(credentials, S3Credentials):
        raise InvalidInputError(
            f"Storage.new_s3: credentials must be S3Credentials (or None), got {credentials!r}"
        )
    o, c = options, credentials
    kwargs: dict[str, Any] = {}
    if c is not None and c.kind == "static":
        kwargs.update(
            access_key_id=c.access_key_id,
            secret_access_key=c.secret_access_key,
            session_token=c.session_token,
        )
    elif c is not None and c.kind == "refreshable":
        kwargs["get_credentials"] = c.get_credentials
    storage = s3_storage(
        bucket=bucket,
        prefix=prefix or "",
        region=o.region,
        endpoint_url=o.endpoint_url,
        allow_http=o.allow_http,
        anonymous=o.anonymous or (c is not None and c.kind == "anonymous"),
        from_env=c is not None and c.kind == "from_env",
        force_path_style=o.force_path_style,
        network_stream_timeout_seconds=o.network_stream_timeout_seconds,
        requester_pays=o.requester_pays,
        **kwargs,
    )
    if c is not None and c.kind == "refreshable" and c.current is not None:
        storage = S3Storage(dataclasses.replace(storage.config, current_credentials=c.current))
    return storage


def s3_object_store_storage(
    *,
    bucket: str,
    prefix: str | None,
    region: str | None = None,
    endpoint_url: str | None = None,
    allow_http: bool = False,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    expires_after: dt.datetime | None = None,
    anonymous: bool | None = None,
    from_env: bool | None = None,
    force_path_style: bool = False,
) -> S3Storage:
    """Icechunk's name for S3 storage through its object-store client: in frazil the same
    S3 storage as ``s3_storage`` (one S3 client serves both), with Icechunk's arguments."""
    return s3_storage(
        bucket=bucket,
        prefix=prefix or "",
        region=region,
        endpoint_url=endpoint_url,
        allow_http=allow_http,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        session_token=session_token,
        expires_after=expires_after,
        anonymous=bool(anonymous),
        from_env=bool(from_env),
        force_path_style=force_path_style,
    )
