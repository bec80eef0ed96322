"""FrazilStore against zarr's generic store conformance suite, plus Zarr-aware behaviour.

FrazilStore is not a key/value bag: it accepts only ``zarr.json`` documents (valid Zarr v3
group or array metadata) and chunk keys of arrays that exist, parsed by the array's
``chunk_key_encoding``; everything goes through a transactional ``Session``. Tests of the
inherited ``StoreTests`` that write arbitrary keys or values are overridden below with the
same intent on valid Zarr keys; each override says why.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

import azureserver
import numpy as np
import pytest
import zarr
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.core.sync import _collect_aiterator, sync
from zarr.testing.store import StoreTests
from zarr.testing.utils import assert_bytes_equal

import frazil
from frazil.errors import InvalidInputError, ReadOnlyError
from frazil.zarr_adapter import FrazilStore

PROTO = default_buffer_prototype()
Buf = cpu.Buffer


# -- metadata documents and key helpers -----------------------------------------------------
def group_doc(**attrs: Any) -> bytes:
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attrs}).encode()


def array_doc(
    shape: tuple[int, ...],
    chunks: tuple[int, ...] | None = None,
    *,
    encoding: str = "default",
    sep: str = "/",
    dtype: str = "uint8",
) -> bytes:
    """A complete Zarr v3 array document (zarr itself can open it)."""
    chunks = chunks if chunks is not None else tuple(1 for _ in shape)
    return json.dumps(
        {
            "zarr_format": 3,
            "node_type": "array",
            "shape": list(shape),
            "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
            "chunk_key_encoding": {"name": encoding, "configuration": {"separator": sep}},
            "fill_value": 0,
            "codecs": [{"name": "bytes"}],
            "attributes": {},
        }
    ).encode()


# chunk keys that are not in the default encoding, with the array they belong to
_V2_KEYS = {
    "foo/0/0": ("foo", 2, "v2", "/"),
    "foo/0.0": ("foo", 2, "v2", "."),
    "foo/bar/0": ("foo/bar", 0, "v2", "."),  # a 0-d array's only chunk in v2 encoding
}


def infer_array(key: str) -> tuple[str, int, str, str]:
    """(array path, ndim, encoding, separator) of the array a test chunk key belongs to."""
    if key in _V2_KEYS:
        return _V2_KEYS[key]
    parts = key.split("/")
    for i, p in enumerate(parts):
        if p == "c":
            return "/".join(parts[:i]), len(parts) - i - 1, "default", "/"
        if p.startswith("c."):
            return "/".join(parts[:i]), p.count("."), "default", "."
    raise AssertionError(f"test key {key!r} is not a chunk key")


def chunk_coord(key: str) -> tuple[str, tuple[int, ...]]:
    path, ndim, encoding, sep = infer_array(key)
    rest = key[len(path) + 1 :] if path else key
    if encoding == "default":
        rest = rest[2:] if ndim else ""
    return "/" + path, tuple(int(p) for p in rest.split(sep)) if ndim else ()


def ensure_array(session: frazil.Session, key: str, size: int = 100) -> None:
    """Create (through the session) the array a chunk key needs, if it is not there."""
    path, ndim, encoding, sep = infer_array(key)
    if session.node("/" + path) is None:
        session.set_metadata("/" + path, array_doc((size,) * ndim, encoding=encoding, sep=sep))


def meta_path(key: str) -> str:
    return "/" if key == "zarr.json" else "/" + key[: -len("/zarr.json")]


async def collect(ait: Any) -> list[str]:
    return sorted(await _collect_aiterator(ait))


# -- the conformance suite --------------------------------------------------------------------
class _FrazilStoreTests(StoreTests[FrazilStore, cpu.Buffer]):
    """StoreTests for FrazilStore; subclasses choose the storage (and repository config)."""

    store_cls = FrazilStore
    buffer_cls = cpu.Buffer

    @pytest.fixture
    def repo(self, tmp_path: Any) -> frazil.Repository:
        raise NotImplementedError

    @pytest.fixture
    def store_kwargs(self, repo: frazil.Repository) -> dict[str, Any]:
        return {"session": repo.writable_session("main")}

    # `set`/`get` bypass the store and talk to the session. A chunk key's array is created
    # first if needed, so the inherited tests' own chunk keys can be used as they are.
    async def set(self, store: FrazilStore, key: str, value: Any) -> None:
        session = store.session
        if key == "zarr.json" or key.endswith("/zarr.json"):
            session.set_metadata(meta_path(key), value.to_bytes())
            return
        ensure_array(session, key)
        path, coord = chunk_coord(key)
        await session.set_chunk(path, coord, value.to_bytes())

    async def get(self, store: FrazilStore, key: str) -> Any:
        session = store.session
        if key == "zarr.json" or key.endswith("/zarr.json"):
            rec = session.node(meta_path(key))
            assert rec is not None
            return Buf.from_bytes(rec.zarr_json)
        path, coord = chunk_coord(key)
        data = await session.get_chunk(path, coord)
        assert data is not None
        return Buf.from_bytes(data)

    # -- abstract tests ---------------------------------------------------------------------
    def test_store_repr(self, store: FrazilStore) -> None:
        assert repr(store).startswith("FrazilStore(")
        assert "writable" in repr(store)

    def test_store_supports_writes(self, store: FrazilStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: FrazilStore) -> None:
        assert store.supports_listing

    # -- overrides: read-only behaviour -----------------------------------------------------
    # Overridden: a writable Session is deliberately not picklable (staged changes must not be
    # copied to other processes): its store pickles as one that refuses every call, saying
    # so; a read-only one pickles, and its store equals the original.
    async def test_serializable_store(self, store: FrazilStore) -> None:
        detached = pickle.loads(pickle.dumps(store))
        assert detached != store
        with pytest.raises(InvalidInputError, match="cannot be sent to other processes"):
            await detached.get("zarr.json", prototype=PROTO)
        with pytest.raises(InvalidInputError, match=r"session\.fork\(\)"):
            await detached.set("zarr.json", Buf.from_bytes(array_doc((4,))))
        await store.set("zarr.json", Buf.from_bytes(array_doc((4,))))
        await store.set("c/0", Buf.from_bytes(b"\x01\x02\x03\x04"))
        store.session.commit("data")
        assert store.read_only  # a committed session is read-only at its new snapshot
        new_store = pickle.loads(pickle.dumps(store))
        assert new_store == store
        assert new_store.read_only == store.read_only
        observed = await new_store.get("c/0", prototype=PROTO)
        assert_bytes_equal(observed, Buf.from_bytes(b"\x01\x02\x03\x04"))

    # Overridden: writes to a read-only FrazilStore raise frazil.ReadOnlyError (not zarr's
    # ValueError message), and "foo" is not a key FrazilStore could ever hold.
    async def test_read_only_store_raises(self, open_kwargs: dict[str, Any]) -> None:
        store = await self.store_cls.open(**{**open_kwargs, "read_only": True})
        assert store.read_only
        with pytest.raises(ReadOnlyError):
            await store.set("zarr.json", Buf.from_bytes(group_doc()))
        with pytest.raises(ReadOnlyError):
            await store.delete("zarr.json")
        with pytest.raises(ReadOnlyError):
            await store.delete_dir("")

    # Overridden for the same two reasons as test_read_only_store_raises.
    async def test_with_read_only_store(self, open_kwargs: dict[str, Any]) -> None:
        store = await self.store_cls.open(**{**open_kwargs, "read_only": True})
        assert store.read_only
        with pytest.raises(ReadOnlyError):
            await store.set("zarr.json", Buf.from_bytes(group_doc()))

        writer = store.with_read_only(read_only=False)
        assert not writer._is_open
        assert not writer.read_only
        await writer.set("foo/zarr.json", Buf.from_bytes(group_doc()))
        assert await store.exists("foo/zarr.json")  # one session: the reader sees it too
        await writer.delete("foo/zarr.json")
        assert not await store.exists("foo/zarr.json")

        assert store.read_only
        with pytest.raises(ReadOnlyError):
            await store.set("zarr.json", Buf.from_bytes(group_doc()))
        with pytest.raises(ReadOnlyError):
            await store.delete("zarr.json")

        reader = store.with_read_only(read_only=True)
        assert reader.read_only
        with pytest.raises(ReadOnlyError):
            await reader.set("zarr.json", Buf.from_bytes(group_doc()))
        with pytest.raises(ReadOnlyError):
            await reader.delete("zarr.json")

    # -- overrides: valid keys and values ---------------------------------------------------
    # The inherited keys "foo/c/0.0" and "foo/0/0" are replaced by keys of each chunk key
    # encoding FrazilStore parses (default "/" and ".", v2 "/" and ".", 0-d arrays).
    CHUNK_KEYS = ["c/0", "foo/c/0/0", "foo/c.0.0", "foo/0/0", "foo/0.0", "foo/bar/c", "foo/bar/0"]

    @pytest.mark.parametrize("key", CHUNK_KEYS)
    @pytest.mark.parametrize(
        ("data", "byte_range"),
        [
            (b"\x01\x02\x03\x04", None),
            (b"\x01\x02\x03\x04", RangeByteRequest(1, 4)),
            (b"\x01\x02\x03\x04", OffsetByteRequest(1)),
            (b"\x01\x02\x03\x04", SuffixByteRequest(1)),
            (b"", None),
        ],
    )
    async def test_get(self, store: FrazilStore, key: str, data: bytes, byte_range: Any) -> None:
        await super().test_get(store, key, data, byte_range)

    # Overridden: keys "0".."9" are not Zarr keys; use ten chunks of one array instead.
    async def test_get_many(self, store: FrazilStore) -> None:
        keys = tuple(f"c/{i}" for i in range(10))
        values = tuple(k.encode() for k in keys)
        for k, v in zip(keys, values, strict=True):
            await self.set(store, k, Buf.from_bytes(v))
        observed = await _collect_aiterator(
            store._get_many(zip(keys, (PROTO,) * len(keys), (None,) * len(keys), strict=True))
        )
        expected = sorted(zip(keys, values, strict=True))
        assert sorted((k, b.to_bytes()) for k, b in observed) == expected

    @pytest.mark.parametrize("key", CHUNK_KEYS)
    @pytest.mark.parametrize("data", [b"\x01\x02\x03\x04", b""])
    async def test_getsize(self, store: FrazilStore, key: str, data: bytes) -> None:
        await super().test_getsize(store, key, data)

    # Overridden: the chunks "c/0/0".. need their (2-d) array's zarr.json written first.
    async def test_getsize_prefix(self, store: FrazilStore) -> None:
        await store.set("zarr.json", Buf.from_bytes(array_doc((2, 2))))
        data = Buf.from_bytes(b"\x01\x02\x03\x04")
        keys = ["c/0/0", "c/0/1", "c/1/0", "c/1/1"]
        await store._set_many([(k, data) for k in keys])
        assert await store.getsize_prefix("c") == len(data) * len(keys)

    # Overridden: zarr.json must hold a Zarr v3 document (not arbitrary bytes), and a chunk
    # can only be written to an array that exists.
    @pytest.mark.parametrize(
        ("key", "data"),
        [
            ("zarr.json", group_doc()),
            ("zarr.json", array_doc((3, 4))),
            ("foo/zarr.json", group_doc(a=1)),
            ("foo/bar/zarr.json", array_doc(())),
        ]
        + [(k, d) for k in CHUNK_KEYS for d in (b"\x01\x02\x03\x04", b"")],
    )
    async def test_set(self, store: FrazilStore, key: str, data: bytes) -> None:
        assert not store.read_only
        if not key.endswith("zarr.json"):
            ensure_array(store.session, key)
        buf = Buf.from_bytes(data)
        await store.set(key, buf)
        assert_bytes_equal(await self.get(store, key), buf)

    # Overridden: the chunk's array must exist before its chunk is written.
    async def test_set_not_open(self, store_not_open: FrazilStore) -> None:
        assert not store_not_open._is_open
        ensure_array(store_not_open.session, "c/0")
        buf = Buf.from_bytes(b"\x01\x02\x03\x04")
        await store_not_open.set("c/0", buf)
        assert_bytes_equal(await self.get(store_not_open, "c/0"), buf)

    # Overridden: same intent with valid metadata values and chunk keys of existing arrays.
    async def test_set_many(self, store: FrazilStore) -> None:
        items = {
            "zarr.json": group_doc(),
            "foo/zarr.json": array_doc((5, 5)),
            "foo/c/0/0": b"foo/c/0/0",
            "foo/c/4/4": b"foo/c/4/4",
            "bar/zarr.json": array_doc((5, 5), encoding="v2", sep="."),
            "bar/0.0": b"bar/0.0",
        }
        await store._set_many([(k, Buf.from_bytes(v)) for k, v in items.items()])
        for k, v in items.items():
            if k.endswith("zarr.json"):
                assert (await self.get(store, k)).to_bytes() == v
        assert (await store.session.get_chunk("/foo", (4, 4))) == b"foo/c/4/4"
        assert (await store.session.get_chunk("/bar", (0, 0))) == b"bar/0.0"

    # Overridden: "zarr.json" cannot hold the bytes b"zarr.json"; it holds an array document
    # (so the chunk keys in the same request are valid) and is read by byte range like them.
    @pytest.mark.parametrize(
        "key_ranges",
        [
            [],
            [("zarr.json", RangeByteRequest(0, 2))],
            [("c/0", RangeByteRequest(0, 2)), ("zarr.json", None)],
            [
                ("c/0/0", RangeByteRequest(0, 2)),
                ("c/0/1", SuffixByteRequest(2)),
                ("c/0/2", OffsetByteRequest(2)),
            ],
            [("zarr.json", SuffixByteRequest(5)), ("zarr.json", OffsetByteRequest(3))],
        ],
    )
    async def test_get_partial_values(self, store: FrazilStore, key_ranges: Any) -> None:
        expected: list[bytes] = []
        for key, byte_range in key_ranges:
            if key == "zarr.json":
                if store.session.node("/") is None:
                    await self.set(store, key, Buf.from_bytes(group_doc(pad="x" * 40)))
            else:
                await self.set(store, key, Buf.from_bytes(key.encode()))
            full = await self.get(store, key)
            expected.append(expected_slice(full.to_bytes(), byte_range))
        observed = await store.get_partial_values(prototype=PROTO, key_ranges=key_ranges)
        assert [o.to_bytes() if o is not None else None for o in observed] == expected

    # Overridden: "foo/zarr.json" must be a valid document.
    async def test_exists(self, store: FrazilStore) -> None:
        assert not await store.exists("foo")
        assert not await store.exists("foo/zarr.json")
        await store.set("foo/zarr.json", Buf.from_bytes(group_doc()))
        assert await store.exists("foo/zarr.json")
        assert not await store.exists("foo")  # a node's folder is not a key

    # Overridden: "foo/zarr.json" must be a valid document.
    async def test_delete(self, store: FrazilStore) -> None:
        await store.set("foo/zarr.json", Buf.from_bytes(array_doc((2,))))
        await store.set("foo/c/1", Buf.from_bytes(b"x"))
        assert await store.exists("foo/zarr.json")
        await store.delete("foo/c/1")
        assert not await store.exists("foo/c/1")
        assert await store.exists("foo/zarr.json")
        await store.set("foo/c/1", Buf.from_bytes(b"x"))
        await store.delete("foo/zarr.json")  # deleting an array's metadata drops its chunks
        assert not await store.exists("foo/zarr.json")
        assert not await store.exists("foo/c/1")

    # Overridden: valid documents for the group/array nodes (same hierarchy as upstream).
    async def test_delete_dir(self, store: FrazilStore) -> None:
        await store.set("zarr.json", Buf.from_bytes(group_doc()))
        await store.set("foo-bar/zarr.json", Buf.from_bytes(group_doc()))
        await store.set("foo/zarr.json", Buf.from_bytes(array_doc((1,))))
        await store.set("foo/c/0", Buf.from_bytes(b"chunk"))
        await store.delete_dir("foo")
        assert await store.exists("zarr.json")
        assert await store.exists("foo-bar/zarr.json")
        assert not await store.exists("foo/zarr.json")
        assert not await store.exists("foo/c/0")

    # Overridden: "foo/bar" is not a Zarr key; use a node under "foo" instead.
    async def test_is_empty(self, store: FrazilStore) -> None:
        assert await store.is_empty("")
        await store.set("foo/zarr.json", Buf.from_bytes(group_doc()))
        assert not await store.is_empty("")
        assert await store.is_empty("fo")
        assert not await store.is_empty("foo/")
        assert not await store.is_empty("foo")
        assert await store.is_empty("spam/")

    # Overridden: "key" is not a Zarr key.
    async def test_clear(self, store: FrazilStore) -> None:
        await store.set("zarr.json", Buf.from_bytes(group_doc()))
        await self.set(store, "a/c/0", Buf.from_bytes(b"something"))
        await store.clear()
        assert await store.is_empty("")
        assert await collect(store.list()) == []

    # Overridden: "foo/zarr.json" cannot be empty bytes; it is an array document here.
    async def test_list(self, store: FrazilStore) -> None:
        assert await _collect_aiterator(store.list()) == ()
        data = Buf.from_bytes(b"")
        items = {
            "foo/zarr.json": Buf.from_bytes(array_doc((10,))),
            **{f"foo/c/{i}": data for i in range(10)},
        }
        await store._set_many(items.items())
        assert await collect(store.list()) == sorted(items)

    # Overridden: the zarr.json documents must be valid (upstream writes empty bytes).
    async def test_list_prefix(self, store: FrazilStore) -> None:
        prefixes = ("", "a/", "a/b/", "a/b/c/")
        keys = [p + "zarr.json" for p in prefixes]
        await store._set_many([(k, Buf.from_bytes(group_doc())) for k in keys])
        for prefix in prefixes:
            assert await collect(store.list_prefix(prefix)) == sorted(
                k for k in keys if k.startswith(prefix)
            )

    # Overridden: "foo/baz/c/0" needs its array's zarr.json, so it is listed too.
    async def test_list_empty_path(self, store: FrazilStore) -> None:
        items = {
            "foo/bar/zarr.json": Buf.from_bytes(array_doc((2,))),
            "foo/bar/c/1": Buf.from_bytes(b""),
            "foo/baz/zarr.json": Buf.from_bytes(array_doc((1,))),
            "foo/baz/c/0": Buf.from_bytes(b""),
        }
        await store._set_many(items.items())
        assert await collect(store.list()) == sorted(items)
        assert await collect(store.list_prefix("")) == sorted(items)
        assert await collect(store.list_prefix("foo/bar/")) == ["foo/bar/c/1", "foo/bar/zarr.json"]

    # Overridden: upstream's "foo/bar/foobar_first_child" is not a Zarr key, and its "foo"
    # holds both chunks and children, which no Zarr node does; same checks on a valid tree.
    async def test_list_dir(self, store: FrazilStore) -> None:
        assert await collect(store.list_dir("")) == []
        assert await collect(store.list_dir("foo")) == []
        await store.set("foo/zarr.json", Buf.from_bytes(group_doc()))
        await store.set("foo/arr/zarr.json", Buf.from_bytes(array_doc((3, 2))))
        await store.set("foo/arr/c/1/0", Buf.from_bytes(b"\x01"))
        await store.set("foo/arr/c/2/1", Buf.from_bytes(b"\x01"))
        await store.set("foo/bar/sub/zarr.json", Buf.from_bytes(group_doc()))  # implicit bar
        expected = {
            "": ["foo"],
            "foo": ["arr", "bar", "zarr.json"],
            "foo/arr": ["c", "zarr.json"],
            "foo/arr/c": ["1", "2"],
            "foo/arr/c/1": ["0"],
            "foo/bar": ["sub"],
            "foo/bar/sub": ["zarr.json"],
            "nope": [],
        }
        for prefix, children in expected.items():
            assert await collect(store.list_dir(prefix)) == children, prefix
            if prefix:
                assert await collect(store.list_dir(prefix + "/")) == children, prefix

    # Overridden: "k" and "k2" are not Zarr keys; two chunk keys of one array instead.
    async def test_set_if_not_exists(self, store: FrazilStore) -> None:
        old = Buf.from_bytes(b"0000")
        await self.set(store, "c/0", old)
        new = Buf.from_bytes(b"1111")
        await store.set_if_not_exists("c/0", new)
        assert (await store.get("c/0", PROTO)).to_bytes() == b"0000"
        await store.set_if_not_exists("c/1", new)
        assert (await store.get("c/1", PROTO)).to_bytes() == b"1111"
        await store.set_if_not_exists("zarr.json", Buf.from_bytes(group_doc()))  # exists
        assert store.session.node("/").node_type == "array"

    # Overridden (next four): "zarr.json" must hold a Zarr v3 document, not b"hello world".
    async def test_get_bytes(self, store: FrazilStore) -> None:
        data = group_doc(hello="world")
        await self.set(store, "zarr.json", Buf.from_bytes(data))
        assert await store._get_bytes("zarr.json", prototype=PROTO) == data
        with pytest.raises(FileNotFoundError):
            await store._get_bytes("nonexistent_key", prototype=PROTO)
        with pytest.raises(FileNotFoundError):
            await store._get_bytes("nope/zarr.json", prototype=PROTO)

    def test_get_bytes_sync(self, store: FrazilStore) -> None:
        data = group_doc(hello="world")
        sync(self.set(store, "zarr.json", Buf.from_bytes(data)))
        assert store._get_bytes_sync("zarr.json", prototype=PROTO) == data

    async def test_get_json(self, store: FrazilStore) -> None:
        doc = {"zarr_format": 3, "node_type": "group", "attributes": {"foo": "bar"}}
        await self.set(store, "zarr.json", Buf.from_bytes(json.dumps(doc).encode()))
        assert await store._get_json("zarr.json", prototype=PROTO) == doc

    def test_get_json_sync(self, store: FrazilStore) -> None:
        doc = {"zarr_format": 3, "node_type": "group", "attributes": {"foo": "bar"}}
        sync(self.set(store, "zarr.json", Buf.from_bytes(json.dumps(doc).encode())))
        assert store._get_json_sync("zarr.json", prototype=PROTO) == doc


class TestFrazilStoreInMemory(_FrazilStoreTests):
    """In-memory storage, default config: the small test chunks are stored inline."""

    @pytest.fixture
    def repo(self, tmp_path: Any) -> frazil.Repository:
        return frazil.Repository.create(frazil.in_memory_storage())


class TestFrazilStoreLocal(_FrazilStoreTests):
    """Local files, with inlining off so every non-empty chunk is a separate object."""

    @pytest.fixture
    def repo(self, tmp_path: Any) -> frazil.Repository:
        return frazil.Repository.create(
            frazil.local_filesystem_storage(tmp_path / "repo"),
            frazil.RepositoryConfig(inline_chunk_threshold_bytes=0),
        )


class TestFrazilStoreAzure(_FrazilStoreTests):
    """Azure Blob Storage on Azurite (see azureserver.py), inlining off: every non-empty
    chunk is an object written through obstore."""

    @pytest.fixture
    def repo(self, tmp_path: Any) -> frazil.Repository:
        return frazil.Repository.create(
            azureserver.storage(), frazil.RepositoryConfig(inline_chunk_threshold_bytes=0)
        )


# -- focused tests ------------------------------------------------------------------------------
@pytest.fixture(params=["memory", "local"])
def repo(request: pytest.FixtureRequest, tmp_path: Any) -> frazil.Repository:
    if request.param == "memory":
        return frazil.Repository.create(frazil.in_memory_storage())
    return frazil.Repository.create(frazil.local_filesystem_storage(tmp_path / "repo"))


@pytest.fixture
def session(repo: frazil.Repository) -> frazil.Session:
    return repo.writable_session("main")


async def test_session_store_is_cached_and_writable(session: frazil.Session) -> None:
    assert session.store is session.store
    assert isinstance(session.store, FrazilStore)
    assert not session.store.read_only
    assert session.store.session is session
    assert not session.store.supports_consolidated_metadata


@pytest.mark.parametrize(
    ("encoding", "sep", "shape", "expected"),
    [
        ("default", "/", (4, 6), ["a/c/0/0", "a/c/0/1", "a/c/1/0", "a/c/1/1"]),
        ("default", ".", (4, 6), ["a/c.0.0", "a/c.0.1", "a/c.1.0", "a/c.1.1"]),
        ("v2", ".", (4, 6), ["a/0.0", "a/0.1", "a/1.0", "a/1.1"]),
        ("v2", "/", (4, 6), ["a/0/0", "a/0/1", "a/1/0", "a/1/1"]),
        ("default", "/", (), ["a/c"]),
        ("default", ".", (), ["a/c"]),
        ("v2", ".", (), ["a/0"]),
        ("default", "/", (5,), ["a/c/0", "a/c/1"]),
        ("v2", ".", (5,), ["a/0", "a/1"]),
    ],
)
async def test_chunk_key_encodings(
    session: frazil.Session, encoding: str, sep: str, shape: tuple[int, ...], expected: list[str]
) -> None:
    """zarr writes the keys of every encoding; the store parses, lists and reads them."""
    store = session.store
    chunks = tuple(min(3, s) for s in shape) if shape else ()
    arr = zarr.create_array(
        store,
        name="a",
        shape=shape,
        chunks=chunks,
        dtype="i2",
        fill_value=-1,
        chunk_key_encoding={"name": encoding, "separator": sep},
    )
    data = np.arange(int(np.prod(shape)), dtype="i2").reshape(shape)
    arr[...] = data
    assert await collect(store.list_prefix("a/")) == sorted([*expected, "a/zarr.json"])
    for key in expected:
        assert await store.exists(key)
        buf = await store.get(key, PROTO)
        assert buf is not None and len(buf) > 0
        assert await store.getsize(key) == len(buf)
    np.testing.assert_array_equal(zarr.open_array(store, path="a", mode="r")[...], data)
    session.commit("encodings")
    ro = session.repository.readonly_session("main")
    assert await collect(ro.store.list_prefix("a/")) == sorted([*expected, "a/zarr.json"])
    np.testing.assert_array_equal(zarr.open_array(ro.store, path="a", mode="r")[...], data)


@pytest.mark.parametrize(
    ("encoding", "sep", "ndim", "bad_keys"),
    [
        # wrong separator, wrong dimensionality, not digits, other encodings' shapes
        (
            "default",
            "/",
            2,
            [
                "a/c.0.0",
                "a/0/0",
                "a/c/0",
                "a/c/0/0/0",
                "a/c/x/0",
                "a/c",
                "a/c/-1/0",
                "a/c/0/",
                "a/d/0/0",
                "a/c/0/0/zarr",
            ],
        ),
        ("default", ".", 2, ["a/c/0/0", "a/c.0", "a/c.0.0.0", "a/0.0", "a/c.0.a"]),
        ("v2", ".", 2, ["a/0/0", "a/c/0/0", "a/c.0.0", "a/0", "a/0.0.0"]),
        ("v2", "/", 2, ["a/0.0", "a/c/0/0", "a/0"]),
        ("default", "/", 0, ["a/c/0", "a/0", "a/c.0"]),
        ("v2", ".", 0, ["a/c", "a/1", "a/0.0"]),
    ],
)
async def test_wrongly_encoded_chunk_keys_refused(
    session: frazil.Session, encoding: str, sep: str, ndim: int, bad_keys: list[str]
) -> None:
    store = session.store
    await store.set(
        "a/zarr.json",
        Buf.from_bytes(array_doc((4,) * ndim, (2,) * ndim, encoding=encoding, sep=sep)),
    )
    for key in bad_keys:
        with pytest.raises(InvalidInputError):
            await store.set(key, Buf.from_bytes(b"x"))
        if "" in key.split("/"):  # not a key at all (an empty part): reads refuse it too
            with pytest.raises(InvalidInputError, match="invalid zarr key"):
                await store.get(key, PROTO)
            continue
        assert await store.get(key, PROTO) is None
        assert not await store.exists(key)
    assert await collect(store.list()) == ["a/zarr.json"]


async def test_chunk_outside_grid_refused(session: frazil.Session) -> None:
    store = session.store
    await store.set("a/zarr.json", Buf.from_bytes(array_doc((4, 4), (2, 2))))
    await store.set("a/c/1/1", Buf.from_bytes(b"ok"))
    with pytest.raises(InvalidInputError, match="outside the chunk grid"):
        await store.set("a/c/2/0", Buf.from_bytes(b"x"))
    assert await store.get("a/c/2/0", PROTO) is None


@pytest.mark.parametrize(
    "key",
    [
        "foo/bar",
        "foo",
        "zarr.jsonx",
        "c/0",
        "a/b/c",
        ".zattrs",
        ".zgroup",
        "a/.zarray",
        "zarr.json/x",
    ],
)
async def test_unknown_keys_refused_on_set_and_none_on_get(
    session: frazil.Session, key: str
) -> None:
    store = session.store
    await store.set("zarr.json", Buf.from_bytes(group_doc()))
    with pytest.raises(InvalidInputError):
        await store.set(key, Buf.from_bytes(b"data"))
    assert await store.get(key, PROTO) is None
    assert not await store.exists(key)
    with pytest.raises(FileNotFoundError):
        await store.getsize(key)
    await store.delete(key)  # deleting a key that cannot exist is a no-op
    assert await collect(store.list()) == ["zarr.json"]


@pytest.mark.parametrize(
    "key",
    ["/zarr.json", "a//zarr.json", "../zarr.json", "a/./zarr.json", "a/../zarr.json", "/a/c/0"],
)
async def test_malformed_keys_refused(session: frazil.Session, key: str) -> None:
    with pytest.raises(InvalidInputError):
        await session.store.set(key, Buf.from_bytes(group_doc()))
    assert await collect(session.store.list()) == []


@pytest.mark.parametrize(
    "doc",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"zarr_format": 2, "node_type": "group"}',
        b'{"zarr_format": 3}',
        b'{"zarr_format": 3, "node_type": "table"}',
        b'{"zarr_format": 3, "node_type": "array", "shape": [-1]}',
        b'{"zarr_format": 3, "node_type": "array", "shape": [2], '
        b'"chunk_key_encoding": {"name": "weird"}}',
    ],
)
async def test_invalid_metadata_refused(session: frazil.Session, doc: bytes) -> None:
    with pytest.raises(InvalidInputError):
        await session.store.set("x/zarr.json", Buf.from_bytes(doc))
    assert session.node("/x") is None


async def test_set_requires_buffer(session: frazil.Session) -> None:
    # zarr's own stores' wording; a TypeError, and frazil's InvalidInputError
    with pytest.raises(TypeError, match=r"FrazilStore\.set\(\): `value` must be a Buffer") as e:
        await session.store.set("zarr.json", group_doc())  # type: ignore[arg-type]
    assert isinstance(e.value, InvalidInputError)


def expected_slice(data: bytes, br: Any) -> bytes:
    """What a byte request returns (HTTP semantics: a suffix longer than the data is all
    of it; zarr's own ``_normalize_byte_range_index`` gets that case wrong)."""
    if br is None:
        return data
    if isinstance(br, RangeByteRequest):
        return data[br.start : br.end]
    if isinstance(br, OffsetByteRequest):
        return data[br.offset :]
    return data[max(0, len(data) - br.suffix) :] if br.suffix else b""


def _byte_requests(n: int) -> list[Any]:
    return [
        None,
        RangeByteRequest(0, 0),
        RangeByteRequest(0, 1),
        RangeByteRequest(3, 17),
        RangeByteRequest(n - 5, n),
        RangeByteRequest(n - 5, n + 100),
        RangeByteRequest(n + 10, n + 20),
        OffsetByteRequest(0),
        OffsetByteRequest(7),
        OffsetByteRequest(n),
        OffsetByteRequest(n + 3),
        SuffixByteRequest(0),
        SuffixByteRequest(1),
        SuffixByteRequest(9),
        SuffixByteRequest(n),
        SuffixByteRequest(n + 50),
    ]


@pytest.mark.parametrize("size", [40, 512, 513, 3000])
async def test_partial_reads_inline_and_native(repo: frazil.Repository, size: int) -> None:
    """Byte ranges of inline (<= 512 bytes) and native chunks, staged and committed."""
    session = repo.writable_session("main")
    store = session.store
    payload = bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8))
    await store.set("a/zarr.json", Buf.from_bytes(array_doc((2,))))
    await store.set("a/c/1", Buf.from_bytes(payload))
    ref = await session.chunk_ref("/a", (1,))
    assert ref is not None
    assert ref.kind.name == ("INLINE" if size <= 512 else "NATIVE")

    async def check(s: FrazilStore) -> None:
        assert await s.getsize("a/c/1") == size
        for br in _byte_requests(size):
            got = await s.get("a/c/1", PROTO, byte_range=br)
            assert got is not None
            assert got.to_bytes() == expected_slice(payload, br), br
        ranges = [("a/c/1", br) for br in _byte_requests(size)]
        got_many = await s.get_partial_values(PROTO, ranges)
        assert [g.to_bytes() for g in got_many] == [
            (await s.get("a/c/1", PROTO, byte_range=br)).to_bytes() for _, br in ranges
        ]

    await check(store)
    session.commit("payload")
    await check(store)  # the committed session reads its new snapshot
    await check(repo.readonly_session("main").store)


