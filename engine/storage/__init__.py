"""Storage backends: the interface and its local-filesystem and in-memory implementations."""

from .base import ByteRange, PutResult, Storage
from .local import LocalFileSystemStorage, local_filesystem_storage
from .memory import InMemoryStorage, in_memory_storage

__all__ = [
    "ByteRange", "InMemoryStorage", "LocalFileSystemStorage", "PutResult", "Storage",
    "in_memory_storage", "local_filesystem_storage",
]
