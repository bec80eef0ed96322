"""``Repository``: create or open a repository; branches, tags, history, diff and sessions."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import itertools
import json
import logging
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from frazil.format import CommitInfo, Snapshot, SnapshotId, keys
from frazil.format.common import BRANCH_REF, TAG_REF, FormatError
from frazil.format.config import decode_config, encode_config
from frazil.format.oplog import OpKind

from . import history, maintenance, repo_info, runtime
from .commit import initial_snapshot
from .compaction import CompactionSummary, Progress, compact_branch
from .conflicts import ConflictSolver
from .diff import Diff, diff_snapshots
from .errors import (
    AlreadyExistsError,
    ConflictError,
    ErrorKind,
    InvalidInputError,
    NotFoundError,
    ReadOnlyError,
)
from .maintenance import ChunkStorageStats, FsckReport, GCSummary
from .maintenance.reach import cutoff_ms
from .objects import ObjectReader
from .opslog import Update, read_ops_log
from .refs import (
    Move,
    Ref,
    branch_key,
    create_ref,
    delete_branch,
    list_refs,
    move_branch,
    read_ref,
    tag_key,
    tombstone_tag,
    validate_name,
)
from .session import Session, _check_metadata
from .spec import SpecVersion, check_spec_version
from .storage.base import Storage
from .virtual import VirtualResolver, check_authorization

CONFIG_KEY = keys.CONFIG
_shared_readers: weakref.WeakValueDictionary[tuple[str, str, str], ObjectReader] = (
    weakref.WeakValueDictionary()
)
MAIN = keys.MAIN

from .config import RepositoryConfig  # noqa: E402
from .virtual.containers import VirtualChunkContainer  # noqa: E402

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotInfo:
    """One entry of history."""

    id: str
    parent_id: str | None
    written_at: dt.datetime
    message: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def _repr_html_(self) -> str:
        from . import html

        return html.snapshot_info(self)

    @classmethod
    def of(cls, info: CommitInfo) -> SnapshotInfo:
        """The public view of a snapshot's commit info."""
        return cls(
            str(info.snapshot_id),
            str(info.parent_id) if info.parent_id else None,
            info.written_at,
            info.message,
            dict(info.metadata),
        )


class Ancestry(Iterator[SnapshotInfo]):
    """``Repository.ancestry``'s result: an iterator of ``SnapshotInfo``, newest first, read
    as it is consumed; in a notebook, a table of the first entries (read afresh, so showing
    it consumes nothing)."""

    def __init__(self, start: Callable[[], Iterator[SnapshotInfo]]) -> None:
        self._start = start
        self._it: Iterator[SnapshotInfo] = start()  # the ref is looked up now

    def __iter__(self) -> Ancestry:
        return self

    def __next__(self) -> SnapshotInfo:
        return next(self._it)

    def close(self) -> None:
        """Stop reading (the iterator ends)."""
        close = getattr(self._it, "close", None)
        if close is not None:
            close()
        self._it = iter(())

    def _repr_html_(self) -> str:
        from . import html

        it = self._start()
        try:
            shown = list(itertools.islice(it, html.LIMIT + 1))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        return html.history(shown[: html.LIMIT], len(shown) > html.LIMIT)


def _parse_sid(value: object) -> SnapshotId:
    if not isinstance(value, str):
        raise InvalidInputError(f"invalid snapshot id {value!r}: ids are strings")
    try:
        return SnapshotId.parse(value)
    except FormatError as e:
        raise InvalidInputError(f"invalid snapshot id {value!r}") from e


def _ref_label(branch: str | None, tag: str | None) -> str | None:
    if branch is not None:
        return f"branch {branch!r} ({branch_key(branch)})"
    if tag is not None:
        return f"tag {tag!r} ({tag_key(tag)})"
    return None


@contextlib.contextmanager
def _named_by(label: str | None) -> Iterator[None]:
    """Errors reading the snapshot a ref names also name the ref: a damaged ref shows as
    a snapshot that is missing or does not match the checksum the ref records."""
    if label is None:
        yield
        return
    try:
        yield
    except NotFoundError as e:
        raise NotFoundError(
            f"{label} names a snapshot that cannot be found: {e}",
            kind=ErrorKind.SNAPSHOT_NOT_FOUND,
        ) from e
    except FormatError as e:
        raise FormatError(f"{label}: {e}") from e


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _in_thread(method: Callable[_P, _R]) -> Callable[_P, Coroutine[Any, Any, _R]]:
    """The async form of a sync method, Icechunk's ``*_async``: the method run in a worker
    thread (``asyncio.to_thread``), so the caller's event loop is never blocked. It has
    the method's signature (``inspect.signature`` shows it) and raises what it raises."""

    @functools.wraps(method)
    async def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        return await asyncio.to_thread(method, *args, **kwargs)

    run.__doc__ = f"``{method.__name__}``, run in a thread (``asyncio.to_thread``)."
    return run


def _deprecated_total(name: str, instead: str) -> None:
    warnings.warn(
        f"{name}() is deprecated, as in Icechunk: use {instead}().native_bytes ({instead}() "
        "also counts inline and virtual chunks)",
        DeprecationWarning,
        stacklevel=3,
    )


def _refuse_removed(virtual_chunk_credentials: object) -> None:
    if virtual_chunk_credentials is not None:
        raise InvalidInputError(
            "virtual_chunk_credentials= was removed in Icechunk 1.0: pass the containers' "
            "credentials as authorize_virtual_chunk_access= "
            "(containers_credentials({url_prefix: credentials}))"
        )


