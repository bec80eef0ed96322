"""Time setting N virtual refs through the columnar path and committing them; report the
manifest bytes per ref.

A 2-D array whose chunk grid holds ``--refs`` chunks gets one virtual ref per chunk
(``session.set_virtual_refs_arrays``), pointing into ``--files`` source files (a numpy
array of location strings shaped like the grid, with offsets and lengths), then the
session commits. Nothing is read from the sources. Prints one JSON object: the time to
stage, to commit, and both; the manifest bytes on disk per ref; and the process's peak
RSS (for a figure free of earlier runs, run it in a fresh process under
``/usr/bin/time -v``).

    python bench/bench_virtual.py [--refs 1000000] [--files 300] [--root DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from typing import Any

import numpy as np
import zarr

import frazil

PREFIX = "s3://bench-sources"


def run(root: str, refs: int, files: int) -> dict[str, Any]:
    cfg = frazil.RepositoryConfig.default()
    cfg.set_virtual_chunk_container(
        frazil.VirtualChunkContainer(PREFIX, frazil.s3_store(region="us-east-1"))
    )
    repo = frazil.Repository.create(frazil.local_filesystem_storage(root), cfg)
    session = repo.writable_session("main")
    rows = 1000
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

    # inputs as a virtualizing tool would have them: per chunk, its file, offset, length
    per_file = -(-rows * cols // files)
    file_of = np.arange(rows * cols) // per_file
    names = np.array([f"{PREFIX}/run/file_{i:05d}.nc" for i in range(files)])
    locations = names[file_of].reshape(rows, cols)
    lengths = np.full((rows, cols), 400, np.int64)
    offsets = (4096 + (np.arange(rows * cols) % per_file) * 400).reshape(rows, cols)

    session = repo.writable_session("main")
    t0 = time.perf_counter()
    staged = session.set_virtual_refs_arrays("temperature", locations, offsets, lengths)
    t1 = time.perf_counter()
    session.commit("one million virtual refs")
    t2 = time.perf_counter()
    mdir = os.path.join(root, "manifests")
    manifest_bytes = sum(os.path.getsize(os.path.join(mdir, f)) for f in os.listdir(mdir))
    check = repo.readonly_session("main")
    assert check.chunk_type("temperature", (rows - 1, cols - 1)) == frazil.ChunkType.VIRTUAL
    return {
        "refs": staged,
        "files": files,
        "stage_s": round(t1 - t0, 3),
        "commit_s": round(t2 - t1, 3),
        "total_s": round(t2 - t0, 3),
        "manifest_bytes": manifest_bytes,
        "manifest_bytes_per_ref": round(manifest_bytes / staged, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--refs", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--root", default=None, help="an empty folder for the repository")
    args = ap.parse_args()
    if args.root:
        print(json.dumps(run(args.root, args.refs, args.files)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(os.path.join(tmp, "repo"), args.refs, args.files)))


if __name__ == "__main__":
    main()
