"""Google Cloud Storage: Icechunk's constructors and credential types (``gcs_storage``,
``gcs_credentials``, ``GcsCredentials``, ``GcsBearerCredential``, ...) over the obstore
backend (``objstore``).

Conditional create and compare-and-swap are GCS's generation preconditions: object_store
writes through GCS's XML API with ``x-goog-if-generation-match: 0`` (create) or
``x-goog-if-generation-match: <generation read>`` (swap), and the version frazil keeps for
an object is its generation (``x-goog-generation``), which changes on every write. So
commits are safe. ``config`` takes object_store's GCS option keys, as Icechunk's does
(``base_url`` for an emulator, ``allow_http``, ``service_account``, ...).

Credentials: a service account (file or serialized key), application default credentials,
a bearer token, the environment (object_store's ``GOOGLE_*`` variables, then the instance's
metadata server), anonymous (unsigned reads), or refreshable: a picklable function returning
``GcsBearerCredential(bearer, expires_after=...)``, called again by obstore before the
current token expires.
"""

from __future__ import annotations

import datetime as dt
import pickle
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import InvalidInputError
from .base import PutResult, validate_key
from .objstore import ObjectStoreSettings, ObjectStoreStorage, StoreSpec


@dataclass(frozen=True)
class GcsBearerCredential:
    """A bearer token valid until ``expires_after`` (None: no expiry), as Icechunk's class of
    that name: what a ``get_credentials`` function of refreshable credentials returns."""

    bearer: str = field(repr=False)
    expires_after: dt.datetime | None = None

    def __init__(self, bearer: str, *, expires_after: dt.datetime | None = None) -> None:
        if not isinstance(bearer, str):
            raise InvalidInputError("GcsBearerCredential needs a bearer token (a string)")
        if expires_after is not None and (
            not isinstance(expires_after, dt.datetime) or expires_after.tzinfo is None
        ):
            raise InvalidInputError(
                "GcsBearerCredential.expires_after must be a timezone-aware datetime or None"
            )
        object.__setattr__(self, "bearer", bearer)
        object.__setattr__(self, "expires_after", expires_after)


