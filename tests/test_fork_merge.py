"""Fork and merge: ForkSession rules and pickling, merging forks' changes and the conflicts
that stop a merge, forks equal to serial writes (hypothesis), forks in worker processes
under every multiprocessing start method, and the timing of a large merge."""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing as mp
import os
import pickle
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.core.sync import sync

import frazil
from frazil import runtime

DUMPERS: dict[str, Callable[[Any], Any]] = {
    "pickle": lambda obj: pickle.loads(pickle.dumps(obj)),
    "cloudpickle": lambda obj: cloudpickle.loads(cloudpickle.dumps(obj)),
}


def roundtrip(obj: Any, how: str = "pickle") -> Any:
    return DUMPERS[how](obj)


def setup_repo(repo: frazil.Repository) -> str:
    """An 8x8 int array ``a`` (chunks 2x2, all written) and a 1-D float array ``big`` whose
    chunks are too large to inline; returns the snapshot id."""
    s = repo.writable_session("main")
    zarr.create_group(s.store, attributes={"title": "fork tests"})
    a = zarr.create_array(s.store, name="a", shape=(8, 8), chunks=(2, 2), dtype="i4", fill_value=-1)
    a[:] = np.arange(64, dtype="i4").reshape(8, 8)
    zarr.create_array(
        s.store,
        name="big",
        shape=(400,),
        chunks=(100,),
        dtype="f8",
        fill_value=0.0,
        compressors=None,
    )
    return s.commit("setup")


def read(repo: frazil.Repository, path: str) -> np.ndarray:
    return zarr.open_array(repo.readonly_session("main").store, path=path)[...]


def arr(session: frazil.Session, path: str = "a") -> zarr.Array:
    return zarr.open_array(session.store, path=path)


# -- fork rules -------------------------------------------------------------------------------


def test_fork_with_uncommitted_changes_raises(repo: frazil.Repository) -> None:
    setup_repo(repo)
    s = repo.writable_session("main")
    arr(s)[0, 0] = 100
    with pytest.raises(frazil.InvalidInputError, match="commit first, then fork"):
        s.fork()
    s.commit("write")
    # metadata-only changes count too
    s = repo.writable_session("main")
    arr(s).attrs["x"] = 1
    with pytest.raises(frazil.InvalidInputError, match="commit first, then fork"):
        s.fork()


def test_fork_of_read_only_session_raises(repo: frazil.Repository) -> None:
    setup_repo(repo)
    with pytest.raises(frazil.ReadOnlyError):
        repo.readonly_session("main").fork()
    s = repo.writable_session("main")
    arr(s)[0, 0] = 100
    s.commit("now read-only")
    with pytest.raises(frazil.ReadOnlyError):
        s.fork()


def test_fork_session_cannot_commit_rebase_or_fork(repo: frazil.Repository) -> None:
    sid = setup_repo(repo)
    fork = repo.writable_session("main").fork()
    assert isinstance(fork, frazil.ForkSession)
    assert not fork.read_only and fork.snapshot_id == sid and fork.branch == "main"
    arr(fork)[0, 0] = 100
    with pytest.raises(frazil.InvalidInputError, match="cannot commit.*merge"):
        fork.commit("nope")
    with pytest.raises(frazil.InvalidInputError, match="cannot commit"):
        asyncio.run(fork.commit_async("nope"))
    with pytest.raises(frazil.InvalidInputError, match="cannot rebase"):
        fork.rebase(frazil.ConflictDetector())
    with pytest.raises(frazil.InvalidInputError, match="cannot be forked"):
        fork.fork()
    assert repo.lookup_branch("main") == sid
    assert fork.has_uncommitted_changes  # the failed calls left the fork as it was


