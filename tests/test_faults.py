"""An unreliable store: FaultInjectingStorage (transient errors, latency, lost responses)
under RetryingStorage. Commits and reads through a Repository succeed and nothing is lost;
a conditional put whose acknowledgement was lost is not reported as a conflict."""

from __future__ import annotations

import asyncio
import pickle
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from conftest import LONG

import frazil
from frazil.errors import InvalidInputError, StorageError, TransientStorageError
from frazil.storage import (
    FaultInjectingStorage,
    PutResult,
    RetryingStorage,
    RetrySettings,
    Storage,
    local_filesystem_storage,
)
from frazil.storage.base import ByteRange


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def flaky_repo_storage(
    root: Path, seed: int, *, rate: float = 0.2, latency: float = 0.0
) -> tuple[RetryingStorage, FaultInjectingStorage]:
    flaky = FaultInjectingStorage(
        local_filesystem_storage(root),
        error_rate=rate,
        drop_response_rate=rate,
        latency=latency,
        seed=seed,
    )
    # 0.36 of attempts fail: 25 attempts make giving up (0.36**25) practically impossible
    return RetryingStorage(flaky, attempts=25, backoff_base=0.0005, backoff_cap=0.005), flaky


# -- through a Repository -----------------------------------------------------------------------
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_commits_and_reads_survive_faults(tmp_path: Path, seed: int) -> None:
    storage, flaky = flaky_repo_storage(tmp_path / "repo", seed)
    repo = frazil.Repository.create(
        storage, frazil.RepositoryConfig(inline_chunk_threshold_bytes=0)
    )  # every chunk is an object: more calls to fail
    expected: dict[str, np.ndarray] = {}
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="a")
    root.create_array("a", shape=(12, 12), chunks=(3, 3), dtype="i4", fill_value=0)
    root.create_array("b", shape=(20,), chunks=(4,), dtype="f8", fill_value=-1.0)
    first = session.commit("create")
    current_a, current_b = np.zeros((12, 12), "i4"), np.full(20, -1.0)
    for i in range(8):
        session = repo.writable_session("main")
        a = zarr.open_array(session.store, path="a")
        b = zarr.open_array(session.store, path="b")
        a[i, :] = i + 1
        b[i * 2 : (i + 1) * 2] = i * 0.5
        current_a[i, :] = i + 1
        current_b[i * 2 : (i + 1) * 2] = i * 0.5
        sid = session.commit(f"commit {i}")
        expected[sid] = (current_a.copy(), current_b.copy())  # type: ignore[assignment]
    repo.create_branch("dev", first)
    repo.create_tag("v1", sid)
    assert flaky.injected_errors > 0 and flaky.dropped_responses > 0

    # everything reads back, through the faults and without them
    for r in (repo, frazil.Repository.open(local_filesystem_storage(tmp_path / "repo"))):
        history = list(r.ancestry(branch="main"))
        assert [h.message for h in history] == (
            [f"commit {i}" for i in reversed(range(8))] + ["create", "Repository initialized"]
        )
        for child, parent in zip(history, history[1:]):
            assert child.parent_id == parent.id
        for sid, (ea, eb) in expected.items():  # type: ignore[misc]
            s = r.readonly_session(snapshot_id=sid)
            assert (zarr.open_array(s.store, path="a")[:] == ea).all()
            assert (zarr.open_array(s.store, path="b")[:] == eb).all()
        assert r.lookup_tag("v1") == sid
        assert r.lookup_branch("dev") == first
        assert r.list_branches() == {"main", "dev"}


