"""``Session.shift_array`` (Icechunk 2.x): chunks move by whole chunks, out-of-grid ones are
dropped, vacated positions read as the fill value, and no chunk bytes are rewritten."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

import frazil
from frazil.conflicts import ConflictDetector


def make(tmp_path: Path) -> frazil.Repository:
    repo = frazil.Repository.create(
        frazil.local_filesystem_storage(tmp_path / "repo"),
        frazil.RepositoryConfig(inline_chunk_threshold_bytes=0),
    )
    s = repo.writable_session("main")
    a = zarr.create_array(s.store, name="a", shape=(16,), chunks=(2,), dtype="i4", fill_value=-1)
    a[:] = np.arange(16)
    b = zarr.create_array(s.store, name="b", shape=(4, 4), chunks=(2, 2), dtype="i4", fill_value=0)
    b[:] = np.arange(16).reshape(4, 4) + 1
    s.commit("data")
    return repo


def read(session: frazil.Session, path: str) -> np.ndarray:
    return zarr.open_array(session.store, path=path, mode="r")[...]


def test_shift_right_drops_the_tail_and_clears_the_head(tmp_path: Path) -> None:
    repo = make(tmp_path)
    chunks_before = sorted((tmp_path / "repo" / "chunks").iterdir())
    s = repo.writable_session("main")
    s.shift_array("a", [2])
    expected = np.concatenate([[-1] * 4, np.arange(12)])
    assert read(s, "a").tolist() == expected.tolist()  # visible before the commit
    s.commit("shifted")
    assert read(repo.readonly_session("main"), "a").tolist() == expected.tolist()
    assert sorted((tmp_path / "repo" / "chunks").iterdir()) == chunks_before  # no bytes
    d = repo.diff(from_snapshot_id=list(repo.ancestry(branch="main"))[1].id, to_branch="main")
    assert d.updated_chunks == {"/a": [[i] for i in range(8)]}
    assert repo.fsck().ok


def test_shift_in_two_dimensions_with_staged_writes(tmp_path: Path) -> None:
    repo = make(tmp_path)
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="b")[2:4, 2:4] = 100  # staged, then shifted with the rest
    s.shift_array("b", (-1, -1))
    got = read(s, "b")
    assert got[0:2, 0:2].tolist() == [[100, 100], [100, 100]]
    assert (got[2:, :] == 0).all() and (got[:, 2:] == 0).all()
    s.shift_array("b", (1, 0))  # again, over the staged shift
    got = read(s, "b")
    assert got[2:4, 0:2].tolist() == [[100, 100], [100, 100]] and (got[0:2] == 0).all()
    s.commit("two shifts")
    assert read(repo.readonly_session("main"), "b").tolist() == got.tolist()


def test_shift_conflicts_with_a_concurrent_write(tmp_path: Path) -> None:
    repo = make(tmp_path)
    s = repo.writable_session("main")
    other = repo.writable_session("main")
    zarr.open_array(other.store, path="a")[6:8] = 99
    other.commit("a concurrent write")
    s.shift_array("a", [1])
    with pytest.raises(frazil.ConflictError):
        s.commit("shift", rebase_with=ConflictDetector())


def test_shift_refuses_bad_arguments(tmp_path: Path) -> None:
    repo = make(tmp_path)
    s = repo.writable_session("main")
    for bad in ([1, 2], ["1"], [1.5], "1", [True]):
        with pytest.raises(frazil.InvalidInputError, match="chunk_offset"):
            s.shift_array("a", bad)  # type: ignore[arg-type]
    zarr.create_group(s.store, path="g")
    with pytest.raises(frazil.InvalidInputError, match="group"):
        s.shift_array("g", [1])
    with pytest.raises(frazil.NotFoundError):
        s.shift_array("nope", [1])
    ro = repo.readonly_session("main")
    with pytest.raises(frazil.ReadOnlyError):
        ro.shift_array("a", [1])
