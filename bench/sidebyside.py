"""Side-by-side benchmark: frazil, Icechunk (when installed) and zarr's own stores, the same
workloads in one run, round after round, reported as medians and ratios.

    python bench/sidebyside.py                                   # what is installed, W1-W5
    python bench/sidebyside.py --backends frazil-local,icechunk-local,zarr-local \\
        --workloads W1,W2 --repeat 5 --json results.jsonl

Workloads (each backend in a fresh repository or folder per round):

* W1: write ``--chunks`` chunks of 32 KiB (float64, no compression) and commit; MB/s.
  ``W1_commit_ms``: the commit alone (a no-op for zarr's stores).
* W2: open what W1 wrote, as a new reader would, and read it all back; MB/s.
* W3: in an array of ``--w3-chunks`` chunks, commit a change of one chunk (ms), and open
  + read one chunk cold (ms).
* W4: ``--w4-tasks`` tasks of ``--w4-chunks`` chunks each written by 2 worker processes
  (frazil and Icechunk: through a fork of the session, the forks merged and committed;
  zarr: straight into the store), then read back and checked; seconds. Local backends
  only: worker processes cannot reach a store in this process's memory.
* W5: create 1,000 arrays in 10 groups and commit, then list them; seconds.
* W6: in ``--w6-arrays`` arrays (committed), write one chunk in each, then commit; the
  commit alone (``W6_commit_ms``), and the writes plus commit (``W6_write_commit_ms``).

Backends: ``frazil-local``, ``frazil-memory``, ``icechunk-local``, ``icechunk-memory``
(Icechunk's Python package, same API), ``zarr-local`` (``LocalStore``) and
``zarr-memory`` (``MemoryStore``: no versioning, the ceiling zarr's pipeline sets).
frazil's local storage syncs to disk by default; ``--no-fsync`` measures it without.
The load average is printed before and after: read ratios, not absolute times, on a busy
machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

os.environ.setdefault("ICECHUNK_LOG", "error")  # Icechunk's warnings about its local store

CHUNK = 4096  # float64 values: 32 KiB


# -- backends ---------------------------------------------------------------------------------
@dataclass
class Target:
    """One repository (or plain store) being measured: a store to write through, a way to
    commit what was written, and a way to open it again as a new reader would."""

    store: Any
    commit: Callable[[str], None]
    reopen: Callable[[], Any]
    fork: Callable[[], Any] | None = None  # (versioned backends) a picklable fork
    merge: Callable[[list[Any]], None] | None = None


class Backend:
    name = ""
    local = True  # state on disk: worker processes can write to it

    def available(self) -> bool:
        return True

    def create(self, root: Path) -> Target:
        raise NotImplementedError


class VersionedBackend(Backend):
    """frazil or Icechunk: the same Python API."""

    def __init__(self, module: str, local: bool, fsync: bool = True) -> None:
        self.module_name, self.local, self.fsync = module, local, fsync
        self.name = f"{module}-{'local' if local else 'memory'}"

    def available(self) -> bool:
        try:
            __import__(self.module_name)
        except ImportError:
            return False
        return True

    def _storage(self, root: Path) -> Any:
        lib = __import__(self.module_name)
        if not self.local:
            return lib.in_memory_storage()
        if self.module_name == "frazil":
            return lib.local_filesystem_storage(str(root), fsync=self.fsync)
        return lib.local_filesystem_storage(str(root))

    def create(self, root: Path) -> Target:
        lib = __import__(self.module_name)
        storage = self._storage(root)
        repo = lib.Repository.create(storage)
        state: dict[str, Any] = {"session": repo.writable_session("main")}

        def commit(message: str) -> None:
            state["session"].commit(message)
            state["session"] = repo.writable_session("main")

        def reopen() -> Any:
            again = lib.Repository.open(storage if not self.local else self._storage(root))
            return again.readonly_session("main").store

        def fork() -> Any:
            return state["session"].fork()

        def merge(forks: list[Any]) -> None:
            state["session"].merge(*forks)

        return Target(_LiveStore(state), commit, reopen, fork, merge)


class _LiveStore:
    """Resolves to the current writable session's store when zarr asks for one."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    @property
    def store(self) -> Any:
        return self.state["session"].store


class ZarrBackend(Backend):
    def __init__(self, local: bool) -> None:
        self.local = local
        self.name = f"zarr-{'local' if local else 'memory'}"

    def create(self, root: Path) -> Target:
        store: Any = (
            zarr.storage.LocalStore(str(root)) if self.local else zarr.storage.MemoryStore()
        )
        return Target(_Fixed(store), lambda message: None, lambda: store)


