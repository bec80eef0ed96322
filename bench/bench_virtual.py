"""Time staging N virtual refs through the columnar path and committing them; report the
peak memory, and the manifest bytes per ref.

A 2-D array whose chunk grid holds ``--refs`` chunks (``--rows`` grid rows) gets one
virtual ref per chunk, staged as a tool converting a big archive would: one
``session.set_virtual_refs_arrays`` call per ``--batch`` refs (whole grid rows, with
``indices=``), pointing into ``--files`` source files (an Arrow dictionary array of
locations, with offsets and lengths); then the session commits, and a few refs are read
back from a new session to check them (``--concurrent``: another session commits one of
those chunks first, so the commit rebases over it and keeps ours). Nothing is read from
the sources. Prints one JSON
object: the time to stage, to commit, and both; the process's peak RSS (getrusage) after
staging and after the commit; the manifest bytes on disk per ref. Run each size in a
fresh process (the peak is the process's).

    python bench/bench_virtual.py [--refs 10000000] [--batch 1000000] [--files 300]
        [--spill-rows N] [--concurrent] [--icechunk] [--root DIR]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import tempfile
import time
from typing import Any

import numpy as np
import pyarrow as pa
import zarr

import frazil
from frazil import changeset, runtime

PREFIX = "s3://bench-sources"


def _rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _grid_repo(lib: Any, root: str, refs: int, rows: int, prefix: str) -> tuple[Any, int, int]:
    """A new repository (frazil or Icechunk: ``lib``) with an S3 container at ``prefix`` and a
    committed array of ``rows`` x ceil(refs / rows) chunks; (repo, cols, chunks)."""
    cfg = lib.RepositoryConfig.default()
    cfg.set_virtual_chunk_container(
        lib.VirtualChunkContainer(prefix, lib.s3_store(region="us-east-1"))
    )
    repo = lib.Repository.create(lib.local_filesystem_storage(root), cfg)
    session = repo.writable_session("main")
    cols = -(-refs // rows)
    zarr.create_array(
        session.store,
        name="temperature",
        shape=(rows * 10, cols * 10),
        chunks=(10, 10),
        dtype="<f4",
        fill_value=0.0,
        compressors=None,
    )
    session.commit("create the array")
    return repo, cols, rows * cols


def run(
    root: str, refs: int, files: int, batch: int, rows: int, concurrent: bool = False
) -> dict[str, Any]:
    repo, cols, total = _grid_repo(frazil, root, refs, rows, PREFIX)
    names = pa.array([f"{PREFIX}/run/file_{i:05d}.nc" for i in range(files)], pa.string())
    per_file = -(-total // files)
    rows_per_call = max(1, batch // cols)
    rss_before = _rss_mib()

    session = repo.writable_session("main")
    t0 = time.perf_counter()
    staged = 0
    for r0 in range(0, rows, rows_per_call):
        r1 = min(rows, r0 + rows_per_call)
        flat = np.arange(r0 * cols, r1 * cols, dtype=np.int64)  # C-order chunk numbers
        indices = np.stack([flat // cols, flat % cols], axis=1)
        locations = pa.DictionaryArray.from_arrays(
            pa.array((flat // per_file).astype(np.int32)), names
        )
        offsets = 4096 + (flat % per_file) * 400
        lengths = np.full(len(flat), 400, np.int64)
        staged += session.set_virtual_refs_arrays(
            "temperature", locations, offsets, lengths, indices=indices
        )
        del flat, indices, locations, offsets, lengths
    t1 = time.perf_counter()
    rss_staged = _rss_mib()
    solver = None
    if concurrent:  # another writer lands one chunk first: the commit rebases over it
        other = repo.writable_session("main")
        other.set_virtual_ref("temperature", (0, 0), f"{PREFIX}/other.nc", offset=0, length=400)
        other.commit("a concurrent commit")
        solver = frazil.BasicConflictSolver()  # ours wins the one chunk both wrote
        t1 = time.perf_counter()
    session.commit(f"{staged} virtual refs", rebase_with=solver)
    t2 = time.perf_counter()
    rss_committed = _rss_mib()
    mdir = os.path.join(root, "manifests")
    manifest_bytes = sum(os.path.getsize(os.path.join(mdir, f)) for f in os.listdir(mdir))
    check = repo.readonly_session("main")
    rng = np.random.default_rng(0)
    for n in [0, total - 1, *rng.integers(0, total, 8).tolist()]:
        r, c = divmod(int(n), cols)
        assert check.chunk_type("temperature", (r, c)) == frazil.ChunkType.VIRTUAL, (r, c)
        got = runtime.run(check.chunk_ref("temperature", (r, c)))
        assert got is not None and got.offset == 4096 + (n % per_file) * 400, (r, c, got)
        assert got.location == f"{PREFIX}/run/file_{n // per_file:05d}.nc", (r, c, got)
    return {
        "refs": staged,
        "batch": rows_per_call * cols,
        "files": files,
        "stage_s": round(t1 - t0, 3),
        "commit_s": round(t2 - t1, 3),
        "total_s": round(t2 - t0, 3),
        "manifest_bytes": manifest_bytes,
        "manifest_bytes_per_ref": round(manifest_bytes / staged, 2),
        "rebased": concurrent,
        "spill_rows": changeset.SPILL_ROWS,
        "rss_before_mib": rss_before,
        "peak_rss_staged_mib": rss_staged,
        "peak_rss_mib": rss_committed,
    }


def run_icechunk(root: str, refs: int, files: int, batch: int, rows: int) -> dict[str, Any]:
    """The same refs staged through Icechunk's ``store.set_virtual_refs`` (one
    ``VirtualChunkSpec`` per chunk, in the same batches) and committed."""
    ic: Any = importlib.import_module("icechunk")  # a benchmark dependency only

    repo, cols, total = _grid_repo(ic, root, refs, rows, PREFIX + "/")
    names = [f"{PREFIX}/run/file_{i:05d}.nc" for i in range(files)]
    per_file = -(-total // files)
    rows_per_call = max(1, batch // cols)
    session = repo.writable_session("main")
    t0 = time.perf_counter()
    staged = 0
    for r0 in range(0, rows, rows_per_call):
        flat = range(r0 * cols, min(rows, r0 + rows_per_call) * cols)
        specs = [
            ic.VirtualChunkSpec(
                [n // cols, n % cols], names[n // per_file], 4096 + (n % per_file) * 400, 400
            )
            for n in flat
        ]
        session.store.set_virtual_refs("temperature", specs)
        staged += len(specs)
        del specs
    t1 = time.perf_counter()
    rss_staged = _rss_mib()
    session.commit(f"{staged} virtual refs")
    t2 = time.perf_counter()
    return {
        "engine": f"icechunk {ic.__version__}",
        "refs": staged,
        "batch": rows_per_call * cols,
        "stage_s": round(t1 - t0, 3),
        "commit_s": round(t2 - t1, 3),
        "total_s": round(t2 - t0, 3),
        "peak_rss_staged_mib": rss_staged,
        "peak_rss_mib": _rss_mib(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--refs", type=int, default=10_000_000)
    ap.add_argument("--batch", type=int, default=1_000_000, help="refs per staging call")
    ap.add_argument("--rows", type=int, default=1000, help="rows of the chunk grid")
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--root", default=None, help="an empty folder for the repository")
    ap.add_argument(
        "--icechunk",
        action="store_true",
        help="stage the same refs through Icechunk instead (pip install icechunk)",
    )
    ap.add_argument(
        "--spill-rows",
        type=int,
        default=None,
        help="frazil.changeset.SPILL_ROWS for this run (a huge value: never spill)",
    )
    ap.add_argument(
        "--concurrent",
        action="store_true",
        help="land a one-chunk commit first, so the commit rebases (and conflicts on it)",
    )
    args = ap.parse_args()
    if args.spill_rows is not None:
        changeset.SPILL_ROWS = args.spill_rows
    if args.icechunk:
        with tempfile.TemporaryDirectory() as tmp:
            where = args.root or os.path.join(tmp, "repo")
            print(json.dumps(run_icechunk(where, args.refs, args.files, args.batch, args.rows)))
        return
    opts = (args.refs, args.files, args.batch, args.rows, args.concurrent)
    if args.root:
        print(json.dumps(run(args.root, *opts)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(os.path.join(tmp, "repo"), *opts)))


if __name__ == "__main__":
    main()
