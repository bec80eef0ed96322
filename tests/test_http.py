"""Read-only HTTP storage: a local repository served by ``python -m http.server`` on
127.0.0.1 (which ignores Range headers and sends no ETag: both handled), opened with
``http_storage``; reads work, writes raise ReadOnlyError, listing is not possible."""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import s3server
import zarr

import frazil
from frazil.errors import NotFoundError, ReadOnlyError, StorageError
from frazil.storage import HTTPStorage


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@contextlib.contextmanager
def serve(directory: Path, timeout: float = 30.0) -> Iterator[str]:
    """``python -m http.server`` for ``directory`` on 127.0.0.1; yields its base URL."""
    [port] = s3server.free_ports(1)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            str(port),
            "--directory",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"http.server exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(url + "/", timeout=2):
                    break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"http.server did not answer on {url}") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A repository with two commits, a tag and a branch, served over HTTP."""
    root = tmp_path_factory.mktemp("published")
    repo = frazil.Repository.create(
        frazil.local_filesystem_storage(root / "repo"),
        frazil.RepositoryConfig(inline_chunk_threshold_bytes=0),
    )
    s = repo.writable_session("main")
    arr = zarr.create_array(
        s.store,
        name="temps",
        shape=(6, 8),
        chunks=(3, 4),
        dtype="f4",
        fill_value=0.0,
        attributes={"units": "K"},
    )
    first = np.arange(48, dtype="f4").reshape(6, 8)
    arr[:] = first
    v1 = s.commit("first")
    repo.create_tag("v1", v1)
    s = repo.writable_session("main")
    second = first * 2
    zarr.open_array(s.store, path="temps")[:] = second
    v2 = s.commit("second")
    repo.create_branch("old", v1)
    with serve(root) as url:
        yield {"url": url + "/repo", "v1": v1, "v2": v2, "first": first, "second": second}


def test_open_and_read_over_http(published: dict[str, Any]) -> None:
    storage = frazil.http_storage(published["url"])
    assert storage.writable is False
    assert frazil.Repository.exists(storage)
    repo = frazil.Repository.open(storage)
    for session, expected in [
        (repo.readonly_session("main"), published["second"]),
        (repo.readonly_session(tag="v1"), published["first"]),
        (repo.readonly_session("old"), published["first"]),
        (repo.readonly_session(snapshot_id=published["v2"]), published["second"]),
    ]:
        arr = zarr.open_array(session.store, path="temps", mode="r")
        assert arr.attrs["units"] == "K"
        assert (arr[:] == expected).all()
        assert (arr[1:4, 2:7] == expected[1:4, 2:7]).all()
    assert [h.message for h in repo.ancestry(branch="main")] == [
        "second",
        "first",
        "Repository initialized",
    ]
    assert repo.lookup_tag("v1") == published["v1"]


def test_writes_refused(published: dict[str, Any]) -> None:
    storage = frazil.http_storage(published["url"])
    repo = frazil.Repository.open(storage)
    with pytest.raises(ReadOnlyError):
        repo.writable_session("main")
    with pytest.raises(ReadOnlyError):
        frazil.Repository.create(frazil.http_storage(published["url"] + "-new"))
    for call in [
        lambda: storage.put("x", b"1"),
        lambda: storage.put_if_absent("x", b"1"),
        lambda: storage.put_if_version("x", b"1", "v"),
        lambda: storage.delete(["config.json"]),
    ]:
        with pytest.raises(ReadOnlyError):
            run(call())
    assert run(storage.exists("config.json"))


def test_listing_is_not_possible(published: dict[str, Any]) -> None:
    storage = frazil.http_storage(published["url"])
    with pytest.raises(StorageError, match="cannot list"):
        run(storage.list("refs/"))
    with pytest.raises(StorageError, match="cannot list"):
        frazil.Repository.open(storage).list_branches()


def test_objects_and_ranges(published: dict[str, Any]) -> None:
    storage = frazil.http_storage(published["url"])
    data = run(storage.get("config.json"))
    assert data and run(storage.size("config.json")) == len(data)
    assert run(storage.get("config.json", (2, 9))) == data[2:9]
    assert run(storage.get("config.json", (-5, None))) == data[-5:]
    assert run(storage.get("config.json", (5, None))) == data[5:]
    assert run(storage.get("config.json", (len(data) + 3, None))) == b""
    assert run(storage.get("config.json", (4, 4))) == b""
    got, version = run(storage.get_with_version("config.json"))
    assert got == data and run(storage.get_with_version("config.json"))[1] == version
    for call in [
        lambda: storage.get("missing"),
        lambda: storage.get("missing", (0, 2)),
        lambda: storage.get_with_version("refs/branch.nope/ref.json"),
        lambda: storage.size("missing"),
    ]:
        with pytest.raises(NotFoundError):
            run(call())
    assert run(storage.exists("missing")) is False
    with pytest.raises(frazil.InvalidInputError):
        run(storage.get("../outside"))


def test_http_storage_pickles(published: dict[str, Any]) -> None:
    storage = frazil.http_storage(published["url"], max_attempts=3)
    run(storage.get("config.json"))
    clone = pickle.loads(pickle.dumps(storage))
    assert isinstance(clone, HTTPStorage)
    assert clone.config == storage.config
    assert run(clone.get("config.json")) == run(storage.get("config.json"))


def test_unreachable_server_is_a_storage_error() -> None:
    [port] = s3server.free_ports(1)  # nothing listens there
    storage = frazil.http_storage(
        f"http://127.0.0.1:{port}/repo", max_attempts=2, backoff_base=0.001
    )
    with pytest.raises(StorageError):
        run(storage.get("config.json"))
    with pytest.raises(frazil.InvalidInputError):
        frazil.http_storage("ftp://example.org/repo")


def test_icechunk_http_storage_form() -> None:
    """Icechunk 2.x's ``http_storage(base_url, opts=None, headers=None)``: headers kept,
    the ``timeout`` option used, other object_store options refused."""
    import inspect

    params = list(inspect.signature(frazil.http_storage).parameters.values())
    assert [(p.name, p.default) for p in params[:3]] == [
        ("base_url", inspect.Parameter.empty),
        ("opts", None),
        ("headers", None),
    ]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params[:3])
    storage = frazil.http_storage(
        "https://example.org/repo", {"timeout": "2m"}, {"authorization": "Bearer t"}
    )
    assert storage.config.timeout == 120.0
    assert storage.config.headers == {"authorization": "Bearer t"}
    assert frazil.http_storage("https://e.org/r", {"timeout": "500ms"}).config.timeout == 0.5
    with pytest.raises(frazil.InvalidInputError, match="proxy_url"):
        frazil.http_storage("https://e.org/r", {"proxy_url": "http://p"})
    with pytest.raises(frazil.InvalidInputError, match="timeout"):
        frazil.http_storage("https://e.org/r", {"timeout": "soon"})