async def test_partial_reads_of_metadata_and_missing(session: frazil.Session) -> None:
    store = session.store
    doc = group_doc(x=list(range(50)))
    await store.set("g/zarr.json", Buf.from_bytes(doc))
    for br in _byte_requests(len(doc)):
        got = await store.get("g/zarr.json", PROTO, byte_range=br)
        assert got is not None and got.to_bytes() == expected_slice(doc, br), br
    assert await store.get("h/zarr.json", PROTO, byte_range=RangeByteRequest(0, 2)) is None
    for bad in [
        RangeByteRequest(5, 2),
        RangeByteRequest(-1, 2),
        OffsetByteRequest(-1),
        SuffixByteRequest(-1),
    ]:
        with pytest.raises(InvalidInputError):
            await store.get("g/zarr.json", PROTO, byte_range=bad)


async def test_partial_array_reads_through_zarr(repo: frazil.Repository) -> None:
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="w", attributes={"title": "t"})
    data = np.arange(200 * 30, dtype="f8").reshape(200, 30)
    arr = root.create_array("big", shape=data.shape, chunks=(64, 16), dtype="f8", compressors=None)
    arr[:] = data
    # sharded array: inner chunks read by byte range out of each shard object
    sharded = root.create_array(
        "sharded", shape=(64, 64), chunks=(8, 8), shards=(32, 32), dtype="i4", compressors=None
    )
    sdata = np.arange(64 * 64, dtype="i4").reshape(64, 64)
    sharded[:] = sdata
    session.commit("arrays")
    ro = zarr.open_group(repo.readonly_session("main").store, mode="r")
    assert ro.attrs["title"] == "t"
    np.testing.assert_array_equal(ro["big"][10:150:7, 3:29], data[10:150:7, 3:29])
    np.testing.assert_array_equal(ro["big"][199, :], data[199, :])
    np.testing.assert_array_equal(ro["sharded"][5:40, 33:35], sdata[5:40, 33:35])
    np.testing.assert_array_equal(ro["sharded"][63, 63], sdata[63, 63])


