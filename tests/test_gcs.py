"""Google Cloud Storage on obstore, against the fake of GCS's XML API on 127.0.0.1
(gcsserver.py): a repository round trip, workers writing through forks under every start
method after the parent used the backend, the generation preconditions frazil sends (read
from the fake's request log), credentials (refreshable, anonymous, refused), and
Icechunk's constructor and credential names. The storage contract itself is checked by
test_storage.py (its "gcs" backend)."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import itertools
import multiprocessing as mp
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import gcsserver
import numpy as np
import pytest
import zarr

import frazil
from frazil.storage import _obstore_runtime
from frazil.storage.gcs import GcsSpec


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def gcs_server() -> gcsserver.GcsServer:
    return gcsserver.server()


def make_repo(prefix: str | None = None) -> frazil.Repository:
    repo = frazil.Repository.create(gcsserver.storage(prefix))
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


def test_repository_round_trip(gcs_server: gcsserver.GcsServer) -> None:
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

    reopened = pickle.loads(pickle.dumps(repo))  # a Repository on GCS pickles
    assert isinstance(reopened.storage, frazil.GcsStorage)
    again = frazil.Repository.open(
        gcsserver.storage(prefix=repo.storage.spec.prefix)  # type: ignore[attr-defined]
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


# -- the preconditions, as sent ----------------------------------------------------------------
def test_conditional_puts_send_generation_preconditions(gcs_server: gcsserver.GcsServer) -> None:
    """A create sends ``x-goog-if-generation-match: 0``; a swap sends the generation read
    (``x-goog-generation`` of the answer that carried the bytes); plain puts of immutable
    objects send none. Read from the requests the server received."""
    storage = gcsserver.storage()
    root = storage.spec.prefix + "/"
    key = "refs/branch.main/ref.json"
    assert run(storage.put_if_absent(key, b"v0")).ok
    data, generation = run(storage.get_with_version(key))
    assert data == b"v0" and generation.isdecimal()
    swapped = run(storage.put_if_version(key, b"v1", generation))
    assert swapped.ok and swapped.version != generation
    run(storage.put("chunks/c1", b"bytes"))
    puts = [r for r in gcs_server.state.requests_for(root) if r.method == "PUT"]
    sent = [(r.path[len(root) :], r.headers.get("x-goog-if-generation-match")) for r in puts]
    assert sent == [(key, "0"), (key, generation), ("chunks/c1", None)]
    # a stale swap is refused by the server (412), and the result carries the new version
    stale = run(storage.put_if_version(key, b"v2", generation))
    assert not stale.ok and stale.version == swapped.version
    assert run(storage.get(key)) == b"v1"


def test_a_commit_swaps_the_branch_on_the_generation_it_read(
    gcs_server: gcsserver.GcsServer,
) -> None:
    repo = make_repo()
    root = repo.storage.spec.prefix + "/"  # type: ignore[attr-defined]
    ref = root + "refs/branch.main/ref.json"
    before = [r for r in gcs_server.state.requests_for(ref) if r.method == "PUT"]
    sent = [r.headers.get("x-goog-if-generation-match") for r in before]
    assert len(sent) == 2 and sent[0] == "0" and sent[1].isdecimal()  # created, then "setup"
    _, generation = run(repo.storage.get_with_version("refs/branch.main/ref.json"))
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="a")[0:2] = [1, 2]
    s.commit("one")
    after = [r for r in gcs_server.state.requests_for(ref) if r.method == "PUT"][len(before) :]
    assert [r.headers.get("x-goog-if-generation-match") for r in after] == [generation]


# -- processes ---------------------------------------------------------------------------------
def _fill(fork: frazil.ForkSession, row: int) -> tuple[frazil.ForkSession, int, int]:
    zarr.open_array(fork.store, path="a")[2 * row : 2 * row + 2] = [row, row]
    zarr.open_array(fork.store, path="big")[100 * row : 100 * row + 100] = float(row)
    return fork, os.getpid(), _obstore_runtime.copies_loaded


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_sessions_in_worker_processes_after_the_parent_used_gcs(
    gcs_server: gcsserver.GcsServer, method: str
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


# -- credentials -------------------------------------------------------------------------------
_tokens = itertools.count()


def expiring_token() -> frazil.GcsBearerCredential:
    """A new token each call, valid for 30 s: within the refresh margin (5 minutes), so
    replaced before every request."""
    expiry = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    return frazil.GcsBearerCredential(f"token-{next(_tokens)}", expires_after=expiry)


def lasting_token() -> frazil.GcsBearerCredential:
    """A new token each call, valid for an hour: kept for the whole test."""
    expiry = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    return frazil.GcsBearerCredential(f"lasting-{next(_tokens)}", expires_after=expiry)


def _bearers(server: gcsserver.GcsServer, root: str) -> list[str]:
    return [r.headers.get("authorization", "") for r in server.state.requests_for(root)]


def test_refreshable_credentials_are_called_again_before_expiry(
    gcs_server: gcsserver.GcsServer,
) -> None:
    storage = gcsserver.storage(get_credentials=expiring_token)
    root = storage.spec.prefix + "/"
    for i in range(3):
        run(storage.put(f"k{i}", b"x"))
    bearers = _bearers(gcs_server, root)
    assert len(bearers) == 3 and all(b.startswith("Bearer token-") for b in bearers)
    assert len(set(bearers)) == 3  # each close to expiry: a new one for every request

    lasting = gcsserver.storage(get_credentials=lasting_token)
    for i in range(3):
        run(lasting.put(f"k{i}", b"x"))
    assert len(set(_bearers(gcs_server, lasting.spec.prefix + "/"))) == 1  # far from expiry

    # scatter_initial_credentials: the first token travels with pickled copies
    scattered = gcsserver.storage(get_credentials=lasting_token, scatter_initial_credentials=True)
    first = scattered.spec.credentials.current
    assert isinstance(first, frazil.GcsBearerCredential)
    clone = pickle.loads(pickle.dumps(scattered))
    run(clone.put("k", b"x"))
    assert _bearers(gcs_server, clone.spec.prefix + "/") == [f"Bearer {first.bearer}"]


def test_anonymous_reads_are_unsigned(gcs_server: gcsserver.GcsServer) -> None:
    prefix = gcsserver.new_prefix()
    run(gcsserver.storage(prefix).put("public", b"data"))
    anonymous = gcsserver.storage(prefix, anonymous=True)
    assert isinstance(anonymous.spec.credentials, frazil.GcsCredentials.Anonymous)
    assert run(anonymous.get("public")) == b"data"
    run(anonymous.put("written", b"w"))  # an empty token, never one asked of the environment
    reads = [r for r in gcs_server.state.requests_for(prefix + "/public") if r.method == "GET"]
    assert reads and all("authorization" not in r.headers for r in reads)
    (write,) = gcs_server.state.requests_for(prefix + "/written")
    assert write.headers.get("authorization", "").strip() in ("", "Bearer")


def test_errors_name_what_and_where(gcs_server: gcsserver.GcsServer) -> None:
    storage = gcsserver.storage()
    with pytest.raises(frazil.NotFoundError, match=r"'nothing/here'.*gs://frazil-tests/"):
        run(storage.get("nothing/here"))
    refused = gcsserver.storage(bearer_token="refused-token")
    with pytest.raises(frazil.StorageError, match="access refused") as info:
        run(refused.get("x"))
    assert not isinstance(info.value, frazil.NotFoundError)
    assert "refused-token" not in str(info.value) and "refused-token" not in repr(refused)
    no_bucket = frazil.gcs_storage(
        bucket="no-such-bucket", prefix="p", bearer_token="t", config=gcs_server.config
    )
    with pytest.raises(frazil.StorageError, match="no-such-bucket") as info2:
        run(no_bucket.put_if_absent("refs/x", b"1"))
    assert not isinstance(info2.value, frazil.NotFoundError)
    with pytest.raises(frazil.InvalidInputError, match="cannot configure"):
        run(
            frazil.gcs_storage(
                bucket="b", prefix="p", bearer_token="t", config={"no_such_option": "1"}
            ).get("x")
        )


# -- Icechunk's names --------------------------------------------------------------------------
def test_icechunk_signatures() -> None:
    def params(fn: Any) -> list[tuple[str, Any, Any]]:
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    kw, pos, empty = (
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.empty,
    )
    assert params(frazil.gcs_storage) == [
        ("bucket", kw, empty),
        ("prefix", kw, empty),
        ("service_account_file", kw, None),
        ("service_account_key", kw, None),
        ("application_credentials", kw, None),
        ("bearer_token", kw, None),
        ("anonymous", kw, None),
        ("from_env", kw, None),
        ("config", kw, None),
        ("get_credentials", kw, None),
        ("scatter_initial_credentials", kw, False),
    ]
    assert params(frazil.gcs_credentials) == [
        ("service_account_file", kw, None),
        ("service_account_key", kw, None),
        ("application_credentials", kw, None),
        ("bearer_token", kw, None),
        ("from_env", kw, None),
        ("anonymous", kw, None),
        ("get_credentials", kw, None),
        ("scatter_initial_credentials", kw, False),
    ]
    assert params(frazil.gcs_static_credentials) == params(frazil.gcs_credentials)[:4]
    assert params(frazil.gcs_refreshable_credentials) == [
        ("get_credentials", pos, empty),
        ("scatter_initial_credentials", pos, False),
    ]
    assert params(frazil.gcs_from_env_credentials) == []
    assert params(frazil.gcs_anonymous_credentials) == []
    assert [p.name for p in inspect.signature(frazil.GcsBearerCredential).parameters.values()] == [
        "bearer",
        "expires_after",
    ]


def test_credentials_as_icechunk_builds_them() -> None:
    C, S = frazil.GcsCredentials, frazil.GcsStaticCredentials
    assert isinstance(frazil.gcs_credentials(), C.FromEnv)
    assert isinstance(frazil.gcs_credentials(from_env=True), C.FromEnv)
    assert isinstance(frazil.gcs_credentials(anonymous=True), C.Anonymous)
    static = frazil.gcs_credentials(bearer_token="secret-token")
    assert isinstance(static, C.Static) and static.credentials == S.BearerToken("secret-token")
    assert isinstance(static, frazil.AnyGcsCredential)
    assert "secret-token" not in repr(static)
    assert frazil.gcs_static_credentials(service_account_file="/sa.json") == S.ServiceAccount(
        "/sa.json"
    )
    assert isinstance(
        frazil.gcs_static_credentials(application_credentials="/adc.json"),
        frazil.AnyGcsStaticCredential,
    )
    refreshable = frazil.gcs_credentials(get_credentials=lasting_token)
    assert isinstance(refreshable, C.Refreshable) and refreshable.current is None
    assert refreshable.get_credentials is lasting_token
    built = C.Refreshable(pickle.dumps(lasting_token))  # Icechunk's form
    assert built.get_credentials is lasting_token
    for bad in (
        {"bearer_token": "t", "from_env": True},
        {"from_env": False},
        {"bearer_token": "t", "service_account_key": "k"},
        {"anonymous": True, "bearer_token": "t"},
        {"get_credentials": lasting_token, "bearer_token": "t"},
    ):
        with pytest.raises(ValueError):
            frazil.gcs_credentials(**bad)
    with pytest.raises(ValueError):
        frazil.gcs_static_credentials()
    with pytest.raises(frazil.InvalidInputError):
        C.Static("not a credential")  # type: ignore[arg-type]
    with pytest.raises(frazil.InvalidInputError, match="picklable"):
        frazil.gcs_refreshable_credentials(lambda: frazil.GcsBearerCredential("t"))
    with pytest.raises(frazil.InvalidInputError, match="GcsBearerCredential"):
        frazil.gcs_refreshable_credentials(str, scatter_initial_credentials=True)
    with pytest.raises(frazil.InvalidInputError, match="timezone"):
        frazil.GcsBearerCredential("t", expires_after=dt.datetime(2030, 1, 1))
    for bad_args in ({"bucket": "a/b"}, {"prefix": "x/../y"}, {"bucket": ""}):
        args = {"bucket": "b", "prefix": "p", "bearer_token": "t", **bad_args}
        with pytest.raises(frazil.InvalidInputError):
            frazil.gcs_storage(**args)


def test_storage_pickles_its_configuration_only() -> None:
    storage = frazil.gcs_storage(
        bucket="b", prefix="p/q", service_account_key='{"k": 1}', config={"base_url": "http://h"}
    )
    clone = pickle.loads(pickle.dumps(storage))
    assert isinstance(clone, frazil.GcsStorage) and clone.spec == storage.spec
    assert clone._stores is None  # clients are built on first use, in the process using them
    assert isinstance(storage.spec, GcsSpec) and storage.spec.options == (("base_url", "http://h"),)
    assert clone.describe() == "gs://b/p/q/ at http://h"
    assert '"k"' not in repr(storage.spec)
    assert frazil.gcs_storage(bucket="b", prefix=None, anonymous=True).describe() == "gs://b/"


# -- virtual chunks in GCS ---------------------------------------------------------------------
def test_virtual_chunks_in_gcs_objects(gcs_server: gcsserver.GcsServer) -> None:
    """An array whose chunks are byte ranges of a GCS object, read through a ``gcs_store``
    container with the reader's GCS credentials; the stored endpoint gets them only when
    the reader confirms it; a replaced object is refused (ETag pin)."""
    folder = gcsserver.new_prefix()
    blob = np.arange(16, dtype="<i4").tobytes()
    source = gcsserver.storage(prefix="")
    run(source.put(f"{folder}/data.bin", blob))
    etag = run(source.get_range_info(f"{folder}/data.bin", 0, 1)).etag
    prefix = f"gs://{gcsserver.BUCKET}/{folder}"
    container = frazil.VirtualChunkContainer(prefix, frazil.gcs_store(gcs_server.config))
    assert isinstance(container.store, frazil.ObjectStoreConfig.Gcs)
    with pytest.raises(frazil.InvalidInputError, match="bearer_token"):
        frazil.gcs_store({"bearer_token": "t"})  # would be saved
    config = frazil.RepositoryConfig.default()
    config.set_virtual_chunk_container(container)
    credentials = frazil.containers_credentials(
        {prefix: frazil.gcs_credentials(bearer_token="reader-token")}
    )
    repo = frazil.Repository.create(
        gcsserver.storage(), config=config, authorize_virtual_chunk_access=credentials
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
    reads = gcs_server.state.requests_for(f"{folder}/data.bin")
    assert any(r.headers.get("authorization") == "Bearer reader-token" for r in reads)

    # the endpoint comes only from the stored config: the reader's token is not sent there
    unconfirmed = frazil.Repository.open(repo.storage, authorize_virtual_chunk_access=credentials)
    with pytest.raises(frazil.VirtualChunkError, match="sets GCS options.*not by you"):
        zarr.open_array(unconfirmed.readonly_session("main").store, path="v", mode="r")[:]
    # credentials of another kind of store are refused with a message
    wrong = frazil.containers_credentials({prefix: frazil.s3_anonymous_credentials()})
    with pytest.raises(frazil.InvalidInputError, match="do not fit its gcs store"):
        frazil.Repository.open(repo.storage, config=config, authorize_virtual_chunk_access=wrong)
    # the object is replaced: its ETag changes and the pinned references are refused
    run(source.put(f"{folder}/data.bin", blob[::-1]))
    fresh = frazil.Repository.open(
        repo.storage, config=config, authorize_virtual_chunk_access=credentials
    )
    with pytest.raises(frazil.VirtualChunkError, match="changed"):
        zarr.open_array(fresh.readonly_session("main").store, path="v", mode="r")[:]
