"""frazil's exception hierarchy: one root, a few categories grouped by what the caller does."""

from __future__ import annotations

from typing import Any

from frazil.format.errors import ErrorKind, FormatError, FrazilError

__all__ = [
    "AlreadyExistsError",
    "ConflictError",
    "ErrorKind",
    "FormatError",
    "FrazilError",
    "InvalidInputError",
    "InvalidTypeError",
    "KeyNotFoundError",
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

    default_kind = ErrorKind.COMMIT_CONFLICT

    def __init__(
        self,
        message: str,
        *,
        expected_parent: Any = None,
        actual_parent: Any = None,
        conflicts: Any = None,
        kind: ErrorKind | None = None,
    ) -> None:
        super().__init__(message, kind=kind)
        self.expected_parent = expected_parent
        self.actual_parent = actual_parent
        self.conflicts = list(conflicts or ())

    def _repr_html_(self) -> str:
        from . import html

        return html.conflict_error(str(self), self.conflicts)


class NotFoundError(FrazilError, KeyError):
    """A branch, tag, snapshot, node or object does not exist."""

    default_kind = ErrorKind.KEY_NOT_FOUND

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class KeyNotFoundError(NotFoundError, FileNotFoundError):
    """A zarr key names no value in the session: also a ``FileNotFoundError``, as zarr's own
    stores raise from ``getsize``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class AlreadyExistsError(FrazilError):
    """Something that is created once (a repository, branch, tag) already exists."""

    default_kind = ErrorKind.NODE_ALREADY_EXISTS


class ReadOnlyError(FrazilError, ValueError):
    """A write through a read-only session, store or storage (also a ``ValueError``, as
    zarr's read-only stores raise)."""

    default_kind = ErrorKind.READ_ONLY_SESSION


class InvalidInputError(FrazilError, ValueError):
    """An argument is malformed: a bad name, key, coordinate, range or type."""

    default_kind = ErrorKind.INVALID_KEY


class InvalidTypeError(InvalidInputError, TypeError):
    """An argument is of a type frazil cannot take (a non-``Buffer`` value, commit metadata
    that is not JSON, ...): also a ``TypeError``, as Python and Icechunk raise there."""


class StorageError(FrazilError):
    """The storage backend failed (I/O error, permission, unreachable service)."""

    default_kind = ErrorKind.STORAGE_OTHER


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

    default_kind = ErrorKind.VIRTUAL_CHUNK_FETCH

    def __init__(
        self,
        message: str,
        *,
        location: str | None = None,
        url_prefix: str | None = None,
        kind: ErrorKind | None = None,
    ) -> None:
        super().__init__(message, kind=kind)
        self.location = location
        self.url_prefix = url_prefix
