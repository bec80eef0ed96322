"""Azure Blob Storage on obstore, against Azurite on 127.0.0.1 (see azureserver.py): a
repository round trip, workers writing through forks under every start method after the
parent used the backend, lost answers to conditional puts, error translation, and
Icechunk's constructor and credential names. The storage contract itself is checked by
test_storage.py (its "azure" backend)."""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing as mp
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import azureserver
import numpy as np
import pytest
import zarr

import frazil
from frazil.storage import _obstore_runtime
from frazil.storage.azure import AzureSpec


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def make_repo() -> frazil.Repository:
    repo = frazil.Repository.create(azureserver.storage())
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(8,), chunks=(2,), dtype="i4", fill_value=-1)
    zarr.create_array(
        s.store, name="big", shape=(400,), chunks=(100,), dtype="f8", compressors=None
    )
    s.commit("setup")
    return repo


def read(repo: frazil.Repository, path: str, **kw: Any) -> np.ndarray:
    return zarr.open_array(repo.readonly_session(**(kw or {"branch": "main"})).store, path=path)[
        ...
    ]


def test_repository_round_trip(azure_server: azureserver.AzuriteServer) -> None:
    repo = make_repo()
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="a")[:] = np.arange(8, dtype="i4")
    zarr.open_array(s.store, path="big")[:] = np.linspace(0, 1, 400)
    first = s.commit("values")
    repo.create_tag("v1", first)
    repo.create_branch("dev", first)
    dev = repo.writable_session("dev")
    zarr.open_array(dev.store, path="a")[0:2] = [100, 101]
    dev.commit("on dev")

    reopened = pickle.loads(pickle.dumps(repo))  # a Repository on Azure pickles
    assert isinstance(reopened.storage, frazil.AzureStorage)
    again = frazil.Repository.open(
        azureserver.storage(prefix=repo.storage.spec.prefix)  # type: ignore[attr-defined]
    )
    for r in (reopened, again):
        np.testing.assert_array_equal(read(r, "a"), np.arange(8))
        np.testing.assert_array_equal(read(r, "big"), np.linspace(0, 1, 400))
        np.testing.assert_array_equal(read(r, "a", tag="v1"), np.arange(8))
        np.testing.assert_array_equal(read(r, "a", branch="dev")[:3], [100, 101, 2])
        assert [i.message for i in r.ancestry(branch="dev")][:2] == ["on dev", "values"]
        assert set(r.list_branches()) == {"main", "dev"} and set(r.list_tags()) == {"v1"}
    # a concurrent commit from a stale session loses the swap and rebases
    a = repo.writable_session("main")
    b = repo.writable_session("main")
    zarr.open_array(a.store, path="a")[6:8] = [7, 7]
    zarr.open_array(b.store, path="a")[4:6] = [5, 5]
    a.commit("a")
    with pytest.raises(frazil.ConflictError):
        b.commit("b")
    b.commit("b", rebase_with=frazil.ConflictDetector())
    np.testing.assert_array_equal(read(repo, "a"), [0, 1, 2, 3, 5, 5, 7, 7])
    repo.delete_branch("dev")
    assert set(repo.list_branches()) == {"main"}


def _fill(fork: frazil.ForkSession, row: int) -> tuple[frazil.ForkSession, int, int]:
    zarr.open_array(fork.store, path="a")[2 * row : 2 * row + 2] = [row, row]
    zarr.open_array(fork.store, path="big")[100 * row : 100 * row + 100] = float(row)
    return fork, os.getpid(), _obstore_runtime.copies_loaded


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_sessions_in_worker_processes_after_the_parent_used_azure(
    azure_server: azureserver.AzuriteServer, method: str
) -> None:
    """obstore's runtime does not survive os.fork: a forked worker must use a fresh copy
    of its extension, never hang on the parent's."""
    repo = make_repo()
    read(repo, "big")  # the parent has used obstore (its runtime is started)
    s = repo.writable_session("main")
    fork = s.fork()
    with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context(method)) as ex:
        results = [f.result(timeout=120) for f in [ex.submit(_fill, fork, r) for r in range(4)]]
    assert all(pid != os.getpid() for _, pid, _ in results)
    loaded = {copies for _, _, copies in results}
    assert loaded == ({1} if method == "fork" else {0})  # a fresh copy only where forked
    s.merge(*(r[0] for r in results))
    s.commit(f"from {method} workers")
    np.testing.assert_array_equal(read(repo, "a"), np.repeat(np.arange(4), 2))
    np.testing.assert_array_equal(read(repo, "big"), np.repeat(np.arange(4.0), 100))


def _grandchild(storage: frazil.Storage, queue: Any) -> None:
    try:
        queue.put(run(storage.get("k")))
    except BaseException as e:  # reported to the test
        queue.put(repr(e))


