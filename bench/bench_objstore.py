"""Benchmark: frazil's S3 backend against obstore itself and Icechunk, Azure beside them.

Same-run medians (variants interleaved in every repeat) of N PUTs then N GETs of 32 KiB
objects with 64 requests in flight, wall time and process CPU time (every thread's):

- ``frazil-s3``: frazil's ``S3Storage`` (on obstore) on the S3 test server (SeaweedFS);
- ``obstore-s3``: obstore's ``S3Store`` (Rust object_store) on the same server;
- ``frazil-azure``: frazil's ``AzureStorage`` (on obstore) on Azurite;

and through a repository, frazil on S3 beside Icechunk on S3 (if installed)
and frazil on Azure: W1 (write N chunks of 32 KiB
and commit, MB/s), a cold open (new storage object, ``Repository.open``, a session) with a
one-chunk read (ms), and W2 (cold open and read everything back, MB/s).

It also checks the semantics frazil needs from obstore on S3, with typed errors:
conditional create twice (the second an ``AlreadyExistsError``), compare-and-swap on the
current ETag (succeeds) and on a stale one (``PreconditionError``), and on a missing key.

Run from the project root inside its virtualenv (``make test`` installs both servers)::

    python bench/bench_objstore.py --repeat 3
    python bench/bench_objstore.py --n 200 --repeat 1 --no-azure   # quick

It starts the test suite's SeaweedFS (tests/s3server.py) and Azurite (tests/azureserver.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

SIZE = 32 * 1024
IN_FLIGHT = 64

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _s3() -> Any:
    import s3server  # type: ignore[import-not-found]  # the tests' SeaweedFS launcher

    return s3server


def _azure() -> Any:
    import azureserver  # type: ignore[import-not-found]  # the tests' Azurite launcher

    return azureserver


def obstore_s3(prefix: str) -> Any:
    from obstore.store import S3Store

    s3 = _s3()
    return S3Store(
        s3.BUCKET,
        prefix=prefix,
        config={
            "endpoint": s3.server().endpoint_url,
            "access_key_id": s3.ACCESS_KEY,
            "secret_access_key": s3.SECRET_KEY,
            "region": "us-east-1",
            "virtual_hosted_style_request": False,
        },
        client_options={"allow_http": True},
    )


def icechunk_s3(prefix: str) -> Any:
    import icechunk

    s3 = _s3()
    return icechunk.s3_storage(
        bucket=s3.BUCKET,
        prefix=prefix,
        endpoint_url=s3.server().endpoint_url,
        allow_http=True,
        region="us-east-1",
        access_key_id=s3.ACCESS_KEY,
        secret_access_key=s3.SECRET_KEY,
        force_path_style=True,
    )


async def limited(n: int, op: Callable[[int], Awaitable[Any]]) -> None:
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int) -> None:
        async with gate:
            await op(i)

    await asyncio.gather(*(one(i) for i in range(n)))


class Workload:
    """PUT then GET ``n`` objects through ``put(key, data)`` / ``get(key) -> bytes``."""

    def __init__(self, name: str, put: Any, get: Any) -> None:
        self.name, self.put, self.get = name, put, get

    def run(self, n: int) -> dict[str, float]:
        data = os.urandom(SIZE)
        keys = [f"o/{uuid.uuid4().hex}" for _ in range(n)]
        out: dict[str, float] = {}

        async def puts() -> None:
            await limited(n, lambda i: self.put(keys[i], data))

        async def gets() -> None:
            async def one(i: int) -> None:
                got = await self.get(keys[i])
                if len(got) != SIZE:
                    raise RuntimeError(f"{self.name}: read {len(got)} bytes, wrote {SIZE}")

            await limited(n, one)

        for phase, fn in (("put", puts), ("get", gets)):
            t0, c0 = time.perf_counter(), time.process_time()
            asyncio.run(fn())
            out[f"{phase}_s"] = time.perf_counter() - t0
            out[f"{phase}_cpu_s"] = time.process_time() - c0
        return out


def workloads(azure: bool) -> list[Workload]:
    run = uuid.uuid4().hex[:8]
    import obstore

    frazil_s3 = _s3().storage(f"bench-{run}/frazil")
    ob = obstore_s3(f"bench-{run}/obstore")

    async def ob_get(key: str) -> bytes:
        result = await obstore.get_async(ob, key)
        return bytes(await result.bytes_async())

    out = [
        Workload("frazil-s3", frazil_s3.put, frazil_s3.get),
        Workload("obstore-s3", lambda k, d: obstore.put_async(ob, k, d), ob_get),
    ]
    if azure:
        az = _azure().storage(f"bench-{run}/azure")
        out.append(Workload("frazil-azure", az.put, az.get))
    return out


def repository_workload(
    name: str, make: Callable[[str], Any], n: int, lib: Any = None
) -> dict[str, float]:
    """Through a repository: W1 write ``n`` chunks of 32 KiB and commit; cold open (a new
    storage object, ``Repository.open``, a session) and read one chunk; W2 cold open and
    read everything back."""
    import numpy as np
    import zarr

    import frazil

    lib = lib or frazil  # frazil, or icechunk (the same API)
    prefix = f"bench-repo-{uuid.uuid4().hex[:8]}"
    repo = lib.Repository.create(make(prefix))
    values = np.random.default_rng(0).random(n * 4096)  # 4,096 float64 = 32 KiB a chunk
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    s = repo.writable_session("main")
    arr = zarr.create_array(s.store, name="x", shape=values.shape, chunks=(4096,), dtype="f8")
    arr[:] = values
    s.commit("w1")
    out["w1_MBps"] = values.nbytes / 1e6 / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    cold = lib.Repository.open(make(prefix)).readonly_session("main")
    one = zarr.open_array(cold.store, path="x", mode="r")[:4096]
    out["open_read1_ms"] = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    cold = lib.Repository.open(make(prefix)).readonly_session("main")
    back = zarr.open_array(cold.store, path="x", mode="r")[:]
    out["w2_MBps"] = values.nbytes / 1e6 / (time.perf_counter() - t0)
    if not (np.array_equal(back, values) and np.array_equal(one, values[:4096])):
        raise RuntimeError(f"{name}: read back other values than written")
    return out


def check_s3_semantics() -> dict[str, str]:
    """What obstore's conditional puts do on the S3 test server (typed errors)."""
    import obstore
    from obstore.exceptions import AlreadyExistsError, PreconditionError

    store = obstore_s3(f"bench-sem-{uuid.uuid4().hex[:8]}")
    seen: dict[str, str] = {}
    first = obstore.put(store, "ref", b"1", mode="create")
    seen["create"] = "ok"
    try:
        obstore.put(store, "ref", b"2", mode="create")
        seen["create again"] = "succeeded (WRONG)"
    except (AlreadyExistsError, PreconditionError) as e:
        seen["create again"] = type(e).__name__
    second = obstore.put(store, "ref", b"3", mode={"e_tag": first["e_tag"]})
    seen["swap on current ETag"] = "ok" if second["e_tag"] else "ok, no ETag"
    try:
        obstore.put(store, "ref", b"4", mode={"e_tag": first["e_tag"]})
        seen["swap on stale ETag"] = "succeeded (WRONG)"
    except PreconditionError as e:
        seen["swap on stale ETag"] = type(e).__name__
    try:
        obstore.put(store, "missing", b"5", mode={"e_tag": first["e_tag"]})
        seen["swap of a missing key"] = "succeeded (WRONG)"
    except Exception as e:
        seen["swap of a missing key"] = type(e).__name__
    got = bytes(obstore.get(store, "ref").bytes())
    seen["content after"] = got.decode()
    return seen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="objects per phase (default 2000)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-azure", action="store_true", help="leave out Azure on Azurite")
    p.add_argument("--json", action="store_true", help="print the medians as JSON")
    args = p.parse_args()

    print(f"load: {os.getloadavg()}", flush=True)
    semantics = check_s3_semantics()
    print("obstore on the S3 test server:", json.dumps(semantics), flush=True)
    loads = workloads(not args.no_azure)
    results: dict[str, list[dict[str, float]]] = {w.name: [] for w in loads}
    for rep in range(args.repeat):
        for w in loads:  # interleaved: every variant in every repeat
            r = w.run(args.n)
            results[w.name].append(r)
            print(
                f"  repeat {rep + 1} {w.name}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items())
            )
    repo_results: dict[str, list[dict[str, float]]] = {}
    makers: dict[str, Callable[[str], Any]] = {
        "frazil-s3": lambda p: _s3().storage(p),
    }
    libs: dict[str, Any] = {}
    try:
        import icechunk

        makers["icechunk-s3"], libs["icechunk-s3"] = icechunk_s3, icechunk
    except ImportError:
        print("icechunk is not installed: left out", flush=True)
    if not args.no_azure:
        makers["frazil-azure"] = lambda p: _azure().storage(p)
    for rep in range(args.repeat):
        for name, make in makers.items():
            r = repository_workload(name, make, args.n, libs.get(name))
            repo_results.setdefault(name, []).append(r)
            print(
                f"  repeat {rep + 1} repo {name}: "
                + ", ".join(f"{k} {v:.1f}" for k, v in r.items())
            )
    print(f"load: {os.getloadavg()}")
    repo_medians = {
        name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for name, runs in repo_results.items()
    }
    medians = {
        name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for name, runs in results.items()
    }
    print(
        f"\n{args.n} PUT / {args.n} GET of 32 KiB, {IN_FLIGHT} in flight, medians of {args.repeat}"
    )
    print(f"{'variant':18} {'PUT s':>7} {'GET s':>7} {'PUT cpu':>8} {'GET cpu':>8}")
    for name, m in medians.items():
        print(
            f"{name:18} {m['put_s']:7.2f} {m['get_s']:7.2f} {m['put_cpu_s']:8.2f} "
            f"{m['get_cpu_s']:8.2f}"
        )
    print(f"\nthrough a repository ({args.n} chunks of 32 KiB), medians of {args.repeat}")
    print(f"{'variant':18} {'W1 MB/s':>8} {'open+read 1 ms':>15} {'W2 MB/s':>8}")
    for name, m in repo_medians.items():
        print(f"{name:18} {m['w1_MBps']:8.1f} {m['open_read1_ms']:15.0f} {m['w2_MBps']:8.1f}")
    if args.json:
        print(json.dumps({"semantics": semantics, "medians": medians, "repository": repo_medians}))


if __name__ == "__main__":
    main()
