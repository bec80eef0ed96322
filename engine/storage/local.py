"""Local-filesystem storage: atomic puts by temp file + rename/link, CAS under a file lock.

Safe for several processes on one machine: a new object is written to a hidden temp
file in the target folder and then linked (create-if-absent: ``os.link`` fails if the
key exists) or renamed (``os.replace``) into place, so readers see whole objects only.
Replace-if-version takes an exclusive ``fcntl.flock`` on a hidden lock file beside the
key, reads the current version, compares and renames. A version is the file's inode and
mtime plus the xxh3 of its content: every write puts a new inode in place (allocated while
the old file still exists), so the version changes even when the bytes do not.
Hidden names (starting with ``.``) are never listed. A writer killed mid-put leaves its
temp file behind; ``remove_stale_temporaries`` (run by garbage collection) deletes those.

Durability (``fsync=True``, the default): a commit survives a power cut or a kernel
crash, not only a killed process. Every object's data is synced before it is renamed into
place (so an object that is visible is whole on disk); before any ref or config write
(the conditional puts that make objects reachable), the folders objects were renamed into
are synced, by this process or any other (``chunks/``, ``manifests/``, ...: a folder's
sync covers every entry in it, whoever made it), and new folders' parents; then the ref's
own data is synced before its rename, and its folder after. Fork journals (``forks/``)
are scratch that nothing reachable depends on, and are written without syncs.
``fsync=False`` skips all of it (scratch repositories, benchmarks). On macOS
``F_FULLFSYNC`` is used, as ``fsync`` there does not reach the disk.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import os
import stat
import threading
from collections.abc import Sequence
from typing import Any

import xxhash

from frazil.format.keys import CONFIG, OBJECT_FOLDERS, SCRATCH

from .. import runtime
from ..errors import InvalidInputError, NotFoundError, StorageError
from .base import ByteRange, ObjectInfo, ObjectInfos, PutResult, Storage


def _sync_fd(fd: int) -> None:
    full = getattr(fcntl, "F_FULLFSYNC", None)
    if full is not None:
        try:
            fcntl.fcntl(fd, full)
            return
        except OSError:  # not supported by this filesystem: plain fsync
            pass
    os.fsync(fd)


def _version(st: os.stat_result, data: bytes) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{xxhash.xxh3_64_hexdigest(data)}"


def _read_versioned(path: str) -> tuple[bytes, str]:
    """The file's bytes and version, both from one open file (so they agree)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        data = f.read()
    return data, _version(st, data)


_DELETERS = 8  # threads unlinking at once in a bulk delete
_DELETE_MIN = 64  # keys per thread, at least
_TEMP_PREFIX = ".tmp-"  # a put's file before it is linked or renamed into place

# a path that is a folder, or runs through a file, holds no object
_NOT_AN_OBJECT = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


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

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "fsync": self.fsync}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], fsync=state.get("fsync", True))  # type: ignore[misc]

    # -- durability -------------------------------------------------------------------
    def _sync_file(self, fd: int, path: str) -> None:
        """Make an open file's data durable (a hook the tests record)."""
        _sync_fd(fd)

    def _sync_dir(self, path: str) -> None:
        """Make a folder's entries durable (a hook the tests record)."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            _sync_fd(fd)
        finally:
            os.close(fd)

    def _barrier(self) -> None:
        """Before a ref or config write: every object renamed into place so far, by any
        process, durable with its folder entry."""
        with self._sync_lock:
            pending, self._unsynced_dirs = self._unsynced_dirs, set()
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
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
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
        path = self._path(key)
        try:
            with open(path, "rb") as f:
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
            raise StorageError(f"reading {key!r} from {self.describe()}: {e}") from e

    def _put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            tmp = self._write_temp(path, data, sync=not key.startswith(SCRATCH))
            os.replace(tmp, path)
            if self.fsync and key == CONFIG:  # written in place of a ref
                self._sync_dir(os.path.dirname(path))
        except OSError as e:
            raise StorageError(f"writing {key!r} to {self.describe()}: {e}") from e

    def _put_if_absent(self, key: str, data: bytes) -> PutResult:
        path = self._path(key)
        try:
            if self.fsync:
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
                os.unlink(tmp)
        except OSError as e:
            raise StorageError(f"creating {key!r} in {self.describe()}: {e}") from e

    def _locked(self, path: str) -> int:
        d = os.path.dirname(path)
        self._ensure_dir(d)
        fd = os.open(
            os.path.join(d, f".{os.path.basename(path)}.lock"), os.O_RDWR | os.O_CREAT, 0o644
        )
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _put_if_version(self, key: str, data: bytes, version: str) -> PutResult:
        path = self._path(key)
        try:
            if self.fsync:  # outside the ref's lock: other writers need not wait for it
                self._barrier()
            fd = self._locked(path)
            try:
                try:
                    current: str | None = _read_versioned(path)[1]
                except FileNotFoundError:
                    current = None
                if current != version:
                    return PutResult(False, current)
                tmp = self._write_temp(path, data)
                new = _version(os.stat(tmp), data)
                os.replace(tmp, path)
                if self.fsync:
                    self._sync_dir(os.path.dirname(path))
                return PutResult(True, new)
            finally:
                os.close(fd)  # releases the lock
        except OSError as e:
            raise StorageError(f"updating {key!r} in {self.describe()}: {e}") from e

    def _delete_if_version(self, key: str, version: str) -> bool:
        path = self._path(key)
        try:
            fd = self._locked(path)
            try:
                try:
                    current: str | None = _read_versioned(path)[1]
                except FileNotFoundError:
                    return False
                if current != version:
                    return False
                os.unlink(path)
                return True
            finally:
                os.close(fd)
        except OSError as e:
            raise StorageError(f"deleting {key!r} from {self.describe()}: {e}") from e

    def _get_with_version(self, key: str) -> tuple[bytes, str]:
        path = self._path(key)
        try:
            return _read_versioned(path)
        except _NOT_AN_OBJECT:
            raise NotFoundError(f"object {key!r} not found in {self.describe()}") from None
        except OSError as e:
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
                os.unlink(path)
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
        return await runtime.in_thread_batched(self._get, key, byte_range)

    async def get_with_version(self, key: str) -> tuple[bytes, str]:
        return await runtime.in_thread(self._get_with_version, key)

    async def put(self, key: str, data: bytes) -> None:
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
