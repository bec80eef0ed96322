"""Which copy of obstore's extension module this process may call, so that object stores
reached through obstore keep working in children made by ``os.fork``.

obstore runs its requests on a Rust (tokio) runtime that lives in static memory of its
extension module and is started by the first call. ``os.fork`` copies that memory but not
the runtime's threads, so a forked child that calls the same module after its parent did
waits forever, whatever client it builds (checked with obstore 0.12.1: every sync and async
call hangs). A fresh copy of the extension, loaded from another file, has statics of its
own and starts a runtime of its own. So ``extension()`` gives:

* in a process that has not called obstore's runtime since its start (or since the fork
  that made it): the module it has (``obstore._obstore``, or the copy it loaded);
* in a forked child whose parent had called it (or had imported it at all, if frazil
  did not: other code may have called it): a fresh copy, loaded once per process
  from an anonymous in-memory file (``os.memfd_create``) or, where that is missing, a
  private temporary file removed once loaded. What the parent had built stays referenced
  and is never used nor dropped (dropping could wait on threads that do not exist).

Stores, exceptions and ``Bytes`` of one copy must only be used with that copy's functions:
callers take everything from the module this returns, and rebuild their stores when their
process changes (``ObjectStoreStorage`` checks the pid).

At exit, ``_settle_foreign_threads`` (registered with ``atexit`` by the first
``extension()`` call) waits, for at most ``EXIT_SETTLE_SECONDS``, until no thread that
Python did not start is inside Python code. obstore completes each async call on one of its
runtime's threads, which calls the event loop's ``call_soon_threadsafe``; that call writes
to the loop's wake-up socket with the GIL released, so the awaiting thread can finish and
the interpreter start finalizing before the runtime's thread takes the GIL back. Python
3.11 to 3.13 end such a thread with ``pthread_exit``, whose unwinding through Rust frames
aborts the whole process (SIGABRT, no message) after its work is done: seen here in
spawned workers on a loaded machine, 1 process in 25.
"""

from __future__ import annotations

import atexit
import importlib.machinery
import importlib.util
import os
import shutil
import sys
import tempfile
import threading
import time
from types import ModuleType

from ..errors import StorageError
from ..runtime import at_fork_in_child

_lock = threading.Lock()
_module: ModuleType | None = None
_started_in: int | None = None  # the pid whose calls may have started _module's runtime
_source: str | None = None  # the extension's file (copies are loaded from it)
_inherited: list[ModuleType] = []  # copies a forked parent used: kept, never called
copies_loaded = 0  # fresh copies loaded by this process (for tests)
EXIT_SETTLE_SECONDS = 2.0  # the longest wait at exit for obstore's threads to leave Python
_exit_hook_registered = False


def _reset_after_fork() -> None:
    global _lock, _module, _started_in, _source
    _lock = threading.Lock()
    original = sys.modules.get("obstore._obstore")
    if _module is None and original is not None:
        # imported in the parent by someone else, whose calls may have started its runtime
        _module, _started_in, _source = original, -1, original.__file__


at_fork_in_child(_reset_after_fork)


def extension() -> ModuleType:
    """obstore's extension module (``obstore._obstore`` or a fresh copy of it) that this
    process may call; see the module docstring. Call it before each use of obstore's
    functions or classes: it is cheap."""
    global _module, _started_in, _source, _exit_hook_registered
    pid = os.getpid()
    module, started = _module, _started_in
    if module is not None and started == pid:
        return module
    with _lock:
        if not _exit_hook_registered:
            atexit.register(_settle_foreign_threads)
            _exit_hook_registered = True
        if _module is None:
            import obstore._obstore as original

            _module = original
            _source = original.__file__
        elif _started_in is not None and _started_in != pid:
            _inherited.append(_module)
            _module = _fresh_copy(_module.__name__, _source)
        _started_in = pid
        return _module


def foreign_threads_in_python() -> list[int]:
    """Idents of the threads that Python did not start (obstore's runtime threads among
    them) and that are running Python code now."""
    started_by_python = {
        t.ident for t in threading.enumerate() if type(t).__name__ != "_DummyThread"
    }
    return [ident for ident in sys._current_frames() if ident not in started_by_python]


def _settle_foreign_threads(timeout: float = EXIT_SETTLE_SECONDS) -> None:
    """Wait (the GIL released between checks) until no foreign thread is in Python code,
    or ``timeout`` seconds; see the module docstring."""
    deadline = time.monotonic() + timeout
    while foreign_threads_in_python() and time.monotonic() < deadline:
        time.sleep(0.001)


def _fresh_copy(qualified_name: str, source: str | None) -> ModuleType:
    """Load the extension file ``source`` again, from a new file, as a new module."""
    global copies_loaded
    if source is None:  # pragma: no cover - an extension always has a file
        raise StorageError("obstore's extension module has no file to load a fresh copy from")
    name = qualified_name.rpartition(".")[2]  # PyInit_<name> is looked up by this name
    try:
        if hasattr(os, "memfd_create"):
            copy = _load_from_memfd(name, source)
        else:
            copy = _load_from_temporary_file(name, source)
    except (OSError, ImportError) as e:
        raise StorageError(
            f"could not load a fresh copy of obstore's extension ({source}) in forked "
            f"process {os.getpid()}: {type(e).__name__}: {e}; start worker processes with "
            "the 'spawn' or 'forkserver' method instead"
        ) from e
    copies_loaded += 1
    return copy


def _load(name: str, path: str) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    if spec is None:  # pragma: no cover - a file location always gives a spec
        raise ImportError(f"no module spec for {path}")
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _load_from_memfd(name: str, source: str) -> ModuleType:
    fd = os.memfd_create("frazil-obstore")
    try:
        with open(source, "rb") as src, os.fdopen(os.dup(fd), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        return _load(name, f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)  # the loaded library keeps its own mapping


def _load_from_temporary_file(name: str, source: str) -> ModuleType:
    folder = tempfile.mkdtemp(prefix="frazil-obstore-")
    try:
        path = os.path.join(folder, os.path.basename(source))
        shutil.copyfile(source, path)
        return _load(name, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
