"""Costs at scale: one 2-D array of ``--chunks`` chunks (default 10,000,000), every chunk a
virtual reference into one of ``--files`` local source files, on local disk.

The array is built the way a virtualizing tool builds one: ``set_virtual_refs_arrays`` with
a column per field (locations as an Arrow dictionary array, no Python work per chunk) and
one commit, so the base snapshot lists a realistic ``chunks / manifest_split_rows``
manifest segments. The sources are sparse files (their chunks read as zeros), so the
benchmark needs no real data. Then it measures:

* ``commit_ms``: a 1-chunk commit (new session, write one chunk through zarr, commit),
  median and max of ``--commits``, at random chunks;
* ``cold_read_ms``: a fresh ``Repository`` object, a new read-only session, and one chunk
  read through zarr (median of 9; a virtual chunk of the first commit, and one rewritten
  since);
* ``process_peak_rss_mib``: a fresh Python process that imports frazil, opens the
  repository and reads one chunk (its ``ru_maxrss``), beside one that only imports.

::

    python bench/bench_scale.py                      # 10,000,000 chunks, a few minutes
    python bench/bench_scale.py --chunks 1000000     # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import zarr

import frazil

CHUNK = (10, 10)  # float32: 400-byte chunks
CHUNK_BYTES = 400
COLS = 1000  # chunks per row of the grid

_CHILD = """
import json, resource, sys, time
args = json.loads(sys.stdin.readline())  # waits: started before the parent grew (see child)
t0 = time.perf_counter()
import zarr, frazil
t1 = time.perf_counter()
out = {"import_s": t1 - t0}
if args["read"]:
    repo = frazil.Repository.open(
        frazil.local_filesystem_storage(args["root"]),
        authorize_virtual_chunk_access={args["prefix"]: None},
    )
    a = zarr.open_array(repo.readonly_session(branch="main").store, path="a", mode="r")
    t2 = time.perf_counter()
    out["value"] = float(a[args["row"], args["col"]])
    out["open_s"], out["read_s"] = t2 - t1, time.perf_counter() - t2
out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
with open("/proc/self/status") as f:
    hwm = [line.split()[1] for line in f if line.startswith("VmHWM:")]