def test_concurrent_committers_through_faults(tmp_path: Path) -> None:
    """Threads committing to one branch (with rebase) over a flaky store: every commit
    lands once; lost acknowledgements of ref swaps do not turn into self-conflicts."""
    storage, flaky = flaky_repo_storage(tmp_path / "repo", seed=11, latency=0.001)
    repo = frazil.Repository.create(storage)
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="x", shape=(24,), chunks=(1,), dtype="i4", fill_value=-1)
    s.commit("create")
    workers, each = 3, 4
    errors: list[BaseException] = []
    barrier = threading.Barrier(workers)

    def work(w: int) -> None:
        try:
            barrier.wait(timeout=30)
            for i in range(each):
                session = repo.writable_session("main")
                zarr.open_array(session.store, path="x")[w * each + i] = w * 10 + i
                session.commit(f"w{w} c{i}", rebase_with=frazil.ConflictDetector())
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert flaky.dropped_responses > 0
    messages = [h.message for h in repo.ancestry(branch="main")]
    assert len(messages) == workers * each + 2
    assert sorted(messages[:-2]) == sorted(
        f"w{w} c{i}" for w in range(workers) for i in range(each)
    )
    values = zarr.open_array(repo.readonly_session("main").store, path="x")[:]
    assert list(values[: workers * each]) == [
        w * 10 + i for w in range(workers) for i in range(each)
    ]


# -- lost acknowledgements, scripted --------------------------------------------------------------
class Scripted(Storage):
    """Fails chosen calls: ``script[op]`` is a list of "before" (fail without running),
    "after" (run, then fail: a lost response) or "ok", consumed one per call of ``op``."""

    def __init__(self, inner: Storage, **script: list[str]) -> None:
        self.inner = inner
        self.script = {op: list(steps) for op, steps in script.items()}
        self.ran: dict[str, int] = {}

    async def _do(self, op: str, coro: Any) -> Any:
        step = self.script.get(op, []).pop(0) if self.script.get(op) else "ok"
        if step == "before":
            coro.close()
            raise TransientStorageError(f"scripted: {op} not sent")
        result = await coro
        self.ran[op] = self.ran.get(op, 0) + 1
        if step == "after":
            raise TransientStorageError(f"scripted: response to {op} lost")
        return result

    async def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        return await self._do("get", self.inner.get(key, byte_range))  # type: ignore[no-any-return]

    async def get_with_version(self, key: str) -> tuple[bytes, str]:
        return await self._do("get_with_version", self.inner.get_with_version(key))  # type: ignore[no-any-return]

    async def put(self, key: str, data: bytes) -> None:
        await self._do("put", self.inner.put(key, data))

    async def put_if_absent(self, key: str, data: bytes) -> PutResult:
        return await self._do("put_if_absent", self.inner.put_if_absent(key, data))  # type: ignore[no-any-return]

    async def put_if_version(self, key: str, data: bytes, version: str) -> PutResult:
        return await self._do(
            "put_if_version",  # type: ignore[no-any-return]
            self.inner.put_if_version(key, data, version),
        )

    async def exists(self, key: str) -> bool:
        return await self._do("exists", self.inner.exists(key))  # type: ignore[no-any-return]

    async def list(self, prefix: str) -> list[str]:
        return await self._do("list", self.inner.list(prefix))  # type: ignore[no-any-return]

    async def size(self, key: str) -> int:
        return await self._do("size", self.inner.size(key))  # type: ignore[no-any-return]

    async def delete(self, keys: Sequence[str]) -> None:
        await self._do("delete", self.inner.delete(keys))


def retrying(inner: Storage, attempts: int = 5) -> RetryingStorage:
    return RetryingStorage(inner, attempts=attempts, backoff_base=0.0001, backoff_cap=0.001)


KEY = "refs/branch.main/ref.json"


def test_lost_ack_on_put_if_version_is_success(tmp_path: Path) -> None:
    local = local_filesystem_storage(tmp_path)
    run(local.put(KEY, b"old"))
    _, v0 = run(local.get_with_version(KEY))
    scripted = Scripted(local, put_if_version=["after"])
    result = run(retrying(scripted).put_if_version(KEY, b"ours, write_id=1", v0))
    assert scripted.ran["put_if_version"] == 2  # landed, then the retry was refused
    assert result.ok is True
    assert run(local.get_with_version(KEY)) == (b"ours, write_id=1", result.version)


def test_lost_ack_on_put_if_absent_is_success(tmp_path: Path) -> None:
    local = local_filesystem_storage(tmp_path)
    scripted = Scripted(local, put_if_absent=["after", "before"])
    result = run(retrying(scripted).put_if_absent(KEY, b"ours"))
    assert result.ok is True
    assert run(local.get_with_version(KEY)) == (b"ours", result.version)


