"""The S3 backend against a real server (SeaweedFS on 127.0.0.1, see s3server.py): zarr's
store conformance suite over S3, several processes committing to one branch, and what is
particular to S3 (error codes, retries, lost acknowledgements, stores without
conditional writes, pickling, one client per event loop).

The storage conformance suite (tests/test_storage.py) and the repository tests
(tests/test_repository.py) run on S3 too, through their backend lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import http.server
import multiprocessing as mp
import pickle
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import s3server
import zarr
from test_zarr_store import _FrazilStoreTests

import frazil
from frazil.errors import (
    InvalidInputError,
    NotFoundError,
    StorageError,
)
from frazil.storage import S3Settings, S3Storage, _obstore_runtime


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- zarr's StoreTests over S3 ----------------------------------------------------------------
class TestFrazilStoreS3(_FrazilStoreTests):
    """S3, with inlining off so every non-empty chunk is an object in the bucket."""

    @pytest.fixture
    def repo(self, tmp_path: Any) -> frazil.Repository:
        return frazil.Repository.create(
            s3server.storage(), frazil.RepositoryConfig(inline_chunk_threshold_bytes=0)
        )


# -- several processes committing to one branch -------------------------------------------------
PROCESSES = 3
COMMITS_EACH = 4


def _committer(storage: frazil.Storage, worker: int, barrier: Any, results: Any) -> None:
    try:
        repo = frazil.Repository.open(storage)
        barrier.wait(timeout=60)
        for i in range(COMMITS_EACH):
            session = repo.writable_session("main")
            arr = zarr.open_array(session.store, path="counts")
            arr[worker * COMMITS_EACH + i] = worker * 100 + i
            session.commit(f"worker {worker} commit {i}", rebase_with=frazil.ConflictDetector())
        results.put((worker, None))
    except BaseException as e:  # report, never hang the parent
        results.put((worker, repr(e)))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_processes_commit_to_one_branch_on_s3(method: str) -> None:
    storage = s3server.storage()
    repo = frazil.Repository.create(storage)
    s = repo.writable_session("main")
    zarr.create_array(
        s.store,
        name="counts",
        shape=(PROCESSES * COMMITS_EACH,),
        chunks=(1,),
        dtype="i4",
        fill_value=-1,
    )
    s.commit("create")

    ctx = mp.get_context(method)
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_committer, args=(storage, w, barrier, results))
        for w in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()
    assert [o for o in outcomes if o[1] is not None] == []
    assert [p.exitcode for p in procs] == [0] * PROCESSES

    history = list(repo.ancestry(branch="main"))
    messages = [h.message for h in history]
    assert len(messages) == PROCESSES * COMMITS_EACH + 2
    for w in range(PROCESSES):
        for i in range(COMMITS_EACH):
            assert messages.count(f"worker {w} commit {i}") == 1
    for child, parent in zip(history, history[1:]):  # one linear chain
        assert child.parent_id == parent.id
    values = zarr.open_array(repo.readonly_session("main").store, path="counts")[:]
    expected = [w * 100 + i for w in range(PROCESSES) for i in range(COMMITS_EACH)]
    assert (values == np.array(expected)).all()


# -- conditional puts: lost answers, typed errors (obstore) ---------------------------------------
def _patch_put(monkeypatch: pytest.MonkeyPatch, wrap: Callable[[Any, list[Any]], Any]) -> list[Any]:
    """Replaces ``put_async`` of the obstore module this process calls by ``wrap(real,
    calls)``; returns the list of the ``mode`` of each put."""
    module = _obstore_runtime.extension()
    calls: list[Any] = []
    monkeypatch.setattr(module, "put_async", wrap(module.put_async, calls))
    return calls


@pytest.mark.parametrize("kind", ["create", "update"])
def test_lost_ack_on_conditional_put_is_not_a_conflict(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The first attempt lands but its answer is lost (an untyped error); the retry fails
    its precondition (because of our own write): the read-back sees our bytes, so the put
    succeeded."""
    storage = s3server.storage()
    key = "refs/branch.main/ref.json"
    version = None
    if kind == "update":
        run(storage.put(key, b"old"))
        version = run(storage.get_with_version(key))[1]
    module = _obstore_runtime.extension()

    def wrap(real: Any, calls: list[Any]) -> Any:
        async def lossy(store: Any, path: str, data: Any, **kw: Any) -> Any:
            calls.append(kw.get("mode"))
            result = await real(store, path, data, **kw)
            if len(calls) == 1:
                raise module.exceptions.GenericError("connection reset after the request")
            return result

        return lossy

    calls = _patch_put(monkeypatch, wrap)
    data = b'{"snapshot": "S", "write_id": "unique-1"}'
    if kind == "create":
        result = run(storage.put_if_absent(key, data))
    else:
        assert version is not None
        result = run(storage.put_if_version(key, data, version))
    monkeypatch.undo()
    assert len(calls) == 2  # it landed, then the retry was refused
    assert calls[0] == ("create" if kind == "create" else {"e_tag": version})
    assert result.ok is True
    assert (data, result.version) == run(storage.get_with_version(key))