class _Fixed:
    def __init__(self, store: Any) -> None:
        self.store = store


def backends(fsync: bool) -> dict[str, Backend]:
    out: dict[str, Backend] = {}
    for b in (
        VersionedBackend("frazil", True, fsync),
        VersionedBackend("frazil", False),
        VersionedBackend("icechunk", True),
        VersionedBackend("icechunk", False),
        ZarrBackend(True),
        ZarrBackend(False),
    ):
        out[b.name] = b
    return out


# -- workloads ------------------------------------------------------------------------------
def _data(n: int) -> np.ndarray:
    return np.random.default_rng(7).random((n, CHUNK))


def _array(store: Any, name: str, n: int, chunk: int = CHUNK) -> zarr.Array:
    return zarr.create_array(
        store,
        name=name,
        shape=(n, chunk),
        chunks=(1, chunk),
        dtype="f8",
        compressors=None,
        fill_value=0.0,
    )


def w1_w2(backend: Backend, root: Path, args: argparse.Namespace) -> dict[str, float]:
    target = backend.create(root)
    data = _data(args.chunks)
    mb = data.nbytes / 1e6
    t0 = time.perf_counter()
    _array(target.store.store, "w1", args.chunks)[:] = data
    tc = time.perf_counter()
    target.commit("W1")
    t1 = time.perf_counter()
    back = zarr.open_array(target.reopen(), path="w1", mode="r")[:]
    t2 = time.perf_counter()
    assert np.array_equal(back, data)
    return {
        "W1_MBps": mb / (t1 - t0),
        "W1_commit_ms": 1e3 * (t1 - tc),
        "W2_MBps": mb / (t2 - t1),
    }


