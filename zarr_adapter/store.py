"""``FrazilStore``: the ``zarr.abc.store.Store`` over a session.

Thin by design: each key is parsed once into a metadata key (``<path>/zarr.json``) or a
chunk key (array path + chunk coordinates, by the array's ``chunk_key_encoding``), then
the session does the work. Keys that are neither are refused on write.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    Store,
    SuffixByteRequest,
)
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.core.common import BytesLike
from zarr.core.sync import sync as zarr_sync

from frazil.errors import InvalidInputError, InvalidTypeError, KeyNotFoundError, ReadOnlyError
from frazil.format import ARRAY, Coord
from frazil.storage.base import slice_range
from frazil.virtual import VirtualChunkSpec
from frazil.zarrmeta import NodeMeta

if TYPE_CHECKING:
    from frazil.session import Session

META = "zarr.json"
_BAD_KEY_CHARS = re.compile(r"[\\\x00-\x1f\x7f]")


def _byte_range(br: ByteRequest | None) -> tuple[int, int | None] | None:
    if br is None:
        return None
    if isinstance(br, RangeByteRequest):
        if br.start < 0 or br.end < br.start:
            raise InvalidInputError(f"invalid byte range {br.start}-{br.end}")
        return (br.start, br.end)
    if isinstance(br, OffsetByteRequest):
        if br.offset < 0:
            raise InvalidInputError(f"invalid byte offset {br.offset}")
        return (br.offset, None)
    if isinstance(br, SuffixByteRequest):
        if br.suffix < 0:
            raise InvalidInputError(f"invalid byte suffix {br.suffix}")
        return (-br.suffix, None) if br.suffix else (0, 0)
    raise InvalidInputError(f"Unexpected byte_range, got {br!r}")


def _node_key(path: str) -> str:
    return META if path == "/" else f"{path[1:]}/{META}"


def _parse_chunk(rest: str, meta: NodeMeta) -> Coord | None:
    """Chunk coordinates from the part of a key after the array's path, or None."""
    sep = meta.separator
    if meta.key_encoding == "default":
        if rest == "c":
            return () if meta.ndim == 0 else None
        if not rest.startswith("c" + sep):
            return None
        parts = rest[2:].split(sep)
    else:  # v2
        if meta.ndim == 0:
            return () if rest == "0" else None
        parts = rest.split(sep)
    if len(parts) != meta.ndim or not all(p.isdigit() and p.isascii() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def _is_fork(session: Session) -> bool:
    """Whether ``session`` pickles as a fork: it is one, or allows pickling (deprecated)."""
    from frazil.session import ForkSession

    return isinstance(session, ForkSession) or session._pickling_allowed


def _restore(session: Session, read_only: bool) -> FrazilStore:
    return FrazilStore(session, read_only=read_only or None, is_open=True)


DETACHED_MESSAGE = (
    "this store belongs to a writable Session in another process, and a writable Session "
    "cannot be sent to other processes or workers: its staged changes would be lost. "
    "Write from workers through a fork (fork = session.fork(); ds.to_zarr(fork.store, "
    "...); session.merge(fork)), or let frazil.xarray.to_frazil(ds, session) (and "
    "frazil.dask.store_dask) do it, then commit the session"
)


class DetachedStore(Store):
    """What a writable session's store becomes when pickled: every call raises
    ``InvalidInputError`` saying how to write from workers (see ``FrazilStore``)."""

    supports_writes = True
    supports_deletes = True
    supports_listing = True
    supports_partial_writes = False

    def __init__(self, message: str = DETACHED_MESSAGE) -> None:
        super().__init__(read_only=False)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (DetachedStore, (self.message,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DetachedStore)

    def __hash__(self) -> int:
        return hash(DetachedStore)

    def _refuse(self) -> InvalidInputError:
        return InvalidInputError(self.message)

    def with_read_only(self, read_only: bool = False) -> DetachedStore:
        raise self._refuse()

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        raise self._refuse()

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        raise self._refuse()

    async def exists(self, key: str) -> bool:
        raise self._refuse()

    async def set(self, key: str, value: Buffer) -> None:
        raise self._refuse()

    async def delete(self, key: str) -> None:
        raise self._refuse()

    async def list(self) -> AsyncIterator[str]:
        raise self._refuse()
        yield ""  # pragma: no cover

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        raise self._refuse()
        yield ""  # pragma: no cover

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        raise self._refuse()
        yield ""  # pragma: no cover


def _chunk_key(path: str, meta: NodeMeta, coord: Coord) -> str:
    prefix = "" if path == "/" else path[1:] + "/"
    sep = meta.separator
    if meta.key_encoding == "default":
        return prefix + ("c" if not coord else "c" + sep + sep.join(map(str, coord)))
    return prefix + (sep.join(map(str, coord)) if coord else "0")


class _RawStore:
    """``store._store``: raw bytes in and out of a ``FrazilStore`` by zarr key, with no
    ``Buffer`` (the shape of Icechunk's private store object, which its tests use)."""

    __slots__ = ("_outer",)

    def __init__(self, outer: FrazilStore) -> None:
        self._outer = outer

    async def get(self, key: str) -> bytes | None:
        """The whole value at ``key``, or None where there is none."""
        from zarr.core.buffer import default_buffer_prototype

        buf = await self._outer.get(key, prototype=default_buffer_prototype())
        return None if buf is None else buf.to_bytes()

    async def set(self, key: str, value: bytes) -> None:
        """Write ``value`` at ``key`` (``FrazilStore.set``, from bytes)."""
        from zarr.core.buffer import default_buffer_prototype

        await self._outer.set(key, default_buffer_prototype().buffer.from_bytes(value))


class FrazilStore(Store):
    """A Zarr v3 store whose reads and writes go through a frazil ``Session``."""

    supports_writes = True
    supports_deletes = True
    supports_listing = True
    supports_partial_writes = False

    def __init__(
        self, session: Session, *, read_only: bool | None = None, is_open: bool = False
    ) -> None:
        """``is_open``: start open, as ``Session.store`` hands it out (Icechunk's is);
        constructed directly, the store opens on first use, as zarr's stores do."""
        super().__init__(read_only=session.read_only if read_only is None else read_only)
        self._session = session
        self._force_read_only = bool(read_only)
        self._is_open = is_open

    @property
    def _store(self) -> _RawStore:
        """Raw bytes by key (Icechunk's private ``store._store``, which its tests use)."""
        return _RawStore(self)

    @property
    def session(self) -> Session:
        return self._session

    @property
    def read_only(self) -> bool:
        return self._force_read_only or self._session.read_only

    @property
    def supports_consolidated_metadata(self) -> bool:
        return False

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyError(
                "cannot write to a read-only store (a read-only or committed session); use "
                "repo.writable_session(branch) to write"
            )

    def with_read_only(self, read_only: bool = False) -> FrazilStore:
        if not read_only and self._session.read_only:
            raise ReadOnlyError("cannot make a writable store from a read-only session")
        return FrazilStore(self._session, read_only=read_only)

    def __eq__(self, other: object) -> bool:
        # Read-only sessions at one snapshot see identical, immutable content, so their
        # stores are equal (this is what makes a pickled read-only store equal to itself).
        if not isinstance(other, FrazilStore) or other.read_only != self.read_only:
            return False
        a, b = self._session, other._session
        return a is b or (a.read_only and b.read_only and a.snapshot_id == b.snapshot_id)

    def __hash__(self) -> int:
        return hash(self._session.snapshot_id)

    def __repr__(self) -> str:
        return f"FrazilStore({self._session!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        session = self._session
        if not session.read_only and not self._force_read_only and not _is_fork(session):
            # A writable session cannot leave this process. Pickling its store (dask
            # does, for every task of ds.to_zarr(session.store) on worker processes)
            # gives a store that refuses every call with the fix, so that the error
            # the user sees is this one, raised by the task, not a serialization error.
            return (DetachedStore, (DETACHED_MESSAGE,))
        return (_restore, (session, self._force_read_only))

    def __getstate__(self) -> dict[str, Any]:
        return {"session": self._session, "read_only": self._force_read_only}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["session"], read_only=state["read_only"] or None)  # type: ignore[misc]

    # -- key parsing -----------------------------------------------------------------------
    def _parse(self, key: str) -> tuple[str, str, Coord | None] | None:
        """``("meta", path, None)``, ``("chunk", array_path, coord)`` or None."""
        if key == META:
            return ("meta", "/", None)
        if key.endswith("/" + META):
            return ("meta", "/" + key[: -len(META) - 1], None)
        parts = key.split("/")
        for i in range(len(parts) - 1, -1, -1):
            path = "/" + "/".join(parts[:i])
            rec = self._session.node(path)
            if rec is not None and rec.node_type == ARRAY:
                coord = _parse_chunk("/".join(parts[i:]), self._session.node_meta(rec))
                return ("chunk", path, coord) if coord is not None else None
        return None

    @staticmethod
    def _valid_key(key: str) -> None:
        if (
            not isinstance(key, str)
            or key.startswith("/")
            or any(p in ("", ".", "..") for p in key.split("/"))
            or _BAD_KEY_CHARS.search(key)
        ):
            raise InvalidInputError(
                f"invalid zarr key {key!r}: no leading '/', empty parts, "
                "'.' or '..', backslashes or control characters"
            )

    def _not_a_key(self, key: str) -> str:
        """Why ``key`` names nothing that can be stored (for error messages)."""
        parts = key.split("/")
        for i in range(len(parts) - 1, -1, -1):
            path = "/" + "/".join(parts[:i])
            rec = self._session.node(path)
            if rec is not None and rec.node_type == ARRAY:
                meta = self._session.node_meta(rec)
                example = _chunk_key(path, meta, (0,) * meta.ndim)
                return (
                    f"cannot store {key!r}: it is not a chunk key of the array {path!r} "
                    f"({meta.ndim} dimensions; its chunk keys look like {example!r})"
                )
        return (
            f"cannot store {key!r}: it is neither a zarr.json nor a chunk key of an "
            "existing array (write the array's zarr.json first)"
        )

    # -- reads -----------------------------------------------------------------------------
    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        self._valid_key(key)
        br = _byte_range(byte_range)
        parsed = self._parse(key)
        if parsed is None:
            return None
        kind, path, coord = parsed
        if kind == "meta":
            rec = self._session.node(path)
            if rec is None:
                return None
            self._session.node_meta(rec)  # never hand zarr a document it cannot parse
            data: bytes | None = slice_range(rec.zarr_json, br)
        else:
            assert coord is not None
            data = await self._session.get_chunk(path, coord, br)
        return None if data is None else prototype.buffer.from_bytes(data)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        """Whether ``key`` holds a value: False for a key that can name nothing, as zarr's
        stores answer (Icechunk's raises)."""
        self._valid_key(key)
        parsed = self._parse(key)
        if parsed is None:
            return False
        kind, path, coord = parsed
        if kind == "meta":
            return self._session.node(path) is not None
        assert coord is not None
        return await self._session.chunk_ref(path, coord) is not None

    async def getsize(self, key: str) -> int:
        self._valid_key(key)
        parsed = self._parse(key)
        if parsed is not None and parsed[0] == "chunk":
            assert parsed[2] is not None
            ref = await self._session.chunk_ref(parsed[1], parsed[2])
            if ref is not None and ref.length:
                return ref.length
        from zarr.core.buffer import default_buffer_prototype

        value = await self.get(key, prototype=default_buffer_prototype())
        if value is None:
            raise KeyNotFoundError(f"getsize: no value at key {key!r} in this session")
        return len(value)

    # -- writes ----------------------------------------------------------------------------
    async def set(self, key: str, value: Buffer) -> None:
        self._check_writable()
        self._valid_key(key)
        if not isinstance(value, Buffer):  # zarr's own stores' wording
            raise InvalidTypeError(
                "FrazilStore.set(): `value` must be a Buffer instance. Got an instance of "
                f"{type(value)} instead."
            )
        parsed = self._parse(key)
        if parsed is None:
            raise InvalidInputError(self._not_a_key(key))
        kind, path, coord = parsed
        if kind == "meta":
            self._session.set_metadata(path, value.to_bytes())
            await self._session.flush_journal()  # a fork copy's write is journaled first
        else:
            assert coord is not None
            await self._session.set_chunk(path, coord, value.to_bytes())

    # -- virtual chunks (Icechunk's names; the session does the work) ----------------------
    def set_virtual_ref(
        self,
        key: str,
        location: str,
        *,
        offset: int,
        length: int,
        checksum: str | datetime.datetime | None = None,
        validate_container: bool = False,
    ) -> None:
        """Point the chunk ``key`` at ``length`` bytes at ``offset`` of ``location``;
        ``checksum`` (an ETag, or a last-modified bound) pins the source."""
        self._check_writable()
        self._valid_key(key)
        parsed = self._parse(key)
        if parsed is None or parsed[0] != "chunk" or parsed[2] is None:
            raise InvalidInputError(self._not_a_key(key))
        self._session.set_virtual_ref(
            parsed[1],
            parsed[2],
            location,
            offset=offset,
            length=length,
            checksum=checksum,
            validate_container=validate_container,
        )

    def set_virtual_refs(
        self,
        array_path: str,
        chunks: Sequence[VirtualChunkSpec],
        *,
        validate_containers: bool = True,
    ) -> list[Coord] | None:
        """Many virtual refs of one array; returns the indices refused for being under
        no container (with ``validate_containers``), else None."""
        self._check_writable()
        return self._session.set_virtual_refs(
            array_path, chunks, validate_containers=validate_containers
        )

    def set_virtual_refs_arrays(
        self, array_path: str, locations: Any, offsets: Any, lengths: Any, **kwargs: Any
    ) -> int:
        """The columnar fast path (``Session.set_virtual_refs_arrays``)."""
        self._check_writable()
        return int(
            self._session.set_virtual_refs_arrays(array_path, locations, offsets, lengths, **kwargs)
        )

    async def set_virtual_ref_async(
        self,
        key: str,
        location: str,
        *,
        offset: int,
        length: int,
        checksum: str | datetime.datetime | None = None,
        validate_container: bool = False,
    ) -> None:
        """``set_virtual_ref``, run in a thread (``asyncio.to_thread``)."""
        await asyncio.to_thread(
            functools.partial(
                self.set_virtual_ref,
                key,
                location,
                offset=offset,
                length=length,
                checksum=checksum,
                validate_container=validate_container,
            )
        )

    async def set_virtual_refs_async(
        self,
        array_path: str,
        chunks: Sequence[VirtualChunkSpec],
        *,
        validate_containers: bool = True,
    ) -> list[Coord] | None:
        """``set_virtual_refs``, run in a thread (``asyncio.to_thread``)."""
        return await asyncio.to_thread(
            functools.partial(
                self.set_virtual_refs, array_path, chunks, validate_containers=validate_containers
            )
        )

    def sync_clear(self) -> None:
        """``clear`` from synchronous code: every group and array of the session is
        deleted (staged, like any write); history is untouched."""
        zarr_sync(self.clear())

    async def set_partial_values(
        self, key_start_values: Iterable[tuple[str, int, BytesLike]]
    ) -> None:
        """Refused: chunks are immutable objects, so a write replaces a whole chunk
        (``supports_partial_writes`` is False, and zarr never calls this)."""
        raise InvalidInputError(
            "partial writes are not supported: write whole chunks (supports_partial_writes "
            "is False)"
        )

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        if not await self.exists(key):
            await self.set(key, value)

    async def delete(self, key: str) -> None:
        self._check_writable()
        self._valid_key(key)
        parsed = self._parse(key)
        if parsed is None:
            return
        kind, path, coord = parsed
        if kind == "meta":
            self._session.delete_node(path)
            await self._session.flush_journal()
        else:
            assert coord is not None
            await self._session.delete_chunk(path, coord)

    async def delete_dir(self, prefix: str) -> None:
        self._check_writable()
        stripped = prefix.rstrip("/")
        if stripped == "":
            self._session.delete_tree("/")
            await self._session.flush_journal()
            return
        path = "/" + stripped
        if self._session.node(path) is not None or any(
            n.path.startswith(path + "/") for n in self._session.nodes()
        ):
            self._session.delete_tree(path)
            await self._session.flush_journal()
            return
        async for key in self.list_prefix(stripped + "/"):
            await self.delete(key)

    # -- listing ---------------------------------------------------------------------------
    async def _keys(self, prefix: str) -> list[str]:
        out: list[str] = []
        for rec in list(self._session.nodes()):
            node_prefix = "" if rec.path == "/" else rec.path[1:] + "/"
            if not (node_prefix.startswith(prefix) or prefix.startswith(node_prefix)):
                continue
            mk = _node_key(rec.path)
            if mk.startswith(prefix):
                out.append(mk)
            if rec.node_type == ARRAY:
                meta = self._session.node_meta(rec)
                for coord in await self._session.chunk_coords(rec.path):
                    ck = _chunk_key(rec.path, meta, coord)
                    if ck.startswith(prefix):
                        out.append(ck)
        return out

    async def _dir(self, prefix: str) -> list[str]:
        prefix = prefix.strip("/")
        base = prefix + "/" if prefix else ""
        return list(dict.fromkeys(k[len(base) :].split("/", 1)[0] for k in await self._keys(base)))

    def list(self) -> AsyncIterator[str]:
        return _Keys(lambda: self._keys(""))

    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        """The keys that start with ``prefix``; a leading ``/`` stands for the root, as in
        Icechunk's store and zarr's ``LocalStore`` (``list_prefix("/")`` lists every key).
        The prefix is a string prefix, as the zarr ``Store`` docs and ``MemoryStore`` have it
        (``"foo"`` lists ``foo-bar/...`` too; Icechunk's treats it as a path).
        Iterable with ``async for``, and with ``for`` from synchronous code (as Icechunk's)."""
        return _Keys(lambda: self._keys(prefix.lstrip("/")))

    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        return _Keys(lambda: self._dir(prefix))


class _Keys(AsyncIterator[str]):
    """A listing of a ``FrazilStore``: an async iterator, as zarr wants, that synchronous code
    can also iterate with ``for`` (Icechunk's listings can be). Computed on first use."""

    __slots__ = ("_make", "_items")

    def __init__(self, make: Callable[[], Coroutine[Any, Any, list[str]]]) -> None:
        self._make = make
        self._items: Iterator[str] | None = None

    def __aiter__(self) -> _Keys:
        return self

    async def __anext__(self) -> str:
        if self._items is None:
            self._items = iter(await self._make())
        try:
            return next(self._items)
        except StopIteration:
            raise StopAsyncIteration from None

    def __iter__(self) -> Iterator[str]:
        if self._items is None:
            self._items = iter(zarr_sync(self._make()))
        return self._items