async def test_listing_after_commit_and_with_staged_changes(repo: frazil.Repository) -> None:
    s1 = repo.writable_session("main")
    root = zarr.open_group(s1.store, mode="w")
    root.create_group("g1")
    a = root.create_array("g1/a", shape=(4,), chunks=(2,), dtype="i1")
    a[:] = 1
    root.create_array("b", shape=(2, 2), chunks=(1, 1), dtype="i1")[0, :] = 7
    committed = [
        "b/c/0/0",
        "b/c/0/1",
        "b/zarr.json",
        "g1/a/c/0",
        "g1/a/c/1",
        "g1/a/zarr.json",
        "g1/zarr.json",
        "zarr.json",
    ]
    assert await collect(s1.store.list()) == committed
    s1.commit("one")
    assert await collect(s1.store.list()) == committed

    s2 = repo.writable_session("main")
    st = s2.store
    assert await collect(st.list()) == committed
    # stage: a new group and array, a new chunk, a deleted chunk, a deleted array
    zarr.open_group(st, mode="r+").create_group("g2")
    await st.set("b/c/1/1", Buf.from_bytes(b"\x05"))
    await st.delete("b/c/0/0")
    await st.delete_dir("g1/a")
    staged = ["b/c/0/1", "b/c/1/1", "b/zarr.json", "g1/zarr.json", "g2/zarr.json", "zarr.json"]
    assert await collect(st.list()) == staged
    assert await collect(st.list_prefix("b/")) == ["b/c/0/1", "b/c/1/1", "b/zarr.json"]
    assert await collect(st.list_prefix("b/c/1")) == ["b/c/1/1"]
    assert await collect(st.list_prefix("g")) == ["g1/zarr.json", "g2/zarr.json"]
    assert await collect(st.list_dir("")) == ["b", "g1", "g2", "zarr.json"]
    assert await collect(st.list_dir("b/c")) == ["0", "1"]
    assert await collect(st.list_dir("g1")) == ["zarr.json"]
    # a read-only session still sees the committed state
    ro = repo.readonly_session("main").store
    assert await collect(ro.list()) == committed
    assert await collect(ro.list_dir("g1")) == ["a", "zarr.json"]
    s2.commit("two")
    ro2 = repo.readonly_session("main").store
    assert await collect(ro2.list()) == staged
    assert await collect(ro.list()) == committed  # the older read-only view is unchanged


