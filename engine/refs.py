"""Branches and tags: name rules and the ref files, moved only by conditional puts."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable
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
from .storage.base import Storage

_BAD = re.compile(r"[/\\\x00-\x1f\x7f]")


def validate_name(name: object, what: str) -> str:
    """Refuse names that cannot be keys: empty, '/', '\\', control characters, surrounding
    spaces. Dots are safe anywhere (the key's segment is ``branch.<name>``, never ``.`` or
    ``..``), so ``.hidden`` and ``a..b`` are names, as in Icechunk."""
    if not isinstance(name, str):
        raise InvalidInputError(f"{what} name must be a string, got {type(name).__name__}")
    if not name or len(name) > 255 or _BAD.search(name) or name != name.strip():
        raise InvalidInputError(
            f"invalid {what} name {name!r}: names are 1-255 characters with no '/', '\\', "
            "control characters or surrounding spaces"
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


# -- moving a branch -----------------------------------------------------------------------
@dataclass(frozen=True)
class Move:
    """What one attempt to move a branch decided: point it at ``snapshot_id`` (whose
    checksum the ref records), or replace it by a tombstone (``delete``), swapping from
    ``expected`` (the ref the attempt built on; None: the one ``move_branch`` read).
    ``forget`` is called when the swap definitely lost."""

    snapshot_id: SnapshotId | None
    checksum: int | None = None
    expected: Ref | None = None
    delete: bool = False
    forget: Callable[[], None] | None = None


@dataclass(frozen=True)
class Moved:
    """How ``move_branch`` ended: the move that landed (None: an attempt found nothing to
    do), after how many attempts, and whether it landed with its answer lost
    (``settled``: found in the branch's history)."""

    move: Move | None
    attempts: int
    settled: bool = False


Attempt = Callable[[Ref, int], Awaitable[Move | None]]
"""One attempt: from the branch as read (and the attempt's number, from 1), the move to
make, with every object it publishes already written; or None when there is nothing to do.
It may raise (a conflict, say) to stop."""


def short_pause(attempt: int) -> float:
    """Seconds before the next attempt: short (a writer that backs off long never wins
    against writers committing in a tight loop) and random (writers do not retry in
    lockstep); at most 20 ms."""
    return random.uniform(0, min(0.02, 0.002 * 2 ** min(attempt, 5)))


async def move_branch(
    storage: Storage,
    name: str,
    attempt: Attempt,
    *,
    history: Callable[[SnapshotId], Awaitable[SnapshotId | None]],
    tries: int = 1_000,
    pause: Callable[[int], float] = short_pause,
) -> Moved:
    """Move branch ``name``: read it, let ``attempt`` build the move from what it read,
    compare-and-swap the ref from that version; when another writer got there first,
    pause and try again (up to ``tries`` attempts). Every write that moves a branch goes
    through here: commits, compactions, expiry, resets and deletions.

    An unknown outcome (the swap's answer was lost and another writer's ref is there now)
    is settled from the branch's history: if the snapshot we moved to is between the new
    tip and the tip we swapped from (``history`` gives a snapshot's parent), our move
    landed and the result says so; otherwise it did not (its swap expected a version that
    is gone, so it never can)."""
    n = 0
    while True:
        n += 1
        ref = await read_ref(storage, BRANCH_REF, name)
        move = await attempt(ref, n)
        if move is None:
            return Moved(None, n)
        expected = move.expected or ref
        if move.delete:
            data = encode_ref(BRANCH_REF, None, None, deleted=True, name=name)
        else:
            assert move.snapshot_id is not None
            data = encode_ref(BRANCH_REF, move.snapshot_id, move.checksum, name=name)
        result = await storage.put_if_version(branch_key(name), data, expected.version)
        if result.ok:
            if move.delete and storage.supports_conditional_delete and result.version:
                await storage.delete_if_version(branch_key(name), result.version)
            return Moved(move, n)
        if result.uncertain and not move.delete and move.snapshot_id is not None:
            if await _landed(storage, name, move.snapshot_id, expected, history):
                return Moved(move, n, settled=True)
        if move.forget is not None:
            move.forget()
        if n >= tries:
            raise ConflictError(
                f"gave up moving branch {name!r} after {n} attempts: the branch kept moving",
                expected_parent=str(expected.record.snapshot_id),
            )
        await asyncio.sleep(pause(n))


async def _landed(
    storage: Storage,
    name: str,
    target: SnapshotId,
    expected: Ref,
    history: Callable[[SnapshotId], Awaitable[SnapshotId | None]],
) -> bool:
    """``target`` is in the branch's history above the tip we swapped from."""
    try:
        sid = (await read_ref(storage, BRANCH_REF, name)).record.snapshot_id
    except NotFoundError:
        return False
    stop = expected.record.snapshot_id
    while sid is not None and sid != stop:
        if sid == target:
            return True
        sid = await history(sid)
    return False


async def delete_branch(
    storage: Storage, name: str, history: Callable[[SnapshotId], Awaitable[SnapshotId | None]]
) -> None:
    """Delete a branch so that it stays deleted: the ref is replaced by a tombstone by
    compare-and-swap on the version read, so a commit racing with the deletion either
    lands first (and is then deleted with the branch) or fails its own swap; it never
    brings the branch back. Where the backend can, the tombstone is then removed by a
    conditional delete (only if it is still that tombstone). ``NotFoundError`` if the
    branch does not exist (or was deleted meanwhile)."""

    async def attempt(ref: Ref, n: int) -> Move:
        return Move(None, delete=True)

    await move_branch(storage, name, attempt, history=history)


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
