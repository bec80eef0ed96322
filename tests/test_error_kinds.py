"""ErrorKind on every error (Icechunk 2.x's ``kind`` codes), and spec_version= /
SpecVersion at creation."""

from __future__ import annotations

import asyncio
import json
import pickle
from pathlib import Path

import pytest
import zarr

import frazil
from frazil import ErrorKind, SpecVersion
from frazil.conflicts import RebaseFailedError
from frazil.errors import (
    AlreadyExistsError,
    ConflictError,
    FormatError,
    FrazilError,
    InvalidInputError,
    NotFoundError,
    ReadOnlyError,
    StorageError,
    TransientStorageError,
    VirtualChunkError,
)
from frazil.storage import ReadOnlyStorage

DEFAULTS = {
    FrazilError: ErrorKind.UNKNOWN,
    ConflictError: ErrorKind.COMMIT_CONFLICT,
    RebaseFailedError: ErrorKind.REBASE_FAILED,
    NotFoundError: ErrorKind.KEY_NOT_FOUND,
    AlreadyExistsError: ErrorKind.NODE_ALREADY_EXISTS,
    ReadOnlyError: ErrorKind.READ_ONLY_SESSION,
    InvalidInputError: ErrorKind.INVALID_KEY,
    StorageError: ErrorKind.STORAGE_OTHER,
    TransientStorageError: ErrorKind.STORAGE_OTHER,
    VirtualChunkError: ErrorKind.VIRTUAL_CHUNK_FETCH,
    FormatError: ErrorKind.DESERIALIZATION,
}


def test_every_class_has_a_default_kind() -> None:
    classes = {FrazilError}
    todo = [FrazilError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.startswith("frazil") and sub not in classes:
                classes.add(sub)
                todo.append(sub)
    assert set(DEFAULTS) <= classes
    for cls in classes:
        assert isinstance(cls.default_kind, ErrorKind), cls
    for cls, kind in DEFAULTS.items():
        assert cls.default_kind is kind, cls


def test_kind_given_at_the_raise_site_wins_and_pickles() -> None:
    e = NotFoundError("branch 'x' does not exist", kind=ErrorKind.BRANCH_NOT_FOUND)
    assert e.kind is ErrorKind.BRANCH_NOT_FOUND and e.kind == "branch-not-found"
    back = pickle.loads(pickle.dumps(e))
    assert back.kind is ErrorKind.BRANCH_NOT_FOUND and str(back) == str(e)
    assert pickle.loads(pickle.dumps(InvalidInputError("x"))).kind is ErrorKind.INVALID_KEY
    with pytest.raises(ValueError):
        FrazilError("x", kind="no-such-kind")  # type: ignore[arg-type]


def _kind(call: object) -> ErrorKind:
    assert callable(call)
    with pytest.raises(FrazilError) as e:
        call()
    return e.value.kind


def test_kinds_of_common_failures() -> None:
    repo = frazil.Repository.create(frazil.in_memory_storage())
    s = repo.writable_session("main")
    root = zarr.group(store=s.store)
    root.create_array("a", shape=(2,), chunks=(1,), dtype="i4")
    root.create_group("g")
    sid = s.commit("tree")
    repo.create_tag("t", sid)
    repo.delete_tag("t")
    s = repo.writable_session("main")
    cases = {
        ErrorKind.BRANCH_NOT_FOUND: lambda: repo.lookup_branch("nope"),
        ErrorKind.TAG_NOT_FOUND: lambda: repo.lookup_tag("nope"),
        ErrorKind.BRANCH_ALREADY_EXISTS: lambda: repo.create_branch("main", sid),
        ErrorKind.TAG_PREVIOUSLY_DELETED: lambda: repo.create_tag("t", sid),
        ErrorKind.INVALID_REF_NAME: lambda: repo.create_branch("../x", sid),
        ErrorKind.REPOSITORY_NOT_FOUND: lambda: frazil.Repository.open(frazil.in_memory_storage()),
        ErrorKind.NODE_NOT_FOUND: lambda: s.get_node_id("/missing"),
        ErrorKind.INVALID_PATH: lambda: s.get_node_id("/a/../b"),
        ErrorKind.MOVE_WONT_OVERWRITE: lambda: s.move("/a", "/g"),
        ErrorKind.MOVE_INTO_SELF_OR_DESCENDANT: lambda: s.move("/g", "/g/h"),
        ErrorKind.MOVE_DESTINATION_PARENT_MISSING: lambda: s.move("/a", "/x/y"),
        ErrorKind.MOVE_DESTINATION_PARENT_NOT_GROUP: lambda: s.move("/g", "/a/g"),
        ErrorKind.READ_ONLY_SESSION: lambda: repo.readonly_session("main").move("/a", "/b"),
        ErrorKind.READ_ONLY_STORAGE: lambda: frazil.Repository.open(
            ReadOnlyStorage(repo.storage)
        ).set_metadata({}),
    }
    for kind, call in cases.items():
        assert _kind(call) is kind, kind
    ro = frazil.Repository.open(ReadOnlyStorage(repo.storage))
    with pytest.raises(ReadOnlyError):
        ro.create_branch("b", sid)


def test_conflict_kinds() -> None:
    repo = frazil.Repository.create(frazil.in_memory_storage())
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(2,), chunks=(1,), dtype="i4", fill_value=0)
    s.commit("a")
    one, two = repo.writable_session("main"), repo.writable_session("main")
    for session in (one, two):
        zarr.open_array(session.store, path="a")[0] = 1
    one.commit("one")
    with pytest.raises(ConflictError) as e:
        two.commit("two")
    assert e.value.kind is ErrorKind.COMMIT_CONFLICT
    with pytest.raises(RebaseFailedError) as f:
        two.commit("two", rebase_with=frazil.ConflictDetector())
    assert f.value.kind is ErrorKind.REBASE_FAILED


