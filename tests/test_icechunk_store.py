"""The zarr store as Icechunk users meet it: ``store._store``, ``_is_open``, root ``"/"``
prefixes, listings iterated from synchronous code, errors of the builtin types expected."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.core.buffer import cpu, default_buffer_prototype

import frazil
from frazil.zarr_adapter.store import FrazilStore

GROUP = b'{"zarr_format":3,"node_type":"group"}'
PROTO = default_buffer_prototype()


@pytest.fixture
def session() -> frazil.Session:
    repo = frazil.Repository.create(frazil.in_memory_storage())
    return repo.writable_session("main")


async def test_raw_store_reads_and_writes_bytes(session: frazil.Session) -> None:
    store = session.store
    zarr.create_array(
        store, name="a", shape=(4,), chunks=(2,), dtype="u1", fill_value=0, compressors=None
    )
    await store._store.set("a/c/1", b"\x07\x08")
    assert await store._store.get("a/c/1") == b"\x07\x08"
    got = await store.get("a/c/1", prototype=PROTO)
    assert got is not None and got.to_bytes() == b"\x07\x08"
    assert await store._store.get("a/c/0") is None  # nothing written there
    np.testing.assert_array_equal(zarr.open_array(store, path="a")[:], [0, 0, 7, 8])
    ro = session.repository.readonly_session("main").store
    with pytest.raises(frazil.ReadOnlyError):
        await ro._store.set("a/c/0", b"\x01\x02")


def test_a_sessions_store_is_open_and_settable(session: frazil.Session) -> None:
    store = session.store
    assert store._is_open
    store._is_open = False  # settable, as on zarr's stores; the store keeps working
    zarr.create_group(store)
    assert not store.with_read_only(True)._is_open  # a new store, opened on first use
    assert not FrazilStore(session)._is_open  # constructed directly: as zarr's stores
    assert session.repository.readonly_session("main").store._is_open


async def test_getsize_of_a_missing_key(session: frazil.Session) -> None:
    store = session.store
    zarr.create_group(store)
    with pytest.raises(frazil.KeyNotFoundError, match="not-a-real-key") as e:
        await store.getsize("not-a-real-key")
    # what zarr's stores raise, and frazil's not-found category
    assert isinstance(e.value, FileNotFoundError)
    assert isinstance(e.value, frazil.NotFoundError)
    assert isinstance(e.value, frazil.FrazilError)
    assert await store.getsize("zarr.json") == len(
        zarr.open_group(store).metadata.to_buffer_dict(PROTO)["zarr.json"].to_bytes()
    )


async def test_set_of_a_non_buffer_is_a_type_error(session: frazil.Session) -> None:
    store = session.store
    with pytest.raises(TypeError, match=r"FrazilStore\.set\(\): `value` must be a Buffer") as e:
        await store.set("zarr.json", 0)  # type: ignore[arg-type]
    assert isinstance(e.value, frazil.InvalidTypeError)
    assert isinstance(e.value, frazil.InvalidInputError)


async def test_slash_is_the_root_for_listing_and_is_empty(session: frazil.Session) -> None:
    store = session.store
    assert await store.is_empty("/")
    zarr.create_array(store, name="x", shape=(2,), chunks=(1,), dtype="i1")[:] = 1
    keys = sorted([k async for k in store.list_prefix("/")])
    assert keys == ["x/c/0", "x/c/1", "x/zarr.json", "zarr.json"]
    assert sorted([k async for k in store.list_prefix("/x/")]) == keys[:3]
    assert not await store.is_empty("/")
    assert sorted([k async for k in store.list_dir("/")]) == ["x", "zarr.json"]


async def test_clear_then_list_from_the_root(session: frazil.Session) -> None:
    zarr.create_group(session.store).create_group("g")
    session.commit("a group")
    session = session.repository.writable_session("main")
    store = session.store
    await store.clear()
    assert [k async for k in store.list_prefix("/")] == []
    zarr.group(store=store)
    assert [k async for k in store.list_prefix("/")] == ["zarr.json"]


def test_listings_iterate_from_synchronous_code(session: frazil.Session) -> None:
    store = session.store
    zarr.create_array(store, name="a", shape=(2,), chunks=(1,), dtype="i1")[:] = 3
    assert sorted(store.list_prefix("")) == ["a/c/0", "a/c/1", "a/zarr.json", "zarr.json"]
    assert sorted(store.list()) == ["a/c/0", "a/c/1", "a/zarr.json", "zarr.json"]
    assert sorted(store.list_dir("a")) == ["c", "zarr.json"]
    listing = store.list_prefix("a/c/")
    assert next(iter(listing)) in ("a/c/0", "a/c/1")


async def test_listing_is_a_string_prefix_as_in_zarr(session: frazil.Session) -> None:
    root = zarr.create_group(session.store)
    root.create_group("foo-bar")
    root.create_group("foo").create_group("bar")
    keys = sorted([k async for k in session.store.list_prefix("foo")])
    # MemoryStore's and zarr's documented meaning; Icechunk lists foo/ only
    assert keys == ["foo-bar/zarr.json", "foo/bar/zarr.json", "foo/zarr.json"]
    assert sorted([k async for k in session.store.list_prefix("foo/")]) == keys[1:]


async def test_exists_is_false_for_a_key_that_names_nothing(session: frazil.Session) -> None:
    # as zarr's stores answer (Icechunk raises)
    assert not await session.store.exists("foo")
    await session.store.set("foo/zarr.json", cpu.Buffer.from_bytes(GROUP))
    assert await session.store.exists("foo/zarr.json")
