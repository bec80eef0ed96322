"""frazil: Git-like version control for Zarr v3 on object storage, with no server."""

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
from .containers import (
    GcsStoreConfig,
    HttpStoreConfig,
    LocalFileSystemStoreConfig,
    S3Credentials,
    S3StoreConfig,
    VirtualChunkContainer,
    containers_credentials,
    gcs_store,
    http_store,
    local_filesystem_store,
    s3_anonymous_credentials,
    s3_credentials,
    s3_from_env_credentials,
    s3_static_credentials,
    s3_store,
)
from .diff import Diff
from .errors import (
    AlreadyExistsError,
    ConflictError,
    FormatError,
    FrazilError,
    InvalidInputError,
    NotFoundError,
    ReadOnlyError,
    StorageError,
    TransientStorageError,
    VirtualChunkError,
)
from .repository import Repository, SnapshotInfo
from .session import ForkSession, Session
from .storage import (
    FaultInjectingStorage,
    RetryingStorage,
    S3Settings,
    Storage,
    fsspec_storage,
    http_storage,
    in_memory_storage,
    local_filesystem_storage,
    s3_storage,
)
from .virtual import ChunkType, VirtualChunkSpec, local_etag

__all__ = [
    "BasicConflictSolver", "Conflict", "ConflictDetector", "ConflictSolver", "ConflictType",
    "ForkSession", "RebaseFailedError", "VersionSelection",
    "AlreadyExistsError", "ConflictError", "FormatError", "FrazilError", "InvalidInputError",
    "NotFoundError", "ReadOnlyError", "Repository", "RepositoryConfig", "Session",
    "SnapshotInfo", "Diff", "Storage", "StorageError", "in_memory_storage",
    "local_filesystem_storage",
    "FaultInjectingStorage", "RetryingStorage", "S3Settings", "TransientStorageError",
    "fsspec_storage", "http_storage", "s3_storage",
    "ChunkType", "GcsStoreConfig", "HttpStoreConfig", "LocalFileSystemStoreConfig",
    "S3Credentials", "S3StoreConfig", "VirtualChunkContainer", "VirtualChunkError",
    "VirtualChunkSpec", "containers_credentials", "gcs_store", "http_store", "local_etag",
    "local_filesystem_store", "s3_anonymous_credentials", "s3_credentials",
    "s3_from_env_credentials", "s3_static_credentials", "s3_store",
]
