"""Commit throughput on one branch under contention (a measurement, not a test).

``--processes`` processes start together (a Barrier) and commit a one-chunk change to the
same branch of a local repository in a loop for ``--seconds`` each, with
``rebase_with=ConflictDetector()``; every process writes its own chunks, so rebases never
conflict. Prints one JSON line: commits per second, the share of commits that needed a
rebase (commit metadata ``frazil.commit_attempts`` > 1) and per-process counts.

    python bench/bench_commit_rate.py --seconds 10 --processes 4
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

import zarr

import frazil

ATTEMPTS = "frazil.commit_attempts"
ARRAY = "counts"
SLOTS = 1_000_000  # chunks per process (the grid is metadata only: nothing is allocated)


def _worker(k: int, root: str, nproc: int, seconds: float, barrier: Any, results: Any) -> None:
    try:
        repo = frazil.Repository.open(frazil.local_filesystem_storage(root))
        solver = frazil.ConflictDetector()
        failures = 0
        n = 0
        barrier.wait(timeout=120)
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            s = repo.writable_session("main")
            zarr.open_array(s.store, path=ARRAY)[k * SLOTS + n] = n
            try:
                s.commit(f"{k}/{n}", {"p": k, "n": n}, rebase_with=solver)
                n += 1
            except frazil.ConflictError:  # gave up after rebase_tries: count it, go on
                failures += 1
        results.put(
            {"p": k, "commits": n, "failures": failures, "elapsed": time.perf_counter() - start}
        )
    except BaseException as e:  # report, never hang the parent
        barrier.abort()
        results.put({"p": k, "error": repr(e)})


def run(seconds: float, nproc: int, root: str) -> dict[str, Any]:
    repo = frazil.Repository.create(frazil.local_filesystem_storage(root))
    s = repo.writable_session("main")
    zarr.create_array(
        s.store, name=ARRAY, shape=(nproc * SLOTS,), chunks=(1,), dtype="i8", fill_value=-1
    )
    created = s.commit("create")

    methods = mp.get_all_start_methods()
    ctx: Any = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
    barrier = ctx.Barrier(nproc)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(k, root, nproc, seconds, barrier, results))
        for k in range(nproc)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=seconds + 300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [o["error"] for o in outcomes if "error" in o]
    if errors:
        raise SystemExit(f"worker failed: {errors}")

    attempts = []
    per_process: dict[int, int] = {}
    for info in repo.ancestry(branch="main"):
        if info.id == created:
            break
        attempts.append(info.metadata[ATTEMPTS])
        per_process[info.metadata["p"]] = per_process.get(info.metadata["p"], 0) + 1
    commits = len(attempts)
    reported = sum(o["commits"] for o in outcomes)
    if commits != reported:
        raise SystemExit(f"history has {commits} commits, workers reported {reported}")
    elapsed = max(o["elapsed"] for o in outcomes)
    return {
        "processes": nproc,
        "seconds": seconds,
        "elapsed_s": round(elapsed, 2),
        "commits": commits,
        "commits_per_s": round(commits / elapsed, 1),
        "rebased_share": round(sum(a > 1 for a in attempts) / max(commits, 1), 3),
        "attempts_mean": round(statistics.fmean(attempts), 2) if attempts else None,
        "attempts_max": max(attempts, default=None),
        "per_process_commits": [per_process.get(k, 0) for k in range(nproc)],
        "gave_up": sum(o["failures"] for o in outcomes),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "start_method": ctx.get_start_method(),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--seconds", type=float, default=10.0, help="how long each process commits (default 10)"
    )
    ap.add_argument("--processes", type=int, default=4, help="committing processes (default 4)")
    ap.add_argument(
        "--path", default=None, help="repository directory (default: a new temporary directory)"
    )
    args = ap.parse_args(argv)
    if args.processes < 1 or args.seconds <= 0:
        ap.error("--processes must be >= 1 and --seconds > 0")
    if args.path is not None:
        out = run(args.seconds, args.processes, args.path)
    else:
        with tempfile.TemporaryDirectory(prefix="frazil-bench-") as where:
            out = run(args.seconds, args.processes, os.path.join(where, "repo"))
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
