"""Importing an Icechunk repository into frazil (``frazil import-icechunk``): every branch,
tag and commit of its history, through Icechunk's public Python API only.

How it copies
-------------
Icechunk's public API has no getter for a chunk's virtual reference, and frazil does not
read Icechunk's on-disk format. So every chunk (native, inline or virtual alike) is read
through an Icechunk read-only session's zarr store and written as a frazil native (or
inline) chunk: a virtual chunk is read from its source, which needs the Icechunk-side
container authorization and credentials (``Repository.open`` arguments, passed through).
Zarr metadata (each node's ``zarr.json``) is copied as bytes through the stores.

Each commit costs what changed: ``Repository.diff`` between a snapshot and its parent
names the deleted, new and updated groups and arrays and the chunks written or deleted, and
only those are copied. A parentless snapshot copies everything; Icechunk's empty initial
snapshot ("Repository initialized") stands for frazil's own initial snapshot.

Order, resumption, refs
-----------------------
Commits are imported parents first: each branch's ancestry (main first), then each tag's,
oldest first, a commit shared by several only once. Each lineage is committed on a work
branch ``icechunk-import.branch.<name>`` (``.tag.<name>``); each frazil commit records the
Icechunk snapshot id and time in its metadata (``icechunk_snapshot_id``,
``icechunk_written_at``, beside Icechunk's own metadata). A rerun reads those back from
every branch's history and skips what is there: a crash between a commit and the next step
never duplicates a commit (the commit and its record land in one compare-and-swap).
Branches and tags are set last (``main`` ends at Icechunk's main), then the work branches
are deleted. A destination holding commits that were not imported is refused.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.chunk_key_encodings import parse_chunk_key_encoding
from zarr.core.sync import sync

import frazil
from frazil.errors import AlreadyExistsError, ConflictError, InvalidInputError, NotFoundError
from frazil.format.common import load_json

BATCH = 64  # chunks copied concurrently
WORK_PREFIX = "icechunk-import."  # work branches: icechunk-import.branch.<name>, .tag.<name>
SNAPSHOT_KEY = "icechunk_snapshot_id"
WRITTEN_AT_KEY = "icechunk_written_at"

Progress = Callable[[str, int, int | None], None]


@dataclass
class ImportSummary:
    """What ``import_icechunk`` did. ``chunks_copied`` counts every chunk read through
    Icechunk and written to frazil as a native or inline chunk (virtual ones included)."""

    destination: str
    commits_imported: int = 0
    commits_already_there: int = 0
    chunks_copied: int = 0
    chunks_deleted: int = 0
    bytes_copied: int = 0
    branches: dict[str, str] = field(default_factory=dict)  # name -> frazil snapshot id
    tags: dict[str, str] = field(default_factory=dict)
    snapshots: dict[str, str] = field(default_factory=dict)  # Icechunk id -> frazil id


def load_icechunk() -> Any:
    """The ``icechunk`` module, or an error that says how to get it."""
    try:
        return importlib.import_module("icechunk")
    except ImportError as e:
        raise InvalidInputError(
            "importing from Icechunk needs the icechunk package, which is not installed "
            f"({e}); install it with: pip install icechunk"
        ) from None


def open_source(
    source: Any,
    *,
    config: Any = None,
    authorize_virtual_chunk_access: Mapping[str, Any] | None = None,
    endpoint_url: str | None = None,
) -> Any:
    """An Icechunk ``Repository`` for ``source``: one already open, an Icechunk
    ``Storage``, a local path (or ``file://``) or ``s3://bucket/prefix`` (credentials from
    the environment)."""
    ic = load_icechunk()
    if isinstance(source, ic.Repository):
        return source
    if isinstance(source, str):
        if source.startswith("s3://"):
            bucket, _, prefix = source[len("s3://") :].partition("/")
            if not bucket:
                raise InvalidInputError(f"no bucket in Icechunk source {source!r}")
            storage = ic.s3_storage(
                bucket=bucket, prefix=prefix, endpoint_url=endpoint_url, from_env=True
            )
        elif "://" in source and not source.startswith("file://"):
            raise InvalidInputError(
                f"unsupported Icechunk source {source!r}: give a local path, file:// or "
                "s3://bucket/prefix, or pass an icechunk Repository or Storage"
            )
        else:
            storage = ic.local_filesystem_storage(source.removeprefix("file://"))
    else:
        storage = source
    try:
        return ic.Repository.open(
            storage, config=config, authorize_virtual_chunk_access=authorize_virtual_chunk_access
        )
    except ic.IcechunkError as e:
        raise NotFoundError(f"cannot open Icechunk repository {source!r}: {e}") from None


def open_destination(dest: frazil.Repository | frazil.Storage | str) -> frazil.Repository:
    """The frazil repository to import into: given, or opened, or created if absent."""
    if isinstance(dest, frazil.Repository):
        return dest
    if isinstance(dest, str):
        if "://" in dest and not dest.startswith("file://"):
            raise InvalidInputError(
                f"import destination {dest!r}: give a local path, or pass a frazil Storage"
            )
        import os

        path = dest.removeprefix("file://")
        os.makedirs(path, exist_ok=True)
        dest = frazil.local_filesystem_storage(path)
    return frazil.Repository.open_or_create(dest)


# -- what is there already --------------------------------------------------------------------
def _imported(repo: frazil.Repository) -> tuple[dict[str, str], str]:
    """Icechunk snapshot id -> frazil snapshot id, read from the history of every branch
    and tag, and frazil's initial snapshot. Refuses commits that were not imported."""
    found: dict[str, str] = {}
    seen: set[str] = set()
    root: str | None = None
    refs = [("branch", b) for b in sorted(repo.list_branches(), key=lambda b: (b != "main", b))]
    refs += [("tag", t) for t in sorted(repo.list_tags())]
    for kind, name in refs:
        for info in repo.ancestry(**{kind: name}):
            if info.id in seen:  # and so are its ancestors
                break
            seen.add(info.id)
            if info.parent_id is None:
                root = info.id
                continue
            ic_id = info.metadata.get(SNAPSHOT_KEY)
            if not isinstance(ic_id, str):
                raise InvalidInputError(
                    f"import destination: {kind} {name!r} has commit {info.id} "
                    f"({info.message!r}) that was not imported from Icechunk; import into a "
                    "new repository or one a previous import left"
                )
            if found.setdefault(ic_id, info.id) != info.id:
                raise InvalidInputError(
                    f"import destination: Icechunk snapshot {ic_id} was imported twice "
                    f"({found[ic_id]} and {info.id})"
                )
    if root is None:
        raise NotFoundError("import destination has no main branch")
    return found, root