async def test_delete_arrays_and_groups(repo: frazil.Repository) -> None:
    s1 = repo.writable_session("main")
    root = zarr.open_group(s1.store, mode="w")
    root.create_group("grp").create_group("inner")
    for name in ("x", "grp/y", "grp/inner/z", "xy"):
        arr = root.create_array(name, shape=(3,), chunks=(1,), dtype="u1")
        arr[:] = 3
    s1.commit("tree")

    s2 = repo.writable_session("main")
    g = zarr.open_group(s2.store, mode="r+")
    del g["x"]  # an array: its metadata and chunks go, "xy" (same prefix) stays
    assert "x" not in g
    assert "xy" in g
    assert await collect(s2.store.list_prefix("x")) == [
        "xy/c/0",
        "xy/c/1",
        "xy/c/2",
        "xy/zarr.json",
    ]
    del g["grp"]  # a group: everything under it goes
    assert sorted(g.keys()) == ["xy"]
    assert await collect(s2.store.list()) == [
        "xy/c/0",
        "xy/c/1",
        "xy/c/2",
        "xy/zarr.json",
        "zarr.json",
    ]
    s2.commit("deleted")
    g2 = zarr.open_group(repo.readonly_session("main").store, mode="r")
    assert sorted(g2.keys()) == ["xy"]
    np.testing.assert_array_equal(g2["xy"][:], [3, 3, 3])

    s3 = repo.writable_session("main")
    await s3.store.delete_dir("xy/c")  # only the chunks: reads give the fill value
    assert await collect(s3.store.list()) == ["xy/zarr.json", "zarr.json"]
    np.testing.assert_array_equal(zarr.open_array(s3.store, path="xy")[:], [0, 0, 0])
    await s3.store.delete_dir("")  # everything
    assert await s3.store.is_empty("")
    s3.commit("emptied")
    assert await repo.readonly_session("main").store.is_empty("")


