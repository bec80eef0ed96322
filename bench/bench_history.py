"""Costs as history grows: one array of 1,000 chunks, one chunk rewritten per commit, default
settings; frazil and (when installed) Icechunk in the same run, on local disk.

Reported: 1-chunk commit latency (p50 of the first and last 100 commits, p99 of all), the
snapshot object's size after 10 commits and at the end, a cold open + 1-chunk read after 10
commits and at the end (fresh repository object, median of 5), ``list(ancestry())`` from a
fresh repository object, and ``expire_snapshots`` + ``garbage_collect`` of the older half
(time, and files left)::

    python bench/bench_history.py --commits 2000
    python bench/bench_history.py --commits 10000 --backends frazil
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr

os.environ.setdefault("ICECHUNK_LOG", "error")
CHUNKS = 1_000
CHUNK = 256  # float64 values: 2 KiB, native chunks in both


def _lib(name: str) -> Any:
    return importlib.import_module("frazil" if name == "frazil" else "icechunk")


def _open(lib: Any, root: Path) -> Any:
    return lib.Repository.open(lib.local_filesystem_storage(str(root)))


def _cold_read(lib: Any, root: Path) -> float:
    times = []
    for i in range(5):
        start = time.perf_counter()
        repo = _open(lib, root)
        a = zarr.open_array(repo.readonly_session(branch="main").store, path="a", mode="r")
        a[(i * 97 % CHUNKS) * CHUNK]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _largest_snapshot(root: Path) -> int:
    return max(p.stat().st_size for p in (root / "snapshots").iterdir())


def _files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def run(name: str, root: Path, commits: int) -> dict[str, float]:
    lib = _lib(name)
    repo = lib.Repository.create(lib.local_filesystem_storage(str(root)))
    s = repo.writable_session("main")
    a = zarr.create_array(
        s.store, name="a", shape=(CHUNKS * CHUNK,), chunks=(CHUNK,), dtype="f8", compressors=None
    )
    a[:] = np.arange(CHUNKS * CHUNK, dtype="f8")
    s.commit("init")
    rng = np.random.default_rng(0)
    times: list[float] = []
    out: dict[str, float] = {}
    half_time = None
    for i in range(commits):
        start = time.perf_counter()
        s = repo.writable_session("main")
        a = zarr.open_array(s.store, path="a")
        c = int(rng.integers(CHUNKS))
        a[c * CHUNK : (c + 1) * CHUNK] = i
        s.commit(f"commit {i}")
        times.append(time.perf_counter() - start)
        if i == 9:
            out["snapshot_bytes_at_10"] = _largest_snapshot(root) if name == "frazil" else 0
            out["cold_read_ms_at_10"] = 1e3 * _cold_read(lib, root)
        if i == commits // 2 - 1:
            time.sleep(0.01)  # a clean cutoff between the halves' written_at
            half_time = dt.datetime.now(dt.UTC)
            time.sleep(0.01)
    out["commit_p50_first100_ms"] = 1e3 * statistics.median(times[:100])
    out["commit_p50_last100_ms"] = 1e3 * statistics.median(times[-100:])
    out["commit_p99_ms"] = 1e3 * float(np.percentile(times, 99))
    if name == "frazil":
        out["snapshot_bytes_at_end"] = _largest_snapshot(root)
    out["cold_read_ms_at_end"] = 1e3 * _cold_read(lib, root)
    start = time.perf_counter()
    n = len(list(_open(lib, root).ancestry(branch="main")))
    out["ancestry_s"] = time.perf_counter() - start
    out["ancestry_len"] = n
    out["files_before_gc"] = _files(root)
    repo = _open(lib, root)
    start = time.perf_counter()
    repo.expire_snapshots(older_than=half_time)
    out["expire_s"] = time.perf_counter() - start
    start = time.perf_counter()
    repo.garbage_collect(half_time)
    out["gc_s"] = time.perf_counter() - start
    out["files_after_gc"] = _files(root)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commits", type=int, default=2_000)
    p.add_argument("--backends", default="frazil,icechunk")
    p.add_argument("--tmp", type=Path, default=None)
    args = p.parse_args()
    names = []
    for name in args.backends.split(","):
        try:
            _lib(name)
            names.append(name)
        except ImportError:
            print(f"{name}: not installed, skipped")
    print("load average before:", os.getloadavg())
    results = {}
    for name in names:
        root = Path(tempfile.mkdtemp(prefix=f"hist-{name}-", dir=args.tmp))
        try:
            results[name] = run(name, root / "repo", args.commits)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    keys = list(next(iter(results.values())).keys()) if results else []
    print(f"| after {args.commits} commits | " + " | ".join(names) + " |")
    print("| --- |" + " --- |" * len(names))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{results[n].get(k, 0):.4g}" for n in names) + " |")
    print("load average after:", os.getloadavg())


if __name__ == "__main__":
    main()
