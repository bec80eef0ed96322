"""Exporting a snapshot as a plain zarr v3 store (a local folder or an fsspec URL) that
zarr opens without frazil: ``frazil export``.

Every key of the snapshot is copied as it is (metadata documents and encoded chunk bytes;
virtual chunks are read through the containers the repository was opened with, inline
ones from their manifests), a bounded batch of keys at a time, concurrently. Chunks are
written first, then the ``zarr.json`` documents deepest first, the root's last: an
export that stops half way has no root document and does not open as a hierarchy. The
destination must be empty (or absent): nothing is overwritten.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zarr
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

import frazil
from frazil.errors import InvalidInputError, NotFoundError

BATCH = 64  # keys copied concurrently


@dataclass
class ExportSummary:
    """What ``export`` wrote."""

    snapshot_id: str
    destination: str
    keys: int = 0
    chunks: int = 0
    bytes: int = 0


def destination_store(dest: str | Store) -> Store:
    """A writable zarr store for ``dest``: a zarr ``Store``, a local path or an fsspec URL."""
    if isinstance(dest, Store):
        return dest
    if not isinstance(dest, str) or not dest:
        raise InvalidInputError(f"export destination {dest!r} is not a path, URL or zarr Store")
    if "://" in dest and not dest.startswith("file://"):
        return zarr.storage.FsspecStore.from_url(dest, read_only=False)
    return zarr.storage.LocalStore(dest.removeprefix("file://"), read_only=False)


def _depth(key: str) -> int:
    return key.count("/")


async def _copy(
    source: Any,
    target: Store,
    keys: list[str],
    summary: ExportSummary,
    done: Callable[[int], None],
) -> None:
    proto = default_buffer_prototype()

    async def one(key: str) -> None:
        buf = await source.get(key, proto)
        if buf is None:
            raise NotFoundError(f"export: {key!r} was listed but cannot be read")
        await target.set(key, buf)
        summary.bytes += len(buf)

    for start in range(0, len(keys), BATCH):
        part = keys[start : start + BATCH]
        await asyncio.gather(*(one(k) for k in part))
        done(len(part))


def export(
    session: frazil.Session,
    dest: str | Store,
    *,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> ExportSummary:
    """Copy the snapshot ``session`` reads (a read-only session) to ``dest`` as a plain
    zarr v3 store; see the module docstring for the order and the rules."""
    if not session.read_only:
        raise InvalidInputError(
            "export a read-only session (repo.readonly_session(...)): a writable one could "
            "change while it is copied"
        )
    target = destination_store(dest)
    summary = ExportSummary(session.snapshot_id, str(dest))

    async def go() -> None:
        if not target.supports_writes:
            raise InvalidInputError(f"export destination {dest!r} is not writable")
        async for _ in target.list():
            raise InvalidInputError(
                f"export destination {dest!r} is not empty: frazil exports only into an "
                "empty folder or prefix"
            )
        source = session.store
        keys = [k async for k in source.list()]
        meta = [k for k in keys if k == "zarr.json" or k.endswith("/zarr.json")]
        chunks = sorted(set(keys) - set(meta))
        summary.keys, summary.chunks = len(keys), len(chunks)
        copied = 0

        def done(n: int) -> None:
            nonlocal copied
            copied += n
            if progress is not None:
                progress("keys", copied, len(keys))

        await _copy(source, target, chunks, summary, done)
        # documents: arrays and groups deepest first, the root's last
        await _copy(source, target, sorted(meta, key=lambda k: (-_depth(k), k)), summary, done)

    sync(go())
    return summary