def test_pickling_writable_session_raises(repo: frazil.Repository) -> None:
    setup_repo(repo)
    s = repo.writable_session("main")
    for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)):
        with pytest.raises(frazil.InvalidInputError, match=r"fork\(\)"):
            dumps(s)
        # its store pickles as a store that refuses every call with the fix (so that a
        # dask task using it fails with this message, not with a serialization error)
        detached = loads(dumps(s.store))
        with pytest.raises(frazil.InvalidInputError, match=r"fork\(\).*to_frazil"):
            zarr.open_array(detached, path="a", mode="r")
        with pytest.raises(frazil.InvalidInputError, match=r"fork\(\).*to_frazil"):
            zarr.create_array(detached, name="x", shape=(1,), dtype="i1")
    # a read-only session pickles (as a read-only session at the same snapshot)
    ro = roundtrip(repo.readonly_session("main"))
    assert ro.read_only and not isinstance(ro, frazil.ForkSession)


@pytest.mark.parametrize("how", sorted(DUMPERS))
def test_fork_session_roundtrips_with_its_changes(repo: frazil.Repository, how: str) -> None:
    sid = setup_repo(repo)
    fork = repo.writable_session("main").fork()
    arr(fork)[0:2, 0:2] = 7
    arr(fork, "big")[100:200] = np.arange(100.0)  # a chunk stored as its own object
    zarr.create_array(fork.store, name="g/new", shape=(4,), chunks=(2,), dtype="i2")[:] = 3
    before = fork.status()

    back = roundtrip(fork, how)
    assert type(back) is frazil.ForkSession
    assert back.snapshot_id == sid and back.branch == "main" and not back.read_only
    assert back.has_uncommitted_changes
    assert back.status() == before
    assert (arr(back)[0:2, 0:2] == 7).all()
    np.testing.assert_array_equal(arr(back, "big")[100:200], np.arange(100.0))
    np.testing.assert_array_equal(arr(back, "g/new")[:], [3, 3, 3, 3])

    # the store pickles with its fork; both keep working after a second trip
    store = roundtrip(roundtrip(fork.store, how), how)
    assert type(store.session) is frazil.ForkSession and not store.read_only
    arr(store.session)[7, 7] = -5
    assert arr(store.session)[7, 7] == -5
    assert arr(fork)[7, 7] == 63  # a copy: the original fork did not see that write

    s = repo.writable_session("main")
    s.merge(back)
    s.commit("merged a pickled fork")
    assert (read(repo, "a")[0:2, 0:2] == 7).all()
    np.testing.assert_array_equal(read(repo, "big")[100:200], np.arange(100.0))
    np.testing.assert_array_equal(read(repo, "g/new"), [3, 3, 3, 3])


@pytest.mark.parametrize("how", sorted(DUMPERS))
def test_repository_and_config_pickle(repo: frazil.Repository, how: str) -> None:
    sid = setup_repo(repo)
    back = roundtrip(repo, how)
    assert isinstance(back, frazil.Repository)
    assert back.lookup_branch("main") == sid
    np.testing.assert_array_equal(read(back, "a"), read(repo, "a"))
    assert back.config == repo.config
    for config in (
        frazil.RepositoryConfig.default(),
        frazil.RepositoryConfig(),
        frazil.RepositoryConfig(inline_chunk_threshold_bytes=0, manifest_split_rows=10),
    ):
        assert roundtrip(config, how) == config


# -- merge ------------------------------------------------------------------------------------


def test_merge_disjoint_forks(repo: frazil.Repository) -> None:
    setup_repo(repo)
    s = repo.writable_session("main")
    forks = [s.fork() for _ in range(4)]
    for i, fork in enumerate(forks):
        arr(fork)[2 * i : 2 * i + 2, :] = 100 + i  # one row of chunks each
        arr(fork, "big")[100 * i : 100 * i + 100] = np.full(100, 1.5 * i)
    forks = [roundtrip(f, how) for f, how in zip(forks, itertools.cycle(sorted(DUMPERS)))]
    s.merge(*forks)
    assert s.has_uncommitted_changes
    s.commit("merged")
    expected = np.repeat(100 + np.arange(4), 2)[:, None] * np.ones((1, 8), "i4")
    np.testing.assert_array_equal(read(repo, "a"), expected)
    np.testing.assert_array_equal(read(repo, "big"), np.repeat(1.5 * np.arange(4), 100))


