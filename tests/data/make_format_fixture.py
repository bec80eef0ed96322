"""Writes the format-stability fixture: a small repository plus the JSON of what it holds.

Run once per format version, from the repository root, and commit the output:

    python tests/data/make_format_fixture.py --out tests/data/format-v1

It writes ``OUT/repo`` (a local-storage repository: branches ``main`` and ``dev``, tag
``v1``, a deleted tag ``scratch``, groups, arrays with native and inline chunks, a virtual
chunk, a resize, a deletion, six commits), ``OUT/virtual.bin`` (the bytes the virtual
chunk names) and ``OUT/expected.json`` (every ref, every snapshot's id, parent, message,
metadata, written_at and full content, and each chunk's type). tests/test_format_stability.py
reads that fixture with every later version; it never regenerates it. The script refuses
an existing ``OUT`` (the fixture of a released format must never change).

Virtual chunk locations must be absolute ``file:///`` URLs, and a committed file cannot
hold this machine's paths, so the virtual chunk names the fixed location
``file:///frazil-format-v1/virtual.bin``; the test checks its reference (location, offset,
length) and reads those bytes from ``OUT/virtual.bin`` itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

import frazil
from frazil import runtime

VIRTUAL_PREFIX = "file:///frazil-format-v1/"
VIRTUAL_LOCATION = VIRTUAL_PREFIX + "virtual.bin"
VIRTUAL_VALUES = [11, 22, 33, 44]  # uint8 chunk 0 of "raw", at VIRTUAL_OFFSET of the file
VIRTUAL_OFFSET = 5
CONFIG_THRESHOLD = 16


def virtual_file() -> bytes:
    """The virtual chunk source: a 5-byte preamble, the chunk, a 3-byte trailer."""
    return b"FRZL\x00" + bytes(VIRTUAL_VALUES) + b"END"


def describe_tree(session: frazil.Session) -> dict[str, Any]:
    """Every node of a session: type, attributes; for arrays shape, chunks, dtype, fill
    value, values (virtual chunks read as the fill value: only their refs are checked),
    and the type of every chunk of the grid."""
    store = session.store
    root = zarr.open_group(store, mode="r")
    out: dict[str, Any] = {"": {"type": "group", "attrs": dict(root.attrs)}}
    for path, node in sorted(root.members(max_depth=None)):
        if not isinstance(node, zarr.Array):
            out[path] = {"type": "group", "attrs": dict(node.attrs)}
            continue
        grid = [-(-s // c) for s, c in zip(node.shape, node.chunks)]
        types: dict[str, str] = {}
        for coord in np.ndindex(*grid):
            types[",".join(map(str, coord))] = session.chunk_type(path, coord).name.lower()
        values = np.asarray(read_array(node, types))
        out[path] = {
            "type": "array",
            "attrs": dict(node.attrs),
            "shape": list(node.shape),
            "chunks": list(node.chunks),
            "dtype": str(node.dtype),
            "fill_value": json_number(node.fill_value.item()),
            "values": values.tolist(),
            "chunk_types": types,
        }
    return out


def json_number(value: Any) -> Any:
    """A fill value as strict JSON: NaN as the string "NaN" (zarr's own spelling)."""
    return "NaN" if isinstance(value, float) and np.isnan(value) else value


def read_array(node: zarr.Array, types: dict[str, str]) -> np.ndarray:
    """The array's values, reading only non-virtual chunks (virtual ones: fill value)."""
    values = np.full(node.shape, node.fill_value, dtype=node.dtype)
    for key, kind in types.items():
        if kind == "virtual":
            continue
        coord = [int(c) for c in key.split(",")] if key else []
        sel = tuple(
            slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(coord, node.chunks, node.shape)
        )
        values[sel] = node[sel]
    return values


def build(out: Path) -> dict[str, Any]:
    (out / "virtual.bin").write_bytes(virtual_file())
    config = frazil.RepositoryConfig(inline_chunk_threshold_bytes=CONFIG_THRESHOLD)
    config.set_virtual_chunk_container(
        frazil.VirtualChunkContainer(
            VIRTUAL_PREFIX, frazil.local_filesystem_store("/frazil-format-v1")
        )
    )
    repo = frazil.Repository.create(frazil.local_filesystem_storage(str(out / "repo")), config)

    # 1. main: groups, a zstd-compressed float array (native chunks), an inline int8 array
    s = repo.writable_session("main")
    root = zarr.open_group(s.store, mode="w", attributes={"title": "format fixture", "v": 1})
    climate = root.create_group("climate", attributes={"units": "K"})
    temp = climate.create_array(
        "temp",
        shape=(4, 6),
        chunks=(2, 3),
        dtype="float32",
        fill_value=float("nan"),
        attributes={"long_name": "t"},
    )
    temp[:] = np.arange(24, dtype="float32").reshape(4, 6) / 4
    flags = root.create_array(
        "flags", shape=(8,), chunks=(4,), dtype="int8", fill_value=-1, compressors=None
    )
    flags[:5] = [1, 2, 3, 4, 5]
    c1 = s.commit("create climate and flags", metadata={"author": "fixture", "step": 1})

    # 2. main: a group with an int32 array, a virtual chunk next to an inline one
    s = repo.writable_session("main")
    root = zarr.open_group(s.store, mode="r+")
    obs = root.create_group("obs")
    obs.create_array(
        "count", shape=(3, 3), chunks=(3, 3), dtype="int32", fill_value=0, compressors=None
    )[:] = np.arange(9, dtype="int32").reshape(3, 3) * 100
    raw = root.create_array(
        "raw", shape=(8,), chunks=(4,), dtype="uint8", fill_value=0, compressors=None
    )
    raw[4:] = [5, 6, 7, 8]
    s.store.set_virtual_ref(
        "raw/c/0",
        VIRTUAL_LOCATION,
        offset=VIRTUAL_OFFSET,
        length=len(VIRTUAL_VALUES),
        validate_container=True,
    )
    c2 = s.commit("add obs and raw (virtual chunk 0)", metadata={"step": 2})
    repo.create_tag("v1", c2)
    repo.create_tag("scratch", c1)
    repo.delete_tag("scratch")

    # 3. dev: delete the obs group, overwrite one temp chunk
    repo.create_branch("dev", c2)
    s = repo.writable_session("dev")
    root = zarr.open_group(s.store, mode="r+")
    del root["obs"]
    zarr.open_array(s.store, path="climate/temp", mode="r+")[0:2, 0:3] = -1.5
    c3 = s.commit("dev: drop obs, mark a corner", metadata={"step": 3, "branch": "dev"})

    # 4. main: resize flags, change attributes
    s = repo.writable_session("main")
    flags_arr = zarr.open_array(s.store, path="flags", mode="r+")
    flags_arr.resize((12,))
    flags_arr[8:] = 9
    zarr.open_group(s.store, mode="r+").attrs["v"] = 2
    c4 = s.commit("grow flags", metadata={"step": 4})

    # 5. dev: a new nested array; 6. main: shrink temp, delete one chunk of count
    s = repo.writable_session("dev")
    root = zarr.open_group(s.store, mode="r+")
    root.create_group("deep").create_group("er").create_array(
        "x", shape=(2,), chunks=(1,), dtype="float64", fill_value=0.0
    )[:] = [0.25, -0.5]
    c5 = s.commit("dev: nested array", metadata={"step": 5})
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="climate/temp", mode="r+").resize((2, 6))
    sync(s.store.delete("obs/count/c/0/0"))
    c6 = s.commit("shrink temp, clear count", metadata={"step": 6})

    assert repo.fsck().ok
    snapshots = {}
    for branch in ("main", "dev"):
        for info in repo.ancestry(branch=branch):
            if info.id in snapshots:
                continue
            snap = repo.readonly_session(snapshot_id=info.id)
            snapshots[info.id] = {
                "parent_id": info.parent_id,
                "message": info.message,
                "metadata": info.metadata,
                "written_at": info.written_at.isoformat(),
                "tree": describe_tree(snap) if info.parent_id is not None else {},
            }
    ref = runtime.run(repo.readonly_session(snapshot_id=c2).chunk_ref("raw", (0,)))
    assert ref is not None
    return {
        "format_version": 1,
        "written_by": "frazil " + _version(),
        "inline_chunk_threshold_bytes": CONFIG_THRESHOLD,
        "branches": {"main": c6, "dev": c5},
        "tags": {"v1": c2},
        "deleted_tags": ["scratch"],
        "commits": [c1, c2, c3, c4, c5, c6],
        "ancestry": {b: [i.id for i in repo.ancestry(branch=b)] for b in ("main", "dev")},
        "snapshots": snapshots,
        "virtual": {
            "snapshot": c2,
            "path": "raw",
            "coord": [0],
            "location": ref.location,
            "offset": ref.offset,
            "length": ref.length,
            "values": VIRTUAL_VALUES,
            "file": "virtual.bin",
        },
        "virtual_prefix": VIRTUAL_PREFIX,
    }


def _version() -> str:
    from importlib.metadata import version

    return version("frazil")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="fixture folder to create")
    args = parser.parse_args(argv)
    out: Path = args.out
    if out.exists():
        print(f"{out} exists; a committed fixture must never change", file=sys.stderr)
        return 1
    out.mkdir(parents=True)
    expected = build(out)
    for lock in (out / "repo").rglob(".*.lock"):  # the local backend's lock files: not data
        lock.unlink()
    (out / "expected.json").write_text(
        json.dumps(expected, indent=1, sort_keys=True, allow_nan=False) + "\n"
    )
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out}: {sum(1 for p in out.rglob('*') if p.is_file())} files, {total} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
