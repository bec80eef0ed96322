"""Virtual chunk containers and their credentials: which external URLs a repository may
reference (``VirtualChunkContainer``, saved in its config) and how a reader reaches them
(``containers_credentials``, given when the repository is opened, never saved).

A container is a URL prefix plus the configuration of the object store behind it:
``s3_store``, ``gcs_store``, ``azure_store``, ``http_store`` or ``local_filesystem_store``.
Its prefix must use that store's scheme (``s3://``, ``gs://``, ``az://container``,
``http(s)://``, ``file://``). A location
belongs to the container with the longest prefix that contains it, where "contains" is
on a ``/`` boundary: ``s3://data`` contains ``s3://data/x.nc`` but not
``s3://data-other/x.nc``.

Credentials are values whose secrets stay out of ``repr``. They travel with a pickled
``Repository`` (as the S3 storage's own credentials do), so that forks sent to workers
can read virtual chunks too.
"""

from __future__ import annotations

import datetime as dt
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import InvalidInputError
from ..storage.azure import AzureCredentials
from ..storage.gcs import AnyGcsCredential
from ..storage.s3 import check_endpoint
from .locations import Location, LocationError, parse_location

__all__ = [
    "AnyCredential",
    "AnyObjectStoreConfig",
    "AzureStoreConfig",
    "GcsStoreConfig",
    "HttpStoreConfig",
    "LocalFileSystemStoreConfig",
    "S3Credentials",
    "S3StaticCredentials",
    "S3Options",
    "ObjectStoreConfig",
    "s3_refreshable_credentials",
    "S3StoreConfig",
    "VirtualChunkContainer",
    "azure_store",
    "containers_credentials",
    "gcs_store",
    "http_store",
    "local_filesystem_store",
    "s3_anonymous_credentials",
    "s3_credentials",
    "s3_from_env_credentials",
    "s3_static_credentials",
    "s3_store",
]


# -- object store configurations ---------------------------------------------------------
@dataclass(frozen=True)
class S3StoreConfig:
    """An S3 (or S3-compatible) store; see ``s3_store``."""

    region: str | None = None
    endpoint_url: str | None = None
    allow_http: bool = False
    anonymous: bool = False
    force_path_style: bool = False

    type = "s3"
    schemes = ("s3://",)

    def __post_init__(self) -> None:
        for name in ("region", "endpoint_url"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise InvalidInputError(f"s3_store: {name} must be a string, got {v!r}")
        for name in ("allow_http", "anonymous", "force_path_style"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(f"s3_store: {name} must be True or False")
        check_endpoint(self.endpoint_url, self.allow_http, "s3_store: ")

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "region": self.region,
            "endpoint_url": self.endpoint_url,
            "allow_http": self.allow_http,
            "anonymous": self.anonymous,
            "force_path_style": self.force_path_style,
        }


@dataclass(frozen=True)
class _OptsStoreConfig:
    """A store configured by a dict of string options (kept with the container)."""

    opts: dict[str, str] = field(default_factory=dict)

    type = ""

    def __post_init__(self) -> None:
        if not isinstance(self.opts, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.opts.items()
        ):
            raise InvalidInputError(f"{self.type}_store: opts must be a dict of strings")

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "opts": dict(self.opts)}


#: object_store GCS options that are (or choose) credentials: never saved in a config
_GCS_CREDENTIAL_KEYS = frozenset(
    {
        "service_account",
        "service_account_path",
        "service_account_key",
        "application_credentials",
        "bearer_token",
    }
)


@dataclass(frozen=True)
class GcsStoreConfig(_OptsStoreConfig):
    """A Google Cloud Storage store (locations ``gs://bucket/path``), read through frazil's
    GCS backend; ``opts`` are object_store's GCS option keys and its HTTP client's
    (``base_url``, ``allow_http``, ...), never credentials (they would be saved)."""

    type = "gcs"
    schemes = ("gs://", "gcs://")

    def __post_init__(self) -> None:
        super().__post_init__()
        secrets = sorted(
            k for k in self.opts if k.lower().removeprefix("google_") in _GCS_CREDENTIAL_KEYS
        )
        if secrets:
            raise InvalidInputError(
                f"gcs_store: opts hold credentials ({', '.join(secrets)}), which would be "
                "saved in the repository's config; pass them when opening instead "
                "(authorize_virtual_chunk_access with gcs_credentials(...))"
            )


