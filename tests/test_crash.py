"""Crash tests: a child process committing, compacting or collecting garbage is killed with
SIGKILL at random moments; no acknowledged commit is lost, no ref is torn, fsck stays
clean, and garbage collection removes what the killed processes left behind."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crash_worker as cw
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3server
import zarr
from conftest import LONG

import frazil
from frazil import compaction, history, runtime
from frazil import session as session_module
from frazil.format import SnapshotId

WORKER = Path(__file__).with_name("crash_worker.py")
FOLDERS = ("snapshots/", "transactions/", "history/", "manifests/", "chunks/")
LINE_TIMEOUT = 120.0  # seconds to wait for a line the child is bound to print

KILLS_LOCAL = 200 if LONG else 15
KILLS_S3 = 50 if LONG else 5
KILLS_COMPACT = 50 if LONG else 4
KILLS_GC = 50 if LONG else 4
KILLS_MAINTENANCE_S3 = 20 if LONG else 2  # compaction and gc kills on the S3 server
KILLS_FORK = 30 if LONG else 3  # fork/merge writes through worker processes
KILLS_MERGING = 100 if LONG else 8  # commits merging manifest and history segments
GC_EVERY = 5  # a garbage collection (and full listing check) after every this many kills


# -- where the repository lives, for the test and for the child -------------------------------
@dataclass
class Target:
    """A repository location: ``spec`` for the child (crash_worker.open_storage), and the
    local folder when it is one (to look for files the storage API does not list)."""

    spec: dict[str, Any]
    root: Path | None = None

    def storage(self) -> frazil.Storage:
        return cw.open_storage(self.spec)

    def repo(self) -> frazil.Repository:
        return frazil.Repository.open(self.storage())


def local_target(tmp_path: Path) -> Target:
    root = tmp_path / "repo"
    return Target({"kind": "local", "path": str(root)}, root)


def s3_target(server: s3server.SeaweedServer) -> Target:
    return Target(
        {
            "kind": "s3",
            "bucket": s3server.BUCKET,
            "prefix": s3server.new_prefix(),
            "endpoint_url": server.endpoint_url,
            "access_key_id": s3server.ACCESS_KEY,
            "secret_access_key": s3server.SECRET_KEY,
        }
    )


# -- the child -----------------------------------------------------------------------------------
class Child:
    """One crash_worker process. It is started (imports done) right away and waits for
    ``go()``; lines on its stdout are the only synchronization with it."""

    def __init__(self, tmp_path: Path, mode: str, target: Target, *args: str) -> None:
        self.stderr_path = tmp_path / f"worker-{time.monotonic_ns()}.err"
        with open(self.stderr_path, "wb") as err:
            # its own process group: a kill takes its pool workers with it
            self.proc = subprocess.Popen(
                [sys.executable, str(WORKER), mode, json.dumps(target.spec), *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                bufsize=0,
                process_group=0,
            )
        self._buf = b""
        self.lines: list[str] = []

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def go(self, *args: str) -> None:
        """Let it open the repository and wait until it says ``ready``."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(" ".join(["go", *args]).encode() + b"\n")
        self.proc.stdin.flush()
        assert self.read_line() == "ready"

    def read_line(self, timeout: float = LINE_TIMEOUT) -> str:
        """The next line the child prints (fails if it exits or stays silent)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.proc.kill()
                pytest.fail(f"the worker printed nothing for {timeout} s:\n{self.stderr()}")
            if select.select([fd], [], [], left)[0]:
                data = os.read(fd, 65536)
                if not data:
                    self.proc.wait()
                    pytest.fail(
                        f"the worker exited ({self.proc.returncode}) early:\n{self.stderr()}"
                    )
                self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        self.lines.append(line.decode())
        return self.lines[-1]

    def kill(self, *, may_have_finished: bool = False) -> list[str]:
        """SIGKILL it; every line it printed (ready excluded). Fails if it died by itself
        (unless it finished normally and ``may_have_finished``)."""
        assert self.proc.stdout is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        code = self.proc.wait()
        rest = self._buf + self.proc.stdout.read()
        self.proc.stdout.close()
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        self.lines += [ln.decode() for ln in rest.split(b"\n") if ln]
        ok = {-signal.SIGKILL} | ({0} if may_have_finished else set())
        assert code in ok, f"the worker died by itself ({code}):\n{self.stderr()}"
        return [ln for ln in self.lines if ln != "ready"]

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Spares:
    """Workers started ahead of time, so that their start-up overlaps the checks."""

    def __init__(self, make: Callable[[], Child], depth: int = 2) -> None:
        self.make = make
        self.made: list[Child] = []
        self.queue = deque(self._new() for _ in range(depth))

    def _new(self) -> Child:
        self.made.append(self.make())
        return self.made[-1]

    def take(self) -> Child:
        self.queue.append(self._new())
        return self.queue.popleft()

    def close(self) -> None:
        """Kill every worker still running (those taken and left running by a failure)."""
        for child in self.made:
            child.close()


@contextlib.contextmanager
def seeded(name: str) -> Iterator[random.Random]:
    """A seeded random source for kill moments; the seed is printed and, on failure,
    attached to the error (FRAZIL_CRASH_SEED=<seed> replays the same delays)."""
    seed = int(os.environ.get("FRAZIL_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"{name}: seed {seed}")
    try:
        yield random.Random(seed)
    except BaseException as e:
        e.add_note(f"{name}: seed {seed} (rerun with FRAZIL_CRASH_SEED={seed})")
        raise


# -- an independent view of the repository: Parquet and JSON read directly -------------------
def listing(storage: frazil.Storage) -> dict[str, set[str]]:
    """The ids of every object in the four object folders."""
    return {f: {k[len(f) :] for k in runtime.run(storage.list(f))} for f in FOLDERS}


def get_all(storage: frazil.Storage, keys: list[str]) -> list[bytes]:
    async def go() -> list[bytes]:
        return list(await asyncio.gather(*(storage.get(k) for k in keys)))

    return runtime.run(go())


def reachable(storage: frazil.Storage) -> dict[str, set[str]]:
    """Every object the refs reach, found by reading ref JSON and Parquet directly (not
    through frazil's own mark phase): every listed snapshot is read, then the refs'
    histories are walked, then the manifests they list are read."""
    out: dict[str, set[str]] = {f: set() for f in FOLDERS}
    ref_keys = [k for k in runtime.run(storage.list("refs/")) if k.endswith("/ref.json")]
    refs = [json.loads(data) for data in get_all(storage, ref_keys)]
    sids = sorted(listing(storage)["snapshots/"])
    parents, manifests, histories = {}, {}, {}
    for sid, data in zip(sids, get_all(storage, [f"snapshots/{s}" for s in sids])):
        table = pq.read_table(pa.BufferReader(data))
        header = json.loads(table.schema.metadata[b"frazil"])
        parents[sid] = header["parent_id"]
        histories[sid] = {h["id"] for h in (header.get("history") or {}).get("segments", ())}
        manifests[sid] = {
            s["manifest_id"] for segs in table.column("segments").to_pylist() for s in segs or ()
        }
    todo = [r["snapshot"] for r in refs if not r.get("deleted")]
    while todo:
        sid = todo.pop()
        if sid is None or sid in out["snapshots/"]:
            continue
        assert sid in parents, f"snapshot {sid} is reachable but missing"
        out["snapshots/"].add(sid)
        out["transactions/"].add(sid)
        out["manifests/"] |= manifests[sid]
        out["history/"] |= histories[sid]
        todo.append(parents[sid])
    mids = sorted(out["manifests/"])
    for data in get_all(storage, [f"manifests/{m}" for m in mids]):
        rows = pq.read_table(pa.BufferReader(data), columns=["kind", "chunk_id"])
        ids = rows.column("chunk_id").to_pylist()
        out["chunks/"].update(c for c, k in zip(ids, rows.column("kind").to_pylist()) if k == 2)
    return out


def orphans(storage: frazil.Storage) -> dict[str, set[str]]:
    """Objects in storage that no ref reaches."""
    listed, live = listing(storage), reachable(storage)
    return {f: listed[f] - live[f] for f in FOLDERS}


def stray_files(target: Target) -> list[str]:
    """Files under a local repository that the storage API does not list (hidden temp
    files) other than the ref lock files the local backend keeps on purpose."""
    if target.root is None:
        return []
    return sorted(
        str(Path(d, f).relative_to(target.root))
        for d, _, files in os.walk(target.root)
        for f in files
        if f.startswith(".") and not f.endswith(".lock")
    )


def assert_all_reachable(target: Target) -> None:
    storage = target.storage()
    listed, live = listing(storage), reachable(storage)
    for f in FOLDERS:
        assert listed[f] == live[f], (
            f"{f}: unreachable {sorted(listed[f] - live[f])[:5]}, "
            f"missing {sorted(live[f] - listed[f])[:5]}"
        )
    assert stray_files(target) == []


# -- what the history says the arrays hold --------------------------------------------------------
def fill_values() -> dict[str, np.ndarray]:
    return {
        "small": np.full(cw.CHUNKS * cw.SMALL_CHUNK, -1, "i1"),
        "big": np.full(cw.CHUNKS * cw.BIG_CHUNK, -1.0, "f8"),
        "wide": np.full((4 * cw.CHUNKS, 2), -1, "i4"),
    }


def read_arrays(repo: frazil.Repository, **ref: str) -> dict[str, np.ndarray]:
    group = zarr.open_group(repo.readonly_session(**ref).store, mode="r")
    out = {}
    for name in ("small", "big", "wide"):
        arr = group[name]
        assert isinstance(arr, zarr.Array)
        out[name] = np.asarray(arr[...])
    return out


def check_branch(repo: frazil.Repository, branch: str, acked: list[str]) -> list[str]:
    """The branch reads, its history holds every acknowledged commit and numbers its commits
    1, 2, 3, ... with no gap or repeat, and its arrays hold what that history wrote.
    Returns its history, newest first."""
    history = list(repo.ancestry(branch=branch))
    ids = [h.id for h in history]
    lost = [s for s in acked if s not in ids]
    assert not lost, f"acknowledged commits lost from {branch}: {lost}"
    expected = fill_values()
    numbers = []
    for info in reversed(history):
        if "crash.n" in info.metadata:
            numbers.append(info.metadata["crash.n"])
        for array, index, value in info.metadata.get("crash.writes", ()):
            expected[array][cw.chunk_slice(array, index)] = value
    assert numbers == list(range(1, len(numbers) + 1)), f"{branch}: commit numbers {numbers}"
    got = read_arrays(repo, branch=branch)
    for name, values in expected.items():
        np.testing.assert_array_equal(got[name], values, err_msg=f"{branch}: {name}")
    return ids


def check_snapshots(repo: frazil.Repository, branch: str, done: set[str]) -> None:
    """Every snapshot in the branch's history but those in ``done`` (which it joins) reads
    what the history says its commit left: the arrays as of that commit."""
    expected = fill_values()
    for info in reversed(list(repo.ancestry(branch=branch))):
        for array, index, value in info.metadata.get("crash.writes", ()):
            expected[array][cw.chunk_slice(array, index)] = value
        if info.parent_id is None or info.id in done:  # the first snapshot has no arrays
            continue
        got = read_arrays(repo, snapshot_id=info.id)
        for name, values in expected.items():
            np.testing.assert_array_equal(got[name], values, err_msg=f"{info.id}: {name}")
        done.add(info.id)


def check_fsck(repo: frazil.Repository) -> None:
    report = repo.fsck()
    assert report.ok, "\n".join(map(str, report.problems))


def new_repository(target: Target, **config: Any) -> frazil.Repository:
    repo = frazil.Repository.create(target.storage(), frazil.RepositoryConfig(**config))
    session = repo.writable_session("main")
    cw.create_arrays(zarr.open_group(session.store))
    first = session.commit("arrays")
    repo.create_branch("side", first)
    return repo


def collect(target: Target) -> tuple[int, int]:
    """Garbage-collect with a cutoff of now; checks it deleted exactly the orphans and
    every stray temp file, and that everything left is reachable. Returns the number of
    objects and of temp files deleted."""
    storage = target.storage()
    before, strays = orphans(storage), stray_files(target)
    journals = runtime.run(storage.list("forks/"))
    gc = frazil.Repository.open(storage).garbage_collect(dt.datetime.now(dt.UTC))
    assert gc.objects_deleted == sum(len(v) for v in before.values()), (gc, before)
    assert gc.temporaries_deleted == len(strays), (gc, strays)
    assert gc.fork_journals_deleted == len(journals), (gc, journals)
    assert gc.kept_young == 0
    assert_all_reachable(target)
    assert runtime.run(storage.list("forks/")) == []
    return gc.objects_deleted, gc.temporaries_deleted


# -- kills during commits ------------------------------------------------------------------
@dataclass
class CommitStats:
    kills: int = 0
    acked: int = 0
    found: int = 0
    unacked_landed: int = 0
    gc_removed: int = 0
    temps_removed: int = 0
    phases: Counter[str] = field(default_factory=Counter)


def phase_of(new: dict[str, set[str]], unacked: int) -> str:
    """Where a kill landed, judged by what it left: an unreferenced snapshot (between the
    snapshot write and the ref swap), history segments (before the commit's manifests and
    transaction log), manifests or a transaction log (before the snapshot), only chunks
    (while chunks were uploaded), a commit that landed without being acknowledged (after
    the swap), or nothing (between commits)."""
    if new["snapshots/"]:
        return "snapshot-written"
    if new["history/"] and not new["transactions/"]:  # written after merged manifests
        return "history-written"
    if new["manifests/"] or new["transactions/"]:
        return "manifests-written"
    if new["chunks/"]:
        return "chunks-written"
    if unacked:
        return "after-ref-swap"
    return "between-commits"


def run_commit_kills(
    tmp_path: Path,
    target: Target,
    kills: int,
    label: str,
    *,
    config: dict[str, Any] | None = None,
    history_fanout: int | None = None,
    prebuild: int = 0,
) -> CommitStats:
    """Kill committing children; after each kill, every branch holds its acknowledged
    commits and reads what they wrote, and fsck is clean. With ``config`` (the
    repository's settings) or ``history_fanout`` (the children's), every snapshot of the
    history is read back too (those new since the last check; all of them after each gc
    and at the end, through a fresh repository). ``prebuild``: commits made on each branch
    (by this process) before the first child starts."""
    # automatic compaction now and then: one more phase for a kill to land in
    repo = new_repository(target, **(config or {"compact_when_segments_exceed": 24}))
    for _ in range(prebuild):
        for b in cw.BRANCHES:
            cw.commit_one(repo, b)
    every_snapshot = config is not None or history_fanout is not None
    verified: set[str] = set()
    extra = [] if history_fanout is None else [str(history_fanout)]
    stats = CommitStats()
    acked: dict[str, list[str]] = {b: [] for b in cw.BRANCHES}
    tips = {b: target.repo().lookup_branch(b) for b in cw.BRANCHES}
    seen_orphans: dict[str, set[str]] = {f: set() for f in FOLDERS}
    max_delay = 0.0
    with seeded(label) as rng:
        spares = Spares(
            lambda: Child(tmp_path, "commit", target, str(rng.randrange(2**32)), *extra)
        )
        try:
            for k in range(kills):
                child = spares.take()
                child.go()
                if k == 0:  # calibrate: the first commit, and the ones after it
                    t0 = time.monotonic()
                    child.read_line()
                    t1 = time.monotonic()
                    for _ in range(3):
                        child.read_line()
                    max_delay = (t1 - t0) + (time.monotonic() - t1)
                time.sleep(rng.uniform(0, max_delay))  # the experiment, not synchronization
                lines = child.kill()
                stats.kills += 1
                run: dict[str, list[str]] = {b: [] for b in cw.BRANCHES}
                for line in lines:
                    branch, sid = line.split()
                    run[branch].append(sid)
                repo = target.repo()
                assert repo.list_branches() == set(cw.BRANCHES)
                unacked = 0
                for b in cw.BRANCHES:
                    acked[b] += run[b]
                    history = check_branch(repo, b, acked[b])
                    # newest first: [the commit in flight, if it landed unseen], this
                    # run's acknowledged commits in order, then the tip before the run
                    newer = history.index(run[b][-1] if run[b] else tips[b])
                    mine = history[newer : newer + len(run[b])]
                    assert mine == run[b][::-1], (b, mine, run[b])
                    assert history[newer + len(run[b])] == tips[b], (b, history[:8], tips[b])
                    unacked += newer
                    tips[b] = history[0]
                assert unacked <= 1, f"{unacked} commits landed unacknowledged in one run"
                stats.unacked_landed += unacked
                check_fsck(repo)
                if every_snapshot:
                    for b in cw.BRANCHES:
                        check_snapshots(repo, b, verified)
                now_orphans = orphans(target.storage())
                stats.phases[
                    phase_of({f: now_orphans[f] - seen_orphans[f] for f in FOLDERS}, unacked)
                ] += 1
                seen_orphans = now_orphans
                if (k + 1) % GC_EVERY == 0 or k == kills - 1:
                    removed, temps = collect(target)
                    stats.gc_removed += removed
                    stats.temps_removed += temps
                    seen_orphans = {f: set() for f in FOLDERS}
                    for b in cw.BRANCHES:
                        check_branch(repo, b, acked[b])
                    check_fsck(target.repo())
                    verified.clear()  # gc must have left every snapshot readable
        finally:
            spares.close()
    repo = target.repo()
    for b in cw.BRANCHES:
        history = set(check_branch(repo, b, acked[b]))
        stats.found += sum(1 for s in acked[b] if s in history)
        if every_snapshot:
            check_snapshots(repo, b, set())
    stats.acked = sum(len(v) for v in acked.values())
    assert stats.found == stats.acked > 0
    print(
        f"crash summary [{label}]: kills survived {stats.kills}, commits acknowledged "
        f"{stats.acked}, found {stats.found}, landed unacknowledged "
        f"{stats.unacked_landed}, leftovers removed by gc {stats.gc_removed} objects "
        f"+ {stats.temps_removed} temp files, kill "
        f"phases {dict(sorted(stats.phases.items()))}"
    )
    return stats


def test_kill_during_commits_local(tmp_path: Path) -> None:
    stats = run_commit_kills(tmp_path, local_target(tmp_path), KILLS_LOCAL, "commit/local")
    assert stats.kills == KILLS_LOCAL


def test_kill_during_commits_s3(tmp_path: Path, s3_server: s3server.SeaweedServer) -> None:
    stats = run_commit_kills(tmp_path, s3_target(s3_server), KILLS_S3, "commit/s3")
    assert stats.kills == KILLS_S3


MERGING = {"manifest_merge_fanout": 2, "manifest_split_rows": 2, "compact_when_segments_exceed": 6}


def merging_stats(target: Target) -> tuple[int, int]:
    """(manifest segments, history segments) in storage: merges wrote some of them."""
    found = listing(target.storage())
    return len(found["manifests/"]), len(found["history/"])


@pytest.mark.parametrize("where", ["local", "s3"])
def test_kill_during_merging_commits(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits that merge manifest segments at commit (fanout 2, at most 2 references a
    segment, compaction past 6 segments) and write and merge history segments (history
    fanout 2, here and in the children) nearly every time, on branches with a few such
    commits already, killed at random moments: the oracle reads every committed snapshot
    back, and fsck stays clean."""
    small = functools.partial(history.index_for_child, fanout=2)
    monkeypatch.setattr(session_module, "index_for_child", small)
    monkeypatch.setattr(compaction, "index_for_child", small)
    target = local_target(tmp_path) if where == "local" else s3_target(s3server.server())
    kills = KILLS_MERGING if where == "local" else max(2, KILLS_MERGING // 3)
    stats = run_commit_kills(
        tmp_path, target, kills, f"merging/{where}", config=MERGING, history_fanout=2, prebuild=5
    )
    assert stats.kills == kills
    repo = target.repo()
    ids = [h.id for h in repo.ancestry(branch="main")]
    index = runtime.run(repo.reader.commit_header(SnapshotId.parse(ids[0])))[1]
    assert index is not None and index.segments, "the children wrote no history segments"
    manifests, histories = merging_stats(target)
    print(f"merging/{where}: {manifests} manifest and {histories} history segments left")


# -- kills during compaction and garbage collection ------------------------------------------------
def contents(repo: frazil.Repository) -> dict[str, dict[str, np.ndarray]]:
    """What every branch and tag reads."""
    out = {f"branch {b}": read_arrays(repo, branch=b) for b in sorted(repo.list_branches())}
    out.update({f"tag {t}": read_arrays(repo, tag=t) for t in sorted(repo.list_tags())})
    return out


def assert_same(a: dict[str, dict[str, np.ndarray]], b: dict[str, dict[str, np.ndarray]]) -> None:
    assert a.keys() == b.keys()
    for ref, arrays in a.items():
        for name, values in arrays.items():
            np.testing.assert_array_equal(b[ref][name], values, err_msg=f"{ref}: {name}")


def build_history(target: Target, commits: int) -> frazil.Repository:
    """A repository whose main has ``commits`` planned commits (so many segments), a side
    branch and a tag. No merging at commit: the segments are there for compaction."""
    repo = new_repository(target, manifest_merge_fanout=0)
    for i in range(commits):
        cw.commit_one(repo, "main" if i % 4 else "side")
        if i == commits // 2:
            repo.create_tag("half", repo.lookup_branch("main"))
    return repo


def now_ms() -> str:
    """Now, in ms since the epoch (rounded up): the cutoff for a gc worker."""
    return str(int(time.time() * 1000) + 1)


def timed_run(child: Child, *args: str) -> float:
    """Let a maintenance child run to completion: seconds from ready to done."""
    child.go(*args)
    t0 = time.monotonic()
    assert child.read_line().startswith("done ")
    elapsed = time.monotonic() - t0
    assert child.proc.wait(timeout=LINE_TIMEOUT) == 0, child.stderr()
    return elapsed


def kill_delay(rng: random.Random, duration: float) -> float:
    """When to kill an operation that takes about ``duration`` seconds: anywhere in it
    half of the time, near its end (where it deletes, or swaps the ref) the other half."""
    if rng.random() < 0.5:
        return rng.uniform(0, 1.1 * duration)
    return rng.uniform(0.8 * duration, 1.05 * duration)


def maintenance_target(where: str, tmp_path: Path) -> tuple[Target, int, int]:
    """(target, compaction kills, gc kills) for ``where``."""
    if where == "local":
        return local_target(tmp_path), KILLS_COMPACT, KILLS_GC
    return s3_target(s3server.server()), KILLS_MAINTENANCE_S3, KILLS_MAINTENANCE_S3


@pytest.mark.parametrize("where", ["local", "s3"])
def test_kill_during_compaction(tmp_path: Path, where: str) -> None:
    target, kills, _ = maintenance_target(where, tmp_path)
    repo = build_history(target, 48 if where == "local" else 24)
    original = repo.lookup_branch("main")
    before = contents(repo)
    segments = sum(len(n.segments) for n in repo.readonly_session("main").nodes())
    assert segments > (60 if where == "local" else 30)
    landed = killed = 0
    with seeded(f"compaction/{where}") as rng:
        spares = Spares(lambda: Child(tmp_path, "compact", target))
        duration = timed_run(spares.take())  # calibration, not killed
        try:
            for _ in range(kills + 1):
                repo = target.repo()
                tip = repo.lookup_branch("main")
                if tip != original:  # the last one landed: undo it for the next one
                    info = repo.lookup_snapshot(tip)
                    assert info.parent_id == original and info.metadata["frazil.compaction"]
                    landed += 1
                    repo.reset_branch("main", original)
                assert_same(before, contents(repo))
                check_branch(repo, "main", [original])
                check_branch(repo, "side", [])
                check_fsck(repo)
                if killed == kills:
                    break
                child = spares.take()
                child.go()
                time.sleep(kill_delay(rng, duration))  # the experiment
                child.kill(may_have_finished=True)
                killed += 1
        finally:
            spares.close()
    removed, temps = collect_and_check(target, before)
    print(
        f"crash summary [compaction/{where}]: kills survived {killed} (compaction took "
        f"{duration:.2f} s; {landed} landed before the kill), {segments} segments, "
        f"leftovers removed by gc {removed} objects + {temps} temp files"
    )


def collect_and_check(target: Target, before: dict[str, dict[str, np.ndarray]]) -> tuple[int, int]:
    """After the last kill: gc removes the leftovers, and content is still ``before``."""
    removed, temps = collect(target)
    repo = target.repo()
    assert_same(before, contents(repo))
    check_fsck(repo)
    return removed, temps


def make_garbage(repo: frazil.Repository, k: int) -> None:
    """Unreachable objects for gc to delete: a deleted branch with a few commits (one of
    them rewriting every native chunk), and a compaction of side that is reset away."""
    name = f"junk{k}"
    repo.create_branch(name, repo.lookup_branch("main"))
    for _ in range(4):
        cw.commit_one(repo, name)
    for _ in range(3):
        session = repo.writable_session(name)
        zarr.open_array(session.store, path="big")[...] = k
        session.commit("every chunk of big")
    repo.delete_branch(name)
    side = repo.lookup_branch("side")
    if repo.compact("side").snapshot_id is not None:
        repo.reset_branch("side", side)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_kill_during_gc(tmp_path: Path, where: str) -> None:
    target, _, kills = maintenance_target(where, tmp_path)
    repo = build_history(target, 24)
    before = contents(repo)
    killed = deleted_by_killed = finished = 0
    with seeded(f"gc/{where}") as rng:
        make_garbage(repo, 0)
        spares = Spares(lambda: Child(tmp_path, "gc", target))
        try:
            duration = timed_run(spares.take(), now_ms())  # calibration, not killed
            assert_all_reachable(target)
            for k in range(1, kills + 1):
                make_garbage(target.repo(), k)
                storage = target.storage()
                listed_before, garbage = listing(storage), orphans(storage)
                assert any(garbage.values())
                child = spares.take()
                child.go(now_ms())
                time.sleep(kill_delay(rng, duration))  # the experiment
                finished += any(ln.startswith("done") for ln in child.kill(may_have_finished=True))
                killed += 1
                listed_after, live = listing(storage), reachable(storage)
                for f in FOLDERS:  # only garbage went, and nothing reachable
                    assert listed_after[f] <= listed_before[f]
                    assert live[f] <= listed_after[f], (f, sorted(live[f] - listed_after[f]))
                    deleted_by_killed += len(listed_before[f] - listed_after[f])
                repo = target.repo()
                assert_same(before, contents(repo))
                check_branch(repo, "main", [])
                check_branch(repo, "side", [])
                check_fsck(repo)
        finally:
            spares.close()
    removed, temps = collect_and_check(target, before)
    print(
        f"crash summary [gc/{where}]: kills survived {killed} (gc took {duration:.2f} s; "
        f"{finished} finished before the kill), "
        f"objects deleted by killed gcs {deleted_by_killed}, leftovers removed by the "
        f"final gc {removed} objects + {temps} temp files"
    )


@pytest.mark.parametrize("where", ["local", "s3"])
def test_kill_during_fork_merge_writes(tmp_path: Path, where: str) -> None:
    """A process writing each commit through two worker processes (fork copies that are
    never returned: only their journals carry the writes), merging the fork and
    committing, is killed with its workers at random moments: every acknowledged commit
    is there with exactly the values its history says, fsck is clean, and gc removes
    the chunks and journals the killed writes left."""
    target = local_target(tmp_path) if where == "local" else s3_target(s3server.server())
    new_repository(target)
    acked: list[str] = []
    kills = KILLS_FORK if where == "local" else max(2, KILLS_FORK // 2)
    landed = journals_seen = 0
    with seeded(f"forkmerge/{where}") as rng:
        spares = Spares(lambda: Child(tmp_path, "forkmerge", target, "0"))
        try:
            child = spares.take()
            child.go()
            t0 = time.monotonic()
            acked.append(child.read_line().split()[1])  # calibration: the first commit
            first = time.monotonic() - t0  # (it starts the worker pool too)
            for _ in range(3):
                acked.append(child.read_line().split()[1])
            per_commit = (time.monotonic() - t0 - first) / 3
            child.kill()
            for _ in range(kills):
                child = spares.take()
                child.go()
                time.sleep(rng.uniform(0, first + 3 * per_commit))  # the experiment
                acked += [ln.split()[1] for ln in child.kill()]
                repo = target.repo()
                history = check_branch(repo, "main", acked)
                landed += history.index(acked[-1]) if acked[-1] in history else 0
                check_fsck(repo)
                journals_seen += len(runtime.run(target.storage().list("forks/")))
        finally:
            spares.close()
    removed, temps = collect(target)
    check_branch(target.repo(), "main", acked)
    print(
        f"crash summary [forkmerge/{where}]: kills survived {kills}, commits "
        f"acknowledged {len(acked)}, landed unacknowledged {landed}, journal objects "
        f"left by killed writes (summed over kills) {journals_seen}, leftovers removed by "
        f"gc {removed} objects + {temps} temp files"
    )


def test_gc_removes_temp_files_of_killed_writes(tmp_path: Path) -> None:
    """A writer killed mid-put leaves a hidden temp file beside the key; gc removes the
    ones older than its cutoff (and only those), so no killed write leaks disk space."""
    target = local_target(tmp_path)
    repo = new_repository(target)
    assert target.root is not None
    old = target.root / "chunks" / ".tmp-0123456789abcdef"
    young = target.root / "snapshots" / ".tmp-fedcba9876543210"
    for path in (old, young):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half a chunk")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    assert stray_files(target) == [
        "chunks/.tmp-0123456789abcdef",
        "snapshots/.tmp-fedcba9876543210",
    ]
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    assert repo.garbage_collect(cutoff, dry_run=True).temporaries_deleted == 0
    assert old.exists()
    assert repo.garbage_collect(cutoff).temporaries_deleted == 1
    assert stray_files(target) == ["snapshots/.tmp-fedcba9876543210"]
    assert repo.garbage_collect(dt.datetime.now(dt.UTC)).temporaries_deleted == 1
    assert stray_files(target) == []
    check_branch(repo, "main", [])
    check_fsck(repo)
