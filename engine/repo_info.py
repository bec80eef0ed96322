"""The repository document ``refs/repo.json``: repository-level metadata (Icechunk 2.x's
``Repository.metadata``) and the repository's operations log entries; read, and changed
by compare-and-swap only."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from typing import Any

from frazil.format.keys import REPO_INFO, ops_key
from frazil.format.oplog import OpEntry, OpKind, append, now
from frazil.format.repo_info import (
    MAX_METADATA_BYTES,
    RepoInfo,
    decode_repo_info,
    encode_repo_info,
    metadata_size,
)

from . import runtime
from .errors import ConflictError, ErrorKind, InvalidInputError, NotFoundError, ReadOnlyError
from .refs import short_pause
from .storage.base import Storage

METADATA_CHANGED = OpKind.METADATA_CHANGED
TRIES = 1_000
"""Attempts at a change before giving up while other writers keep changing the document."""


def check_metadata(metadata: object, what: str = "repository metadata") -> dict[str, Any]:
    """``metadata`` as a plain dict, if it is a JSON object of bounded size; otherwise
    ``InvalidInputError`` saying why."""
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise InvalidInputError(f"{what} must be a dict with string keys, got {metadata!r:.80}")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"{what} must be JSON-serializable: {e}") from None
    size = metadata_size(metadata)
    if size > MAX_METADATA_BYTES:
        raise InvalidInputError(
            f"{what} takes {size} bytes as JSON, more than the {MAX_METADATA_BYTES} allowed"
        )
    return json.loads(json.dumps(metadata))  # a deep copy, as it will read back


async def read_info(storage: Storage) -> tuple[RepoInfo, str | None]:
    """The repository document and its version (None: there is none yet, as in
    repositories written before it existed: empty metadata)."""
    try:
        data, version = await storage.get_with_version(REPO_INFO)
    except NotFoundError:
        return RepoInfo(), None
    return await runtime.in_thread(decode_repo_info, data, REPO_INFO), version


async def change_info(
    storage: Storage, change: Callable[[RepoInfo], RepoInfo], op: OpKind
) -> RepoInfo:
    """Apply ``change`` to the document as read, add the operations log entry ``op``,
    and write the result by a conditional put from that version (create-if-absent if
    there was none); when another writer got there first, read again and apply
    ``change`` again. Returns what was written."""
    if not storage.writable:
        raise ReadOnlyError(
            f"cannot change the repository metadata: {storage.describe()} is read-only",
            kind=ErrorKind.READ_ONLY_STORAGE,
        )
    for n in range(1, TRIES + 1):
        current, version = await read_info(storage)
        new = change(current)
        log = append(current.ops, current.ops_next, OpEntry(op, now()))
        new = dataclasses.replace(new, ops=log.ops, ops_next=log.ops_next)
        if log.archive is not None:
            await storage.put(ops_key(log.archive[0]), log.archive[1])
        body = encode_repo_info(new)
        if version is None:
            result = await storage.put_if_absent(REPO_INFO, body)
        else:
            result = await storage.put_if_version(REPO_INFO, body, version)
        if result.ok:
            return new
        # lost to another writer (a lost answer was read back by RetryingStorage: the
        # document's write_id makes ours recognisable), so apply the change again
        await asyncio.sleep(short_pause(n))
    raise ConflictError(
        f"gave up changing {REPO_INFO} after {TRIES} attempts: other writers kept changing it"
    )


async def set_metadata(storage: Storage, metadata: dict[str, Any]) -> None:
    """Replace the repository metadata."""
    await change_info(
        storage, lambda info: RepoInfo(metadata, info.ops, info.ops_next), METADATA_CHANGED
    )


async def update_metadata(storage: Storage, metadata: dict[str, Any]) -> dict[str, Any]:
    """Merge ``metadata`` into the repository metadata (its keys win); returns the
    result."""

    def merge(info: RepoInfo) -> RepoInfo:
        merged = {**info.metadata, **metadata}
        if metadata_size(merged) > MAX_METADATA_BYTES:
            raise InvalidInputError(
                f"the merged repository metadata would take more than {MAX_METADATA_BYTES} "
                "bytes as JSON"
            )
        return RepoInfo(merged, info.ops, info.ops_next)

    return dict((await change_info(storage, merge, METADATA_CHANGED)).metadata)


async def record(storage: Storage, op: OpKind) -> None:
    """Add the repository-level operations log entry ``op`` (config changed, gc or
    expiry ran): one more conditional put of the document, after the operation."""
    await change_info(storage, lambda info: info, op)