def w3(backend: Backend, root: Path, args: argparse.Namespace) -> dict[str, float]:
    target = backend.create(root)
    n = args.w3_chunks
    zarr.create_array(
        target.store.store, name="w3", shape=(n, 16), chunks=(1, 16), dtype="f8", fill_value=0.0
    )[:] = 1.0
    target.commit("setup")
    times = []
    for i in range(5):
        t0 = time.perf_counter()
        zarr.open_array(target.store.store, path="w3")[i] = np.full(16, float(i))
        target.commit("one chunk")
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    value = np.asarray(zarr.open_array(target.reopen(), path="w3", mode="r")[n // 2])
    t1 = time.perf_counter()
    assert float(value[0]) == 1.0
    return {"W3_commit_ms": 1e3 * statistics.median(times), "W3_open_read_ms": 1e3 * (t1 - t0)}


def _w4_task(where: Any, path: str, start: int, stop: int) -> Any:
    store = getattr(where, "store", where)
    arr = zarr.open_array(store, path=path, mode="r+")
    arr[start:stop] = np.full((stop - start, CHUNK), float(start))
    return where


def w4(backend: Backend, root: Path, args: argparse.Namespace) -> dict[str, float]:
    if not backend.local:
        return {}  # worker processes cannot reach a store in this process's memory
    target = backend.create(root)
    t, c = args.w4_tasks, args.w4_chunks
    _array(target.store.store, "w4", t * c)
    target.commit("W4 array")
    t0 = time.perf_counter()
    regions = [(i * c, (i + 1) * c) for i in range(t)]
    ctx = multiprocessing.get_context("forkserver")
    if target.fork is not None and target.merge is not None:
        fork = target.fork()
        with ProcessPoolExecutor(2, mp_context=ctx) as pool:
            forks = list(pool.map(_w4_task, [fork] * t, ["w4"] * t, *zip(*regions)))
        target.merge(forks)
        target.commit("W4")
    else:
        with ProcessPoolExecutor(2, mp_context=ctx) as pool:
            list(pool.map(_w4_task, [target.store.store] * t, ["w4"] * t, *zip(*regions)))
    t1 = time.perf_counter()
    back = zarr.open_array(target.reopen(), path="w4", mode="r")
    assert float(np.asarray(back[c + 1, 0])) == float(c)
    return {"W4_s": t1 - t0}


def w5(backend: Backend, root: Path, args: argparse.Namespace) -> dict[str, float]:
    target = backend.create(root)
    t0 = time.perf_counter()
    top = zarr.open_group(target.store.store, mode="a")
    for g in range(10):
        group = top.create_group(f"g{g}")
        for a in range(100):
            group.create_array(f"a{a}", shape=(10,), chunks=(10,), dtype="i4")
    target.commit("W5")
    t1 = time.perf_counter()
    names = [
        name
        for g in zarr.open_group(target.reopen(), mode="r").group_keys()
        for name in zarr.open_group(target.reopen(), path=g, mode="r").array_keys()
    ]
    t2 = time.perf_counter()
    assert len(names) == 1000
    return {"W5_create_s": t1 - t0, "W5_list_s": t2 - t1}


def w6(backend: Backend, root: Path, args: argparse.Namespace) -> dict[str, float]:
    target = backend.create(root)
    n = args.w6_arrays
    top = zarr.open_group(target.store.store, mode="a")
    arrays = [
        top.create_array(f"a{i}", shape=(16, 16), chunks=(4, 16), dtype="f8", fill_value=0.0)
        for i in range(n)
    ]
    target.commit("W6 arrays")
    arrays = [zarr.open_array(target.store.store, path=f"a{i}") for i in range(n)]
    block = np.ones((4, 16))
    t0 = time.perf_counter()
    for a in arrays:
        a[4:8] = block
    tc = time.perf_counter()
    target.commit("W6")
    t1 = time.perf_counter()
    back = zarr.open_array(target.reopen(), path=f"a{n - 1}", mode="r")
    assert float(np.asarray(back[5, 0])) == 1.0
    return {"W6_commit_ms": 1e3 * (t1 - tc), "W6_write_commit_ms": 1e3 * (t1 - t0)}


WORKLOADS: dict[str, Callable[[Backend, Path, argparse.Namespace], dict[str, float]]] = {
    "W1": w1_w2,
    "W3": w3,
    "W4": w4,
    "W5": w5,
    "W6": w6,
}
HIGHER_IS_BETTER = {"W1_MBps", "W2_MBps"}


# -- running ----------------------------------------------------------------------------------
@contextmanager
def scratch(base: Path | None) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="frazil-bench-", dir=base))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", default="all")
    p.add_argument("--workloads", default="W1,W2,W3,W4,W5,W6")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--chunks", type=int, default=10_000)
    p.add_argument("--w3-chunks", type=int, default=10_000)
    p.add_argument("--w4-tasks", type=int, default=8)
    p.add_argument("--w4-chunks", type=int, default=1_000)
    p.add_argument("--w6-arrays", type=int, default=2_000)
    p.add_argument("--tmp", type=Path, default=None, help="folder for the repositories")
    p.add_argument("--no-fsync", action="store_true", help="frazil-local without fsync")
    p.add_argument("--json", type=Path, default=None, help="append every result here")
    args = p.parse_args(argv)
    known = backends(fsync=not args.no_fsync)
    wanted = list(known) if args.backends == "all" else args.backends.split(",")
    chosen = [known[b] for b in wanted if known[b].available()]
    skipped = [b for b in wanted if not known[b].available()]
    workloads = {w if w != "W2" else "W1" for w in args.workloads.split(",")}
    print(
        f"load average before: {os.getloadavg()}; backends {[b.name for b in chosen]}"
        + (f" (not installed: {skipped})" if skipped else "")
    )
    rows: list[dict[str, Any]] = []
    for rnd in range(args.repeat):
        for name in sorted(workloads):
            for backend in chosen:
                with scratch(args.tmp) as root:
                    got = WORKLOADS[name](backend, root / "repo", args)
                for metric, value in got.items():
                    rows.append(
                        {"round": rnd, "backend": backend.name, "metric": metric, "value": value}
                    )
    report(rows, [b.name for b in chosen])
    print(f"load average after: {os.getloadavg()}")
    if args.json is not None:
        with open(args.json, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return rows


def report(rows: list[dict[str, Any]], names: list[str]) -> None:
    metrics = sorted({r["metric"] for r in rows})
    med = {
        (m, b): statistics.median(
            [r["value"] for r in rows if r["metric"] == m and r["backend"] == b]
        )
        for m in metrics
        for b in names
        if any(r["metric"] == m and r["backend"] == b for r in rows)
    }
    baseline = "zarr-local" if "zarr-local" in names else names[-1]
    print(f"\nmedians over rounds (ratio: better than {baseline} when > 1)")
    print("| metric | " + " | ".join(names) + " |")
    print("| --- |" + " --- |" * len(names))
    for m in metrics:
        cells = []
        for b in names:
            v = med.get((m, b))
            base = med.get((m, baseline))
            if v is None:
                cells.append("")
                continue
            ratio = (
                ""
                if not base
                else (f" ({v / base:.2f}x)" if m in HIGHER_IS_BETTER else f" ({base / v:.2f}x)")
            )
            cells.append(f"{v:.3g}{ratio}")
        print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
