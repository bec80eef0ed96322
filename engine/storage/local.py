"""Local-filesystem storage: atomic puts by temp file + rename/link, CAS under a file lock.

Safe for several processes on one machine: a new object is written to a hidden temp
file in the target folder and then linked (create-if-absent: ``os.link`` fails if the
key exists) or renamed (``os.replace``) into place, so readers see whole objects only.
Replace-if-version takes an exclusive lock on a hidden lock file beside the key
(through ``filelock``: ``flock`` on Unix, ``LockFileEx`` on Windows, both released by the
system when their holder dies; elsewhere filelock's exclusive-create marker), reads the
current version, compares and renames. A version is the file's inode and mtime plus the
xxh3 of its content: every write puts a new inode in place (allocated while the old file
still exists), so the version changes even when the bytes do not.
Hidden names (starting with ``.``) are never listed. A writer killed mid-put leaves its
temp file behind; ``remove_stale_temporaries`` (run by garbage collection) deletes those.

Durability (``fsync=True``, the default): a commit survives a power cut or a kernel
crash, not only a killed process. Objects' data is made durable before any ref or config
write (the conditional puts that make objects reachable): on Linux by one ``syncfs`` of
the repository's file system at that moment (group sync: it covers every object renamed
into place since, by this process or any other, so a commit of 10,000 chunks pays one
sync instead of 10,000; an object not yet synced is reachable from no ref, and a power
cut can only leave it torn and unreferenced, for gc); elsewhere each object is synced
before its rename. Before the ref write the folders objects were renamed into are also
synced (``chunks/``, ``manifests/``, ...: a folder's sync covers every entry in it,
whoever made it), and new folders' parents; then the ref's own data is synced before its
rename, and its folder after. The history cuts (``refs/cuts.json``) name only snapshots
that were reachable already, and the repository document (``refs/repo.json``) none: their
writes skip the file-system sync and the folder syncs (each document is still synced, and
an operations-log archive ``ops/<id>`` either may link is synced, with its folder, when it
is written). Fork journals (``forks/``)
are scratch that nothing reachable depends on, and are written without syncs.
``fsync=False`` skips all of it (scratch repositories, benchmarks). On macOS
``F_FULLFSYNC`` is used, as ``fsync`` there does not reach the disk.

Portability: nothing here needs ``fcntl`` or ``fork``. On Windows ``os.link`` (NTFS hard
links) and ``os.replace`` keep the same one-winner guarantees; a folder cannot be opened to
sync it (NTFS journals its folder entries itself), so folder syncs are skipped there; and a
rename over, or a removal of, a file that another process holds open fails for a moment
with a sharing violation (``PermissionError``), which is tried again for up to a second
before it is reported. Keys with ``\\`` or ``:`` in a name are refused there (a separator,
a drive or a stream).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, BinaryIO, TypeVar

import filelock
import xxhash

from frazil.format.keys import CONFIG, CUTS, OBJECT_FOLDERS, OPS, REPO_INFO, SCRATCH

from .. import runtime
from ..errors import InvalidInputError, NotFoundError, StorageError
from .base import ByteRange, ObjectInfo, ObjectInfos, PutResult, Storage

try:  # absent on Windows
    import fcntl
except ImportError:
    fcntl = None  # type: ignore[assignment]

T = TypeVar("T")

#: Windows: another process holding a file open makes renaming over it or removing it fail
#: with PermissionError for as long as it does (POSIX has no such thing)
SHARING_VIOLATIONS = os.name == "nt"
#: the waits between tries of such an operation, in seconds (about one second in all)
_SHARING_WAITS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.3)
#: reads and writes of at most this many bytes (chunks, metadata) run on the calling
#: thread, not in the I/O pool: for a small file on a local disk the hand-off to a thread
#: (a future, a queue, two GIL switches) costs more than the system calls. Measured (W1
#: and W2 of bench/sidebyside.py, 10,000 x 32 KiB): 13% faster writes, 37% faster reads.
#: Not on Windows, where a sharing violation is waited out with sleeps.
INLINE_IO_MAX = 256 * 1024
INLINE_IO = not SHARING_VIOLATIONS
#: whether a folder can be opened to sync its entries (not on Windows)
_SYNCABLE_FOLDERS = os.name != "nt"
#: characters a key's names may not hold where they are separators, drives or streams
_FORBIDDEN_IN_NAMES = "\\:" if os.name == "nt" else ""
#: seconds between tries of a lock another writer holds (filelock polls; its default,
#: 50 ms, would be most of a commit's time when writers contend)
_LOCK_POLL = 0.001
#: whether the system has a file lock filelock can take on a descriptor (flock, or
#: LockFileEx on Windows); elsewhere its FileLock falls back to an exclusive-create marker
#: that a later writer reclaims when its holder's process is gone
_NATIVE_LOCKS = filelock.has_fcntl or sys.platform == "win32"


def _sharing_retry(op: Callable[..., T], path: str, *args: Any) -> T:
    """``op(path, *args)``, tried again while it fails with a Windows sharing violation
    (not when ``path`` is a folder: Windows refuses to open or unlink those the same way)."""
    for wait in _SHARING_WAITS:
        try:
            return op(path, *args)
        except PermissionError:
            if not SHARING_VIOLATIONS or os.path.isdir(path):
                raise
            time.sleep(wait)
    return op(path, *args)


@contextlib.contextmanager
def _native_lock(name: str) -> Iterator[None]:
    """The system's exclusive lock of the file ``name`` (created if needed), held while in
    the ``with``: filelock's primitive over our own descriptor (``flock`` on Unix,
    ``LockFileEx`` on Windows), cheaper per use than a whole ``FileLock``
    (``bench/bench_local_lock.py``)."""
    fd = os.open(name, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
    try:
        filelock.lock_descriptor(fd, poll_interval=_LOCK_POLL)
        try:
            yield
        finally:
            filelock.unlock_descriptor(fd)
    finally:
        os.close(fd)


def _open_binary(path: str) -> BinaryIO:
    return open(path, "rb")


def _sync_fd(fd: int) -> None:
    full = getattr(fcntl, "F_FULLFSYNC", None)
    if full is not None:
        try:
            fcntl.fcntl(fd, full)
            return
        except OSError:  # not supported by this filesystem: plain fsync
            pass
    os.fsync(fd)


def _find_syncfs() -> Callable[[int], None] | None:
    """Linux's ``syncfs(fd)``: every dirty page and entry of the file system holding ``fd``
    made durable in one call (errors of any file's writeback reported, Linux 5.8 and
    later). None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.syncfs
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int]
    call.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        if call(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs: {os.strerror(err)}")

    return syncfs


#: one call that syncs the whole file system (Linux), or None: objects are then synced
#: one by one before their rename
_SYNCFS = _find_syncfs()


def _version(st: os.stat_result, data: bytes) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{xxhash.xxh3_64_hexdigest(data)}"


def _read_versioned(path: str) -> tuple[bytes, str]:
    """The file's bytes and version, both from one open file (so they agree)."""
    with _sharing_retry(_open_binary, path) as f:
        st = os.fstat(f.fileno())
        data = f.read()
    return data, _version(st, data)


_NO_BARRIER = frozenset({CUTS, REPO_INFO})  # documents that make no object reachable


def _own_sync(key: str) -> bool:
    """Keys a plain put syncs on their own, with their folder: config, ops archives."""
    return key == CONFIG or key.startswith(OPS)


_DELETERS = 8  # threads unlinking at once in a bulk delete
_DELETE_MIN = 64  # keys per thread, at least
_TEMP_PREFIX = ".tmp-"  # a put's file before it is linked or renamed into place

# a path that is a folder, or runs through a file, holds no object
_NOT_AN_OBJECT = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


def _read_size(f: BinaryIO, byte_range: ByteRange | None) -> int:
    """How many bytes reading ``byte_range`` (None: all) of the open file ``f`` gives."""
    if byte_range is not None:
        start, end = byte_range
        if start >= 0 and end is not None:
            return max(0, end - start)
        if start < 0:
            return -start
    size = os.fstat(f.fileno()).st_size
    return size if byte_range is None else max(0, size - byte_range[0])


def _is_folder(e: OSError, path: str) -> bool:
    """Whether ``e`` is Windows refusing to open the folder at ``path`` as a file."""
    return isinstance(e, PermissionError) and os.path.isdir(path)


class LocalFileSystemStorage(Storage):
    """Objects as files under ``root``. See the module docstring."""

    supports_conditional_delete = True

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        if not isinstance(fsync, bool):
            raise InvalidInputError(f"fsync must be True or False, got {fsync!r}")
        self.root = os.path.abspath(os.fspath(root))
        self.fsync = fsync
        self._dirs: set[str] = set()
        self._unsynced_dirs: set[str] = set()  # folders whose entries are not yet durable
        self._sync_lock = threading.Lock()
        runtime.reset_in_child(self)

    def _after_fork(self) -> None:
        self._sync_lock = threading.Lock()

    def describe(self) -> str:
        return f"local directory {self.root}"

    def __repr__(self) -> str:
        """Icechunk's form for its local storage (code and logs that print it read alike)."""
        return f"ObjectStorage(backend=LocalFileSystemObjectStoreBackend(path={self.root}))"

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "fsync": self.fsync}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], fsync=state.get("fsync", True))  # type: ignore[misc]

    # -- durability -------------------------------------------------------------------
    def _sync_file(self, fd: int, path: str) -> None:
        """Make an open file's data durable (a hook the tests record)."""
        _sync_fd(fd)

    def _sync_fs(self) -> None:
        """Make every file and folder entry on the repository's file system durable, whoever
        wrote it (a hook the tests record)."""
        assert _SYNCFS is not None
        fd = os.open(self.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            _SYNCFS(fd)
        finally:
            os.close(fd)

    @property
    def _group_sync(self) -> bool:
        """Objects' data is synced together at the next barrier, not one by one."""
        return self.fsync and _SYNCFS is not None

    def _sync_dir(self, path: str) -> None:
        """Make a folder's entries durable (a hook the tests record). Nothing on Windows,
        where a folder cannot be opened to sync it and NTFS journals its entries."""
        if not _SYNCABLE_FOLDERS:
            return
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            _sync_fd(fd)
        finally:
            os.close(fd)

    def _needs_barrier(self, key: str) -> bool:
        """Whether a conditional write of ``key`` may make objects reachable: every ref
        may, but the history cuts (``refs/cuts.json``, written by expiry and gc) name only
        snapshots that were reachable, hence durable, before, and the repository document
        (``refs/repo.json``) names none; the operations-log archives both may link are
        synced on their own when written. No file-system sync for them (it would wait
        for every other writer's dirty data)."""
        return self.fsync and key not in _NO_BARRIER

    def _barrier(self) -> None:
        """Before a ref or config write: every object renamed into place so far, by any
        process, durable with its folder entry."""
        with self._sync_lock:
            pending, self._unsynced_dirs = self._unsynced_dirs, set()
        if self._group_sync and os.path.isdir(self.root):
            # objects were renamed into place unsynced (by this process or others): one
            # file-system sync makes all their data and entries durable before the ref
            self._sync_fs()
        # folders whose entries a ref or config can make reachable, whoever wrote them
        folders = {os.path.join(self.root, f.rstrip("/")) for f in OBJECT_FOLDERS.values()}
        folders |= pending
        for d in sorted(folders, key=len, reverse=True):  # children before parents
            try:
                self._sync_dir(d)
            except FileNotFoundError:  # no object of that kind yet
                continue

    # -- paths ------------------------------------------------------------------------
    def _path(self, key: str) -> str:
        if (
            not key
            or key.startswith("/")
            or any(p in ("", ".", "..") for p in key.split("/"))
            or any(c in key for c in _FORBIDDEN_IN_NAMES)
        ):
            raise InvalidInputError(f"invalid storage key {key!r}")
        return os.path.join(self.root, *key.split("/"))

    def _ensure_dir(self, d: str) -> None:
        if d not in self._dirs:
            missing = []
            p = d
            while not os.path.isdir(p) and p != os.path.dirname(p):
                missing.append(p)
                p = os.path.dirname(p)
            os.makedirs(d, exist_ok=True)
            if self.fsync and missing:  # new folders' entries in their parents
                with self._sync_lock:
                    self._unsynced_dirs.update(os.path.dirname(m) for m in missing)
            self._dirs.add(d)

    def _write_temp(self, path: str, data: bytes, sync: bool = True) -> str:
        d = os.path.dirname(path)
        self._ensure_dir(d)
        tmp = os.path.join(d, f"{_TEMP_PREFIX}{os.urandom(8).hex()}")
        try:
            self._write_file(tmp, data, sync)
        except FileNotFoundError:  # folder removed under us: recreate and retry once
            self._dirs.discard(d)
            self._ensure_dir(d)
            self._write_file(tmp, data, sync)
        return tmp

    def _write_file(self, tmp: str, data: bytes, sync: bool) -> None:
        with open(tmp, "xb") as f:
            f.write(data)
            if self.fsync and sync:
                f.flush()
                self._sync_file(f.fileno(), tmp)

    # -- blocking implementations --------------------------------------------------------
    def _get(self, key: str, byte_range: ByteRange | None) -> bytes:
        data = self._read(key, byte_range, None)
        assert data is not None
        return data

    def _read(self, key: str, byte_range: ByteRange | None, limit: int | None) -> bytes | None:
        """``_get``; with ``limit``, None (nothing read) when more than ``limit`` bytes
        would be read."""
        path = self._path(key)
        try:
            with _sharing_retry(_open_binary, path) as f:
                if limit is not None and _read_size(f, byte_range) > limit:
                    return None
                if byte_range is None:
                    return f.read()
                start, end = byte_range
                if start < 0:
                    size = os.fstat(f.fileno()).st_size
                    f.seek(max(0, size + start))
                    return f.read()
                f.seek(start)
                return f.read() if end is None else f.read(max(0, end - start))
        except _NOT_AN_OBJECT:
            raise NotFoundError(f"object {key!r} not found in {self.describe()}") from None
        except OSError as e:
            if _is_folder(e, path):
                raise NotFoundError(f"object {key!r} not found in {self.describe()}") from None
            raise StorageError(f"reading {key!r} from {self.describe()}: {e}") from e

    def _inline_put(self, key: str, data: bytes) -> bool:
        """Whether ``put`` writes ``key`` on the calling thread: small, and no sync of its
        own (group sync covers it later, or there is no sync)."""
        if len(data) > INLINE_IO_MAX or not INLINE_IO:
            return False
        return not (self.fsync and self._put_syncs(key))

    def _put_syncs(self, key: str) -> bool:
        """Whether a plain put of ``key`` syncs its data itself (with ``fsync``): objects are
        synced now, or (group sync) by the barrier before any ref reaches them; config is
        written in place of a ref; ops archives are linked by documents that skip the
        barrier (``_needs_barrier``). Scratch never."""
        if key.startswith(SCRATCH):
            return False
        return _own_sync(key) or not self._group_sync

    def _put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            own = _own_sync(key)  # also its folder, right after
            sync = self._put_syncs(key)
            tmp = self._write_temp(path, data, sync=sync)
            _sharing_retry(os.replace, tmp, path)
            if self.fsync and own:
                self._sync_dir(os.path.dirname(path))
        except OSError as e:
            raise StorageError(f"writing {key!r} to {self.describe()}: {e}") from e

    def _put_if_absent(self, key: str, data: bytes) -> PutResult:
        path = self._path(key)
        try:
            if self._needs_barrier(key):
                self._barrier()
            tmp = self._write_temp(path, data)
            try:
                os.link(tmp, path)
                if self.fsync:
                    self._sync_dir(os.path.dirname(path))
                return PutResult(True, _version(os.stat(tmp), data))
            except FileExistsError:
                try:
                    return PutResult(False, _read_versioned(path)[1])
                except FileNotFoundError:
                    return PutResult(False, None)
            finally:
                try:
                    _sharing_retry(os.unlink, tmp)
                except PermissionError:  # held open still: a leftover gc removes, not a failure
                    pass
        except OSError as e:
            raise StorageError(f"creating {key!r} in {self.describe()}: {e}") from e

    def _lock(self, path: str) -> AbstractContextManager[object]:
        """The exclusive lock of the object at ``path`` (a hidden file beside it, the same
        one every frazil version has locked), to be held with ``with``."""
        d = os.path.dirname(path)
        self._ensure_dir(d)
        name = os.path.join(d, f".{os.path.basename(path)}.lock")
        if not _NATIVE_LOCKS:
            return filelock.FileLock(name, poll_interval=_LOCK_POLL)
        return _native_lock(name)

    def _put_if_version(self, key: str, data: bytes, version: str) -> PutResult:
        path = self._path(key)
        try:
            if self._needs_barrier(key):  # outside the lock: other writers need not wait
                self._barrier()
            with self._lock(path):
                try:
                    current: str | None = _read_versioned(path)[1]
                except FileNotFoundError:
                    current = None
                if current != version:
                    return PutResult(False, current)
                tmp = self._write_temp(path, data)
                new = _version(os.stat(tmp), data)
                _sharing_retry(os.replace, tmp, path)
                if self.fsync:
                    self._sync_dir(os.path.dirname(path))
                return PutResult(True, new)
        except OSError as e:
            raise StorageError(f"updating {key!r} in {self.describe()}: {e}") from e

    def _delete_if_version(self, key: str, version: str) -> bool:
        path = self._path(key)
        try:
            with self._lock(path):
                try:
                    current: str | None = _read_versioned(path)[1]
                except FileNotFoundError:
                    return False
                if current != version:
                    return False
                _sharing_retry(os.unlink, path)
                return True
        except OSError as e:
            raise StorageError(f"deleting {key!r} from {self.describe()}: {e}") from e

    def _get_with_version(self, key: str) -> tuple[bytes, str]:
        path = self._path(key)
        try:
            return _read_versioned(path)
        except _NOT_AN_OBJECT:
            raise NotFoundError(f"object {key!r} not found in {self.describe()}") from None
        except OSError as e:
            if _is_folder(e, path):
                raise NotFoundError(f"object {key!r} not found in {self.describe()}") from None
            raise StorageError(f"reading {key!r} from {self.describe()}: {e}") from e

    def _list(self, prefix: str) -> list[str]:
        folder, _, _ = prefix.rpartition("/")
        base = os.path.join(self.root, *folder.split("/")) if folder else self.root
        out: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            dirnames[:] = [
                d
                for d in dirnames
                if not d.startswith(".")
                and (rel + d + "/").startswith(prefix[: len(rel + d + "/")])
            ]
            out.extend(
                k
                for k in (rel + f for f in filenames if not f.startswith("."))
                if k.startswith(prefix)
            )
        return sorted(out)

    def _list_info(self, prefix: str) -> ObjectInfos:
        out = []
        root, sep = self.root, os.sep
        for key in self._list(prefix):
            try:  # keys as listed: no need to check them as ``_path`` does
                st = os.stat(root + sep + key.replace("/", sep))
            except _NOT_AN_OBJECT:  # deleted since it was listed
                continue
            except OSError as e:
                raise StorageError(f"listing {key!r} in {self.describe()}: {e}") from e
            out.append(ObjectInfo(key, st.st_size, dt.datetime.fromtimestamp(st.st_mtime, dt.UTC)))
        return out

    def _delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            path = self._path(key)
            try:
                _sharing_retry(os.unlink, path)
            except _NOT_AN_OBJECT:
                pass
            except OSError as e:
                if e.errno != errno.ENOENT and not os.path.isdir(path):  # EPERM on macOS
                    raise StorageError(f"deleting {key!r} from {self.describe()}: {e}") from e

    def _remove_stale_temporaries(self, older_than: dt.datetime) -> int:
        cutoff = older_than.timestamp()
        removed = 0
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                if not name.startswith(_TEMP_PREFIX):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    if os.stat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
                except FileNotFoundError:  # renamed into place or removed meanwhile
                    continue
                except OSError as e:
                    raise StorageError(f"removing {path!r}: {e}") from e
        return removed

    def _size(self, key: str) -> int:
        path = self._path(key)
        try:
            st = os.stat(path)
        except _NOT_AN_OBJECT:
            raise NotFoundError(f"object {key!r} not found in {self.describe()}") from None
        except OSError as e:
            raise StorageError(f"reading the size of {key!r} in {self.describe()}: {e}") from e
        if not stat.S_ISREG(st.st_mode):
            raise NotFoundError(f"object {key!r} not found in {self.describe()}")
        return st.st_size

    # -- async interface -------------------------------------------------------------
    async def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        if INLINE_IO:
            data = self._read(key, byte_range, INLINE_IO_MAX)
            if data is not None:
                return data
        return await runtime.in_thread_batched(self._get, key, byte_range)

    async def get_with_version(self, key: str) -> tuple[bytes, str]:
        return await runtime.in_thread(self._get_with_version, key)

    async def put(self, key: str, data: bytes) -> None:
        if self._inline_put(key, data):
            self._put(key, data)
        else:
            await runtime.in_thread_batched(self._put, key, data)

    async def put_if_absent(self, key: str, data: bytes) -> PutResult:
        return await runtime.in_thread(self._put_if_absent, key, data)

    async def put_if_version(self, key: str, data: bytes, version: str) -> PutResult:
        return await runtime.in_thread(self._put_if_version, key, data, version)

    async def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    async def list(self, prefix: str) -> list[str]:
        return await runtime.in_thread(self._list, prefix)

    async def size(self, key: str) -> int:
        return self._size(key)

    async def list_info(self, prefix: str) -> ObjectInfos:
        return await runtime.in_thread(self._list_info, prefix)

    async def delete(self, keys: Sequence[str]) -> None:
        # unlinks wait on the filesystem's journal, not the CPU: several threads at once
        # took a quarter to a tenth of one thread's time for 1,500 files on ext4
        keys = list(keys)
        step = max(_DELETE_MIN, -(-len(keys) // _DELETERS))
        parts = [keys[i : i + step] for i in range(0, len(keys), step)]
        await runtime.gather_limited([runtime.in_thread(self._delete, p) for p in parts])

    async def remove_stale_temporaries(self, older_than: dt.datetime) -> int:
        return await runtime.in_thread(self._remove_stale_temporaries, older_than)

    async def delete_if_version(self, key: str, version: str) -> bool:
        return await runtime.in_thread(self._delete_if_version, key, version)


def local_filesystem_storage(
    path: str | os.PathLike[str], *, fsync: bool = True
) -> LocalFileSystemStorage:
    """Storage in a local directory (created on first write). ``fsync=False`` gives up
    durability against power cuts and kernel crashes for speed (see the module
    docstring); commits stay atomic either way."""
    return LocalFileSystemStorage(path, fsync=fsync)