_AZURE_SECRETS = frozenset(
    {
        "account_key",
        "access_key",
        "master_key",
        "sas_key",
        "sas_token",
        "token",
        "bearer_token",
        "client_secret",
        "encryption_key",
        "fabric_session_token",
    }
)


def _is_azure_secret(name: str) -> bool:
    """Whether an object_store Azure option (``azure_storage_account_key``,
    ``account_key``, ...) is a secret."""
    n = name.lower()
    for head in ("azure_storage_", "azure_"):
        if n.startswith(head):
            n = n[len(head) :]
            break
    return n in _AZURE_SECRETS


@dataclass(frozen=True)
class AzureStoreConfig(_OptsStoreConfig):
    """An Azure Blob Storage account (``opts["account"]``; the other options are
    object_store's Azure keys); locations are ``az://container/path``, read through
    frazil's Azure backend."""

    type = "azure"
    schemes = ("az://",)

    def __post_init__(self) -> None:
        super().__post_init__()
        account = self.opts.get("account")
        if not account or "/" in account:
            raise InvalidInputError(f"azure_store: needs an account name, got {account!r}")
        secrets = sorted(k for k in self.opts if _is_azure_secret(k))
        if secrets:
            raise InvalidInputError(
                f"azure_store: config holds credentials ({', '.join(secrets)}), which would be "
                "saved in the repository's config; pass them when opening instead "
                "(authorize_virtual_chunk_access with azure_credentials(...))"
            )

    @property
    def account(self) -> str:
        return self.opts["account"]

    @property
    def options(self) -> dict[str, str]:
        """object_store's options, without the account."""
        return {k: v for k, v in self.opts.items() if k != "account"}


@dataclass(frozen=True)
class HttpStoreConfig(_OptsStoreConfig):
    """Files served over HTTP(S) (``opts`` are kept; this version does not use them)."""

    type = "http"
    schemes = ("http://", "https://")


@dataclass(frozen=True)
class LocalFileSystemStoreConfig:
    """Files on a local (or mounted) filesystem, under ``path``; locations are
    ``file:///absolute/path``."""

    path: str

    type = "local"
    schemes = ("file://",)

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise InvalidInputError(
                f"local_filesystem_store: path must be a non-empty string, got {self.path!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "path": self.path}


AnyObjectStoreConfig = (
    S3StoreConfig | GcsStoreConfig | AzureStoreConfig | HttpStoreConfig | LocalFileSystemStoreConfig
)
_STORE_TYPES: dict[str, type[Any]] = {
    c.type: c
    for c in (
        S3StoreConfig,
        GcsStoreConfig,
        AzureStoreConfig,
        HttpStoreConfig,
        LocalFileSystemStoreConfig,
    )
}


def s3_store(
    region: str | None = None,
    endpoint_url: str | None = None,
    allow_http: bool = False,
    anonymous: bool = False,
    s3_compatible: bool = False,
    force_path_style: bool = False,
    network_stream_timeout_seconds: int = 60,
    requester_pays: bool = False,
) -> S3StoreConfig:
    """An S3 store for a virtual chunk container (Icechunk's name and parameters).

    ``s3_compatible`` changes nothing (frazil treats AWS and other S3 stores alike);
    ``network_stream_timeout_seconds`` is accepted and not used; ``requester_pays=True``
    is refused (not supported)."""
    for name, v in (("s3_compatible", s3_compatible), ("requester_pays", requester_pays)):
        if not isinstance(v, bool):
            raise InvalidInputError(f"s3_store: {name} must be True or False")
    if requester_pays:
        raise InvalidInputError("s3_store: requester_pays=True is not supported by frazil")
    if not isinstance(network_stream_timeout_seconds, int) or network_stream_timeout_seconds < 0:
        raise InvalidInputError("s3_store: network_stream_timeout_seconds must be an int >= 0")
    return S3StoreConfig(region, endpoint_url, allow_http, anonymous, force_path_style)


class S3Options:
    """Icechunk's options of an S3 store, with its properties and setters; turned into a
    store by ``ObjectStoreConfig.S3(options)``. ``network_stream_timeout_seconds`` is
    kept and not used; ``requester_pays=True`` is refused when the store is made."""

    _FIELDS: ClassVar[dict[str, Any]] = {
        "region": str,
        "endpoint_url": str,
        "allow_http": bool,
        "anonymous": bool,
        "force_path_style": bool,
        "network_stream_timeout_seconds": int,
        "requester_pays": bool,
    }

    def __init__(
        self,
        region: str | None = None,
        endpoint_url: str | None = None,
        allow_http: bool = False,
        anonymous: bool = False,
        force_path_style: bool = False,
        network_stream_timeout_seconds: int | None = None,
        requester_pays: bool = False,
    ) -> None:
        self.region = region
        self.endpoint_url = endpoint_url
        self.allow_http = allow_http
        self.anonymous = anonymous
        self.force_path_style = force_path_style
        self.network_stream_timeout_seconds = network_stream_timeout_seconds
        self.requester_pays = requester_pays

    def __setattr__(self, name: str, value: Any) -> None:
        kind = self._FIELDS.get(name)
        if kind is None:
            raise InvalidInputError(f"S3Options has no option {name!r}")
        optional = name in ("region", "endpoint_url", "network_stream_timeout_seconds")
        if not (value is None and optional) and (
            not isinstance(value, kind) or (kind is int and isinstance(value, bool))
        ):
            raise InvalidInputError(f"S3Options.{name} must be {kind.__name__}, got {value!r}")
        object.__setattr__(self, name, value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, S3Options) and vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "S3Options(" + ", ".join(f"{k}={v!r}" for k, v in vars(self).items()) + ")"


def _from_options(options: S3Options) -> S3StoreConfig:
    if not isinstance(options, S3Options):
        raise InvalidInputError("ObjectStoreConfig.S3 takes S3Options")
    o = options
    return s3_store(
        o.region,
        o.endpoint_url,
        o.allow_http,
        o.anonymous,
        force_path_style=o.force_path_style,
        requester_pays=o.requester_pays,
    )


class _StoreVariant(type):
    """The type of one of ``ObjectStoreConfig``'s variants: calling the variant makes
    frazil's store config, and ``isinstance`` checks against that config's type, so the
    variants work as Icechunk's classes do (``ObjectStoreConfig.S3 | ObjectStoreConfig.Http``
    in annotations, ``isinstance(store, ObjectStoreConfig.S3)``)."""

    target: type[Any]

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, cls.target)


