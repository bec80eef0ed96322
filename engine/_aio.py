"""The engine's background event loop and I/O thread pool, reset in forked children.

Synchronous public methods run their coroutines here with ``run``; zarr's own loop calls
the same coroutines directly. Nothing created here survives ``os.fork``: the child gets a
fresh loop and pool on first use.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_pool: ThreadPoolExecutor | None = None

IO_THREADS = min(32, 4 * (os.cpu_count() or 1) + 4)


def _reset_after_fork() -> None:
    global _lock, _loop, _thread, _pool
    _lock = threading.Lock()
    _loop = None
    _thread = None
    _pool = None


os.register_at_fork(after_in_child=_reset_after_fork)


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
    target = loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is target:
        coro.close()
        raise RuntimeError("frazil: a blocking call was made from the engine's own event loop; "
                           "use the async method instead")
    return asyncio.run_coroutine_threadsafe(coro, target).result()


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking ``fn(*args)`` in the I/O pool."""
    return await asyncio.get_running_loop().run_in_executor(pool(), fn, *args)


async def gather_limited(aws: list[Awaitable[T]], limit: int = 64) -> list[T]:
    """``asyncio.gather`` with at most ``limit`` awaitables in flight."""
    if len(aws) <= limit:
        return list(await asyncio.gather(*aws))
    sem = asyncio.Semaphore(limit)

    async def one(aw: Awaitable[T]) -> T:
        async with sem:
            return await aw

    return list(await asyncio.gather(*(one(a) for a in aws)))
