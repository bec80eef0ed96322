"""dask benchmark: an xarray Dataset of ``--mib`` MiB in ``--chunks`` chunks, written by a
dask distributed LocalCluster of ``--workers`` worker processes, with frazil's
``to_frazil`` + commit against xarray's ``to_zarr`` into a zarr ``LocalStore``, interleaved
round after round in one run; medians and the ratio.

    python bench/bench_dask.py                        # 1 GiB, 512 chunks, 2 workers, 3 rounds
    python bench/bench_dask.py --mib 64 --chunks 32 --repeat 1

The data is random (generated on the workers, as part of both timings), stored with the
default codecs of both. The load average is printed before and after: on a busy machine,
read the ratio, not the times.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _dataset(mib: int, chunks: int) -> Any:
    import dask.array as da
    import xarray as xr

    rows = 256
    values = mib * (1 << 20) // 8  # float64
    per_chunk = values // chunks
    cols = per_chunk // rows
    data = da.random.default_rng(0).random((chunks, rows, cols), chunks=(1, rows, cols))
    return xr.Dataset({"v": (("t", "y", "x"), data)}, coords={"t": np.arange(chunks)})


def _zarr(ds: Any, root: Path) -> float:
    import zarr

    ds.to_zarr(zarr.storage.LocalStore(str(root)), zarr_format=3, consolidated=False)
    return 0.0


def _frazil(ds: Any, root: Path) -> float:
    """Writes and commits; returns the time of the commit alone."""
    import frazil
    from frazil.xarray import to_frazil

    repo = frazil.Repository.create(frazil.local_filesystem_storage(str(root)))
    session = repo.writable_session("main")
    to_frazil(ds, session)
    t0 = time.perf_counter()
    session.commit("dataset")  # syncs the file system (durability): the 1 GiB written
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mib", type=int, default=1024)
    p.add_argument("--chunks", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--tmp", type=Path, default=None, help="folder for the repositories")
    args = p.parse_args(argv)
    from dask.distributed import Client, LocalCluster

    print(f"load average before: {os.getloadavg()}")
    times: dict[str, list[float]] = {"zarr-local": [], "frazil-local": []}
    commits: list[float] = []
    runs = {"zarr-local": _zarr, "frazil-local": _frazil}
    with (
        LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True) as cluster,
        Client(cluster),
    ):
        ds = _dataset(args.mib, args.chunks)
        for _ in range(args.repeat):
            for name, run in runs.items():
                root = Path(tempfile.mkdtemp(prefix="frazil-bench-", dir=args.tmp))
                try:
                    t0 = time.perf_counter()
                    commit = run(ds, root / "data")
                    times[name].append(time.perf_counter() - t0)
                    if name == "frazil-local":
                        commits.append(commit)
                finally:
                    shutil.rmtree(root, ignore_errors=True)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"{args.mib} MiB in {args.chunks} chunks, {args.workers} worker processes:")
    for name, t in times.items():
        print(f"  {name}: median {med[name]:.2f} s of {[round(x, 2) for x in t]}")
    print(f"  frazil's commit alone: {[round(x, 2) for x in commits]} s")
    ratios = [f / z for f, z in zip(times["frazil-local"], times["zarr-local"])]
    print(f"  frazil / zarr: {med['frazil-local'] / med['zarr-local']:.2f}x (medians); per round")
    print(f"  {[round(r, 2) for r in ratios]}")
    print(f"load average after: {os.getloadavg()}")
    return med


if __name__ == "__main__":
    main()
