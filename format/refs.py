"""Branch and tag ref files: small JSON documents naming a snapshot.

``refs/branch.<name>/ref.json`` and ``refs/tag.<name>/ref.json``. A ref records the
snapshot's checksum so the snapshot is verified when read through it, and a random
``write_id`` that makes every write of a ref unique (so a compare-and-swap never
mistakes one write for another with the same snapshot). It also records its own name, so
a ref copied under another name is caught (refs written before names were recorded have
none, and are read as before).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .common import BRANCH_REF, TAG_REF, FormatError, decode_json, encode_json_with_log
from .ids import SnapshotId


@dataclass(frozen=True, slots=True)
class RefRecord:
    snapshot_id: SnapshotId | None
    checksum: int | None
    write_id: str
    deleted: bool = False
    #: the operations log the ref carries (SPEC §6.1), as stored: checked only by readers
    #: of the log (``oplog.parse_entries``), so a damaged log never stops a ref update
    ops: Any = None
    ops_next: Any = None


def new_write_id() -> str:
    return os.urandom(8).hex()


def encode_ref(
    kind: str,
    snapshot_id: SnapshotId | None,
    checksum: int | None,
    deleted: bool = False,
    write_id: str | None = None,
    name: str | None = None,
    ops: list[Any] | None = None,
    ops_next: str | None = None,
) -> bytes:
    if kind not in (BRANCH_REF, TAG_REF):
        raise ValueError(f"unknown ref kind {kind!r}")
    obj: dict[str, object] = {
        "format_version": 1,
        "object_type": kind,
        "write_id": write_id or new_write_id(),
    }
    if name is not None:
        obj["name"] = name
    if ops_next is not None:
        obj["ops_next"] = ops_next
    if deleted:
        obj["deleted"] = True
    else:
        if snapshot_id is None:
            raise ValueError("a live ref needs a snapshot id")
        obj["snapshot"] = str(snapshot_id)
        obj["snapshot_checksum"] = f"{checksum:016x}" if checksum is not None else None
    return encode_json_with_log(obj, ops)


def decode_ref(data: bytes, kind: str, what: str, name: str | None = None) -> RefRecord:
    """The ref in ``data``; with ``name``, a ref that records another name is refused."""
    obj = decode_json(data, kind, what)
    recorded = obj.get("name")
    if name is not None and recorded is not None and recorded != name:
        word = "branch" if kind == BRANCH_REF else "tag"
        raise FormatError(
            f"{what}: holds the ref of {word} {recorded!r}, not of {name!r} "
            "(copied from another ref?)"
        )
    try:
        ops, ops_next = obj.get("ops"), obj.get("ops_next")
        if obj.get("deleted"):
            return RefRecord(None, None, str(obj["write_id"]), True, ops, ops_next)
        cs = obj.get("snapshot_checksum")
        return RefRecord(
            snapshot_id=SnapshotId.parse(obj["snapshot"]),
            checksum=int(cs, 16) if cs else None,
            write_id=str(obj["write_id"]),
            ops=ops,
            ops_next=ops_next,
        )
    except (KeyError, TypeError, ValueError, FormatError) as e:
        raise FormatError(f"{what}: damaged ref ({e!r})") from e
