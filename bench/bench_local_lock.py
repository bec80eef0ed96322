"""What the portable ref lock costs on local disk, interleaved round after round: frazil's
(``filelock``'s lock on our own descriptor), the ``fcntl.flock`` it replaced (Unix only),
and a whole ``filelock.FileLock`` object per use.

Two workloads, on the storage layer (fsync off, so that disk flushes do not hide the
lock's own cost):

- ``cas``: one process, ``--ops`` compare-and-swaps of one key in a row (no contention);
- ``contended``: ``--procs`` processes (spawned) adding one to the same counter by
  compare-and-swap, ``--increments`` each, retrying lost races: increments per second.

Medians per variant, with their ratio and the machine's load::

    python bench/bench_local_lock.py --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock

from frazil.storage import LocalFileSystemStorage


class FlockStorage(LocalFileSystemStorage):
    """Local storage with the lock frazil used before: ``fcntl.flock``, blocking."""

    def _lock(self, path: str) -> Any:
        d = os.path.dirname(path)
        self._ensure_dir(d)
        name = os.path.join(d, f".{os.path.basename(path)}.lock")

        @contextlib.contextmanager
        def held() -> Iterator[None]:
            fd = os.open(name, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

        return held()


class FileLockStorage(LocalFileSystemStorage):
    """Local storage locking with a whole ``filelock.FileLock`` per use (the first version
    of the portable lock: about 0.6 ms more per use than the descriptor lock)."""

    def _lock(self, path: str) -> Any:
        d = os.path.dirname(path)
        self._ensure_dir(d)
        return filelock.FileLock(os.path.join(d, f".{os.path.basename(path)}.lock"))


VARIANTS: dict[str, type[LocalFileSystemStorage]] = {
    "frazil": LocalFileSystemStorage,
    "flock": FlockStorage,
    "filelock-object": FileLockStorage,
}


async def _increment(storage: LocalFileSystemStorage, key: str, n: int) -> None:
    for _ in range(n):
        while True:
            data, version = await storage.get_with_version(key)
            if (await storage.put_if_version(key, b"%d" % (int(data) + 1), version)).ok:
                break


def _worker(variant: str, root: str, n: int, start: Any) -> None:
    storage = VARIANTS[variant](root, fsync=False)
    start.wait()
    asyncio.run(_increment(storage, "counter", n))


def cas(variant: str, root: Path, ops: int) -> float:
    """Compare-and-swaps per second, one process."""
    shutil.rmtree(root, ignore_errors=True)
    storage = VARIANTS[variant](root, fsync=False)
    asyncio.run(storage.put("counter", b"0"))
    t = time.perf_counter()
    asyncio.run(_increment(storage, "counter", ops))
    return ops / (time.perf_counter() - t)


def contended(variant: str, root: Path, procs: int, increments: int) -> float:
    """Increments per second, ``procs`` processes on one counter."""
    shutil.rmtree(root, ignore_errors=True)
    storage = VARIANTS[variant](root, fsync=False)
    asyncio.run(storage.put("counter", b"0"))
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(procs + 1)
    ps = [
        ctx.Process(target=_worker, args=(variant, str(root), increments, start))
        for _ in range(procs)
    ]
    for p in ps:
        p.start()
    start.wait()
    t = time.perf_counter()
    for p in ps:
        p.join()
    elapsed = time.perf_counter() - t
    assert all(p.exitcode == 0 for p in ps)
    assert asyncio.run(storage.get("counter")) == b"%d" % (procs * increments)
    return procs * increments / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--increments", type=int, default=200)
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}")
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            for variant in VARIANTS:
                root = Path(tmp) / variant
                results.setdefault(("cas", variant), []).append(cas(variant, root, args.ops))
                rate = contended(variant, root, args.procs, args.increments)
                results.setdefault(("contended", variant), []).append(rate)
    for workload in ("cas", "contended"):
        med = {v: statistics.median(results[(workload, v)]) for v in VARIANTS}
        print(
            f"{workload:10s} "
            + "  ".join(f"{v} {m:8.0f}/s" for v, m in med.items())
            + f"  frazil/flock {med['frazil'] / med['flock']:.2f}"
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
