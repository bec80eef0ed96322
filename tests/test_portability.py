"""frazil where the platform has no ``fcntl`` and no fork (Windows): ``import frazil``, the
storage conformance suite on the local backend, and processes racing conditional writes.

This machine is Linux; the Windows-like processes are made by ``tests/no_posix``'s
``sitecustomize``, which every process started with ``_env()`` loads first (the spawned
workers of the conformance suite's multi-process tests too). filelock then locks with its
portable fallback (an exclusive-create marker) where Windows would use ``LockFileEx``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from frazil import runtime
from frazil.errors import InvalidInputError, NotFoundError, StorageError
from frazil.storage import local, local_filesystem_storage
from frazil.virtual import sources

HERE = Path(__file__).resolve().parent
NO_POSIX = HERE / "no_posix"
TIMEOUT = 600  # seconds; only reached when something hangs

# the conformance suite's local tests; those that start processes by fork need a fork
LOCAL_TESTS = "local and not fork"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(NO_POSIX), env.get("PYTHONPATH")) if p)
    env.pop("FRAZIL_LONG", None)
    return env


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env=_env(),
        cwd=HERE.parent,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_import_and_local_storage_need_neither_fcntl_nor_fork(tmp_path: Path) -> None:
    # every module of every frazil package imports; then a commit, a branch and a read
    code = f"""
import asyncio, json, os, sys
try:
    import fcntl
    fcntl_importable = True
except ImportError:
    fcntl_importable = False
import importlib, pkgutil
import filelock
import frazil
modules, failed = 0, []
for top in ("frazil", "frazil.format", "frazil.tools", "frazil.zarr_adapter", "frazil.dask",
            "frazil.xarray"):
    package = importlib.import_module(top)
    for info in pkgutil.walk_packages(package.__path__, top + "."):
        try:
            importlib.import_module(info.name)
            modules += 1
        except Exception as e:
            failed.append((info.name, repr(e)))
