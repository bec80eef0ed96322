"""frazil: Git-like version control for Zarr v3 on object storage, with no server."""

from importlib import metadata as _metadata
from typing import Any as _Any

from frazil.format.common import WRITE_VERSION as _WRITE_VERSION

from . import credentials
from .config import RepositoryConfig
from .conflicts import (
    BasicConflictSolver,
    Conflict,
    ConflictDetector,
    ConflictSolver,
    ConflictType,
    RebaseFailedError,
    VersionSelection,
)
from .diff import Diff
from .errors import (
    AlreadyExistsError,
    ConflictError,
    ErrorKind,
    FormatError,
    FrazilError,
    InvalidInputError,
    InvalidTypeError,
    KeyNotFoundError,
    NotFoundError,
    ReadOnlyError,
    StorageError,
    TransientStorageError,
    VirtualChunkError,
)
from .errors import FrazilError as IcechunkError
from .logs import initialize_logs, print_debug_info, set_logs_filter
from .maintenance import ChunkStorageStats, GCSummary
from .opslog import Update, UpdateType
from .repository import Repository, SnapshotInfo
from .session import ForkSession, Session
from .settings import (
    CachingConfig,
    CompressionAlgorithm,
    CompressionConfig,
    ManifestConfig,
    ManifestPreloadCondition,
    ManifestPreloadConfig,
    ManifestSplitCondition,
    ManifestSplitDimCondition,
    ManifestSplittingConfig,
    SplitSizesDict,
    StorageConcurrencySettings,
    StorageRetriesSettings,
    StorageSettings,
    from_dict,
    to_dict,
)
from .spec import SpecVersion
from .storage import (
    AzureStorage,
    FaultInjectingStorage,
    ObjectStoreSettings,
    RetryingStorage,
    S3Settings,
    Storage,
    fsspec_storage,
    http_storage,
    in_memory_storage,
    local_filesystem_storage,
    r2_storage,
    s3_object_store_storage,
    s3_storage,
    tigris_storage,
)
from .storage.azure import (
    AnyAzureCredential,
    AnyAzureStaticCredential,
    AzureCredentials,
    AzureStaticCredentials,
    azure_credentials,
    azure_from_env_credentials,
    azure_static_credentials,
    azure_storage,
)
from .storage.gcs import (
    AnyGcsCredential,
    AnyGcsStaticCredential,
    GcsBearerCredential,
    GcsCredentials,
    GcsStaticCredentials,
    GcsStorage,
    gcs_anonymous_credentials,
    gcs_credentials,
    gcs_from_env_credentials,
    gcs_refreshable_credentials,
    gcs_static_credentials,
    gcs_storage,
)
from .virtual import ChunkType, VirtualChunkSpec, local_etag
from .virtual.containers import (
    AnyCredential,
    AnyObjectStoreConfig,
    AnyS3Credential,
    AzureStoreConfig,
    Credentials,
    GcsStoreConfig,
    HttpStoreConfig,
    LocalFileSystemStoreConfig,
    ObjectStoreConfig,
    S3Credentials,
    S3Options,
    S3StaticCredentials,
    S3StoreConfig,
    VirtualChunkContainer,
    azure_store,
    containers_credentials,
    gcs_store,
    http_store,
    local_filesystem_store,
    s3_anonymous_credentials,
    s3_credentials,
    s3_from_env_credentials,
    s3_refreshable_credentials,
    s3_static_credentials,
    s3_store,
)

try:
    __version__: str = _metadata.version("frazil")
except _metadata.PackageNotFoundError:  # pragma: no cover - imported from a source tree
    __version__ = "0+unknown"


def spec_version() -> int:
    """The on-disk format version this version of frazil writes (``format/SPEC.md``).

    Icechunk's function of that name gives Icechunk's spec version; frazil's repositories
    have their own format, so this is frazil's (Icechunk repositories are not read)."""
    return _WRITE_VERSION


def __getattr__(name: str) -> _Any:
    # IcechunkStore is the zarr adapter's store: imported on first use, so that the
    # engine does not import the adapter (the one seam is Session.store)
    if name == "IcechunkStore":
        from frazil.zarr_adapter.store import FrazilStore

        return FrazilStore
    raise AttributeError(f"module 'frazil' has no attribute {name!r}")


__all__ = [
    "CachingConfig",
    "CompressionAlgorithm",
    "CompressionConfig",
    "ManifestConfig",
    "ManifestPreloadCondition",
    "ManifestPreloadConfig",
    "ManifestSplitCondition",
    "ManifestSplitDimCondition",
    "ManifestSplittingConfig",
    "SplitSizesDict",
    "StorageConcurrencySettings",
    "StorageRetriesSettings",
    "StorageSettings",
    "from_dict",
    "to_dict",
    "ChunkStorageStats",
    "GCSummary",
    "IcechunkError",
    "IcechunkStore",
    "__version__",
    "initialize_logs",
    "print_debug_info",
    "set_logs_filter",
    "spec_version",
    "ErrorKind",
    "SpecVersion",
    "Update",
    "UpdateType",
    "BasicConflictSolver",
    "Conflict",
    "ConflictDetector",
    "ConflictSolver",
    "ConflictType",
    "ForkSession",
    "RebaseFailedError",
    "VersionSelection",
    "AlreadyExistsError",
    "ConflictError",
    "FormatError",
    "FrazilError",
    "InvalidInputError",
    "InvalidTypeError",
    "KeyNotFoundError",
    "NotFoundError",
    "ReadOnlyError",
    "Repository",
    "RepositoryConfig",
    "Session",
    "SnapshotInfo",
    "Diff",
    "Storage",
    "StorageError",
    "in_memory_storage",
    "local_filesystem_storage",
    "FaultInjectingStorage",
    "RetryingStorage",
    "S3Settings",
    "TransientStorageError",
    "fsspec_storage",
    "http_storage",
    "s3_object_store_storage",
    "s3_storage",
    "r2_storage",
    "tigris_storage",
    "AnyAzureCredential",
    "AnyAzureStaticCredential",
    "AzureCredentials",
    "AzureStaticCredentials",
    "AzureStorage",
    "ObjectStoreSettings",
    "azure_credentials",
    "azure_from_env_credentials",
    "azure_static_credentials",
    "azure_storage",
    "AnyGcsCredential",
    "AnyGcsStaticCredential",
    "GcsBearerCredential",
    "GcsCredentials",
    "GcsStaticCredentials",
    "GcsStorage",
    "gcs_anonymous_credentials",
    "gcs_credentials",
    "gcs_from_env_credentials",
    "gcs_refreshable_credentials",
    "gcs_static_credentials",
    "gcs_storage",
    "ChunkType",
    "GcsStoreConfig",
    "HttpStoreConfig",
    "LocalFileSystemStoreConfig",
    "S3Credentials",
    "AnyCredential",
    "AnyS3Credential",
    "Credentials",
    "credentials",
    "S3StaticCredentials",
    "S3Options",
    "AnyObjectStoreConfig",
    "AzureStoreConfig",
    "ObjectStoreConfig",
    "S3StoreConfig",
    "VirtualChunkContainer",
    "VirtualChunkError",
    "VirtualChunkSpec",
    "azure_store",
    "containers_credentials",
    "gcs_store",
    "http_store",
    "local_etag",
    "local_filesystem_store",
    "s3_anonymous_credentials",
    "s3_credentials",
    "s3_from_env_credentials",
    "s3_refreshable_credentials",
    "s3_static_credentials",
    "s3_store",
]

# as Icechunk at import: FRAZIL_LOG / ICECHUNK_LOG, if set, turn logs on (nothing otherwise)
initialize_logs()
