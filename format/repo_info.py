"""The repository document ``refs/repo.json``: repository-level metadata and the
repository's operations log (SPEC §4.7, §6.1)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from .common import REPO_INFO, FormatError, decode_json, encode_json

MAX_METADATA_BYTES = 1 << 20
"""Most bytes the repository metadata may take as compact JSON (written or read)."""


@dataclass(frozen=True, slots=True)
class RepoInfo:
    """What ``refs/repo.json`` holds: the repository metadata (a JSON object), and the
    repository-level operations log as stored (``ops``, ``ops_next``: checked only by
    readers of the log, ``format/oplog.py``)."""

    metadata: dict[str, Any] = field(default_factory=dict)
    ops: Any = None
    ops_next: Any = None


def metadata_size(metadata: dict[str, Any]) -> int:
    """Bytes of ``metadata`` as compact JSON (what ``MAX_METADATA_BYTES`` bounds)."""
    return len(json.dumps(metadata, separators=(",", ":"), sort_keys=True).encode("utf-8"))


def encode_repo_info(info: RepoInfo) -> bytes:
    """The document: ``format_version``, ``object_type`` ``"repo_info"``, ``metadata``,
    and a fresh ``write_id`` (every write's bytes differ, as refs' do)."""
    if not isinstance(info.metadata, dict) or not all(isinstance(k, str) for k in info.metadata):
        raise ValueError("repository metadata must be a JSON object with string keys")
    size = metadata_size(info.metadata)
    if size > MAX_METADATA_BYTES:
        raise ValueError(
            f"repository metadata takes {size} bytes of JSON, more than the "
            f"{MAX_METADATA_BYTES} allowed"
        )
    obj: dict[str, Any] = {
        "format_version": 1,
        "object_type": REPO_INFO,
        "metadata": info.metadata,
        "write_id": os.urandom(8).hex(),
    }
    if info.ops is not None:
        obj["ops"] = info.ops
    if info.ops_next is not None:
        obj["ops_next"] = info.ops_next
    return encode_json(obj)


def decode_repo_info(data: bytes, what: str) -> RepoInfo:
    """The document in ``data``; larger or malformed metadata is refused as damage."""
    if len(data) > 4 * MAX_METADATA_BYTES:  # before parsing (metadata plus a little)
        raise FormatError(f"{what}: {len(data)} bytes, more than a repository document holds")
    obj = decode_json(data, REPO_INFO, what)
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict):
        raise FormatError(f"{what}: 'metadata' must be a JSON object")
    if metadata_size(metadata) > MAX_METADATA_BYTES:
        raise FormatError(f"{what}: metadata larger than the {MAX_METADATA_BYTES} bytes allowed")
    return RepoInfo(metadata, obj.get("ops"), obj.get("ops_next"))