import numpy as np, zarr
repo = frazil.Repository.create(frazil.local_filesystem_storage({str(tmp_path / "repo")!r}))
session = repo.writable_session("main")
array = zarr.create_array(session.store, name="a", shape=(4,), chunks=(2,), dtype="i4")
array[:] = np.arange(4)
session.commit("four")
repo.create_branch("dev", repo.lookup_branch("main"))
read = zarr.open_array(repo.readonly_session(branch="dev").store, path="a")[:].tolist()
print(json.dumps({{
    "fcntl": fcntl_importable,
    "register_at_fork": hasattr(os, "register_at_fork"),
    "lock": filelock.FileLock.__name__,
    "failed": failed,
    "many": modules > 50,
    "branches": sorted(repo.list_branches()),
    "read": read,
}}))
"""
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "fcntl": False,
        "register_at_fork": False,
        "lock": "SoftFileLock",
        "failed": [],
        "many": True,
        "branches": ["dev", "main"],
        "read": [0, 1, 2, 3],
    }


def _pytest_args(report: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/test_storage.py",
        "-k",
        LOCAL_TESTS,
        f"--junitxml={report}",
    ]


def test_storage_conformance_suite_passes_without_fcntl_and_fork(tmp_path: Path) -> None:
    # what the suite holds for the local backend, collected as usual
    collected = subprocess.run(
        [*_pytest_args(tmp_path / "unused.xml")[:-1], "--collect-only", "-q"],
        cwd=HERE.parent,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert collected.returncode == 0, collected.stdout + collected.stderr
    expected = int(re.search(r"tests/test_storage.py: (\d+)", collected.stdout)[1])  # type: ignore[index]
    assert expected >= 50  # the selection took the suite, not a handful of tests

    # the same tests in a process (and its spawned workers) without fcntl and fork
    check = "import os, sys; assert sys.modules['fcntl'] is None; assert not hasattr(os, 'fork')"
    report = tmp_path / "report.xml"
    done = subprocess.run(
        [sys.executable, "-c", f"{check}; import pytest; sys.exit(pytest.main(sys.argv[1:]))"]
        + _pytest_args(report)[3:],
        env=_env(),
        cwd=HERE.parent,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None
    counts = {k: int(suite.get(k, "-1")) for k in ("tests", "failures", "errors", "skipped")}
    assert counts == {"tests": expected, "failures": 0, "errors": 0, "skipped": 0}
    assert f"{expected} passed" in done.stdout


@pytest.mark.parametrize("contenders", [2, 4])
def test_processes_race_conditional_writes_without_fcntl_and_fork(
    tmp_path: Path, contenders: int
) -> None:
    root, keys, increments = tmp_path / "store", 100, 25
    storage = local_filesystem_storage(root)
    asyncio.run(storage.put("counter", b"0"))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(NO_POSIX / "race_create.py"),
                str(root),
                f"p{i}",
                str(keys),
                str(increments),
            ],
            env=_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(contenders)
    ]
    try:
        for p in procs:  # each says it is ready, and without fcntl and fork
            assert p.stdout is not None
            assert json.loads(p.stdout.readline()) == {"fcntl": False, "fork": False}
        for p in procs:  # then all start together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0] * contenders, [err for _, err in outputs]
    results = [[json.loads(line) for line in out.splitlines()] for out, _ in outputs]
    assert all(len(r) == keys for r in results)
    for k in range(keys):
        key = f"refs/tag.t{k}/ref.json"
        answers = [r[k] for r in results]
        assert all(a["key"] == key for a in answers)
        winners = [i for i, a in enumerate(answers) if a["won"]]
        assert len(winners) == 1, (key, answers)
        data, version = asyncio.run(storage.get_with_version(key))
        assert data == f"p{winners[0]} {key}".encode()
        assert {a["version"] for a in answers} == {version}  # losers were told the winner's
    assert asyncio.run(storage.get("counter")) == b"%d" % (contenders * increments)


# -- what differs on Windows, switched on here by the module's own flags -----------------


def test_fork_hooks_only_where_the_platform_forks(monkeypatch: pytest.MonkeyPatch) -> None:
    registered: list[object] = []
    monkeypatch.setattr(os, "register_at_fork", lambda **kw: registered.append(kw), raising=False)
    hook = lambda: None  # noqa: E731
    runtime.at_fork_in_child(hook)
    assert registered == [{"after_in_child": hook}]
    monkeypatch.delattr(os, "register_at_fork")
    runtime.at_fork_in_child(hook)  # no fork here: nothing to register, and no error
    assert registered == [{"after_in_child": hook}]


class _Flaky:
    """``op`` failing with a sharing violation on its first ``failures`` calls that name a
    file called ``name`` (as source or as target)."""

    def __init__(self, op: Any, name: str, failures: int) -> None:
        self.op, self.name, self.failures, self.calls = op, name, failures, 0

    def __call__(self, path: Any, *args: Any) -> Any:
        names = {os.path.basename(os.fspath(p)) for p in (path, *args) if isinstance(p, str)}
        if self.name in names:
            self.calls += 1
            if self.calls <= self.failures:
                raise PermissionError(13, "The process cannot access the file", os.fspath(path))
        return self.op(path, *args)


@pytest.fixture
def windows_sharing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "SHARING_VIOLATIONS", True)
    monkeypatch.setattr(local, "_SHARING_WAITS", (0.0,) * 4)  # no waiting in tests


def test_sharing_violation_on_a_ref_swap_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, windows_sharing: None
) -> None:
    storage = local_filesystem_storage(tmp_path)
    version = asyncio.run(storage.put_if_absent("refs/branch.main/ref.json", b"one")).version
    assert version is not None
    flaky = _Flaky(os.replace, "ref.json", failures=3)
    monkeypatch.setattr(os, "replace", flaky)
    got = asyncio.run(storage.put_if_version("refs/branch.main/ref.json", b"two", version))
    assert got.ok and flaky.calls == 4
    assert asyncio.run(storage.get_with_version("refs/branch.main/ref.json")) == (
        b"two",
        got.version,
    )


def test_sharing_violation_that_lasts_fails_the_swap_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, windows_sharing: None
) -> None:
    storage = local_filesystem_storage(tmp_path)
    version = asyncio.run(storage.put_if_absent("refs/branch.main/ref.json", b"one")).version
    assert version is not None
    flaky = _Flaky(os.replace, "ref.json", failures=100)
    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(StorageError, match="updating 'refs/branch.main/ref.json'"):
        asyncio.run(storage.put_if_version("refs/branch.main/ref.json", b"two", version))
    assert flaky.calls == len(local._SHARING_WAITS) + 1
    # nothing changed: the version read before still swaps once the file is free
    monkeypatch.undo()
    assert asyncio.run(storage.put_if_version("refs/branch.main/ref.json", b"two", version)).ok


def test_permission_error_is_not_retried_on_posix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "SHARING_VIOLATIONS", False)
    storage = local_filesystem_storage(tmp_path)
    flaky = _Flaky(os.replace, "snapshot", failures=1)
    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(StorageError, match="writing 'snapshots/snapshot'"):
        asyncio.run(storage.put("snapshots/snapshot", b"x"))
    assert flaky.calls == 1


def test_create_wins_even_if_its_temp_file_cannot_be_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, windows_sharing: None
) -> None:
    storage = local_filesystem_storage(tmp_path)
    real_unlink = os.unlink

    def held_open(path: Any, *args: Any) -> None:
        if os.path.basename(os.fspath(path)).startswith(".tmp-"):
            raise PermissionError(13, "The process cannot access the file", os.fspath(path))
        real_unlink(path, *args)

    monkeypatch.setattr(os, "unlink", held_open)
    got = asyncio.run(storage.put_if_absent("refs/tag.v1/ref.json", b"tag"))
    monkeypatch.undo()
    assert got.ok
    assert asyncio.run(storage.get_with_version("refs/tag.v1/ref.json")) == (b"tag", got.version)
    assert asyncio.run(storage.list("")) == ["refs/tag.v1/ref.json"]  # the leftover is hidden
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    assert asyncio.run(storage.remove_stale_temporaries(later)) == 1


def test_folder_refused_as_a_file_is_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, windows_sharing: None
) -> None:
    storage = local_filesystem_storage(tmp_path)
    asyncio.run(storage.put("a/b", b"x"))
    opened: list[str] = []

    def windows_open(path: Any, *args: Any) -> Any:
        opened.append(os.fspath(path))
        if os.path.isdir(path):  # Windows: "Permission denied", not IsADirectoryError
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return open(path, *args)

    monkeypatch.setattr(local, "open", windows_open, raising=False)
    for method in (storage.get, storage.get_with_version):
        with pytest.raises(NotFoundError, match="'a' not found"):
            asyncio.run(method("a"))
    assert len(opened) == 2  # a folder is not a sharing violation: no second try
    assert asyncio.run(storage.get("a/b")) == b"x"


def test_separators_drives_and_streams_refused_in_keys_on_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = local_filesystem_storage(tmp_path)
    asyncio.run(storage.put("a\\b:c", b"x"))  # ordinary names on POSIX
    monkeypatch.setattr(local, "_FORBIDDEN_IN_NAMES", "\\:")
    for key in ("refs\\..\\..\\x", "chunks/C:evil", "chunks/a:stream"):
        with pytest.raises(InvalidInputError, match="invalid storage key"):
            asyncio.run(storage.put(key, b"x"))


def test_folder_syncs_skipped_where_folders_cannot_be_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    monkeypatch.setattr(local, "_sync_fd", synced.append)
    storage = local_filesystem_storage(tmp_path)
    storage._sync_dir(str(tmp_path))
    assert len(synced) == 1
    monkeypatch.setattr(local, "_SYNCABLE_FOLDERS", False)
    storage._sync_dir(str(tmp_path))
    assert len(synced) == 1


def test_local_virtual_source_reads_without_pread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = bytes(range(256)) * 8 + b"\r\n\x1a\r\n"  # what a text-mode open would mangle
    (tmp_path / "f.bin").write_bytes(data)
    monkeypatch.delattr(os, "pread")
    for start, end in [(0, len(data)), (10, 300), (2040, 10_000), (len(data), len(data) + 5)]:
        got = sources._read_local(str(tmp_path / "f.bin"), str(tmp_path), start, end)
        assert got.data == data[start:end]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="flock is Unix's")
def test_ref_lock_is_the_flock_older_frazil_versions_take(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    storage = local_filesystem_storage(tmp_path)
    version = asyncio.run(storage.put_if_absent("refs/branch.main/ref.json", b"one")).version
    assert version is not None
    lock_file = tmp_path / "refs" / "branch.main" / ".ref.json.lock"
    probes: list[bool] = []
    read_versioned = local._read_versioned

    def probe_then_read(path: str) -> tuple[bytes, str]:
        # while the swap holds its lock: can an older frazil (flock on the same file) take it?
        fd = os.open(lock_file, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            probes.append(True)
        except BlockingIOError:
            probes.append(False)
        finally:
            os.close(fd)
        return read_versioned(path)

    monkeypatch.setattr(local, "_read_versioned", probe_then_read)
    assert asyncio.run(storage.put_if_version("refs/branch.main/ref.json", b"two", version)).ok
    assert probes == [False]
    fd = os.open(lock_file, os.O_RDWR)  # and it is released after
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