def _child(storage: frazil.Storage, queue: Any) -> None:
    run(storage.put("k", f"child {os.getpid()}".encode()))
    ctx = mp.get_context("fork")  # forked again after this process used its copy
    p = ctx.Process(target=_grandchild, args=(storage, queue))
    p.start()
    p.join(60)
    queue.put(p.exitcode)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_of_a_fork_gets_its_own_copy(azure_server: azureserver.AzuriteServer) -> None:
    storage = azureserver.storage()
    run(storage.put("k", b"parent"))
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    p = ctx.Process(target=_child, args=(storage, queue))
    p.start()
    got = queue.get(timeout=60)
    exitcode = queue.get(timeout=60)
    p.join(60)
    assert got == f"child {p.pid}".encode()
    assert (exitcode, p.exitcode) == (0, 0)


# -- conditional puts: lost answers, typed errors -------------------------------------------------
@pytest.mark.parametrize("kind", ["create", "update"])
def test_lost_answer_to_a_conditional_put_is_not_a_conflict(
    azure_server: azureserver.AzuriteServer, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The put lands, its answer is lost (an untyped error): the retry fails its
    precondition, and the read-back shows our bytes, so the put succeeded."""
    storage = azureserver.storage()
    key = "refs/branch.main/ref.json"
    version = None
    if kind == "update":
        run(storage.put(key, b"old"))
        version = run(storage.get_with_version(key))[1]
    module = _obstore_runtime.extension()
    real = module.put_async
    calls: list[Any] = []

    async def lossy(store: Any, path: str, data: bytes, **kw: Any) -> Any:
        calls.append(kw.get("mode"))
        result = await real(store, path, data, **kw)
        if len(calls) == 1:
            raise module.exceptions.GenericError("connection reset after the request was sent")
        return result

    monkeypatch.setattr(module, "put_async", lossy)
    if kind == "create":
        result = run(storage.put_if_absent(key, b"new"))
    else:
        assert version is not None
        result = run(storage.put_if_version(key, b"new", version))
    monkeypatch.undo()
    assert len(calls) == 2  # retried once, and that failed its precondition
    assert result.ok and result.version == run(storage.get_with_version(key))[1]
    assert run(storage.get(key)) == b"new"
    assert not run(storage.put_if_absent(key, b"other")).ok


def test_errors_name_what_and_where(azure_server: azureserver.AzuriteServer) -> None:
    storage = azureserver.storage()
    with pytest.raises(frazil.NotFoundError, match=r"'nothing/here'.*az://devstoreaccount1/"):
        run(storage.get("nothing/here"))
    wrong_key = frazil.azure_storage(
        account=azureserver.ACCOUNT,
        container=azureserver.CONTAINER,
        prefix="p",
        access_key="d3Jvbmcga2V5",
        config=azure_server.config,
    )
    with pytest.raises(frazil.StorageError, match="access refused") as info:
        run(wrong_key.get("x"))
    assert not isinstance(info.value, frazil.NotFoundError)
    assert "d3Jvbmcga2V5" not in str(info.value) and "d3Jvbmcga2V5" not in repr(wrong_key)
    no_container = frazil.azure_storage(
        account=azureserver.ACCOUNT,
        container="no-such-container",
        prefix="p",
        access_key=azureserver.ACCOUNT_KEY,
        config=azure_server.config,
    )
    with pytest.raises(frazil.StorageError, match="no-such-container") as info2:
        run(no_container.put_if_absent("refs/x", b"1"))
    assert not isinstance(info2.value, frazil.NotFoundError)
    with pytest.raises(frazil.InvalidInputError, match="cannot configure"):
        run(
            frazil.azure_storage(
                account="a", container="c", prefix="p", config={"no_such_option": "1"}
            ).get("x")
        )


# -- Icechunk's names ---------------------------------------------------------------------------
def test_icechunk_signatures() -> None:
    def params(fn: Any) -> list[tuple[str, Any, Any]]:
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    kw, empty = inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.empty
    assert params(frazil.azure_storage) == [
        ("account", kw, empty),
        ("container", kw, empty),
        ("prefix", kw, empty),
        ("access_key", kw, None),
        ("sas_token", kw, None),
        ("bearer_token", kw, None),
        ("from_env", kw, None),
        ("config", kw, None),
    ]
    assert params(frazil.azure_credentials) == [
        ("access_key", kw, None),
        ("sas_token", kw, None),
        ("bearer_token", kw, None),
        ("from_env", kw, None),
    ]
    assert params(frazil.azure_static_credentials) == params(frazil.azure_credentials)[:3]
    assert params(frazil.azure_from_env_credentials) == []


def test_credentials_as_icechunk_builds_them() -> None:
    C, S = frazil.AzureCredentials, frazil.AzureStaticCredentials
    assert isinstance(frazil.azure_credentials(), C.FromEnv)
    assert isinstance(frazil.azure_credentials(from_env=True), C.FromEnv)
    static = frazil.azure_credentials(sas_token="sv=1&sig=x")
    assert isinstance(static, C.Static) and static.credentials == S.SasToken("sv=1&sig=x")
    assert isinstance(static, frazil.AnyAzureCredential)
    assert isinstance(S.BearerToken("t"), frazil.AnyAzureStaticCredential)
    assert "sig=x" not in repr(static)
    for bad in (
        {"access_key": "k", "from_env": True},
        {"from_env": False},
        {"access_key": "k", "sas_token": "s"},
    ):
        with pytest.raises(ValueError):
            frazil.azure_credentials(**bad)
    with pytest.raises(ValueError):
        frazil.azure_static_credentials()
    with pytest.raises(frazil.InvalidInputError):
        C.Static("not a credential")  # type: ignore[arg-type]
    for bad_args in ({"container": "a/b"}, {"prefix": "x/../y"}, {"account": ""}):
        args = {"account": "acc", "container": "c", "prefix": "p", **bad_args}
        with pytest.raises(frazil.InvalidInputError):
            frazil.azure_storage(**args)


def test_storage_pickles_its_configuration_only() -> None:
    storage = frazil.azure_storage(
        account="acc", container="c", prefix="p/q", access_key="a2V5", config={"k": "v"}
    )
    clone = pickle.loads(pickle.dumps(storage))
    assert isinstance(clone, frazil.AzureStorage) and clone.spec == storage.spec
    assert clone._stores is None  # clients are built on first use, in the process using them
    assert isinstance(storage.spec, AzureSpec) and storage.spec.options == (("k", "v"),)
    assert clone.describe() == "az://acc/c/p/q/"


def test_exit_waits_for_threads_python_did_not_start() -> None:
    """At exit, frazil waits until no foreign thread (obstore's runtime finishing an async
    call) is inside Python code: Python 3.11 would end such a thread with pthread_exit and
    the process would abort. A thread started by ``_thread`` is foreign to ``threading``."""
    import _thread
    import threading

    entered, release = threading.Event(), threading.Event()
    seen: list[int] = []

    def foreign() -> None:
        seen.append(_thread.get_ident())
        entered.set()
        release.wait(60)
        seen.append(0)  # the last Python it runs

    _thread.start_new_thread(foreign, ())
    assert entered.wait(60)
    assert seen[0] in _obstore_runtime.foreign_threads_in_python()
    assert threading.get_ident() not in _obstore_runtime.foreign_threads_in_python()
    timer = threading.Timer(0.05, release.set)
    timer.start()
    _obstore_runtime._settle_foreign_threads(timeout=60)
    assert seen[-1] == 0
    assert seen[0] not in _obstore_runtime.foreign_threads_in_python()
    timer.join()


FORK_AFTER_OTHER_USE = """
import asyncio, multiprocessing as mp, sys
import obstore
from obstore.store import MemoryStore
import frazil
from frazil.storage import _obstore_runtime
obstore.put(MemoryStore(), "x", b"1")  # obstore's runtime started, not by frazil
endpoint, prefix = sys.argv[1], sys.argv[2]
def child(queue):
    storage = frazil.azure_storage(account="devstoreaccount1", container="frazil-tests",
        prefix=prefix, access_key=sys.argv[3],
        config={"azure_storage_endpoint": endpoint, "azure_allow_http": "true"})
    asyncio.run(storage.put("k", b"from the child"))
    queue.put((asyncio.run(storage.get("k")), _obstore_runtime.copies_loaded))
ctx = mp.get_context("fork")
queue = ctx.Queue()
p = ctx.Process(target=child, args=(queue,))
p.start()
print(queue.get(timeout=60))
p.join(30)
"""


def test_fork_after_other_code_used_obstore(azure_server: azureserver.AzuriteServer) -> None:
    """The parent's obstore runtime was started by code other than frazil: the forked
    child still uses a fresh copy."""
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-c",
            FORK_AFTER_OTHER_USE,
            azure_server.endpoint,
            azureserver.new_prefix(),
            azureserver.ACCOUNT_KEY,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(b'from the child', 1)"


def test_untyped_failure_of_a_conditional_put_is_retried(
    azure_server: azureserver.AzuriteServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt that fails before reaching the store (an untyped error) is an unknown
    outcome: retried, and the retry's success is the put's."""
    storage = azureserver.storage()
    module = _obstore_runtime.extension()
    real = module.put_async
    failures = [2]

    async def flaky(store: Any, path: str, data: bytes, **kw: Any) -> Any:
        if failures[0]:
            failures[0] -= 1
            raise module.exceptions.GenericError("connection refused")
        return await real(store, path, data, **kw)

    monkeypatch.setattr(module, "put_async", flaky)
    result = run(storage.put_if_absent("refs/tag.t/ref.json", b"tag"))
    monkeypatch.undo()
    assert result.ok and failures == [0]
    assert run(storage.get_with_version("refs/tag.t/ref.json")) == (b"tag", result.version)


def test_obstore_on_the_s3_server_and_the_benchmark_short_form() -> None:
    """What the S3 decision rests on (bench/bench_objstore.py): obstore's conditional puts
    on the S3 test server fail with typed errors; the benchmark's workloads run."""
    import bench_objstore

    assert bench_objstore.check_s3_semantics() == {
        "create": "ok",
        "create again": "AlreadyExistsError",
        "swap on current ETag": "ok",
        "swap on stale ETag": "PreconditionError",
        "swap of a missing key": "PreconditionError",
        "content after": "3",
    }
    for workload in bench_objstore.workloads(azure=True):
        result = workload.run(8)
        assert set(result) == {"put_s", "put_cpu_s", "get_s", "get_cpu_s"}
    make = {"s3": lambda p: bench_objstore._s3().storage(p), "azure": azureserver.storage}
    for name, maker in make.items():
        figures = bench_objstore.repository_workload(name, maker, 4)
        assert set(figures) == {"w1_MBps", "open_read1_ms", "w2_MBps"}


# -- virtual chunks on Azure ----------------------------------------------------------------------
def test_virtual_chunks_in_azure_blobs(azure_server: azureserver.AzuriteServer) -> None:
    """An array whose chunks are byte ranges of a blob in Azurite, read through an
    ``azure_store`` container; the stored endpoint gets the reader's key only when the
    reader confirms it; a replaced blob is refused (ETag pin)."""
    folder = azureserver.new_prefix()
    blob = np.arange(16, dtype="<i4").tobytes()
    source = azureserver.storage(prefix="")
    run(source.put(f"{folder}/data.bin", blob))
    etag = run(source.get_with_version(f"{folder}/data.bin"))[1]
    prefix = f"az://{azureserver.CONTAINER}/{folder}"
    container = frazil.VirtualChunkContainer(
        prefix, frazil.azure_store(account=azureserver.ACCOUNT, config=azure_server.config)
    )
    assert isinstance(container.store, frazil.ObjectStoreConfig.Azure)
    with pytest.raises(frazil.InvalidInputError, match="azure_storage_account_key"):
        frazil.azure_store(account="a", config={"azure_storage_account_key": "k"})  # saved
    config = frazil.RepositoryConfig.default()
    config.set_virtual_chunk_container(container)
    credentials = frazil.containers_credentials(
        {prefix: frazil.azure_credentials(access_key=azureserver.ACCOUNT_KEY)}
    )
    repo = frazil.Repository.create(
        azureserver.storage(), config=config, authorize_virtual_chunk_access=credentials
    )
    s = repo.writable_session("main")
    zarr.create_array(
        s.store, name="v", shape=(16,), chunks=(4,), dtype="<i4", compressors=None, fill_value=0
    )
    for i in range(4):
        s.store.set_virtual_ref(
            f"v/c/{i}", f"{prefix}/data.bin", offset=16 * i, length=16, checksum=etag
        )
    s.commit("virtual")
    reader = frazil.Repository.open(
        repo.storage, config=config, authorize_virtual_chunk_access=credentials
    )
    values = zarr.open_array(reader.readonly_session("main").store, path="v", mode="r")[:]
    np.testing.assert_array_equal(values, np.arange(16))

    # the endpoint comes only from the stored config: the reader's key is not sent there
    unconfirmed = frazil.Repository.open(repo.storage, authorize_virtual_chunk_access=credentials)
    with pytest.raises(frazil.VirtualChunkError, match="sets Azure options.*not by you"):
        zarr.open_array(unconfirmed.readonly_session("main").store, path="v", mode="r")[:]
    # credentials of another kind of store are refused with a message
    wrong = frazil.containers_credentials({prefix: frazil.s3_anonymous_credentials()})
    with pytest.raises(frazil.InvalidInputError, match="do not fit its azure store"):
        frazil.Repository.open(repo.storage, config=config, authorize_virtual_chunk_access=wrong)
    # the blob is replaced: its ETag changes and the pinned references are refused
    run(source.put(f"{folder}/data.bin", blob[::-1]))
    fresh = frazil.Repository.open(
        repo.storage, config=config, authorize_virtual_chunk_access=credentials
    )
    with pytest.raises(frazil.VirtualChunkError, match="changed"):
        zarr.open_array(fresh.readonly_session("main").store, path="v", mode="r")[:]