def test_lost_ack_then_real_conflict_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """An attempt failed without an answer, but it had not landed, and another writer
    won meanwhile: the read-back shows their bytes, so this is a lost race."""
    storage = s3server.storage()
    key = "refs/branch.main/ref.json"
    run(storage.put(key, b"old"))
    _, version = run(storage.get_with_version(key))
    theirs = run(storage.put_if_version(key, b"theirs", version))
    assert theirs.ok
    module = _obstore_runtime.extension()

    def wrap(real: Any, calls: list[Any]) -> Any:
        async def refused(store: Any, path: str, data: Any, **kw: Any) -> Any:
            calls.append(kw.get("mode"))
            if len(calls) == 1:
                raise module.exceptions.GenericError("connection refused")
            return await real(store, path, data, **kw)

        return refused

    calls = _patch_put(monkeypatch, wrap)
    result = run(storage.put_if_version(key, b"ours", version))
    monkeypatch.undo()
    assert len(calls) == 2
    assert result.ok is False and result.version == theirs.version
    assert run(storage.get(key)) == b"theirs"


def test_if_match_on_a_missing_key_is_not_swapped() -> None:
    """SeaweedFS answers 412 to If-Match on a missing key (moto: 404): not swapped, no
    version, nothing written."""
    storage = s3server.storage()
    run(storage.put("other", b"x"))
    _, version = run(storage.get_with_version("other"))
    result = run(storage.put_if_version("refs/branch.gone/ref.json", b"y", version))
    assert result.ok is False and result.version is None
    assert not run(storage.exists("refs/branch.gone/ref.json"))


# -- stores without conditional writes ----------------------------------------------------------
def test_unsafe_settings_off_warn_and_use_plain_puts(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.warns(UserWarning, match="concurrent commits .* can be lost"):
        storage = s3server.storage(
            unsafe_use_conditional_update=False, unsafe_use_conditional_create=False
        )
    assert storage.supports_conditional_writes is False

    def wrap(real: Any, calls: list[Any]) -> Any:
        async def record(store: Any, path: str, data: Any, **kw: Any) -> Any:
            calls.append(kw.get("mode"))
            return await real(store, path, data, **kw)

        return record

    modes = _patch_put(monkeypatch, wrap)
    created = run(storage.put_if_absent("k", b"one"))
    assert created.ok
    assert not run(storage.put_if_absent("k", b"two")).ok
    swapped = run(storage.put_if_version("k", b"three", created.version or ""))
    assert swapped.ok
    assert not run(storage.put_if_version("k", b"four", created.version or "")).ok
    monkeypatch.undo()
    assert run(storage.get("k")) == b"three"
    assert modes == [None, None]  # two plain puts, no preconditions sent
    with warnings.catch_warnings():  # a repository works (one writer)
        warnings.simplefilter("ignore")
        repo = frazil.Repository.create(
            s3server.storage(
                unsafe_use_conditional_update=False, unsafe_use_conditional_create=False
            )
        )
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="a", shape=(2,), chunks=(1,), dtype="i4")[:] = 7
    session.commit("one writer")
    assert (zarr.open_array(repo.readonly_session("main").store, path="a")[:] == 7).all()


def test_conditional_settings_on_by_default_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        storage = s3server.storage()
    assert storage.supports_conditional_writes is True