def test_newer_format_kind(tmp_path: Path) -> None:
    repo = frazil.Repository.create(frazil.local_filesystem_storage(str(tmp_path)))
    ref = tmp_path / "refs" / "branch.main" / "ref.json"
    obj = json.loads(ref.read_text())
    obj["format_version"] = 99
    ref.write_text(json.dumps(obj))
    assert _kind(lambda: repo.lookup_branch("main")) is ErrorKind.UNSUPPORTED_SPEC_VERSION
    ref.write_text("{")
    assert _kind(lambda: repo.lookup_branch("main")) is ErrorKind.DESERIALIZATION


# -- SpecVersion ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, 2, SpecVersion.v2, SpecVersion.current()])
def test_create_at_the_current_version(value: int | None) -> None:
    storage = frazil.in_memory_storage()
    assert frazil.Repository.fetch_spec_version(storage) is None
    repo = frazil.Repository.create(storage, spec_version=value)
    assert repo.spec_version is SpecVersion.v2 == SpecVersion.current()
    assert frazil.Repository.fetch_spec_version(storage) == 2
    assert frazil.Repository.open(storage).spec_version == SpecVersion.v2


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (1, "cannot promise to write nothing newer than version 1"),
        (SpecVersion.v1, "cannot promise"),
        (3, "no frazil format version"),
        (0, "no frazil format version"),
        ("2", "must be a SpecVersion or an int"),
        (True, "must be a SpecVersion or an int"),
    ],
)
def test_versions_it_cannot_write_are_refused(value: object, words: str) -> None:
    storage = frazil.in_memory_storage()
    with pytest.raises(InvalidInputError, match=words) as e:
        frazil.Repository.create(storage, spec_version=value)  # type: ignore[arg-type]
    assert e.value.kind is ErrorKind.UNSUPPORTED_SPEC_VERSION
    assert not frazil.Repository.exists(storage)  # refused before anything was written
    with pytest.raises(InvalidInputError):
        frazil.Repository.open_or_create(storage, create_version=value)  # type: ignore[arg-type]


def test_async_forms() -> None:
    storage = frazil.in_memory_storage()

    async def go() -> SpecVersion | None:
        await frazil.Repository.create_async(storage, spec_version=SpecVersion.v2)
        return await frazil.Repository.fetch_spec_version_async(storage)

    assert asyncio.run(go()) is SpecVersion.v2
