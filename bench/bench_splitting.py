"""Benchmark: the cost of manifest splitting at commit. One commit of ``--refs`` virtual
references in a 2-D grid, on local disk, without splitting and with a
``ManifestSplittingConfig`` cutting the grid into ``--regions`` x ``--regions`` regions;
the two variants interleaved, ``--repeat`` times each. Reported per variant: the median
commit time (seconds), the manifest objects written and their bytes::

    python bench/bench_splitting.py --refs 1000000 --regions 4 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Any

import numpy as np
import pyarrow as pa
import zarr

import frazil

PREFIX = "s3://bench-sources"


def one_commit(root: str, refs: int, regions: int | None) -> dict[str, Any]:
    side = int(np.ceil(np.sqrt(refs)))
    cfg = frazil.RepositoryConfig.default()
    cfg.set_virtual_chunk_container(
        frazil.VirtualChunkContainer(PREFIX, frazil.s3_store(region="us-east-1"))
    )
    if regions is not None:
        size = -(-side // regions)
        d = frazil.ManifestSplitDimCondition
        cfg.manifest = frazil.ManifestConfig(
            splitting=frazil.ManifestSplittingConfig.from_dict(
                {frazil.ManifestSplitCondition.AnyArray(): {d.Any(): size}}
            )
        )
    storage = frazil.local_filesystem_storage(root, fsync=False)
    repo = frazil.Repository.create(storage, cfg)
    session = repo.writable_session("main")
    zarr.create_array(
        session.store, name="t", shape=(side, side), chunks=(1, 1), dtype="<f4", fill_value=0.0
    )
    session.commit("create")
    session = repo.writable_session("main")
    flat = np.arange(side * side, dtype=np.int64)[:refs]
    session.set_virtual_refs_arrays(
        "t",
        pa.array([f"{PREFIX}/f.nc"] * 1).take(pa.array(np.zeros(len(flat), np.int64))),
        flat * 8,
        np.full(len(flat), 8, np.int64),
        indices=np.stack([flat // side, flat % side], axis=1),
    )
    mdir = os.path.join(root, "manifests")
    before = set(os.listdir(mdir)) if os.path.isdir(mdir) else set()
    t0 = time.perf_counter()
    session.commit("refs")
    elapsed = time.perf_counter() - t0
    made = set(os.listdir(mdir)) - before
    size = sum(os.path.getsize(os.path.join(mdir, m)) for m in made)
    return {"commit_s": elapsed, "objects": len(made), "bytes": size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--refs", type=int, default=1_000_000)
    ap.add_argument("--regions", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"unsplit": [], "split": []}
    for _ in range(args.repeat):
        for name, regions in (("unsplit", None), ("split", args.regions)):
            with tempfile.TemporaryDirectory() as root:
                runs[name].append(one_commit(root, args.refs, regions))
    out = {
        name: {
            "median_commit_s": round(statistics.median(r["commit_s"] for r in rs), 3),
            "objects": rs[0]["objects"],
            "manifest_bytes": rs[0]["bytes"],
        }
        for name, rs in runs.items()
    }
    print(json.dumps({"refs": args.refs, "regions": args.regions**2, **out}, indent=1))


if __name__ == "__main__":
    main()