class ObjectStoreConfig:
    """Icechunk's store constructors for virtual chunk containers: each makes frazil's
    store config (``S3StoreConfig``, ``GcsStoreConfig``, ...). ``InMemory`` and ``Tigris``
    are not provided."""

    class S3(metaclass=_StoreVariant):
        target = S3StoreConfig

        def __new__(cls, options: S3Options) -> S3StoreConfig:  # type: ignore[misc]
            return _from_options(options)

    class S3Compatible(metaclass=_StoreVariant):
        target = S3StoreConfig

        def __new__(cls, options: S3Options) -> S3StoreConfig:  # type: ignore[misc]
            return _from_options(options)

    class Gcs(metaclass=_StoreVariant):
        target = GcsStoreConfig

        def __new__(cls, opts: dict[str, str] | None = None) -> GcsStoreConfig:  # type: ignore[misc]
            return gcs_store(opts)

    class Azure(metaclass=_StoreVariant):
        target = AzureStoreConfig

        def __new__(cls, opts: dict[str, str]) -> AzureStoreConfig:  # type: ignore[misc]
            return AzureStoreConfig(dict(opts))

    class Http(metaclass=_StoreVariant):
        target = HttpStoreConfig

        def __new__(cls, opts: dict[str, str] | None = None) -> HttpStoreConfig:  # type: ignore[misc]
            return http_store(opts)

    class LocalFileSystem(metaclass=_StoreVariant):
        target = LocalFileSystemStoreConfig

        def __new__(cls, path: str) -> LocalFileSystemStoreConfig:  # type: ignore[misc]
            return local_filesystem_store(path)


def gcs_store(opts: dict[str, str] | None = None) -> GcsStoreConfig:
    """A Google Cloud Storage store for a virtual chunk container."""
    return GcsStoreConfig(dict(opts or {}))


def azure_store(*, account: str, config: dict[str, str] | None = None) -> AzureStoreConfig:
    """An Azure Blob Storage account for a virtual chunk container (Icechunk's signature):
    its prefix is ``az://container`` or ``az://container/path``; ``config`` takes
    object_store's Azure option keys."""
    return AzureStoreConfig({"account": account, **(config or {})})


