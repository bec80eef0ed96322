"""Azure Blob Storage: Icechunk's constructors and credential types (``azure_storage``,
``azure_credentials``, ``AzureCredentials``, ...) over the obstore backend (``objstore``).

Conditional create and compare-and-swap are Azure's own (``If-None-Match: *`` and
``If-Match`` on the blob's ETag, which changes on every write), so commits are safe.
``config`` takes object_store's Azure option keys as Icechunk's does, e.g. for the Azurite
emulator ``{"azure_storage_endpoint": "http://127.0.0.1:10000/devstoreaccount1",
"azure_allow_http": "true"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInputError
from .objstore import ObjectStoreSettings, ObjectStoreStorage, StoreSpec


class AzureStaticCredentials:
    """Icechunk's static Azure credentials: ``AccessKey(key)``, ``SasToken(token)``,
    ``BearerToken(token)`` (secrets kept out of ``repr``)."""

    @dataclass(frozen=True)
    class AccessKey:
        """The storage account's shared key."""

        key: str = field(repr=False)

        def __post_init__(self) -> None:
            _check_secret("AzureStaticCredentials.AccessKey", self.key)

    @dataclass(frozen=True)
    class SasToken:
        """A shared access signature (its query string, percent-encoded)."""

        token: str = field(repr=False)

        def __post_init__(self) -> None:
            _check_secret("AzureStaticCredentials.SasToken", self.token)

    @dataclass(frozen=True)
    class BearerToken:
        """An OAuth bearer token."""

        token: str = field(repr=False)

        def __post_init__(self) -> None:
            _check_secret("AzureStaticCredentials.BearerToken", self.token)


AnyAzureStaticCredential = (
    AzureStaticCredentials.AccessKey
    | AzureStaticCredentials.SasToken
    | AzureStaticCredentials.BearerToken
)


class AzureCredentials:
    """Icechunk's Azure credentials: ``FromEnv()`` (the environment's ``AZURE_*``
    variables, as object_store reads them) or ``Static(static credentials)``."""

    @dataclass(frozen=True)
    class FromEnv:
        """Credentials from the process environment."""

    @dataclass(frozen=True)
    class Static:
        """Credentials given once, never refreshed."""

        credentials: AnyAzureStaticCredential

        def __post_init__(self) -> None:
            if not isinstance(self.credentials, AnyAzureStaticCredential):
                raise InvalidInputError(
                    "AzureCredentials.Static takes AzureStaticCredentials.AccessKey, "
                    f".SasToken or .BearerToken, got {type(self.credentials).__name__}"
                )


AnyAzureCredential = AzureCredentials.FromEnv | AzureCredentials.Static


