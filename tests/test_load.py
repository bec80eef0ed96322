"""Load: 4 writer and 4 reader threads on one local repository (bench/bench_load.py); no torn
reads, every returned commit in history exactly once, final content as committed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from bench_load import LoadResult, run_load  # bench/ (on the path: tests/conftest.py)

import frazil


def check(result: LoadResult) -> None:
    assert result.errors == []
    assert result.torn == []
    # every thread got through at least one round (its first starts before the deadline)
    assert {c.writer for c in result.commits} == set(range(result.writers))
    assert len(result.read_latency_s) == len(result.reads) >= result.readers
    last: dict[int, int] = {}
    for w in range(result.writers):  # each writer's commits are 1..n, each returned once
        ks = sorted(c.k for c in result.commits if c.writer == w)
        assert ks == list(range(1, len(ks) + 1))
        last[w] = ks[-1]
    committed = {(c.writer, c.k) for c in result.commits}
    for w, v in result.reads:  # only committed values (0: before the writer's first)
        assert v == 0 or (w, v) in committed, (w, v)

    repo = frazil.Repository.open(frazil.local_filesystem_storage(str(result.root)))
    history = list(repo.ancestry(branch="main"))
    ids = [i.id for i in history]
    assert len(ids) == len(set(ids)) == len(result.commits) + 2  # + arrays + first
    by_id = {i.id: i for i in history}
    for c in result.commits:
        info = by_id[c.snapshot_id]  # the id commit() returned is in history
        assert (info.metadata["writer"], info.metadata["k"]) == (c.writer, c.k)
    in_history = sorted(
        (i.metadata["writer"], i.metadata["k"]) for i in history if "writer" in i.metadata
    )
    assert in_history == sorted(committed)  # exactly once each, nothing else

    store = repo.readonly_session("main").store
    for w, k in last.items():
        assert (np.asarray(zarr.open_array(store, path=f"w{w}", mode="r")[:]) == k).all()
    shared = np.asarray(zarr.open_array(store, path="shared", mode="r")[:])
    assert shared.tolist() == [last[w] if result.shares(w) else 0 for w in range(result.writers)]
    assert repo.fsck().ok


def test_load_short(tmp_path: Path) -> None:
    result = run_load(tmp_path / "repo", seconds=3.0)
    check(result)
    summary = result.summary()
    print(summary)
    assert summary["reads"] == len(result.reads) and summary["commits"] == len(result.commits)


@pytest.mark.slow
def test_load_60s(tmp_path: Path) -> None:
    check(run_load(tmp_path / "repo", seconds=60.0))
