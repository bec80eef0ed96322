"""Storage backends: the interface; local-filesystem, in-memory, S3 and read-only HTTP
implementations; Azure Blob Storage and Google Cloud Storage on obstore; other fsspec
filesystems (read-only, or unsafe by explicit choice); a retrying wrapper, a read-only one
and a fault-injecting one (for tests)."""

from .azure import AzureStorage, azure_storage
from .base import ByteRange, PutResult, Storage
from .faults import FaultInjectingStorage
from .gcs import GcsStorage, gcs_storage
from .generic import FsspecStorage, fsspec_storage
from .http import HTTPStorage, http_storage
from .local import LocalFileSystemStorage, local_filesystem_storage
from .memory import InMemoryStorage, in_memory_storage
from .objstore import ObjectStoreSettings, ObjectStoreStorage
from .readonly import ReadOnlyStorage
from .retry import RetryingStorage, RetrySettings
from .s3 import S3Config, S3Settings, S3Storage, s3_object_store_storage, s3_storage
from .s3_compatible import r2_storage, tigris_storage

__all__ = [
    "AzureStorage",
    "ByteRange",
    "FaultInjectingStorage",
    "FsspecStorage",
    "GcsStorage",
    "HTTPStorage",
    "InMemoryStorage",
    "LocalFileSystemStorage",
    "ObjectStoreSettings",
    "ObjectStoreStorage",
    "PutResult",
    "ReadOnlyStorage",
    "RetrySettings",
    "RetryingStorage",
    "S3Config",
    "S3Settings",
    "S3Storage",
    "Storage",
    "azure_storage",
    "gcs_storage",
    "http_storage",
    "in_memory_storage",
    "fsspec_storage",
    "local_filesystem_storage",
    "s3_object_store_storage",
    "s3_storage",
    "r2_storage",
    "tigris_storage",
]
