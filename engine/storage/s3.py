"""S3 (and S3-compatible stores: R2, Tigris, SeaweedFS, ...) on the obstore backend
(``objstore``): the configuration (``S3Config``, ``S3Settings``), the spec that builds
obstore's ``S3Store`` from it, the storage class, and Icechunk's S3 constructors.

* Conditional create is ``PutObject`` with ``If-None-Match: *``; compare-and-swap is
  ``PutObject`` with ``If-Match: <ETag>`` (object_store's ``conditional_put = "etag"``). A
  failed precondition is obstore's ``PreconditionError``/``AlreadyExistsError``, never
  message text; some servers answer 412 to ``If-Match`` on a missing key (SeaweedFS),
  others 404 (moto): both are "not swapped" (``ObjectStoreStorage._put_once``). A put whose
  answer was lost is settled by reading back (``frazil.storage.retry.conditional_put``).
* Versions are ETags, the MD5 of the bytes for single-part puts
  (``versions_follow_content``): frazil never rewrites identical bytes with a conditional
  put (its refs carry a random ``write_id``). obstore has no conditional delete.
* Credentials: explicit keys and refreshable ones (``get_credentials``) go to obstore as a
  ``credential_provider`` (so no ``AWS_*`` variable of the environment mixes in), anonymous
  requests are unsigned (``skip_signature``); with none of those, obstore's own chain
  (environment, web identity, container and instance credentials) is used.
* ``requester_pays`` sends ``x-amz-request-payer: requester``; Tigris's consistency headers
  go on every request (object_store's ``default_headers``, outside the signature).
* ``unsafe_use_conditional_create/update=False``: check-then-put (racy, with a warning).
* Processes and pickling as every obstore backend: clients rebuilt per process (fork-safe
  through ``_obstore_runtime``), only the configuration pickled.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import InvalidInputError
from .base import PutResult, validate_key
from .objstore import ObjectStoreSettings, ObjectStoreStorage, StoreSpec
from .retry import RetrySettings, check_client_settings

if TYPE_CHECKING:
    from ..settings import StorageSettings


@dataclass(frozen=True, slots=True)
class S3Settings:
    """Tuning of the S3 backend.

    ``max_attempts`` (first try included), ``backoff_base`` and ``backoff_cap`` (seconds)
    govern retries of transient failures; ``max_concurrency`` bounds the requests in
    flight per event loop (and the connection pool); ``connect_timeout`` and
    ``read_timeout`` are per request, in seconds. ``unsafe_use_conditional_update`` and
    ``unsafe_use_conditional_create`` (default True) say whether the store supports
    ``If-Match`` and ``If-None-Match`` on ``PutObject``; turning them off makes commits
    use racy check-then-put (a warning is given).
    """

    max_attempts: int = 8
    backoff_base: float = 0.05
    backoff_cap: float = 5.0
    max_concurrency: int = 64
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    unsafe_use_conditional_update: bool = True
    unsafe_use_conditional_create: bool = True

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
    #: send ``x-amz-request-payer: requester`` (the reader pays for a requester-pays bucket)
    requester_pays: bool = False

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


NO_READ_TIMEOUT = 86_400.0  # network_stream_timeout_seconds=0: "no timeout", one day


def _static(creds: Any, what: str) -> tuple[str, str, str | None, dt.datetime | None]:
    """(key, secret, token, expiry) of ``S3StaticCredentials`` (or anything shaped so)."""
    key = getattr(creds, "access_key_id", None)
    secret = getattr(creds, "secret_access_key", None)
    if not isinstance(key, str) or not isinstance(secret, str):
        raise InvalidInputError(
            f"{what} returned {type(creds).__name__}, which cannot be cast to S3StaticCredentials"
        )
    token = getattr(creds, "session_token", None)
    expiry = getattr(creds, "expires_after", None)
    return key, secret, token if isinstance(token, str) else None, expiry


class _StaticProvider:
    """obstore's ``credential_provider`` for keys given once (never expire)."""

    def __init__(self, key: str, secret: str, token: str | None) -> None:
        self._answer = {
            "access_key_id": key,
            "secret_access_key": secret,
            "token": token,
            "expires_at": None,
        }

    def __call__(self) -> dict[str, Any]:
        return dict(self._answer)


