"""One client per running event loop, closed on that loop when it shuts down or when its
owner goes away, reset after fork.

Async network clients (the HTTP backend's aiohttp session) belong to the event loop
they were first used on: their connections, locks and futures cannot be used from
another loop. A storage object, though, is used from several loops: the engine's own
loop (``frazil.runtime``), zarr's loop, and any ``asyncio.run`` of the caller. ``PerLoop``
keeps one client per running loop, keyed (weakly) by the loop.

Closing, always on the client's own loop (closing needs it):

* when the loop shuts down: each client is paired with a tiny async generator started on
  its loop; loops that shut down properly (``asyncio.run``, ``asyncio.Runner``,
  pytest-asyncio) finalize their live async generators before closing
  (``loop.shutdown_asyncgens``), which runs the generator's ``finally`` there;
* when the owner (the storage object) is garbage-collected: its clients are closed on
  their loops (scheduled thread-safely);
* at interpreter exit: clients on loops still running in other threads (the engine's
  daemon loop, zarr's loop) are closed by an ``atexit`` hook.

Open clients are held by this module until closed, so they never become unreachable
garbage with their connections open (which would make aiohttp warn). A loop closed
without ``shutdown_asyncgens`` leaves its clients unclosed.

Forked children: the parent's clients hold the parent's sockets; the child keeps them
referenced but never uses or closes them, and makes new ones on first use.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Generic, TypeVar

from .. import runtime

T = TypeVar("T")

_lock = threading.Lock()
_open: set[_Entry[Any]] = set()  # clients not closed yet (strong references)
_tasks: set[asyncio.Future[Any]] = set()  # closings in progress
_inherited: list[Any] = []  # a forked child's copies of its parent's clients: never used


def _reset_after_fork() -> None:
    global _lock, _open, _tasks
    _inherited.append((_open, _tasks))
    _lock = threading.Lock()
    _open = set()
    _tasks = set()


runtime.at_fork_in_child(_reset_after_fork)


class _Entry(Generic[T]):
    __slots__ = ("value", "close", "loop", "pid", "closer", "closed", "__weakref__")

    def __init__(
        self, value: T, close: Callable[[T], Awaitable[None]], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.value: T | None = value
        self.close = close
        self.loop = weakref.ref(loop)
        self.pid = os.getpid()
        self.closer: AsyncGenerator[None, None] | None = None
        self.closed = False


async def _finish(entry: _Entry[Any]) -> None:
    """Close the entry's client (once, in the process that made it, on its loop)."""
    if entry.closed or entry.pid != os.getpid():
        return
    entry.closed = True
    value, entry.value, entry.closer = entry.value, None, None  # frees the loop
    with _lock:
        _open.discard(entry)
    with contextlib.suppress(Exception):
        await entry.close(value)


async def _closer(entry: _Entry[Any]) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await _finish(entry)


def _start_finish(entry: _Entry[Any]) -> None:
    """On the entry's loop: start closing it."""
    task = asyncio.ensure_future(_finish(entry))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def _owner_gone(
    by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Entry[Any]], pid: int
) -> None:
    if pid != os.getpid():
        return
    for loop, entry in list(by_loop.items()):
        if entry.closed or loop.is_closed():
            continue
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(_start_finish, entry)


class PerLoop(Generic[T]):
    """``await get()`` gives the client of the running loop, made by ``make()`` on first
    use; ``close(client)`` is awaited on that loop when the client is closed."""

    def __init__(self, make: Callable[[], T], close: Callable[[T], Awaitable[None]]) -> None:
        self._make = make
        self._close = close
        self._new_state()
        runtime.reset_in_child(self)

    def _new_state(self) -> None:
        self._lock = threading.Lock()
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Entry[T]] = (
            weakref.WeakKeyDictionary()
        )
        self._finalizer = weakref.finalize(self, _owner_gone, self._by_loop, os.getpid())
        self._finalizer.atexit = False

    async def get(self) -> T:
        loop = asyncio.get_running_loop()
        entry = self._by_loop.get(loop)
        if entry is not None and entry.value is not None:
            return entry.value
        with self._lock:
            entry = self._by_loop.get(loop)
            if entry is not None and entry.value is not None:
                return entry.value
            value = self._make()
            entry = _Entry(value, self._close, loop)
            self._by_loop[loop] = entry
        with _lock:
            _open.add(entry)
        closer = _closer(entry)
        entry.closer = closer
        # the first step registers the generator with this loop (and runs to its yield
        # without suspending), so that the loop finalizes it when it shuts down
        await closer.__anext__()
        _register_atexit()
        return value

    def _after_fork(self) -> None:
        self._finalizer.detach()
        _inherited.append(self._by_loop)
        self._new_state()

    def __len__(self) -> int:
        """Open clients (for tests)."""
        return sum(1 for e in list(self._by_loop.values()) if e.value is not None)


def _close_all_at_exit() -> None:
    """Close the clients of loops running in other threads (the engine's, zarr's)."""
    try:
        current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    with _lock:
        entries = list(_open)
    for entry in entries:
        loop = entry.loop()
        if (
            entry.closed
            or loop is None
            or loop is current
            or loop.is_closed()
            or not loop.is_running()
        ):
            continue
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_finish(entry), loop).result(2.0)


def _register_atexit() -> None:
    # moved to the end each time, so that it runs before the exit hooks of libraries
    # imported later (zarr stops its loop at exit)
    atexit.unregister(_close_all_at_exit)
    atexit.register(_close_all_at_exit)