def test_failed_attempt_then_real_conflict_is_a_conflict(tmp_path: Path) -> None:
    local = local_filesystem_storage(tmp_path)
    run(local.put(KEY, b"old"))
    _, v0 = run(local.get_with_version(KEY))
    theirs = run(local.put_if_version(KEY, b"theirs", v0))
    scripted = Scripted(local, put_if_version=["before"])
    result = run(retrying(scripted).put_if_version(KEY, b"ours", v0))
    # the failed attempt may have landed before "theirs" replaced it, for all the retry
    # can tell: lost, and flagged uncertain for the caller to settle
    assert result == PutResult(False, theirs.version, uncertain=True)
    assert run(local.get(KEY)) == b"theirs"


def test_plain_conflict_needs_no_read_back(tmp_path: Path) -> None:
    local = local_filesystem_storage(tmp_path)
    run(local.put(KEY, b"old"))
    scripted = Scripted(local)
    assert not run(retrying(scripted).put_if_version(KEY, b"x", "stale")).ok
    assert "get_with_version" not in scripted.ran


def test_out_of_attempts(tmp_path: Path) -> None:
    local = local_filesystem_storage(tmp_path)
    # every attempt's answer lost, but the first one landed: the read-back settles it
    scripted = Scripted(local, put_if_absent=["after"] * 3)
    assert run(retrying(scripted, attempts=3).put_if_absent(KEY, b"ours")).ok
    # nothing ever landed: an error, not a guess
    scripted = Scripted(local, put_if_absent=["before"] * 3)
    with pytest.raises(TransientStorageError, match="gave up after 3 attempts"):
        run(retrying(scripted, attempts=3).put_if_absent("refs/tag.t/ref.json", b"x"))
    # idempotent operations: retried, then the error
    scripted = Scripted(local, get=["before"] * 3)
    with pytest.raises(TransientStorageError, match="gave up after 3 attempts"):
        run(retrying(scripted, attempts=3).get(KEY))
    scripted = Scripted(local, get=["before"] * 2)
    assert run(retrying(scripted, attempts=3).get(KEY)) == b"ours"


def test_commit_with_lost_swap_ack_is_not_a_conflict(tmp_path: Path) -> None:
    """Without the read-back the retried swap would fail and the commit would raise
    ConflictError against its own snapshot."""
    local = local_filesystem_storage(tmp_path)
    scripted = Scripted(local)
    repo = frazil.Repository.create(retrying(scripted))
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="a", shape=(4,), chunks=(2,), dtype="i4")[:] = 3
    scripted.script["put_if_version"] = ["after"]
    sid = session.commit("one")  # no rebase_with: a conflict would raise
    assert scripted.ran["put_if_version"] == 2
    assert repo.lookup_branch("main") == sid
    assert [h.message for h in repo.ancestry(branch="main")] == ["one", "Repository initialized"]


def test_faults_reach_the_caller_without_retries(tmp_path: Path) -> None:
    flaky = FaultInjectingStorage(local_filesystem_storage(tmp_path), error_rate=1.0)
    with pytest.raises(TransientStorageError) as info:
        run(flaky.put("k", b"v"))
    assert isinstance(info.value, StorageError)
    assert not run(local_filesystem_storage(tmp_path).exists("k"))  # failed before the call
    dropping = FaultInjectingStorage(local_filesystem_storage(tmp_path), drop_response_rate=1.0)
    with pytest.raises(TransientStorageError, match="lost"):
        run(dropping.put("k", b"v"))
    assert run(local_filesystem_storage(tmp_path).get("k")) == b"v"  # it ran


# -- the wrappers themselves ----------------------------------------------------------------------
def test_fault_sequence_is_reproducible(tmp_path: Path) -> None:
    def outcomes(seed: int) -> list[str]:
        flaky = FaultInjectingStorage(
            local_filesystem_storage(tmp_path), error_rate=0.3, drop_response_rate=0.3, seed=seed
        )
        out = []
        for i in range(40):
            try:
                run(flaky.put(f"k{i}", b"v"))
                out.append("ok")
            except TransientStorageError as e:
                out.append("lost" if "lost" in str(e) else "error")
        return out

    assert outcomes(5) == outcomes(5)
    assert outcomes(5) != outcomes(6)
    assert {"ok", "lost", "error"} <= set(outcomes(5))


