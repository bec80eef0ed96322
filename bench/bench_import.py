"""``import_icechunk`` on a long history: one array of 1,000 chunks committed in Icechunk
(icechunk must be installed), then one chunk rewritten per commit, imported into a new
frazil repository. Reported: the wall time of the first commit (every chunk) and the median
and slowest of the later ones (each copies what its diff names: one chunk), the medians
of the first and last 100 of those (flat: a commit's cost does not grow with history), the whole
import, a rerun that finds everything imported, and the chunks copied against what copying
every snapshot whole would copy::

    python bench/bench_import.py --commits 200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr

os.environ.setdefault("ICECHUNK_LOG", "error")
CHUNKS = 1_000
CHUNK = 256  # float64: 2 KiB a chunk, above both inline thresholds


def build(path: Path, commits: int) -> None:
    import icechunk as ic

    repo = ic.Repository.create(ic.local_filesystem_storage(str(path)))
    s = repo.writable_session("main")
    a = zarr.create_array(
        s.store, name="a", shape=(CHUNKS * CHUNK,), chunks=(CHUNK,), dtype="f8", compressors=None
    )
    a[:] = np.arange(CHUNKS * CHUNK, dtype="f8")
    s.commit("init")
    rng = np.random.default_rng(0)
    for i in range(commits):
        s = repo.writable_session("main")
        c = int(rng.integers(CHUNKS))
        zarr.open_array(s.store, path="a")[c * CHUNK : (c + 1) * CHUNK] = float(i)
        s.commit(f"chunk {c}")


def run(commits: int) -> dict[str, Any]:
    from frazil.tools.icechunk_import import import_icechunk

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        build(root / "ic", commits)
        built = time.perf_counter() - t0
        stamps: list[float] = []
        t0 = time.perf_counter()
        s = import_icechunk(
            str(root / "ic"),
            str(root / "fz"),
            progress=lambda stage, done, total: (
                stamps.append(time.perf_counter()) if stage == "commits" else None
            ),
        )
        whole = time.perf_counter() - t0
        steps = [b - a for a, b in zip(stamps, stamps[1:])]  # stamps[0]: before the first
        t0 = time.perf_counter()
        again = import_icechunk(str(root / "ic"), str(root / "fz"))
        rerun = time.perf_counter() - t0
        assert again.commits_imported == 0
    return {
        "commits": s.commits_imported,
        "icechunk_build_s": round(built, 2),
        "import_s": round(whole, 2),
        "first_commit_s": round(steps[0], 3),
        "later_commit_median_s": round(statistics.median(steps[1:]), 4),
        "later_commit_max_s": round(max(steps[1:]), 4),
        "median_of_first_100_later_s": round(statistics.median(steps[1:101]), 4),
        "median_of_last_100_s": round(statistics.median(steps[-100:]), 4),
        "rerun_s": round(rerun, 2),
        "chunks_copied": s.chunks_copied,
        "chunks_if_copied_whole": CHUNKS * s.commits_imported,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--commits", type=int, default=200)
    args = p.parse_args()
    print(f"load: {os.getloadavg()}", file=sys.stderr)
    print(json.dumps(run(args.commits), indent=2))
    print(f"load: {os.getloadavg()}", file=sys.stderr)


if __name__ == "__main__":
    main()