out["vm_hwm_mib"] = int(hwm[0]) / 1024 if hwm else None
print(json.dumps(out))
"""


def _container(prefix: str, src: Path) -> frazil.VirtualChunkContainer:
    return frazil.VirtualChunkContainer(prefix, frazil.local_filesystem_store(str(src)))


def build(root: Path, src: Path, chunks: int, files: int) -> tuple[str, dict[str, float]]:
    """The repository: one array of ``chunks`` virtual chunks into ``files`` sparse files."""
    prefix = f"file://{src}"
    rows = -(-chunks // COLS)
    n = rows * COLS
    per_file = -(-n // files)
    src.mkdir(parents=True)
    for i in range(files):
        with open(src / f"f{i:05d}.bin", "wb") as f:
            f.truncate(per_file * CHUNK_BYTES)  # sparse: reads as zeros, takes no space
    config = frazil.RepositoryConfig.default()
    config.set_virtual_chunk_container(_container(prefix, src))
    repo = frazil.Repository.create(
        frazil.local_filesystem_storage(str(root)),
        config,
        authorize_virtual_chunk_access={prefix: None},
    )
    s = repo.writable_session("main")
    zarr.create_array(
        s.store,
        name="a",
        shape=(rows * CHUNK[0], COLS * CHUNK[1]),
        chunks=CHUNK,
        dtype="<f4",
        fill_value=-1.0,
        compressors=None,
    )
    s.commit("create")
    index = np.arange(n, dtype=np.int64)
    names = pa.array([f"{prefix}/f{i:05d}.bin" for i in range(files)])
    locations = pa.DictionaryArray.from_arrays(
        pa.array((index // per_file).astype(np.int32)), names
    )
    offsets = (index % per_file) * CHUNK_BYTES
    lengths = np.full(n, CHUNK_BYTES, np.int64)
    t0 = time.perf_counter()
    s = repo.writable_session("main")
    s.set_virtual_refs_arrays("a", locations, offsets, lengths)
    t1 = time.perf_counter()
    s.commit(f"{n} virtual refs")
    t2 = time.perf_counter()
    return prefix, {"chunks": n, "stage_s": t1 - t0, "commit_all_s": t2 - t1}


def commits(root: Path, prefix: str, count: int, rng: np.random.Generator) -> dict[str, float]:
    repo = frazil.Repository.open(
        frazil.local_filesystem_storage(str(root)), authorize_virtual_chunk_access={prefix: None}
    )
    rows = zarr.open_array(repo.readonly_session(branch="main").store, path="a").shape[0]
    times = []
    for i in range(count):
        r, c = int(rng.integers(rows // CHUNK[0])), int(rng.integers(COLS))
        start = time.perf_counter()
        s = repo.writable_session("main")
        a = zarr.open_array(s.store, path="a")
        a[r * CHUNK[0] : (r + 1) * CHUNK[0], c * CHUNK[1] : (c + 1) * CHUNK[1]] = i
        s.commit(f"commit {i}")
        times.append(time.perf_counter() - start)
    return {
        "commit_ms_p50": 1e3 * statistics.median(times),
        "commit_ms_max": 1e3 * max(times),
    }


def cold_reads(root: Path, prefix: str, rng: np.random.Generator) -> dict[str, float]:
    times = []
    for _ in range(9):
        start = time.perf_counter()
        repo = frazil.Repository.open(
            frazil.local_filesystem_storage(str(root)),
            authorize_virtual_chunk_access={prefix: None},
        )
        a = zarr.open_array(repo.readonly_session(branch="main").store, path="a", mode="r")
        a[int(rng.integers(a.shape[0])), int(rng.integers(a.shape[1]))]
        times.append(time.perf_counter() - start)
    return {"cold_read_ms": 1e3 * statistics.median(times)}


def start_child() -> subprocess.Popen[str]:
    """A fresh Python process waiting for its orders. Started before this process builds
    anything: on Linux a child's ``ru_maxrss`` starts from the RSS of the process it was
    forked from, so a child forked later would report this process's peak."""
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def finish_child(proc: subprocess.Popen[str], **orders: Any) -> dict[str, Any]:
    out, _ = proc.communicate(json.dumps(orders) + "\n")
    if proc.returncode:
        raise RuntimeError(f"reading process failed ({proc.returncode})")
    result: dict[str, Any] = json.loads(out)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=10_000_000)
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--commits", type=int, default=20)
    p.add_argument("--tmp", type=Path, default=None)
    args = p.parse_args()
    print("load average before:", os.getloadavg())
    importer, reader = start_child(), start_child()
    tmp = Path(tempfile.mkdtemp(prefix="scale-", dir=args.tmp))
    rng = np.random.default_rng(0)
    try:
        root = tmp / "repo"
        prefix, out = build(root, tmp / "src", args.chunks, args.files)
        out["snapshot_bytes"] = max(f.stat().st_size for f in (root / "snapshots").iterdir())
        out["build_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out.update(cold_reads(root, prefix, rng))
        out.update(commits(root, prefix, args.commits, rng))
        out.update({f"after_commits_{k}": v for k, v in cold_reads(root, prefix, rng).items()})
        imports = finish_child(importer, read=False)
        rows = int(out["chunks"]) // COLS * CHUNK[0]
        reads = finish_child(reader, read=True, root=str(root), prefix=prefix, row=rows // 2, col=5)
        out["process_import_only_peak_rss_mib"] = imports["peak_rss_mib"]
        out["process_open_read_peak_rss_mib"] = reads["peak_rss_mib"]
        out["process_open_read_vm_hwm_mib"] = reads["vm_hwm_mib"]
        out["process_open_ms"] = 1e3 * reads["open_s"]
        out["process_read_1_chunk_ms"] = 1e3 * reads["read_s"]
    finally:
        for proc in (importer, reader):
            if proc.poll() is None:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    print("| measure | value |\n| --- | --- |")
    for k, v in out.items():
        print(f"| {k} | {v:.4g} |")
    print("load average after:", os.getloadavg())


if __name__ == "__main__":
    main()