def _check_secret(what: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{what} needs a non-empty string")


class GcsStaticCredentials:
    """Icechunk's static GCS credentials: ``ServiceAccount(path)``,
    ``ServiceAccountKey(key)``, ``ApplicationCredentials(path)``, ``BearerToken(token)``
    (secrets kept out of ``repr``)."""

    @dataclass(frozen=True)
    class ServiceAccount:
        """The path of a service account's JSON key file."""

        path: str

        def __post_init__(self) -> None:
            _check_secret("GcsStaticCredentials.ServiceAccount", self.path)

    @dataclass(frozen=True)
    class ServiceAccountKey:
        """A service account's key, serialized (its JSON text)."""

        key: str = field(repr=False)

        def __post_init__(self) -> None:
            _check_secret("GcsStaticCredentials.ServiceAccountKey", self.key)

    @dataclass(frozen=True)
    class ApplicationCredentials:
        """The path of an application default credentials (ADC) file."""

        path: str

        def __post_init__(self) -> None:
            _check_secret("GcsStaticCredentials.ApplicationCredentials", self.path)

    @dataclass(frozen=True)
    class BearerToken:
        """An OAuth bearer token, never refreshed."""

        token: str = field(repr=False)

        def __post_init__(self) -> None:
            _check_secret("GcsStaticCredentials.BearerToken", self.token)


AnyGcsStaticCredential = (
    GcsStaticCredentials.ServiceAccount
    | GcsStaticCredentials.ServiceAccountKey
    | GcsStaticCredentials.ApplicationCredentials
    | GcsStaticCredentials.BearerToken
)


class GcsCredentials:
    """Icechunk's GCS credentials: ``Anonymous()``, ``FromEnv()``, ``Static(static
    credentials)``, ``Refreshable(pickled_function, current=None)``."""

    @dataclass(frozen=True)
    class Anonymous:
        """Unsigned requests (public buckets)."""

    @dataclass(frozen=True)
    class FromEnv:
        """Credentials from the process environment (``GOOGLE_*`` variables, application
        default credentials, the instance's metadata server)."""

    @dataclass(frozen=True)
    class Static:
        """Credentials given once, never refreshed."""

        credentials: AnyGcsStaticCredential

        def __post_init__(self) -> None:
            if not isinstance(self.credentials, AnyGcsStaticCredential):
                raise InvalidInputError(
                    "GcsCredentials.Static takes GcsStaticCredentials.ServiceAccount, "
                    ".ServiceAccountKey, .ApplicationCredentials or .BearerToken, got "
                    f"{type(self.credentials).__name__}"
                )

    @dataclass(frozen=True)
    class Refreshable:
        """Tokens from a picklable function returning ``GcsBearerCredential``, called again
        before the current token expires; ``current``, if given, is used first. Built from
        the pickled function, as Icechunk's; ``get_credentials`` is the function."""

        pickled_function: bytes = field(repr=False)
        current: GcsBearerCredential | None = field(default=None, repr=False)

        def __post_init__(self) -> None:
            if not isinstance(self.pickled_function, bytes):
                raise InvalidInputError(
                    "GcsCredentials.Refreshable takes a pickled function (bytes)"
                )
            try:
                fn = pickle.loads(self.pickled_function)
            except Exception as e:
                raise InvalidInputError(f"GcsCredentials.Refreshable: cannot unpickle ({e})") from e
            if not callable(fn):
                raise InvalidInputError("GcsCredentials.Refreshable: not a pickled function")
            if self.current is not None and not isinstance(self.current, GcsBearerCredential):
                raise InvalidInputError(
                    "GcsCredentials.Refreshable.current must be a GcsBearerCredential or None"
                )

        @property
        def get_credentials(self) -> Callable[[], GcsBearerCredential]:
            fn: Callable[[], GcsBearerCredential] = pickle.loads(self.pickled_function)
            return fn


AnyGcsCredential = (
    GcsCredentials.Anonymous
    | GcsCredentials.FromEnv
    | GcsCredentials.Static
    | GcsCredentials.Refreshable
)


def gcs_static_credentials(
    *,
    service_account_file: str | None = None,
    service_account_key: str | None = None,
    application_credentials: str | None = None,
    bearer_token: str | None = None,
) -> AnyGcsStaticCredential:
    """Static credentials for Google Cloud Storage: exactly one of the four."""
    given = [service_account_file, service_account_key, application_credentials, bearer_token]
    if given.count(None) != 3:
        raise InvalidInputError(
            "gcs_static_credentials takes exactly one of service_account_file, "
            "service_account_key, application_credentials, bearer_token"
        )
    if service_account_file is not None:
        return GcsStaticCredentials.ServiceAccount(service_account_file)
    if service_account_key is not None:
        return GcsStaticCredentials.ServiceAccountKey(service_account_key)
    if application_credentials is not None:
        return GcsStaticCredentials.ApplicationCredentials(application_credentials)
    assert bearer_token is not None
    return GcsStaticCredentials.BearerToken(bearer_token)


def gcs_refreshable_credentials(
    get_credentials: Callable[[], GcsBearerCredential],
    scatter_initial_credentials: bool = False,
) -> GcsCredentials.Refreshable:
    """Tokens that ``get_credentials()`` (picklable: it travels with pickled repositories and
    sessions) gives, called again before the current one expires.
    ``scatter_initial_credentials=True`` calls it now, so that pickled copies start with
    that token."""
    if not callable(get_credentials):
        raise InvalidInputError("gcs_refreshable_credentials takes a callable")
    try:
        pickled = pickle.dumps(get_credentials)
    except Exception as e:
        raise InvalidInputError(
            f"gcs_refreshable_credentials: get_credentials must be picklable ({e})"
        ) from e
    current = _bearer(get_credentials()) if scatter_initial_credentials else None
    return GcsCredentials.Refreshable(pickled, current)


def gcs_anonymous_credentials() -> GcsCredentials.Anonymous:
    """Unsigned requests (public buckets)."""
    return GcsCredentials.Anonymous()


def gcs_from_env_credentials() -> GcsCredentials.FromEnv:
    """Credentials from the environment (``GOOGLE_SERVICE_ACCOUNT``,
    ``GOOGLE_APPLICATION_CREDENTIALS`` and the other variables object_store reads, then the
    instance's metadata server)."""
    return GcsCredentials.FromEnv()


def gcs_credentials(
    *,
    service_account_file: str | None = None,
    service_account_key: str | None = None,
    application_credentials: str | None = None,
    bearer_token: str | None = None,
    from_env: bool | None = None,
    anonymous: bool | None = None,
    get_credentials: Callable[[], GcsBearerCredential] | None = None,
    scatter_initial_credentials: bool = False,
) -> AnyGcsCredential:
    """GCS credentials (Icechunk's name): anonymous if asked, static if a file, key or token
    is given, refreshable if ``get_credentials`` is, else the environment's. Arguments that
    contradict each other raise ``InvalidInputError`` (a ``ValueError``)."""
    statics = [service_account_file, service_account_key, application_credentials, bearer_token]
    given = any(v is not None for v in statics)
    if anonymous:
        if given or from_env or get_credentials is not None:
            raise InvalidInputError(
                "gcs_credentials: anonymous=True excludes credentials and from_env=True"
            )
        return gcs_anonymous_credentials()
    if get_credentials is not None:
        if given or from_env:
            raise InvalidInputError(
                "gcs_credentials: get_credentials excludes static credentials and from_env=True"
            )
        return gcs_refreshable_credentials(get_credentials, scatter_initial_credentials)
    if given:
        if from_env:
            raise InvalidInputError("gcs_credentials: credentials exclude from_env=True")
        return GcsCredentials.Static(
            gcs_static_credentials(
                service_account_file=service_account_file,
                service_account_key=service_account_key,
                application_credentials=application_credentials,
                bearer_token=bearer_token,
            )
        )
    if from_env is None or from_env:
        return gcs_from_env_credentials()
    raise InvalidInputError("gcs_credentials: from_env=False needs some other credentials")


def _bearer(value: object) -> GcsBearerCredential:
    if not isinstance(value, GcsBearerCredential):
        raise InvalidInputError(
            f"get_credentials must return a GcsBearerCredential, got {type(value).__name__}"
        )
    return value


class _TokenProvider:
    """obstore's ``credential_provider`` for refreshable credentials: the current token
    first (if not near its expiry), then ``get_credentials()`` whenever obstore asks.

    obstore asks again only once the expiry it was given has passed, so it is given the
    token's expiry less ``REFRESH_MARGIN``: a token is replaced that long before it expires
    (a token that lives shorter than that is replaced at every request)."""

    REFRESH_MARGIN: ClassVar[dt.timedelta] = dt.timedelta(minutes=5)

    def __init__(
        self,
        get_credentials: Callable[[], GcsBearerCredential],
        current: GcsBearerCredential | None,
    ) -> None:
        self._get = get_credentials
        self._current = current
        self._lock = threading.Lock()

    def __call__(self) -> dict[str, Any]:
        with self._lock:
            c, self._current = self._current, None  # the scattered token, used once
            if c is None or self._refresh_at(c) <= dt.datetime.now(dt.UTC):
                c = _bearer(self._get())
        refresh = self._refresh_at(c)
        return {"token": c.bearer, "expires_at": None if refresh == _NEVER else refresh}

    def _refresh_at(self, c: GcsBearerCredential) -> dt.datetime:
        return _NEVER if c.expires_after is None else c.expires_after - self.REFRESH_MARGIN


_NEVER = dt.datetime.max.replace(tzinfo=dt.UTC)


#: object_store's GCS option keys (each also with a ``google_`` prefix); other keys of
#: ``config`` are its HTTP client's options
_GCS_KEYS = frozenset(
    {
        "service_account",
        "service_account_path",
        "service_account_key",
        "bucket",
        "bucket_name",
        "application_credentials",
        "base_url",
        "bearer_token",
        "skip_signature",
    }
)


def _anonymous_token() -> dict[str, Any]:
    # reads are unsigned (skip_signature); object_store signs writes regardless, and an
    # empty token keeps it from asking the environment (or a metadata server) for one
    return {"token": "", "expires_at": None}


@dataclass(frozen=True)
class GcsSpec(StoreSpec):
    """A GCS bucket, a prefix in it, credentials and object_store options: all that a GCS
    ``ObjectStoreStorage`` pickles (a refreshable credential's function included)."""

    bucket: str
    prefix: str
    credentials: AnyGcsCredential = field(default_factory=GcsCredentials.FromEnv)
    options: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    settings: ObjectStoreSettings = field(default_factory=ObjectStoreSettings)
    version_key: ClassVar[str] = "version"  # the object's generation

    def __post_init__(self) -> None:
        if not isinstance(self.bucket, str) or not self.bucket or "/" in self.bucket:
            raise InvalidInputError(f"invalid GCS bucket name {self.bucket!r}")
        if not isinstance(self.prefix, str):
            raise InvalidInputError(f"GCS prefix must be a string, got {self.prefix!r}")
        if any(p in (".", "..") for p in self.prefix.strip("/").split("/")):
            raise InvalidInputError(f"invalid GCS prefix {self.prefix!r}")
        if not isinstance(self.credentials, AnyGcsCredential):
            raise InvalidInputError(
                "credentials must be GcsCredentials.Anonymous(), .FromEnv(), .Static(...) or "
                f".Refreshable(...), got {type(self.credentials).__name__}"
            )
        if not isinstance(self.settings, ObjectStoreSettings):
            raise InvalidInputError("settings must be an ObjectStoreSettings")

    def _config(self) -> tuple[dict[str, str], dict[str, Any]]:
        """obstore's GCS config and client options: ``options`` keys that are not GCS's
        own (``allow_http``, ``proxy_url``, ...) are client options."""
        config: dict[str, str] = {}
        client: dict[str, Any] = self.settings.client_options()
        for key, value in self.options:
            if key.lower().removeprefix("google_") in _GCS_KEYS:
                config[key] = value
            else:
                client[key] = value
        creds = self.credentials
        if isinstance(creds, GcsCredentials.Anonymous):
            config["skip_signature"] = "true"
        elif isinstance(creds, GcsCredentials.Static):
            c = creds.credentials
            if isinstance(c, GcsStaticCredentials.ServiceAccount):
                config["service_account"] = c.path
            elif isinstance(c, GcsStaticCredentials.ServiceAccountKey):
                config["service_account_key"] = c.key
            elif isinstance(c, GcsStaticCredentials.ApplicationCredentials):
                config["application_credentials"] = c.path
            else:
                config["bearer_token"] = c.token
        return config, client

    def credential_provider(self) -> Callable[[], dict[str, Any]] | None:
        """obstore's ``credential_provider`` for these credentials (None: obstore's own)."""
        creds = self.credentials
        if isinstance(creds, GcsCredentials.Refreshable):
            return _TokenProvider(creds.get_credentials, creds.current)
        if isinstance(creds, GcsCredentials.Anonymous):
            return _anonymous_token
        return None

    def build(self, obstore: Any, *, retries: bool, shared: dict[str, Any]) -> Any:
        if "provider" not in shared:  # one for both clients: a token asked for once
            shared["provider"] = self.credential_provider()
        config, client = self._config()
        return obstore._store.GCSStore(
            self.bucket,
            prefix=self.prefix.strip("/") or None,
            config=config,
            client_options=client,
            retry_config=self.settings.retry_config(retries),
            credential_provider=shared["provider"],
        )

    def describe(self) -> str:
        root = self.prefix.strip("/")
        where = f"gs://{self.bucket}/{root + '/' if root else ''}"
        endpoint = next(
            (v for k, v in self.options if k.lower() in ("base_url", "google_base_url")), None
        )
        return f"{where} at {endpoint}" if endpoint else where


class GcsStorage(ObjectStoreStorage):
    """Objects under a prefix of a Google Cloud Storage bucket. Build one with
    ``gcs_storage(...)``."""

    spec: GcsSpec

    async def put_if_version(self, key: str, data: bytes, version: str) -> PutResult:
        validate_key(key)
        if not (isinstance(version, str) and version.isdecimal() and version.isascii()):
            # not a generation (GCS refuses it with 400): it matches no object's version
            return PutResult(False, await self._version_now(key))
        return await super().put_if_version(key, data, version)


def gcs_storage(
    *,
    bucket: str,
    prefix: str | None,
    service_account_file: str | None = None,
    service_account_key: str | None = None,
    application_credentials: str | None = None,
    bearer_token: str | None = None,
    anonymous: bool | None = None,
    from_env: bool | None = None,
    config: dict[str, str] | None = None,
    get_credentials: Callable[[], GcsBearerCredential] | None = None,
    scatter_initial_credentials: bool = False,
) -> GcsStorage:
    """Storage in a Google Cloud Storage bucket (Icechunk's signature).

    Credentials as ``gcs_credentials`` builds them: a service account file or serialized
    key, application credentials, a bearer token, ``anonymous=True``, ``get_credentials`` (a
    picklable function returning ``GcsBearerCredential``, called again before expiry), or
    else the environment. ``config`` takes object_store's GCS option keys (``base_url``,
    ``allow_http``, ``service_account``, ...); secrets given there are kept out of ``repr``
    and messages."""
    credentials = gcs_credentials(
        service_account_file=service_account_file,
        service_account_key=service_account_key,
        application_credentials=application_credentials,
        bearer_token=bearer_token,
        from_env=from_env,
        anonymous=anonymous,
        get_credentials=get_credentials,
        scatter_initial_credentials=scatter_initial_credentials,
    )
    return GcsStorage(GcsSpec(bucket, prefix or "", credentials, _options(config)))


def _options(config: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    if config is None:
        return ()
    if not isinstance(config, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in config.items()
    ):
        raise InvalidInputError("gcs_storage: config must be a dict of str to str")
    return tuple(sorted(config.items()))
