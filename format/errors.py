"""The root of frazil's exception hierarchy, its error codes (``ErrorKind``), and the
error for undecodable objects.

Defined here, in the bottom layer, so that ``format`` imports nothing of ours and every
other layer can subclass the same root.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorKind(StrEnum):
    """Machine-readable codes for ``FrazilError.kind``, under Icechunk 2.x's names and
    values (``e.kind == ErrorKind.BRANCH_NOT_FOUND``), for the failures frazil raises.

    Every error class has a default code (``FrazilError.default_kind``); a raise site
    that knows the precise failure names it (``NotFoundError(msg, kind=...)``). Codes
    are only added, never renamed or removed, since callers match on them.
    """

    # conflicts
    COMMIT_CONFLICT = "commit-conflict"
    REBASE_FAILED = "rebase-failed"
    # not found
    NODE_NOT_FOUND = "node-not-found"
    KEY_NOT_FOUND = "key-not-found"
    SNAPSHOT_NOT_FOUND = "snapshot-not-found"
    BRANCH_NOT_FOUND = "branch-not-found"
    TAG_NOT_FOUND = "tag-not-found"
    REPOSITORY_NOT_FOUND = "repository-not-found"
    # already exists
    NODE_ALREADY_EXISTS = "node-already-exists"
    BRANCH_ALREADY_EXISTS = "branch-already-exists"
    TAG_ALREADY_EXISTS = "tag-already-exists"
    TAG_PREVIOUSLY_DELETED = "tag-previously-deleted"
    MOVE_WONT_OVERWRITE = "move-wont-overwrite"
    # read only
    READ_ONLY_SESSION = "read-only-session"
    READ_ONLY_STORAGE = "read-only-storage"
    # invalid input
    INVALID_KEY = "invalid-key"
    INVALID_PATH = "invalid-path"
    INVALID_REF_NAME = "invalid-ref-name"
    BAD_METADATA = "bad-metadata"
    NOT_AN_ARRAY = "not-an-array"
    NOT_A_GROUP = "not-a-group"
    MOVE_INTO_SELF_OR_DESCENDANT = "move-into-self-or-descendant"
    MOVE_DESTINATION_PARENT_MISSING = "move-destination-parent-missing"
    MOVE_DESTINATION_PARENT_NOT_GROUP = "move-destination-parent-not-group"
    NOT_ALLOWED = "not-allowed"
    # virtual chunks
    UNAUTHORIZED_VIRTUAL_CHUNK_CONTAINER = "unauthorized-virtual-chunk-container"
    VIRTUAL_CHUNK_FETCH = "virtual-chunk-fetch"
    # storage
    STORAGE_OTHER = "storage-other"
    # format
    DESERIALIZATION = "deserialization"
    UNSUPPORTED_SPEC_VERSION = "unsupported-spec-version"
    # anything else
    UNKNOWN = "unknown"


class FrazilError(Exception):
    """Root of every error frazil raises on purpose. ``kind`` is its ``ErrorKind``:
    the one its raise site named (``kind=``), else its class's ``default_kind``."""

    default_kind: ErrorKind = ErrorKind.UNKNOWN

    def __init__(self, *args: Any, kind: ErrorKind | None = None) -> None:
        super().__init__(*args)
        if kind is not None:
            self._kind = ErrorKind(kind)

    @property
    def kind(self) -> ErrorKind:
        """Icechunk 2.x's machine-readable error code (``ErrorKind``)."""
        return self.__dict__.get("_kind", type(self).default_kind)

    @property
    def message(self) -> str:
        """The error's text (Icechunk's ``IcechunkError.message``)."""
        return str(self)


class FormatError(FrazilError):
    """An on-disk object cannot be decoded: wrong type, unknown version, or damaged bytes.

    The message names the object (its type and, where known, its id or key).
    """

    default_kind = ErrorKind.DESERIALIZATION
