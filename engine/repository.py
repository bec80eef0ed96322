"""``Repository``: create or open a repository; branches, tags, history, diff and sessions."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from frazil.format import CommitInfo, Snapshot, SnapshotId, keys
from frazil.format.common import BRANCH_REF, TAG_REF, FormatError
from frazil.format.config import decode_config, encode_config

from . import history, maintenance, runtime
from .commit import initial_snapshot
from .compaction import CompactionSummary, Progress, compact_branch
from .diff import Diff, diff_snapshots
from .errors import (
    AlreadyExistsError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    ReadOnlyError,
)
from .maintenance import ChunkStorageStats, FsckReport, GCSummary
from .objects import ObjectReader
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
from .session import Session
from .storage.base import Storage
from .virtual import VirtualResolver, check_authorization

CONFIG_KEY = keys.CONFIG
_shared_readers: weakref.WeakValueDictionary[tuple[str, str, str], ObjectReader] = (
    weakref.WeakValueDictionary()
)
MAIN = keys.MAIN

from .config import RepositoryConfig  # noqa: E402
from .virtual.containers import VirtualChunkContainer  # noqa: E402


@dataclass(frozen=True)
class SnapshotInfo:
    """One entry of history."""

    id: str
    parent_id: str | None
    written_at: dt.datetime
    message: str
    metadata: dict[str, Any] = field(default_factory=dict)

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
        raise NotFoundError(f"{label} names a snapshot that cannot be found: {e}") from e
    except FormatError as e:
        raise FormatError(f"{label}: {e}") from e


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
        self._reader = ObjectReader(storage)
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
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["storage"],
            state["config"],
            state.get("virtual_auth"),
            untrusted_containers=state.get("untrusted"),
        )
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

    # -- creating and opening ----------------------------------------------------------
    @classmethod
    def create(
        cls,
        storage: Storage,
        config: RepositoryConfig | None = None,
        *,
        authorize_virtual_chunk_access: Mapping[str, Any] | None = None,
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
        if not storage.writable:
            raise ReadOnlyError(f"cannot create a repository on read-only {storage.describe()}")
        if await _exists(storage):
            raise AlreadyExistsError(f"a repository already exists in {storage.describe()}")
        if (await storage.list("")) and not await storage.exists(CONFIG_KEY):
            raise AlreadyExistsError(
                f"{storage.describe()} is not empty and holds no frazil "
                "repository; use an empty location"
            )
        cfg = RepositoryConfig.default().merge(config)
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
            await create_ref(storage, BRANCH_REF, MAIN, plan.snapshot.id, plan.snapshot_checksum)
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
        *,
        authorize_virtual_chunk_access: Mapping[str, Any] | None = None,
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
        if not await _exists(storage):
            raise NotFoundError(f"no frazil repository in {storage.describe()}")
        try:
            stored = RepositoryConfig.from_dict(
                decode_config(await storage.get(CONFIG_KEY), CONFIG_KEY)
            )
        except NotFoundError:
            stored = RepositoryConfig()
        except InvalidInputError as e:  # valid JSON, settings of the wrong type or range
            raise FormatError(f"{CONFIG_KEY}: damaged settings ({e})") from e
        given = (config.virtual_chunk_containers if config is not None else None) or {}
        untrusted = {
            p: c for p, c in (stored.virtual_chunk_containers or {}).items() if given.get(p) != c
        }
        return cls(
            storage,
            RepositoryConfig.default().merge(stored).merge(config),
            auth,
            untrusted_containers=untrusted,
        )

    @classmethod
    def open_or_create(
        cls,
        storage: Storage,
        config: RepositoryConfig | None = None,
        *,
        authorize_virtual_chunk_access: Mapping[str, Any] | None = None,
    ) -> Repository:
        """Open the repository in ``storage``, or create it if there is none.

        Concurrent callers all end up with the one repository that one of them created
        (waiting briefly for a creation in progress). The parameters are ``create``'s.

        Returns
        -------
        Repository
        """
        auth = authorize_virtual_chunk_access
        _check_config(config)
        if cls.exists(storage):
            return cls.open(storage, config, authorize_virtual_chunk_access=auth)
        try:
            return cls.create(storage, config, authorize_virtual_chunk_access=auth)
        except AlreadyExistsError:  # lost the race to another creator: wait for its main
            runtime.run(_wait_for_main(storage))
            return cls.open(storage, config, authorize_virtual_chunk_access=auth)

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

    def save_config(self) -> None:
        """Store this repository object's config in the repository (``config.json``).

        Raises
        ------
        ReadOnlyError
            The storage is read-only.
        """
        runtime.run(self._storage.put(CONFIG_KEY, encode_config(self._config.to_dict())))

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
                        f"branch {name!r} is at {ref.record.snapshot_id}, not {expect}",
                        expected_parent=str(expect),
                        actual_parent=str(ref.record.snapshot_id),
                    )
                return Move(sid, cs)

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
    ) -> Iterator[SnapshotInfo]:
        """History, newest first, from a branch, a tag or a snapshot (give one).

        Read from the snapshots' footers and history index (``frazil.history``), never
        their node tables: a few reads, however long the history.

        Yields
        ------
        SnapshotInfo
            id, parent id, time, message and metadata of each snapshot.
        """
        sid: SnapshotId | None = runtime.run(self._resolve(branch, tag, snapshot_id))[0]
        label = _ref_label(branch, tag)
        batches = history.ancestry(self._reader, sid)
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
        self, branch: str | None = None, *, tag: str | None = None, snapshot_id: str | None = None
    ) -> Session:
        """A read-only session at a branch's tip, a tag or a snapshot (give one).

        Returns
        -------
        Session
        """

        async def go() -> Session:
            snap, cs = await self._load(branch, tag, snapshot_id)
            return Session(self, snap, branch=branch, read_only=True, base_checksum=cs)

        return runtime.run(go())

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
            raise ReadOnlyError(f"{self._storage.describe()} is read-only")

        async def go() -> Session:
            snap, cs = await self._load(branch=branch)
            return Session(self, snap, branch=branch, read_only=False, base_checksum=cs)

        return runtime.run(go())

    # -- maintenance: compaction, garbage collection, expiry, fsck, statistics ---------------
    def _check_writable_storage(self, what: str) -> None:
        if not self._storage.writable:
            raise ReadOnlyError(f"cannot {what}: {self._storage.describe()} is read-only")

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
        return summary

    def expire_snapshots(
        self, older_than: dt.datetime, *, progress: Progress | None = None
    ) -> set[str]:
        """Drop the snapshots written before ``older_than`` from every branch's history
        (branch tips and the first snapshot stay; snapshots above a dropped one are
        rewritten with new ids) and return the dropped ids. Tags and their history are
        untouched. ``garbage_collect`` then reclaims what nothing reaches any more."""
        self._check_writable_storage("expire snapshots")
        return runtime.run(
            maintenance.expire_snapshots(self._storage, self._reader, older_than, progress)
        )

    def fsck(self, *, verify_chunks: bool = True, progress: Progress | None = None) -> FsckReport:
        """Check that every object reachable from a branch or tag exists and matches the
        checksum recorded for it; the report lists every problem found.
        ``verify_chunks=False`` checks native chunks' presence and size only."""
        return runtime.run(
            maintenance.fsck(
                self._storage, self._reader, verify_chunks=verify_chunks, progress=progress
            )
        )

    verify = fsck

    def chunk_storage_stats(self, *, progress: Progress | None = None) -> ChunkStorageStats:
        """Native, inline and virtual chunk counts and bytes over everything reachable."""
        return runtime.run(maintenance.chunk_storage_stats(self._storage, self._reader, progress))


def _check_config(config: object) -> None:
    if config is not None and not isinstance(config, RepositoryConfig):
        raise InvalidInputError(
            f"config must be a RepositoryConfig (or None), got {type(config).__name__}"
        )


async def _exists(storage: Storage) -> bool:
    return await storage.exists(keys.branch_key(MAIN))


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
