"""Reading virtual chunks: ``VirtualResolver`` resolves each location (canonical form,
container, authorization, confirmed endpoint), batches the reads made together, coalesces
adjacent ranges of one file into one request, and serves bytes only if the response
matches the reference's pins.

* a location resolves through the declared container with the longest prefix containing
  it, and only if whoever opened the repository authorized that prefix
  (``authorize_virtual_chunk_access``); otherwise ``VirtualChunkError`` names the prefix
  (or the lack of one) and how to fix it. Nothing is authorized by default;
* credentials are sent only to store settings the reader confirmed (``unconfirmed_endpoint``);
* reads made together (one ``get_partial_values`` call, or the concurrent ``get`` calls of
  one zarr read, gathered over a few event-loop turns) are grouped by file and adjacent
  ranges (gaps up to ``COALESCE_GAP`` bytes, requests up to ``COALESCE_MAX`` bytes) are
  fetched by one request; requests run concurrently;
* a reference with an ETag is served only if the response that carried its bytes has
  that ETag; one with a last-modified bound only if that response says the file was not
  modified after it. Anything else, and a file shorter than the reference, is a
  ``VirtualChunkError`` naming the location: other bytes are never returned.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import weakref
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from frazil.format import ChunkKind, ChunkRef

from .. import runtime
from ..errors import FrazilError, StorageError, VirtualChunkError
from ..storage.base import ByteRange
from ..storage.gcs import GcsCredentials
from .containers import (
    AnyCredential,
    AzureStoreConfig,
    GcsStoreConfig,
    S3Credentials,
    S3StoreConfig,
    VirtualChunkContainer,
)
from .locations import Location, LocationError, parse_location
from .sources import SOURCES, Fetched
from .staging import container_for, outside_message, utc_seconds

if TYPE_CHECKING:
    from ..config import RepositoryConfig

COALESCE_GAP = 64 * 1024
COALESCE_MAX = 32 << 20
_SETTLE_TURNS = 4  # event-loop turns a batch of reads waits for more to join it


@dataclass(frozen=True, slots=True)
class VirtualRead:
    """Bytes ``start``..``end`` (absolute, end exclusive) of ``location``, with the
    reference's pins."""

    location: str
    start: int
    end: int
    etag: str | None = None
    last_modified: dt.datetime | None = None


def read_for(ref: ChunkRef, byte_range: ByteRange | None) -> VirtualRead:
    """The absolute range of ``ref``'s file that ``byte_range`` of its chunk selects."""
    assert ref.location is not None and ref.kind == ChunkKind.VIRTUAL
    n = ref.length
    if byte_range is None:
        s, e = 0, n
    else:
        s, end = byte_range
        if s < 0:
            s, e = max(n + s, 0), n
        else:
            s = min(s, n)
            e = n if end is None else max(min(end, n), s)
    return VirtualRead(ref.location, ref.offset + s, ref.offset + e, ref.etag, ref.last_modified)


def _plain_etag(etag: str) -> str:
    etag = etag.strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    return etag.strip('"')


def _check_pins(read: VirtualRead, got: Fetched) -> None:
    if read.etag is not None:
        if got.etag is None:
            raise VirtualChunkError(
                f"virtual chunk source {read.location!r}: the reference is pinned to ETag "
                f"{read.etag!r} but the source reports no ETag, so it cannot be verified; "
                "refusing to read it",
                location=read.location,
            )
        if _plain_etag(got.etag) != _plain_etag(read.etag):
            raise VirtualChunkError(
                f"virtual chunk has changed: source {read.location!r} has changed since the "
                f"reference was made: its ETag is {got.etag!r}, the reference expects "
                f"{read.etag!r}; refusing to read it",
                location=read.location,
            )
    if read.last_modified is not None:
        if got.last_modified is None:
            raise VirtualChunkError(
                f"virtual chunk source {read.location!r}: the reference is pinned to a "
                "last-modified time but the source reports none; refusing to read it",
                location=read.location,
            )
        bound = utc_seconds(read.last_modified)
        if utc_seconds(got.last_modified) > bound:
            raise VirtualChunkError(
                f"virtual chunk has changed: source {read.location!r} has changed since the "
                f"reference was made: modified at {got.last_modified.isoformat()}, after "
                f"{bound.isoformat()}; refusing to read it",
                location=read.location,
            )


class _Batcher:
    """Reads submitted on one loop within a few turns of each other go out together."""

    def __init__(self, resolver: VirtualResolver, loop: asyncio.AbstractEventLoop) -> None:
        self.resolver = resolver
        self.loop = loop
        self.pending: list[tuple[VirtualRead, asyncio.Future[bytes]]] = []
        self.turns = 0
        self.seen = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def submit(self, read: VirtualRead) -> asyncio.Future[bytes]:
        fut: asyncio.Future[bytes] = self.loop.create_future()
        self.pending.append((read, fut))
        if len(self.pending) == 1:
            self.turns, self.seen = 0, 1
            self.loop.call_soon(self._tick)
        return fut

    def _tick(self) -> None:
        if len(self.pending) != self.seen and self.turns < _SETTLE_TURNS:
            self.turns += 1
            self.seen = len(self.pending)
            self.loop.call_soon(self._tick)
            return
        items, self.pending = self.pending, []
        task = self.loop.create_task(self._run(items))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, items: list[tuple[VirtualRead, asyncio.Future[bytes]]]) -> None:
        try:
            results = await self.resolver.read_many([r for r, _ in items])
        except BaseException as e:  # never leave a reader waiting
            results = [e] * len(items)
        for (_, fut), res in zip(items, results):
            if fut.done():
                continue
            if isinstance(res, BaseException):
                fut.set_exception(res)
            else:
                fut.set_result(res)


