"""Benchmark: a cold read of one inner chunk of a large shard (zarr's ShardingCodec).

One array of a single shard (``--shard-mib`` MiB of float64, default 256) cut into inner
chunks of ``--inner-kib`` KiB (default 128), no compression (``--zstd``: zstd, which
on random values adds only its framing but puts inner chunks off block boundaries). Each
repetition opens the repository anew (empty caches, as a new reader would), opens the
array and reads one inner chunk at a random position; the time is the median over
``--repeat`` reads.

Targets, same run:

- ``frazil`` (block-checksummed rows: only the covering blocks are fetched) against
  ``frazil-whole`` (rows without block checksums, as written before them: the whole shard
  is fetched and verified), Icechunk 1.1.21 (when installed) and zarr's ``LocalStore``;
- bytes of chunk objects fetched per inner chunk (counted at frazil's storage layer),
  for ``--block-kib`` block sizes, against the inner chunk plus the shard index.

``--s3`` runs the frazil variants (and Icechunk) on the test suite's SeaweedFS server
(tests/s3server.py) as well. Run from the project root inside its virtualenv::

    python bench/bench_shard_read.py --repeat 7
    python bench/bench_shard_read.py --repeat 5 --s3 --block-kib 16,32,64,128
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs

import frazil
from frazil.format import blocks


def emit(rec: dict[str, Any]) -> None:
    print(json.dumps(rec), flush=True)


@contextmanager
def block_settings(block_size: int | None) -> Iterator[None]:
    """Writes inside record blocks of ``block_size`` bytes (None: no blocks, as before)."""
    saved = blocks.BLOCK_SIZE, blocks.BLOCKED_MIN_LENGTH
    if block_size is None:
        blocks.BLOCKED_MIN_LENGTH = 1 << 62
    else:
        blocks.BLOCK_SIZE = block_size
    try:
        yield
    finally:
        blocks.BLOCK_SIZE, blocks.BLOCKED_MIN_LENGTH = saved


def create(store: Any, args: argparse.Namespace, data: np.ndarray) -> None:
    a = zarr.create_array(
        store,
        name="a",
        shape=data.shape,
        chunks=(args.inner_kib * 128,),
        shards=(len(data),),
        dtype="f8",
        compressors=zarr.codecs.ZstdCodec(level=1) if args.zstd else None,
        fill_value=0.0,
    )
    a[:] = data


class Counted:
    """Counts the bytes of chunk objects a frazil storage hands out."""

    def __init__(self, storage: frazil.Storage) -> None:
        self.storage = storage
        self.chunk_bytes = 0
        self.requests = 0
        inner = storage.get

        async def get(key: str, byte_range: Any = None) -> bytes:
            data = await inner(key, byte_range)
            if key.startswith("chunks/"):
                self.chunk_bytes += len(data)
                self.requests += 1
            return data

        storage.get = get  # type: ignore[method-assign]


Reader = Callable[[int, int], tuple[Any, int]]


def frazil_target(make_storage: Callable[[], frazil.Storage]) -> tuple[Callable[..., None], Reader]:
    def write(args: argparse.Namespace, data: np.ndarray) -> None:
        repo = frazil.Repository.create(make_storage())
        s = repo.writable_session("main")
        create(s.store, args, data)
        s.commit("shard")

    def read(lo: int, n: int) -> tuple[Any, int]:
        counted = Counted(make_storage())
        repo = frazil.Repository.open(counted.storage)
        a = zarr.open_array(repo.readonly_session(branch="main").store, path="a", mode="r")
        return a[lo : lo + n], counted.chunk_bytes

    return write, read


def icechunk_target(make_storage: Callable[[], Any]) -> tuple[Callable[..., None], Reader]:
    import icechunk

    def write(args: argparse.Namespace, data: np.ndarray) -> None:
        repo = icechunk.Repository.create(make_storage())
        s = repo.writable_session("main")
        create(s.store, args, data)
        s.commit("shard")

    def read(lo: int, n: int) -> tuple[Any, int]:
        repo = icechunk.Repository.open(make_storage())
        a = zarr.open_array(repo.readonly_session(branch="main").store, path="a", mode="r")
        return a[lo : lo + n], -1

    return write, read


def localstore_target(root: Path) -> tuple[Callable[..., None], Reader]:
    def write(args: argparse.Namespace, data: np.ndarray) -> None:
        create(zarr.storage.LocalStore(root), args, data)

    def read(lo: int, n: int) -> tuple[Any, int]:
        a = zarr.open_array(zarr.storage.LocalStore(root, read_only=True), path="a", mode="r")
        return a[lo : lo + n], -1

    return write, read


def s3_env() -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import s3server  # type: ignore[import-not-found]  # the tests' SeaweedFS launcher

    srv = s3server.server()
    return {
        "endpoint_url": srv.endpoint_url,
        "bucket": s3server.BUCKET,
        "access_key_id": s3server.ACCESS_KEY,
        "secret_access_key": s3server.SECRET_KEY,
        "run": uuid.uuid4().hex[:8],
    }


def frazil_s3(env: dict[str, Any], name: str) -> Callable[[], frazil.Storage]:
    return lambda: frazil.s3_storage(
        bucket=env["bucket"],
        prefix=f"bench-shard-{env['run']}/{name}",
        endpoint_url=env["endpoint_url"],
        allow_http=True,
        region="us-east-1",
        access_key_id=env["access_key_id"],
        secret_access_key=env["secret_access_key"],
    )


def icechunk_s3(env: dict[str, Any], name: str) -> Callable[[], Any]:
    import icechunk

    return lambda: icechunk.s3_storage(
        bucket=env["bucket"],
        prefix=f"bench-shard-{env['run']}/{name}",
        endpoint_url=env["endpoint_url"],
        allow_http=True,
        region="us-east-1",
        access_key_id=env["access_key_id"],
        secret_access_key=env["secret_access_key"],
        force_path_style=True,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--shard-mib", type=int, default=256)
    p.add_argument("--inner-kib", type=int, default=128)
    p.add_argument("--block-kib", default="", help="extra frazil variants: block sizes, KiB")
    p.add_argument("--s3", action="store_true", help="also on the S3 test server")
    p.add_argument("--no-local", action="store_true")
    p.add_argument(
        "--zstd",
        action="store_true",
        help="compress inner chunks (zstd framing shifts them off block boundaries)",
    )
    p.add_argument("--tmp", default=None)
    args = p.parse_args(argv)
    n = args.shard_mib * 1024 * 128
    inner = args.inner_kib * 128
    data = np.random.default_rng(0).random(n)
    index_bytes = 16 * (n // inner) + 4
    root = Path(tempfile.mkdtemp(prefix="shard-", dir=args.tmp))
    variants: list[tuple[str, int | None, Callable[..., None], Reader]] = []
    sizes = [int(k) * 1024 for k in args.block_kib.split(",") if k]
    env = s3_env() if args.s3 else None
    places = ([] if args.no_local else ["local"]) + (["s3"] if env else [])
    for place in places:

        def storage(name: str, place: str = place) -> Callable[[], frazil.Storage]:
            if place == "s3":
                assert env is not None
                return frazil_s3(env, name)
            return lambda: frazil.local_filesystem_storage(str(root / name))

        variants.append((f"frazil-{place}", blocks.BLOCK_SIZE, *frazil_target(storage("f"))))
        variants.append((f"frazil-whole-{place}", None, *frazil_target(storage("fw"))))
        for size in sizes:
            if size != blocks.BLOCK_SIZE:
                name = f"frazil-{size // 1024}k-{place}"
                variants.append((name, size, *frazil_target(storage(name))))
        try:
            if place == "s3":
                assert env is not None
                ic = icechunk_target(icechunk_s3(env, "ic"))
            else:
                import icechunk

                ic = icechunk_target(lambda: icechunk.local_filesystem_storage(str(root / "ic")))
            variants.append((f"icechunk-{place}", None, *ic))
        except ImportError:
            pass
        if place == "local":
            variants.append(("localstore-local", None, *localstore_target(root / "zarr")))
    for name, block_size, write, _ in variants:
        with block_settings(block_size if name.startswith("frazil") else blocks.BLOCK_SIZE):
            t = time.perf_counter()
            write(args, data)
            emit({"write": name, "s": round(time.perf_counter() - t, 2)})
    times: dict[str, list[float]] = {name: [] for name, *_ in variants}
    fetched: dict[str, list[int]] = {name: [] for name, *_ in variants}
    rng = random.Random(1)
    for _ in range(args.repeat):
        k = rng.randrange(n // inner)
        order = list(variants)
        rng.shuffle(order)  # interleaved, in a new order each round
        for name, _, _, read in order:
            t = time.perf_counter()
            got, nbytes = read(k * inner, inner)
            times[name].append(time.perf_counter() - t)
            fetched[name].append(nbytes)
            assert np.array_equal(got, data[k * inner : (k + 1) * inner])
    ic_ms = {
        place: 1e3 * statistics.median(times[f"icechunk-{place}"])
        for place in places
        if f"icechunk-{place}" in times
    }
    for name, *_ in variants:
        ms = 1e3 * statistics.median(times[name])
        place = name.rsplit("-", 1)[1]
        rec: dict[str, Any] = {
            "variant": name,
            "cold_read_ms": round(ms, 2),
            "min_ms": round(1e3 * min(times[name]), 2),
        }
        if place in ic_ms:
            rec["vs_icechunk"] = round(ms / ic_ms[place], 2)
        if max(fetched[name]) >= 0:
            worst = max(fetched[name])
            rec["chunk_bytes_fetched_max"] = worst
            rec["limit_2x_inner_plus_index"] = 2 * inner * 8 + index_bytes
            rec["within_limit"] = worst <= 2 * inner * 8 + index_bytes
        emit(rec)


if __name__ == "__main__":
    main()