class _RefreshingProvider:
    """obstore's ``credential_provider`` for refreshable credentials: the scattered ones
    first (if not near expiry), then what ``get_credentials()`` returned last, until it is
    near its expiry (each of obstore's stores asks on its own: they share one provider).

    obstore asks again once the expiry it was given has passed, so it is given the
    credentials' expiry less ``REFRESH_MARGIN``: they are replaced that long before they
    expire. Credentials returned already expired (or within the margin) are used for the
    request at hand and asked for again before the next one, as Icechunk does."""

    REFRESH_MARGIN: ClassVar[dt.timedelta] = dt.timedelta(minutes=5)

    def __init__(self, get_credentials: Callable[[], Any], current: Any) -> None:
        self._get = get_credentials
        self._current = current
        self._lock = threading.Lock()

    def __call__(self) -> dict[str, Any]:
        with self._lock:  # the stores of a process share what was fetched last
            c = self._current
            if c is None or self._refresh_at(c) <= dt.datetime.now(dt.UTC):
                c = self._current = self._get()
        key, secret, token, _ = _static(c, "get_credentials")
        refresh = self._refresh_at(c)
        return {
            "access_key_id": key,
            "secret_access_key": secret,
            "token": token,
            "expires_at": None if refresh == _NEVER else refresh,
        }

    def _refresh_at(self, c: Any) -> dt.datetime:
        expiry = _static(c, "get_credentials")[3]
        return _NEVER if expiry is None else expiry - self.REFRESH_MARGIN


_NEVER = dt.datetime.max.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class S3Spec(StoreSpec):
    """An S3 bucket, a prefix in it, credentials, endpoint and tuning (an ``S3Config``):
    all that an S3 ``ObjectStoreStorage`` pickles (a refreshable credential's function
    included)."""

    config: S3Config

    def __post_init__(self) -> None:
        if not isinstance(self.config, S3Config):
            raise InvalidInputError("S3Spec takes an S3Config")

    @property
    def settings(self) -> ObjectStoreSettings:  # type: ignore[override]
        s = self.config.settings
        return ObjectStoreSettings(
            max_attempts=s.max_attempts,
            backoff_base=s.backoff_base,
            backoff_cap=s.backoff_cap,
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            max_concurrency=s.max_concurrency,
        )

    def s3_config(self) -> dict[str, Any]:
        """object_store's S3 options (no secrets: those go through the provider)."""
        c = self.config
        path_style = c.force_path_style or c.endpoint_url is not None
        out: dict[str, Any] = {
            "region": c.region or "us-east-1",
            "conditional_put": "etag",
            "virtual_hosted_style_request": not path_style,
        }
        if c.endpoint_url is not None:
            out["endpoint"] = c.endpoint_url
        if c.anonymous:
            out["skip_signature"] = True
        if c.requester_pays:
            out["request_payer"] = True
        return out

    def client_config(self) -> dict[str, Any]:
        """object_store's HTTP client options: timeouts, plain http, extra headers."""
        c = self.config
        out = self.settings.client_options()
        if c.allow_http:
            out["allow_http"] = True
        headers = dict(c.write_headers)
        headers.update(c.read_headers)
        if headers:
            out["default_headers"] = headers
        return out

    def credential_provider(self) -> Callable[[], dict[str, Any]] | None:
        """obstore's ``credential_provider`` (None: anonymous, or obstore's own chain)."""
        c = self.config
        if c.get_credentials is not None:
            return _RefreshingProvider(c.get_credentials, c.current_credentials)
        if c.access_key_id is not None and c.secret_access_key is not None:
            return _StaticProvider(c.access_key_id, c.secret_access_key, c.session_token)
        return None

    def build(self, obstore: Any, *, retries: bool, shared: dict[str, Any]) -> Any:
        if "provider" not in shared:  # one for both clients: credentials asked for once
            shared["provider"] = self.credential_provider()
        return obstore._store.S3Store(
            self.config.bucket,
            prefix=self.config.prefix.strip("/") or None,
            config=self.s3_config(),
            client_options=self.client_config(),
            retry_config=self.settings.retry_config(retries),
            credential_provider=shared["provider"],
        )

    def describe(self) -> str:
        c = self.config
        root = c.prefix.strip("/")
        where = f"s3://{c.bucket}/{root + '/' if root else ''}"
        return f"{where} at {c.endpoint_url}" if c.endpoint_url else where


