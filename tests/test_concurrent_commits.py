"""Several processes committing to one branch of a local repository: one winner per
swap, losers get ConflictError, nothing is lost."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import zarr

import frazil

PROCESSES = 4
COMMITS_EACH = 5


def _committer(root: str, worker: int, barrier: mp.synchronize.Barrier, results: mp.Queue) -> None:  # type: ignore[type-arg]
    try:
        repo = frazil.Repository.open(frazil.local_filesystem_storage(root))
        conflicts = 0
        barrier.wait()
        for i in range(COMMITS_EACH):
            while True:
                session = repo.writable_session("main")
                arr = zarr.open_array(session.store, path="counts")
                arr[worker * COMMITS_EACH + i] = worker * 100 + i
                try:
                    session.commit(f"worker {worker} commit {i}")
                    break
                except frazil.ConflictError:
                    conflicts += 1
        results.put((worker, conflicts, None))
    except BaseException as e:  # report, never hang the parent
        results.put((worker, -1, repr(e)))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_processes_commit_without_loss(tmp_path: Path, method: str) -> None:
    root = str(tmp_path / "repo")
    repo = frazil.Repository.create(frazil.local_filesystem_storage(root))
    s = repo.writable_session("main")
    zarr.create_array(
        s.store,
        name="counts",
        shape=(PROCESSES * COMMITS_EACH,),
        chunks=(1,),
        dtype="i4",
        fill_value=-1,
    )
    s.commit("create")

    ctx = mp.get_context(method)
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_committer, args=(root, w, barrier, results)) for w in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [o for o in outcomes if o[2] is not None] == []

    history = list(repo.ancestry(branch="main"))
    messages = [h.message for h in history]
    assert len(messages) == PROCESSES * COMMITS_EACH + 2
    for w in range(PROCESSES):
        for i in range(COMMITS_EACH):
            assert messages.count(f"worker {w} commit {i}") == 1
    # a linear chain: every parent is the next entry
    for child, parent in zip(history, history[1:]):
        assert child.parent_id == parent.id
    values = zarr.open_array(repo.readonly_session("main").store, path="counts")[:]
    expected = np.array([w * 100 + i for w in range(PROCESSES) for i in range(COMMITS_EACH)])
    assert (values == expected).all()