def test_wrappers_pickle_and_check_arguments(tmp_path: Path) -> None:
    storage = RetryingStorage(
        FaultInjectingStorage(local_filesystem_storage(tmp_path), error_rate=0.1, seed=3),
        attempts=4,
    )
    clone = pickle.loads(pickle.dumps(storage))
    assert clone.settings == storage.settings
    assert isinstance(clone.inner, FaultInjectingStorage)
    assert clone.inner.error_rate == 0.1 and clone.inner.seed == 3
    run(storage.put("k", b"v"))
    assert run(clone.get("k")) == b"v"
    with pytest.raises(InvalidInputError):
        FaultInjectingStorage(local_filesystem_storage(tmp_path), error_rate=1.5)
    with pytest.raises(InvalidInputError):
        FaultInjectingStorage(local_filesystem_storage(tmp_path), latency=-1)
    with pytest.raises(InvalidInputError):
        RetryingStorage(local_filesystem_storage(tmp_path), attempts=0)
    with pytest.raises(InvalidInputError):
        RetryingStorage("not a storage")  # type: ignore[arg-type]


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    s = RetrySettings(max_attempts=10, backoff_base=0.1, backoff_cap=1.0)
    for failures, (lo, hi) in {
        1: (0.05, 0.1),
        2: (0.1, 0.2),
        3: (0.2, 0.4),
        10: (0.5, 1.0),
    }.items():
        delays = [s.delay(failures) for _ in range(200)]
        assert all(lo <= d <= hi for d in delays)
        assert len(set(delays)) > 100  # jittered


# -- permanent errors: a clear error, nothing half-written visible ---------------------------------
class Broken(Scripted):
    """Every put of a key under ``prefix`` fails for good (a permission or quota error)
    until ``healed`` is set; everything else passes through."""

    def __init__(self, inner: Storage, prefix: str) -> None:
        super().__init__(inner)
        self.prefix, self.healed, self.refused = prefix, False, 0

    async def _do(self, op: str, coro: Any) -> Any:
        return await coro

    def _check(self, key: str) -> None:
        if not self.healed and key.startswith(self.prefix):
            self.refused += 1
            raise StorageError(f"writing {key!r}: access denied (the test's broken store)")

    async def put(self, key: str, data: bytes) -> None:
        self._check(key)
        await self.inner.put(key, data)

    async def put_if_absent(self, key: str, data: bytes) -> PutResult:
        self._check(key)
        return await self.inner.put_if_absent(key, data)

    async def put_if_version(self, key: str, data: bytes, version: str) -> PutResult:
        self._check(key)
        return await self.inner.put_if_version(key, data, version)


@pytest.mark.parametrize(
    "prefix", ["chunks/", "manifests/", "transactions/", "snapshots/", "refs/branch.main/"]
)
def test_permanent_errors_leave_nothing_visible(tmp_path: Path, prefix: str) -> None:
    """A store that refuses one kind of write for good: the write or commit fails with the
    store's error (naming the key), the branch, its history and content are untouched and
    pass fsck, and once the store is fixed the same session commits what it staged."""
    broken = Broken(local_filesystem_storage(tmp_path / "repo"), prefix)
    broken.healed = True  # while the repository is made
    repo = frazil.Repository.create(
        retrying(broken), frazil.RepositoryConfig(inline_chunk_threshold_bytes=0)
    )
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="a", shape=(8,), chunks=(2,), dtype="i4", fill_value=0)[
        :
    ] = 1
    before = session.commit("ones")
    session = repo.writable_session("main")
    arr = zarr.open_array(session.store, path="a")
    broken.healed = False  # from here on
    if prefix == "chunks/":  # chunk bytes are written as zarr writes them
        with pytest.raises(StorageError, match="chunks/.*access denied"):
            arr[:] = 2
        broken.healed = True
        arr[:] = 2  # zarr writes again once the store works
    else:
        arr[:] = 2
        with pytest.raises(StorageError, match=f"{prefix}.*access denied"):
            session.commit("twos")
        assert not session.read_only and session.has_uncommitted_changes
    assert broken.refused > 0
    fresh = frazil.Repository.open(local_filesystem_storage(tmp_path / "repo"))
    assert fresh.lookup_branch("main") == before
    assert zarr.open_array(fresh.readonly_session("main").store, path="a")[:].tolist() == [1] * 8
    assert fresh.fsck().ok
    broken.healed = True
    after = session.commit("twos")
    fresh = frazil.Repository.open(local_filesystem_storage(tmp_path / "repo"))
    assert [h.id for h in fresh.ancestry(branch="main")][:2] == [after, before]
    assert zarr.open_array(fresh.readonly_session("main").store, path="a")[:].tolist() == [2] * 8
    assert fresh.fsck().ok


