"""Repository maintenance operations, one module each: ``reach`` (what the refs reach),
``gc`` (garbage collection), ``expiry`` (dropping old history), ``fsck`` (verifying
everything reachable) and ``stats`` (chunk statistics)."""

from .expiry import expire_snapshots, plan_cuts
from .fsck import FsckReport, Problem, fsck
from .gc import GCSummary, garbage_collect
from .reach import Reachable, id_times_ms, mark, ref_targets, walk_history
from .stats import ChunkStorageStats, chunk_storage_stats

__all__ = [
    "ChunkStorageStats",
    "FsckReport",
    "GCSummary",
    "Problem",
    "Reachable",
    "chunk_storage_stats",
    "expire_snapshots",
    "fsck",
    "garbage_collect",
    "id_times_ms",
    "mark",
    "plan_cuts",
    "ref_targets",
    "walk_history",
]
