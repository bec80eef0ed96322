"""What ``Session.move`` costs as the moved array grows (a measurement, not a test).

For each size, a fresh in-memory repository gets one array of that many chunks (virtual
references, staged columnar and committed), then a session moves the array's group and
commits. Printed per size: the time of ``move`` + ``commit`` (median of ``--repeat``
moves back and forth) and the manifest requests the move commit made (expected: 0,
whatever the size, since chunk references are keyed by node id).

    python bench/bench_move.py --sizes 1000 100000 1000000 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import zarr

import frazil
from frazil.storage.base import ByteRange

PREFIX = "s3://bench-move-never-read/"


class Counting(frazil.FaultInjectingStorage):
    """Counts manifest reads and writes."""

    manifests = 0

    async def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        Counting.manifests += key.startswith("manifests/")
        return await super().get(key, byte_range)

    async def put(self, key: str, data: bytes) -> None:
        Counting.manifests += key.startswith("manifests/")
        await super().put(key, data)


def one_size(n: int, repeat: int) -> dict[str, float]:
    config = frazil.RepositoryConfig.default()
    config.set_virtual_chunk_container(
        frazil.VirtualChunkContainer(PREFIX, frazil.s3_store(region="us-east-1"))
    )
    repo = frazil.Repository.create(Counting(frazil.in_memory_storage()), config)
    s = repo.writable_session("main")
    root = zarr.group(store=s.store)
    root.create_group("from").create_array("a", shape=(n,), chunks=(1,), dtype="u1")
    s.set_virtual_refs_arrays(
        "/from/a", PREFIX + "data.bin", np.arange(n, dtype=np.int64), np.ones(n, np.int64)
    )
    s.commit("array")
    times, requests = [], []
    names = ["/from", "/to"]
    for i in range(repeat):
        s = repo.writable_session("main")
        Counting.manifests = 0
        start = time.perf_counter()
        s.move(names[i % 2], names[(i + 1) % 2])
        s.commit("move")
        times.append(time.perf_counter() - start)
        requests.append(Counting.manifests)
    return {
        "chunks": n,
        "move_commit_ms": round(1000 * statistics.median(times), 2),
        "manifest_requests": max(requests),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000, 1_000_000])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    rows = [one_size(n, args.repeat) for n in args.sizes]
    print(json.dumps({"load": os.getloadavg(), "rows": rows}))


if __name__ == "__main__":
    main()