def _lineages(src: Any) -> list[tuple[str, str, list[Any]]]:
    """(kind, name, the commits no earlier lineage has, oldest first) for every branch
    (main first), then every tag: each commit once, after its parent."""
    seen: set[str] = set()
    out = []
    refs = [("branch", b) for b in sorted(src.list_branches(), key=lambda b: (b != "main", b))]
    refs += [("tag", t) for t in sorted(src.list_tags())]
    for kind, name in refs:
        infos = []
        for info in src.ancestry(**{kind: name}):
            if info.id in seen:  # and so are its ancestors
                break
            seen.add(info.id)
            infos.append(info)
        out.append((kind, name, infos[::-1]))
    return out


# -- copying one commit -------------------------------------------------------------------------
def _key(path: str, name: str) -> str:
    path = path.strip("/")
    return f"{path}/{name}" if path else name


def _depth(path: str) -> int:
    return path.strip("/").count("/") + (path.strip("/") != "")


@dataclass
class _Work:
    """The keys one commit copies and deletes."""

    delete_nodes: list[str] = field(default_factory=list)
    metadata: list[str] = field(default_factory=list)  # node paths, parents first
    chunks: list[str] = field(default_factory=list)


_HANDLED = {
    "deleted_arrays",
    "deleted_groups",
    "new_arrays",
    "new_groups",
    "updated_arrays",
    "updated_groups",
    "updated_chunks",
}


def _check_handled(diff: Any, where: str) -> None:
    """Refuse a diff that names a kind of change this import does not copy (a later
    Icechunk's moves, say), rather than drop it silently."""
    for name in dir(diff):
        if name.startswith("_") or name in _HANDLED:
            continue
        value = getattr(diff, name)
        if not callable(value) and value:
            raise InvalidInputError(
                f"{where}: Icechunk's diff reports {name!r}, a kind of change that "
                "frazil import-icechunk does not copy yet"
            )