class S3Storage(ObjectStoreStorage):
    """Objects under ``s3://bucket/prefix/`` through obstore. Build one with
    ``s3_storage(...)`` (or ``r2_storage``, ``tigris_storage``)."""

    spec: S3Spec
    versions_follow_content = True  # ETags are MD5s of the content (single-part puts)

    def __init__(self, spec: S3Spec | S3Config) -> None:
        if isinstance(spec, S3Config):  # as the former S3Storage(S3Config(...)) was made
            spec = S3Spec(spec)
        if not isinstance(spec, S3Spec):
            raise InvalidInputError("S3Storage takes an S3Config; use frazil.s3_storage(...)")
        super().__init__(spec)
        s = spec.config.settings
        self.supports_conditional_writes = (
            s.unsafe_use_conditional_update and s.unsafe_use_conditional_create
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        ObjectStoreStorage.__init__(self, state["spec"])
        s = self.spec.config.settings
        self.supports_conditional_writes = (
            s.unsafe_use_conditional_update and s.unsafe_use_conditional_create
        )

    @property
    def config(self) -> S3Config:
        """The configuration this storage was made from."""
        return self.spec.config

    def warn_if_unsafe(self, stacklevel: int) -> None:
        """The warning that refs are written by racy check-then-put, if they are."""
        s = self.config.settings
        off = [
            n
            for n in ("unsafe_use_conditional_update", "unsafe_use_conditional_create")
            if not getattr(s, n)
        ]
        if off:
            warnings.warn(
                f"{self.describe()}: {' and '.join(off)} = False: refs are written with "
                "plain check-then-put, so concurrent commits (and concurrent branch or tag "
                "creation) can be lost; use this only with a single writer",
                UserWarning,
                stacklevel=stacklevel + 1,
            )

    def default_settings(self) -> StorageSettings:
        """What this storage does, as Icechunk's ``StorageSettings``: its retries and
        whether it writes conditionally."""
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

    async def put_if_absent(self, key: str, data: bytes) -> PutResult:
        if not self.config.settings.unsafe_use_conditional_create:
            return await self._racy_put(key, bytes(data), None)
        return await super().put_if_absent(key, data)

    async def put_if_version(self, key: str, data: bytes, version: str) -> PutResult:
        if not self.config.settings.unsafe_use_conditional_update:
            return await self._racy_put(key, bytes(data), version)
        return await super().put_if_version(key, data, version)

    async def _racy_put(self, key: str, data: bytes, version: str | None) -> PutResult:
        """Check, then put: for stores without conditional writes (not atomic)."""
        validate_key(key)
        current = await self._version_now(key)
        if current != version:
            return PutResult(False, current)
        await self.put(key, data)
        return PutResult(True, await self._version_now(key) or "")


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
    """Storage in an S3 bucket (or an S3-compatible store at ``endpoint_url``), on
    obstore (Icechunk's signature, plus frazil's tuning).

    Credentials: explicit ``access_key_id``/``secret_access_key`` (and
    ``session_token``), or ``anonymous=True`` (unsigned requests), or else obstore's chain
    (``AWS_*`` environment variables, web identity, container and instance credentials;
    ``from_env=True`` says so explicitly; ``~/.aws`` profile files are not read).
    ``allow_http`` permits a plain-http ``endpoint_url``. Tuning goes in ``settings`` (an
    ``S3Settings``) or as keyword arguments naming its fields, e.g.
    ``s3_storage(..., max_attempts=10, max_concurrency=32)``.

    ``get_credentials`` (Icechunk's): a picklable function returning
    ``S3StaticCredentials``; it is called again once the current credentials are within
    five minutes of their ``expires_after`` (``scatter_initial_credentials=True`` calls it
    at once, and the result travels with pickled copies; otherwise each copy calls it
    anew). Credentials it returns already expired are used for one request and asked for
    again before the next, as Icechunk does. ``expires_after`` of explicit keys is accepted
    and not used (they are not refreshed).

    ``network_stream_timeout_seconds`` (Icechunk's) sets ``read_timeout``, the longest
    wait for bytes of a response (0: no practical limit, one day). ``requester_pays=True``
    sends ``x-amz-request-payer: requester`` (the reader pays for a requester-pays bucket).
    """
    if not isinstance(requester_pays, bool):
        raise InvalidInputError(
            f"s3_storage: requester_pays must be a bool, got {requester_pays!r}"
        )
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
        _static(current, "get_credentials")  # checks its type
    base = settings if settings is not None else S3Settings()
    if not isinstance(base, S3Settings):
        raise InvalidInputError("settings must be an S3Settings")
    unknown = set(setting_overrides) - {f.name for f in dataclasses.fields(S3Settings)}
    if unknown:
        raise InvalidInputError(f"unknown S3 settings: {', '.join(sorted(unknown))}")
    if setting_overrides:
        base = dataclasses.replace(base, **setting_overrides)
    config = S3Config(
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
        requester_pays=requester_pays,
    )
    return s3_storage_from_config(config, stacklevel=3)


def s3_storage_from_config(config: S3Config, *, stacklevel: int = 2) -> S3Storage:
    """The S3 storage of ``config`` (on obstore), warning if its writes are racy."""
    storage = S3Storage(S3Spec(config))
    storage.warn_if_unsafe(stacklevel + 1)
    return storage


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
        storage = s3_storage_from_config(
            dataclasses.replace(storage.config, current_credentials=c.current)
        )
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
