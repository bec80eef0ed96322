"""``frazil.dask``: dask arrays written into a frazil session from many workers, each block
through its own fork of the session, the forks merged back in a tree (``store_dask``)."""

from __future__ import annotations

import functools
import os
import pickle
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import dask
import dask.array  # imported here, as Icechunk's module does: `import dask` users get dask.array
import numpy as np
import zarr
from zarr.core.array_spec import ArrayConfigParams

from frazil.errors import InvalidInputError, ReadOnlyError
from frazil.session import ForkSession, Session
from frazil.storage.memory import InMemoryStorage
from frazil.zarr_adapter.store import FrazilStore

if TYPE_CHECKING:
    from dask.delayed import Delayed

Region = tuple[slice, ...]

__all__ = ["store_dask"]


# -- worker-side tasks -----------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _load_template(payload: bytes) -> ForkSession:
    """The fork shipped to the workers, unpickled once per worker process.

    It travels as bytes so that the scheduler, which unpickles task graphs, never opens it
    (that would read the snapshot from storage on the scheduler).
    """
    fork = pickle.loads(payload)
    if not isinstance(fork, ForkSession):
        raise InvalidInputError(f"expected a pickled ForkSession, got {type(fork).__name__}")
    return fork


def _write_block(
    payload: bytes, path: str, config: ArrayConfigParams, block: Any, region: Region
) -> ForkSession:
    """Write one block into a fresh fork of the shipped template and return that fork.

    Each task gets its own fork (tasks on one worker share the template, so it is never
    written to directly); the fork starts with the session's staged nodes, so arrays
    created but not committed in the session are visible here.
    """
    fork = _load_template(payload).fork_with_staged_nodes()
    array = zarr.open_array(fork.store, path=path, mode="r+", zarr_format=3)
    array.with_config(config)[region] = block
    return fork


def _merge_forks(*forks: ForkSession) -> ForkSession:
    """A new fork holding the changes of all ``forks`` (the inputs are left unchanged, so a
    retried task cannot merge the same chunks twice); ``ConflictError`` on overlap."""
    merged = forks[0].fork_with_staged_nodes()
    merged.merge(*forks)
    return merged


# -- helpers -----------------------------------------------------------------------------------
def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _normalize_region(region: Any, shape: tuple[int, ...], name: str) -> Region:
    """``region`` (a tuple of step-1 slices, possibly shorter than ``shape``, or None) as
    one ``slice(start, stop)`` per dimension with concrete bounds."""
    if region is None:
        region = ()
    if not isinstance(region, tuple) or not all(isinstance(s, slice) for s in region):
        raise InvalidInputError(f"region for {name} must be a tuple of slices, got {region!r}")
    if len(region) > len(shape):
        raise InvalidInputError(
            f"region {region!r} has more dimensions than {name} (shape {shape})"
        )
    full = region + (slice(None),) * (len(shape) - len(region))
    out = []
    for s, n in zip(full, shape):
        start, stop, step = s.indices(n)
        if step != 1:
            raise InvalidInputError(f"region {region!r} for {name}: slices must have step 1")
        out.append(slice(start, max(start, stop)))
    return tuple(out)


def _check_alignment(
    source: dask.array.Array, target: zarr.Array, region: Region, index: int
) -> None:
    """Refuse sources whose blocks would share a zarr chunk (or shard): two forks would
    each rewrite it and the merge would fail only after all the work was done."""
    unit = target.shards or target.chunks
    for axis, (sizes, s, c) in enumerate(zip(source.chunks, region, unit)):
        edges = s.start + np.cumsum(sizes)[:-1]
        bad = [int(e) for e in edges if s.start < e < s.stop and e % c]
        if bad:
            kind = "shard" if target.shards else "chunk"
            raise InvalidInputError(
                f"source {index}: its dask chunks along axis {axis} end at {bad[0]} in "
                f"{target.path!r}, which is not a multiple of the zarr {kind} size {c}; two "
                f"blocks would write the same {kind}. Rechunk the source so every block "
                f"boundary falls on a {kind} boundary"
            )


def _session_of(targets: Sequence[zarr.Array]) -> Session:
    session: Session | None = None
    for i, target in enumerate(targets):
        if not isinstance(target, zarr.Array):
            raise InvalidInputError(f"target {i} must be a zarr.Array, got {type(target).__name__}")
        store = target.store
        if not isinstance(store, FrazilStore):
            raise InvalidInputError(
                f"target {i} ({target.path!r}) is not on a frazil "
                f"session's store (its store is {type(store).__name__})"
            )
        if store.read_only:
            raise ReadOnlyError(
                f"target {i} ({target.path!r}) is on a read-only store; open "
                "it on repo.writable_session(branch).store"
            )
        if session is None:
            session = store.session
        elif store.session is not session:
            raise InvalidInputError("all targets must be on the same session's store")
    assert session is not None
    return session


def _check_storage_reachable(session: Session, collection: Any) -> None:
    """Fail early, on the client, if the forks could not open their storage on the workers:
    in-memory storage lives in this process (and a distributed worker that cannot unpickle
    a task drops its connection instead of reporting the error)."""
    import dask.base
    import dask.multiprocessing

    if not isinstance(session.repository.storage, InMemoryStorage):
        return
    scheduler = dask.base.get_scheduler(collections=[collection])
    client = getattr(scheduler, "__self__", None)
    if client is not None and callable(getattr(client, "run", None)):  # dask.distributed
        remote = any(pid != os.getpid() for pid in client.run(os.getpid).values())
    else:
        remote = scheduler is dask.multiprocessing.get
    if remote:
        raise InvalidInputError(
            "in-memory storage cannot be shared with worker processes; use "
            "local_filesystem_storage (or S3) for a repository written from dask workers"
        )