async def test_recreate_array_drops_old_chunks(session: frazil.Session) -> None:
    store = session.store
    a = zarr.create_array(store, name="a", shape=(4,), chunks=(2,), dtype="i4")
    a[:] = 5
    b = zarr.create_array(store, name="a", shape=(2, 2), chunks=(1, 1), dtype="i4", overwrite=True)
    assert await collect(store.list_prefix("a/")) == ["a/zarr.json"]
    np.testing.assert_array_equal(b[:], np.zeros((2, 2)))
    zarr.open_group(store, mode="a").create_group("a", overwrite=True)
    assert await collect(store.list_prefix("a/")) == ["a/zarr.json"]


async def test_read_only_session_refuses_writes(repo: frazil.Repository) -> None:
    s = repo.writable_session("main")
    arr = zarr.create_array(s.store, name="x", shape=(6,), chunks=(3,), dtype="i4")
    arr[:] = np.arange(6)
    s.commit("x")

    ro = repo.readonly_session("main")
    st = ro.store
    assert st.read_only
    for op in (
        st.set("x/c/0", Buf.from_bytes(b"1234")),
        st.set("zarr.json", Buf.from_bytes(group_doc())),
        st.delete("x/c/0"),
        st.delete("x/zarr.json"),
        st.delete_dir("x"),
        st.clear(),
        st.set_if_not_exists("x/c/9", Buf.from_bytes(b"1")),
    ):
        with pytest.raises(ReadOnlyError):
            await op
    with pytest.raises(ReadOnlyError):
        st.with_read_only(False)
    assert st.with_read_only(True) == st

    # zarr passes the store's error through unchanged
    ro_arr = zarr.open_array(st, path="x", mode="r")
    with pytest.raises(ReadOnlyError):
        ro_arr[:] = 0
    with pytest.raises(ValueError, match="read-only"):  # zarr's own check of the mode
        zarr.open_group(st, mode="a")
    # a committed session is read-only at its new snapshot
    assert s.read_only and s.store.read_only
    with pytest.raises(ReadOnlyError):
        zarr.open_array(s.store, path="x")[:] = 1
    # a read-only view of a writable session
    w = repo.writable_session("main")
    view = w.store.with_read_only(True)
    assert view.read_only and not w.store.read_only
    with pytest.raises(ReadOnlyError):
        await view.set("x/c/0", Buf.from_bytes(b"1234"))
    np.testing.assert_array_equal(zarr.open_array(view, path="x", mode="r")[:], np.arange(6))
    np.testing.assert_array_equal(zarr.open_array(st, path="x")[:], np.arange(6))


