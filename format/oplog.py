"""Operations log entries (SPEC §6.1): what changed which ref, or the repository, when.

Each ref document carries the newest entries about that ref (``ops``, oldest first), written
in the same conditional put that changes the ref; older entries move to immutable archive
objects ``ops/<id>``, each naming the next older one (``ops_next``). The repository
document (``refs/repo.json``) carries the repository-level entries the same way.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from enum import StrEnum

from .common import OPS_ARCHIVE, FormatError, decode_json, encode_json


class OpKind(StrEnum):
    """What an entry records (its ``op`` value)."""

    REPO_INITIALIZED = "repo_initialized"
    BRANCH_CREATED = "branch_created"
    BRANCH_RESET = "branch_reset"
    BRANCH_DELETED = "branch_deleted"
    NEW_COMMIT = "new_commit"
    TAG_CREATED = "tag_created"
    TAG_DELETED = "tag_deleted"
    CONFIG_CHANGED = "config_changed"
    METADATA_CHANGED = "metadata_changed"
    EXPIRATION_RAN = "expiration_ran"
    GC_RAN = "gc_ran"


KEEP = 50
"""Entries a document keeps once it has moved older ones to an archive object."""
LIMIT = 100
"""Entries a document may hold; a write that would pass it first archives all but
``KEEP``."""
MAX_ENTRIES = 4 * LIMIT
"""Entries a reader accepts in one document or archive object (more is damage)."""


@dataclass(frozen=True, slots=True)
class OpEntry:
    """One operation: ``kind``, when (``at``, UTC), and the snapshots involved: the one the
    ref points at after it (``snapshot``), the one before (``previous``)."""

    kind: OpKind
    at: dt.datetime
    snapshot: str | None = None
    previous: str | None = None


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def entry_text(e: OpEntry) -> str:
    """An entry as stored: ``"<op> <time> <snapshot> <previous>"``, the time in ISO 8601
    with its UTC offset, a missing snapshot as ``-`` (a string, not an object, so that a
    ref's hundred entries parse as fast as its other keys)."""
    at = e.at.isoformat(timespec="microseconds")
    return f"{e.kind} {at} {e.snapshot or '-'} {e.previous or '-'}"


def parse_entry(obj: object, what: str) -> OpEntry:
    """An entry as stored; ``FormatError`` naming ``what`` if it is malformed."""
    try:
        if not isinstance(obj, str) or len(obj) > 256:
            raise TypeError("not a short string")
        op, when, snapshot, previous = obj.split(" ")
        at = dt.datetime.fromisoformat(when)
        if at.tzinfo is None:
            raise ValueError("time without a time zone")
        return OpEntry(
            OpKind(op),
            at,
            None if snapshot == "-" else snapshot,
            None if previous == "-" else previous,
        )
    except (TypeError, ValueError) as e:
        raise FormatError(f"{what}: damaged operations log entry {obj!r:.80} ({e})") from e


def parse_entries(raw: object, what: str) -> list[OpEntry]:
    if not isinstance(raw, list) or len(raw) > MAX_ENTRIES:
        raise FormatError(f"{what}: 'ops' must be a list of at most {MAX_ENTRIES} entries")
    return [parse_entry(x, what) for x in raw]


def new_archive_id() -> str:
    """A fresh archive object id (20 random hex digits)."""
    return os.urandom(10).hex()


def check_archive_id(value: object, what: str) -> str:
    if (
        not isinstance(value, str)
        or not 16 <= len(value) <= 64
        or any(c not in "0123456789abcdef" for c in value)
    ):
        raise FormatError(f"{what}: damaged operations log link {value!r:.80}")
    return value


def encode_archive(entries: list[str], older: str | None) -> bytes:
    """An archive object: entries (oldest first, as stored) and the next older archive."""
    return encode_json(
        {"format_version": 1, "object_type": OPS_ARCHIVE, "ops": entries, "ops_next": older}
    )


def decode_archive(data: bytes, what: str) -> tuple[list[OpEntry], str | None]:
    obj = decode_json(data, OPS_ARCHIVE, what)
    older = obj.get("ops_next")
    return (
        parse_entries(obj.get("ops"), what),
        None if older is None else check_archive_id(older, what),
    )


@dataclass(frozen=True, slots=True)
class Appended:
    """A document's log after one more entry: ``ops`` and ``ops_next`` to write in it, and
    the archive object to write first (``archive``: (id, bytes)), if one is due."""

    ops: list[str]
    ops_next: str | None
    archive: tuple[str, bytes] | None = None


def append(
    ops: object, ops_next: object, entry: OpEntry, archive: tuple[str, bytes] | None = None
) -> Appended:
    """``entry`` after the stored ``ops`` / ``ops_next`` (as read, unchecked: a damaged
    log starts over rather than stopping the write it rides on). Past ``LIMIT`` entries,
    all but the newest ``KEEP`` go to a new archive object (``archive``: one prepared
    already by ``prepare_archive`` on the same log)."""
    valid = ops is None or _valid(ops)
    kept = list(ops) if valid and isinstance(ops, list) else []
    link = _link(ops_next) if valid else None
    made = None
    if len(kept) + 1 > LIMIT:
        made = archive or prepare_archive(kept, link)
        assert made is not None
        kept, link = kept[-KEEP:], made[0]
    return Appended([*kept, entry_text(entry)], link, made)


def prepare_archive(ops: object, ops_next: object) -> tuple[str, bytes] | None:
    """The archive object ``append`` will need for this stored log, if one is due: so it
    can be written before (or while) the entry is made."""
    if not isinstance(ops, list) or len(ops) + 1 <= LIMIT or not _valid(ops):
        return None
    return new_archive_id(), encode_archive(ops[:-KEEP], _link(ops_next))


_KINDS = frozenset(str(k) for k in OpKind)


def _valid(ops: object) -> bool:
    """Whether a stored log looks well formed, checked in bulk on the write path (a
    damaged one is started over, unlinked; readers check every field)."""
    return (
        isinstance(ops, list)
        and len(ops) <= MAX_ENTRIES
        and all(type(x) is str and x.partition(" ")[0] in _KINDS for x in ops)
    )


def _link(ops_next: object) -> str | None:
    """A stored ``ops_next`` if it is a valid id (a damaged one is dropped)."""
    try:
        return None if ops_next is None else check_archive_id(ops_next, "ops_next")
    except FormatError:
        return None