class VirtualResolver:
    """Reads virtual chunks of one repository: its config's containers (looked up live),
    the authorization it was opened with, and which stored containers the opener did not
    confirm (``untrusted``: prefix -> the container as the stored config declares it)."""

    def __init__(
        self,
        config: RepositoryConfig,
        auth: Mapping[str, AnyCredential | None],
        untrusted: Mapping[str, VirtualChunkContainer] | None = None,
    ) -> None:
        self.config = config
        self.auth = dict(auth)
        self.untrusted = dict(untrusted or {})
        self.requests = 0  # requests sent to sources (for tests and benchmarks)
        self._sources: dict[tuple[str, str], Any] = {}
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Batcher] = (
            weakref.WeakKeyDictionary()
        )
        runtime.reset_in_child(self)

    def _after_fork(self) -> None:
        self._sources = {}
        self._batchers = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"<VirtualResolver authorized={sorted(self.auth)}>"

    def authorized_container(self, location: str) -> tuple[VirtualChunkContainer, Location]:
        """The container to read ``location`` through and the location's canonical form
        (the only form used to read it), or ``VirtualChunkError``."""
        try:
            loc = parse_location(location)
        except LocationError as e:
            raise VirtualChunkError(
                f"cannot read virtual chunk: {e}",
                location=location if isinstance(location, str) else None,
            ) from None
        container = container_for(self.config, loc)
        if container is None:
            raise VirtualChunkError(
                outside_message([location], self.config) + ", and authorize it when "
                "opening the repository",
                location=location,
            )
        prefix = container.url_prefix
        if prefix not in self.auth:
            raise VirtualChunkError(
                f"virtual chunk container {prefix!r} is not authorized, so frazil refuses "
                f"to read {location!r}: open the repository with "
                f"authorize_virtual_chunk_access=frazil.containers_credentials("
                f"{{{prefix!r}: credentials}}) (credentials None: those of the "
                "environment)",
                location=location,
                url_prefix=prefix,
            )
        problem = unconfirmed_endpoint(container, self.auth[prefix], self.untrusted)
        if problem is not None:
            raise VirtualChunkError(problem, location=location, url_prefix=prefix)
        return container, loc

    def _source(self, container: VirtualChunkContainer) -> Any:
        key = (container.url_prefix, json.dumps(container.to_dict(), sort_keys=True))
        src = self._sources.get(key)
        if src is None:
            src = self._sources[key] = SOURCES[container.store.type](
                container, self.auth.get(container.url_prefix)
            )
        return src

    async def read(self, ref: ChunkRef, byte_range: ByteRange | None = None) -> bytes:
        """One chunk (or a range of it); batched with reads made at about the same time."""
        read = read_for(ref, byte_range)
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            batcher = self._batchers[loop] = _Batcher(self, loop)
        return await batcher.submit(read)

    async def read_many(self, reads: Sequence[VirtualRead]) -> list[bytes | BaseException]:
        """Every read's bytes or its error; adjacent ranges of a file are coalesced."""
        out: list[bytes | BaseException] = [b""] * len(reads)
        by_file: dict[Location, list[int]] = {}
        containers: dict[Location, VirtualChunkContainer] = {}
        for i, r in enumerate(reads):
            try:
                container, loc = self.authorized_container(r.location)
            except VirtualChunkError as e:
                out[i] = e
                continue
            containers[loc] = container
            if r.end > r.start:
                by_file.setdefault(loc, []).append(i)
        jobs: list[Awaitable[None]] = []
        for loc, idx in by_file.items():
            idx.sort(key=lambda i: reads[i].start)
            group = [idx[0]]
            lo, hi = reads[idx[0]].start, reads[idx[0]].end
            for i in idx[1:]:
                r = reads[i]
                if r.start <= hi + COALESCE_GAP and max(hi, r.end) - lo <= COALESCE_MAX:
                    group.append(i)
                    hi = max(hi, r.end)
                    continue
                jobs.append(self._fetch(containers[loc], loc, lo, hi, group, reads, out))
                group, lo, hi = [i], r.start, r.end
            jobs.append(self._fetch(containers[loc], loc, lo, hi, group, reads, out))
        await runtime.gather_limited(jobs)
        return out

    async def _fetch(
        self,
        container: VirtualChunkContainer,
        loc: Location,
        lo: int,
        hi: int,
        group: list[int],
        reads: Sequence[VirtualRead],
        out: list[bytes | BaseException],
    ) -> None:
        self.requests += 1
        try:
            got = await self._source(container).fetch(loc, lo, hi)
        except FrazilError as e:
            for i in group:
                out[i] = e
            return
        except Exception as e:  # an unexpected library error: still the caller's error
            err = StorageError(f"reading virtual chunk source {loc}: {type(e).__name__}: {e}")
            for i in group:
                out[i] = err
            return
        for i in group:
            r = reads[i]
            data = got.data[r.start - lo : r.end - lo]
            try:
                if len(data) != r.end - r.start:
                    raise VirtualChunkError(
                        f"virtual chunk source {r.location!r} is shorter than referenced: "
                        f"bytes {r.start}-{r.end - 1} asked, {len(data)} of them there; "
                        "refusing to read it",
                        location=r.location,
                    )
                _check_pins(r, got)
            except VirtualChunkError as e:
                out[i] = e
                continue
            out[i] = data