def test_merge_in_several_calls_and_empty_forks(repo: frazil.Repository) -> None:
    setup_repo(repo)
    s = repo.writable_session("main")
    f1, f2, empty = s.fork(), s.fork(), s.fork()
    arr(f1)[0, 0] = 1
    arr(f2)[7, 7] = 2
    s.merge()
    assert not s.has_uncommitted_changes
    s.merge(f1)
    s.merge(f2, empty)
    s.commit("two merges")
    a = read(repo, "a")
    assert a[0, 0] == 1 and a[7, 7] == 2 and a[0, 1] == 1  # the rest of chunk (0, 0) kept


def test_merge_same_chunk_conflict(repo: frazil.Repository) -> None:
    sid = setup_repo(repo)
    s = repo.writable_session("main")
    f1, f2, f3 = s.fork(), s.fork(), s.fork()
    arr(f1)[0, 0] = 1  # chunk (0, 0)
    arr(f2)[2, 4] = 2  # chunk (1, 2)
    arr(f3)[3, 5] = 3  # chunk (1, 2) again
    arr(f3)[6, 6] = 3  # chunk (3, 3): fine on its own
    s.merge(f1)
    before = s.status()
    with pytest.raises(frazil.ConflictError) as info:
        s.merge(roundtrip(f2), roundtrip(f3))
    message = str(info.value)
    assert "/a" in message and "[1, 2]" in message and "ChunkDoubleUpdate" in message
    assert "[3, 3]" not in message
    [conflict] = info.value.conflicts
    assert isinstance(conflict, frazil.Conflict)
    assert conflict.conflict_type == frazil.ConflictType.ChunkDoubleUpdate
    assert conflict.path == "/a" and conflict.conflicted_chunks == ((1, 2),)

    # nothing of f2 or f3 was merged: the session holds f1's change only
    assert s.status() == before
    s.commit("only f1")
    a = read(repo, "a")
    expected = np.arange(64).reshape(8, 8)
    expected[0, 0] = 1
    np.testing.assert_array_equal(a, expected)
    assert repo.lookup_snapshot(repo.lookup_branch("main")).parent_id == sid


def test_merge_conflict_reports_every_chunk(repo: frazil.Repository) -> None:
    setup_repo(repo)
    s = repo.writable_session("main")
    f1, f2 = s.fork(), s.fork()
    arr(f1)[0:4, 0:4] = 1
    arr(f2)[2:8, 2:4] = 2
    with pytest.raises(frazil.ConflictError) as info:
        s.merge(f1, f2)
    [conflict] = info.value.conflicts
    assert conflict.conflict_type == frazil.ConflictType.ChunkDoubleUpdate
    assert set(conflict.conflicted_chunks or ()) == {(1, 1)}
    assert not s.has_uncommitted_changes


def test_fork_and_session_write_the_same_chunk(repo: frazil.Repository) -> None:
    setup_repo(repo)
    s = repo.writable_session("main")
    fork = s.fork()
    arr(fork)[4, 4] = 1
    arr(s)[5, 5] = 2  # the session writes after forking, into the same chunk (2, 2)
    arr(s)[0, 0] = 2
    before = s.status()
    with pytest.raises(frazil.ConflictError) as info:
        s.merge(roundtrip(fork))
    assert "/a" in str(info.value) and "[2, 2]" in str(info.value)
    assert [c.conflict_type for c in info.value.conflicts] == [
        frazil.ConflictType.ChunkDoubleUpdate
    ]
    assert s.status() == before


def test_session_writes_after_forking_merge_when_disjoint(repo: frazil.Repository) -> None:
    setup_repo(repo)
    s = repo.writable_session("main")
    fork = s.fork()
    arr(fork)[4, 4] = 1
    arr(s)[0, 0] = 2
    s.merge(roundtrip(fork))
    s.commit("both")
    a = read(repo, "a")
    assert a[4, 4] == 1 and a[0, 0] == 2


