"""History cuts: the document in which expiry records, per kept snapshot whose parent was
expired, the ancestor that is its parent from then on (SPEC §4.6)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .common import HISTORY_CUTS, FormatError, decode_json, encode_json_with_log
from .ids import SnapshotId

MAX_CUTS = 1_000_000
"""Most cuts one document may hold (each is about 60 bytes of JSON)."""


def encode_cuts(
    cuts: Mapping[SnapshotId, SnapshotId], ops: list[str] | None = None, ops_next: str | None = None
) -> bytes:
    """The cuts document: ``{"cuts": {"<snapshot>": "<its parent from now on>"}}``, with
    the operations log of expiry runs (``ops``, ``ops_next``: SPEC §6.1), if given."""
    if len(cuts) > MAX_CUTS:
        raise ValueError(f"{len(cuts)} history cuts, more than the {MAX_CUTS} a document holds")
    body = {str(k): str(v) for k, v in sorted(cuts.items(), key=lambda kv: str(kv[0]))}
    obj: dict[str, Any] = {"format_version": 1, "object_type": HISTORY_CUTS, "cuts": body}
    if ops_next is not None:
        obj["ops_next"] = ops_next
    return encode_json_with_log(obj, ops)


def decode_cuts(data: bytes, what: str) -> dict[SnapshotId, SnapshotId]:
    """The cuts in ``data``, each checked: two snapshot ids, a snapshot never its own parent."""
    return decode_cuts_document(data, what)[0]


def decode_cuts_document(data: bytes, what: str) -> tuple[dict[SnapshotId, SnapshotId], Any, Any]:
    """The cuts in ``data`` (as ``decode_cuts``), and its operations log as stored
    (``ops``, ``ops_next``; checked by readers of the log)."""
    obj = decode_json(data, HISTORY_CUTS, what)
    raw = obj.get("cuts")
    if not isinstance(raw, dict):
        raise FormatError(f"{what}: 'cuts' must be an object mapping snapshot ids to ids")
    if len(raw) > MAX_CUTS:
        raise FormatError(f"{what}: {len(raw)} cuts, more than the {MAX_CUTS} accepted")
    out: dict[SnapshotId, SnapshotId] = {}
    for k, v in raw.items():
        if not isinstance(v, str):
            raise FormatError(f"{what}: the cut of {k!r} must be a snapshot id, got {v!r}")
        try:
            key, target = SnapshotId.parse(k), SnapshotId.parse(v)
        except FormatError as e:
            raise FormatError(f"{what}: damaged cut {k!r}: {e}") from e
        if key == target:
            raise FormatError(f"{what}: snapshot {k} is cut to itself")
        out[key] = target
    return out, obj.get("ops"), obj.get("ops_next")
