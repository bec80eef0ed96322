"""Mixed read/write load on one local repository: writer threads committing with rebase,
reader threads timing read-only reads; prints commits, reads and read latency as JSON.

    python bench/bench_load.py --seconds 60 [--writers 4 --readers 4 --root DIR]

Writer ``i`` owns array ``w<i>`` (4 chunks); its ``k``-th commit sets every element to
``k``, and even writers also set chunk ``i`` of the ``shared`` array to ``k`` in the same
commit (``rebase_with=ConflictDetector()``: writers never touch the same chunk). A reader
opens a read-only session at the tip of ``main`` and reads one writer's array and the
shared array; a read is *torn* if the array's elements differ, if the shared chunk
disagrees with the array, or if a writer's value goes back in time. The test of this load
(tests/test_load.py) checks the rest: every value read was committed, every commit is in
history exactly once, and the final content.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

import frazil

ARRAY_LEN = 8
CHUNK = 2


@dataclass
class Commit:
    writer: int
    k: int
    snapshot_id: str
    attempts: int
    seconds: float


@dataclass
class LoadResult:
    """What one run saw; ``errors`` and ``torn`` must be empty."""

    root: Path
    writers: int
    readers: int
    seconds: float
    commits: list[Commit] = field(default_factory=list)
    reads: list[tuple[int, int]] = field(default_factory=list)  # (writer, value read)
    read_latency_s: list[float] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def shares(self, writer: int) -> bool:
        return writer % 2 == 0

    def summary(self) -> dict[str, Any]:
        lat = np.array(self.read_latency_s or [0.0]) * 1000
        commit_s = np.array([c.seconds for c in self.commits] or [0.0]) * 1000
        return {
            "seconds": self.seconds,
            "writers": self.writers,
            "readers": self.readers,
            "commits": len(self.commits),
            "commits_per_s": round(len(self.commits) / self.seconds, 1),
            "commits_by_writer": [
                sum(c.writer == w for c in self.commits) for w in range(self.writers)
            ],
            "max_commit_attempts": max((c.attempts for c in self.commits), default=0),
            "commit_latency_ms": _percentiles(commit_s),
            "reads": len(self.read_latency_s),
            "reads_per_s": round(len(self.read_latency_s) / self.seconds, 1),
            "read_latency_ms": _percentiles(lat),
            "torn_reads": len(self.torn),
            "errors": len(self.errors),
        }


def _percentiles(ms: np.ndarray) -> dict[str, float]:
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {
        "p50": round(float(p50), 2),
        "p95": round(float(p95), 2),
        "p99": round(float(p99), 2),
        "max": round(float(ms.max()), 2),
    }


def setup(root: Path, writers: int) -> frazil.Repository:
    repo = frazil.Repository.create(frazil.local_filesystem_storage(str(root)))
    session = repo.writable_session("main")
    group = zarr.open_group(session.store, mode="w")
    for w in range(writers):
        group.create_array(
            f"w{w}", shape=(ARRAY_LEN,), chunks=(CHUNK,), dtype="int32", fill_value=0
        )
    group.create_array("shared", shape=(writers,), chunks=(1,), dtype="int32", fill_value=0)
    session.commit("load: arrays")
    return repo


def _writer(
    result: LoadResult,
    w: int,
    start: threading.Barrier,
    deadline: list[float],
    lock: threading.Lock,
) -> None:
    repo = frazil.Repository.open(frazil.local_filesystem_storage(str(result.root)))
    start.wait()
    k = 0
    while time.monotonic() < deadline[0]:
        k += 1
        t0 = time.perf_counter()
        session = repo.writable_session("main")
        zarr.open_array(session.store, path=f"w{w}", mode="r+")[:] = k
        if result.shares(w):
            zarr.open_array(session.store, path="shared", mode="r+")[w] = k
        sid = session.commit(
            f"w{w} {k}", metadata={"writer": w, "k": k}, rebase_with=frazil.ConflictDetector()
        )
        attempts = int(repo.lookup_snapshot(sid).metadata["frazil.commit_attempts"])
        with lock:
            result.commits.append(Commit(w, k, sid, attempts, time.perf_counter() - t0))


def _reader(
    result: LoadResult,
    r: int,
    start: threading.Barrier,
    deadline: list[float],
    lock: threading.Lock,
) -> None:
    repo = frazil.Repository.open(frazil.local_filesystem_storage(str(result.root)))
    rng = random.Random(r)
    last = [0] * result.writers  # newest value seen per writer: never goes back
    start.wait()
    while time.monotonic() < deadline[0]:
        w = rng.randrange(result.writers)
        t0 = time.perf_counter()
        session = repo.readonly_session("main")
        values = np.asarray(zarr.open_array(session.store, path=f"w{w}", mode="r")[:])
        shared = np.asarray(zarr.open_array(session.store, path="shared", mode="r")[:])
        elapsed = time.perf_counter() - t0
        v = int(values[0])
        problems = []
        if not (values == v).all():
            problems.append(f"w{w} mixes values {sorted(set(values.tolist()))}")
        if result.shares(w) and int(shared[w]) != v:
            problems.append(f"shared[{w}] = {int(shared[w])} but w{w} = {v}")
        if v < last[w]:
            problems.append(f"w{w} went back from {last[w]} to {v}")
        last[w] = max(last[w], v)
        with lock:
            result.reads.append((w, v))
            result.read_latency_s.append(elapsed)
            result.torn.extend(f"snapshot {session.snapshot_id}: {p}" for p in problems)


def run_load(root: Path, seconds: float, writers: int = 4, readers: int = 4) -> LoadResult:
    """Create a repository at ``root`` and run the load for ``seconds``."""
    setup(root, writers)
    result = LoadResult(root, writers, readers, seconds)
    lock = threading.Lock()
    deadline = [float("inf")]  # set when every thread is ready, before any starts

    def set_deadline() -> None:
        deadline[0] = time.monotonic() + seconds

    start = threading.Barrier(writers + readers + 1, action=set_deadline)

    def guarded(fn: Any, i: int) -> None:
        try:
            fn(result, i, start, deadline, lock)
        except BaseException as e:  # noqa: BLE001 - reported, and the test fails on it
            start.abort()
            with lock:
                result.errors.append(f"{fn.__name__} {i}: {type(e).__name__}: {e}")

    threads = [
        threading.Thread(target=guarded, args=(_writer, i), name=f"writer-{i}")
        for i in range(writers)
    ]
    threads += [
        threading.Thread(target=guarded, args=(_reader, i), name=f"reader-{i}")
        for i in range(readers)
    ]
    for t in threads:
        t.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:  # a thread failed before starting: it says why
        pass
    for t in threads:
        t.join()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="an empty or absent folder for the repository (default: a temp)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp) / "repo"
        result = run_load(root, args.seconds, args.writers, args.readers)
    print(json.dumps(result.summary(), indent=1))
    for line in (result.errors + result.torn)[:20]:
        print(line)
    return 1 if result.errors or result.torn else 0


if __name__ == "__main__":
    raise SystemExit(main())