# -- configuration ------------------------------------------------------------------------------
def test_constructor_checks() -> None:
    base: dict[str, Any] = {"bucket": "b", "prefix": "p"}
    with pytest.raises(InvalidInputError, match="allow_http"):
        frazil.s3_storage(**base, endpoint_url="http://127.0.0.1:9")
    with pytest.raises(InvalidInputError, match="together"):
        frazil.s3_storage(**base, access_key_id="k")
    with pytest.raises(InvalidInputError, match="anonymous"):
        frazil.s3_storage(**base, access_key_id="k", secret_access_key="s", anonymous=True)
    with pytest.raises(InvalidInputError, match="from_env"):
        frazil.s3_storage(**base, access_key_id="k", secret_access_key="s", from_env=True)
    with pytest.raises(InvalidInputError, match="unknown S3 settings"):
        frazil.s3_storage(**base, max_atempts=3)
    with pytest.raises(InvalidInputError, match="max_attempts"):
        frazil.s3_storage(**base, max_attempts=0)
    with pytest.raises(InvalidInputError, match="bucket"):
        frazil.s3_storage(bucket="", prefix="p")
    with pytest.raises(InvalidInputError, match="requester_pays"):
        frazil.s3_storage(**base, requester_pays="yes")  # type: ignore[arg-type]
    storage = frazil.s3_storage(
        **base,
        region="eu-west-1",
        anonymous=True,
        settings=S3Settings(max_concurrency=4),
        max_attempts=3,
    )
    assert storage.config.settings.max_concurrency == 4
    assert storage.config.settings.max_attempts == 3
    assert storage.spec.settings.max_concurrency == 4  # what obstore's client is given
    assert storage.describe() == "s3://b/p/"
    assert "secret" not in repr(
        frazil.s3_storage(**base, access_key_id="k", secret_access_key="secret")
    )


def test_pickles_only_its_configuration() -> None:
    storage = s3server.storage()
    run(storage.put("x", b"1"))  # clients exist now
    assert storage._stores is not None
    assert set(storage.__getstate__()) == {"spec"}
    clone = pickle.loads(pickle.dumps(storage))
    assert clone.config == storage.config
    assert clone._stores is None  # built on first use, in the process using them
    assert run(clone.get("x")) == b"1"
    assert run(S3Storage(storage.config).get("x")) == b"1"  # made from its S3Config
    with pytest.raises(InvalidInputError, match="S3Config"):
        S3Storage("s3://b/p")  # type: ignore[arg-type]


def test_storages_with_equal_configuration_share_clients() -> None:
    """A new storage object for the same place (a cold open) reuses the process's
    clients; the never-retrying one is built only by the first conditional put."""
    prefix = s3server.new_prefix()
    a, b = s3server.storage(prefix), s3server.storage(prefix)
    run(a.put("k", b"v"))
    assert run(b.get("k")) == b"v"
    assert a._stores is not None and a._stores is b._stores
    assert a._stores._once is None  # reads and plain puts never built it
    assert run(b.put_if_absent("r", b"1")).ok and a._stores._once is not None
    other = s3server.storage(s3server.new_prefix())
    assert run(other.exists("k")) is False
    assert other._stores is not a._stores


def test_missing_bucket_is_a_storage_error_not_not_found() -> None:
    storage = s3server.storage(bucket="frazil-no-such-bucket", max_attempts=2)
    with pytest.raises(StorageError, match="frazil-no-such-bucket") as info:
        run(storage.put("k", b"v"))
    assert not isinstance(info.value, NotFoundError)


def test_versions_follow_content() -> None:
    """The documented S3 weakening: an ETag is a content hash. Distinct bytes always give
    a new version (frazil's refs always differ, by write_id)."""
    storage = s3server.storage()
    assert storage.versions_follow_content
    run(storage.put("k", b"same"))
    _, v0 = run(storage.get_with_version("k"))
    again = run(storage.put_if_version("k", b"same", v0))
    assert again.ok and again.version == v0
    other = run(storage.put_if_version("k", b"other", v0))
    assert other.ok and other.version != v0
    assert not run(storage.put_if_version("k", b"third", v0)).ok


