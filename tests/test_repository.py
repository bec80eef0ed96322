"""Repository, branches, tags, history, diff and sessions, through the public API."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import numpy as np
import pytest
import zarr

import frazil
from frazil import (
    AlreadyExistsError,
    ConflictError,
    FrazilError,
    InvalidInputError,
    NotFoundError,
    ReadOnlyError,
    Repository,
    RepositoryConfig,
)


def write_array(
    session: frazil.Session,
    path: str = "a",
    value: float = 1.0,
    shape: tuple[int, ...] = (4, 4),
    chunks: tuple[int, ...] = (2, 2),
) -> zarr.Array:
    root = zarr.open_group(session.store, mode="a")
    if path in root:
        arr = root[path]
    else:
        arr = root.create_array(path, shape=shape, chunks=chunks, dtype="f8", fill_value=0.0)
    arr[...] = value
    return arr  # type: ignore[return-value]


def read(session: frazil.Session, path: str = "a") -> np.ndarray:
    return zarr.open_array(session.store, path=path, mode="r")[...]


def test_create_open_exists(storage_factory: Callable[[], frazil.Storage]) -> None:
    storage = storage_factory()
    assert not Repository.exists(storage)
    with pytest.raises(NotFoundError):
        Repository.open(storage)
    repo = Repository.create(storage)
    assert Repository.exists(storage)
    with pytest.raises(AlreadyExistsError):
        Repository.create(storage_factory())
    again = Repository.open(storage_factory())
    assert again.list_branches() == {"main"}
    assert Repository.open_or_create(storage_factory()).lookup_branch("main") == repo.lookup_branch(
        "main"
    )
    [init] = list(again.ancestry(branch="main"))
    assert init.parent_id is None and init.message == "Repository initialized"


def test_config_stored_and_merged(storage_factory: Callable[[], frazil.Storage]) -> None:
    Repository.create(storage_factory(), RepositoryConfig(inline_chunk_threshold_bytes=10))
    repo = Repository.open(storage_factory())
    assert repo.config.inline_chunk_threshold_bytes == 10
    assert repo.config.manifest_split_rows is None  # unset: the default applies
    assert repo.config.split_rows == frazil.config.DEFAULT_MANIFEST_SPLIT_ROWS
    over = Repository.open(storage_factory(), RepositoryConfig(manifest_split_rows=7))
    assert over.config.inline_chunk_threshold_bytes == 10
    assert over.config.manifest_split_rows == 7
    with pytest.raises(InvalidInputError):
        RepositoryConfig(inline_chunk_threshold_bytes=-1)


def test_commit_and_time_travel(repo: Repository) -> None:
    s = repo.writable_session("main")
    assert not s.has_uncommitted_changes
    write_array(s, value=1.0)
    assert s.has_uncommitted_changes
    first = s.commit("one", metadata={"author": "me"})
    assert s.read_only and s.snapshot_id == first
    with pytest.raises(ValueError, match="read-only"):  # zarr refuses mode="a" itself
        write_array(s, value=5.0)
    with pytest.raises(ReadOnlyError):
        s.set_metadata("/b", b'{"zarr_format": 3, "node_type": "group"}')

    s2 = repo.writable_session("main")
    write_array(s2, value=2.0)
    second = s2.commit("two")

    assert (read(repo.readonly_session(snapshot_id=first)) == 1.0).all()
    assert (read(repo.readonly_session("main")) == 2.0).all()
    hist = list(repo.ancestry(branch="main"))
    assert [h.message for h in hist] == ["two", "one", "Repository initialized"]
    assert hist[0].id == second and hist[0].parent_id == first
    assert hist[1].metadata == {"author": "me"}
    assert hist[0].written_at >= hist[1].written_at
    assert repo.lookup_snapshot(first).message == "one"


def test_empty_commit_refused(repo: Repository) -> None:
    s = repo.writable_session("main")
    with pytest.raises(InvalidInputError, match="nothing to commit"):
        s.commit("nothing")


def test_bad_commit_arguments(repo: Repository) -> None:
    s = repo.writable_session("main")
    write_array(s)
    with pytest.raises(InvalidInputError):
        s.commit("x", metadata={"bad": object()})
    with pytest.raises(InvalidInputError):
        s.commit(42)  # type: ignore[arg-type]
    assert s.has_uncommitted_changes  # nothing lost
    s.commit("ok")


def test_conflict_when_branch_moved(repo: Repository) -> None:
    base = repo.lookup_branch("main")
    s1 = repo.writable_session("main")
    s2 = repo.writable_session("main")
    write_array(s1, "a")
    write_array(s2, "b")
    winner = s1.commit("first")
    with pytest.raises(ConflictError) as info:
        s2.commit("second")
    assert info.value.expected_parent == base
    assert info.value.actual_parent == winner
    assert repo.lookup_branch("main") == winner
    assert s2.has_uncommitted_changes  # the loser keeps its changes


def test_branches(repo: Repository) -> None:
    s = repo.writable_session("main")
    write_array(s, value=1.0)
    first = s.commit("one")
    repo.create_branch("dev", first)
    assert repo.list_branches() == {"main", "dev"}
    assert repo.lookup_branch("dev") == first
    with pytest.raises(AlreadyExistsError):
        repo.create_branch("dev", first)

    d = repo.writable_session("dev")
    write_array(d, value=3.0)
    dev_tip = d.commit("on dev")
    assert (read(repo.readonly_session("main")) == 1.0).all()
    assert (read(repo.readonly_session("dev")) == 3.0).all()

    repo.reset_branch("dev", first)
    assert repo.lookup_branch("dev") == first
    with pytest.raises(ConflictError):
        repo.reset_branch("dev", dev_tip, from_snapshot_id=dev_tip)
    repo.reset_branch("dev", dev_tip, from_snapshot_id=first)
    assert repo.lookup_branch("dev") == dev_tip

    repo.delete_branch("dev")
    assert repo.list_branches() == {"main"}
    with pytest.raises(NotFoundError):
        repo.lookup_branch("dev")
    with pytest.raises(KeyError):  # NotFoundError is a KeyError
        repo.writable_session("dev")
    with pytest.raises(InvalidInputError):
        repo.delete_branch("main")
    with pytest.raises(NotFoundError):
        repo.create_branch("x", "0" * 20)


def test_tags_never_move_or_come_back(repo: Repository) -> None:
    s = repo.writable_session("main")
    write_array(s, value=1.0)
    first = s.commit("one")
    repo.create_tag("v1", first)
    assert repo.list_tags() == {"v1"}
    assert repo.lookup_tag("v1") == first
    s = repo.writable_session("main")
    write_array(s, value=2.0)
    s.commit("two")
    assert (read(repo.readonly_session(tag="v1")) == 1.0).all()
    with pytest.raises(AlreadyExistsError):
        repo.create_tag("v1", repo.lookup_branch("main"))
    repo.delete_tag("v1")
    assert repo.list_tags() == set()
    with pytest.raises(NotFoundError):
        repo.lookup_tag("v1")
    with pytest.raises(AlreadyExistsError, match="never reused"):
        repo.create_tag("v1", first)
    with pytest.raises(NotFoundError):
        repo.delete_tag("v1")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a/b",
        "tab\there",
        "nul\x00",
        " padded",
        "x" * 256,
        "back\\slash",
    ],
)
def test_invalid_ref_names(repo: Repository, name: str) -> None:
    sid = repo.lookup_branch("main")
    with pytest.raises(InvalidInputError):
        repo.create_branch(name, sid)
    with pytest.raises(InvalidInputError):
        repo.create_tag(name, sid)
    assert repo.list_branches() == {"main"} and repo.list_tags() == set()


def test_invalid_snapshot_id_and_selectors(repo: Repository) -> None:
    with pytest.raises(InvalidInputError):
        repo.readonly_session(snapshot_id="not-an-id")
    with pytest.raises(InvalidInputError):
        repo.readonly_session("main", tag="x")
    with pytest.raises(NotFoundError):
        repo.readonly_session(snapshot_id="0" * 20)


def test_diff_and_status(repo: Repository) -> None:
    s = repo.writable_session("main")
    root = zarr.open_group(s.store, mode="a")
    root.create_group("g")
    arr = root.create_array("g/x", shape=(6,), chunks=(2,), dtype="i4", fill_value=0)
    arr[:] = np.arange(6)
    st = s.status()
    assert st.new_groups == {"/", "/g"} and st.new_arrays == {"/g/x"}
    assert st.updated_chunks == {"/g/x": [[0], [1], [2]]}
    first = s.commit("one")

    s = repo.writable_session("main")
    root = zarr.open_group(s.store, mode="a")
    root["g/x"][0:2] = 9
    root["g/x"].attrs["units"] = "m"
    root.create_array("y", shape=(2,), chunks=(2,), dtype="i4", fill_value=0)
    second = s.commit("two")
    s = repo.writable_session("main")
    del zarr.open_group(s.store, mode="a")["y"]
    third = s.commit("three")

    d = repo.diff(from_snapshot_id=first, to_snapshot_id=second)
    assert d.new_arrays == {"/y"}
    assert d.updated_arrays == {"/g/x"}
    assert d.updated_chunks == {"/g/x": [[0]]}
    assert d.deleted_arrays == set()
    d2 = repo.diff(from_snapshot_id=first, to_branch="main")
    assert d2.new_arrays == set() and d2.deleted_arrays == set()  # y came and went
    d3 = repo.diff(from_snapshot_id=second, to_snapshot_id=third)
    assert d3.deleted_arrays == {"/y"}
    assert "Deleted arrays" in str(d3)
    back = repo.diff(from_snapshot_id=third, to_snapshot_id=first)  # newer to older works too
    assert not back.new_arrays and not back.deleted_arrays  # /y is in neither
    assert back.updated_arrays == {"/g/x"} and back.updated_chunks == {"/g/x": [[0]]}


def test_discard_changes(repo: Repository) -> None:
    s = repo.writable_session("main")
    write_array(s)
    s.discard_changes()
    assert not s.has_uncommitted_changes
    assert list(zarr.open_group(s.store, mode="a").keys()) == []


def test_inline_and_native_chunks(storage_factory: Callable[[], frazil.Storage]) -> None:
    repo = Repository.create(storage_factory(), RepositoryConfig(inline_chunk_threshold_bytes=40))
    s = repo.writable_session("main")
    root = zarr.open_group(s.store, mode="a")
    small = root.create_array("small", shape=(4,), chunks=(4,), dtype="f8", compressors=None)
    big = root.create_array("big", shape=(100,), chunks=(50,), dtype="f8", compressors=None)
    small[:] = 1.5
    big[:] = np.arange(100)
    s.commit("c")
    chunk_objects = frazil.runtime.run(repo.storage.list("chunks/"))
    assert len(chunk_objects) == 2  # the two big chunks; the small one is inline
    r = repo.readonly_session("main")
    assert (read(r, "small") == 1.5).all() and (read(r, "big") == np.arange(100)).all()


def test_commit_writes_only_the_change(repo: Repository) -> None:
    s = repo.writable_session("main")
    arr = zarr.create_array(s.store, name="a", shape=(100,), chunks=(1,), dtype="i4")
    arr[:] = np.arange(100)
    s.commit("all")
    before = set(frazil.runtime.run(repo.storage.list("manifests/")))
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="a")[5] = -1
    s.commit("one chunk")
    new = set(frazil.runtime.run(repo.storage.list("manifests/"))) - before
    assert len(new) == 1
    data = frazil.runtime.run(repo.storage.get(new.pop()))
    assert frazil.format.decode_manifest(data).coords.tolist() == [[5]]
    values = read(repo.readonly_session("main"))
    assert values[5] == -1 and values[6] == 6


def test_small_changes_to_many_arrays_share_one_manifest(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    PACK_ROWS = 4
    monkeypatch.setattr(frazil.commit, "PACK_ROWS", PACK_ROWS)
    s = repo.writable_session("main")
    root = zarr.open_group(s.store, mode="w")
    sizes = {f"g/a{i}": (i % PACK_ROWS) + 1 for i in range(40)}  # chunks written per array
    sizes["big"] = PACK_ROWS + 1  # too many for a shared object: its own segment
    for path in sizes:
        root.create_array(path, shape=(PACK_ROWS + 10,), chunks=(1,), dtype="i4", fill_value=-1)
    s.commit("arrays")
    for rnd in range(3):
        before = set(frazil.runtime.run(repo.storage.list("manifests/")))
        s = repo.writable_session("main")
        g = zarr.open_group(s.store, mode="r+")
        for path, n in sizes.items():
            g[path][rnd : rnd + n] = np.arange(n) + 1000 * rnd
        s.commit(f"round {rnd}")
        new = set(frazil.runtime.run(repo.storage.list("manifests/"))) - before
        assert len(new) == 2  # one shared by the 40 small deltas, one for "big"
        snap = repo.readonly_session("main")
        segs = {n.path: n.segments[0] for n in snap.nodes() if n.node_type == "array"}
        assert len({segs[f"/g/a{i}"].manifest_id for i in range(40)}) == 1
        assert segs["/big"].manifest_id not in {segs["/g/a0"].manifest_id}
    # a cold reader sees every array's newest values over the older ones
    r = Repository.open(repo.storage).readonly_session("main")
    g = zarr.open_group(r.store, mode="r")
    for path, n in sizes.items():
        want = np.full(PACK_ROWS + 10, -1)
        for rnd in range(3):
            want[rnd : rnd + n] = np.arange(n) + 1000 * rnd
        assert (g[path][:] == want).all(), path


def test_small_deltas_of_every_kind_packed_at_once(repo: Repository) -> None:
    """Arrays of 0, 1 and 2 dimensions, inline and native chunks, deleted chunks (kept for
    an old array, dropped for a new one), and a coordinate too large for a packed key (the
    commit falls back to one table per array): each array reads back what was written."""
    s = repo.writable_session("main")
    root = zarr.open_group(s.store, mode="w")
    shapes = {"d0": ((), ()), "d1": ((8,), (1,)), "d2": ((4, 6), (2, 3)), "wide": ((8,), (4,))}
    for path, (shape, chunks) in shapes.items():
        root.create_array(path, shape=shape, chunks=chunks, dtype="f8", fill_value=-1.0)
    root["d1"][:] = np.arange(8.0)
    s.commit("arrays")
    want = {path: np.asarray(root[path][...]) for path in shapes}

    def check(session: frazil.Session) -> None:
        g = zarr.open_group(session.store, mode="r")
        for path, values in want.items():
            assert np.array_equal(np.asarray(g[path][...]), values), path

    s = repo.writable_session("main")
    g = zarr.open_group(s.store, mode="r+")
    g["d0"][...] = 5.0  # inline
    g["d1"][2] = -1.0  # the fill value: the chunk is deleted, a tombstone over the old one
    g["d1"][6] = 60.0
    g["d2"][2:4, 3:6] = 7.0
    g["wide"][4:8] = np.arange(100.0, 104.0)  # 32 bytes: inline
    fresh = g.create_array("fresh", shape=(4,), chunks=(1,), dtype="f8", fill_value=0.0)
    fresh[1] = 0.0  # a tombstone in a new array: nothing to hide, dropped
    fresh[2] = 2.0
    big = g.create_array("big", shape=(4, 128), chunks=(1, 128), dtype="f8", fill_value=0.0)
    big[3] = np.arange(128.0)  # 1 KiB: a native chunk object
    want["d0"][...] = 5.0
    want["d1"][2], want["d1"][6] = -1.0, 60.0
    want["d2"][2:4, 3:6] = 7.0
    want["wide"][4:8] = np.arange(100.0, 104.0)
    want["fresh"] = np.array([0.0, 0.0, 2.0, 0.0])
    want["big"] = np.zeros((4, 128))
    want["big"][3] = np.arange(128.0)
    before = set(frazil.runtime.run(repo.storage.list("manifests/")))
    s.commit("small changes")
    new = set(frazil.runtime.run(repo.storage.list("manifests/"))) - before
    assert len(new) == 1  # every array's delta in one shared object
    snap = repo.readonly_session("main")
    segs = {n.path: n.segments for n in snap.nodes() if n.node_type == "array"}
    assert segs["/d1"][0].rows == 2  # the tombstone and the new chunk
    assert segs["/fresh"][0].rows == 1  # the new array's tombstone was dropped
    check(Repository.open(repo.storage).readonly_session("main"))

    # a coordinate past what a packed key holds (2 x 31 bits): the per-array fallback
    s = repo.writable_session("main")
    g = zarr.open_group(s.store, mode="r+")
    far = g.create_array("far", shape=(1 << 40, 2), chunks=(1, 2), dtype="f8", fill_value=0.0)
    far[(1 << 35) + 3] = [1.0, 2.0]
    g["d2"][0:2, 0:3] = 3.0
    want["d2"][0:2, 0:3] = 3.0
    s.commit("far")
    r = Repository.open(repo.storage).readonly_session("main")
    check(r)
    back = zarr.open_array(r.store, path="far", mode="r")
    assert back[(1 << 35) + 3].tolist() == [1.0, 2.0] and back[5].tolist() == [0.0, 0.0]


def test_manifest_split(storage_factory: Callable[[], frazil.Storage]) -> None:
    repo = Repository.create(storage_factory(), RepositoryConfig(manifest_split_rows=10))
    s = repo.writable_session("main")
    arr = zarr.create_array(s.store, name="a", shape=(95,), chunks=(1,), dtype="i4")
    arr[:] = np.arange(95)
    s.commit("x")
    assert len(frazil.runtime.run(repo.storage.list("manifests/"))) == 10
    assert (
        read(Repository.open(storage_factory()).readonly_session("main")) == np.arange(95)
    ).all()


def test_repository_pickles(storage_factory: Callable[[], frazil.Storage]) -> None:
    repo = Repository.create(storage_factory())
    clone = pickle.loads(pickle.dumps(repo))
    assert clone.lookup_branch("main") == repo.lookup_branch("main")
    assert pickle.loads(pickle.dumps(repo.config)) == repo.config
    s = repo.writable_session("main")
    with pytest.raises(FrazilError, match="fork"):
        pickle.dumps(s)
    ro = pickle.loads(pickle.dumps(repo.readonly_session("main")))
    assert ro.read_only and ro.snapshot_id == repo.lookup_branch("main")


def test_error_hierarchy() -> None:
    for cls in (
        ConflictError,
        NotFoundError,
        AlreadyExistsError,
        ReadOnlyError,
        InvalidInputError,
        frazil.StorageError,
        frazil.FormatError,
    ):
        assert issubclass(cls, FrazilError)
    assert issubclass(NotFoundError, KeyError) and issubclass(InvalidInputError, ValueError)


def test_not_a_repository(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "junk.txt").write_text("x")
    storage = frazil.local_filesystem_storage(tmp_path)
    with pytest.raises(NotFoundError, match="no frazil repository"):
        Repository.open(storage)
    with pytest.raises(AlreadyExistsError, match="not empty"):
        Repository.create(storage)
    assert [p.name for p in tmp_path.iterdir()] == ["junk.txt"]  # nothing written