def http_store(opts: dict[str, str] | None = None) -> HttpStoreConfig:
    """An HTTP(S) store for a virtual chunk container."""
    return HttpStoreConfig(dict(opts or {}))


def local_filesystem_store(path: str) -> LocalFileSystemStoreConfig:
    """A local filesystem store for a virtual chunk container."""
    return LocalFileSystemStoreConfig(str(path))


# -- locations ---------------------------------------------------------------------------
def location_problem(location: object) -> str | None:
    """Why ``location`` is not an acceptable virtual chunk URL, or None if it is (the
    rules of ``frazil.locations``: one canonical form, no dot segments however spelled)."""
    try:
        parse_location(location)
    except LocationError as e:
        return str(e)
    return None


def prefix_contains(prefix: str, location: str) -> bool:
    """``location`` is under ``prefix`` (both canonicalised; on a segment boundary)."""
    try:
        return parse_location(prefix).contains(parse_location(location))
    except LocationError:
        return False


# -- containers --------------------------------------------------------------------------
@dataclass(frozen=True)
class VirtualChunkContainer:
    """Virtual chunks whose location starts with ``url_prefix`` are read from ``store``.

    Declared in the repository config (``RepositoryConfig.set_virtual_chunk_container``);
    a reader must also authorize the prefix when opening the repository.
    """

    url_prefix: str
    store: AnyObjectStoreConfig

    def __post_init__(self) -> None:
        if not isinstance(self.store, tuple(_STORE_TYPES.values())):
            raise InvalidInputError(
                "VirtualChunkContainer: store must come from s3_store(), gcs_store(), "
                f"http_store() or local_filesystem_store(), got {type(self.store).__name__}"
            )
        try:
            parsed = parse_location(self.url_prefix)
        except LocationError as e:
            raise InvalidInputError(f"VirtualChunkContainer: url_prefix: {e}") from None
        schemes = self.store.schemes
        if parsed.scheme + "://" not in schemes:
            raise InvalidInputError(
                f"VirtualChunkContainer: url_prefix {self.url_prefix!r} does not fit a "
                f"{self.store.type} store (it must start with {' or '.join(schemes)})"
            )

    @property
    def location(self) -> Location:
        """The prefix in canonical form (``frazil.locations``)."""
        return parse_location(self.url_prefix)

    def contains(self, location: str | Location) -> bool:
        """``location`` lies under this container's prefix (canonical forms compared)."""
        if isinstance(location, str):
            try:
                location = parse_location(location)
            except LocationError:
                return False
        return self.location.contains(location)

    def to_dict(self) -> dict[str, Any]:
        return {"url_prefix": self.url_prefix, "store": self.store.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VirtualChunkContainer:
        store = dict(d["store"])
        kind = store.pop("type")
        store_cls = _STORE_TYPES.get(kind)
        if store_cls is None:
            raise InvalidInputError(f"unknown virtual chunk store type {kind!r}")
        return cls(d["url_prefix"], store_cls(**store))


# -- credentials -------------------------------------------------------------------------
@dataclass(frozen=True)
class S3StaticCredentials:
    """S3 keys, valid until ``expires_after`` (None: no expiry), as Icechunk's class of
    that name; what a ``get_credentials`` function of refreshable credentials returns."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expires_after: dt.datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.access_key_id, str) or not isinstance(self.secret_access_key, str):
            raise InvalidInputError(
                "S3StaticCredentials need access_key_id and secret_access_key (strings)"
            )
        if self.session_token is not None and not isinstance(self.session_token, str):
            raise InvalidInputError("S3StaticCredentials.session_token must be a str or None")
        if self.expires_after is not None and (
            not isinstance(self.expires_after, dt.datetime) or self.expires_after.tzinfo is None
        ):
            raise InvalidInputError(
                "S3StaticCredentials.expires_after must be a timezone-aware datetime or None"
            )


@dataclass(frozen=True)
class S3Credentials:
    """How to sign requests to S3: ``kind`` is ``"static"`` (the keys given),
    ``"anonymous"`` (unsigned), ``"from_env"`` (the process environment: variables,
    profile, instance role) or ``"refreshable"`` (``get_credentials()`` called for
    ``S3StaticCredentials`` whenever the current ones are about to expire; ``current``, if
    given, used first). Secrets are kept out of ``repr``. Icechunk's
    ``S3Credentials.Static(...)``, ``.Anonymous()``, ``.FromEnv()`` and
    ``.Refreshable(pickled_function, current)`` build them too."""

    kind: str
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    expires_after: dt.datetime | None = None
    get_credentials: Callable[[], S3StaticCredentials] | None = field(default=None, repr=False)
    current: S3StaticCredentials | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in ("static", "anonymous", "from_env", "refreshable"):
            raise InvalidInputError(f"unknown S3 credential kind {self.kind!r}")
        if self.kind == "static" and (
            not isinstance(self.access_key_id, str) or not isinstance(self.secret_access_key, str)
        ):
            raise InvalidInputError(
                "static S3 credentials need access_key_id and secret_access_key (strings)"
            )
        if (self.kind == "refreshable") != callable(self.get_credentials):
            raise InvalidInputError(
                "refreshable S3 credentials (and only they) need a get_credentials callable"
            )
        if self.current is not None and not isinstance(self.current, S3StaticCredentials):
            raise InvalidInputError("S3Credentials.current must be S3StaticCredentials or None")

    # Icechunk's constructors, as nested names (bound below)
    FromEnv: ClassVar[Callable[[], S3Credentials]]
    Anonymous: ClassVar[Callable[[], S3Credentials]]
    Static: ClassVar[Callable[[S3StaticCredentials], S3Credentials]]
    Refreshable: ClassVar[Callable[..., S3Credentials]]


def _static(credentials: S3StaticCredentials) -> S3Credentials:
    """Icechunk's ``S3Credentials.Static(S3StaticCredentials(...))``."""
    if not isinstance(credentials, S3StaticCredentials):
        raise InvalidInputError("S3Credentials.Static takes S3StaticCredentials")
    c = credentials
    return S3Credentials(
        "static", c.access_key_id, c.secret_access_key, c.session_token, c.expires_after
    )


def _refreshable(
    pickled_function: bytes, current: S3StaticCredentials | None = None
) -> S3Credentials:
    """Icechunk's ``S3Credentials.Refreshable(pickle.dumps(get_credentials), current)``."""
    if not isinstance(pickled_function, bytes):
        raise InvalidInputError("S3Credentials.Refreshable takes a pickled function (bytes)")
    try:
        fn = pickle.loads(pickled_function)
    except Exception as e:
        raise InvalidInputError(f"S3Credentials.Refreshable: cannot unpickle ({e})") from e
    return S3Credentials("refreshable", get_credentials=fn, current=current)


S3Credentials.FromEnv = staticmethod(lambda: S3Credentials("from_env"))
S3Credentials.Anonymous = staticmethod(lambda: S3Credentials("anonymous"))
S3Credentials.Static = staticmethod(_static)
S3Credentials.Refreshable = staticmethod(_refreshable)


AnyCredential = (
    S3Credentials | AzureCredentials.FromEnv | AzureCredentials.Static | AnyGcsCredential
)
#: Icechunk's union of its four S3 credential classes: frazil has one class for all four
AnyS3Credential = S3Credentials


class _CredentialVariant(type):
    """One of ``Credentials``' variants: calling it checks and returns the credentials (frazil
    needs no wrapper around them), ``isinstance`` checks their kind."""

    target: Any
    label: str

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, cls.target)

    def __call__(cls, credentials: Any) -> Any:
        if not isinstance(credentials, cls.target):
            raise InvalidInputError(
                f"Credentials.{cls.label} takes {cls.label} credentials (from "
                f"{cls.label.lower()}_credentials() and the like), got "
                f"{type(credentials).__name__}"
            )
        return credentials


