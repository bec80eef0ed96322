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
from frazil.format.oplog import OpEntry, OpKind, append, now, prepare_archive
from frazil.format.refs import RefRecord, decode_ref, encode_ref

from . import runtime
from .errors import (
    AlreadyExistsError,
    ConflictError,
    ErrorKind,
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
        raise InvalidInputError(
            f"{what} name must be a string, got {type(name).__name__}",
            kind=ErrorKind.INVALID_REF_NAME,
        )
    if not name or len(name) > 255 or _BAD.search(name) or name != name.strip():
        raise InvalidInputError(
            f"invalid {what} name {name!r}: names are 1-255 characters with no '/', '\\', "
            "control characters or surrounding spaces",
            kind=ErrorKind.INVALID_REF_NAME,
        )
    return name


def _missing(kind: str) -> ErrorKind:
    return ErrorKind.BRANCH_NOT_FOUND if kind == BRANCH_REF else ErrorKind.TAG_NOT_FOUND


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
        raise NotFoundError(f"{what} {name!r} does not exist", kind=_missing(kind)) from None
    return Ref(decode_ref(data, kind, key, name), version)


async def read_ref(storage: Storage, kind: str, name: str) -> Ref:
    """A live ref: ``NotFoundError`` if absent or deleted (a tombstone)."""
    ref = await read_any_ref(storage, kind, name)
    if ref.record.deleted:
        if kind == BRANCH_REF:
            raise NotFoundError(
                f"branch {name!r} does not exist (it was deleted)", kind=_missing(kind)
            )
        raise NotFoundError(f"tag {name!r} was deleted", kind=_missing(kind))
    return ref


RECORD_OPS = True
"""Whether ref writes carry the operations log (SPEC §6.1); benchmarks turn it off to
measure what it costs."""


async def _ref_body(
    storage: Storage,
    kind: str,
    name: str,
    base: RefRecord | None,
    entry: OpEntry,
    snapshot_id: SnapshotId | None = None,
    checksum: int | None = None,
    archive: tuple[str, bytes] | None = None,
) -> bytes:
    """The ref document replacing ``base`` (None: there is none), with ``entry`` after
    ``base``'s operations log; an archive object that falls due is written first (unless
    ``archive``, prepared from the same log, was written already)."""
    if not RECORD_OPS:
        return encode_ref(kind, snapshot_id, checksum, snapshot_id is None, name=name)
    log = append(
        None if base is None else base.ops, None if base is None else base.ops_next, entry, archive
    )
    if log.archive is not None and log.archive is not archive:
        await storage.put(keys.ops_key(log.archive[0]), log.archive[1])
    return encode_ref(
        kind,
        snapshot_id,
        checksum,
        snapshot_id is None,
        name=name,
        ops=log.ops,
        ops_next=log.ops_next,
    )


async def create_ref(
    storage: Storage,
    kind: str,
    name: str,
    snapshot_id: SnapshotId,
    checksum: int,
    op: OpKind | None = None,
) -> None:
    """Create a branch or tag. A branch may be created again over the tombstone a
    deletion left (by compare-and-swap on it; the new ref continues its operations log);
    a tag name is never reused. ``op``: what the log records (default: branch or tag
    created)."""
    key = branch_key(name) if kind == BRANCH_REF else tag_key(name)
    entry = OpEntry(
        op or (OpKind.BRANCH_CREATED if kind == BRANCH_REF else OpKind.TAG_CREATED),
        now(),
        str(snapshot_id),
    )
    data = await _ref_body(storage, kind, name, None, entry, snapshot_id, checksum)
    result = await storage.put_if_absent(key, data)
    while not result.ok:
        what = "branch" if kind == BRANCH_REF else "tag"
        try:
            current = await read_any_ref(storage, kind, name)
        except NotFoundError:  # deleted meanwhile (its tombstone tidied away): try again
            result = await storage.put_if_absent(key, data)
            continue
        if not current.record.deleted:
            raise AlreadyExistsError(
                f"{what} {name!r} already exists",
                kind=ErrorKind.BRANCH_ALREADY_EXISTS
                if kind == BRANCH_REF
                else ErrorKind.TAG_ALREADY_EXISTS,
            )
        if kind == TAG_REF:
            raise AlreadyExistsError(
                f"tag {name!r} was deleted, and tag names are never reused",
                kind=ErrorKind.TAG_PREVIOUSLY_DELETED,
            )
        data = await _ref_body(storage, kind, name, current.record, entry, snapshot_id, checksum)
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
    #: what the operations log records (default: a deletion, else a new commit)
    op: OpKind | None = None

    def entry(self, previous: SnapshotId | None) -> OpEntry:
        """The operations log entry of this move, from the snapshot ``previous``."""
        kind = self.op or (OpKind.BRANCH_DELETED if self.delete else OpKind.NEW_COMMIT)
        snap = None if self.snapshot_id is None else str(self.snapshot_id)
        return OpEntry(kind, now(), snap, None if previous is None else str(previous))


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
        # an operations log archive falling due is written while the attempt writes its
        # objects (no round trip of its own); used if the swap is from this same ref
        early = prepare_archive(ref.record.ops, ref.record.ops_next) if RECORD_OPS else None
        writing = (
            asyncio.ensure_future(storage.put(keys.ops_key(early[0]), early[1]))
            if early is not None
            else None
        )
        try:
            move = await attempt(ref, n)
        finally:
            if writing is not None:
                await asyncio.gather(writing, return_exceptions=True)
        if move is None:
            return Moved(None, n)
        expected = move.expected or ref
        if writing is not None and writing.exception() is not None:
            early = None  # it failed: written again if still due
        if expected.record.write_id != ref.record.write_id:
            early = None  # prepared from another version of the log
        data = await _ref_body(
            storage,
            BRANCH_REF,
            name,
            expected.record,
            move.entry(expected.record.snapshot_id),
            move.snapshot_id,
            move.checksum,
            early,
        )
        result = await storage.put_if_version(branch_key(name), data, expected.version)
        if result.ok:
            # a deleted branch's tombstone stays: it keeps the branch's operations log
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
    brings the branch back. The tombstone stays, holding the branch's operations log
    (a branch of that name created later continues it). ``NotFoundError`` if the
    branch does not exist (or was deleted meanwhile)."""

    async def attempt(ref: Ref, n: int) -> Move:
        return Move(None, delete=True)

    await move_branch(storage, name, attempt, history=history)


async def tombstone_tag(storage: Storage, name: str) -> None:
    current = await read_ref(storage, TAG_REF, name)
    previous = current.record.snapshot_id
    entry = OpEntry(OpKind.TAG_DELETED, now(), None, None if previous is None else str(previous))
    data = await _ref_body(storage, TAG_REF, name, current.record, entry)
    result = await storage.put_if_version(tag_key(name), data, current.version)
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