def test_concurrent_reads_go_out_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many gets on one loop are in flight together, bounded by ``max_concurrency``."""
    storage = s3server.storage(max_concurrency=8)
    keys = [f"chunks/{i:04d}" for i in range(64)]

    async def put_all() -> None:
        await asyncio.gather(*(storage.put(k, k.encode()) for k in keys))

    run(put_all())
    module = _obstore_runtime.extension()
    real = module.get_async
    in_flight = peak = calls = 0

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal in_flight, peak, calls
        in_flight += 1
        calls += 1
        peak = max(peak, in_flight)
        try:
            return await real(*args, **kwargs)
        finally:
            in_flight -= 1

    monkeypatch.setattr(module, "get_async", counting)

    async def get_all() -> list[bytes]:
        return await asyncio.gather(*(storage.get(k) for k in keys))

    got = run(get_all())
    monkeypatch.undo()
    assert got == [k.encode() for k in keys]
    assert 1 < peak <= 8 and calls == len(keys)


def test_cold_open_asks_for_the_ref_and_the_config_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``Repository.open`` sends its two requests (is there a main branch, the config) at
    once: one round trip of latency, not two."""
    storage = s3server.storage()
    frazil.Repository.create(storage)
    module = _obstore_runtime.extension()
    in_flight = peak = 0
    asked: list[str] = []

    def counting(real: Any) -> Any:
        async def call(store: Any, path: str, *args: Any, **kwargs: Any) -> Any:
            nonlocal in_flight, peak
            asked.append(path)
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                await asyncio.sleep(0.01)  # a network's latency, so that overlap shows
                return await real(store, path, *args, **kwargs)
            finally:
                in_flight -= 1

        return call

    monkeypatch.setattr(module, "head_async", counting(module.head_async))
    monkeypatch.setattr(module, "get_async", counting(module.get_async))
    frazil.Repository.open(s3server.storage(storage.config.prefix))
    monkeypatch.undo()
    assert sorted(asked) == ["config.json", "refs/branch.main/ref.json"]
    assert peak == 2


# -- errors say what and where ------------------------------------------------------------------
def test_errors_name_what_and_where() -> None:
    storage = s3server.storage()
    with pytest.raises(NotFoundError, match=r"'nothing/here'.*s3://frazil-tests/"):
        run(storage.get("nothing/here"))
    srv = s3server.server()
    wrong = frazil.s3_storage(
        bucket=s3server.BUCKET,
        prefix="p",
        endpoint_url=srv.endpoint_url,
        allow_http=True,
        access_key_id=s3server.ACCESS_KEY,
        secret_access_key="wrong-secret-value",
        max_attempts=1,
    )
    with pytest.raises(StorageError, match=r"access refused.*") as info:
        run(wrong.get("k"))
    message = str(info.value)
    assert "'k'" in message and f"s3://{s3server.BUCKET}/p/ at {srv.endpoint_url}" in message
    assert "wrong-secret-value" not in message and "wrong-secret-value" not in repr(wrong)


# -- what goes over the wire: a server that records requests ---------------------------------------
class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every request 404 NoSuchKey (as S3 does for a missing key) and records its
    method, path and headers in the server's ``seen``."""

    def _answer(self) -> None:
        self.server.seen.append((self.command, self.path, dict(self.headers)))  # type: ignore[attr-defined]
        body = b"" if self.command == "HEAD" else b"<Error><Code>NoSuchKey</Code></Error>"
        self.send_response(404)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = _answer

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def recording_server() -> Iterator[tuple[str, list[tuple[str, str, dict[str, str]]]]]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    srv.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", srv.seen  # type: ignore[attr-defined]
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


