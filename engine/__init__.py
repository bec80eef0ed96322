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

__all__ = [
    "BasicConflictSolver", "Conflict", "ConflictDetector", "ConflictSolver", "ConflictType",
    "ForkSession", "RebaseFailedError", "VersionSelection",
    "AlreadyExistsError", "ConflictError", "FormatError", "FrazilError", "InvalidInputError",
    "NotFoundError", "ReadOnlyError", "Repository", "RepositoryConfig", "Session",
    "SnapshotInfo", "Diff", "Storage", "StorageError", "in_memory_storage",
    "local_filesystem_storage",
    "FaultInjectingStorage", "RetryingStorage", "S3Settings", "TransientStorageError",
    "fsspec_storage", "http_storage", "s3_storage",
]
