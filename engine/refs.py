"""Branches and tags: name rules and the ref files, moved only by conditional puts."""

from __future__ import annotations

import re
from dataclasses import dataclass

from frazil.format.common import BRANCH_REF, TAG_REF
from frazil.format.ids import SnapshotId
from frazil.format.refs import RefRecord, decode_ref, encode_ref

from .errors import (
    AlreadyExistsError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
)
from .storage.base import Storage

_BAD = re.compile(r"[/\\\x00-\x1f\x7f]")


def validate_name(name: object, what: str) -> str:
    """Refuse names that cannot be keys: empty, '/', '..', control characters, a leading dot."""
    if not isinstance(name, str):
        raise InvalidInputError(f"{what} name must be a string, got {type(name).__name__}")
    if (not name or len(name) > 255 or _BAD.search(name) or name.startswith(".")
            or ".." in name or name != name.strip()):
        raise InvalidInputError(
            f"invalid {what} name {name!r}: names are 1-255 characters with no '/', '\\', "
            "'..', control characters, leading dot or surrounding spaces"
        )
    return name


def branch_key(name: str) -> str:
    return f"refs/branch.{validate_name(name, 'branch')}/ref.json"


def tag_key(name: str) -> str:
    return f"refs/tag.{validate_name(name, 'tag')}/ref.json"


@dataclass(frozen=True, slots=True)
class Ref:
    """A ref as read: its record and the storage version token (for compare-and-swap)."""

    record: RefRecord
    version: str


async def read_ref(storage: Storage, kind: str, name: str) -> Ref:
    key = branch_key(name) if kind == BRANCH_REF else tag_key(name)
    what = "branch" if kind == BRANCH_REF else "tag"
    try:
        data, version = await storage.get_with_version(key)
    except NotFoundError:
        raise NotFoundError(f"{what} {name!r} does not exist") from None
    record = decode_ref(data, kind, key, name)
    if record.deleted:
        raise NotFoundError(f"{what} {name!r} was deleted")
    return Ref(record, version)


async def create_ref(storage: Storage, kind: str, name: str, snapshot_id: SnapshotId,
                     checksum: int) -> None:
    key = branch_key(name) if kind == BRANCH_REF else tag_key(name)
    result = await storage.put_if_absent(key, encode_ref(kind, snapshot_id, checksum, name=name))
    if not result.ok:
        what = "branch" if kind == BRANCH_REF else "tag"
        if kind == TAG_REF:
            try:
                await read_ref(storage, kind, name)
            except NotFoundError:
                raise AlreadyExistsError(
                    f"tag {name!r} was deleted, and tag names are never reused") from None
        raise AlreadyExistsError(f"{what} {name!r} already exists")


async def swap_branch(storage: Storage, name: str, expected: Ref, snapshot_id: SnapshotId,
                      checksum: int) -> bool:
    """Move a branch from ``expected`` to ``snapshot_id``; False if it changed meanwhile."""
    result = await storage.put_if_version(
        branch_key(name), encode_ref(BRANCH_REF, snapshot_id, checksum, name=name),
        expected.version)
    return result.ok


async def tombstone_tag(storage: Storage, name: str) -> None:
    current = await read_ref(storage, TAG_REF, name)
    result = await storage.put_if_version(
        tag_key(name), encode_ref(TAG_REF, None, None, deleted=True, name=name),
        current.version)
    if not result.ok:
        raise ConflictError(f"tag {name!r} changed while being deleted; try again")


async def list_refs(storage: Storage, kind: str) -> set[str]:
    prefix = "refs/branch." if kind == BRANCH_REF else "refs/tag."
    names = set()
    for key in await storage.list(prefix):
        if key.endswith("/ref.json"):
            names.add(key[len(prefix): -len("/ref.json")])
    if kind == TAG_REF:  # skip tombstones
        live = set()
        for name in names:
            try:
                await read_ref(storage, kind, name)
                live.add(name)
            except NotFoundError:
                pass
        return live
    return names
