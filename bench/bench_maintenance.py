"""Benchmarks of the maintenance commands (issue 6). Prints one JSON object.

* ``read``: a 1-D array of ``--chunks`` chunks (default 1M, written in one commit), then
  ``--commits`` (1,000) single-chunk commits; the median time of a cold open (a fresh
  process, warmed up on another repository: ``Repository.open`` then the read of one
  chunk of main), before and after
  ``Repository.compact``, and their ratio. Two chunks are read: one that no delta
  commit touched (its reference is in the big base segments) and one a delta wrote.
* ``compact``: an array with ``--chunks`` native chunk references in ``--segments``
  (1,000) segments, compacted by the real ``frazil compact`` in a subprocess under
  ``/usr/bin/time -v`` (wall time and peak resident memory).
* ``gc``: a local repository of about ``--gc-objects`` (100,000) objects, half of them
  unreachable (a deleted branch), collected by ``frazil gc --older-than 0s`` under
  ``/usr/bin/time -v``.

The references of the ``read`` and ``compact`` arrays are staged through the session's
change set in bulk (the same objects a zarr write would produce, without a million
``store.set`` calls); ``compact`` names chunk objects that are not written (compaction
never reads chunks).

    python bench/bench_maintenance.py [--only read,compact,gc] [--root DIR] [--repeat 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr

import frazil
from frazil import runtime
from frazil.format import ChunkId, ChunkKind, ChunkRef, NodeRecord

FRAZIL = str(Path(sys.executable).parent / "frazil")


def _node(repo: frazil.Repository, path: str) -> NodeRecord:
    node = repo.readonly_session("main").node(path)
    assert node is not None, f"no node at {path}"
    return node


def new_array(path: str, n: int, *, split_rows: int | None = None) -> frazil.Repository:
    shutil.rmtree(path, ignore_errors=True)
    repo = frazil.Repository.create(
        frazil.local_filesystem_storage(path),
        frazil.RepositoryConfig(manifest_split_rows=split_rows),
    )
    s = repo.writable_session("main")
    zarr.create_array(
        s.store, name="x", shape=(n,), chunks=(1,), dtype="u1", fill_value=0, compressors=None
    )
    s.commit("create array")
    return repo


def stage_inline(session: frazil.Session, keys: range) -> None:
    rec = session.node("/x")
    assert rec is not None
    session._changes.table(rec.node_id, 1).inline.update(zip(keys, itertools.repeat(b"\x01")))


def stage_native(session: frazil.Session, keys: range) -> None:
    rec = session.node("/x")
    assert rec is not None
    table = session._changes.table(rec.node_id, 1)
    table.refs.update(
        (
            k,
            ChunkRef(
                ChunkKind.NATIVE,
                chunk_id=ChunkId.new(),
                length=4096,
                checksum=k * 2654435761 % (1 << 64),
            ),
        )
        for k in keys
    )


_COLD_READ = """
import sys, time
import numpy as np, zarr, frazil
from frazil import runtime
# warm up the interpreter (imports, the engine's loop and threads, pyarrow's readers) on
# another, in-memory repository, so the clock sees only this repository's cold open
mem = frazil.Repository.create(frazil.in_memory_storage())
s = mem.writable_session("main")
zarr.create_array(s.store, name="w", shape=(4,), chunks=(1,), dtype="u1")[:] = 1
s.commit("warm-up")
assert runtime.run(frazil.Repository.open(mem.storage).readonly_session("main")
                .get_chunk("/w", (1,))) is not None