def test_same_new_node_in_two_forks_becomes_one(repo: frazil.Repository) -> None:
    setup_repo(repo)
    s = repo.writable_session("main")
    forks = [s.fork() for _ in range(3)]
    for i, fork in enumerate(forks):
        # identical metadata for the new group /g and array /g/b, created in every fork
        new = zarr.create_array(
            fork.store,
            name="g/b",
            shape=(6, 3),
            chunks=(2, 3),
            dtype="f4",
            fill_value=np.nan,
            attributes={"units": "m"},
        )
        new[2 * i : 2 * i + 2] = i + 0.5
    forks = [roundtrip(f) for f in forks]
    s.merge(*forks)
    paths = [n.path for n in s.nodes()]
    assert paths.count("/g") == 1 and paths.count("/g/b") == 1
    s.commit("one new array from three forks")
    np.testing.assert_array_equal(
        read(repo, "g/b"), np.repeat(np.arange(3) + 0.5, 2)[:, None] * np.ones((1, 3))
    )
    ro = repo.readonly_session("main")
    assert [n.path for n in ro.nodes()].count("/g/b") == 1
    assert zarr.open_array(ro.store, path="g/b").attrs["units"] == "m"


def test_same_path_different_metadata_conflicts(repo: frazil.Repository) -> None:
    setup_repo(repo)
    s = repo.writable_session("main")
    f1, f2 = s.fork(), s.fork()
    zarr.create_array(f1.store, name="c", shape=(8,), chunks=(2,), dtype="i4")
    zarr.create_array(f2.store, name="c", shape=(8,), chunks=(4,), dtype="i4")
    with pytest.raises(frazil.ConflictError) as info:
        s.merge(f1, f2)
    assert "/c" in str(info.value)
    assert [(c.conflict_type, c.path) for c in info.value.conflicts] == [
        (frazil.ConflictType.NewNodeConflictsWithExistingNode, "/c")
    ]
    assert not s.has_uncommitted_changes
    # an array in one fork and a group in the other also collide
    g1, g2 = s.fork(), s.fork()
    zarr.create_array(g1.store, name="d", shape=(8,), chunks=(2,), dtype="i4")
    zarr.create_group(g2.store, path="d")
    with pytest.raises(frazil.ConflictError, match="/d"):
        s.merge(g1, g2)


def test_metadata_updates_in_forks(repo: frazil.Repository) -> None:
    setup_repo(repo)
    s = repo.writable_session("main")
    f1, f2, f3 = s.fork(), s.fork(), s.fork()
    arr(f1).attrs["owner"] = "f1"
    arr(f2)[0, 0] = 99  # chunks of an array whose attributes another fork updates: fine
    arr(f3).attrs["owner"] = "f3"
    s.merge(f1, f2)
    with pytest.raises(frazil.ConflictError) as info:
        s.merge(f3)
    assert [(c.conflict_type, c.path) for c in info.value.conflicts] == [
        (frazil.ConflictType.ZarrMetadataDoubleUpdate, "/a")
    ]
    s.commit("attrs and data")
    a = zarr.open_array(repo.readonly_session("main").store, path="a")
    assert a.attrs["owner"] == "f1" and a[0, 0] == 99


def test_delete_in_one_fork_and_write_in_another_conflict(repo: frazil.Repository) -> None:
    setup_repo(repo)
    s = repo.writable_session("main")
    deleter, writer = s.fork(), s.fork()
    assert deleter.delete_node("/big")
    arr(writer, "big")[0] = 1.0
    with pytest.raises(frazil.ConflictError) as info:
        s.merge(deleter, writer)
    assert [(c.conflict_type, c.path) for c in info.value.conflicts] == [
        (frazil.ConflictType.ChunksUpdatedInDeletedArray, "/big")
    ]
    with pytest.raises(frazil.ConflictError) as info:
        s.merge(writer, deleter)
    assert [(c.conflict_type, c.path) for c in info.value.conflicts] == [
        (frazil.ConflictType.DeleteOfUpdatedArray, "/big")
    ]
    assert not s.has_uncommitted_changes
    # the same delete in two forks is no conflict
    other = s.fork()
    assert other.delete_node("/big")
    s.merge(deleter, other)
    s.commit("deleted big")
    assert repo.readonly_session("main").node("/big") is None


