"""Branches and tags: name rules and the ref files, moved only by conditional puts."""

from __future__ import annotations

import re
from dataclasses import dataclass

from frazil.format import keys
from frazil.format.common import BRANCH_REF, TAG_REF, FormatError
from frazil.format.ids import SnapshotId
from frazil.format.refs import RefRecord, decode_ref, encode_ref

from . import runtime
from .errors import (
    AlreadyExistsError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
)
from .storage.base import PutResult, Storage

_BAD = re.compile(r"[/\\\x00-\x1f\x7f]")


def validate_name(name: object, what: str) -> str:
    """Refuse names that cannot be keys: empty, '/', '..', control characters, a leading dot."""
    if not isinstance(name, str):
        raise InvalidInputError(f"{what} name must be a string, got {type(name).__name__}")
    if (
        not name
        or len(name) > 255
        or _BAD.search(name)
        or name.startswith(".")
        or ".." in name
        or name != name.strip()
    ):
        raise InvalidInputError(
            f"invalid {what} name {name!r}: names are 1-255 characters with no '/', '\\', "
            "'..', control characters, leading dot or surrounding spaces"
        )
    return name


def branch_key(name: str) -> str:
    """The key of branch ``name``, once the name is checked."""
    return keys.branch_key(validate_name(name, "branch"))


def tag_key(name: str) -> str:
    """The key of tag ``name``, once the name is checked."""
    return keys.tag_key(validate_name(name, "tag"))


@dataclass(frozen=True, slots=True)
class Ref:
    """A ref as read: its record and the storage version token (for compare-and-swap)."""

    record: RefRecord
    version: str


async def read_any_ref(storage: Storage, kind: str, name: str) -> Ref:
    """The ref file as it is, tombstone or not (``NotFoundError`` if there is none)."""
    key = branch_key(name) if kind == BRANCH_REF else tag_key(name)
    what = "branch" if kind == BRANCH_REF else "tag"
    try:
        data, version = await storage.get_with_version(key)
    except NotFoundError:
        raise NotFoundError(f"{what} {name!r} does not exist") from None
    return Ref(decode_ref(data, kind, key, name), version)


async def read_ref(storage: Storage, kind: str, name: str) -> Ref:
    """A live ref: ``NotFoundError`` if absent or deleted (a tombstone)."""
    ref = await read_any_ref(storage, kind, name)
    if ref.record.deleted:
        if kind == BRANCH_REF:
            raise NotFoundError(f"branch {name!r} does not exist (it was deleted)")
        raise NotFoundError(f"tag {name!r} was deleted")
    return ref


async def create_ref(
    storage: Storage, kind: str, name: str, snapshot_id: SnapshotId, checksum: int
) -> None:
    """Create a branch or tag. A branch may be created again over the tombstone a
    deletion left (by compare-and-swap on it); a tag name is never reused."""
    key = branch_key(name) if kind == BRANCH_REF else tag_key(name)
    data = encode_ref(kind, snapshot_id, checksum, name=name)
    result = await storage.put_if_absent(key, data)
    while not result.ok:
        what = "branch" if kind == BRANCH_REF else "tag"
        try:
            current = await read_any_ref(storage, kind, name)
        except NotFoundError:  # deleted meanwhile (its tombstone tidied away): try again
            result = await storage.put_if_absent(key, data)
            continue
        if not current.record.deleted:
            raise AlreadyExistsError(f"{what} {name!r} already exists")
        if kind == TAG_REF:
            raise AlreadyExistsError(f"tag {name!r} was deleted, and tag names are never reused")
        result = await storage.put_if_version(key, data, current.version)


async def delete_branch(storage: Storage, name: str) -> None:
    """Delete a branch so that it stays deleted: the ref is replaced by a tombstone by
    compare-and-swap on the version read, so a commit racing with the deletion either
    lands first (and is then deleted with the branch) or fails its own swap; it never
    brings the branch back. Where the backend can, the tombstone is then removed by a
    conditional delete (only if it is still that tombstone)."""
    key = branch_key(name)
    tombstone = encode_ref(BRANCH_REF, None, None, deleted=True, name=name)
    while True:
        current = await read_ref(storage, BRANCH_REF, name)  # NotFoundError once gone
        result = await storage.put_if_version(key, tombstone, current.version)
        if result.ok:
            break
    if storage.supports_conditional_delete and result.version is not None:
        await storage.delete_if_version(key, result.version)


async def swap_branch(
    storage: Storage, name: str, expected: Ref, snapshot_id: SnapshotId, checksum: int
) -> PutResult:
    """Move a branch from ``expected`` to ``snapshot_id``; ``ok`` False if it changed
    meanwhile (``uncertain`` when our write may have landed before that change)."""
    return await storage.put_if_version(
        branch_key(name), encode_ref(BRANCH_REF, snapshot_id, checksum, name=name), expected.version
    )


async def tombstone_tag(storage: Storage, name: str) -> None:
    current = await read_ref(storage, TAG_REF, name)
    result = await storage.put_if_version(
        tag_key(name), encode_ref(TAG_REF, None, None, deleted=True, name=name), current.version
    )
    if not result.ok:
        raise ConflictError(f"tag {name!r} changed while being deleted; try again")


async def list_refs(storage: Storage, kind: str) -> set[str]:
    """Names of the live branches or tags (tombstones of deleted ones skipped)."""
    found = (keys.ref_name(kind, key) for key in await storage.list(keys.ref_prefix(kind)))
    names = sorted({name for name in found if name is not None})

    async def live(name: str) -> bool:
        try:
            return not (await read_any_ref(storage, kind, name)).record.deleted
        except NotFoundError:  # deleted since the listing
            return False
        except FormatError:  # there, but damaged: whoever reads it reports that
            return True

    flags = await runtime.gather_limited([live(n) for n in names], limit=32)
    return {n for n, ok in zip(names, flags) if ok}