t0 = time.perf_counter()
repo = frazil.Repository.open(frazil.local_filesystem_storage(sys.argv[1]))
data = runtime.run(repo.readonly_session("main").get_chunk("/x", (int(sys.argv[2]),)))
elapsed = time.perf_counter() - t0
assert data is not None
print(elapsed)
"""


def cold_read(path: str, coord: int) -> float:
    """Seconds to open the repository and read one chunk of main, in a fresh process
    (warmed up on another repository first; nothing of this one is cached)."""
    out = subprocess.run(
        [sys.executable, "-c", _COLD_READ, path, str(coord)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(out)


def bench_read(root: str, n: int, commits: int, repeat: int) -> dict[str, Any]:
    path = os.path.join(root, "read")
    repo = new_array(path, n)
    s = repo.writable_session("main")
    stage_inline(s, range(n))
    t0 = time.perf_counter()
    s.commit("all chunks")
    base_commit = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    touched = rng.choice(n, commits, replace=False)
    t0 = time.perf_counter()
    for c in touched.tolist():
        s = repo.writable_session("main")
        runtime.run(s.set_chunk("/x", (c,), b"\x02"))
        s.commit(f"chunk {c}")
    delta_commits = time.perf_counter() - t0
    untouched = int(next(i for i in range(n // 2, n) if i not in set(touched.tolist())))
    probes = {"untouched": untouched, "touched": int(touched[0])}

    def measure() -> dict[str, float]:
        return {
            name: statistics.median(cold_read(path, c) for _ in range(repeat))
            for name, c in probes.items()
        }

    segs_before = len(_node(repo, "/x").segments)
    before = measure()
    t0 = time.perf_counter()
    summary = repo.compact("main")
    compact_s = time.perf_counter() - t0
    after = measure()
    segs_after = len(_node(repo, "/x").segments)
    return {
        "chunks": n,
        "single_chunk_commits": commits,
        "base_commit_s": round(base_commit, 3),
        "single_chunk_commit_ms_mean": round(1000 * delta_commits / commits, 2),
        "segments_before": segs_before,
        "segments_after": segs_after,
        "compact_s": round(compact_s, 3),
        "compacted_refs": summary.refs,
        "cold_open_read_ms_before": {k: round(v * 1000, 2) for k, v in before.items()},
        "cold_open_read_ms_after": {k: round(v * 1000, 2) for k, v in after.items()},
        "ratio_before_over_after": {k: round(before[k] / after[k], 2) for k in before},
    }


def time_v(args: list[str]) -> dict[str, Any]:
    """Run ``args`` under /usr/bin/time -v: wall seconds, peak RSS (MiB), stdout."""
    proc = subprocess.run(["/usr/bin/time", "-v", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed: {proc.stderr[-2000:]}")
    rss_m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", proc.stderr)
    if rss_m is None or wall is None:
        raise RuntimeError(f"unexpected /usr/bin/time output: {proc.stderr[-500:]}")
    rss = int(rss_m.group(1))
    parts = [float(p) for p in wall.group(1).split(":")]
    seconds = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    return {
        "wall_s": round(seconds, 2),
        "peak_rss_mib": round(rss / 1024, 1),
        "stdout": proc.stdout,
    }


def bench_compact(root: str, n: int, segments: int) -> dict[str, Any]:
    path = os.path.join(root, "compact")
    repo = new_array(path, n)
    per = n // segments
    t0 = time.perf_counter()
    for i in range(segments):
        s = repo.writable_session("main")
        stage_native(s, range(i * per, (i + 1) * per))
        s.commit(f"part {i}")
    build = time.perf_counter() - t0
    node = repo.readonly_session("main").node("/x")
    assert node is not None and len(node.segments) == segments
    run = time_v([FRAZIL, "compact", path, "--json"])
    out = json.loads(run.pop("stdout"))
    assert out["refs"] == per * segments
    return {
        "refs": per * segments,
        "segments_before": segments,
        "segments_after": out["arrays"]["/x"]["segments_after"],
        "build_s": round(build, 1),
        "frazil_compact": run,
    }


def bench_gc(root: str, objects: int) -> dict[str, Any]:
    """About ``objects`` objects: commits of 1,000 native chunks each, half of the
    commits on a branch that is then deleted."""
    path = os.path.join(root, "gc")
    per_commit = 1000
    commits = max(2, objects // (per_commit + 3))
    repo = new_array(path, commits * per_commit)
    repo.create_branch("scratch", repo.lookup_branch("main"))
    t0 = time.perf_counter()
    for i in range(commits):
        branch = "main" if i % 2 == 0 else "scratch"
        s = repo.writable_session(branch)
        keys = range(i * per_commit, (i + 1) * per_commit)  # 600 bytes: native chunks
        runtime.run(runtime.gather_limited([s.set_chunk("/x", (k,), b"\x07" * 600) for k in keys]))
        s.commit(f"commit {i}")
    repo.delete_branch("scratch")
    build = time.perf_counter() - t0
    total = sum(
        len(runtime.run(repo.storage.list(p)))
        for p in ("chunks/", "manifests/", "snapshots/", "transactions/")
    )
    run = time_v([FRAZIL, "gc", path, "--older-than", "0s", "--json"])
    out = json.loads(run.pop("stdout"))
    return {
        "objects": total,
        "build_s": round(build, 1),
        "deleted": {
            k: out[k]
            for k in (
                "snapshots_deleted",
                "transaction_logs_deleted",
                "manifests_deleted",
                "chunks_deleted",
            )
        },
        "frazil_gc": run,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="read,compact,gc")
    p.add_argument("--root", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--chunks", type=int, default=1_000_000)
    p.add_argument("--commits", type=int, default=1_000)
    p.add_argument("--segments", type=int, default=1_000)
    p.add_argument("--gc-objects", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    root = a.root or tempfile.mkdtemp(prefix="frazil-bench-maint-")
    os.makedirs(root, exist_ok=True)
    out: dict[str, Any] = {}
    try:
        only = set(a.only.split(","))
        if "read" in only:
            out["read"] = bench_read(root, a.chunks, a.commits, a.repeat)
        if "compact" in only:
            out["compact"] = bench_compact(root, a.chunks, a.segments)
        if "gc" in only:
            out["gc"] = bench_gc(root, a.gc_objects)
    finally:
        if a.root is None:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