def _replace_a(session: frazil.Session, **attributes: Any) -> zarr.Array:
    """Re-create ``a`` (a new node, no chunks) with the same metadata it had."""
    return zarr.create_array(
        session.store,
        name="a",
        shape=(8, 8),
        chunks=(2, 2),
        dtype="i4",
        fill_value=-1,
        attributes=attributes,
        overwrite=True,
    )


@pytest.mark.parametrize("order", ["update first", "replacement first"])
def test_update_and_replacement_of_an_array_conflict(repo: frazil.Repository, order: str) -> None:
    """One fork updates ``a``'s attributes, the other replaces ``a`` by a new array with
    byte-identical metadata: different nodes, so a conflict (a merge into one node would
    bring back the chunks the replacement dropped)."""
    setup_repo(repo)
    s = repo.writable_session("main")
    updater, replacer = s.fork(), s.fork()
    arr(updater).attrs["k"] = 1
    _replace_a(replacer, k=1)[0:2, 0:2] = 9
    assert updater.node("/a").zarr_json == replacer.node("/a").zarr_json  # type: ignore
    forks = [updater, replacer] if order == "update first" else [replacer, updater]
    with pytest.raises(frazil.ConflictError) as info:
        s.merge(*forks)
    types = {c.conflict_type for c in info.value.conflicts}
    assert frazil.ConflictType.NewNodeConflictsWithExistingNode in types
    assert {c.path for c in info.value.conflicts} == {"/a"}
    assert not s.has_uncommitted_changes


def test_same_replacement_in_two_forks_becomes_one(repo: frazil.Repository) -> None:
    setup_repo(repo)
    s = repo.writable_session("main")
    f1, f2 = s.fork(), s.fork()
    _replace_a(f1)[0:2, :] = 1
    _replace_a(f2)[6:8, :] = 2
    s.merge(f1, f2)
    s.commit("replaced a")
    expected = np.full((8, 8), -1)  # the base chunks went with the old array
    expected[0:2], expected[6:8] = 1, 2
    np.testing.assert_array_equal(read(repo, "a"), expected)


@pytest.mark.parametrize("order", ["delete first", "create first"])
def test_new_node_under_group_deleted_in_other_fork_conflicts(
    repo: frazil.Repository, order: str
) -> None:
    """Merging both would leave ``/g/y`` without its parent group."""
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="g/x", shape=(4,), chunks=(2,), dtype="i4")[:] = 1
    s.commit("g")
    s = repo.writable_session("main")
    deleter, creator = s.fork(), s.fork()
    assert deleter.delete_tree("/g") == 2
    zarr.create_array(creator.store, name="g/y", shape=(4,), chunks=(2,), dtype="i4")[:] = 7
    forks = [deleter, creator] if order == "delete first" else [creator, deleter]
    with pytest.raises(frazil.ConflictError) as info:
        s.merge(*forks)
    assert [(c.conflict_type, c.path) for c in info.value.conflicts] == [
        (frazil.ConflictType.NewNodeInInvalidGroup, "/g/y")
    ]
    assert not s.has_uncommitted_changes
    # deleting the group in one fork and creating elsewhere in another is fine
    other = s.fork()
    zarr.create_array(other.store, name="h/y", shape=(4,), chunks=(2,), dtype="i4")[:] = 7
    s.merge(deleter, other)
    s.commit("moved")
    ro = repo.readonly_session("main")
    assert [n.path for n in ro.nodes()] == ["/", "/h", "/h/y"]


def test_merge_fork_from_another_base_raises(repo: frazil.Repository) -> None:
    setup_repo(repo)
    old = repo.writable_session("main")
    stale = old.fork()
    arr(stale)[0, 0] = 1
    s = repo.writable_session("main")
    arr(s)[7, 7] = 2
    s.commit("move main")
    s = repo.writable_session("main")
    with pytest.raises(frazil.InvalidInputError, match="snapshot"):
        s.merge(stale)
    assert not s.has_uncommitted_changes
    # the session it was forked from (still at the old base) takes it, but cannot commit
    old.merge(stale)
    with pytest.raises(frazil.ConflictError):
        old.commit("stale")