# -- a soak through faults, on local storage and the S3 test server -------------------------------
SOAK = {"local": 60 if LONG else 12, "s3": 30 if LONG else 6}


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_fault_soak_loses_nothing(tmp_path: Path, backend: str, seed: int = 20261201) -> None:
    """Commits (two arrays, native chunks), branch and tag moves and reads through a store
    that fails 10% of calls before sending them, loses 10% of answers after running them
    and adds latency: every commit is in history once with its content, and the counts of
    faults injected and survived are printed (``-s``)."""
    import s3server

    inner: Storage = (
        local_filesystem_storage(tmp_path / "repo") if backend == "local" else s3server.storage()
    )
    flaky = FaultInjectingStorage(
        inner, error_rate=0.1, drop_response_rate=0.1, latency=0.002, seed=seed
    )
    storage = RetryingStorage(flaky, attempts=20, backoff_base=0.0005, backoff_cap=0.005)
    repo = frazil.Repository.create(
        storage, frazil.RepositoryConfig(inline_chunk_threshold_bytes=0)
    )
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="a")
    root.create_array("a", shape=(64,), chunks=(4,), dtype="i4", fill_value=0)
    root.create_array("b", shape=(8, 8), chunks=(4, 4), dtype="f4", fill_value=0)
    session.commit("arrays")
    expected: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    a, b = np.zeros(64, "i4"), np.zeros((8, 8), "f4")
    for i in range(SOAK[backend]):
        session = repo.writable_session("main")
        a[(i * 4) % 64 : (i * 4) % 64 + 4] = i + 1
        b[i % 8, :] = i * 0.5
        zarr.open_array(session.store, path="a")[:] = a
        zarr.open_array(session.store, path="b")[:] = b
        sid = session.commit(f"c{i}", rebase_with=frazil.ConflictDetector())
        expected[sid] = (a.copy(), b.copy())
        if i % 4 == 0:
            repo.create_tag(f"t{i}", sid)
            repo.create_branch(f"br{i}", sid)
    reopened = frazil.Repository.open(storage)
    history = [h.id for h in reopened.ancestry(branch="main")]
    assert history[: len(expected)] == list(reversed(expected))
    for sid, (ea, eb) in expected.items():
        s = reopened.readonly_session(snapshot_id=sid)
        assert (zarr.open_array(s.store, path="a")[:] == ea).all()
        assert (zarr.open_array(s.store, path="b")[:] == eb).all()
    tags = {f"t{i}" for i in range(0, SOAK[backend], 4)}
    assert reopened.list_tags() == tags
    assert reopened.list_branches() == {"main"} | {f"br{i}" for i in range(0, SOAK[backend], 4)}
    assert flaky.injected_errors > 0 and flaky.dropped_responses > 0
    print(
        f"\nfault soak ({backend}): {flaky.calls} calls, {flaky.injected_errors} errors "
        f"and {flaky.dropped_responses} lost responses injected and survived; "
        f"{len(expected)} commits, {len(tags)} tags and branches, all present"
    )


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_fault_soak_long(tmp_path: Path, backend: str) -> None:
    """The long soak (FRAZIL_LONG=1): the same, five times over with other seeds."""
    for seed in range(5):
        test_fault_soak_loses_nothing(tmp_path / f"run{seed}", backend, seed)
