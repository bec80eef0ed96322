"""Data safety under races and lost answers, on every backend: a commit whose swap landed
but whose answer was lost is reported as committed (once), whatever landed on top of it;
a deleted branch never comes back; of concurrent creators exactly one wins."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import s3server
import zarr

import frazil
from frazil import (
    AlreadyExistsError,
    BasicConflictSolver,
    ConflictDetector,
    NotFoundError,
    RepositoryConfig,
    TransientStorageError,
)
from frazil.storage import PutResult, Storage
from frazil.storage.local import LocalFileSystemStorage


class LosesSwapAnswers(frazil.storage.RetryingStorage):
    """A retrying storage whose inner store runs the branch swaps of one writer and then
    loses their answers (the first ``lose`` of them); ``after_landing`` runs after the
    first (another writer commits on top before the retry)."""

    def __init__(self, inner: Storage, lose: int = 1) -> None:
        super().__init__(_Dropper(inner, self), attempts=3, backoff_base=0.001)
        self.lose = lose
        self.after_landing: Callable[[], Awaitable[None]] | None = None


class _Dropper(Storage):
    """Forwards everything; a branch ref swap lands, then its answer is lost."""

    def __init__(self, inner: Storage, owner: LosesSwapAnswers) -> None:
        self.inner, self.owner = inner, owner
        self.supports_conditional_delete = getattr(inner, "supports_conditional_delete", False)
        self.versions_follow_content = inner.versions_follow_content

    async def put_if_version(self, key: str, data: bytes, version: str) -> PutResult:
        result = await self.inner.put_if_version(key, data, version)
        owner = self.owner
        if key.startswith("refs/branch.") and owner.lose > 0:
            owner.lose -= 1
            if owner.after_landing is not None:
                hook, owner.after_landing = owner.after_landing, None
                await hook()
            raise TransientStorageError("injected: the answer to the swap was lost")
        return result

    def describe(self) -> str:
        return self.inner.describe()

    # abstract methods, forwarded (the class must be instantiable)
    async def get(self, key: str, byte_range: Any = None) -> bytes:
        return await self.inner.get(key, byte_range)

    async def get_with_version(self, key: str) -> tuple[bytes, str]:
        return await self.inner.get_with_version(key)

    async def put(self, key: str, data: bytes) -> None:
        await self.inner.put(key, data)

    async def put_if_absent(self, key: str, data: bytes) -> PutResult:
        return await self.inner.put_if_absent(key, data)

    async def exists(self, key: str) -> bool:
        return await self.inner.exists(key)

    async def list(self, prefix: str) -> list[str]:
        return await self.inner.list(prefix)

    async def size(self, key: str) -> int:
        return await self.inner.size(key)

    async def delete(self, keys: Any) -> None:
        await self.inner.delete(keys)

    async def delete_if_version(self, key: str, version: str) -> bool:
        return await self.inner.delete_if_version(key, version)


def write(session: frazil.Session, name: str, value: int) -> None:
    root = zarr.open_group(session.store)
    arr = (
        root[name]
        if name in root
        else root.create_array(name, shape=(4,), chunks=(1,), dtype="i4", fill_value=0)
    )
    arr[value % 4] = value


def commits_on_top(other: frazil.Repository) -> Callable[[], Awaitable[None]]:
    """A hook committing "other" (array b) through ``other``, from another thread (the
    engine's loop, which runs the hook, waits meanwhile)."""

    def commit_other() -> None:
        o = other.writable_session("main")
        write(o, "b", 2)
        o.commit("other")

    async def hook() -> None:
        await asyncio.to_thread(commit_other)

    return hook


def history(repo: frazil.Repository) -> list[str]:
    return [i.message for i in repo.ancestry(branch="main")]


@pytest.mark.parametrize(
    "solver",
    [None, ConflictDetector(), BasicConflictSolver()],
    ids=["no-solver", "detector", "basic"],
)
def test_lost_swap_answer_with_a_commit_on_top_is_one_commit(
    storage_factory: Callable[[], Storage], solver: Any
) -> None:
    """The swap lands, its answer is lost, another writer commits on top before the
    retry: the retry fails its precondition and reads back the other writer's ref. The
    session finds its snapshot in the branch's history, returns its id and writes
    nothing more (before the fix: ConflictError, a rebase conflict with itself, or the
    same change committed twice)."""
    plain = storage_factory()
    frazil.Repository.create(plain)
    lossy = LosesSwapAnswers(storage_factory())
    mine = frazil.Repository.open(lossy)
    other = frazil.Repository.open(plain)
    s = mine.writable_session("main")
    write(s, "a", 1)

    lossy.after_landing = commits_on_top(other)
    sid = s.commit("mine", rebase_with=solver)
    assert history(other) == ["other", "mine", "Repository initialized"]
    assert [i.id for i in other.ancestry(branch="main")][1] == sid
    assert s.read_only and s.snapshot_id == sid
    ro = other.readonly_session("main")
    assert zarr.open_array(ro.store, path="a", mode="r")[1] == 1
    assert zarr.open_array(ro.store, path="b", mode="r")[2] == 2


def test_commit_whose_outcome_stayed_unknown_is_settled_by_the_next_call(
    storage_factory: Callable[[], Storage],
) -> None:
    """Every answer to the swap is lost, so commit() raises TransientStorageError; the
    swap had landed and another writer committed on top. The next commit() (or rebase)
    of the session sees its snapshot in history and returns it: nothing is written
    twice."""
    plain = storage_factory()
    frazil.Repository.create(plain)
    lossy = LosesSwapAnswers(storage_factory(), lose=3)  # every attempt's answer
    mine = frazil.Repository.open(lossy)
    other = frazil.Repository.open(plain)
    s = mine.writable_session("main")
    write(s, "a", 1)

    lossy.after_landing = commits_on_top(other)
    with pytest.raises(TransientStorageError):
        s.commit("mine")
    assert not s.read_only and s.has_uncommitted_changes
    assert history(other) == ["other", "mine", "Repository initialized"]
    lossy.lose = 0
    sid = s.commit("mine again?", rebase_with=BasicConflictSolver())
    assert history(other) == ["other", "mine", "Repository initialized"]
    assert [i.id for i in other.ancestry(branch="main")][1] == sid


def test_plain_lost_answer_without_a_commit_on_top(storage_factory: Callable[[], Storage]) -> None:
    lossy = LosesSwapAnswers(storage_factory())
    repo = frazil.Repository.create(lossy)
    s = repo.writable_session("main")
    write(s, "a", 1)
    sid = s.commit("mine")
    assert history(repo) == ["mine", "Repository initialized"]
    assert repo.lookup_branch("main") == sid


# -- 5. a deleted branch stays deleted -------------------------------------------------------


def test_delete_recreate_and_list(storage_factory: Callable[[], Storage]) -> None:
    repo = frazil.Repository.create(storage_factory())
    tip = repo.lookup_branch("main")
    repo.create_branch("dev", tip)
    s = repo.writable_session("dev")
    write(s, "a", 1)
    stale = repo.writable_session("dev")
    write(stale, "a", 2)
    dev_tip = s.commit("on dev")
    repo.delete_branch("dev")
    assert repo.list_branches() == {"main"}
    with pytest.raises(NotFoundError, match="'dev' does not exist"):
        repo.lookup_branch("dev")
    with pytest.raises(NotFoundError):
        repo.delete_branch("dev")
    # a session of the deleted branch cannot bring it back
    with pytest.raises(NotFoundError, match="'dev'"):
        stale.commit("resurrect?")
    assert repo.list_branches() == {"main"}
    # the name can be used again (unlike a tag's)
    repo.create_branch("dev", dev_tip)
    assert repo.lookup_branch("dev") == dev_tip and repo.list_branches() == {"main", "dev"}
    with pytest.raises(AlreadyExistsError):
        repo.create_branch("dev", tip)
    assert repo.fsck().ok


class PausingLocalStorage(LocalFileSystemStorage):
    """Local storage whose branch swaps stop inside their lock, between comparing the
    version and putting the new ref in place, until released."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.inside = threading.Event()
        self.release = threading.Event()
        self.pause_next = False

    def _write_temp(self, path: str, data: bytes, sync: bool = True) -> str:
        tmp = super()._write_temp(path, data, sync)
        if self.pause_next and "refs/branch.dev" in path and b'"snapshot"' in data:
            self.pause_next = False
            self.inside.set()
            assert self.release.wait(30)
        return tmp


def test_delete_racing_an_in_flight_swap_never_resurrects(tmp_path: Path) -> None:
    """A commit's compare-and-swap on the branch is in flight (past its version check)
    when delete_branch runs. Before the fix the delete removed the file and the swap then
    put the branch back. Now the deletion is itself a compare-and-swap: it waits for the
    swap and deletes after it, or the swap fails; either way the branch is gone when
    delete_branch returns, and stays gone."""
    storage = PausingLocalStorage(tmp_path / "repo")
    repo = frazil.Repository.create(storage)
    repo.create_branch("dev", repo.lookup_branch("main"))
    s = repo.writable_session("dev")
    write(s, "a", 1)
    storage.pause_next = True
    with ThreadPoolExecutor(2) as pool:
        commit = pool.submit(s.commit, "in flight")
        assert storage.inside.wait(30)
        deletion = pool.submit(repo.delete_branch, "dev")
        # give the deletion its chance to run while the swap is paused: an unconditional
        # delete finishes at once; a conditional one waits for the swap's lock (bounded
        # wait, then the swap is released; the outcome checked below holds either way)
        concurrent.futures.wait([deletion], timeout=1)
        storage.release.set()
        deletion.result(timeout=30)
        try:
            commit.result(timeout=30)
        except (NotFoundError, frazil.ConflictError):
            pass
    assert "dev" not in repo.list_branches()
    with pytest.raises(NotFoundError):
        repo.lookup_branch("dev")


@pytest.mark.parametrize("round_", range(3))
def test_delete_races_committers(storage_factory: Callable[[], Storage], round_: int) -> None:
    """Writers commit to a branch in a loop while it is deleted: once delete_branch has
    returned, the branch is absent and no later commit brings it back."""
    repo = frazil.Repository.create(storage_factory())
    repo.create_branch("dev", repo.lookup_branch("main"))
    deleted = threading.Event()
    errors: list[BaseException] = []

    def committer(k: int) -> None:
        for i in range(30):
            try:
                s = repo.writable_session("dev")
            except NotFoundError:
                return
            write(s, f"w{k}", i)
            try:
                s.commit(f"{k}.{i}", rebase_with=ConflictDetector())
            except (NotFoundError, frazil.ConflictError):
                return
            except BaseException as e:  # noqa: BLE001  (reported below)
                errors.append(e)
                return
            if deleted.is_set():
                errors.append(AssertionError("a commit landed after delete_branch returned"))

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(committer, k) for k in range(2)]
        pool.submit(lambda: (repo.delete_branch("dev"), deleted.set())).result(timeout=60)
        for f in futures:
            f.result(timeout=120)
    assert errors == []
    assert "dev" not in repo.list_branches()


# -- 6. concurrent creation: exactly one winner ----------------------------------------------


def _config(i: int) -> RepositoryConfig:
    return RepositoryConfig(inline_chunk_threshold_bytes=100 + i)


@pytest.mark.parametrize("opener", ["create", "open_or_create"])
def test_concurrent_creators_one_winner(
    storage_factory: Callable[[], Storage], opener: str
) -> None:
    n = 8
    barrier = threading.Barrier(n)

    def create(i: int) -> tuple[str, int]:
        barrier.wait(30)
        try:
            repo = getattr(frazil.Repository, opener)(storage_factory(), _config(i))
        except AlreadyExistsError:
            return "lost", i
        return "won", repo.config.inline_threshold

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(create, range(n)))
    fresh = frazil.Repository.open(storage_factory())
    stored = fresh.config.inline_threshold
    if opener == "create":
        winners = [r for r in results if r[0] == "won"]
        assert len(winners) == 1 and winners[0][1] == stored
        assert len([r for r in results if r[0] == "lost"]) == n - 1
    else:
        assert all(r[0] == "won" for r in results)
    assert fresh.list_branches() == {"main"}
    assert len(list(fresh.ancestry(branch="main"))) == 1
    assert fresh.fsck().ok
    # the winner's config is what every later open reads: one of the candidates
    assert stored in {100 + i for i in range(n)}


def test_interrupted_create_is_explained(tmp_path: Path) -> None:
    storage = frazil.local_filesystem_storage(tmp_path / "repo")
    asyncio.run(storage.put("config.json", b'{"format_version": 1, "object_type": "config"}\n'))
    with pytest.raises(AlreadyExistsError, match="being created.*interrupted.*delete it"):
        frazil.Repository.create(storage)


def test_s3_concurrent_creators(s3_server: Any) -> None:
    prefix = s3server.new_prefix()
    n = 6
    barrier = threading.Barrier(n)

    def create(i: int) -> str:
        barrier.wait(30)
        try:
            frazil.Repository.create(s3server.storage(prefix), _config(i))
        except AlreadyExistsError:
            return "lost"
        return "won"

    with ThreadPoolExecutor(n) as pool:
        assert sorted(pool.map(create, range(n))) == ["lost"] * (n - 1) + ["won"]
    assert np.isin(
        frazil.Repository.open(s3server.storage(prefix)).config.inline_threshold,
        [100 + i for i in range(n)],
    )
