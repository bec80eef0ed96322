"""The child process of tests/test_crash.py: commits, compacts or collects garbage until
it is killed with SIGKILL.

Usage: ``python crash_worker.py MODE STORAGE_JSON [SEED]``, where ``STORAGE_JSON`` is
``{"kind": "local", "path": ...}`` or ``{"kind": "s3", "bucket": ..., "prefix": ...,
"endpoint_url": ..., "access_key_id": ..., "secret_access_key": ...}``.

The worker imports everything, then waits for a line ``go [ARG]`` on stdin (so the
parent can start the next worker while it checks the repository), opens the repository
and prints ``ready``. Then, by ``MODE``:

- ``commit SEED [HISTORY_FANOUT]``: forever, one commit per iteration on a branch chosen at random
  (``main`` or ``side``), writing one chunk of each of the arrays ``small`` (inline
  chunks), ``big`` (native chunks) and, every fourth commit of a branch, eight chunks of
  ``wide``; each commit's metadata says what it wrote (``crash.n``: the branch's commit
  count, ``crash.writes``: ``[array, chunk index, value]``, the whole chunk filled with
  ``value``). ``<branch> <snapshot id>`` is printed and flushed only after ``commit()``
  returned. With ``HISTORY_FANOUT``, history indexes are written with that fanout instead
  of the engine's 8 (``use_history_fanout``), so that history segments are written and
  merged every few commits.
- ``forkmerge SEED``: forever, main's next planned commit written by two worker
  processes through copies of a fork that they do not return (so only the copies'
  journals carry the writes), then ``session.merge(fork)`` and the commit; ``main <id>``
  is printed after ``commit()`` returned. The parent kills the whole process group.
- ``compact``: ``repo.compact("main")``, then ``done <snapshot id or None>``.
- ``gc`` (``go CUTOFF_MS``): ``repo.garbage_collect(cutoff)``, then ``done <objects
  deleted>``.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import sys
from typing import Any

import zarr

import frazil

BRANCHES = ("main", "side")
SMALL_CHUNK = 4  # int8 values: 4-byte chunks, stored inline
BIG_CHUNK = 256  # float64 values: 2 KiB chunks, stored as chunk objects
CHUNKS = 16  # chunks per array (wide has 4 times as many)
WIDE_EVERY = 4


def open_storage(spec: dict[str, Any]) -> frazil.Storage:
    """The storage that ``spec`` (see the module docstring) describes."""
    if spec["kind"] == "local":
        return frazil.local_filesystem_storage(spec["path"])
    return frazil.s3_storage(
        bucket=spec["bucket"],
        prefix=spec["prefix"],
        endpoint_url=spec["endpoint_url"],
        allow_http=True,
        region="us-east-1",
        access_key_id=spec["access_key_id"],
        secret_access_key=spec["secret_access_key"],
    )


def create_arrays(group: zarr.Group) -> None:
    """The arrays the commit loop writes (the parent creates them once)."""
    group.create_array(
        "small",
        shape=(CHUNKS * SMALL_CHUNK,),
        chunks=(SMALL_CHUNK,),
        dtype="i1",
        fill_value=-1,
        compressors=None,
    )
    group.create_array(
        "big",
        shape=(CHUNKS * BIG_CHUNK,),
        chunks=(BIG_CHUNK,),
        dtype="f8",
        fill_value=-1.0,
        compressors=None,
    )
    group.create_array(
        "wide", shape=(4 * CHUNKS, 2), chunks=(1, 2), dtype="i4", fill_value=-1, compressors=None
    )


def planned_writes(n: int) -> list[list[Any]]:
    """What the branch's ``n``-th commit (counting from 1) writes: [array, chunk, value]."""
    writes: list[list[Any]] = [["small", n % CHUNKS, n % 100], ["big", (n * 7) % CHUNKS, n]]
    if n % WIDE_EVERY == 0:
        start = (n // WIDE_EVERY * 8) % (4 * CHUNKS)
        writes += [["wide", (start + k) % (4 * CHUNKS), n] for k in range(8)]
    return writes


def chunk_slice(array: str, index: int) -> slice:
    size = {"small": SMALL_CHUNK, "big": BIG_CHUNK, "wide": 1}[array]
    return slice(index * size, (index + 1) * size)


def commit_one(repo: frazil.Repository, branch: str) -> str:
    """The branch's next planned commit (numbered after its tip's ``crash.n``)."""
    tip = next(iter(repo.ancestry(branch=branch)))
    n = int(tip.metadata.get("crash.n", 0)) + 1
    session = repo.writable_session(branch)
    group = zarr.open_group(session.store, mode="r+")
    writes = planned_writes(n)
    for array, index, value in writes:
        arr = group[array]
        assert isinstance(arr, zarr.Array)
        arr[chunk_slice(array, index)] = value
    return session.commit(f"{branch} {n}", metadata={"crash.n": n, "crash.writes": writes})


def pool_write(fork: frazil.ForkSession, array: str, index: int, value: int) -> None:
    """In a pool worker: one planned write through this worker's copy of the fork."""
    arr = zarr.open_group(fork.store, mode="r+")[array]
    assert isinstance(arr, zarr.Array)
    arr[chunk_slice(array, index)] = value


def fork_merge_forever(repo: frazil.Repository, seed: int) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        while True:
            tip = next(iter(repo.ancestry(branch="main")))
            n = int(tip.metadata.get("crash.n", 0)) + 1
            session = repo.writable_session("main")
            fork = session.fork()
            writes = planned_writes(n)
            for f in [pool.submit(pool_write, fork, *w) for w in writes]:
                f.result()
            session.merge(fork)
            sid = session.commit(f"main {n}", metadata={"crash.n": n, "crash.writes": writes})
            print(f"main {sid}", flush=True)


def use_history_fanout(fanout: int) -> None:
    """Make this process's commits and compactions write history indexes with ``fanout``
    (a writer's choice, SPEC §4.5: readers follow any index)."""
    import functools

    from frazil import compaction, history, session

    small = functools.partial(history.index_for_child, fanout=fanout)
    session.index_for_child = small  # type: ignore[assignment]
    compaction.index_for_child = small  # type: ignore[assignment]


def commit_forever(repo: frazil.Repository, seed: int) -> None:
    rng = random.Random(seed)
    while True:
        branch = rng.choice(BRANCHES)
        sid = commit_one(repo, branch)
        print(f"{branch} {sid}", flush=True)  # only now is the commit acknowledged


def warm_up(mode: str) -> None:
    """Do the same work on a repository in memory, so that what is slow the first time
    (imports, codecs, thread pools) is done before the parent says go."""
    repo = frazil.Repository.create(frazil.in_memory_storage())
    session = repo.writable_session("main")
    create_arrays(zarr.group(session.store))
    session.commit("arrays")
    for _ in range(2):
        commit_one(repo, "main")
    if mode == "compact":
        repo.compact("main")
    if mode == "gc":
        repo.garbage_collect(dt.datetime.now(dt.UTC))


def main(argv: list[str]) -> None:
    mode, spec = argv[1], json.loads(argv[2])
    if mode == "commit" and len(argv) > 4:
        use_history_fanout(int(argv[4]))
    warm_up(mode)
    go = sys.stdin.readline().split()
    if go[:1] != ["go"]:  # the parent went away before saying go
        return
    repo = frazil.Repository.open(open_storage(spec))
    print("ready", flush=True)
    if mode == "commit":
        commit_forever(repo, int(argv[3]))
    elif mode == "forkmerge":
        fork_merge_forever(repo, int(argv[3]))
    elif mode == "compact":
        summary = repo.compact("main")
        print(f"done {summary.snapshot_id}", flush=True)
    elif mode == "gc":
        cutoff = dt.datetime.fromtimestamp(int(go[1]) / 1000, dt.UTC)
        gc = repo.garbage_collect(cutoff)
        print(f"done {gc.objects_deleted}", flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv)
