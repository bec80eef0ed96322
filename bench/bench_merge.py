"""Time ``session.merge(*forks)`` + ``session.commit`` for many forks of small chunks.

Each fork writes ``--chunks`` one-element chunks of a 1-D ``int32`` array (``chunks=(1,)``,
no compression, so every chunk is stored inline) through ``fork.store.set``; the forks go
through a pickle round trip, as if they came back from workers, then the merge and the
commit are timed. Prints one JSON object; times are the median of ``--repeat`` runs.

    python bench/bench_merge.py [--forks 8] [--chunks 10000] [--repeat 3] [--memory]
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import tempfile
import time
from typing import Any

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

import frazil

ARRAY = "x"


def make_repo(where: str | None, forks: int, chunks: int) -> frazil.Repository:
    storage = (
        frazil.in_memory_storage() if where is None else frazil.local_filesystem_storage(where)
    )
    repo = frazil.Repository.create(storage)
    session = repo.writable_session("main")
    zarr.create_array(
        session.store,
        name=ARRAY,
        shape=(forks * chunks,),
        chunks=(1,),
        dtype="<i4",
        fill_value=-1,
        compressors=None,
    )
    session.commit("create array")
    return repo


async def _fill(fork: frazil.ForkSession, start: int, stop: int) -> None:
    store, buf = fork.store, default_buffer_prototype().buffer
    for i in range(start, stop):
        await store.set(f"{ARRAY}/c/{i}", buf.from_bytes(np.int32(i).tobytes()))


def build_forks(session: frazil.Session, forks: int, chunks: int) -> list[frazil.ForkSession]:
    out = []
    for f in range(forks):
        fork = session.fork()
        sync(_fill(fork, f * chunks, (f + 1) * chunks))
        out.append(pickle.loads(pickle.dumps(fork)))  # as if returned by a worker
    return out


def one_run(repo: frazil.Repository, forks: int, chunks: int) -> dict[str, float]:
    session = repo.writable_session("main")
    t0 = time.perf_counter()
    remote = build_forks(session, forks, chunks)
    t1 = time.perf_counter()
    session.merge(*remote)
    t2 = time.perf_counter()
    session.commit(f"merged {forks} forks")
    t3 = time.perf_counter()
    return {
        "build_forks_s": t1 - t0,
        "merge_s": t2 - t1,
        "commit_s": t3 - t2,
        "merge_plus_commit_s": t3 - t1,
    }


def check(repo: frazil.Repository, forks: int, chunks: int) -> None:
    arr = zarr.open_array(repo.readonly_session("main").store, path=ARRAY)
    n = forks * chunks
    for i in sorted({0, chunks - 1, chunks, n // 2, n - 1}):
        assert arr[i] == i, (i, arr[i])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--forks", type=int, default=8)
    p.add_argument("--chunks", type=int, default=10_000, help="chunk writes per fork")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--memory", action="store_true", help="in-memory storage, not local files")
    args = p.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="frazil-bench-merge-") as where:
        repo = make_repo(None if args.memory else where, args.forks, args.chunks)
        for _ in range(args.repeat):
            runs.append(one_run(repo, args.forks, args.chunks))
        check(repo, args.forks, args.chunks)
    result: dict[str, Any] = {
        "forks": args.forks,
        "chunks_per_fork": args.chunks,
        "storage": "memory" if args.memory else "local",
        "repeat": args.repeat,
        **{k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0]},
        "target_merge_plus_commit_s": 2.0,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