def test_zarr_api_round_trip_and_time_travel(repo: frazil.Repository) -> None:
    s1 = repo.writable_session("main")
    root = zarr.open_group(s1.store, mode="w", attributes={"v": 1})
    temp = root.create_array(
        "temp",
        shape=(20, 10),
        chunks=(8, 4),
        dtype="f4",
        attributes={"units": "K"},
        fill_value=np.nan,
    )
    temp[:] = np.full((20, 10), 1.5, dtype="f4")
    labels = root.create_array("labels", shape=(3,), dtype=str, chunks=(3,))
    labels[:] = np.array(["a", "bb", "ccc"])
    sid1 = s1.commit("v1")

    s2 = repo.writable_session("main")
    root2 = zarr.open_group(s2.store, mode="r+")
    root2.attrs["v"] = 2
    t2 = root2["temp"]
    t2[5:7, :] = 9.0
    t2.resize((25, 10))
    t2[20:, :] = 2.0
    # uncommitted changes are visible in the writable session only
    assert zarr.open_group(repo.readonly_session("main").store, mode="r").attrs["v"] == 1
    sid2 = s2.commit("v2")
    assert sid2 != sid1

    new = zarr.open_group(repo.readonly_session("main").store, mode="r")
    assert new.attrs["v"] == 2
    assert new["temp"].shape == (25, 10)
    assert float(new["temp"][6, 3]) == 9.0 and float(new["temp"][24, 9]) == 2.0
    old = zarr.open_group(repo.readonly_session(snapshot_id=sid1).store, mode="r")
    assert old.attrs["v"] == 1
    assert old["temp"].shape == (20, 10)
    np.testing.assert_array_equal(old["temp"][:], np.full((20, 10), 1.5, dtype="f4"))
    assert old["temp"].attrs["units"] == "K"
    assert list(old["labels"][:]) == ["a", "bb", "ccc"]
