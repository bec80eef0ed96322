"""expire + gc of the older half of a long history, in rounds: bench_history's workload (one
array of 1,000 chunks, one chunk rewritten per commit) is committed once per engine, then
each round copies that repository (modification times kept) and runs
``expire_snapshots`` + ``garbage_collect`` on the copy in a fresh process, the engines
interleaved. Reported per engine: the median over the rounds of expiry's and gc's wall
time, the process's CPU time for both (steadier than wall time on a loaded machine), and
the files left.

``--variant NAME=DIR`` adds frazil as laid out in DIR (``python dev/typecheck_tree.py DIR``
from another checkout), built and measured like the others: before/after comparisons in
one run::

    python bench/bench_gc.py --commits 2000 --rounds 3
    python bench/bench_gc.py --variant before=../before/build/typecheck --backends frazil
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
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

os.environ.setdefault("ICECHUNK_LOG", "error")
CHUNKS = 1_000
CHUNK = 256


def _lib(name: str) -> Any:
    return importlib.import_module("icechunk" if name == "icechunk" else "frazil")


def build(name: str, root: Path, commits: int) -> None:
    """Commit the history into ``root/repo``; the cutoff between its halves goes to
    ``root/cutoff``."""
    lib = _lib(name)
    repo = lib.Repository.create(lib.local_filesystem_storage(str(root / "repo")))
    s = repo.writable_session("main")
    a = zarr.create_array(
        s.store, name="a", shape=(CHUNKS * CHUNK,), chunks=(CHUNK,), dtype="f8", compressors=None
    )
    a[:] = np.arange(CHUNKS * CHUNK, dtype="f8")
    s.commit("init")
    rng = np.random.default_rng(0)
    for i in range(commits):
        s = repo.writable_session("main")
        a = zarr.open_array(s.store, path="a")
        c = int(rng.integers(CHUNKS))
        a[c * CHUNK : (c + 1) * CHUNK] = i
        s.commit(f"commit {i}")
        if i == commits // 2 - 1:
            time.sleep(0.01)  # a clean cutoff between the halves' written_at
            (root / "cutoff").write_text(dt.datetime.now(dt.UTC).isoformat())
            time.sleep(0.01)


def collect(name: str, root: Path) -> dict[str, float]:
    """expire + gc of ``root/repo`` at ``root/cutoff``: times and the files left."""
    import pyarrow as pa

    pa.array(["x"])  # as in a process that committed: pyarrow's lazy imports done
    lib = _lib(name)
    cutoff = dt.datetime.fromisoformat((root / "cutoff").read_text())
    repo = lib.Repository.open(lib.local_filesystem_storage(str(root / "repo")))
    cpu, start = time.process_time(), time.perf_counter()
    repo.expire_snapshots(older_than=cutoff)
    mid = time.perf_counter()
    repo.garbage_collect(cutoff)
    end = time.perf_counter()
    files = sum(len(f) for _, _, f in os.walk(root / "repo"))
    return {
        "expire_s": mid - start,
        "gc_s": end - mid,
        "cpu_s": time.process_time() - cpu,
        "files_left": files,
    }


def _child(args: list[str], tree: str | None) -> str:
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = tree + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, __file__, *args], env=env, check=True, capture_output=True, text=True
    )
    return done.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commits", type=int, default=2_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--backends", default="frazil,icechunk")
    p.add_argument("--variant", action="append", default=[], help="NAME=DIR (frazil tree)")
    p.add_argument("--tmp", type=Path, default=None)
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # build|collect ENGINE DIR
    args = p.parse_args()
    if args.child:
        what, name, root = args.child
        if what == "build":
            build(name, Path(root), args.commits)
        else:
            print(json.dumps(collect(name, Path(root))))
        return
    engines: dict[str, tuple[str, str | None]] = {}  # label: (engine, tree)
    for name in args.backends.split(","):
        try:
            _lib(name)
            engines[name] = (name, None)
        except ImportError:
            print(f"{name}: not installed, skipped")
    for v in args.variant:
        label, _, tree = v.partition("=")
        engines[label] = ("frazil", tree)
    work = Path(tempfile.mkdtemp(prefix="bench-gc-", dir=args.tmp))
    try:
        for label, (name, tree) in engines.items():
            (work / label).mkdir()
            _child(
                ["--commits", str(args.commits), "--child", "build", name, str(work / label)], tree
            )
        print("load average before:", os.getloadavg())
        runs: dict[str, list[dict[str, float]]] = {label: [] for label in engines}
        for _ in range(args.rounds):
            for label, (name, tree) in engines.items():
                copy = work / f"{label}-copy"
                shutil.copytree(work / label, copy)  # copy2: modification times kept
                try:
                    out = _child(["--child", "collect", name, str(copy)], tree)
                    runs[label].append(json.loads(out.strip().splitlines()[-1]))
                finally:
                    shutil.rmtree(copy, ignore_errors=True)
        print("load average after:", os.getloadavg())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    labels = list(engines)
    print(f"| median of {args.rounds}, {args.commits} commits | " + " | ".join(labels) + " |")
    print("| --- |" + " --- |" * len(labels))
    for key in ("expire_s", "gc_s", "cpu_s", "files_left"):
        cells = [f"{statistics.median(r[key] for r in runs[label]):.4g}" for label in labels]
        print(f"| {key} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