def unconfirmed_endpoint(
    container: VirtualChunkContainer,
    cred: AnyCredential | None,
    untrusted: Mapping[str, VirtualChunkContainer],
) -> str | None:
    """Why the reader's credentials must not be sent through ``container``, or None.

    Credentials (keys given, or the environment's) are sent only to store settings the
    reader confirmed: a container whose S3 store names an endpoint of its own, or allows
    plain http, counts as confirmed when the reader passed it (in ``config=`` when
    opening, or by creating the repository), not when it comes only from the stored
    config. Anonymous reads send nothing secret and need no confirmation."""
    store = container.store
    if isinstance(store, AzureStoreConfig):
        return _unconfirmed_azure_options(container, store, untrusted)
    if isinstance(store, GcsStoreConfig):
        return _unconfirmed_gcs_options(container, store, cred, untrusted)
    if not isinstance(store, S3StoreConfig) or store.anonymous:
        return None
    if isinstance(cred, S3Credentials) and cred.kind == "anonymous":
        return None
    if store.endpoint_url is None and not store.allow_http:
        return None  # the provider's own endpoint, over https
    if untrusted.get(container.url_prefix) != container:
        return None  # the reader passed these settings
    where = store.endpoint_url or "the default endpoint"
    how = " over plain http" if store.allow_http else ""
    return (
        f"virtual chunk container {container.url_prefix!r} would send your credentials to "
        f"{where}{how}, an endpoint named by the repository's stored config, not by you; "
        "frazil does not send credentials where a repository alone says. If you trust it, "
        "confirm it when opening: Repository.open(storage, config=cfg, "
        "authorize_virtual_chunk_access=...) with cfg.set_virtual_chunk_container("
        f"VirtualChunkContainer({container.url_prefix!r}, s3_store(endpoint_url="
        f"{store.endpoint_url!r}, allow_http={store.allow_http!r}, ...))); or read it "
        "with frazil.s3_anonymous_credentials()"
    )


def _unconfirmed_gcs_options(
    container: VirtualChunkContainer,
    store: GcsStoreConfig,
    cred: AnyCredential | None,
    untrusted: Mapping[str, VirtualChunkContainer],
) -> str | None:
    """A GCS store whose stored config sets options (an endpoint, plain http, ...) could
    send the reader's credentials elsewhere than GCS: refused unless the reader passed the
    same settings, or reads anonymously."""
    if isinstance(cred, GcsCredentials.Anonymous):
        return None
    if not store.opts or untrusted.get(container.url_prefix) != container:
        return None
    return (
        f"virtual chunk container {container.url_prefix!r} sets GCS options "
        f"{sorted(store.opts)} in the repository's stored config, not by you; they could "
        "send your credentials to another endpoint, so frazil does not use them. If you "
        "trust them, confirm them when opening: Repository.open(storage, config=cfg, "
        "authorize_virtual_chunk_access=...) with cfg.set_virtual_chunk_container("
        f"VirtualChunkContainer({container.url_prefix!r}, gcs_store({{...}})))"
    )


def _unconfirmed_azure_options(
    container: VirtualChunkContainer,
    store: AzureStoreConfig,
    untrusted: Mapping[str, VirtualChunkContainer],
) -> str | None:
    """An Azure store whose stored config sets any option beyond the account (an endpoint,
    plain http, the emulator, an authority or identity endpoint, ...) could send the
    reader's credentials elsewhere than Azure's own endpoint for that account: refused
    unless the reader passed the same settings."""
    if not store.options or untrusted.get(container.url_prefix) != container:
        return None
    return (
        f"virtual chunk container {container.url_prefix!r} sets Azure options "
        f"{sorted(store.options)} in the repository's stored config, not by you; they could "
        "send your credentials to another endpoint, so frazil does not use them. If you "
        "trust them, confirm them when opening: Repository.open(storage, config=cfg, "
        "authorize_virtual_chunk_access=...) with cfg.set_virtual_chunk_container("
        f"VirtualChunkContainer({container.url_prefix!r}, azure_store(account="
        f"{store.account!r}, config={{...}})))"
    )
