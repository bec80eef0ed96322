"""Repository-level metadata: Repository.metadata / get_metadata / set_metadata /
update_metadata (Icechunk 2.x), stored in refs/repo.json by compare-and-swap."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

import frazil
from frazil import repo_info
from frazil.format.keys import REPO_INFO
from frazil.format.repo_info import MAX_METADATA_BYTES
from frazil.storage import ReadOnlyStorage
from frazil.storage.base import PutResult


def test_empty_then_set_update_and_reopen(repo: frazil.Repository) -> None:
    assert repo.metadata == {} and repo.get_metadata() == {}
    repo.set_metadata({"owner": "team-a", "tags": ["x", "y"], "n": 1})
    assert repo.metadata == {"owner": "team-a", "tags": ["x", "y"], "n": 1}
    merged = repo.update_metadata({"n": 2, "extra": {"deep": None}})
    assert merged == {"owner": "team-a", "tags": ["x", "y"], "n": 2, "extra": {"deep": None}}
    repo.set_metadata({"only": True})  # set replaces the whole of it
    again = frazil.Repository.open(repo.storage)
    assert again.metadata == {"only": True}
    got = again.metadata
    got["only"] = False  # a copy: changing it changes nothing stored
    assert again.metadata == {"only": True}


def test_async_forms() -> None:
    repo = frazil.Repository.create(frazil.in_memory_storage())

    async def go() -> dict[str, object]:
        await repo.set_metadata_async({"a": 1})
        await repo.update_metadata_async({"b": 2})
        return await repo.get_metadata_async()

    assert asyncio.run(go()) == {"a": 1, "b": 2}


def test_concurrent_updates_all_land(repo: frazil.Repository) -> None:
    """Each update is a compare-and-swap: updates of different keys racing each other
    are all kept (a plain put would keep only the last)."""
    keys = [f"k{i}" for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda k: repo.update_metadata({k: k.upper()}), keys))
    assert repo.get_metadata() == {k: k.upper() for k in keys}


class StealsTheFirstSwap(frazil.FaultInjectingStorage):
    """Before its first conditional put of the repository document, another writer's
    update lands (so our swap loses, and must be re-applied on what is there now)."""

    def __init__(self, inner: frazil.Storage) -> None:
        super().__init__(inner)
        self.stolen = False

    async def put_if_version(self, key: str, data: bytes, version: str) -> PutResult:
        if key == REPO_INFO and not self.stolen:
            self.stolen = True
            await repo_info.update_metadata(self.inner, {"theirs": 1})  # another writer
        return await super().put_if_version(key, data, version)


def test_lost_swap_is_reapplied() -> None:
    storage = StealsTheFirstSwap(frazil.in_memory_storage())
    repo = frazil.Repository.create(storage)
    repo.set_metadata({"base": 0})
    assert repo.update_metadata({"ours": 2}) == {"base": 0, "theirs": 1, "ours": 2}
    assert storage.stolen and repo.metadata == {"base": 0, "theirs": 1, "ours": 2}


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("text", "must be a dict"),
        ({1: "x"}, "string keys"),
        ({"x": object()}, "JSON-serializable"),
        ({"x": float("nan")}, "JSON-serializable"),
        ({"x": "y" * (MAX_METADATA_BYTES + 1)}, "more than the"),
    ],
)
def test_bad_metadata_is_refused(value: object, words: str) -> None:
    repo = frazil.Repository.create(frazil.in_memory_storage())
    for method in (repo.set_metadata, repo.update_metadata):
        with pytest.raises(frazil.InvalidInputError, match=words):
            method(value)  # type: ignore[arg-type]
    assert repo.metadata == {}


def test_merged_metadata_is_bounded_too() -> None:
    repo = frazil.Repository.create(frazil.in_memory_storage())
    half = "y" * (MAX_METADATA_BYTES // 2 + 10)
    repo.set_metadata({"a": half})
    with pytest.raises(frazil.InvalidInputError, match="merged"):
        repo.update_metadata({"b": half})
    assert repo.metadata == {"a": half}


def test_read_only_storage_refuses() -> None:
    storage = frazil.in_memory_storage()
    frazil.Repository.create(storage).set_metadata({"a": 1})
    ro = frazil.Repository.open(ReadOnlyStorage(storage))
    assert ro.metadata == {"a": 1}
    with pytest.raises(frazil.ReadOnlyError):
        ro.update_metadata({"b": 2})


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"not json", "not valid JSON"),
        (b"[" * 100 + b"]" * 100, "nested"),
        (b'{"format_version": 1, "object_type": "repo_info", "metadata": [1]}', "JSON object"),
        (b'{"format_version": 9, "object_type": "repo_info", "metadata": {}}', "newer frazil"),
        (b'{"format_version": 1, "object_type": "config", "metadata": {}}', "expected a repo_info"),
        (
            json.dumps(
                {
                    "format_version": 1,
                    "object_type": "repo_info",
                    "metadata": {"x": "y" * (MAX_METADATA_BYTES + 1)},
                }
            ).encode(),
            "larger than",
        ),
        (b" " * (4 * MAX_METADATA_BYTES + 1), "more than a repository document holds"),
    ],
)
def test_damaged_document_is_a_format_error(body: bytes, words: str) -> None:
    storage = frazil.in_memory_storage()
    repo = frazil.Repository.create(storage)
    asyncio.run(storage.put(REPO_INFO, body))
    with pytest.raises(frazil.FormatError, match=words) as e:
        repo.get_metadata()
    assert REPO_INFO in str(e.value)
    repo.writable_session("main")  # the rest of the repository is unaffected


def test_gc_and_fsck_leave_it_alone(repo: frazil.Repository) -> None:
    repo.set_metadata({"keep": "me"})
    repo.garbage_collect(dt.datetime.now(dt.UTC))
    assert repo.fsck().ok
    assert repo.metadata == {"keep": "me"}
    assert set(repo.list_branches()) == {"main"}


def test_lost_answers_are_settled_by_reading_back() -> None:
    """Conditional puts whose answers are lost (RetryingStorage reads the document back;
    its write_id makes ours recognisable): every update lands once, and is logged once."""
    faulty = frazil.FaultInjectingStorage(
        frazil.in_memory_storage(), drop_response_rate=0.3, seed=7
    )
    repo = frazil.Repository.create(frazil.RetryingStorage(faulty, backoff_base=0.0))
    for i in range(12):
        repo.update_metadata({f"k{i}": i})
    assert repo.metadata == {f"k{i}": i for i in range(12)}
    changes = [u for u in repo.ops_log() if isinstance(u.kind, frazil.UpdateType.MetadataChanged)]
    assert len(changes) == 12