def test_merge_takes_only_fork_sessions(repo: frazil.Repository) -> None:
    setup_repo(repo)
    s = repo.writable_session("main")
    other = repo.writable_session("main")
    arr(other)[0, 0] = 1
    for bad in (other, repo.readonly_session("main"), "fork", None):
        with pytest.raises(frazil.InvalidInputError, match="ForkSession"):
            s.merge(bad)  # type: ignore[arg-type]
    fork = s.fork()
    arr(fork)[0, 0] = 1
    with pytest.raises(frazil.InvalidInputError):
        s.merge(fork, other)  # type: ignore[arg-type]
    assert not s.has_uncommitted_changes
    with pytest.raises(frazil.ReadOnlyError):
        repo.readonly_session("main").merge(fork)


# -- forks equal serial writes (hypothesis) ----------------------------------------------------


@st.composite
def fork_plans(draw: st.DrawFn, overlap: bool = False) -> dict[str, Any]:
    """An array shape, and per fork a list of (chunk coord, value) writes; the chunk sets of
    the forks are disjoint (a partition of some chunks), unless ``overlap``, which adds one
    chunk to two forks."""
    ndim = draw(st.integers(1, 2))
    grid = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    chunks = tuple(draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)))
    nforks = draw(st.integers(2 if overlap else 1, 4))
    coords = list(itertools.product(*(range(n) for n in grid)))
    # each chunk goes to one fork, or to none (-1); 0 is the fill value, so some writes
    # delete a chunk the base has
    owner = draw(st.lists(st.integers(-1, nforks - 1), min_size=len(coords), max_size=len(coords)))
    values = draw(st.lists(st.integers(-2, 5), min_size=len(coords), max_size=len(coords)))
    writes: list[list[tuple[tuple[int, ...], int]]] = [[] for _ in range(nforks)]
    for c, o, v in zip(coords, owner, values):
        if o >= 0:
            writes[o].append((c, v))
    if overlap:
        a, b = draw(st.lists(st.integers(0, nforks - 1), min_size=2, max_size=2, unique=True))
        c = draw(st.sampled_from(coords))
        v = draw(st.integers(-2, 5))
        writes = [[w for w in ws if w[0] != c] for ws in writes]
        writes[a].append((c, v))
        writes[b].append((c, v + 1))
    for w in writes:
        w[:] = draw(st.permutations(w))
    return {
        "grid": grid,
        "chunks": chunks,
        "writes": writes,
        "inline": draw(st.booleans()),
        "base_written": draw(st.booleans()),
        "conflict": overlap and (c, a, b),
    }


def plan_repo(plan: dict[str, Any]) -> frazil.Repository:
    config = frazil.RepositoryConfig(inline_chunk_threshold_bytes=None if plan["inline"] else 0)
    repo = frazil.Repository.create(frazil.in_memory_storage(), config)
    s = repo.writable_session("main")
    shape = tuple(g * c for g, c in zip(plan["grid"], plan["chunks"]))
    a = zarr.create_array(
        s.store, name="v", shape=shape, chunks=plan["chunks"], dtype="i4", fill_value=0
    )
    if plan["base_written"]:
        a[...] = np.arange(1, a.size + 1, dtype="i4").reshape(shape)
    s.commit("base")
    return repo


def write_chunks(
    session: frazil.Session, plan: dict[str, Any], writes: list[tuple[tuple[int, ...], int]]
) -> None:
    a = arr(session, "v")
    for coord, value in writes:
        a[tuple(slice(i * n, (i + 1) * n) for i, n in zip(coord, plan["chunks"]))] = value


def contents(repo: frazil.Repository) -> tuple[np.ndarray, list[str]]:
    store = repo.readonly_session("main").store

    async def keys() -> list[str]:
        return sorted([k async for k in store.list_prefix("v/")])

    return zarr.open_array(store, path="v")[...], sync(keys())