def check_split_every(split_every: int | None) -> int:
    if split_every is None:
        return 8
    if not isinstance(split_every, int) or isinstance(split_every, bool) or split_every < 2:
        raise InvalidInputError(f"split_every must be an int >= 2, got {split_every!r}")
    return split_every


# -- store_dask --------------------------------------------------------------------------------
def store_dask(
    sources: dask.array.Array | Sequence[dask.array.Array],
    targets: zarr.Array | Sequence[zarr.Array],
    regions: Region | Sequence[Region | None] | None = None,
    *,
    split_every: int | None = None,
) -> ForkSession | None:
    """Write dask arrays into zarr arrays of a writable frazil session, block by block on
    the workers, and fold the workers' writes back into the session (then commit it).

    Like ``dask.array.store`` without ``compute``: ``sources[i]`` goes to ``targets[i]``
    (single arrays are accepted too), at ``regions[i]`` (a tuple of slices; one tuple is
    used for every target; None means the whole target). Every target must be opened on
    the same writable session's store. Each block is written through its own fork of the
    session (carrying the session's staged nodes, so arrays created and not yet committed
    are visible), the forks are merged on the workers in a tree of ``split_every``
    (default 8) and the result is merged into the session; ``ConflictError`` if a written
    chunk was also staged in the session. Block boundaries must fall on zarr chunk (or
    shard) boundaries. Storage must be reachable from the workers (local files or S3;
    in-memory storage works only with in-process workers). Example::

        session = repo.writable_session("main")
        z = zarr.create_array(session.store, name="t", shape=(100, 100), chunks=(10, 10),
                              dtype="f8")
        store_dask(dask.array.random.random((100, 100), chunks=(20, 20)), z)
        session.commit("random field")

    Targets opened on a fork's store (Icechunk's way): the fork is left as it is and the
    merged fork holding every block's writes is returned, for ``session.merge(...)``, as
    Icechunk's ``store_dask`` returns it. Targets on a session's store: the writes are
    merged into that session and None is returned (there is nothing left to merge).
    """
    sources, targets = _as_list(sources), _as_list(targets)
    if len(sources) != len(targets):
        raise InvalidInputError(f"got {len(sources)} sources but {len(targets)} targets")
    fan_in = check_split_every(split_every)
    if not targets:
        return None
    session = _session_of(targets)
    if regions is None or (
        isinstance(regions, tuple) and all(isinstance(r, slice) for r in regions)
    ):
        region_list: list[Any] = [regions] * len(targets)  # one region for every target
    else:
        region_list = list(regions)
        if len(region_list) != len(targets):
            raise InvalidInputError(f"got {len(region_list)} regions for {len(targets)} targets")

    plans: list[tuple[zarr.Array, Region]] = []
    for i, (source, target, region) in enumerate(zip(sources, targets, region_list)):
        if not isinstance(source, dask.array.Array):
            raise InvalidInputError(f"source {i} must be a dask array, got {type(source).__name__}")
        reg = _normalize_region(region, target.shape, f"target {i} ({target.path!r})")
        extent = tuple(s.stop - s.start for s in reg)
        if source.shape != extent:
            raise InvalidInputError(
                f"source {i} has shape {source.shape} but its region of {target.path!r} "
                f"(shape {target.shape}) has shape {extent}"
            )
        _check_alignment(source, target, reg, i)
        plans.append((target, reg))

    token = uuid.uuid4().hex
    template = dask.delayed(
        pickle.dumps(session.fork_with_staged_nodes()), name=f"frazil-fork-{token}"
    )
    optimized = dask.optimize(*sources)
    writes: list[Delayed] = []
    for source, (target, reg) in zip(optimized, plans):
        blocks = source.to_delayed(optimize_graph=False)
        config: ArrayConfigParams = {  # a dict: delayed would unpack a dataclass
            "order": target.config.order,
            "write_empty_chunks": target.config.write_empty_chunks,
        }
        starts = [np.concatenate([[0], np.cumsum(c)]) for c in source.chunks]
        for idx in np.ndindex(blocks.shape):
            block_region = tuple(
                slice(int(s.start + st[j]), int(s.start + st[j + 1]))
                for s, st, j in zip(reg, starts, idx)
            )
            writes.append(
                dask.delayed(_write_block, pure=False)(
                    template,
                    target.path,
                    config,
                    blocks[idx],
                    block_region,
                    dask_key_name=f"frazil-write-{token}-{len(writes)}",
                )
            )
    level, depth = writes, 0
    while len(level) > 1:
        depth += 1
        level = [
            dask.delayed(_merge_forks, pure=False)(
                *level[k : k + fan_in], dask_key_name=f"frazil-merge-{token}-{depth}-{n}"
            )
            for n, k in enumerate(range(0, len(level), fan_in))
        ]
    _check_storage_reachable(session, level[0])
    (final,) = dask.compute(level[0])
    if isinstance(session, ForkSession):
        return cast(ForkSession, final)
    session.merge(final)
    return None
