"""Benchmark: ``list(repo.ancestry(branch="main"))`` of a long history from a fresh repository
object, on local disk and on S3 (the SeaweedFS test server, or any endpoint) with a fixed
latency added to every storage request.

The history (``--commits`` commits, each changing the root group's attributes) is built
once on local disk, without syncs; ``--repo DIR`` keeps it there and reuses it on the next
run. For S3 the folder's objects are copied into the bucket under a fresh prefix (or under
``--s3-prefix``, once: a later run against the same ``--endpoint-url`` reuses the copy).

Reported per place: the first, the median and the worst of ``--repeat`` fresh opens + full
ancestry (seconds; the first run in a process also warms up imports and thread pools), the
number of storage requests and, with latency, how many latencies the median took
(``rounds``: elapsed / latency, an upper bound on the sequential requests)::

    python bench/bench_ancestry.py --commits 10000 --latency-ms 10
    python bench/bench_ancestry.py --repo /tmp/hist10k --places local

Without ``--endpoint-url`` it starts the test suite's SeaweedFS server (tests/s3server.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import frazil
from frazil import runtime
from frazil.storage.faults import FaultInjectingStorage

T = TypeVar("T")


class DelayedStorage(FaultInjectingStorage):
    """Every storage call waits exactly ``delay`` seconds before it is sent (a network's
    round trip, per request, on the client side) and is counted in ``calls``."""

    def __init__(self, inner: frazil.Storage, delay: float) -> None:
        super().__init__(inner)
        self.delay = delay

    async def _call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return await op()


def build(root: Path, commits: int) -> None:
    """A repository at ``root`` whose main has ``commits`` commits after the first."""
    repo = frazil.Repository.create(frazil.local_filesystem_storage(root, fsync=False))
    start = time.perf_counter()
    for i in range(commits):
        session = repo.writable_session("main")
        doc = {"zarr_format": 3, "node_type": "group", "attributes": {"n": i}}
        session.set_metadata("/", json.dumps(doc).encode())
        session.commit(f"commit {i}", metadata={"i": i})
        if (i + 1) % 1000 == 0:
            rate = (i + 1) / (time.perf_counter() - start)
            print(f"  built {i + 1} commits ({rate:.0f}/s)", flush=True)


def ensure_history(root: Path, commits: int) -> None:
    marker = root / ".bench-commits"
    if marker.exists() and marker.read_text() == str(commits):
        print(f"reusing the history in {root}")
        return
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} holds something else: give an empty or missing folder")
    print(f"building {commits} commits in {root}", flush=True)
    t0 = time.perf_counter()
    build(root, commits)
    marker.write_text(str(commits))  # hidden: the storage never lists it
    print(f"built in {time.perf_counter() - t0:.1f} s")


def copy_folder(root: Path, target: frazil.Storage) -> int:
    """Every object of a local repository folder (hidden files left out) into ``target``."""
    files = [
        Path(d, f).relative_to(root).as_posix()
        for d, _, names in os.walk(root)
        for f in names
        if not any(part.startswith(".") for part in Path(d, f).relative_to(root).parts)
    ]

    async def go() -> None:
        await runtime.gather_limited(
            [target.put(key, (root / key).read_bytes()) for key in files], limit=32
        )

    runtime.run(go())
    return len(files)


def measure(make: Callable[[], frazil.Storage], repeat: int, expected: int) -> dict[str, Any]:
    times, calls = [], []
    for _ in range(repeat):
        storage = make()
        start = time.perf_counter()
        n = len(list(frazil.Repository.open(storage).ancestry(branch="main")))
        times.append(time.perf_counter() - start)
        assert n == expected, (n, expected)
        calls.append(storage.calls if isinstance(storage, DelayedStorage) else 0)
    return {
        "first_s": times[0],
        "median_s": statistics.median(times),
        "worst_s": max(times),
        "requests": calls[-1],
    }


def s3_place(args: argparse.Namespace) -> Callable[[], frazil.Storage]:
    if args.endpoint_url:
        endpoint, bucket = args.endpoint_url, args.bucket
        key = os.environ.get("AWS_ACCESS_KEY_ID", "")
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        import s3server  # type: ignore[import-not-found]  # the tests' SeaweedFS launcher

        srv = s3server.server()
        endpoint, bucket = srv.endpoint_url, s3server.BUCKET
        key, secret = s3server.ACCESS_KEY, s3server.SECRET_KEY
    prefix = args.s3_prefix or f"bench-ancestry-{uuid.uuid4().hex[:8]}"

    def make() -> frazil.Storage:
        return frazil.s3_storage(
            bucket=bucket,
            prefix=prefix,
            endpoint_url=endpoint,
            allow_http=True,
            region="us-east-1",
            access_key_id=key,
            secret_access_key=secret,
        )

    return make


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commits", type=int, default=10_000)
    p.add_argument("--repo", type=Path, default=None, help="keep the history here, reuse it")
    p.add_argument("--places", default="local,s3")
    p.add_argument("--latency-ms", type=float, default=10.0, help="added to every S3 request")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--endpoint-url", default=None)
    p.add_argument("--bucket", default=None)
    p.add_argument("--s3-prefix", default=None, help="copy there once, reuse it")
    args = p.parse_args()
    tmp = None
    if args.repo is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-ancestry-")
        args.repo = Path(tmp.name) / "repo"
    ensure_history(args.repo, args.commits)
    expected = args.commits + 1
    places = args.places.split(",")
    delay = args.latency_ms / 1000
    results: dict[str, dict[str, Any]] = {}
    print("load average before:", os.getloadavg())
    if "local" in places:
        results["local"] = measure(
            lambda: DelayedStorage(frazil.local_filesystem_storage(args.repo), 0.0),
            args.repeat,
            expected,
        )
    if "s3" in places:
        make = s3_place(args)
        if runtime.run(make().exists("refs/branch.main/ref.json")):
            print("reusing the copy on S3")  # --s3-prefix of an earlier run
        else:
            t0 = time.perf_counter()
            copied = copy_folder(args.repo, make())
            print(f"copied {copied} objects to S3 in {time.perf_counter() - t0:.1f} s")
        results["s3"] = measure(lambda: DelayedStorage(make(), 0.0), args.repeat, expected)
        name = f"s3+{args.latency_ms:g}ms"
        results[name] = measure(lambda: DelayedStorage(make(), delay), args.repeat, expected)
        results[name]["rounds"] = results[name]["median_s"] / delay if delay else 0
    print(f"| ancestry of {expected} commits | first s | median s | worst s | requests | rounds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(
            f"| {name} | {r['first_s']:.3f} | {r['median_s']:.3f} | {r['worst_s']:.3f} "
            f"| {r['requests']} "
            f"| {r.get('rounds', 0):.1f} |"
        )
    print("load average after:", os.getloadavg())
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