def _from_diff(diff: Any, meta_of: Callable[[str], bytes]) -> _Work:
    work = _Work()
    deleted = set(diff.deleted_arrays) | set(diff.deleted_groups)
    work.delete_nodes = sorted(deleted, key=lambda p: (-_depth(p), p))
    nodes = set(diff.new_groups) | set(diff.new_arrays)
    nodes |= set(diff.updated_groups) | set(diff.updated_arrays)
    work.metadata = sorted(nodes, key=lambda p: (_depth(p), p))
    for path, coords in sorted(diff.updated_chunks.items()):
        doc = load_json(meta_of(path), f"Icechunk array {path!r} zarr.json")
        encoding = parse_chunk_key_encoding(doc.get("chunk_key_encoding", {"name": "default"}))
        prefix = path.strip("/")
        work.chunks += [
            f"{prefix}/{encoding.encode_chunk_key(tuple(c))}"
            if prefix
            else encoding.encode_chunk_key(tuple(c))
            for c in coords
        ]
    return work


async def _list_all(store: Store) -> _Work:
    work = _Work()
    keys = [k async for k in store.list()]
    for k in keys:
        if k == "zarr.json" or k.endswith("/zarr.json"):
            work.metadata.append("/" + k.removesuffix("zarr.json").rstrip("/"))
        else:
            work.chunks.append(k)
    work.metadata.sort(key=lambda p: (_depth(p), p))
    return work


async def _copy_chunks(
    source: Store,
    target: Store,
    keys: list[str],
    summary: ImportSummary,
    progress: Progress | None,
) -> None:
    proto = default_buffer_prototype()

    async def one(key: str) -> None:
        buf = await source.get(key, proto)
        if buf is None:  # written as deleted
            await target.delete(key)
            summary.chunks_deleted += 1
            return
        await target.set(key, buf)
        summary.chunks_copied += 1
        summary.bytes_copied += len(buf)

    for start in range(0, len(keys), BATCH):
        part = keys[start : start + BATCH]
        await asyncio.gather(*(one(k) for k in part))
        if progress is not None:
            progress("chunks of this commit", start + len(part), len(keys))


def _commit_metadata(info: Any) -> dict[str, Any]:
    meta = dict(info.metadata or {})
    meta[SNAPSHOT_KEY] = info.id
    meta[WRITTEN_AT_KEY] = info.written_at.isoformat()
    return meta


def _import_one(
    src: Any,
    dest: frazil.Repository,
    work_branch: str,
    info: Any,
    summary: ImportSummary,
    progress: Progress | None,
) -> str:
    """Copy Icechunk snapshot ``info`` onto ``work_branch`` (at its parent's import) and
    commit it; the new frazil snapshot id."""
    ic_session = src.readonly_session(snapshot_id=info.id)
    source = ic_session.store
    session = dest.writable_session(work_branch)
    target = session.store
    proto = default_buffer_prototype()

    async def meta_bytes(path: str) -> bytes:
        buf = await source.get(_key(path, "zarr.json"), proto)
        if buf is None:
            raise NotFoundError(
                f"Icechunk snapshot {info.id}: node {path!r} is listed as changed but has "
                "no zarr.json"
            )
        return bytes(buf.to_bytes())

    async def go() -> None:
        if info.parent_id is None:
            work = await _list_all(source)
        else:
            diff = src.diff(from_snapshot_id=info.parent_id, to_snapshot_id=info.id)
            _check_handled(diff, f"Icechunk snapshot {info.id}")
            docs = {p: await meta_bytes(p) for p in diff.updated_chunks}
            work = _from_diff(diff, docs.__getitem__)
        for path in work.delete_nodes:
            session.delete_node(path)
        for path in work.metadata:
            doc = await meta_bytes(path)
            await target.set(_key(path, "zarr.json"), proto.buffer.from_bytes(doc))
        await _copy_chunks(source, target, work.chunks, summary, progress)

    sync(go())
    if not session.has_uncommitted_changes:
        raise InvalidInputError(
            f"Icechunk snapshot {info.id} ({info.message!r}) changes nothing frazil can "
            "record: frazil does not make empty commits"
        )
    return session.commit(info.message, metadata=_commit_metadata(info))


def _is_empty_root(src: Any, info: Any) -> bool:
    if info.parent_id is not None:
        return False

    async def empty() -> bool:
        async for _ in src.readonly_session(snapshot_id=info.id).store.list():
            return False
        return True

    return bool(sync(empty()))