class Credentials:
    """Icechunk's wrapper of a container's credentials by store kind: ``Credentials.S3(c)``,
    ``.Gcs(c)``, ``.Azure(c)`` give ``c`` back, checked (``containers_credentials`` takes
    credentials as they are); ``isinstance(c, Credentials.S3)`` tells the kind."""

    class S3(metaclass=_CredentialVariant):
        target = S3Credentials
        label = "S3"

    class Gcs(metaclass=_CredentialVariant):
        target = AnyGcsCredential
        label = "Gcs"

    class Azure(metaclass=_CredentialVariant):
        target = AzureCredentials.FromEnv | AzureCredentials.Static
        label = "Azure"


def s3_static_credentials(
    *,
    access_key_id: str,
    secret_access_key: str,
    session_token: str | None = None,
    expires_after: dt.datetime | None = None,
) -> S3Credentials:
    return S3Credentials("static", access_key_id, secret_access_key, session_token, expires_after)


def s3_anonymous_credentials() -> S3Credentials:
    """Unsigned requests (public buckets)."""
    return S3Credentials("anonymous")


def s3_from_env_credentials() -> S3Credentials:
    """Credentials from the process environment (variables, profile, instance role)."""
    return S3Credentials("from_env")


def s3_refreshable_credentials(
    get_credentials: Callable[[], S3StaticCredentials],
    scatter_initial_credentials: bool = False,
) -> S3Credentials:
    """Credentials that ``get_credentials()`` (picklable: it travels with pickled
    repositories and sessions) gives, called again whenever the current ones are within
    a few minutes of their ``expires_after``. ``scatter_initial_credentials=True`` calls it
    now, so that pickled copies start with these credentials."""
    if not callable(get_credentials):
        raise InvalidInputError("s3_refreshable_credentials takes a callable")
    current = _checked(get_credentials()) if scatter_initial_credentials else None
    return S3Credentials("refreshable", get_credentials=get_credentials, current=current)