def _check_secret(what: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{what} needs a non-empty string")


def azure_static_credentials(
    *,
    access_key: str | None = None,
    sas_token: str | None = None,
    bearer_token: str | None = None,
) -> AnyAzureStaticCredential:
    """Static credentials for Azure Blob Storage: exactly one of the three."""
    if [access_key, sas_token, bearer_token].count(None) != 2:
        raise InvalidInputError(
            "azure_static_credentials takes exactly one of access_key, sas_token, bearer_token"
        )
    if access_key is not None:
        return AzureStaticCredentials.AccessKey(access_key)
    if sas_token is not None:
        return AzureStaticCredentials.SasToken(sas_token)
    assert bearer_token is not None
    return AzureStaticCredentials.BearerToken(bearer_token)


def azure_from_env_credentials() -> AzureCredentials.FromEnv:
    """Credentials from the environment (``AZURE_STORAGE_ACCOUNT_KEY``, ``AZURE_CLIENT_ID``
    and the other variables object_store reads)."""
    return AzureCredentials.FromEnv()


def azure_credentials(
    *,
    access_key: str | None = None,
    sas_token: str | None = None,
    bearer_token: str | None = None,
    from_env: bool | None = None,
) -> AnyAzureCredential:
    """Azure credentials: static if a key or token is given, from the environment if none
    is (or ``from_env=True``); a key or token with ``from_env=True`` is refused."""
    given = any(v is not None for v in (access_key, sas_token, bearer_token))
    if not given and (from_env is None or from_env):
        return azure_from_env_credentials()
    if given and not from_env:
        return AzureCredentials.Static(
            azure_static_credentials(
                access_key=access_key, sas_token=sas_token, bearer_token=bearer_token
            )
        )
    raise InvalidInputError(
        "azure_credentials: give a key or token, or from_env=True, not both (nor from_env=False "
        "alone)"
    )


@dataclass(frozen=True)
class AzureSpec(StoreSpec):
    """A container of an Azure storage account, a prefix in it, credentials and
    object_store options: all that an Azure ``ObjectStoreStorage`` pickles."""

    account: str
    container: str
    prefix: str
    credentials: AnyAzureCredential = field(default_factory=AzureCredentials.FromEnv)
    options: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    settings: ObjectStoreSettings = field(default_factory=ObjectStoreSettings)

    def __post_init__(self) -> None:
        if not isinstance(self.account, str) or not self.account or "/" in self.account:
            raise InvalidInputError(f"invalid Azure storage account name {self.account!r}")
        if not isinstance(self.container, str) or not self.container or "/" in self.container:
            raise InvalidInputError(f"invalid Azure container name {self.container!r}")
        if not isinstance(self.prefix, str):
            raise InvalidInputError(f"Azure prefix must be a string, got {self.prefix!r}")
        if any(p in (".", "..") for p in self.prefix.strip("/").split("/")):
            raise InvalidInputError(f"invalid Azure prefix {self.prefix!r}")
        if not isinstance(self.credentials, AnyAzureCredential):
            raise InvalidInputError(
                "credentials must be AzureCredentials.FromEnv() or AzureCredentials.Static(...), "
                f"got {type(self.credentials).__name__}"
            )
        if not isinstance(self.settings, ObjectStoreSettings):
            raise InvalidInputError("settings must be an ObjectStoreSettings")

    def _config(self) -> dict[str, str]:
        config = dict(self.options)
        config["account_name"] = self.account
        creds = self.credentials
        if isinstance(creds, AzureCredentials.Static):
            c = creds.credentials
            if isinstance(c, AzureStaticCredentials.AccessKey):
                config["account_key"] = c.key
            elif isinstance(c, AzureStaticCredentials.SasToken):
                config["sas_key"] = c.token
            else:
                config["token"] = c.token
        return config

    def build(self, obstore: Any, *, retries: bool, shared: dict[str, Any]) -> Any:
        return obstore._store.AzureStore(
            self.container,
            prefix=self.prefix.strip("/") or None,
            config=self._config(),
            client_options=self.settings.client_options(),
            retry_config=self.settings.retry_config(retries),
        )

    def describe(self) -> str:
        root = self.prefix.strip("/")
        where = f"az://{self.account}/{self.container}/{root + '/' if root else ''}"
        endpoint = next(
            (v for k, v in self.options if k.lower().endswith("endpoint") and "msi" not in k),
            None,
        )
        return f"{where} at {endpoint}" if endpoint else where


class AzureStorage(ObjectStoreStorage):
    """Objects under a prefix of an Azure Blob Storage container. Build one with
    ``azure_storage(...)``."""

    spec: AzureSpec


def azure_storage(
    *,
    account: str,
    container: str,
    prefix: str,
    access_key: str | None = None,
    sas_token: str | None = None,
    bearer_token: str | None = None,
    from_env: bool | None = None,
    config: dict[str, str] | None = None,
) -> AzureStorage:
    """Storage in an Azure Blob Storage container (Icechunk's signature).

    Credentials: one of ``access_key`` (the account's shared key), ``sas_token``,
    ``bearer_token``; with none of them (or ``from_env=True``) they come from the
    environment. ``config`` takes object_store's Azure option keys (``azure_storage_endpoint``,
    ``azure_allow_http``, ``azure_use_emulator``, ...); secrets given there are kept out of
    ``repr`` and messages."""
    credentials = azure_credentials(
        access_key=access_key, sas_token=sas_token, bearer_token=bearer_token, from_env=from_env
    )
    return AzureStorage(
        AzureSpec(account, container, prefix, credentials, _options(config, "azure_storage"))
    )


def _options(config: Mapping[str, str] | None, what: str) -> tuple[tuple[str, str], ...]:
    if config is None:
        return ()
    if not isinstance(config, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in config.items()
    ):
        raise InvalidInputError(f"{what}: config must be a dict of str to str")
    return tuple(sorted(config.items()))