def _start_work(dest: frazil.Repository, work: str, parent: str, mapping: dict[str, str]) -> None:
    """Work branch ``work`` at ``parent``, where the next commit goes. It only moves on to a
    commit this import knows (compare-and-swap from the tip it saw): a tip it does not know
    is another import's, running at the same time, and is left alone."""
    if work not in dest.list_branches():
        dest.create_branch(work, parent)
        return
    tip = dest.lookup_branch(work)
    if tip == parent:
        return
    if tip not in mapping.values():
        raise ConflictError(
            f"import destination: work branch {work!r} is at {tip}, a commit this import "
            "did not find when it started; is another import into it running?"
        )
    dest.reset_branch(work, parent, from_snapshot_id=tip)


def _place(dest: frazil.Repository, branch: str, snapshot_id: str) -> None:
    """Branch ``branch`` at ``snapshot_id``, created or moved."""
    if branch not in dest.list_branches():
        dest.create_branch(branch, snapshot_id)
    elif dest.lookup_branch(branch) != snapshot_id:
        dest.reset_branch(branch, snapshot_id)


# -- the whole import ---------------------------------------------------------------------------
def import_icechunk(
    source: Any,
    dest: frazil.Repository | frazil.Storage | str,
    *,
    config: Any = None,
    authorize_virtual_chunk_access: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> ImportSummary:
    """Copy the Icechunk repository ``source`` into the frazil repository ``dest`` (a new
    one, or one an interrupted import left, which is resumed): every branch, tag and
    commit, with messages and metadata. See the module docstring for how.

    Parameters
    ----------
    source
        An ``icechunk.Repository``, an Icechunk ``Storage``, a local path or
        ``s3://bucket/prefix``.
    dest
        A ``frazil.Repository``, a frazil ``Storage`` or a local path (created if absent).
    config, authorize_virtual_chunk_access
        Passed to ``icechunk.Repository.open``: the containers (and their credentials)
        that virtual chunks are read from, since they are copied as native chunks.
    progress
        ``progress(stage, done, total)``, called with ``"commits"`` after each commit and
        with ``"chunks of this commit"`` as its chunks are copied.

    Raises
    ------
    InvalidInputError
        icechunk is not installed; ``dest`` holds commits that were not imported; a ref
        name frazil refuses.
    AlreadyExistsError
        A tag of that name points elsewhere in ``dest``.
    ConflictError
        Another import into ``dest`` is running (run one at a time).
    """
    src = open_source(
        source, config=config, authorize_virtual_chunk_access=authorize_virtual_chunk_access
    )
    repo = open_destination(dest)
    summary = ImportSummary(str(dest))
    mapping, root = _imported(repo)
    lineages = _lineages(src)
    order: dict[str, Any] = {}
    for _, _, infos in lineages:
        for info in infos:
            order.setdefault(info.id, info)
    for info in order.values():
        if info.id not in mapping and _is_empty_root(src, info):
            mapping[info.id] = root
    total = len(order)
    summary.commits_already_there = sum(1 for i in order if i in mapping)
    done = summary.commits_already_there
    if progress is not None:
        progress("commits", done, total)
    for kind, name, infos in lineages:
        work = f"{WORK_PREFIX}{kind}.{name}"
        for info in infos:
            if info.id in mapping:
                continue
            _start_work(repo, work, mapping[info.parent_id] if info.parent_id else root, mapping)
            mapping[info.id] = _import_one(src, repo, work, info, summary, progress)
            summary.commits_imported += 1
            done += 1
            if progress is not None:
                progress("commits", done, total)
    _set_refs(src, repo, mapping, summary)
    summary.snapshots = {k: mapping[k] for k in order}
    return summary


def _set_refs(
    src: Any, repo: frazil.Repository, mapping: dict[str, str], summary: ImportSummary
) -> None:
    for branch in sorted(src.list_branches()):
        summary.branches[branch] = mapping[src.lookup_branch(branch)]
        _place(repo, branch, summary.branches[branch])
    existing = repo.list_tags()
    for tag in sorted(src.list_tags()):
        target = summary.tags[tag] = mapping[src.lookup_tag(tag)]
        if tag not in existing:
            repo.create_tag(tag, target)
        elif repo.lookup_tag(tag) != target:
            raise AlreadyExistsError(
                f"import destination: tag {tag!r} exists at {repo.lookup_tag(tag)}, not at "
                f"{target} (Icechunk snapshot {src.lookup_tag(tag)})"
            )
    for branch in _work_branches(repo.list_branches()):
        repo.delete_branch(branch)


def _work_branches(names: Iterable[str]) -> list[str]:
    return sorted(n for n in names if n.startswith(WORK_PREFIX))