def test_requester_pays_and_anonymous_requests_on_the_wire() -> None:
    """``requester_pays=True`` sends ``x-amz-request-payer: requester``; ``anonymous=True``
    sends unsigned requests (no Authorization); keys sign every request."""
    with recording_server() as (url, seen):
        common: dict[str, Any] = {"bucket": "b", "prefix": "p", "endpoint_url": url}
        pays = frazil.s3_storage(
            **common,
            allow_http=True,
            access_key_id="K",
            secret_access_key="S",
            requester_pays=True,
        )
        assert run(pays.exists("x")) is False
        anon = frazil.s3_storage(**common, allow_http=True, anonymous=True)
        assert run(anon.exists("y")) is False
        plain = frazil.s3_storage(
            **common, allow_http=True, access_key_id="K", secret_access_key="S"
        )
        assert run(plain.exists("z")) is False
    by_path = {path: {k.lower(): v for k, v in h.items()} for _, path, h in seen}
    assert by_path["/b/p/x"]["x-amz-request-payer"] == "requester"
    assert by_path["/b/p/x"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=K/")
    assert "authorization" not in by_path["/b/p/y"]
    assert "x-amz-request-payer" not in by_path["/b/p/z"]
    assert "authorization" in by_path["/b/p/z"]


def test_static_keys_are_not_mixed_with_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Explicit keys are sent as given: a session token in the environment is not added."""
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-from-the-environment")
    with recording_server() as (url, seen):
        st = frazil.s3_storage(
            bucket="b",
            prefix="p",
            endpoint_url=url,
            allow_http=True,
            access_key_id="K",
            secret_access_key="S",
        )
        assert run(st.exists("x")) is False
    headers = {k.lower(): v for k, v in seen[0][2].items()}
    assert "x-amz-security-token" not in headers


# -- refreshable credentials (Icechunk's s3_refreshable_credentials / get_credentials=) ----------
CREDENTIAL_CALLS: list[dt.timedelta] = []


def _credentials_valid_for(valid: dt.timedelta) -> frazil.S3StaticCredentials:
    CREDENTIAL_CALLS.append(valid)
    return frazil.S3StaticCredentials(
        access_key_id=s3server.ACCESS_KEY,
        secret_access_key=s3server.SECRET_KEY,
        expires_after=dt.datetime.now(dt.UTC) + valid,
    )


def _refreshable_storage(valid: dt.timedelta, **kwargs: Any) -> frazil.Storage:
    srv = s3server.server()
    return frazil.s3_storage(
        bucket=s3server.BUCKET,
        prefix=s3server.new_prefix(),
        endpoint_url=srv.endpoint_url,
        allow_http=True,
        region="us-east-1",
        get_credentials=functools.partial(_credentials_valid_for, valid),
        **kwargs,
    )


def test_refreshable_credentials_are_fetched_again_before_expiry() -> None:
    CREDENTIAL_CALLS.clear()
    storage = _refreshable_storage(dt.timedelta(seconds=30))  # inside botocore's window
    repo = frazil.Repository.create(storage)
    first = len(CREDENTIAL_CALLS)
    assert first >= 1
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="a", shape=(4,), dtype="i4", fill_value=0)[:] = 3
    session.commit("signed with refreshed credentials")
    assert len(CREDENTIAL_CALLS) > first  # about to expire: fetched again
    readback = frazil.Repository.open(pickle.loads(pickle.dumps(storage)))
    arr = zarr.open_array(readback.readonly_session("main").store, path="a", mode="r")
    assert arr[:].tolist() == [3] * 4


@pytest.mark.parametrize(("valid_minutes", "fetched_again"), [(4, True), (7, False)])
def test_credentials_are_asked_again_five_minutes_before_expiry(
    valid_minutes: int, fetched_again: bool
) -> None:
    """obstore's provider is given the expiry less 5 minutes: credentials valid for 4
    more minutes are replaced at the next request, ones valid for 7 are kept."""
    CREDENTIAL_CALLS.clear()
    storage = _refreshable_storage(dt.timedelta(minutes=valid_minutes))
    assert not frazil.Repository.exists(storage)
    assert len(CREDENTIAL_CALLS) == 1
    assert not frazil.Repository.exists(storage)
    assert len(CREDENTIAL_CALLS) == (2 if fetched_again else 1)


def test_credentials_far_from_expiry_are_fetched_once() -> None:
    CREDENTIAL_CALLS.clear()
    storage = _refreshable_storage(dt.timedelta(hours=2), scatter_initial_credentials=True)
    assert len(CREDENTIAL_CALLS) == 1  # scattered: fetched at once
    repo = frazil.Repository.create(storage)
    for i in range(3):
        session = repo.writable_session("main")
        zarr.open_group(session.store, mode="a").attrs["i"] = i
        session.commit(f"c{i}")
    assert len(CREDENTIAL_CALLS) == 1


def test_refreshable_credentials_of_the_wrong_type_are_refused() -> None:
    srv = s3server.server()
    storage = frazil.s3_storage(
        bucket=s3server.BUCKET,
        prefix=s3server.new_prefix(),
        endpoint_url=srv.endpoint_url,
        allow_http=True,
        get_credentials=dict,  # returns {}, not credentials
    )
    with pytest.raises(StorageError, match="get_credentials returned dict.*S3StaticCredentials"):
        frazil.Repository.create(storage)


def test_credentials_returned_expired_are_used_and_asked_for_again() -> None:
    """Icechunk's behaviour: expired credentials from get_credentials are used for the
    request at hand (the server decides) and asked for again before the next one."""
    CREDENTIAL_CALLS.clear()
    storage = _refreshable_storage(dt.timedelta(seconds=-5))
    assert not frazil.Repository.exists(storage)  # no "still expired" error
    after_one = len(CREDENTIAL_CALLS)
    assert after_one >= 1
    assert not frazil.Repository.exists(storage)
    assert len(CREDENTIAL_CALLS) > after_one  # expired: fetched again


@pytest.mark.parametrize("scatter", [False, True])
def test_pickled_copies_carry_credentials_only_when_scattered(scatter: bool) -> None:
    CREDENTIAL_CALLS.clear()
    storage = _refreshable_storage(dt.timedelta(hours=2), scatter_initial_credentials=scatter)
    repo = frazil.Repository.create(storage)
    assert len(CREDENTIAL_CALLS) == 1
    copy = pickle.loads(pickle.dumps(repo))
    copy.ancestry(branch="main")  # looks the branch up at the call, as Icechunk's
    assert len(CREDENTIAL_CALLS) == (1 if scatter else 2)


def test_ancestry_looks_its_ref_up_at_the_call() -> None:
    repo = frazil.Repository.create(frazil.in_memory_storage())
    with pytest.raises(NotFoundError):
        repo.ancestry(branch="nope")  # not only when iterated
    assert [i.message for i in repo.ancestry(branch="main")] == ["Repository initialized"]


def test_forbidden_head_says_access_refused() -> None:
    """A HEAD refused with 403 (no body): an access error naming the key, not a miss."""
    srv = s3server.server()
    bad = frazil.s3_storage(
        bucket=s3server.BUCKET,
        prefix=s3server.new_prefix(),
        endpoint_url=srv.endpoint_url,
        allow_http=True,
        region="us-east-1",
        access_key_id="not-a-key",
        secret_access_key="not-a-secret",
    )
    with pytest.raises(StorageError, match="looking up 'refs/.*access refused") as info:
        frazil.Repository.exists(bad)
    assert not isinstance(info.value, NotFoundError)


def test_new_s3_from_icechunk_options_and_credentials() -> None:
    srv = s3server.server()
    options = frazil.S3Options(
        region="us-east-1",
        endpoint_url=srv.endpoint_url,
        allow_http=True,
        force_path_style=True,
        network_stream_timeout_seconds=7,
    )
    creds = frazil.s3_static_credentials(
        access_key_id=s3server.ACCESS_KEY, secret_access_key=s3server.SECRET_KEY
    )
    storage = frazil.Storage.new_s3(options, s3server.BUCKET, s3server.new_prefix(), creds)
    assert isinstance(storage, S3Storage) and storage.config.settings.read_timeout == 7.0
    frazil.Repository.create(storage)
    assert frazil.Repository.exists(storage)
    CREDENTIAL_CALLS.clear()
    refreshing = frazil.Storage.new_s3(
        options,
        s3server.BUCKET,
        s3server.new_prefix(),
        frazil.s3_refreshable_credentials(
            functools.partial(_credentials_valid_for, dt.timedelta(hours=1))
        ),
    )
    assert not frazil.Repository.exists(refreshing) and len(CREDENTIAL_CALLS) == 1
    with pytest.raises(InvalidInputError, match="S3Options"):
        frazil.Storage.new_s3({"region": "x"}, "b")
    assert isinstance(frazil.Storage.new_in_memory(), frazil.Storage)


def test_network_stream_timeout_sets_the_read_timeout() -> None:
    st = frazil.s3_storage(bucket="b", prefix="p", anonymous=True, network_stream_timeout_seconds=5)
    assert st.config.settings.read_timeout == 5.0
    st = frazil.s3_storage(bucket="b", prefix="p", anonymous=True, network_stream_timeout_seconds=0)
    assert st.config.settings.read_timeout == frazil.storage.s3.NO_READ_TIMEOUT
    with pytest.raises(InvalidInputError, match="network_stream_timeout_seconds"):
        frazil.s3_storage(bucket="b", prefix="p", network_stream_timeout_seconds=-1)
    assert frazil.s3_storage(bucket="b", prefix="p", requester_pays=True).config.requester_pays