def _checked(creds: object) -> S3StaticCredentials:
    if isinstance(creds, S3Credentials) and creds.kind == "static":
        assert creds.access_key_id is not None and creds.secret_access_key is not None
        return S3StaticCredentials(
            creds.access_key_id, creds.secret_access_key, creds.session_token, creds.expires_after
        )
    if not isinstance(creds, S3StaticCredentials):
        raise InvalidInputError(
            f"get_credentials must return S3StaticCredentials, got {type(creds).__name__}"
        )
    return creds


def s3_credentials(
    *,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    expires_after: dt.datetime | None = None,
    anonymous: bool | None = None,
    from_env: bool | None = None,
    get_credentials: Callable[[], S3StaticCredentials] | None = None,
    scatter_initial_credentials: bool = False,
) -> S3Credentials:
    """S3 credentials (Icechunk's name): keys if given, else refreshable ones if
    ``get_credentials`` is given, else anonymous if asked, else the environment's."""
    if get_credentials is not None:
        if access_key_id is not None or secret_access_key is not None or anonymous or from_env:
            raise InvalidInputError(
                "s3_credentials: get_credentials cannot be combined with keys, anonymous "
                "or from_env"
            )
        return s3_refreshable_credentials(get_credentials, scatter_initial_credentials)
    if access_key_id is not None or secret_access_key is not None:
        if anonymous or from_env:
            raise InvalidInputError(
                "s3_credentials: keys cannot be combined with anonymous=True or from_env=True"
            )
        return s3_static_credentials(
            access_key_id=access_key_id,  # type: ignore[arg-type]
            secret_access_key=secret_access_key,  # type: ignore[arg-type]
            session_token=session_token,
            expires_after=expires_after,
        )
    if anonymous and from_env:
        raise InvalidInputError("s3_credentials: anonymous and from_env exclude each other")
    return s3_anonymous_credentials() if anonymous else s3_from_env_credentials()


def containers_credentials(
    m: Mapping[str, AnyCredential | None] | None = None, **kwargs: AnyCredential | None
) -> dict[str, AnyCredential | None]:
    """Authorization to read virtual chunks: url prefix -> credentials, or None for the
    store's natural credentials (usually the process environment). Pass the result as
    ``authorize_virtual_chunk_access=`` to ``Repository.create`` / ``open``."""
    out: dict[str, AnyCredential | None] = {}
    for prefix, cred in {**dict(m or {}), **kwargs}.items():
        if not isinstance(prefix, str):
            raise InvalidInputError(
                f"containers_credentials: keys are url prefixes (strings), got {prefix!r}"
            )
        if cred is not None and not isinstance(cred, AnyCredential):
            raise InvalidInputError(
                f"containers_credentials: credentials for {prefix!r} must come from "
                f"s3_credentials(), azure_credentials(), gcs_credentials() and the like, or be "
                "None; got "
                f"{type(cred).__name__}"
            )
        out[prefix] = cred
    return out
