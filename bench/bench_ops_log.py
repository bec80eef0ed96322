"""What the operations log costs a commit (a measurement, not a test).

One process commits a one-chunk change to ``main`` of a repository, ``--commits`` times
per round, in rounds that alternate between the operations log on and off
(``frazil.refs.RECORD_OPS``), each round on a fresh repository; so both variants see the
same machine load. The log rides on the ref's compare-and-swap (no extra request), and
every ``oplog.LIMIT - oplog.KEEP`` commits a ref writes one archive object while the
commit writes its own objects. Storage: ``local`` (fsyncs) or ``memory``, with
``--latency-ms`` added to every request. Prints one JSON line: per variant the median
commit time over all rounds (ms), p90, and the storage requests per commit.

    python bench/bench_ops_log.py --commits 300 --rounds 4 --storage local
    python bench/bench_ops_log.py --commits 300 --rounds 4 --storage memory --latency-ms 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Any

import zarr

import frazil
from frazil import refs
from frazil.storage.base import ByteRange, PutResult


class Counting(frazil.FaultInjectingStorage):
    """Counts requests (and adds the latency of ``FaultInjectingStorage``)."""

    requests = 0

    async def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        Counting.requests += 1
        return await super().get(key, byte_range)

    async def get_with_version(self, key: str) -> tuple[bytes, str]:
        Counting.requests += 1
        return await super().get_with_version(key)

    async def put(self, key: str, data: bytes) -> None:
        Counting.requests += 1
        await super().put(key, data)

    async def put_if_version(self, key: str, data: bytes, version: str) -> PutResult:
        Counting.requests += 1
        return await super().put_if_version(key, data, version)


def one_round(n: int, storage: str, latency: float, root: str) -> tuple[list[float], float]:
    inner = (
        frazil.local_filesystem_storage(root) if storage == "local" else frazil.in_memory_storage()
    )
    repo = frazil.Repository.create(Counting(inner, latency=latency))
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(n,), chunks=(1,), dtype="i4", fill_value=0)
    s.commit("array")
    times = []
    Counting.requests = 0
    for i in range(n):
        s = repo.writable_session("main")
        zarr.open_array(s.store, path="a")[i] = i + 1
        start = time.perf_counter()
        s.commit(f"{i}")
        times.append(time.perf_counter() - start)
    return times, Counting.requests / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--commits", type=int, default=300)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--storage", choices=["local", "memory"], default="local")
    p.add_argument("--latency-ms", type=float, default=0.0)
    args = p.parse_args()
    out: dict[str, Any] = {"load": os.getloadavg(), "args": vars(args)}
    samples: dict[str, list[float]] = {"log": [], "no_log": []}
    requests: dict[str, list[float]] = {"log": [], "no_log": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(2 * args.rounds):
            variant = "log" if r % 2 == 0 else "no_log"
            refs.RECORD_OPS = variant == "log"
            times, per_commit = one_round(
                args.commits, args.storage, args.latency_ms / 1000, os.path.join(tmp, str(r))
            )
            samples[variant] += times
            requests[variant].append(per_commit)
    refs.RECORD_OPS = True
    for variant, times in samples.items():
        times.sort()
        out[variant] = {
            "median_ms": round(1000 * statistics.median(times), 3),
            "p90_ms": round(1000 * times[int(0.9 * len(times))], 3),
            "requests_per_commit": round(statistics.mean(requests[variant]), 3),
        }
    out["load_after"] = os.getloadavg()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
