"""frazil's exception hierarchy: one root, a few categories grouped by what the caller does."""

from __future__ import annotations

from typing import Any

from frazil.format.errors import FormatError, FrazilError

__all__ = [
    "AlreadyExistsError",
    "ConflictError",
    "FormatError",
    "FrazilError",
    "InvalidInputError",
    "InvalidTypeError",
    "NotFoundError",
    "ReadOnlyError",
    "StorageError",
    "TransientStorageError",
    "VirtualChunkError",
]


class ConflictError(FrazilError):
    """Another writer got there first: the branch moved, or two changes collide.

    ``expected_parent`` and ``actual_parent`` are set when a branch moved under a commit;
    ``conflicts`` lists the ``Conflict`` values found by a merge or rebase.
    """

    def __init__(
        self,
        message: str,
        *,
        expected_parent: Any = None,
        actual_parent: Any = None,
        conflicts: Any = None,
    ) -> None:
        super().__init__(message)
        self.expected_parent = expected_parent
        self.actual_parent = actual_parent
        self.conflicts = list(conflicts or ())


class NotFoundError(FrazilError, KeyError):
    """A branch, tag, snapshot, node or object does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class AlreadyExistsError(FrazilError):
    """Something that is created once (a repository, branch, tag) already exists."""


class ReadOnlyError(FrazilError):
    """A write through a read-only session, store or storage."""


class InvalidInputError(FrazilError, ValueError):
    """An argument is malformed: a bad name, key, coordinate, range or type."""


class InvalidTypeError(InvalidInputError, TypeError):
    """An argument is of a type frazil cannot take (commit metadata that is not JSON, ...):
    also a ``TypeError``, as Icechunk raises there."""


class StorageError(FrazilError):
    """The storage backend failed (I/O error, permission, unreachable service)."""


class TransientStorageError(StorageError):
    """A storage failure that may succeed if tried again: throttling (503 SlowDown), a
    timeout, a dropped connection, a lost response.

    The operation may or may not have taken effect (a write whose response was lost did
    land). ``RetryingStorage`` and the S3 backend retry these with backoff; whoever
    retries a conditional put must tell "ours landed" from "someone else won" by reading
    the object back (see ``frazil.storage.retry``).
    """


class VirtualChunkError(FrazilError):
    """A virtual chunk cannot be read: its location is under no declared virtual chunk
    container, the container is not authorized by whoever opened the repository, or the
    source changed since the reference was made (another ETag, or modified after the
    recorded time). ``location`` and ``url_prefix`` say which, where known. Never
    answered with other bytes."""

    def __init__(
        self, message: str, *, location: str | None = None, url_prefix: str | None = None
    ) -> None:
        super().__init__(message)
        self.location = location
        self.url_prefix = url_prefix
