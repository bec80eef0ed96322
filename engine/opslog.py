"""The operations log (Icechunk 2.x's ``Repository.ops_log``): ``Update`` values read
from the logs that refs, the repository document and the history cuts carry (SPEC
§6.1), newest first."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from frazil.format import keys
from frazil.format.common import (
    BRANCH_REF,
    HISTORY_CUTS,
    REPO_INFO,
    TAG_REF,
    FormatError,
    decode_json,
    load_json,
)
from frazil.format.oplog import OpEntry, OpKind, check_archive_id, decode_archive, parse_entries

from . import runtime
from .errors import NotFoundError
from .storage.base import Storage

MAX_ARCHIVES = 100_000
"""Most archive objects one log's chain may link (more is taken for damage: a loop)."""


class UpdateType:
    """What an ``Update`` records: one of the nested types (Icechunk 2.x's tagged union),
    e.g. ``UpdateType.NewCommit`` with ``branch`` and ``new_snap_id``."""

    RepoInitialized: ClassVar[type[RepoInitialized]]
    BranchCreated: ClassVar[type[BranchCreated]]
    BranchReset: ClassVar[type[BranchReset]]
    BranchDeleted: ClassVar[type[BranchDeleted]]
    NewCommit: ClassVar[type[NewCommit]]
    TagCreated: ClassVar[type[TagCreated]]
    TagDeleted: ClassVar[type[TagDeleted]]
    ConfigChanged: ClassVar[type[ConfigChanged]]
    MetadataChanged: ClassVar[type[MetadataChanged]]
    ExpirationRan: ClassVar[type[ExpirationRan]]
    GCRan: ClassVar[type[GCRan]]


@dataclass(frozen=True)
class RepoInitialized(UpdateType):
    """The repository was created."""


@dataclass(frozen=True)
class BranchCreated(UpdateType):
    """A branch was created."""

    name: str


@dataclass(frozen=True)
class BranchReset(UpdateType):
    """A branch was reset to another snapshot (from ``previous_snap_id``)."""

    name: str
    previous_snap_id: str


@dataclass(frozen=True)
class BranchDeleted(UpdateType):
    """A branch was deleted (it pointed at ``previous_snap_id``)."""

    name: str
    previous_snap_id: str


@dataclass(frozen=True)
class NewCommit(UpdateType):
    """A commit moved a branch to ``new_snap_id``."""

    branch: str
    new_snap_id: str


@dataclass(frozen=True)
class TagCreated(UpdateType):
    """A tag was created."""

    name: str


@dataclass(frozen=True)
class TagDeleted(UpdateType):
    """A tag was deleted (it pointed at ``previous_snap_id``)."""

    name: str
    previous_snap_id: str


@dataclass(frozen=True)
class ConfigChanged(UpdateType):
    """The repository's config was saved."""


@dataclass(frozen=True)
class MetadataChanged(UpdateType):
    """The repository metadata was set or updated."""


@dataclass(frozen=True)
class ExpirationRan(UpdateType):
    """Snapshot expiration ran."""


@dataclass(frozen=True)
class GCRan(UpdateType):
    """Garbage collection ran."""


for _cls in (
    RepoInitialized,
    BranchCreated,
    BranchReset,
    BranchDeleted,
    NewCommit,
    TagCreated,
    TagDeleted,
    ConfigChanged,
    MetadataChanged,
    ExpirationRan,
    GCRan,
):
    setattr(UpdateType, _cls.__name__, _cls)


@dataclass(frozen=True)
class Update:
    """One entry of the operations log: what happened (``kind``) and when
    (``updated_at``, UTC). ``backup_path`` is always None (frazil keeps no backups)."""

    kind: UpdateType
    updated_at: dt.datetime
    backup_path: str | None = None


def _update(entry: OpEntry, ref: str | None) -> UpdateType:
    name, snap, prev = ref or "", entry.snapshot or "", entry.previous or ""
    k = entry.kind
    made: dict[OpKind, Callable[[], UpdateType]] = {
        OpKind.REPO_INITIALIZED: lambda: RepoInitialized(),
        OpKind.BRANCH_CREATED: lambda: BranchCreated(name),
        OpKind.BRANCH_RESET: lambda: BranchReset(name, prev),
        OpKind.BRANCH_DELETED: lambda: BranchDeleted(name, prev),
        OpKind.NEW_COMMIT: lambda: NewCommit(name, snap),
        OpKind.TAG_CREATED: lambda: TagCreated(name),
        OpKind.TAG_DELETED: lambda: TagDeleted(name, prev),
        OpKind.CONFIG_CHANGED: lambda: ConfigChanged(),
        OpKind.METADATA_CHANGED: lambda: MetadataChanged(),
        OpKind.EXPIRATION_RAN: lambda: ExpirationRan(),
        OpKind.GC_RAN: lambda: GCRan(),
    }
    return made[k]()


async def _chain(storage: Storage, ops: object, link: object, what: str) -> list[OpEntry]:
    """A document's entries and those of its archive chain, oldest first."""
    entries = parse_entries(ops if ops is not None else [], what)
    seen: set[str] = set()
    older: list[list[OpEntry]] = []
    nxt = None if link is None else check_archive_id(link, what)
    while nxt is not None:
        if nxt in seen or len(seen) >= MAX_ARCHIVES:
            raise FormatError(f"{what}: its operations log links loop or run too long")
        seen.add(nxt)
        key = keys.ops_key(nxt)
        part, nxt = await runtime.in_thread(decode_archive, await storage.get(key), key)
        older.append(part)
    return [e for part in reversed(older) for e in part] + entries


async def _document(storage: Storage, key: str) -> tuple[list[OpEntry], str | None]:
    """The entries of one ref or of the repository document (None name for the latter)."""
    try:
        data = await storage.get(key)
    except NotFoundError:  # deleted since the listing
        return [], None
    obj = load_json(data, key)
    if not isinstance(obj, dict):
        raise FormatError(f"{key}: not a JSON object")
    for whole, object_type in ((keys.REPO_INFO, REPO_INFO), (keys.CUTS, HISTORY_CUTS)):
        if key == whole:
            decode_json(data, object_type, key)
            return await _chain(storage, obj.get("ops"), obj.get("ops_next"), key), None
    for kind in (BRANCH_REF, TAG_REF):
        name = keys.ref_name(kind, key)
        if name is not None:
            decode_json(data, kind, key)
            return await _chain(storage, obj.get("ops"), obj.get("ops_next"), key), name
    return [], None


async def read_ops_log(storage: Storage) -> list[Update]:
    """Every update the refs and the repository document record, newest first (ties:
    later in one document first)."""
    listed = [
        k
        for k in await storage.list(keys.REFS)
        if k in (keys.REPO_INFO, keys.CUTS)
        or any(keys.ref_name(t, k) for t in (BRANCH_REF, TAG_REF))
    ]
    docs = await runtime.gather_limited([_document(storage, k) for k in sorted(listed)], limit=32)
    rows: list[tuple[dt.datetime, int, Update]] = []
    for entries, ref in docs:
        for i, e in enumerate(entries):
            rows.append((e.at, i, Update(_update(e, ref), e.at.astimezone(dt.UTC))))
    rows.sort(key=lambda r: (r[0], r[1]), reverse=True)
    return [u for _, _, u in rows]
