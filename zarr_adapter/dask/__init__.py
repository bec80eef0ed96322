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
    block: Any,
    payload: bytes,
    path: str,
    config: ArrayConfigParams,
    origin: tuple[int, ...],
    block_info: Any = None,
) -> np.ndarray:
    """Write one block (at ``origin`` plus its place in the source) into a fresh fork of
    the shipped template; returns that fork in a one-element object array.

    It runs as a ``map_blocks`` function, so dask fuses it with the task that makes the
    block: the block is written where it is computed, never held or sent between workers.
    Each task gets its own fork (tasks on one worker share the template, so it is never
    written to directly); the fork starts with the session's staged nodes, so arrays
    created but not committed in the session are visible here.
    """
    place = block_info[0]["array-location"]
    region = tuple(slice(o + lo, o + hi) for o, (lo, hi) in zip(origin, place))
    fork = _load_template(payload).fork_with_staged_nodes()
    array = zarr.open_array(fork.store, path=path, mode="r+", zarr_format=3)
    array.with_config(config)[region] = block
    out = np.empty((1,) * block.ndim, object)
    out.flat[0] = fork
    return out


def _fork_of(value: Any) -> ForkSession:
    """A fork, or the one-element object array ``_write_block`` wraps it in."""
    return cast(ForkSession, value.flat[0] if isinstance(value, np.ndarray) else value)


def _merge_forks(*forks: ForkSession) -> ForkSession:
    """A new fork holding the changes of all ``forks`` (the inputs are left unchanged, so a
    retried task cannot merge the same chunks twice); ``ConflictError`` on overlap."""
    unwrapped = [_fork_of(f) for f in forks]
    merged = unwrapped[0].fork_with_staged_nodes()
    merged.merge(*unwrapped)
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
    payload = pickle.dumps(session.fork_with_staged_nodes())
    written = []
    for i, (source, (target, reg)) in enumerate(zip(sources, plans)):
        config: ArrayConfigParams = {  # a dict: dask would unpack a dataclass
            "order": target.config.order,
            "write_empty_chunks": target.config.write_empty_chunks,
        }
        written.append(
            source.map_blocks(
                _write_block,
                payload,
                target.path,
                config,
                tuple(s.start for s in reg),
                dtype=object,
                meta=np.empty((0,) * source.ndim, object),
                chunks=tuple((1,) * len(c) for c in source.chunks),
                name=f"frazil-write-{token}-{i}",
            )
        )
    writes: list[Delayed] = [
        block
        for array in dask.optimize(*written)  # once for all: shared inputs computed once
        for block in array.to_delayed(optimize_graph=False).ravel().tolist()
    ]
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
    (result,) = dask.compute(level[0])
    final = _fork_of(result)
    if isinstance(session, ForkSession):
        return final
    session.merge(final)
    return None
