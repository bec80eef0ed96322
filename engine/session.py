"""Sessions: a view of one snapshot plus staged changes, committed atomically to a branch."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime as dt
import json
import threading
import warnings
import weakref
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from frazil.format import (
    ARRAY,
    ChunkId,
    ChunkKind,
    ChunkRef,
    CommitInfo,
    Coord,
    ManifestId,
    ManifestSegment,
    NodeChange,
    NodeId,
    NodeRecord,
    SegmentRef,
    Snapshot,
    SnapshotId,
    TransactionLog,
    checksum,
    encode_snapshot,
    encode_transaction_log,
)
from frazil.format import txlog as tx
from frazil.format.blocks import blocks_for
from frazil.format.common import BRANCH_REF
from frazil.format.filters import coord_hash
from frazil.format.keys import (
    chunk_key,
    fork_prefix,
    manifest_key,
    parse_journal_key,
    transaction_log_key,
)
from frazil.format.manifest import tombstone_rows, virtual_rows

from . import changeset, moves, runtime
from .changeset import ChangeSet, ChunkTable, row_ref
from .commit import CommitPlan, commit, prepare_commit, segment_object
from .compaction import compact_for_commit
from .conflicts import ConflictSolver, detect_conflicts
from .diff import Diff, node_diff
from .errors import (
    ConflictError,
    ErrorKind,
    FormatError,
    FrazilError,
    InvalidInputError,
    InvalidTypeError,
    NotFoundError,
    ReadOnlyError,
)
from .history import index_for_child
from .journal import ForkJournal, delete_journals, new_token, read_journals
from .merging import merge_for_commit, merge_segments
from .rebase import (
    RowSet,
    apply_resolution,
    merge_changes,
    paths_by_id,
    same_content,
    summarize_changes,
    summarize_logs,
)
from .refs import Ref, read_ref
from .storage.base import ByteRange, slice_range
from .virtual import ChunkType, VirtualChunkSpec
from .virtual import staging as virtual
from .zarrmeta import NodeMeta, parse_zarr_json

if TYPE_CHECKING:
    from .config import RepositoryConfig
    from .objects import ObjectReader
    from .storage.base import Storage
    from .virtual import VirtualResolver


class SessionHost(Protocol):
    """What a session needs of its repository (a ``Repository`` is one): where objects
    are, its settings, its shared object reader and its virtual chunk resolver."""

    @property
    def storage(self) -> Storage: ...

    @property
    def config(self) -> RepositoryConfig: ...

    @property
    def reader(self) -> ObjectReader: ...

    @property
    def virtual_resolver(self) -> VirtualResolver: ...


def normalize_path(path: str) -> str:
    """'/a/b' form of a node path; refuses empty parts, '.' and '..'."""
    if not isinstance(path, str):
        raise InvalidInputError(
            f"node path must be a string, got {type(path).__name__}", kind=ErrorKind.INVALID_PATH
        )
    parts = [p for p in path.strip("/").split("/")] if path.strip("/") else []
    for p in parts:
        if p in ("", ".", "..") or any(ord(ch) < 32 for ch in p):
            raise InvalidInputError(f"invalid node path {path!r}", kind=ErrorKind.INVALID_PATH)
    return "/" + "/".join(parts)


class Session:
    """A transaction over a repository: reads see the base snapshot plus staged writes.

    Get one from ``Repository.writable_session(branch)`` or ``readonly_session(...)``.
    ``store`` is the zarr store; ``commit`` publishes the changes as a new snapshot on the
    branch, after which the session is read-only at that snapshot.
    """

    def __init__(
        self,
        repo: SessionHost,
        base: Snapshot,
        *,
        branch: str | None,
        read_only: bool,
        base_checksum: int | None = None,
    ) -> None:
        self._repo = repo
        self._base_checksum = base_checksum
        self._branch = branch
        self._read_only = read_only
        self._changes = ChangeSet()
        self._set_base(base)
        self._store: Any = None
        # commits whose swap had an unknown outcome, until it is known (see _find_landed)
        self._maybe_landed: dict[SnapshotId, CommitPlan] = {}
        self._journal: ForkJournal | None = None  # only fork copies on workers journal
        self._merged_forks: set[str] = set()  # fork ids whose journals a commit removes
        # forks made since the last merge: (fork id or None without a journal, the fork
        # object while this process holds it); a commit warns if any of them wrote
        self._forks_out: list[tuple[str | None, weakref.ref[ForkSession]]] = []
        self._spill_lock = threading.Lock()

    def _set_base(self, base: Snapshot) -> None:
        self._base = base
        self._base_nodes = {n.path: n for n in base.nodes}

    # -- properties ------------------------------------------------------------------------
    @property
    def snapshot_id(self) -> str:
        """The id of the snapshot this session reads from (its base)."""
        return str(self._base.id)

    @property
    def branch(self) -> str | None:
        return self._branch

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def has_uncommitted_changes(self) -> bool:
        return not self._changes.is_empty()

    @property
    def repository(self) -> SessionHost:
        return self._repo

    @property
    def store(self) -> Any:
        """The ``zarr.abc.store.Store`` over this session."""
        if self._store is None:
            from frazil.zarr_adapter.store import FrazilStore  # the one seam to the adapter

            self._store = FrazilStore(self, is_open=True)
        return self._store

    def __repr__(self) -> str:
        mode = "read-only" if self._read_only else "writable"
        return f"<frazil.Session {mode} branch={self._branch!r} snapshot={self.snapshot_id}>"

    def _repr_html_(self) -> str:
        from . import html

        staged = self.status() if not self._read_only and self.has_uncommitted_changes else None
        mode = "read-only" if self._read_only else "writable"
        return html.session(mode, self._branch, self.snapshot_id, staged)

    def __getstate__(self) -> dict[str, Any]:
        if not self._read_only:
            raise InvalidInputError(
                "a writable Session cannot be pickled; use session.fork() to send a "
                "session to other processes or workers"
            )
        return {"repo": self._repo, "base": self._base, "branch": self._branch}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["repo"],
            state["base"],
            branch=state["branch"],
            read_only=True,
        )

    # -- nodes -----------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self._read_only:
            raise ReadOnlyError(
                f"this session is read-only (snapshot {self.snapshot_id}); use "
                "repo.writable_session(branch) to write"
            )

    def node(self, path: str) -> NodeRecord | None:
        """The current record at ``path`` (staged or base), or None."""
        staged = self._changes.nodes
        return staged[path] if path in staged else self._base_nodes.get(path)

    def nodes(self) -> Iterator[NodeRecord]:
        """Every current node, sorted by path."""
        paths = set(self._base_nodes) | set(self._changes.nodes)
        for path in sorted(paths):
            rec = self.node(path)
            if rec is not None:
                yield rec

    def node_meta(self, rec: NodeRecord) -> NodeMeta:
        """The facts of ``rec``'s zarr.json; a stored document that is not valid Zarr v3
        is a ``FormatError`` naming the snapshot (it came from the repository)."""
        try:
            return parse_zarr_json(rec.zarr_json, rec.path)
        except InvalidInputError as e:
            path, stored = rec.path, self._base_nodes.get(rec.path)
            if stored is not None and stored is rec:
                raise FormatError(f"snapshot {self._base.id}: node {path!r}: {e}") from None
            raise

    def set_metadata(self, path: str, zarr_json: bytes) -> None:
        """Create or update the node at ``path`` from its zarr.json document."""
        self._check_writable()
        path = normalize_path(path)
        meta = parse_zarr_json(bytes(zarr_json), path)
        current = self.node(path)
        if current is not None and current.node_type == meta.node_type:
            if current.node_type == ARRAY:
                old = self.node_meta(current)
                if old.ndim != meta.ndim:  # a different array: start over
                    current = None
            if current is not None:
                self._changes.set_node(dataclasses.replace(current, zarr_json=bytes(zarr_json)))
                self._journal_node(path)
                return
        if current is not None:
            self._changes.delete_node(path, current.node_id, path in self._base_nodes)
        self._changes.set_node(NodeRecord(path, NodeId.new(), meta.node_type, bytes(zarr_json)))
        self._journal_node(path)

    def delete_node(self, path: str) -> bool:
        """Delete the node at ``path`` (its chunks too); False if there is none."""
        self._check_writable()
        path = normalize_path(path)
        current = self.node(path)
        if current is None:
            return False
        self._changes.delete_node(path, current.node_id, path in self._base_nodes)
        self._journal_node(path)
        return True

    def delete_tree(self, path: str) -> int:
        """Delete the node at ``path`` and every node under it; returns how many."""
        self._check_writable()
        path = normalize_path(path)
        prefix = "/" if path == "/" else path + "/"
        doomed = [n.path for n in self.nodes() if n.path == path or n.path.startswith(prefix)]
        for p in doomed:
            self.delete_node(p)
        return len(doomed)

    def move(self, from_path: str, to_path: str) -> None:
        """Move or rename the group or array at ``from_path``, with everything under it,
        to ``to_path`` (whose parent group must exist). Nodes keep their ids, so no chunk
        is read or rewritten: the cost is one record per moved node. Refuses (with what
        and where) a missing source, the root, a destination that exists or lies inside
        the source. Icechunk 2.x needs a ``rearrange_session`` for this; here any
        writable session can move, and also write."""
        self._check_writable()
        src, dst = normalize_path(from_path), normalize_path(to_path)
        planned = moves.plan_move(src, dst, self.node, self.nodes())
        self._changes.move_nodes(planned, self._base_nodes)
        for rec, path in planned:
            self._journal_node(rec.path)
            self._journal_node(path)
        self._flush_journal_sync()

    def get_node_id(self, path: str) -> str:
        """The id of the group or array at ``path``: given when it was created, kept when
        it moves (Icechunk 2.x's ``get_node_id``)."""
        rec = self.node(normalize_path(path))
        if rec is None:
            raise NotFoundError(
                f"no group or array at {path!r} (snapshot {self.snapshot_id})",
                kind=ErrorKind.NODE_NOT_FOUND,
            )
        return str(rec.node_id)

    async def move_async(self, from_path: str, to_path: str) -> None:
        """``move``, for async code."""
        self.move(from_path, to_path)
        await self.flush_journal()

    def _array(self, path: str) -> tuple[NodeRecord, NodeMeta]:
        rec = self.node(normalize_path(path))
        if rec is None:
            raise NotFoundError(f"no array at {path!r}", kind=ErrorKind.NODE_NOT_FOUND)
        if rec.node_type != ARRAY:
            raise InvalidInputError(
                f"{path!r} is a group, not an array", kind=ErrorKind.NOT_AN_ARRAY
            )
        return rec, self.node_meta(rec)

    @staticmethod
    def _as_coord(path: str, coord: Any) -> Coord:
        """``coord`` as a tuple of ints; refuses strings, floats and other non-integers."""
        items = None if isinstance(coord, (str, bytes)) else _as_list(coord)
        if items is None or not all(
            isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in items
        ):
            raise InvalidInputError(
                f"chunk coordinates of {path!r} must be a sequence of ints, got {coord!r}"
            )
        return tuple(int(c) for c in items)

    @staticmethod
    def _check_coord(path: str, meta: NodeMeta, coord: Coord) -> None:
        if len(coord) != meta.ndim:
            raise InvalidInputError(
                f"chunk {list(coord)} of {path!r}: the array has {meta.ndim} dimensions"
            )
        if meta.grid is not None:
            for c, n in zip(coord, meta.grid):
                if c < 0 or c >= max(n, 1):
                    raise InvalidInputError(
                        f"chunk {list(coord)} is outside the chunk grid {list(meta.grid)} "
                        f"of {path!r}"
                    )

    # -- fork journals (see frazil.journal) -------------------------------------------------
    def _journal_node(self, path: str) -> None:
        if self._journal is not None:
            self._journal.node(path)

    async def flush_journal(self) -> None:
        """Write what a fork copy staged since its last journal object (a no-op for
        sessions that keep no journal); the store calls it before a write returns."""
        if self._journal is not None and self._journal.pending:
            await self._journal.flush(self._changes)

    def _flush_journal_sync(self) -> None:
        if self._journal is None or not self._journal.pending:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            runtime.run(self.flush_journal())
        # called from an event loop (a store method): the store flushes when it returns

    # -- chunks ----------------------------------------------------------------------------
    def _segments_of(self, rec: NodeRecord) -> tuple[SegmentRef, ...]:
        """``rec``'s segments as this session sees them: the segments its staging spilled
        (newest first), then the base's."""
        table = self._changes.chunks.get(rec.node_id)
        if table is None or not table.spilled:
            return rec.segments
        return (*reversed(table.spilled), *rec.segments)

    async def _spilled_coords(self, table: ChunkTable) -> np.ndarray:
        """Every coordinate in ``table``'s spilled segments (repeats possible)."""
        loaded = await runtime.gather_limited(
            [self._repo.reader.manifest(s, cache=False) for s in table.spilled], limit=16
        )
        return np.concatenate([m.coords for m in loaded] or [np.zeros((0, table.ndim), np.int64)])

    async def _base_ref(self, rec: NodeRecord, coord: Coord) -> ChunkRef | None:
        """The newest reference to ``coord`` in the segments this session sees (spilled,
        then the base's): those whose extents and filter admit it are read, newest first,
        until one has it."""
        h = coord_hash(coord)
        for seg in self._segments_of(rec):
            if seg.may_hold(coord, h):
                m = await self._repo.reader.manifest(seg)
                i = m.find(coord)
                if i is not None:
                    return m.ref(i)
        return None

    async def chunk_ref(self, path: str, coord: Coord) -> ChunkRef | None:
        """The reference of a chunk, or None if it was never written (or deleted)."""
        rec = self.node(normalize_path(path))
        if rec is None or rec.node_type != ARRAY:
            return None
        ref = self._changes.chunk(rec.node_id, coord)
        if ref is None:
            ref = await self._base_ref(rec, coord)
        return None if ref is None or ref.kind == ChunkKind.DELETED else ref

    async def get_chunk(
        self, path: str, coord: Coord, byte_range: ByteRange | None = None
    ) -> bytes | None:
        """A chunk's bytes (or a range of them); None if the chunk does not exist."""
        ref = await self.chunk_ref(path, coord)
        if ref is None:
            return None
        if ref.kind == ChunkKind.INLINE:
            return slice_range(ref.data or b"", byte_range)
        if ref.kind == ChunkKind.NATIVE:
            assert ref.chunk_id is not None
            return await self._repo.reader.chunk(
                ref.chunk_id,
                ref.checksum,
                byte_range,
                length=ref.length,
                block_size=ref.block_size,
                blocks=ref.blocks,
            )
        return await self._repo.virtual_resolver.read(ref, byte_range)

    async def set_chunk(self, path: str, coord: Coord, data: bytes) -> None:
        """Stage a chunk: inline if small, else written now to ``chunks/<id>``."""
        self._check_writable()
        rec, meta = self._array(path)
        self._check_coord(path, meta, coord)
        data = bytes(data)
        table = self._changes.table(rec.node_id, meta.ndim)
        if len(data) <= self._repo.config.inline_threshold:
            table.set_inline(coord, data)
        else:
            cid = ChunkId.new()
            await self._repo.storage.put(chunk_key(cid), data)
            block_size, blocks = blocks_for(data)
            table.set(
                coord,
                ChunkRef(
                    ChunkKind.NATIVE,
                    chunk_id=cid,
                    length=len(data),
                    checksum=checksum(data),
                    block_size=block_size,
                    blocks=blocks,
                ),
            )
        if self._journal is not None:
            self._journal.chunk(rec.node_id, coord)
            await self.flush_journal()

    async def delete_chunk(self, path: str, coord: Coord) -> None:
        self._check_writable()
        rec, meta = self._array(path)
        if len(coord) != meta.ndim:
            raise InvalidInputError(f"chunk {list(coord)} of {path!r}: wrong dimensions")
        self._changes.set_chunk(rec.node_id, coord, ChunkRef(ChunkKind.DELETED))
        if self._journal is not None:
            self._journal.chunk(rec.node_id, coord)
            await self.flush_journal()

    async def chunk_coords(self, path: str) -> list[Coord]:
        """Coordinates of every existing chunk of the array at ``path``."""
        rec, meta = self._array(path)
        parts: list[np.ndarray] = []
        kinds: list[np.ndarray] = []
        table = self._changes.chunks.get(rec.node_id)
        if table is not None and len(table):
            staged_coords, staged_kinds = table.kinds()
            parts.append(staged_coords)
            kinds.append(staged_kinds)
        segments = await runtime.gather_limited(
            [self._repo.reader.manifest(s) for s in self._segments_of(rec)]
        )
        for m in segments:
            parts.append(m.coords.reshape(len(m.kinds), meta.ndim))  # -1 fails for 0-d
            kinds.append(m.kinds)
        if not parts:
            return []
        coords = np.concatenate(parts)
        kind = np.concatenate(kinds)
        if len(coords) == 0:
            return []
        if meta.ndim == 0:
            return [()] if kind[0] != ChunkKind.DELETED else []
        _, first = np.unique(coords, axis=0, return_index=True)
        live = first[kind[first] != ChunkKind.DELETED]
        return [tuple(c) for c in coords[np.sort(live)].tolist()]

    # -- status and commit -----------------------------------------------------------------
    def status(self) -> Diff:
        """What this session has staged, as a ``Diff`` against its base snapshot."""
        current = {n.path: n for n in self.nodes()}
        chunks = {
            nid: {c for c, _ in t.items()} for nid, t in self._changes.chunks.items() if len(t)
        }
        for nid, t in self._changes.chunks.items():
            if t.spilled:
                coords = runtime.run(self._spilled_coords(t))
                chunks[nid].update(map(tuple, coords.tolist()))
        return node_diff(self._base_nodes, current, chunks)

    def discard_changes(self) -> None:
        """Drop every staged change (chunk objects already written become garbage). A
        read-only session has none: there it does nothing, as in Icechunk."""
        if self._read_only:
            return
        self._changes.clear()
        if self._journal is not None:
            self._journal.clear()
            self._flush_journal_sync()

    def commit(
        self,
        message: str,
        metadata: dict[str, Any] | None = None,
        *,
        rebase_with: ConflictSolver | None = None,
        rebase_tries: int = 1_000,
    ) -> str:
        """Publish the staged changes as a new snapshot on the branch.

        The session is read-only at the new snapshot afterwards.

        Parameters
        ----------
        message
            The commit message.
        metadata
            JSON-serializable values recorded with the commit.
        rebase_with
            A solver (``ConflictDetector()``, ``BasicConflictSolver()``): if the branch
            moved since the session started, the commits that landed meanwhile are checked
            against the staged changes, the solver decides, and the commit is retried on
            the new tip. Without one, a moved branch is a ``ConflictError``.
        rebase_tries
            Attempts at most (with a short random pause between them); the number used
            is recorded in the metadata as ``"frazil.commit_attempts"``.

        Returns
        -------
        str
            The new snapshot's id.

        Raises
        ------
        ConflictError
            The branch moved (without ``rebase_with``), kept moving, or a conflict the
            solver would not resolve (``RebaseFailedError``).
        ReadOnlyError
            The session is read-only, or not on a branch.
        InvalidInputError
            Nothing to commit, or a malformed argument.
        """
        return runtime.run(
            self.commit_async(message, metadata, rebase_with=rebase_with, rebase_tries=rebase_tries)
        )

    async def commit_async(
        self,
        message: str,
        metadata: dict[str, Any] | None = None,
        *,
        rebase_with: ConflictSolver | None = None,
        rebase_tries: int = 1_000,
    ) -> str:
        sid = await self._commit(message, metadata, rebase_with, rebase_tries)
        await self._drop_merged_journals()
        return sid

    async def _drop_merged_journals(self) -> None:
        """After a commit or flush, the merged forks' journals are garbage."""
        if self._merged_forks:
            forks, self._merged_forks = self._merged_forks, set()
            with contextlib.suppress(FrazilError):  # best effort: gc removes what is left
                await delete_journals(self._repo.storage, forks)

    async def _warn_unmerged_forks(self, doing: str) -> None:
        """Icechunk's warning, when it is true: this session was forked since its last merge
        and a fork wrote something (the fork object here has changes, or a copy of it
        elsewhere journaled writes), or a fork keeps no journal (whose copies cannot be
        seen from here). Forks that wrote nothing do not warn."""
        if not self._forks_out:
            return
        wrote = any(fid is None for fid, _ in self._forks_out) or any(
            (f := ref()) is not None and not f._changes.is_empty() for _, ref in self._forks_out
        )
        if not wrote:
            for fid, _ in self._forks_out:
                with contextlib.suppress(FrazilError):  # a warning is not worth failing for
                    listed = await self._repo.storage.list(fork_prefix(str(fid)))
                    if any((parse_journal_key(k) or (0, 0, None))[2] is not None for k in listed):
                        wrote = True
                        break
        if wrote:
            warnings.warn(
                f"{doing} a session after forking it, without merging: the forks' writes "
                "are not in it. Merge the forks first (session.merge(*forks))",
                UserWarning,
                stacklevel=4,
            )

    def _commit_metadata(self, message: object, metadata: dict[str, Any] | None) -> dict[str, Any]:
        """The checked message's metadata: the repository's defaults, then the caller's."""
        if not isinstance(message, str):
            raise InvalidInputError(
                f"commit message must be a string, got {type(message).__name__}"
            )
        return {**self._default_metadata, **_check_metadata(metadata)}

    async def _commit(
        self,
        message: str,
        metadata: dict[str, Any] | None,
        rebase_with: ConflictSolver | None,
        rebase_tries: int,
    ) -> str:
        self._check_writable()
        if self._branch is None:
            raise ReadOnlyError("this session is not on a branch and cannot commit")
        metadata = self._commit_metadata(message, metadata)
        if rebase_with is not None and not isinstance(rebase_with, ConflictSolver):
            raise InvalidInputError(
                "rebase_with must be a ConflictSolver such as "
                "ConflictDetector() or BasicConflictSolver()"
            )
        if not isinstance(rebase_tries, int) or rebase_tries < 1:
            raise InvalidInputError("rebase_tries must be a positive int")
        await self._warn_unmerged_forks("committing")
        if self._changes.is_empty():
            raise InvalidInputError("cannot commit: nothing to commit, the session has no changes")
        plan = await commit(
            self._repo.storage,
            self._branch,
            _SessionCommitter(self, message, metadata, rebase_with),
            rebase=rebase_with is not None,
            tries=rebase_tries,
            history=self._repo.reader.parent,
        )
        return self._committed(plan)

    def _committed(self, plan: CommitPlan) -> str:
        """Finish a commit whose snapshot is on the branch: the session becomes read-only
        at it, and the caches hold what other sessions of this process will read."""
        reader = self._repo.reader
        if reader.bounds_manifest_refs:
            written = {key for key, _ in plan.manifests}
            for node in plan.snapshot.nodes:
                for seg in node.segments:
                    if manifest_key(seg.manifest_id) in written:
                        reader.note_written_segment(seg.rows)
        reader.snapshots.put(plan.snapshot.id, plan.snapshot)
        if plan.transaction_log is not None:  # rebases of other sessions read it
            reader.txlogs.put(plan.snapshot.id, plan.transaction_log)
        self._maybe_landed.clear()
        self._changes = ChangeSet()
        self._set_base(plan.snapshot)
        self._base_checksum = plan.snapshot_checksum
        self._read_only = True
        return str(plan.snapshot.id)

    async def _find_landed(self, tip: SnapshotId) -> CommitPlan | None:
        """The commit of ours whose outcome was unknown (a lost answer to its swap) and
        that is in the branch's history from ``tip`` down to our base: it landed, so the
        commit is done and nothing more may be written. Once the history is walked
        without finding them, they did not land and never can (their swaps expected a
        version that is gone), so they are forgotten."""
        if not self._maybe_landed:
            return None
        reader = self._repo.reader
        sid: SnapshotId | None = tip
        while sid is not None and sid != self._base.id:
            plan = self._maybe_landed.get(sid)
            if plan is not None:
                return plan
            sid = await reader.parent(sid)
        self._maybe_landed.clear()
        return None

    def rebase(self, solver: ConflictSolver) -> None:
        """Move the base to the branch's tip, checking the commits in between against
        the staged changes; ``solver`` resolves or fails (``RebaseFailedError``).
        """
        self._check_writable()
        if self._branch is None:
            raise ReadOnlyError("this session is not on a branch")

        async def go() -> None:
            ref = await read_ref(self._repo.storage, BRANCH_REF, self._branch or "")
            tip = ref.record.snapshot_id
            assert tip is not None
            landed = await self._find_landed(tip)
            if landed is not None:  # an earlier commit() did land: nothing to rebase
                self._committed(landed)
            elif tip != self._base.id:
                await self._rebase_onto(solver, tip, ref.record.checksum)

        runtime.run(go())

    async def _rebase_onto(
        self, solver: ConflictSolver, tip: SnapshotId, tip_checksum: int | None
    ) -> None:
        reader = self._repo.reader
        # The tip is read whole (it becomes the new base), which also gives its commit
        # info; each commit's transaction log is fetched as soon as the walk down the
        # chain reaches it, so a rebase over one commit costs two round trips.
        new_base = await reader.snapshot(tip, tip_checksum)
        logs: list[asyncio.Task[TransactionLog]] = []
        info: CommitInfo | None = new_base.info
        try:
            while info is not None and info.snapshot_id != self._base.id:
                logs.append(
                    asyncio.ensure_future(
                        reader.transaction_log(info.snapshot_id, info.transaction_log_checksum)
                    )
                )
                child, info = info, await reader.parent_info(info)
                if child.snapshot_id in (reader.cut_map or {}):
                    raise ConflictError(
                        f"cannot rebase onto {tip}: history below snapshot "
                        f"{child.snapshot_id} was expired, so the commits between this "
                        f"session's base {self._base.id} and the tip cannot be checked for "
                        "conflicts; start a new session from the tip",
                        expected_parent=str(self._base.id),
                        actual_parent=str(tip),
                    )
            if info is None:
                raise ConflictError(
                    f"cannot rebase onto {tip}: this session's base {self._base.id} is not "
                    f"in its history (was branch {self._branch!r} reset?)",
                    expected_parent=str(self._base.id),
                    actual_parent=str(tip),
                )
            landed = list(reversed(await asyncio.gather(*logs)))
            theirs = summarize_logs(landed, coords=False)
        finally:  # on an error: no read left running, no failure left unretrieved
            for task in logs:
                if not task.done():
                    task.cancel()
                elif not task.cancelled():
                    task.exception()
        ours = summarize_changes(self._base_nodes, self._changes, coords=False)
        paths = paths_by_id(self._base_nodes, self._changes)
        for path, both in (await self._written_by_both(landed, paths)).items():
            ours.add_chunks(path, both)
            theirs.add_chunks(path, both)
        resolution = solver.solve(detect_conflicts(ours, theirs), str(tip))
        await self._drop_spilled(resolution.drop_chunks, paths)
        with self._changes.lock:
            apply_resolution(self._base_nodes, self._changes, resolution)
            tip_nodes = {n.node_id: n for n in new_base.nodes}  # by id: moved ones too
            for path, rec in list(self._changes.nodes.items()):
                fresh = None if rec is None else tip_nodes.get(rec.node_id)
                if rec is not None and fresh is not None:
                    self._changes.nodes[path] = dataclasses.replace(
                        fresh, path=path, zarr_json=rec.zarr_json
                    )
        self._set_base(new_base)
        self._base_checksum = tip_checksum

    async def _written_by_both(
        self, landed: list[TransactionLog], paths: dict[NodeId, str]
    ) -> dict[str, set[Coord]]:
        """Per array path, the chunks both our staged changes and the commits ``landed``
        wrote (what the conflict rules compare), found in bulk: ours as one ``RowSet``
        (staged, then spilled segment by segment), theirs streamed change by change and
        segment by segment, so only the chunks both wrote become Python values."""
        theirs: dict[str, list[NodeChange]] = {}
        for log in landed:
            for c in log.changes:
                if c.change == tx.CHUNKS:
                    theirs.setdefault(c.path, []).append(c)
        reader, out = self._repo.reader, {}
        for node_id, table in list(self._changes.chunks.items()):
            path = paths.get(node_id)
            if path is None or path not in theirs or not len(table):
                continue
            mine = RowSet([table.kinds()[0]], table.ndim)
            for seg in table.spilled:  # one segment in memory at a time
                mine.add((await reader.manifest(seg, cache=False)).coords)
            found: list[np.ndarray] = []
            for change in theirs[path]:
                if change.chunks is not None and change.chunks.shape[1:] == (table.ndim,):
                    found.append(mine.common(change.chunks))
                for seg in change.segments:
                    m = await reader.manifest(seg, cache=False)
                    if m.coords.shape[1:] == (table.ndim,):
                        found.append(mine.common(m.coords))
            both = set(map(tuple, np.concatenate(found).tolist())) if found else set()
            if both:
                out[path] = both
        return out

    async def _drop_spilled(self, drop: dict[str, set[Coord]], paths: dict[NodeId, str]) -> None:
        """Remove the coordinates ``drop`` (per array path) from the spilled segments that
        hold them: each such segment is written again without them (segments are
        immutable; the old one becomes garbage)."""
        for node_id, table in self._changes.chunks.items():
            doomed = drop.get(paths.get(node_id, ""))
            if not table.spilled or not doomed:
                continue
            gone = np.array(sorted(doomed), np.int64).reshape(len(doomed), table.ndim)
            spilled = []
            for seg in table.spilled:
                m = await self._repo.reader.manifest(seg, cache=False)
                hit = _rows_in(m.coords, gone)
                if not hit.any():
                    spilled.append(seg)
                    continue
                kept = _segment_without(node_id, m, hit)
                if kept is not None:
                    ref, (key, data) = kept
                    await self._repo.storage.put(key, data)
                    spilled.append(ref)
            table.spilled = spilled

    def _spill(self, node_id: NodeId, table: ChunkTable) -> None:
        """Write ``table``'s in-memory virtual blocks out as manifest segments, keeping
        only their refs (``frazil.changeset``): encoded here, part by part, while the
        engine's loop uploads the parts before (at most ``_SPILL_IN_FLIGHT`` at a time)."""
        with self._changes.lock:  # one consistent view of the blocks; parts built later
            blocks, keys, parts = table.spill_parts(self._repo.config.split_rows)
        older = self._trim_spilled(node_id, table, keys)
        segments: list[SegmentRef] = []
        flight: list[Any] = []
        try:
            for coords, rows in parts:
                ref, (key, data) = segment_object(node_id, coords, rows)
                segments.append(ref)
                flight.append(runtime.submit(self._repo.storage.put(key, data)))
                if len(flight) >= _SPILL_IN_FLIGHT:
                    flight.pop(0).result()
        finally:
            for f in flight:
                f.result()
        with self._changes.lock:
            table.spilled_to(blocks, older, segments)

    def _trim_spilled(
        self, node_id: NodeId, table: ChunkTable, keys: np.ndarray
    ) -> list[SegmentRef]:
        """``table``'s spilled segments without the refs at the packed ``keys`` (sorted;
        a new spill replaces them), so spilled segments never overlap and the merge
        policy never finds shadowed refs to merge away. Only a segment whose key range
        (from its extents) holds one of ``keys`` is read; one that does is written again
        without them (the old one becomes garbage)."""
        out = []
        for seg in table.spilled:
            bounds = table.pack(np.array([seg.extent_min, seg.extent_max], np.int64))
            if bounds is not None and len(keys):
                i = int(np.searchsorted(keys, bounds[0]))
                if i >= len(keys) or keys[i] > bounds[1]:
                    out.append(seg)
                    continue
            m = runtime.run(self._repo.reader.manifest(seg, cache=False))
            packed = table.pack(m.coords)
            assert packed is not None  # spilled coordinates came from packed keys
            at = np.minimum(np.searchsorted(keys, packed), max(len(keys) - 1, 0))
            hit = keys[at] == packed if len(keys) else np.zeros(len(packed), bool)
            if not hit.any():
                out.append(seg)
                continue
            kept = _segment_without(node_id, m, hit)
            if kept is not None:
                ref, (key, data) = kept
                runtime.run(self._repo.storage.put(key, data))
                out.append(ref)
        return out

    # -- fork and merge --------------------------------------------------------------------
    def fork(self, *, journal: bool = True) -> ForkSession:
        """A picklable session for workers, at this session's base.

        Workers write through ``fork.store``; ``merge`` brings their changes back, from
        the forks the workers return and, for copies that never come back
        (``ds.to_zarr(fork.store)`` under a distributed scheduler), from the journals the
        copies wrote (``frazil.journal``).

        Parameters
        ----------
        journal
            ``False``: the copies keep no journal (their writes are a little faster), so
            every copy that writes must be handed back and merged; merging the fork object
            itself then refuses, naming the fix, if a copy wrote and was not.

        Returns
        -------
        ForkSession

        Raises
        ------
        InvalidInputError
            The session has uncommitted changes.
        ReadOnlyError
            The session is read-only.
        """
        if self._read_only:
            raise ReadOnlyError(
                "a read-only session cannot be forked (fork a writable one); read-only "
                "sessions can be pickled directly"
            )
        if self.has_uncommitted_changes:
            raise InvalidInputError(
                "cannot fork a session with uncommitted changes: commit first, then fork"
            )
        if not isinstance(journal, bool):
            raise InvalidInputError(f"journal must be True or False, got {journal!r}")
        fork = ForkSession(
            self._repo,
            self._base,
            branch=self._branch,
            read_only=False,
            base_checksum=self._base_checksum,
        )
        fork._fork_id = new_token()
        fork._journaled = journal
        self._forks_out.append((fork._fork_id if journal else None, weakref.ref(fork)))
        return fork

    def fork_with_staged_nodes(self) -> ForkSession:
        """A fork that starts with a copy of this session's staged node changes: arrays
        created here and not yet committed can be filled on workers (``frazil.dask`` and
        ``frazil.xarray`` work this way). Its copies keep no journal, so every copy that
        writes must be handed back and merged."""
        self._check_writable()
        fork = ForkSession(
            self._repo,
            self._base,
            branch=self._branch,
            read_only=False,
            base_checksum=self._base_checksum,
        )
        fork._changes.nodes.update(self._changes.nodes)
        return fork

    def merge(self, *forks: ForkSession) -> None:
        """Fold the forks' changes into this session.

        A fork handed back by a worker brings what it staged; the fork object ``fork()``
        returned brings, besides its own, what every copy of it wrote on workers that did
        not come back (read from their journals).

        Raises
        ------
        ConflictError
            Two of them, or a fork and this session, wrote the same chunk or changed the
            same node differently (copies that wrote identical bytes, as a retried task
            does, do not conflict); ``conflicts`` lists them, and nothing is merged.
        InvalidInputError
            A fork of another base, or not a ``ForkSession``.
        """
        self._check_writable()
        if any(t.spilled for t in self._changes.chunks.values()):
            raise InvalidInputError(
                "cannot merge forks into a session that staged more than "
                f"{changeset.SPILL_ROWS} virtual refs of one array (they were written out "
                "while staging): commit them first, then fork, write and merge"
            )
        for fork in forks:
            if not isinstance(fork, ForkSession):
                raise InvalidInputError(
                    f"merge takes ForkSession objects (from "
                    f"session.fork()), got {type(fork).__name__}"
                )
            if fork._base.id != self._base.id:
                raise InvalidInputError(
                    f"cannot merge a fork of snapshot {fork._base.id} into a session at "
                    f"{self._base.id}: forks must come from this session's base"
                )
        # the fork objects themselves (not copies handed back) stand for everything their
        # copies wrote: those copies' journals are read, but for the writers handed back
        originals = {f._fork_id for f in forks if f._fork_id is not None and f._journal is None}
        covered = set(self._changes.writers).union(*(f._changes.writers for f in forks))
        journaled = (
            runtime.run(read_journals(self._repo.storage, originals, covered, self._base_nodes))
            if originals
            else {}
        )
        merged, conflicts = merge_changes(
            self._base_nodes, self._changes, [f._changes for f in forks], journaled.values()
        )
        if conflicts:
            shown = "; ".join(str(c) for c in conflicts[:20])
            raise ConflictError(
                f"merge found {len(conflicts)} conflict(s): {shown}", conflicts=conflicts
            )
        with self._changes.lock:
            self._changes.nodes, self._changes.chunks = merged.nodes, merged.chunks
            self._changes.writers = merged.writers
        self._merged_forks |= {f._fork_id for f in forks if f._fork_id is not None}
        self._forks_out = []
        if self._journal is not None:  # a copy merging forks: its journal says so too
            for source in [f._changes for f in forks] + list(journaled.values()):
                for path in source.nodes:
                    self._journal.node(path)
                for node_id, table in source.chunks.items():
                    for coord, _ in table.items():
                        self._journal.chunk(node_id, coord)
            self._flush_journal_sync()

    # -- virtual chunks ----------------------------------------------------------------------
    def set_virtual_ref(
        self,
        path: str,
        coord: Coord,
        location: str,
        *,
        offset: int,
        length: int,
        checksum: str | dt.datetime | None = None,
        validate_container: bool = False,
    ) -> None:
        """Stage chunk ``coord`` of the array at ``path`` as ``length`` bytes at
        ``offset`` of ``location``. ``checksum``: the source's ETag, or a datetime the
        source must not have been modified after. With ``validate_container``, a location
        under no declared container is refused now (otherwise at read)."""
        self._check_writable()
        rec, meta = self._array(path)
        coord = self._as_coord(path, coord)
        self._check_coord(path, meta, coord)
        for name, v in (("offset", offset), ("length", length)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise InvalidInputError(f"{name} must be an int >= 0, got {v!r}")
        etag, last_modified = virtual.split_checksum(checksum)
        cfg = self._repo.config
        outside = virtual.check_locations([location], cfg, validate_container)
        if outside:
            raise InvalidInputError(virtual.outside_message(outside, cfg))
        self._changes.set_chunk(
            rec.node_id,
            coord,
            ChunkRef(
                ChunkKind.VIRTUAL,
                location=location,
                offset=int(offset),
                length=int(length),
                etag=etag,
                last_modified=last_modified,
            ),
        )
        if self._journal is not None:
            self._journal.chunk(rec.node_id, coord)
            self._flush_journal_sync()

    def set_virtual_refs(
        self, path: str, chunks: Sequence[VirtualChunkSpec], *, validate_containers: bool = True
    ) -> list[Coord] | None:
        """Stage many virtual refs (``VirtualChunkSpec``). With ``validate_containers``,
        refs whose location is under no declared container are not staged and their
        chunk indices are returned; otherwise None."""
        specs = list(chunks)
        if not all(isinstance(c, VirtualChunkSpec) for c in specs):
            raise InvalidInputError("set_virtual_refs takes VirtualChunkSpec values")
        _, meta = self._array(path)
        indices = np.array([tuple(c.index) for c in specs], np.int64).reshape(len(specs), meta.ndim)
        lms = [c.last_updated_at_checksum for c in specs]
        return self.set_virtual_refs_arrays(
            path,
            [c.location for c in specs],
            [c.offset for c in specs],
            [c.length for c in specs],
            indices=indices,
            etags=[c.etag_checksum for c in specs],
            last_modified=lms if any(t is not None for t in lms) else None,
            validate_containers=validate_containers,
            _return_failed=True,
        )

    def set_virtual_refs_arrays(
        self,
        path: str,
        locations: Any,
        offsets: Any,
        lengths: Any,
        *,
        indices: Any = None,
        etags: Any = None,
        last_modified: Any = None,
        validate_containers: bool = True,
        _return_failed: bool = False,
    ) -> Any:
        """The columnar fast path: stage virtual refs for many chunks at once, with no
        Python work per chunk.

        ``locations`` (one string, or numpy / Arrow / sequence of strings, dictionary
        arrays welcome; a null skips that chunk), ``offsets`` and ``lengths`` (integers)
        are either shaped like the array's chunk grid (or flat in C order), or, with
        ``indices`` (n x ndim chunk coordinates), one value per row. ``etags`` and
        ``last_modified`` optionally pin each ref. Returns the number of refs staged.
        With ``validate_containers``, any location under no declared container is
        refused (``InvalidInputError``) and nothing is staged.

        Once an array has ``frazil.changeset.SPILL_ROWS`` staged refs in memory, they are
        written out now as manifest segments (so staging any number of refs takes
        bounded memory; pass them in batches of a few million). If that write fails,
        the refs stay staged in memory and the storage error is raised; the next call
        or the commit writes them.
        """
        self._check_writable()
        rec, meta = self._array(path)
        if indices is None:
            if meta.grid is None:
                raise InvalidInputError(f"{path!r} has no regular chunk grid: pass indices=")
            n = int(np.prod(meta.grid, dtype=np.int64))
            coords = np.indices(meta.grid, dtype=np.int64).reshape(meta.ndim, n).T
        else:
            coords = np.asarray(indices, dtype=np.int64)
            n = len(coords)
            if coords.ndim != 2 or coords.shape[1] != meta.ndim:
                raise InvalidInputError(
                    f"indices must be n x {meta.ndim} chunk coordinates "
                    f"of {path!r}, got shape {list(coords.shape)}"
                )
            hi = np.asarray(meta.grid if meta.grid is not None else (), np.int64)
            if n and (coords.min() < 0 or (len(hi) and (coords >= np.maximum(hi, 1)).any())):
                raise InvalidInputError(
                    f"indices fall outside the chunk grid {list(meta.grid or ())} of {path!r}"
                )
        locs = virtual.location_column(locations, n)
        offs = virtual.int_column(offsets, n, "offsets")
        lens = virtual.int_column(lengths, n, "lengths")
        tags = virtual.optional_column(etags, n, "etag")
        times = virtual.optional_column(last_modified, n, "last_modified")
        cfg = self._repo.config
        values = locs.dictionary.to_pylist()
        outside = set(virtual.check_locations(values, cfg, validate_containers))
        keep = locs.is_valid()
        failed: list[Coord] = []
        if outside:
            bad = pa.compute.is_in(locs.dictionary, pa.array(sorted(outside), pa.string()))
            in_bad = pa.compute.take(bad, locs.indices).fill_null(False)
            if not _return_failed:
                raise InvalidInputError(virtual.outside_message(sorted(outside), cfg))
            failed = [tuple(c) for c in coords[in_bad.to_numpy(zero_copy_only=False)].tolist()]
            keep = pa.compute.and_(keep, pa.compute.invert(in_bad))
        mask = keep.to_numpy(zero_copy_only=False)
        rows = virtual.block_rows(locs, offs, lens, tags, times)
        if not mask.all():
            rows, coords = rows.filter(pa.array(mask)), coords[mask]
        table = self._changes.table(rec.node_id, meta.ndim)
        keys = table.pack(coords)
        if keys is None:  # coordinates too large to pack: one by one
            for c, i in zip(coords.tolist(), range(len(coords))):
                table.set(tuple(c), row_ref(rows, i))
        else:
            with self._changes.lock:
                table.add_block(keys, rows)
            if table.block_rows() >= changeset.SPILL_ROWS and not isinstance(self, ForkSession):
                with self._spill_lock:  # concurrent callers: one spill at a time
                    if table.block_rows() >= changeset.SPILL_ROWS:
                        self._spill(rec.node_id, table)
        if self._journal is not None and len(coords):
            self._journal.block(
                rec.node_id,
                coords,
                virtual_rows(
                    rows.column("offset").combine_chunks(),
                    rows.column("length").combine_chunks(),
                    rows.column("location").combine_chunks(),
                    rows.column("etag").combine_chunks() if "etag" in rows.column_names else None,
                    rows.column("last_modified").combine_chunks()
                    if "last_modified" in rows.column_names
                    else None,
                ),
            )
            self._flush_journal_sync()
        if _return_failed:
            return failed or None
        return len(coords)

    def chunk_type(self, array_path: str, chunk_coordinates: Sequence[int]) -> ChunkType:
        """What the chunk at ``chunk_coordinates`` of the array at ``array_path`` is:
        uninitialized, inline, native or virtual."""
        path = array_path
        rec, meta = self._array(path)
        coord = self._as_coord(path, chunk_coordinates)
        self._check_coord(path, meta, coord)
        ref = runtime.run(self.chunk_ref(path, coord))
        if ref is None:
            return ChunkType.UNINITIALIZED
        return {
            ChunkKind.INLINE: ChunkType.INLINE,
            ChunkKind.NATIVE: ChunkType.NATIVE,
            ChunkKind.VIRTUAL: ChunkType.VIRTUAL,
        }[ref.kind]

    def all_virtual_chunk_locations(self) -> list[str]:
        """Every location the session's current virtual chunks point at, sorted."""
        return runtime.run(self._all_virtual_chunk_locations())

    async def _all_virtual_chunk_locations(self) -> list[str]:
        found: set[str] = set()
        for rec in list(self.nodes()):
            if rec.node_type != ARRAY:
                continue
            ndim = self.node_meta(rec).ndim
            table = self._changes.chunks.get(rec.node_id)
            coords, kinds, src, rows = [], [], [], []
            if table is not None and len(table):
                found |= table.virtual_locations()
                staged, staged_kinds = table.kinds()
                coords.append(staged)
                kinds.append(staged_kinds)
                src.append(np.full(len(staged), -1, np.int64))
                rows.append(np.zeros(len(staged), np.int64))
            segments = await runtime.gather_limited(
                [self._repo.reader.manifest(s) for s in self._segments_of(rec)]
            )
            for si, m in enumerate(segments):
                coords.append(m.coords.reshape(len(m.kinds), ndim))
                kinds.append(m.kinds)
                src.append(np.full(len(m.kinds), si, np.int64))
                rows.append(np.arange(len(m.kinds), dtype=np.int64))
            if not coords or not sum(len(k) for k in kinds):
                continue
            all_coords, all_kinds = np.concatenate(coords), np.concatenate(kinds)
            all_src, all_rows = np.concatenate(src), np.concatenate(rows)
            first = (
                np.unique(all_coords, axis=0, return_index=True)[1]
                if ndim
                else np.zeros(1, np.int64)
            )
            win = first[(all_kinds[first] == ChunkKind.VIRTUAL) & (all_src[first] >= 0)]
            for si in np.unique(all_src[win]).tolist():
                picked = all_rows[win[all_src[win] == si]]
                col = segments[si].table.column("location").take(pa.array(picked))
                found.update(v for v in pa.compute.unique(col).to_pylist() if v is not None)
        return sorted(found)

    # -- Icechunk's names: configuration, coordinates, the deprecated allow_pickling ------
    _default_metadata: dict[str, Any] = {}  # Repository.set_default_commit_metadata's, copied
    _pickling_id: str | None = None  # the fork id the copies allow_pickling sends journal to
    _pickling_allowed = False  # inside ``with session.allow_pickling():``

    @property
    def config(self) -> RepositoryConfig:
        """The configuration of the repository this session belongs to."""
        return self._repo.config

    async def chunk_coordinates(
        self, array_path: str, batch_size: int = 1000
    ) -> AsyncIterator[tuple[int, ...]]:
        """The coordinates of every initialized chunk of the array at ``array_path`` (its
        staged ones included), as tuples, in no particular order (Icechunk's form;
        ``chunk_coords`` gives them as a list). ``batch_size`` is accepted for
        compatibility: the coordinates are read together.

        Raises
        ------
        NotFoundError
            There is no node at ``array_path``.
        InvalidInputError
            The node is a group.
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive int, got {batch_size!r}")
        for coord in await self.chunk_coords(array_path):
            yield coord

    async def all_virtual_chunk_locations_async(self) -> list[str]:
        """``all_virtual_chunk_locations``, run in a thread (``asyncio.to_thread``)."""
        return await asyncio.to_thread(self.all_virtual_chunk_locations)

    async def chunk_type_async(
        self, array_path: str, chunk_coordinates: Sequence[int]
    ) -> ChunkType:
        """``chunk_type``, run in a thread (``asyncio.to_thread``)."""
        return await asyncio.to_thread(self.chunk_type, array_path, chunk_coordinates)

    async def merge_async(self, *others: ForkSession) -> None:
        """``merge``, run in a thread (``asyncio.to_thread``)."""
        await asyncio.to_thread(self.merge, *others)

    async def rebase_async(self, solver: ConflictSolver) -> None:
        """``rebase``, run in a thread (``asyncio.to_thread``)."""
        await asyncio.to_thread(self.rebase, solver)

    def shift_array(self, array_path: str, chunk_offset: Iterable[int]) -> None:
        """Shift every chunk of the array by ``chunk_offset`` chunks per dimension
        (Icechunk 2.x): positive values move chunks to higher indices. Chunks shifted out
        of the array's grid are dropped (resize the array first to keep them); positions
        left behind read as the fill value. Only references are rewritten, never chunk
        bytes: the shifted references are staged as manifest segments (Arrow, no work per
        chunk in Python) that shadow the older ones, with tombstones for the vacated
        positions, and a commit conflicts with concurrent writes to any of them."""
        runtime.run(self._shift_array(array_path, chunk_offset))

    async def _shift_array(self, array_path: str, chunk_offset: Iterable[int]) -> None:
        self._check_writable()
        rec, meta = self._array(array_path)
        offset = _as_list(chunk_offset) if not isinstance(chunk_offset, (str, bytes)) else None
        if (
            offset is None
            or len(offset) != meta.ndim
            or not all(isinstance(o, (int, np.integer)) and not isinstance(o, bool) for o in offset)
        ):
            raise InvalidInputError(
                f"shift_array({array_path!r}): chunk_offset must be {meta.ndim} integers, "
                f"got {chunk_offset!r}"
            )
        if meta.grid is None:
            raise InvalidInputError(
                f"shift_array({array_path!r}): only arrays with a regular chunk grid can be "
                "shifted (other grids' chunks have position-dependent sizes)"
            )
        ndim, reader, node_id = meta.ndim, self._repo.reader, rec.node_id
        if ndim == 0:
            return  # one chunk, nowhere to move it
        table = self._changes.table(node_id, ndim)
        with self._changes.lock:
            staged = [
                ManifestSegment(
                    _STAGED, node_id, c, r.append_column("node_id", pa.nulls(len(c), pa.string()))
                )
                for c, r in table.segments(1 << 62)
                if len(c)
            ]
            spilled_refs = list(reversed(table.spilled))
        reads: list[Awaitable[ManifestSegment]] = [
            reader.manifest(seg, cache=False) for seg in spilled_refs
        ]
        reads += [reader.manifest(seg) for seg in self._segments_of(rec)]
        loaded = await runtime.gather_limited(reads, limit=16)
        # one schema for all (decoded segments' node_id is dictionary-encoded, and their
        # times may be read at another resolution)
        canon = tombstone_rows(0).schema.append(pa.field("node_id", pa.string()))

        def same(m: ManifestSegment) -> ManifestSegment:
            t = m.table.select(canon.names).cast(canon, safe=False)
            return ManifestSegment(m.manifest_id, node_id, m.coords, t)

        segs = [same(m) for m in (*staged, *loaded)]
        coords, rows = merge_segments(segs, ndim)
        # every position any of them names (tombstones included) is shadowed by the new
        # segments, since they replace the staged and spilled ones, whose tombstones hid
        # the base's refs
        named = np.concatenate([m.coords for m in segs]).reshape(-1, ndim)
        named = np.unique(named, axis=0) if len(named) else named
        shifted = coords + np.asarray(offset, np.int64)
        grid = np.asarray(meta.grid, np.int64)
        inside = ((shifted >= 0) & (shifted < grid)).all(axis=1)
        kept = shifted[inside]
        vacated = named[~_rows_in(named, kept)]
        all_coords = np.concatenate([kept, vacated]).reshape(-1, ndim)
        tombstones = tombstone_rows(len(vacated))
        moved = rows.filter(pa.array(inside)).select(tombstones.schema.names)
        all_rows = pa.concat_tables([moved.cast(tombstones.schema), tombstones])
        order = np.lexsort(all_coords.T[::-1]) if ndim else np.arange(len(all_coords))
        all_coords, all_rows = all_coords[order], all_rows.take(pa.array(order))
        split = self._repo.config.split_rows
        segments: list[SegmentRef] = []
        writes: list[Awaitable[None]] = []
        for start in range(0, len(all_coords), split):
            ref, (key, data) = segment_object(
                node_id, all_coords[start : start + split], all_rows.slice(start, split)
            )
            segments.append(ref)
            writes.append(self._repo.storage.put(key, data))
        await runtime.gather_limited(writes, limit=_SPILL_IN_FLIGHT)
        fresh = ChunkTable(ndim)
        fresh.spilled = segments  # the whole array's refs from now on (oldest first)
        with self._changes.lock:
            self._changes.chunks[node_id] = fresh

    def amend(
        self,
        message: str,
        *,
        metadata: dict[str, Any] | None = None,
        allow_empty: bool = False,
    ) -> str:
        """Replace the branch's tip (this session's base) by a snapshot holding its changes
        and this session's, with the tip's parent as parent and ``message`` (Icechunk
        2.x): history gains no entry, the old tip leaves it (``garbage_collect`` reclaims
        it). ``allow_empty`` amends with no staged changes (a new message or metadata).

        The session is read-only at the new snapshot afterwards. The repository's first
        snapshot cannot be amended, and a branch that moved since the session started is
        a ``ConflictError`` (start a new session: an amend does not rebase).

        Returns
        -------
        str
            The new snapshot's id.
        """
        return runtime.run(self.amend_async(message, metadata=metadata, allow_empty=allow_empty))

    async def amend_async(
        self,
        message: str,
        *,
        metadata: dict[str, Any] | None = None,
        allow_empty: bool = False,
    ) -> str:
        """``amend`` (async)."""
        self._check_writable()
        if self._branch is None:
            raise ReadOnlyError("this session is not on a branch and cannot amend")
        if isinstance(self, ForkSession):
            raise InvalidTypeError("Cannot amend from a fork: merge it into its session first")
        if not isinstance(allow_empty, bool):
            raise InvalidInputError(f"allow_empty must be True or False, got {allow_empty!r}")
        meta = self._commit_metadata(message, metadata)
        await self._warn_unmerged_forks("amending")
        if self._changes.is_empty() and not allow_empty:
            raise InvalidInputError(
                "cannot amend: the session has no changes (allow_empty=True amends the "
                "message and metadata only)"
            )
        reader = self._repo.reader
        parent_id = await reader.parent(self._base.id)
        if parent_id is None:
            raise InvalidInputError(
                f"cannot amend snapshot {self._base.id}: it is the first of the repository's "
                "history (or its parent was expired)"
            )
        parent = await reader.snapshot(parent_id)
        plan = await commit(
            self._repo.storage,
            self._branch,
            _AmendCommitter(self, message, meta, parent),
            rebase=False,
            tries=1,
            history=reader.parent,
        )
        sid = self._committed(plan)
        await self._drop_merged_journals()
        return sid

    def flush(self, message: str, metadata: dict[str, Any] | None = None) -> str:
        """Write the staged changes as a new snapshot without moving any branch.

        The snapshot's parent is this session's base; the session becomes read-only at
        it, on no branch. Nothing refers to the snapshot but its id, so
        ``garbage_collect`` deletes it once it is older than the cutoff unless a branch
        or tag is made to point at it (``create_branch``, ``reset_branch``).

        Returns
        -------
        str
            The new snapshot's id.

        Raises
        ------
        InvalidInputError
            Nothing to flush, a malformed argument, or a ``ForkSession``.
        ReadOnlyError
            The session is read-only.
        """
        return runtime.run(self.flush_async(message, metadata))

    async def flush_async(self, message: str, metadata: dict[str, Any] | None = None) -> str:
        """``flush``, to await (as ``commit_async`` is ``commit``'s)."""
        self._check_writable()
        if isinstance(self, ForkSession):
            raise InvalidInputError(
                "a ForkSession cannot flush: return it to the process that forked it and "
                "call session.merge(fork) there"
            )
        meta = self._commit_metadata(message, metadata)
        await self._warn_unmerged_forks("flushing")
        if self._changes.is_empty():
            raise InvalidInputError("nothing to flush: the session has no changes")
        plan = await _SessionCommitter(self, message, meta, None).prepare(1)
        sid = self._committed(plan)
        self._branch = None
        await self._drop_merged_journals()
        return sid

    @contextlib.contextmanager
    def allow_pickling(self) -> Iterator[None]:
        """Deprecated (Icechunk 1.0 removed it): use ``fork()``.

        Inside the block, pickling this writable session (or its store) gives a copy
        that writes like a fork's copy: it starts with this session's staged changes (as
        Icechunk's did), and journals what it writes on storage as it writes
        (``frazil.journal``). ``frazil.distributed.merge_sessions(session, *copies)`` then
        merges what the copies handed back wrote (not what they brought from here), and
        what the copies that never came back journaled, into this session, and returns
        it; commit it. Copies of one session share one journal, however many
        ``allow_pickling`` blocks there are, until ``merge_sessions`` merges them.
        Unlike Icechunk's, two copies writing one chunk differently is a
        ``ConflictError`` at the merge, not a silent last-writer-wins.

        Warns
        -----
        DeprecationWarning
            Always: ``fork = session.fork()``, send ``fork``, and
            ``session.merge(*returned_forks)`` do the same without the deprecated calls.
        """
        warnings.warn(
            "Session.allow_pickling() is deprecated (Icechunk 1.0 removed it): use "
            "fork = session.fork(), send the fork to the workers, and "
            "session.merge(*forks) with the forks they return",
            DeprecationWarning,
            stacklevel=3,
        )
        self._check_writable()
        if isinstance(self, ForkSession):
            raise InvalidInputError(
                "a ForkSession pickles as it is: allow_pickling is for sessions"
            )
        if self._pickling_id is None:
            self._pickling_id = new_token()
        self._pickling_allowed = True
        try:
            yield
        finally:
            self._pickling_allowed = False

    def __reduce_ex__(self, protocol: Any) -> Any:
        if not self._pickling_allowed:
            return super().__reduce_ex__(protocol)
        fork = self.fork_with_staged_nodes()  # pickled as a fork whose copies journal
        with self._changes.lock:  # and that start with every staged change, as Icechunk's
            fork._changes.chunks = {k: copy.copy(t) for k, t in self._changes.chunks.items()}
        fork._fork_id = self._pickling_id
        return (_unpickle_fork, (fork.__getstate__(),))

    def _merge_pickled(self, copies: Sequence[Any]) -> Session:
        """``merge_sessions(self, *copies)``: merge the copies ``allow_pickling`` made that
        came back, and the journals of those that did not (see ``allow_pickling``)."""
        if self._pickling_id is None:
            raise InvalidTypeError(
                "merge_sessions merges ForkSession objects. Received 'Session', which was "
                "never pickled inside `with session.allow_pickling():` (merge_sessions(session, "
                "...) merges the copies of a session pickled inside such a block); merge forks "
                "instead: fork = session.fork(), then session.merge(*forks)"
            )
        everyone = ForkSession(
            self._repo,
            self._base,
            branch=self._branch,
            read_only=False,
            base_checksum=self._base_checksum,
        )
        everyone._fork_id = self._pickling_id  # stands for the copies not handed back
        returned = [c for c in copies if c is not self]
        for c in returned:  # what a copy brought from here is no change of its own
            if isinstance(c, ForkSession) and c._fork_id == self._pickling_id:
                _drop_inherited(self._changes, c._changes)
        self.merge(*returned, everyone)
        self._pickling_id = None  # their journals go with the next commit
        return self


class _SessionCommitter:
    """The session's side of the commit loop (``frazil.commit.Committer``)."""

    def __init__(
        self,
        session: Session,
        message: str,
        metadata: dict[str, Any],
        solver: ConflictSolver | None,
    ) -> None:
        self.session, self.message, self.metadata, self.solver = session, message, metadata, solver

    def base_id(self) -> SnapshotId:
        return self.session._base.id

    async def prepare(self, attempts: int) -> CommitPlan:
        s, repo = self.session, self.session._repo
        storage, config = repo.storage, repo.config
        meta = dict(self.metadata)
        if self.solver is not None:
            meta["frazil.commit_attempts"] = attempts
        touched = {nid for nid, t in s._changes.chunks.items() if len(t)}
        base, merged = s._base, list[tuple[str, bytes]]()
        if config.compact_when_segments_exceed is not None:  # automatic compaction
            base, merged, paths = await compact_for_commit(
                repo.reader,
                s._base,
                touched,
                config.compact_when_segments_exceed,
                config.split_rows,
            )
            if paths:
                meta["frazil.compacted_arrays"] = paths
        regions = config.region_sizes
        if touched and config.merge_fanout:  # the size-tiered merge (frazil.merging)
            base = await merge_for_commit(
                repo.reader,
                storage,
                base,
                touched,
                config.merge_fanout,
                config.split_rows,
                regions,
            )
        history = await index_for_child(repo.reader, storage, self.history_base())
        plan = await self.adjust(
            prepare_commit(
                base,
                s._changes,
                message=self.message,
                metadata=meta,
                split_rows=config.split_rows,
                history=history,
                region_sizes=regions,
            )
        )
        await runtime.gather_limited(
            [storage.put(k, b) for k, b in [*merged, *plan.manifests, plan.log]]
        )
        await storage.put(plan.objects()[-1][0], plan.snapshot_bytes)
        return plan

    def history_base(self) -> Snapshot:
        """The snapshot whose child the new one is, in history."""
        return self.session._base

    async def adjust(self, plan: CommitPlan) -> CommitPlan:
        """The plan as it is written (amend changes its parent and log)."""
        return plan

    async def rebase_onto(self, ref: Ref) -> None:
        assert self.solver is not None and ref.record.snapshot_id is not None
        await self.session._rebase_onto(self.solver, ref.record.snapshot_id, ref.record.checksum)

    async def find_landed(self, tip: SnapshotId) -> CommitPlan | None:
        return await self.session._find_landed(tip)

    def remember(self, plan: CommitPlan) -> None:
        self.session._maybe_landed[plan.snapshot.id] = plan

    def forget(self, plan: CommitPlan) -> None:
        self.session._maybe_landed.pop(plan.snapshot.id, None)


_STAGED = ManifestId(bytes(12))  # stands for the staged refs in a merge of segments


class _AmendCommitter(_SessionCommitter):
    """``Session.amend``: the content a commit on the base would have, as a child of the
    base's parent, with one transaction log for both (the base's changes and the
    session's, as ``amended_log`` gives them); the branch moves from the base by the same
    compare-and-swap, so a branch that moved meanwhile is a ``ConflictError``."""

    def __init__(
        self, session: Session, message: str, metadata: dict[str, Any], parent: Snapshot
    ) -> None:
        super().__init__(session, message, metadata, None)
        self.parent = parent

    def history_base(self) -> Snapshot:
        return self.parent

    async def adjust(self, plan: CommitPlan) -> CommitPlan:
        reader, base = self.session._repo.reader, self.session._base
        first = await reader.transaction_log(base.id, base.info.transaction_log_checksum)
        assert plan.transaction_log is not None
        sid = plan.snapshot.id
        changes = amended_log(
            self.parent, plan.snapshot, (*first.changes, *plan.transaction_log.changes)
        )
        txlog = TransactionLog(sid, self.parent.id, changes)
        log_bytes = encode_transaction_log(txlog)
        info = dataclasses.replace(
            plan.snapshot.info,
            parent_id=self.parent.id,
            transaction_log_checksum=checksum(log_bytes),
        )
        snapshot = dataclasses.replace(plan.snapshot, info=info)
        snap_bytes = encode_snapshot(snapshot)
        return dataclasses.replace(
            plan,
            snapshot=snapshot,
            snapshot_bytes=snap_bytes,
            snapshot_checksum=checksum(snap_bytes),
            log=(transaction_log_key(sid), log_bytes),
            transaction_log=txlog,
        )


def amended_log(
    parent: Snapshot, snapshot: Snapshot, logged: Sequence[NodeChange]
) -> tuple[NodeChange, ...]:
    """The transaction log from ``parent`` to ``snapshot`` when two commits' changes
    (``logged``, older first) become one: nodes compared by id (created, deleted, moved as a
    delete and a create under one id, metadata updated), and per array of ``snapshot`` the
    chunks either commit wrote (coordinates and spilled segments, together)."""
    old = {n.node_id: n for n in parent.nodes}
    new = {n.node_id: n for n in snapshot.nodes}
    out: list[NodeChange] = []
    for nid, n in sorted(old.items(), key=lambda kv: kv[1].path):
        after = new.get(nid)
        if after is None or after.path != n.path:
            out.append(
                NodeChange(
                    tx.DELETED_ARRAY if n.node_type == ARRAY else tx.DELETED_GROUP, n.path, nid
                )
            )
    for nid, n in sorted(new.items(), key=lambda kv: kv[1].path):
        before = old.get(nid)
        if before is None or before.path != n.path:
            out.append(
                NodeChange(tx.NEW_ARRAY if n.node_type == ARRAY else tx.NEW_GROUP, n.path, nid)
            )
        elif before.zarr_json != n.zarr_json:
            kind = tx.UPDATED_ARRAY if n.node_type == ARRAY else tx.UPDATED_GROUP
            out.append(NodeChange(kind, n.path, nid))
    coords: dict[NodeId, list[np.ndarray]] = {}
    spilled: dict[NodeId, list[SegmentRef]] = {}
    for c in logged:
        if c.change != tx.CHUNKS or c.node_id not in new:
            continue
        if c.chunks is not None and len(c.chunks):
            coords.setdefault(c.node_id, []).append(c.chunks)
        if c.segments:
            spilled.setdefault(c.node_id, []).extend(c.segments)
    for nid in sorted(set(coords) | set(spilled), key=lambda i: new[i].path):
        parts = coords.get(nid)
        written = np.unique(np.concatenate(parts), axis=0) if parts else None
        out.append(NodeChange(tx.CHUNKS, new[nid].path, nid, written, tuple(spilled.get(nid, ()))))
    return tuple(out)


class ForkSession(Session):
    """A writable session to send to workers (it pickles, with its changes). It cannot
    commit or rebase: return it to the process that forked it, which merges it."""

    def commit(
        self,
        message: str,
        metadata: dict[str, Any] | None = None,
        *,
        rebase_with: ConflictSolver | None = None,
        rebase_tries: int = 1_000,
    ) -> str:
        raise InvalidTypeError(
            "Cannot commit a fork: a ForkSession cannot commit; return it to the process "
            "that forked it and call session.merge(fork) there"
        )

    async def commit_async(
        self,
        message: str,
        metadata: dict[str, Any] | None = None,
        *,
        rebase_with: ConflictSolver | None = None,
        rebase_tries: int = 1_000,
    ) -> str:
        return self.commit(message, metadata)

    def rebase(self, solver: ConflictSolver) -> None:
        raise InvalidInputError("a ForkSession cannot rebase; merge it into its session")

    def fork(self, *, journal: bool = True) -> ForkSession:
        """Another fork at the same base, as Icechunk allows: only while this one has no
        uncommitted changes (merge both into the session)."""
        if self.has_uncommitted_changes:
            raise InvalidInputError(
                "a ForkSession with uncommitted changes cannot be forked; fork it before "
                "writing to it, or fork the session"
            )
        return super().fork(journal=journal)

    _fork_id: str | None = None  # None: a helper's fork, whose copies keep no journal
    _journaled = True  # False: copies only mark that they wrote (fork(journal=False))

    def __getstate__(self) -> dict[str, Any]:
        return {
            "repo": self._repo,
            "base_id": self._base.id,
            "base_checksum": self._base_checksum,
            "branch": self._branch,
            "changes": self._changes,
            "fork_id": self._fork_id,
            "journaled": self._journaled,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        repo = state["repo"]
        base = runtime.run(repo.reader.snapshot(state["base_id"], state["base_checksum"]))
        Session.__init__(
            self,
            repo,
            base,
            branch=state["branch"],
            read_only=False,
            base_checksum=state["base_checksum"],
        )
        self._changes = state["changes"]
        self._fork_id = state.get("fork_id")
        self._journaled = state.get("journaled", True)
        if self._fork_id is not None:  # a copy: what it stages is journaled (or marked)
            self._journal = ForkJournal(
                repo.storage, self._fork_id, marker_only=not self._journaled
            )
            self._changes.writers.add(self._journal.writer_id)

    def __repr__(self) -> str:
        return f"<frazil.ForkSession branch={self._branch!r} snapshot={self.snapshot_id}>"


_SPILL_IN_FLIGHT = 8  # spilled segments uploading at once


def _drop_inherited(ours: ChangeSet, theirs: ChangeSet) -> None:
    """Remove from ``theirs`` (a copy's changes) the chunks staged with the same content
    in ``ours`` (the session it was pickled from): the copy started with them."""
    for node_id, table in theirs.chunks.items():
        mine = ours.chunks.get(node_id)
        if mine is not None and len(mine) and len(table):
            both = mine.overlap(table)
            table.discard([c for c in both if same_content(mine.get(c), table.get(c))])


def _unpickle_fork(state: dict[str, Any]) -> ForkSession:
    """A fork copy from a session pickled inside ``allow_pickling`` (see there)."""
    fork = ForkSession.__new__(ForkSession)
    fork.__setstate__(state)
    return fork


def _segment_without(
    node_id: NodeId, m: ManifestSegment, hit: np.ndarray
) -> tuple[SegmentRef, tuple[str, bytes]] | None:
    """The segment ``m`` without its rows where ``hit``, encoded anew (None: no row left)."""
    keep = np.flatnonzero(~hit)
    if not len(keep):
        return None
    rows = m.table.select([c for c in m.table.column_names if c not in ("node_id", "coord")])
    return segment_object(node_id, m.coords[keep], rows.take(pa.array(keep)))


def _rows_in(coords: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Which rows of ``coords`` (n x ndim) are rows of ``wanted`` (k x ndim)."""
    if not len(coords) or not len(wanted):
        return np.zeros(len(coords), bool)
    both = np.concatenate([wanted, coords])
    _, inverse = np.unique(both, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    return np.isin(inverse[len(wanted) :], inverse[: len(wanted)])


def _as_list(value: Any) -> list[Any] | None:
    try:
        return list(value)
    except TypeError:
        return None


def _check_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise InvalidTypeError(
            f"commit metadata must be a dict with string keys, got {type(metadata).__name__}"
        )
    try:
        json.dumps(metadata)
    except TypeError as e:
        raise InvalidTypeError(
            f"commit metadata must be JSON: an object cannot be cast to JSON ({e})"
        ) from None
    except ValueError as e:  # circular references
        raise InvalidInputError(f"commit metadata must be JSON-serializable: {e}") from None
    return dict(metadata)