HYPOTHESIS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYPOTHESIS
@given(plan=fork_plans())
def test_forks_merged_equal_serial_writes(plan: dict[str, Any]) -> None:
    forked, serial = plan_repo(plan), plan_repo(plan)

    s = forked.writable_session("main")
    forks = [s.fork() for _ in plan["writes"]]
    returned = []
    for i, (fork, writes) in enumerate(zip(forks, plan["writes"])):
        write_chunks(fork, plan, writes)
        returned.append(roundtrip(fork, "cloudpickle" if i % 2 else "pickle"))
    s.merge(*returned)
    if s.has_uncommitted_changes:
        s.commit("forks")

    t = serial.writable_session("main")
    for writes in plan["writes"]:
        write_chunks(t, plan, writes)
    if t.has_uncommitted_changes:
        t.commit("serial")

    (fa, fk), (sa, sk) = contents(forked), contents(serial)
    np.testing.assert_array_equal(fa, sa)
    assert fk == sk


@HYPOTHESIS
@given(plan=fork_plans(overlap=True))
def test_forks_writing_a_common_chunk_always_conflict(plan: dict[str, Any]) -> None:
    repo = plan_repo(plan)
    coord, a, b = plan["conflict"]
    s = repo.writable_session("main")
    forks = [s.fork() for _ in plan["writes"]]
    for fork, writes in zip(forks, plan["writes"]):
        write_chunks(fork, plan, writes)
    with pytest.raises(frazil.ConflictError) as info:
        s.merge(*(roundtrip(f) for f in forks))
    [conflict] = info.value.conflicts
    assert conflict.conflict_type == frazil.ConflictType.ChunkDoubleUpdate
    assert conflict.path == "/v" and conflict.conflicted_chunks == (coord,)
    assert str(list(coord)) in str(info.value)
    assert not s.has_uncommitted_changes


# -- worker processes -------------------------------------------------------------------------


def _fill_rows(fork: frazil.ForkSession, row: int, value: float) -> tuple[Any, int, bool]:
    """A worker: writes chunk row ``row`` of ``a`` and chunk ``row`` of ``big``."""
    assert isinstance(fork, frazil.ForkSession)
    zarr.open_array(fork.store, path="a")[2 * row : 2 * row + 2, :] = int(value)
    zarr.open_array(fork.store, path="big")[100 * row : 100 * row + 100] = value
    return fork, os.getpid(), runtime._thread is not None and runtime._thread.is_alive()


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_sessions_in_worker_processes(tmp_path: Path, method: str) -> None:
    if method not in mp.get_all_start_methods():
        pytest.skip(f"no {method!r} start method here")
    repo = frazil.Repository.create(frazil.local_filesystem_storage(tmp_path / "repo"))
    setup_repo(repo)
    read(repo, "big")  # the parent has used frazil: its loop thread and pool exist
    assert runtime._thread is not None and runtime._thread.is_alive() and runtime._pool is not None

    s = repo.writable_session("main")
    with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context(method)) as ex:
        fork = s.fork()
        futures = [ex.submit(_fill_rows, fork, row, 10.0 + row) for row in range(4)]
        results = [f.result(timeout=120) for f in futures]
    remote = [r[0] for r in results]
    assert all(pid != os.getpid() for _, pid, _ in results)
    assert all(alive for _, _, alive in results)
    assert not fork.has_uncommitted_changes  # the workers changed copies
    s.merge(*remote)
    s.commit(f"writes from {method} workers")
    expected = np.repeat(10 + np.arange(4), 2)[:, None] * np.ones((1, 8), "i4")
    np.testing.assert_array_equal(read(repo, "a"), expected)
    np.testing.assert_array_equal(read(repo, "big"), np.repeat(10.0 + np.arange(4), 100))


# -- timing -----------------------------------------------------------------------------------


def test_merge_timing_8_forks_of_10k_chunks(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints the figure of bench/bench_merge.py (one run); asserts correctness only."""
    import bench_merge  # bench/ (on the path: tests/conftest.py)

    result = bench_merge.main(["--forks", "8", "--chunks", "10000", "--repeat", "1"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == result and result["merge_plus_commit_s"] > 0
    with capsys.disabled():
        print(
            f"\nmerge + commit of 8 forks x 10,000 chunks: "
            f"{result['merge_plus_commit_s']:.3f} s (merge {result['merge_s']:.3f} s, "
            f"commit {result['commit_s']:.3f} s)"
        )