class Repository:
    """A frazil repository on some ``Storage``. Use ``create``, ``open`` or ``open_or_create``."""

    def __init__(
        self,
        storage: Storage,
        config: RepositoryConfig,
        authorize_virtual_chunk_access: Mapping[str, Any] | None = None,
        *,
        untrusted_containers: Mapping[str, VirtualChunkContainer] | None = None,
    ) -> None:
        if not isinstance(storage, Storage):
            raise InvalidInputError(f"expected a frazil Storage, got {type(storage).__name__}")
        self._storage = storage
        self._config = config
        self._reader = ObjectReader(storage, caching=config.caching)
        self._default_metadata: dict[str, Any] = {}
        # containers as the stored config declares them, which the opener did not pass:
        # credentials are never sent to an endpoint only they name
        self._virtual = VirtualResolver(
            config,
            check_authorization(config, authorize_virtual_chunk_access),
            untrusted_containers,
        )

    def __getstate__(self) -> dict[str, Any]:
        # the virtual chunk authorization (with its credentials) travels with the
        # repository, so that forks on workers can read virtual chunks
        return {
            "storage": self._storage,
            "config": self._config,
            "virtual_auth": self._virtual.auth,
            "untrusted": self._virtual.untrusted,
            "default_metadata": self._default_metadata,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["storage"],
            state["config"],
            state.get("virtual_auth"),
            untrusted_containers=state.get("untrusted"),
        )
        self._default_metadata = dict(state.get("default_metadata", {}))
        # repositories unpickled in one process (forks sent to a worker task by task)
        # share one cache of immutable objects per storage location
        key = (
            type(self._storage).__qualname__,
            self._storage.describe(),
            str(getattr(self._storage, "token", "")),
        )
        shared = _shared_readers.get(key)
        if shared is None:
            _shared_readers[key] = self._reader
        else:
            self._reader = shared

    def __repr__(self) -> str:
        return f"<frazil.Repository on {self._storage.describe()}>"

    def _repr_html_(self) -> str:
        from . import html

        names = sorted(self.list_branches()), sorted(self.list_tags())
        refs = (
            [(n, self.lookup_branch(n)) for n in names[0][: html.LIMIT]],
            [(n, self.lookup_tag(n)) for n in names[1][: html.LIMIT]],
        )
        containers = sorted(self.config.virtual_chunk_containers or {})
        return html.repository(
            self._storage.describe(), *refs, (len(names[0]), len(names[1])), containers
        )

    # -- creating and opening ----------------------------------------------------------
    @classmethod
    def create(
        cls,
        storage: Storage,
        config: RepositoryConfig | None = None,
        authorize_virtual_chunk_access: Mapping[str, Any] | None = None,
        *,
        virtual_chunk_credentials: Any = None,
        spec_version: SpecVersion | int | None = None,
    ) -> Repository:
        """Create a new repository in ``storage``.

        Of any number of concurrent creators exactly one wins: ``config.json`` is claimed
        with create-if-absent first.

        Parameters
        ----------
        storage
            Where the repository lives (``local_filesystem_storage``, ``s3_storage``, ...);
            empty, or holding nothing but a repository being created.
        config
            Settings saved with the repository (virtual chunk containers included).
        authorize_virtual_chunk_access
            ``containers_credentials({prefix: credentials})``: the virtual chunk
            containers this repository object may read, with the credentials to use.
        virtual_chunk_credentials
            Removed in Icechunk 1.0 (replaced by ``authorize_virtual_chunk_access``):
            passing it raises ``InvalidInputError`` saying so.
        spec_version
            Icechunk 2.x's parameter, for frazil's own format versions (``SpecVersion``):
            None or ``SpecVersion.current()``; others raise ``InvalidInputError``.

        Returns
        -------
        Repository

        Raises
        ------
        AlreadyExistsError
            A repository is there (or being created there), or the location holds other
            data.
        ReadOnlyError
            ``storage`` is read-only.
        """
        _refuse_removed(virtual_chunk_credentials)
        check_spec_version(spec_version)
        return runtime.run(cls._create(storage, config, authorize_virtual_chunk_access))

    @classmethod
    async def _create(
        cls,
        storage: Storage,
        config: RepositoryConfig | None,
        auth: Mapping[str, Any] | None = None,
    ) -> Repository:
        """Exactly one of any number of concurrent creators wins: ``config.json`` is
        written first, create-if-absent, and whoever wrote it writes the first snapshot
        and ``main`` (create-if-absent too); every other creator gets
        ``AlreadyExistsError`` and the winner's config is the one stored."""
        if not isinstance(storage, Storage):
            raise InvalidInputError(f"expected a frazil Storage, got {type(storage).__name__}")
        _check_config(config)
        _log.debug("Creating Repository in %s", storage.describe())
        if not storage.writable:
            raise ReadOnlyError(
                f"cannot create a repository on read-only {storage.describe()}",
                kind=ErrorKind.READ_ONLY_STORAGE,
            )
        if await _exists(storage):
            raise AlreadyExistsError(f"a repository already exists in {storage.describe()}")
        if (await storage.list("")) and not await storage.exists(CONFIG_KEY):
            raise AlreadyExistsError(
                f"{storage.describe()} is not empty and holds no frazil "
                "repository; use an empty location"
            )
        cfg = RepositoryConfig().merge(config)
        check_authorization(cfg, auth)
        claim = await storage.put_if_absent(CONFIG_KEY, encode_config(cfg.to_dict()))
        if not claim.ok:
            if await _exists(storage):
                raise AlreadyExistsError(f"a repository already exists in {storage.describe()}")
            raise AlreadyExistsError(
                f"a repository is being created in {storage.describe()} by another writer "
                f"({CONFIG_KEY} is there, the main branch not yet); open it once it is "
                "(Repository.open_or_create waits for it). If no creation is running, an "
                f"interrupted one left {CONFIG_KEY} behind: delete it and create again"
            )
        plan = initial_snapshot()
        await storage.put(plan.log[0], plan.log[1])
        await storage.put(plan.objects()[-1][0], plan.snapshot_bytes)
        try:
            await create_ref(
                storage,
                BRANCH_REF,
                MAIN,
                plan.snapshot.id,
                plan.snapshot_checksum,
                OpKind.REPO_INITIALIZED,
            )
        except AlreadyExistsError:
            raise AlreadyExistsError(
                f"a repository already exists in {storage.describe()}"
            ) from None
        return cls(storage, cfg, auth)

    @classmethod
    def open(
        cls,
        storage: Storage,
        config: RepositoryConfig | None = None,
        authorize_virtual_chunk_access: Mapping[str, Any] | None = None,
        *,
        virtual_chunk_credentials: Any = None,
    ) -> Repository:
        """Open an existing repository.

        Parameters
        ----------
        storage
            Where the repository lives.
        config
            Settings for this repository object, over the stored ones (not saved). A
            virtual chunk container passed here also confirms its store settings, so
            that credentials may be sent to its endpoint.
        authorize_virtual_chunk_access
            The containers this object may read virtual chunks from (none by default),
            with their credentials.

        Returns
        -------
        Repository

        Raises
        ------
        NotFoundError
            There is no repository in ``storage``.
        FormatError
            Its ``config.json`` is damaged.
        """
        _refuse_removed(virtual_chunk_credentials)
        return runtime.run(cls._open(storage, config, authorize_virtual_chunk_access))

    @classmethod
    async def _open(
        cls,
        storage: Storage,
        config: RepositoryConfig | None,
        auth: Mapping[str, Any] | None = None,
    ) -> Repository:
        if not isinstance(storage, Storage):
            raise InvalidInputError(f"expected a frazil Storage, got {type(storage).__name__}")
        _check_config(config)
        _log.debug("Opening Repository in %s", storage.describe())
        # both requests at once: a cold open waits for one round trip, not two
        found, raw = await asyncio.gather(
            _exists(storage), _get_or_none(storage, CONFIG_KEY), return_exceptions=True
        )
        if isinstance(found, BaseException):
            raise found
        if not found:
            raise NotFoundError(
                f"no frazil repository in {storage.describe()}",
                kind=ErrorKind.REPOSITORY_NOT_FOUND,
            )
        if isinstance(raw, BaseException):
            raise raw
        try:
            stored = (
                RepositoryConfig()
                if raw is None
                else RepositoryConfig.from_dict(decode_config(raw, CONFIG_KEY))
            )
        except InvalidInputError as e:  # valid JSON, settings of the wrong type or range
            raise FormatError(f"{CONFIG_KEY}: damaged settings ({e})") from e
        given = (config.virtual_chunk_containers if config is not None else None) or {}
        untrusted = {
            p: c for p, c in (stored.virtual_chunk_containers or {}).items() if given.get(p) != c
        }
        return cls(
            storage,
            stored.merge(config),
            auth,
            untrusted_containers=untrusted,
        )

    @classmethod
    def open_or_create(
        cls,
        storage: Storage,
        config: RepositoryConfig | None = None,
        authorize_virtual_chunk_access: Mapping[str, Any] | None = None,
        *,
        virtual_chunk_credentials: Any = None,
        create_version: SpecVersion | int | None = None,
    ) -> Repository:
        """Open the repository in ``storage``, or create it if there is none.

        Concurrent callers all end up with the one repository that one of them created
        (waiting briefly for a creation in progress). The parameters are ``create``'s.

        Returns
        -------
        Repository
        """
        _refuse_removed(virtual_chunk_credentials)
        check_spec_version(create_version)  # (Icechunk 2.x's name for spec_version here)
        auth = authorize_virtual_chunk_access
        _check_config(config)
        if cls.exists(storage):
            return cls.open(storage, config, authorize_virtual_chunk_access=auth)
        try:
            return cls.create(storage, config, authorize_virtual_chunk_access=auth)
        except AlreadyExistsError:  # lost the race to another creator: wait for its main
            runtime.run(_wait_for_main(storage))
            return cls.open(storage, config, authorize_virtual_chunk_access=auth)

    @property
    def spec_version(self) -> SpecVersion:
        """The format version of this repository (``SpecVersion.current()``: frazil reads
        every older version, and refuses newer objects one by one)."""
        return SpecVersion.current()

    @staticmethod
    def fetch_spec_version(storage: Storage) -> SpecVersion | None:
        """The format version of the repository in ``storage``, or None if there is none
        (as ``spec_version``: every repository this frazil opens reads at its version)."""
        return SpecVersion.current() if Repository.exists(storage) else None

    @staticmethod
    def exists(storage: Storage) -> bool:
        """Whether ``storage`` holds a repository (its ``main`` branch exists)."""
        return runtime.run(_exists(storage))

    @property
    def storage(self) -> Storage:
        return self._storage

    @property
    def reader(self) -> ObjectReader:
        """The verified, cached reader of this repository's objects, shared by its
        sessions (and by the repositories unpickled in one process from one location)."""
        return self._reader

    @property
    def virtual_resolver(self) -> VirtualResolver:
        """What reads this repository's virtual chunks, with the opener's authorization."""
        return self._virtual

    @property
    def config(self) -> RepositoryConfig:
        return self._config

    @staticmethod
    def fetch_config(storage: Storage) -> RepositoryConfig | None:
        """The config saved in the repository in ``storage`` (``config.json``), or None
        if it has none.

        Raises
        ------
        FormatError
            The saved config is damaged.
        """
        return runtime.run(_fetch_config(storage))

    def reopen(
        self,
        config: RepositoryConfig | None = None,
        authorize_virtual_chunk_access: Mapping[str, Any] | None = None,
    ) -> Repository:
        """A new Repository object on the same storage, with ``config`` over this one's
        config (or this one's, if None) and the given virtual chunk authorization (or this
        one's, if None). The repository is not read again and nothing is saved."""
        _check_config(config)
        auth = authorize_virtual_chunk_access
        return Repository(
            self._storage,
            self._config.merge(config),
            self._virtual.auth if auth is None else auth,
            untrusted_containers={
                p: c
                for p, c in self._virtual.untrusted.items()
                if config is None or (config.virtual_chunk_containers or {}).get(p) != c
            },
        )

    def authorized_virtual_container_prefixes(self) -> set[str]:
        """The url prefixes of the virtual chunk containers this object may read."""
        return set(self._virtual.auth)

    def save_config(self) -> None:
        """Store this repository object's config in the repository (``config.json``).

        Raises
        ------
        ReadOnlyError
            The storage is read-only.
        """
        runtime.run(self._storage.put(CONFIG_KEY, encode_config(self._config.to_dict())))
        runtime.run(repo_info.record(self._storage, OpKind.CONFIG_CHANGED))

    # -- resolving -------------------------------------------------------------------------
    async def _resolve(
        self, branch: str | None = None, tag: str | None = None, snapshot_id: str | None = None
    ) -> tuple[SnapshotId, int | None]:
        given = [x for x in (branch, tag, snapshot_id) if x is not None]
        if len(given) != 1:
            raise InvalidInputError("give exactly one of branch=, tag= or snapshot_id=")
        if branch is not None:
            rec = (
                await read_ref(self._storage, BRANCH_REF, validate_name(branch, "branch"))
            ).record
        elif tag is not None:
            rec = (await read_ref(self._storage, TAG_REF, validate_name(tag, "tag"))).record
        else:
            return _parse_sid(snapshot_id), None
        assert rec.snapshot_id is not None
        return rec.snapshot_id, rec.checksum

    async def _load(
        self, branch: str | None = None, tag: str | None = None, snapshot_id: str | None = None
    ) -> tuple[Snapshot, int | None]:
        """The snapshot at a branch, tag or id (verified), and the checksum its ref records."""
        sid, cs = await self._resolve(branch, tag, snapshot_id)
        with _named_by(_ref_label(branch, tag)):
            return await self._reader.snapshot(sid, cs), cs

    async def _tip(self, branch: str | None = None, tag: str | None = None) -> SnapshotId:
        """The snapshot a ref names, checked to exist (a small read of its footer)."""
        sid, _ = await self._resolve(branch, tag)
        with _named_by(_ref_label(branch, tag)):
            await self._reader.commit_info(sid)
        return sid

    # -- branches --------------------------------------------------------------------------
    def create_branch(self, name: str, snapshot_id: str) -> None:
        """Create branch ``name`` at ``snapshot_id``.

        A deleted branch's name may be used again.

        Raises
        ------
        AlreadyExistsError
            The branch exists.
        NotFoundError
            The snapshot does not exist.
        InvalidInputError
            The name or id is malformed.
        """

        async def go() -> None:
            validate_name(name, "branch")
            sid = _parse_sid(snapshot_id)
            await create_ref(
                self._storage, BRANCH_REF, name, sid, await self._reader.snapshot_checksum(sid)
            )

        runtime.run(go())

    def list_branches(self) -> set[str]:
        """The names of the branches."""
        return runtime.run(list_refs(self._storage, BRANCH_REF))

    def lookup_branch(self, name: str) -> str:
        """The snapshot id branch ``name`` points at.

        Raises
        ------
        NotFoundError
            The branch does not exist (or was deleted).
        """
        validate_name(name, "branch")
        return str(runtime.run(self._tip(branch=name)))

    def reset_branch(
        self, name: str, snapshot_id: str, *, from_snapshot_id: str | None = None
    ) -> None:
        """Point branch ``name`` at ``snapshot_id``.

        Parameters
        ----------
        name, snapshot_id
            The branch and where it should point.
        from_snapshot_id
            Only if the branch is still at this snapshot (compare-and-swap).

        Raises
        ------
        ConflictError
            With ``from_snapshot_id``: the branch is elsewhere.
        NotFoundError
            The branch or the snapshot does not exist.
        """

        async def go() -> None:
            validate_name(name, "branch")
            sid = _parse_sid(snapshot_id)
            cs = await self._reader.snapshot_checksum(sid)
            expect = _parse_sid(from_snapshot_id) if from_snapshot_id is not None else None

            async def attempt(ref: Ref, n: int) -> Move:
                if expect is not None and ref.record.snapshot_id != expect:
                    raise ConflictError(
                        f"branch update conflict: branch {name!r} is at "
                        f"{ref.record.snapshot_id}, not {expect} (from_snapshot_id)",
                        expected_parent=str(expect),
                        actual_parent=str(ref.record.snapshot_id),
                    )
                return Move(sid, cs, op=OpKind.BRANCH_RESET)

            await move_branch(self._storage, name, attempt, history=self._reader.parent)

        runtime.run(go())

    def delete_branch(self, name: str) -> None:
        """Delete branch ``name``; a commit racing with the deletion either lands first
        (and is deleted with the branch) or fails, so the branch never comes back.

        Raises
        ------
        NotFoundError
            The branch does not exist.
        InvalidInputError
            ``name`` is ``main``, which cannot be deleted.
        """
        validate_name(name, "branch")
        if name == MAIN:
            raise InvalidInputError("the main branch cannot be deleted")

        self._check_writable_storage(f"delete branch {name!r}")
        runtime.run(delete_branch(self._storage, name, self._reader.parent))

    # -- tags ------------------------------------------------------------------------------
    def create_tag(self, name: str, snapshot_id: str) -> None:
        """Create tag ``name`` at ``snapshot_id``; tags never move.

        Raises
        ------
        AlreadyExistsError
            The tag exists, or existed: a deleted tag's name is never reused.
        NotFoundError
            The snapshot does not exist.
        """

        async def go() -> None:
            validate_name(name, "tag")
            sid = _parse_sid(snapshot_id)
            await create_ref(
                self._storage, TAG_REF, name, sid, await self._reader.snapshot_checksum(sid)
            )

        runtime.run(go())

    def list_tags(self) -> set[str]:
        """The names of the live tags (deleted ones are left out)."""
        return runtime.run(list_refs(self._storage, TAG_REF))

    def lookup_tag(self, name: str) -> str:
        """The snapshot id tag ``name`` points at.

        Raises
        ------
        NotFoundError
            The tag does not exist or was deleted.
        """
        validate_name(name, "tag")
        return str(runtime.run(self._tip(tag=name)))

    def delete_tag(self, name: str) -> None:
        """Delete tag ``name``; its name can never be used again.

        Raises
        ------
        NotFoundError
            The tag does not exist.
        """
        validate_name(name, "tag")
        runtime.run(tombstone_tag(self._storage, name))

    # -- history ---------------------------------------------------------------------------
    def ancestry(
        self, *, branch: str | None = None, tag: str | None = None, snapshot_id: str | None = None
    ) -> Ancestry:
        """History, newest first, from a branch, a tag or a snapshot (give one).

        Read from the snapshots' footers and history index (``frazil.history``), never
        their node tables: a few reads, however long the history. The result is an
        iterator (read as it is consumed) that a notebook shows as a table of its
        first entries.

        Yields
        ------
        SnapshotInfo
            id, parent id, time, message and metadata of each snapshot.

        The branch, tag or snapshot and the first snapshot's footer are read at the call
        (a missing ref or snapshot raises there, as in Icechunk); the rest of the history
        is read as the iterator is consumed.
        """
        return Ancestry(lambda: self._ancestry(branch=branch, tag=tag, snapshot_id=snapshot_id))

    def _ancestry(
        self, *, branch: str | None, tag: str | None, snapshot_id: str | None
    ) -> Iterator[SnapshotInfo]:
        sid: SnapshotId | None = runtime.run(self._resolve(branch, tag, snapshot_id))[0]
        label = _ref_label(branch, tag)
        cuts = None
        if sid is not None:
            with _named_by(label):
                cuts = runtime.run(self._tip_footer(sid))
        return self._history_from(sid, label, cuts)

    async def _tip_footer(self, sid: SnapshotId) -> dict[SnapshotId, SnapshotId]:
        """Read a snapshot's footer (cached, for the history walk) and the history cuts
        (returned, for it) together: one round trip."""
        cuts, _ = await asyncio.gather(self._reader.load_cuts(), self._reader.commit_header(sid))
        return cuts

    def _lazy_ancestry(
        self, branch: str | None, tag: str | None, snapshot_id: str | None
    ) -> Generator[SnapshotInfo, None, None]:
        """``ancestry`` looking the ref up at the first ``next`` (for ``async_ancestry``,
        whose iterations run in worker threads)."""
        sid: SnapshotId | None = runtime.run(self._resolve(branch, tag, snapshot_id))[0]
        yield from self._history_from(sid, _ref_label(branch, tag))

    def _history_from(
        self,
        sid: SnapshotId | None,
        label: str | None,
        cuts: dict[SnapshotId, SnapshotId] | None = None,
    ) -> Generator[SnapshotInfo, None, None]:
        batches = history.ancestry(self._reader, sid, cuts)
        try:
            while True:
                with _named_by(label):
                    batch = runtime.run(history.next_batch(batches))
                if batch is None:
                    return
                label = None
                yield from map(SnapshotInfo.of, batch)
        finally:
            runtime.run(batches.aclose())

    def async_ancestry(
        self, *, branch: str | None = None, tag: str | None = None, snapshot_id: str | None = None
    ) -> AsyncIterator[SnapshotInfo]:
        """``ancestry`` as an async iterator: each batch of history is read in a worker
        thread, so the caller's event loop is not blocked."""
        sync = self._lazy_ancestry(branch, tag, snapshot_id)
        done = object()

        async def items() -> AsyncIterator[SnapshotInfo]:
            try:
                while (item := await asyncio.to_thread(next, sync, done)) is not done:
                    yield item  # type: ignore[misc]
            finally:
                sync.close()

        return items()

    def lookup_snapshot(self, snapshot_id: str) -> SnapshotInfo:
        """What history says of snapshot ``snapshot_id``.

        Returns
        -------
        SnapshotInfo
        """
        return SnapshotInfo.of(runtime.run(self._reader.commit_info(_parse_sid(snapshot_id))))

    def diff(
        self,
        *,
        from_branch: str | None = None,
        from_tag: str | None = None,
        from_snapshot_id: str | None = None,
        to_branch: str | None = None,
        to_tag: str | None = None,
        to_snapshot_id: str | None = None,
    ) -> Diff:
        """What changed from one version to another (give one ``from_*`` and one
        ``to_*``: a branch, a tag or a snapshot id). Any two versions compare: through
        their common ancestor's history, or by content where expiry cut that history.

        Returns
        -------
        Diff
            Nodes created, deleted and updated, and the chunks written, by path.
        """
        return runtime.run(
            self._diff(from_branch, from_tag, from_snapshot_id, to_branch, to_tag, to_snapshot_id)
        )

    async def _diff(
        self,
        fb: str | None,
        ft: str | None,
        fs: str | None,
        tb: str | None,
        tt: str | None,
        ts: str | None,
    ) -> Diff:
        src, src_cs = await self._resolve(fb, ft, fs)
        dst, dst_cs = await self._resolve(tb, tt, ts)
        with _named_by(_ref_label(fb, ft)):
            old = await self._reader.snapshot(src, src_cs)
        with _named_by(_ref_label(tb, tt)):
            new = await self._reader.snapshot(dst, dst_cs)
        return await diff_snapshots(self._reader, old, new)

    # -- sessions --------------------------------------------------------------------------
    def readonly_session(
        self,
        branch: str | None = None,
        *,
        tag: str | None = None,
        snapshot_id: str | None = None,
        as_of: dt.datetime | None = None,
    ) -> Session:
        """A read-only session at a branch's tip, a tag or a snapshot (give one).

        Parameters
        ----------
        branch, tag, snapshot_id
            Where to read (exactly one).
        as_of
            With ``branch`` only: a timezone-aware time; the session reads the newest
            snapshot of the branch's history written at or before it.

        Returns
        -------
        Session

        Raises
        ------
        NotFoundError
            The ref or snapshot does not exist; with ``as_of``, the branch's history
            (what expiry kept of it) holds no snapshot that old.
        InvalidInputError
            Not exactly one of them, ``as_of`` without ``branch`` or naive.
        """
        if as_of is not None:
            return self._readonly_as_of(branch, tag, snapshot_id, as_of)

        async def go() -> Session:
            snap, cs = await self._load(branch, tag, snapshot_id)
            return Session(self, snap, branch=branch, read_only=True, base_checksum=cs)

        return runtime.run(go())

    def rearrange_session(self, branch: str) -> Session:
        """Icechunk 2.x's session for ``Session.move``: here a ``writable_session``, since
        any writable session can move nodes (and also write) in one commit."""
        return self.writable_session(branch)

    def writable_session(self, branch: str) -> Session:
        """A session at the tip of ``branch`` whose commit moves the branch.

        Returns
        -------
        Session

        Raises
        ------
        NotFoundError
            The branch does not exist.
        ReadOnlyError
            The storage is read-only.
        """
        validate_name(branch, "branch")
        if not self._storage.writable:
            raise ReadOnlyError(
                f"{self._storage.describe()} is read-only", kind=ErrorKind.READ_ONLY_STORAGE
            )

        async def go() -> Session:
            snap, cs = await self._load(branch=branch)
            session = Session(self, snap, branch=branch, read_only=False, base_checksum=cs)
            session._default_metadata = dict(self._default_metadata)
            return session

        return runtime.run(go())

    # -- maintenance: compaction, garbage collection, expiry, fsck, statistics ---------------
    def _check_writable_storage(self, what: str) -> None:
        if not self._storage.writable:
            raise ReadOnlyError(
                f"cannot {what}: {self._storage.describe()} is read-only",
                kind=ErrorKind.READ_ONLY_STORAGE,
            )

    def compact(
        self,
        branch: str = MAIN,
        *,
        rows_per_segment: int | None = None,
        paths: list[str] | None = None,
        progress: Progress | None = None,
    ) -> CompactionSummary:
        """Merge the manifest segments of every array on ``branch`` that is not compacted
        already (or only the arrays at ``paths``) into segments of at
        most ``rows_per_segment`` references (default: the ``manifest_split_rows``
        setting), and commit the result as a snapshot with identical content. Commits that
        land meanwhile are kept: the compaction is re-applied on top of them."""
        validate_name(branch, "branch")
        if paths is not None and (
            isinstance(paths, str)
            or not isinstance(paths, list | tuple)
            or not all(isinstance(p, str) for p in paths)
        ):
            raise InvalidInputError(f"compact: paths must be a list of array paths, got {paths!r}")
        self._check_writable_storage("compact")
        rows = self._config.split_rows if rows_per_segment is None else rows_per_segment
        return runtime.run(
            compact_branch(
                self._storage, self._reader, branch, rows, paths=paths, progress=progress
            )
        )

    def rewrite_manifests(
        self, message: str, *, branch: str, metadata: dict[str, Any] | None = None
    ) -> str:
        """Icechunk's name for ``compact``: merge the manifest segments of the arrays of
        ``branch`` (into segments of ``manifest_split_rows`` references) and commit with
        ``message`` and ``metadata``. Returns the new snapshot's id, or the branch's tip
        when every array is compacted already (then nothing is committed)."""
        validate_name(branch, "branch")
        if not isinstance(message, str):
            raise InvalidInputError("rewrite_manifests: message must be a str")
        if metadata is not None and not isinstance(metadata, dict):
            raise InvalidInputError("rewrite_manifests: metadata must be a dict (or None)")
        self._check_writable_storage("rewrite manifests")
        summary = runtime.run(
            compact_branch(
                self._storage,
                self._reader,
                branch,
                self._config.split_rows,
                message=message,
                metadata={**self._default_metadata, **(metadata or {})},
            )
        )
        return summary.snapshot_id or self.lookup_branch(branch)

    def garbage_collect(
        self,
        delete_object_older_than: dt.datetime,
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> GCSummary:
        """Delete every snapshot, transaction log, manifest and chunk that no branch or tag
        (nor their history) reaches and that is older than ``delete_object_older_than`` (a
        timezone-aware datetime). Younger objects are never deleted, so this is safe beside
        writers whose sessions are younger than the cutoff. ``dry_run`` only counts."""
        if not dry_run:
            self._check_writable_storage("collect garbage")
        summary = runtime.run(
            maintenance.garbage_collect(
                self._storage,
                self._reader,
                delete_object_older_than,
                dry_run=dry_run,
                progress=progress,
            )
        )
        if summary.objects_deleted and not dry_run:
            # cached copies of deleted objects would let this repository open snapshots
            # that no longer exist (and then fail on their missing manifests)
            self._reader.forget()
        if summary.objects_deleted and not dry_run:  # a run that changed nothing: no entry
            runtime.run(repo_info.record(self._storage, OpKind.GC_RAN))
        return summary

    def expire_snapshots(
        self,
        older_than: dt.datetime,
        *,
        delete_expired_branches: bool = False,
        delete_expired_tags: bool = False,
        progress: Progress | None = None,
    ) -> set[str]:
        """Drop the snapshots written before ``older_than`` from every branch's history
        (branch tips and the first snapshot stay; snapshots above a dropped one are
        rewritten with new ids) and return the dropped ids. Tags and their history are
        untouched. ``garbage_collect`` then reclaims what nothing reaches any more.

        ``delete_expired_branches`` / ``delete_expired_tags``: first delete every branch
        (never ``main``) / tag whose tip was written before ``older_than`` (a branch only
        if it still points there, by compare-and-swap); the snapshots of their histories
        that no remaining history keeps are listed in the result too, as Icechunk lists
        them (``garbage_collect`` reclaims them)."""
        self._check_writable_storage("expire snapshots")
        cutoff_ms(older_than)
        for flag, name in (
            (delete_expired_branches, "delete_expired_branches"),
            (delete_expired_tags, "delete_expired_tags"),
        ):
            if not isinstance(flag, bool):
                raise InvalidInputError(f"{name} must be True or False, got {flag!r}")
        gone: frozenset[SnapshotId] = frozenset()
        if delete_expired_branches or delete_expired_tags:
            gone = runtime.run(
                self._delete_expired_refs(older_than, delete_expired_branches, delete_expired_tags)
            )
        dropped = runtime.run(
            maintenance.expire_snapshots(
                self._storage, self._reader, older_than, progress, gone_tips=gone
            )
        )
        return dropped  # (its operations log entry is in the cuts document it wrote)

    def fsck(
        self,
        *,
        verify_chunks: bool = True,
        verify_virtual: bool = False,
        progress: Progress | None = None,
    ) -> FsckReport:
        """Check that every object reachable from a branch or tag exists and matches the
        checksum recorded for it; the report lists every problem found.
        ``verify_chunks=False`` checks native chunks' presence and size only.
        ``verify_virtual=True`` also probes the source file of every virtual chunk a branch
        or tag tip reads (one small read per file: it exists, is long enough and matches the
        reference's ETag or last-modified pin), through the containers this repository was
        opened with authorization for; sources it may not read are reported as
        ``virtual-unchecked``."""
        return runtime.run(
            maintenance.fsck(
                self._storage,
                self._reader,
                verify_chunks=verify_chunks,
                progress=progress,
                virtual=self._virtual if verify_virtual else None,
            )
        )

    verify = fsck

    def chunk_storage_stats(self, *, progress: Progress | None = None) -> ChunkStorageStats:
        """Native, inline and virtual chunk counts and bytes over everything reachable."""
        return runtime.run(maintenance.chunk_storage_stats(self._storage, self._reader, progress))

    # -- Icechunk's conveniences: transactions, default metadata, time travel, inspection --
    @contextlib.contextmanager
    def transaction(
        self,
        branch: str,
        *,
        message: str,
        metadata: dict[str, Any] | None = None,
        rebase_with: ConflictSolver | None = None,
        rebase_tries: int = 1_000,
    ) -> Iterator[Any]:
        """A writable session's store on ``branch`` for a ``with`` block: committed
        (``message``, ``metadata``, ``rebase_with``, ``rebase_tries`` as in
        ``Session.commit``) when the block ends normally, discarded if it raises::

            with repo.transaction("main", message="add x") as store:
                zarr.create_array(store, name="x", shape=(4,), dtype="i4")

        Yields
        ------
        FrazilStore
            The zarr store (``IcechunkStore``) of the session.
        """
        session = self.writable_session(branch)
        yield session.store
        session.commit(message, metadata, rebase_with=rebase_with, rebase_tries=rebase_tries)

    def set_default_commit_metadata(self, metadata: dict[str, Any]) -> None:
        """Metadata recorded with every commit of the sessions this repository object
        starts from now on; what a commit passes wins where keys collide.

        Raises
        ------
        InvalidInputError
            Not a dict of JSON-serializable values with string keys.
        """
        self._default_metadata = _check_metadata(metadata)

    def default_commit_metadata(self) -> dict[str, Any]:
        """The metadata ``set_default_commit_metadata`` set (a copy; empty by default)."""
        return dict(self._default_metadata)

    # -- repository metadata (Icechunk 2.x) -------------------------------------------------
    def get_metadata(self) -> dict[str, Any]:
        """The repository-level metadata (``refs/repo.json``; empty if never set)."""
        return dict(runtime.run(repo_info.read_info(self._storage))[0].metadata)

    @property
    def metadata(self) -> dict[str, Any]:
        """``get_metadata()``: read afresh on every access."""
        return self.get_metadata()

    def set_metadata(self, metadata: dict[str, Any]) -> None:
        """Replace the repository-level metadata (a JSON object of at most 1 MiB),
        by compare-and-swap.

        Raises
        ------
        InvalidInputError
            Not a dict of JSON-serializable values with string keys, or too large.
        ReadOnlyError
            The storage is read-only.
        """
        checked = repo_info.check_metadata(metadata)
        runtime.run(repo_info.set_metadata(self._storage, checked))

    def update_metadata(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """Merge ``metadata`` into the repository-level metadata (its keys win), by
        compare-and-swap, so concurrent updates of other keys are kept; returns the
        metadata as written. Raises as ``set_metadata``."""
        checked = repo_info.check_metadata(metadata)
        return runtime.run(repo_info.update_metadata(self._storage, checked))

    # -- operations log (Icechunk 2.x) ------------------------------------------------------
    def ops_log(self) -> Iterator[Update]:
        """What moved which ref, and what changed the repository, when: ``Update`` values
        (``kind``: an ``UpdateType``, ``updated_at``), newest first. Branch and tag
        creations, resets, deletions and commits are recorded in the ref write itself
        (no extra write); config and metadata changes, gc and expiry in
        ``refs/repo.json`` (SPEC §6.1)."""
        return iter(runtime.run(read_ops_log(self._storage)))

    def ops_log_async(self) -> AsyncIterator[Update]:
        """``ops_log`` as an async iterator (read in a thread when first awaited)."""

        async def go() -> AsyncIterator[Update]:
            for update in await asyncio.to_thread(lambda: list(self.ops_log())):
                yield update

        return go()

    def _readonly_as_of(
        self, branch: str | None, tag: str | None, snapshot_id: str | None, as_of: dt.datetime
    ) -> Session:
        if branch is None or tag is not None or snapshot_id is not None:
            raise InvalidInputError("as_of= goes with branch= only (not tag= or snapshot_id=)")
        if not isinstance(as_of, dt.datetime) or as_of.tzinfo is None:
            raise InvalidInputError(
                f"as_of must be a timezone-aware datetime (e.g. datetime.now(UTC)), got {as_of!r}"
            )
        for info in self.ancestry(branch=branch):
            if info.written_at <= as_of:
                return self.readonly_session(snapshot_id=info.id)
        raise NotFoundError(
            f"branch {branch!r} has no snapshot written at or before {as_of.isoformat()} "
            "(in what expiry kept of its history)"
        )

    async def _delete_expired_refs(
        self, older_than: dt.datetime, branches: bool, tags: bool
    ) -> frozenset[SnapshotId]:
        """Delete the branches (never main) and tags whose tips were written before
        ``older_than``; a branch only if it still points at the tip that was checked.
        Returns the tips of the refs deleted."""
        deleted: set[SnapshotId] = set()

        class Moved(Exception):
            pass

        async def expired(kind: str, name: str) -> SnapshotId | None:
            try:
                sid = (await read_ref(self._storage, kind, name)).record.snapshot_id
            except NotFoundError:  # deleted meanwhile
                return None
            assert sid is not None
            info = await self._reader.commit_info(sid)
            return sid if info.written_at < older_than else None

        if branches:
            for name in sorted(await list_refs(self._storage, BRANCH_REF)):
                tip = None if name == MAIN else await expired(BRANCH_REF, name)
                if tip is None:
                    continue

                async def attempt(ref: Ref, n: int, tip: SnapshotId = tip) -> Move:
                    if ref.record.snapshot_id != tip:
                        raise Moved  # a commit landed since: the branch is not expired
                    return Move(None, delete=True)

                with contextlib.suppress(Moved, NotFoundError):
                    await move_branch(self._storage, name, attempt, history=self._reader.parent)
                    deleted.add(tip)
        if tags:
            for name in sorted(await list_refs(self._storage, TAG_REF)):
                tag_tip = await expired(TAG_REF, name)
                if tag_tip is not None:
                    with contextlib.suppress(NotFoundError):
                        await tombstone_tag(self._storage, name)
                        deleted.add(tag_tip)
        return frozenset(deleted)

    def total_chunks_storage(
        self,
        *,
        max_snapshots_in_memory: int = 50,
        max_compressed_manifest_mem_bytes: int = 512 * 1024 * 1024,
        max_concurrent_manifest_fetches: int = 500,
    ) -> int:
        """Deprecated, as in Icechunk: ``chunk_storage_stats().native_bytes``, the bytes of
        the native chunk objects anything reachable references. The three limits are
        Icechunk's memory and concurrency settings, accepted and not needed."""
        _deprecated_total("total_chunks_storage", "chunk_storage_stats")
        return self.chunk_storage_stats().native_bytes

    async def total_chunks_storage_async(
        self,
        *,
        max_snapshots_in_memory: int = 50,
        max_compressed_manifest_mem_bytes: int = 512 * 1024 * 1024,
        max_concurrent_manifest_fetches: int = 500,
    ) -> int:
        """Deprecated, as in Icechunk: ``(await chunk_storage_stats_async()).native_bytes``
        (see ``total_chunks_storage``)."""
        _deprecated_total("total_chunks_storage_async", "chunk_storage_stats_async")
        return (await self.chunk_storage_stats_async()).native_bytes

    def inspect_snapshot(self, snapshot_id: str, *, pretty: bool = True) -> str:
        """A JSON description of snapshot ``snapshot_id``, with Icechunk's fields: ``id``,
        ``parent_id``, ``flushed_at``, ``commit_message``, ``metadata``, ``manifests``
        (``id``, ``size_bytes``, ``num_chunk_refs``) and ``nodes`` (``id``, ``path``,
        ``node_type``, and for arrays ``manifest_refs``: ``id`` and ``extents``, per
        dimension the chunk range ``[first, last + 1]``). ``pretty``: indented.

        Raises
        ------
        NotFoundError
            There is no such snapshot.
        """
        snap, _ = runtime.run(self._load(snapshot_id=snapshot_id))
        info = snap.info
        manifests: dict[str, dict[str, Any]] = {}
        nodes = []
        for rec in snap.nodes:
            node: dict[str, Any] = {
                "id": str(rec.node_id),
                "path": rec.path,
                "node_type": rec.node_type,
            }
            if rec.node_type == "array":
                refs = []
                for seg in rec.segments:
                    mid = str(seg.manifest_id)
                    entry = manifests.setdefault(
                        mid, {"id": mid, "size_bytes": seg.size, "num_chunk_refs": 0}
                    )
                    entry["num_chunk_refs"] += seg.rows
                    extents = [[lo, hi + 1] for lo, hi in zip(seg.extent_min, seg.extent_max)]
                    refs.append({"id": mid, "extents": extents})
                node["manifest_refs"] = refs
            nodes.append(node)
        doc = {
            "id": str(info.snapshot_id),
            "parent_id": str(info.parent_id) if info.parent_id else None,
            "flushed_at": info.written_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
            "commit_message": info.message,
            "metadata": info.metadata,
            "manifests": list(manifests.values()),
            "nodes": nodes,
        }
        return json.dumps(doc, indent=2 if pretty else None)

    # -- Icechunk's async forms: the sync method run in a worker thread --------------------
    @classmethod
    async def create_async(
        cls,
        storage: Storage,
        config: RepositoryConfig | None = None,
        authorize_virtual_chunk_access: Mapping[str, Any] | None = None,
        *,
        spec_version: SpecVersion | int | None = None,
    ) -> Repository:
        """``create``, run in a thread (``asyncio.to_thread``)."""
        return await asyncio.to_thread(
            functools.partial(cls.create, spec_version=spec_version),
            storage,
            config,
            authorize_virtual_chunk_access,
        )

    @classmethod
    async def open_async(
        cls,
        storage: Storage,
        config: RepositoryConfig | None = None,
        authorize_virtual_chunk_access: Mapping[str, Any] | None = None,
    ) -> Repository:
        """``open``, run in a thread (``asyncio.to_thread``)."""
        return await asyncio.to_thread(cls.open, storage, config, authorize_virtual_chunk_access)

    @classmethod
    async def open_or_create_async(
        cls,
        storage: Storage,
        config: RepositoryConfig | None = None,
        authorize_virtual_chunk_access: Mapping[str, Any] | None = None,
    ) -> Repository:
        """``open_or_create``, run in a thread (``asyncio.to_thread``)."""
        return await asyncio.to_thread(
            cls.open_or_create, storage, config, authorize_virtual_chunk_access
        )

    @staticmethod
    async def exists_async(storage: Storage) -> bool:
        """``exists``, run in a thread (``asyncio.to_thread``)."""
        return await asyncio.to_thread(Repository.exists, storage)

    @staticmethod
    async def fetch_config_async(storage: Storage) -> RepositoryConfig | None:
        """``fetch_config``, run in a thread (``asyncio.to_thread``)."""
        return await asyncio.to_thread(Repository.fetch_config, storage)

    reopen_async = _in_thread(reopen)
    rewrite_manifests_async = _in_thread(rewrite_manifests)
    chunk_storage_stats_async = _in_thread(chunk_storage_stats)
    create_branch_async = _in_thread(create_branch)
    create_tag_async = _in_thread(create_tag)
    delete_branch_async = _in_thread(delete_branch)
    delete_tag_async = _in_thread(delete_tag)
    diff_async = _in_thread(diff)
    expire_snapshots_async = _in_thread(expire_snapshots)
    garbage_collect_async = _in_thread(garbage_collect)
    inspect_snapshot_async = _in_thread(inspect_snapshot)
    list_branches_async = _in_thread(list_branches)
    list_tags_async = _in_thread(list_tags)
    lookup_branch_async = _in_thread(lookup_branch)
    lookup_snapshot_async = _in_thread(lookup_snapshot)
    lookup_tag_async = _in_thread(lookup_tag)
    readonly_session_async = _in_thread(readonly_session)
    reset_branch_async = _in_thread(reset_branch)
    save_config_async = _in_thread(save_config)
    writable_session_async = _in_thread(writable_session)
    rearrange_session_async = _in_thread(rearrange_session)
    get_metadata_async = _in_thread(get_metadata)
    set_metadata_async = _in_thread(set_metadata)
    update_metadata_async = _in_thread(update_metadata)

    @staticmethod
    async def fetch_spec_version_async(storage: Storage) -> SpecVersion | None:
        """``fetch_spec_version``, run in a thread (``asyncio.to_thread``)."""
        return await asyncio.to_thread(Repository.fetch_spec_version, storage)


def _check_config(config: object) -> None:
    if config is not None and not isinstance(config, RepositoryConfig):
        raise InvalidInputError(
            f"config must be a RepositoryConfig (or None), got {type(config).__name__}"
        )


async def _fetch_config(storage: Storage) -> RepositoryConfig | None:
    try:
        data = await storage.get(CONFIG_KEY)
    except NotFoundError:
        return None
    try:
        return RepositoryConfig.from_dict(decode_config(data, CONFIG_KEY))
    except InvalidInputError as e:  # valid JSON, settings of the wrong type or range
        raise FormatError(f"{CONFIG_KEY}: damaged settings ({e})") from e


async def _exists(storage: Storage) -> bool:
    return await storage.exists(keys.branch_key(MAIN))


async def _get_or_none(storage: Storage, key: str) -> bytes | None:
    try:
        return await storage.get(key)
    except NotFoundError:
        return None


CREATE_WAIT = 30.0
"""Seconds ``open_or_create`` waits for a concurrent creator to finish its repository."""


async def _wait_for_main(storage: Storage) -> None:
    """Wait (with backoff) until the main branch of a repository that another writer is
    creating exists; ``AlreadyExistsError`` if it does not appear in ``CREATE_WAIT``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CREATE_WAIT
    delay = 0.005
    while not await _exists(storage):
        if loop.time() > deadline:
            raise AlreadyExistsError(
                f"{storage.describe()} holds {CONFIG_KEY} but no main branch after "
                f"{CREATE_WAIT:.0f} s: an interrupted creation left it behind; delete "
                f"{CONFIG_KEY} and create again"
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)
