"""frazil's on-disk format: pure encode/decode of every object, ids and checksums (no I/O)."""

from .common import FORMAT_VERSION, ObjectType, checksum
from .cuts import decode_cuts, encode_cuts
from .errors import FormatError, FrazilError
from .history import decode_history, encode_history
from .ids import ChunkId, HistoryId, ManifestId, NodeId, ObjectId, SnapshotId
from .manifest import (
    ChunkKind,
    ChunkRef,
    Coord,
    ManifestSegment,
    decode_manifest,
    decode_manifest_parts,
    encode_manifest,
)
from .snapshot import (
    ARRAY,
    GROUP,
    CommitInfo,
    HistoryIndex,
    HistorySegmentRef,
    NodeRecord,
    NodeType,
    SegmentRef,
    Snapshot,
    decode_commit_header,
    decode_commit_info,
    decode_snapshot,
    encode_snapshot,
)
from .txlog import (
    ChangeKind,
    NodeChange,
    TransactionLog,
    decode_transaction_log,
    encode_transaction_log,
)

__all__ = [
    "decode_cuts",
    "encode_cuts",
    "ARRAY",
    "ChangeKind",
    "FORMAT_VERSION",
    "GROUP",
    "ChunkId",
    "ChunkKind",
    "ChunkRef",
    "CommitInfo",
    "Coord",
    "FormatError",
    "FrazilError",
    "HistoryId",
    "HistoryIndex",
    "HistorySegmentRef",
    "ManifestId",
    "ManifestSegment",
    "NodeChange",
    "NodeId",
    "NodeRecord",
    "NodeType",
    "ObjectType",
    "ObjectId",
    "SegmentRef",
    "Snapshot",
    "SnapshotId",
    "TransactionLog",
    "checksum",
    "decode_commit_header",
    "decode_commit_info",
    "decode_history",
    "decode_manifest",
    "decode_manifest_parts",
    "decode_snapshot",
    "decode_transaction_log",
    "encode_history",
    "encode_manifest",
    "encode_snapshot",
    "encode_transaction_log",
]
