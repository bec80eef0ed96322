"""What durability costs on local disk: W1 and W3 with ``fsync`` on (the default) and off.

W1 writes 10,000 chunks of 32 KiB through zarr and commits them; W3 commits a change of one
chunk to an array of 10,000 (and, with ``--w3-sizes``, more) chunks. The two settings run
interleaved, round after round, in one process, and the medians are reported with their
ratio and the machine's load (``os.getloadavg``)::

    python bench/bench_durability.py --root /tmp/bench-durability --repeat 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import zarr

import frazil

CHUNK = 4096  # float64 values per chunk: 32 KiB


def w1(root: Path, fsync: bool, chunks: int) -> float:
    """Seconds to write ``chunks`` x 32 KiB and commit, in a fresh repository."""
    shutil.rmtree(root, ignore_errors=True)
    repo = frazil.Repository.create(frazil.local_filesystem_storage(root, fsync=fsync))
    data = np.random.default_rng(1).random((chunks, CHUNK))
    start = time.perf_counter()
    s = repo.writable_session("main")
    a = zarr.create_array(
        s.store, name="w1", shape=data.shape, chunks=(1, CHUNK), dtype="f8", compressors=None
    )
    a[:] = data
    s.commit("W1")
    return time.perf_counter() - start


def w3_setup(root: Path, chunks: int) -> None:
    shutil.rmtree(root, ignore_errors=True)
    repo = frazil.Repository.create(frazil.local_filesystem_storage(root, fsync=False))
    s = repo.writable_session("main")
    a = zarr.create_array(
        s.store, name="w3", shape=(chunks, 16), chunks=(1, 16), dtype="f8", compressors=None
    )
    a[:] = 1.0  # 128-byte chunks: inline, so setup is quick at any size
    s.commit("setup")


def w3(root: Path, fsync: bool, i: int) -> float:
    """Seconds to commit a change of one (native) chunk."""
    repo = frazil.Repository.open(frazil.local_filesystem_storage(root, fsync=fsync))
    s = repo.writable_session("main")
    start = time.perf_counter()
    zarr.open_array(s.store, path="w3")[i % 10] = np.full(16, float(i))
    s.commit("one chunk")
    return time.perf_counter() - start


def report(name: str, on: list[float], off: list[float], unit: str = "s") -> None:
    m_on, m_off = statistics.median(on), statistics.median(off)
    print(
        f"{name:<38} fsync on {m_on:8.4f} {unit}   off {m_off:8.4f} {unit}   "
        f"on/off {m_on / m_off:5.2f}x   (n={len(on)})"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=Path("/tmp/bench-durability"))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--w1-chunks", type=int, default=10_000)
    p.add_argument("--w3-sizes", default="10000")
    p.add_argument("--w3-commits", type=int, default=10)
    args = p.parse_args()
    print(f"load average before: {os.getloadavg()}")
    on: list[float] = []
    off: list[float] = []
    for _ in range(args.repeat):
        on.append(w1(args.root / "w1", True, args.w1_chunks))
        off.append(w1(args.root / "w1", False, args.w1_chunks))
    mb = args.w1_chunks * CHUNK * 8 / 1e6
    report(f"W1 write {args.w1_chunks} x 32 KiB + commit", on, off)
    print(f"{'':<38} = {mb / statistics.median(on):.1f} vs {mb / statistics.median(off):.1f} MB/s")
    for size in map(int, args.w3_sizes.split(",")):
        w3_setup(args.root / "w3", size)
        on, off = [], []
        for i in range(args.repeat * args.w3_commits):
            on.append(w3(args.root / "w3", True, 2 * i))
            off.append(w3(args.root / "w3", False, 2 * i + 1))
        report(
            f"W3 1-chunk commit at {size} chunks",
            [1e3 * t for t in on],
            [1e3 * t for t in off],
            "ms",
        )
    print(f"load average after: {os.getloadavg()}")
    shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    main()
