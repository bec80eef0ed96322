"""The key layout: where each object lives under a repository's prefix, from ids and names
to keys and back (SPEC.md §1)."""

from __future__ import annotations

import re

from .common import BRANCH_REF, TAG_REF
from .ids import ChunkId, HistoryId, ManifestId, SnapshotId

CONFIG = "config.json"
SNAPSHOTS = "snapshots/"
MANIFESTS = "manifests/"
TRANSACTIONS = "transactions/"
HISTORY = "history/"
CHUNKS = "chunks/"
REFS = "refs/"
BRANCHES = "refs/branch."
TAGS = "refs/tag."
REF_FILE = "/ref.json"
CUTS = "refs/cuts.json"
"""Where expiry cut history: the one document of history cuts (SPEC §4.6)."""
REPO_INFO = "refs/repo.json"
"""The repository document: repository-level metadata (SPEC §4.7)."""
OPS = "ops/"
"""Operations log archive objects (SPEC §6.1): ``ops/<id>``."""
FORKS = "forks/"
MAIN = "main"

OBJECT_FOLDERS = {
    "snapshot": SNAPSHOTS,
    "transaction_log": TRANSACTIONS,
    "manifest": MANIFESTS,
    "chunk": CHUNKS,
    "history": HISTORY,
}
"""The folders of immutable objects, by object kind: what refs make reachable."""

SCRATCH = (FORKS,)
"""Prefixes of objects nothing reachable depends on (fork journals)."""

_TOKEN = re.compile(r"^[0-9a-f]{16,64}$")
MARKER = "wrote"
"""The last part of the key a fork copy that keeps no journal (``fork(journal=False)``)
writes, empty, on its first write."""


def snapshot_key(sid: SnapshotId) -> str:
    return f"{SNAPSHOTS}{sid}"


def history_key(hid: HistoryId) -> str:
    return f"{HISTORY}{hid}"


def manifest_key(mid: ManifestId) -> str:
    return f"{MANIFESTS}{mid}"


def transaction_log_key(sid: SnapshotId) -> str:
    return f"{TRANSACTIONS}{sid}"


def chunk_key(cid: ChunkId | str) -> str:
    return f"{CHUNKS}{cid}"


def ref_prefix(kind: str) -> str:
    """``refs/branch.`` or ``refs/tag.``: where the refs of ``kind`` are listed."""
    if kind not in (BRANCH_REF, TAG_REF):
        raise ValueError(f"unknown ref kind {kind!r}")
    return BRANCHES if kind == BRANCH_REF else TAGS


def ref_key(kind: str, name: str) -> str:
    """The key of a branch or tag (the name is not checked here: see the engine's rule)."""
    return f"{ref_prefix(kind)}{name}{REF_FILE}"


def branch_key(name: str) -> str:
    return ref_key(BRANCH_REF, name)


def tag_key(name: str) -> str:
    return ref_key(TAG_REF, name)


def ref_name(kind: str, key: str) -> str | None:
    """The name in a ref key of ``kind`` (``refs/branch.<name>/ref.json``), or None."""
    prefix = ref_prefix(kind)
    if not (key.startswith(prefix) and key.endswith(REF_FILE)):
        return None
    name = key[len(prefix) : -len(REF_FILE)]
    return name if name and "/" not in name else None


def object_id(kind: str, key: str) -> str | None:
    """The id part of an object key of ``kind`` (a key of ``OBJECT_FOLDERS``), or None."""
    folder = OBJECT_FOLDERS[kind]
    rest = key[len(folder) :] if key.startswith(folder) else ""
    return rest if rest and "/" not in rest else None


def journal_key(fork_id: str, writer_id: str, seq: int) -> str:
    return f"{FORKS}{fork_id}/{writer_id}/{seq:010d}"


def marker_key(fork_id: str, writer_id: str) -> str:
    return f"{FORKS}{fork_id}/{writer_id}/{MARKER}"


def fork_prefix(fork_id: str) -> str:
    return f"{FORKS}{fork_id}/"


def is_token(text: object) -> bool:
    """A fork or writer id: 16 to 64 lowercase hex digits."""
    return isinstance(text, str) and _TOKEN.match(text) is not None


def parse_journal_key(key: str) -> tuple[str, str, int | None] | None:
    """(fork id, writer id, seq or None for a marker) of a journal key, or None if it is
    not one."""
    parts = key.split("/")
    if (
        len(parts) != 4
        or parts[0] + "/" != FORKS
        or not _TOKEN.match(parts[1])
        or not _TOKEN.match(parts[2])
    ):
        return None
    if parts[3] == MARKER:
        return parts[1], parts[2], None
    if not parts[3].isdigit():
        return None
    return parts[1], parts[2], int(parts[3])


def ops_key(archive_id: str) -> str:
    """The key of operations log archive object ``archive_id`` (checked by the caller)."""
    return OPS + archive_id
