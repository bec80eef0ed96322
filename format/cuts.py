"""History cuts: the document in which expiry records, per kept snapshot whose parent was
expired, the ancestor that is its parent from then on (SPEC §4.6)."""

from __future__ import annotations

from collections.abc import Mapping

from .common import HISTORY_CUTS, FormatError, decode_json, encode_json
from .ids import SnapshotId

MAX_CUTS = 1_000_000
"""Most cuts one document may hold (each is about 60 bytes of JSON)."""


def encode_cuts(cuts: Mapping[SnapshotId, SnapshotId]) -> bytes:
    """The cuts document: ``{"cuts": {"<snapshot>": "<its parent from now on>"}}``."""
    if len(cuts) > MAX_CUTS:
        raise ValueError(f"{len(cuts)} history cuts, more than the {MAX_CUTS} a document holds")
    body = {str(k): str(v) for k, v in sorted(cuts.items(), key=lambda kv: str(kv[0]))}
    return encode_json({"format_version": 1, "object_type": HISTORY_CUTS, "cuts": body})


def decode_cuts(data: bytes, what: str) -> dict[SnapshotId, SnapshotId]:
    """The cuts in ``data``, each checked: two snapshot ids, a snapshot never its own parent."""
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
    return out
