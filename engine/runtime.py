"""The engine's background event loop and I/O thread pool, reset in forked children.

Synchronous public methods run their coroutines here with ``run``; zarr's own loop calls
the same coroutines directly. Nothing created here survives ``os.fork``: the child gets a
fresh loop and pool on first use. ``at_fork_in_child`` is the one place that registers
fork hooks, and only where the platform can fork (not on Windows).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_pool: ThreadPoolExecutor | None = None

IO_THREADS = min(32, 4 * (os.cpu_count() or 1) + 4)


def at_fork_in_child(hook: Callable[[], None]) -> None:
    """Run ``hook`` in the child after every ``os.fork``; nothing where the platform has no
    fork (Windows: there every process starts fresh, by spawn)."""
    register = getattr(os, "register_at_fork", None)
    if register is not None:
        register(after_in_child=hook)


def _reset_after_fork() -> None:
    global _lock, _loop, _thread, _pool, _batchers
    _lock = threading.Lock()
    _batchers = weakref.WeakKeyDictionary()
    _loop = None
    _thread = None
    _pool = None


at_fork_in_child(_reset_after_fork)

_resettable: weakref.WeakSet[Any] = weakref.WeakSet()


def reset_in_child(obj: Any) -> None:
    """Call ``obj._after_fork()`` in a forked child (for objects holding locks or futures
    that another thread of the parent may have held at the moment of the fork)."""
    _resettable.add(obj)


def _reset_objects_after_fork() -> None:
    for obj in list(_resettable):
        obj._after_fork()


at_fork_in_child(_reset_objects_after_fork)


def loop() -> asyncio.AbstractEventLoop:
    """The engine's loop, started on first use in a daemon thread."""
    global _loop, _thread
    with _lock:
        if _loop is None:
            new_loop = asyncio.new_event_loop()
            t = threading.Thread(target=new_loop.run_forever, name="frazil-io", daemon=True)
            t.start()
            _loop, _thread = new_loop, t
        return _loop


def pool() -> ThreadPoolExecutor:
    """Thread pool for blocking file I/O."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="frazil-file")
        return _pool


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on the engine's loop and return its result."""
    return submit(coro).result()


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Start ``coro`` on the engine's loop from another thread; its future. Called from the
    loop itself, where waiting for it would never end, it is refused."""
    target = loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is target:
        coro.close()
        raise RuntimeError(
            "frazil: a blocking call was made from the engine's own event loop; "
            "use the async method instead"
        )
    return asyncio.run_coroutine_threadsafe(coro, target)


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking ``fn(*args)`` in the I/O pool."""
    return await asyncio.get_running_loop().run_in_executor(pool(), fn, *args)


_BATCH = 8
_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Batcher] = (
    weakref.WeakKeyDictionary()
)


class _Batcher:
    """Collects the blocking calls made in one loop iteration and runs them in the pool
    in batches of ``_BATCH``, so a thread hop is paid per batch, not per call."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self.scheduled = False

    def submit(self, fn: Callable[..., T], args: tuple[Any, ...]) -> asyncio.Future[T]:
        fut: asyncio.Future[T] = self.loop.create_future()
        self.pending.append((fn, args, fut))
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        items, self.pending, self.scheduled = self.pending, [], False
        for i in range(0, len(items), _BATCH):
            part = items[i : i + _BATCH]
            job = self.loop.run_in_executor(pool(), _run_batch, part)
            job.add_done_callback(functools.partial(_deliver, part))


def _run_batch(
    part: list[tuple[Callable[..., Any], tuple[Any, ...], Any]],
) -> list[tuple[bool, Any]]:
    out: list[tuple[bool, Any]] = []
    for fn, args, _ in part:
        try:
            out.append((True, fn(*args)))
        except BaseException as e:  # delivered to the caller's future
            out.append((False, e))
    return out


def _deliver(
    part: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]],
    job: asyncio.Future[list[tuple[bool, Any]]],
) -> None:
    if job.cancelled() or job.exception() is not None:
        err = job.exception() if not job.cancelled() else asyncio.CancelledError()
        for _, _, fut in part:
            if not fut.done():
                fut.set_exception(err)  # type: ignore[arg-type]
        return
    for (_, _, fut), (ok, value) in zip(part, job.result()):
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


async def in_thread_batched(fn: Callable[..., T], *args: Any) -> T:
    """Like ``in_thread``, but calls made together share one trip to the pool."""
    loop = asyncio.get_running_loop()
    batcher = _batchers.get(loop)
    if batcher is None:
        batcher = _batchers[loop] = _Batcher(loop)
    return await batcher.submit(fn, args)


async def gather_limited(aws: list[Awaitable[T]], limit: int = 64) -> list[T]:
    """``asyncio.gather`` with at most ``limit`` awaitables in flight."""
    if len(aws) <= limit:
        return list(await asyncio.gather(*aws))
    sem = asyncio.Semaphore(limit)

    async def one(aw: Awaitable[T]) -> T:
        async with sem:
            return await aw

    return list(await asyncio.gather(*(one(a) for a in aws)))
