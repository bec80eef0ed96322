"""The S3 backend against a real server (SeaweedFS on 127.0.0.1, see s3server.py): zarr's
store conformance suite over S3, several processes committing to one branch, and what is
particular to S3 (error codes, retries, lost acknowledgements, stores without
conditional writes, pickling, one client per event loop).

The storage conformance suite (tests/test_storage.py) and the repository tests
(tests/test_repository.py) run on S3 too, through their backend lists.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import multiprocessing as mp
import pickle
import warnings
from typing import Any

import numpy as np
import pytest
import s3server
import zarr
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError
from test_zarr_store import _FrazilStoreTests

import frazil
from frazil import runtime
from frazil.errors import (
    InvalidInputError,
    NotFoundError,
    StorageError,
    TransientStorageError,
)
from frazil.storage import S3Settings, S3Storage
from frazil.storage.s3 import is_precondition_failed, translate


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


# -- errors: decided by code and status, never by message text -----------------------------------
def client_error(code: str | None, status: int, message: str = "whatever") -> ClientError:
    error: dict[str, Any] = {"Message": message}
    if code is not None:
        error["Code"] = code
    return ClientError(
        {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


def wrapped(cause: BaseException, message: str = "some text") -> OSError:
    """What s3fs raises: an OSError whose __cause__ is botocore's error."""
    err = OSError(22, message)
    err.__cause__ = cause
    return err


def test_precondition_failure_from_code_or_status() -> None:
    assert is_precondition_failed(client_error("PreconditionFailed", 412))
    assert is_precondition_failed(client_error(None, 412))  # a 412 without a code
    assert is_precondition_failed(wrapped(client_error("PreconditionFailed", 412)))
    assert is_precondition_failed(FileExistsError("x")) is False  # no cause: not decided
    # the message text is never used
    assert not is_precondition_failed(
        OSError(22, "At least one of the pre-conditions you specified did not hold")
    )
    assert not is_precondition_failed(
        wrapped(client_error("AccessDenied", 403, "PreconditionFailed 412"))
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (client_error("SlowDown", 503), TransientStorageError),
        (wrapped(client_error("SlowDown", 503)), TransientStorageError),
        (client_error(None, 503), TransientStorageError),
        (client_error("InternalError", 500), TransientStorageError),
        (client_error("RequestTimeout", 400), TransientStorageError),
        (client_error("ConditionalRequestConflict", 409), TransientStorageError),
        (ConnectionClosedError(endpoint_url="http://127.0.0.1:1"), TransientStorageError),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), TransientStorageError),
        (TimeoutError(), TransientStorageError),
        (client_error("NoSuchKey", 404), NotFoundError),
        (wrapped(client_error("404", 404)), NotFoundError),
        (client_error("AccessDenied", 403), StorageError),
        (client_error("NoSuchBucket", 404), StorageError),
        (OSError(5, "SlowDown: reduce your request rate"), StorageError),  # text is not a code
    ],
)
def test_error_translation(error: BaseException, expected: type) -> None:
    got = translate(error, "op")
    assert type(got) is expected


# -- retries and lost acknowledgements on the real server -------------------------------------
class FlakyCalls:
    """Wraps the running loop's s3fs ``_call_s3``: fails the first ``before`` calls of
    ``method`` with ``error`` without sending them, then lets ``after`` calls run on the
    server but raises ``error`` instead of their answers (a lost response). ``sent``
    counts the calls of ``method`` that reached the server."""

    def __init__(
        self,
        storage: S3Storage,
        method: str,
        error: BaseException,
        *,
        before: int = 0,
        after: int = 0,
    ) -> None:
        self.storage, self.method, self.error = storage, method, error
        self.before, self.after, self.sent = before, after, 0

    async def install(self) -> None:
        client = await self.storage._clients.get()
        real = client.fs._call_s3

        async def call(method: str, *args: Any, **kwargs: Any) -> Any:
            if method != self.method:
                return await real(method, *args, **kwargs)
            if self.before > 0:
                self.before -= 1
                raise self.error
            self.sent += 1
            out = await real(method, *args, **kwargs)
            if self.after > 0:
                self.after -= 1
                raise self.error
            return out

        client.fs._call_s3 = call


def fast(**kw: Any) -> S3Storage:
    storage: S3Storage = s3server.storage(backoff_base=0.001, backoff_cap=0.01, **kw)
    return storage


def test_throttling_is_retried() -> None:
    storage = fast(direct_put=False)  # PUTs through botocore, where FlakyCalls hooks in

    async def go() -> bytes:
        flaky = FlakyCalls(storage, "put_object", wrapped(client_error("SlowDown", 503)), before=3)
        await flaky.install()
        await storage.put("a", b"data")
        assert flaky.sent == 1
        return await storage.get("a")

    assert run(go()) == b"data"


def test_retries_are_bounded() -> None:
    storage = fast(max_attempts=3, direct_get=False)  # GETs through botocore

    async def go() -> None:
        flaky = FlakyCalls(storage, "get_object", client_error("SlowDown", 503), before=10)
        await flaky.install()
        await storage.put("a", b"data")
        with pytest.raises(TransientStorageError, match="gave up after 3 attempts"):
            await storage.get("a")
        assert flaky.before == 7

    run(go())


@pytest.mark.parametrize("kind", ["create", "update"])
def test_lost_ack_on_conditional_put_is_not_a_conflict(kind: str) -> None:
    """The first attempt lands but its answer is lost; the retry fails its precondition
    (because of our own write): the read-back sees our bytes, so the put succeeded."""
    storage = fast(direct_put=False)
    key = "refs/branch.main/ref.json"

    async def go() -> None:
        if kind == "update":
            await storage.put(key, b"old")
            _, version = await storage.get_with_version(key)
        flaky = FlakyCalls(
            storage, "put_object", ConnectionClosedError(endpoint_url="http://lost"), after=1
        )
        await flaky.install()
        data = b'{"snapshot": "S", "write_id": "unique-1"}'
        if kind == "create":
            result = await storage.put_if_absent(key, data)
        else:
            result = await storage.put_if_version(key, data, version)
        assert flaky.sent == 2  # it landed, then the retry was refused
        assert result.ok is True
        assert (data, result.version) == await storage.get_with_version(key)

    run(go())


def test_lost_ack_then_real_conflict_is_reported() -> None:
    """An attempt failed without an answer, but it had not landed, and another writer
    won meanwhile: the read-back shows their bytes, so this is a lost race."""
    storage = fast(direct_put=False)
    key = "refs/branch.main/ref.json"

    async def go() -> None:
        await storage.put(key, b"old")
        _, version = await storage.get_with_version(key)
        theirs = await storage.put_if_version(key, b"theirs", version)
        assert theirs.ok
        flaky = FlakyCalls(storage, "put_object", client_error("SlowDown", 503), before=1)
        await flaky.install()
        result = await storage.put_if_version(key, b"ours", version)
        assert result.ok is False
        assert result.version == theirs.version
        assert await storage.get(key) == b"theirs"

    run(go())


# -- stores without conditional writes ----------------------------------------------------------
def test_unsafe_settings_off_warn_and_use_plain_puts() -> None:
    with pytest.warns(UserWarning, match="concurrent commits .* can be lost"):
        storage = s3server.storage(
            unsafe_use_conditional_update=False,
            unsafe_use_conditional_create=False,
            direct_put=False,
        )
    assert storage.supports_conditional_writes is False

    async def go() -> None:
        client = await storage._clients.get()
        real = client.fs._call_s3
        seen: list[dict[str, Any]] = []

        async def call(method: str, *args: Any, **kwargs: Any) -> Any:
            if method == "put_object":
                seen.append(kwargs)
            return await real(method, *args, **kwargs)

        client.fs._call_s3 = call
        created = await storage.put_if_absent("k", b"one")
        assert created.ok
        assert not (await storage.put_if_absent("k", b"two")).ok
        swapped = await storage.put_if_version("k", b"three", created.version or "")
        assert swapped.ok
        assert not (await storage.put_if_version("k", b"four", created.version or "")).ok
        assert await storage.get("k") == b"three"
        assert all("IfMatch" not in kw and "IfNoneMatch" not in kw for kw in seen)
        assert len(seen) == 2

    run(go())
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
    storage = frazil.s3_storage(
        **base,
        region="eu-west-1",
        anonymous=True,
        settings=S3Settings(max_concurrency=4),
        max_attempts=3,
    )
    assert storage.config.settings.max_concurrency == 4
    assert storage.config.settings.max_attempts == 3
    assert storage.describe() == "s3://b/p/"
    assert "secret" not in repr(
        frazil.s3_storage(**base, access_key_id="k", secret_access_key="secret")
    )


def test_pickles_only_its_configuration() -> None:
    storage = s3server.storage()
    run(storage.put("x", b"1"))  # a client exists now (for that loop)
    assert set(storage.__getstate__()) == {"config"}
    clone = pickle.loads(pickle.dumps(storage))
    assert clone.config == storage.config
    assert len(clone._clients) == 0
    assert run(clone.get("x")) == b"1"


def test_missing_bucket_is_a_storage_error_not_not_found() -> None:
    storage = s3server.storage(bucket="frazil-no-such-bucket", max_attempts=2)
    with pytest.raises(StorageError) as info:
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


# -- one client per event loop ------------------------------------------------------------------
def test_one_client_per_loop_closed_with_its_loop() -> None:
    storage = s3server.storage()

    async def use() -> Any:
        await storage.put("k", b"v")
        client = await storage._clients.get()
        assert client is await storage._clients.get()  # reused on the same loop
        return client

    first = run(use())
    assert len(storage._clients) == 0  # asyncio.run shut the loop down: client closed
    assert first.fs._s3._endpoint.http_session._sessions is None
    second = run(use())
    assert second is not first

    # the engine's own loop keeps its client between calls
    other = s3server.storage()
    repo = frazil.Repository.create(other)
    assert repo.list_branches() == {"main"}
    assert len(other._clients) == 1


@pytest.mark.parametrize("direct", [True, False])
def test_concurrent_reads_go_out_together(direct: bool) -> None:
    """Many gets on one loop share one client and are in flight together (bounded), on
    the direct GET path and through botocore."""
    storage = s3server.storage(max_concurrency=8, direct_get=direct, direct_put=direct)
    keys = [f"chunks/{i:04d}" for i in range(64)]

    async def go() -> list[bytes]:
        await asyncio.gather(*(storage.put(k, k.encode()) for k in keys))
        await storage.get(keys[0])
        client = await storage._clients.get()
        assert (client.direct is not None) is direct
        target = client.direct if direct else client.fs
        name = "get" if direct else "_call_s3"
        real = getattr(target, name)
        in_flight = peak = calls = 0

        async def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal in_flight, peak, calls
            in_flight += 1
            calls += 1
            peak = max(peak, in_flight)
            try:
                return await real(*args, **kwargs)
            finally:
                in_flight -= 1

        setattr(target, name, call)
        botocore_gets = 0
        if direct:  # and botocore is not asked: the server accepted every signature
            real_s3 = client.fs._call_s3

            async def count(method: str, *args: Any, **kwargs: Any) -> Any:
                nonlocal botocore_gets
                botocore_gets += method == "get_object"
                return await real_s3(method, *args, **kwargs)

            client.fs._call_s3 = count
        out = await asyncio.gather(*(storage.get(k) for k in keys))
        assert 1 < peak <= 8 and calls == len(keys) and botocore_gets == 0
        return out

    assert run(go()) == [k.encode() for k in keys]


# -- the direct GET path ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url, extra, token",
    [
        ("http://127.0.0.1:8333/bucket/prefix/chunks/ABC", {}, None),
        (
            "https://bucket.s3.eu-west-1.amazonaws.com/p/manifests/X_Y-z.1",
            {"Range": "bytes=5-99"},
            "session-token/with+chars=",
        ),
        (
            "https://s3.us-east-1.amazonaws.com/my.bucket/snapshots/0",
            {"Range": "bytes=-65536"},
            None,
        ),
    ],
)
def test_sigv4_signature_matches_botocore(
    url: str, extra: dict[str, str], token: str | None
) -> None:
    import datetime as dt

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from frazil.storage._s3get import SigV4

    region = url.split(".s3.")[1].split(".")[0] if ".s3." in url else "us-east-1"
    request = AWSRequest("GET", url, headers={**extra, "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})

    class Unsigned(S3SigV4Auth):  # botocore signs the payload of plain-http requests
        def _should_sha256_sign_payload(self, request: Any) -> bool:
            return False

    Unsigned(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", token), "s3", region).add_auth(
        request
    )
    now = dt.datetime.strptime(request.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(
        tzinfo=dt.UTC
    )  # sign ours at the time botocore did
    ours = SigV4(region).headers(url, extra, "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", token, now=now)
    assert ours["x-amz-date"] == request.headers["X-Amz-Date"]
    assert ours["authorization"] == request.headers["Authorization"]


@pytest.mark.parametrize("conditions", [{}, {"If-None-Match": "*"}, {"If-Match": '"abc"'}])
def test_sigv4_put_signature_matches_botocore(conditions: dict[str, str]) -> None:
    """A PUT over plain http signs its payload's SHA-256, as botocore does."""
    import datetime as dt
    import hashlib

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from frazil.storage._s3get import SigV4

    url, body = "http://127.0.0.1:8333/bucket/prefix/chunks/ABC", b"chunk bytes" * 100
    extra = {"Content-Length": str(len(body)), **conditions}
    request = AWSRequest("PUT", url, data=body, headers=dict(extra))
    S3SigV4Auth(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG"), "s3", "us-east-1").add_auth(
        request
    )
    now = dt.datetime.strptime(request.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(
        tzinfo=dt.UTC
    )
    ours = SigV4("us-east-1").headers(
        url,
        extra,
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG",
        None,
        now=now,
        method="PUT",
        payload_hash=hashlib.sha256(body).hexdigest(),
    )
    assert ours["x-amz-content-sha256"] == request.headers["X-Amz-Content-SHA256"]
    assert ours["authorization"] == request.headers["Authorization"]


class FakeS3:
    """An HTTP server on 127.0.0.1 that answers each GET or PUT with the next (status,
    body, headers) of a script, to see how the direct path reads real HTTP answers."""

    def __init__(self, script: list[tuple[int, bytes, dict[str, str]]]) -> None:
        self.script = list(script)
        self.seen: list[dict[str, str]] = []
        self.bodies: list[bytes] = []

    async def __aenter__(self) -> str:
        from aiohttp import web

        async def handle(request: Any) -> Any:
            self.seen.append(dict(request.headers))
            self.bodies.append(await request.read())
            status, body, headers = self.script.pop(0)
            resp = web.StreamResponse(status=status, headers=headers)
            resp.content_length = int(headers.get("X-Claimed-Length", len(body)))
            await resp.prepare(request)
            await resp.write(body)
            return resp

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        app.router.add_put("/{tail:.*}", handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: Any) -> None:
        await self.runner.cleanup()


def test_direct_get_reads_statuses_right() -> None:
    from frazil.storage._s3get import DirectClient, RangeNotSatisfiable

    script = [
        (200, b"whole", {"ETag": '"e1"', "Last-Modified": "Wed, 25 Nov 2026 06:30:15 GMT"}),
        (206, b"part", {"ETag": '"e2"', "Content-Range": "bytes 0-3/9"}),
        (404, b"<Error><Code>NoSuchKey</Code></Error>", {}),
        (404, b"<Error><Code>NoSuchBucket</Code></Error>", {}),
        (416, b"", {}),
        (503, b"<Error><Code>SlowDown</Code></Error>", {}),
        (500, b"", {}),
        (403, b"<Error><Code>AccessDenied</Code></Error>", {}),
        (301, b"", {"Location": "http://elsewhere/"}),
        (200, b"shor", {"X-Claimed-Length": "10"}),  # connection closes early
    ]

    async def go() -> None:
        fake = FakeS3(script)
        async with fake as url:

            class Creds:
                def get_frozen_credentials(self) -> Any:
                    from botocore.credentials import ReadOnlyCredentials

                    return ReadOnlyCredentials("AK", "SK", None)

            client = type(
                "C", (), {"_request_signer": type("S", (), {"_credentials": Creds()})()}
            )()
            g = DirectClient(url + "/b/", "us-east-1", client, False, 5, 5, 4)
            try:
                import datetime as dt

                assert await g.get("k", None, "w") == (
                    b"whole",
                    {
                        "ETag": '"e1"',
                        "LastModified": dt.datetime(2026, 11, 25, 6, 30, 15, tzinfo=dt.UTC),
                    },
                    False,
                )
                assert await g.get("k", "bytes=0-3", "w") == (b"part", {"ETag": '"e2"'}, True)
                assert fake.seen[1]["Range"] == "bytes=0-3"
                assert fake.seen[0]["Authorization"].startswith("AWS4-HMAC-SHA256 ")
                with pytest.raises(NotFoundError, match="w: not found"):
                    await g.get("k", None, "w")
                assert await g.get("k", None, "w") is None  # missing bucket: botocore words it
                with pytest.raises(RangeNotSatisfiable):
                    await g.get("k", "bytes=10-20", "w")
                for _ in range(2):
                    with pytest.raises(TransientStorageError, match="HTTP 5"):
                        await g.get("k", None, "w")
                assert await g.get("k", None, "w") is None  # 403: botocore reports it
                assert await g.get("k", None, "w") is None  # redirect: botocore follows
                with pytest.raises(TransientStorageError):
                    await g.get("k", None, "w")
                # a key needing percent-encoding is left to botocore, without a request
                assert await g.get("k with space", None, "w") is None
                assert not fake.script and len(fake.seen) == 10
            finally:
                await g.close()

    run(go())


def test_direct_put_reads_statuses_right() -> None:
    from frazil.storage._s3get import DirectClient, PreconditionFailed

    script = [
        (200, b"", {"ETag": '"e1"'}),
        (200, b"", {}),  # no ETag: the caller asks with a HEAD
        (412, b"<Error><Code>PreconditionFailed</Code></Error>", {}),
        (404, b"<Error><Code>NoSuchKey</Code></Error>", {}),  # If-Match on a missing key
        (503, b"<Error><Code>SlowDown</Code></Error>", {}),
        (403, b"<Error><Code>AccessDenied</Code></Error>", {}),
        (404, b"<Error><Code>NoSuchBucket</Code></Error>", {}),  # unconditional: botocore
    ]

    async def go() -> None:
        fake = FakeS3(script)
        async with fake as url:
            g = DirectClient(url + "/b/", "us-east-1", _fake_client(), False, 5, 5, 4)
            try:
                assert await g.put("k", b"data", {}, "w") == '"e1"'
                assert fake.bodies[0] == b"data"
                assert fake.seen[0]["Authorization"].startswith("AWS4-HMAC-SHA256 ")
                import hashlib

                assert fake.seen[0]["x-amz-content-sha256"] == hashlib.sha256(b"data").hexdigest()
                assert await g.put("k", b"data", {"If-None-Match": "*"}, "w") == ""
                assert fake.seen[1]["If-None-Match"] == "*"
                with pytest.raises(PreconditionFailed):
                    await g.put("k", b"data", {"If-None-Match": "*"}, "w")
                with pytest.raises(NotFoundError):
                    await g.put("k", b"data", {"If-Match": '"x"'}, "w")
                with pytest.raises(TransientStorageError, match="HTTP 503"):
                    await g.put("k", b"data", {}, "w")
                assert await g.put("k", b"data", {}, "w") is None  # 403: botocore reports
                assert await g.put("k", b"data", {}, "w") is None
                assert await g.put("k with space", b"data", {}, "w") is None  # not sent
                assert not fake.script and len(fake.seen) == 7
            finally:
                await g.close()

    run(go())


def _fake_client() -> Any:
    """Stands in for the aiobotocore client the direct path takes credentials from."""

    class Creds:
        def get_frozen_credentials(self) -> Any:
            from botocore.credentials import ReadOnlyCredentials

            return ReadOnlyCredentials("AK", "SK", None)

    return type("C", (), {"_request_signer": type("S", (), {"_credentials": Creds()})()})()


@pytest.mark.parametrize("kind", ["create", "update"])
def test_lost_ack_on_a_direct_put_is_not_a_conflict(kind: str) -> None:
    """The fast path's conditional PUT lands on the real server but its answer is lost:
    the retry fails its precondition, the read-back sees our bytes: success."""
    storage = fast()
    key = "refs/branch.main/ref.json"

    async def go() -> None:
        version = ""
        if kind == "update":
            await storage.put(key, b"old")
            _, version = await storage.get_with_version(key)
        client = await storage._clients.get()
        direct = await storage._direct(client)
        assert direct is not None
        real, sent = direct.put, []

        async def lose_first_answer(*args: Any) -> Any:
            out = await real(*args)
            sent.append(out)
            if len(sent) == 1:
                raise TransientStorageError("the answer was lost")
            return out

        direct.put = lose_first_answer  # type: ignore[method-assign]
        data = b'{"snapshot": "S", "write_id": "unique-2"}'
        if kind == "create":
            result = await storage.put_if_absent(key, data)
        else:
            result = await storage.put_if_version(key, data, version)
        assert len(sent) == 1  # landed; the retry was refused (412 raises, not appended)
        assert result.ok is True
        assert (data, result.version) == await storage.get_with_version(key)

    run(go())


def test_commits_write_through_the_direct_path() -> None:
    """A commit's chunk, manifest, snapshot, transaction-log and ref writes (conditional
    ones included) all take the fast path on the real server: botocore puts nothing."""
    storage = s3server.storage()
    repo = frazil.Repository.create(storage)
    session = repo.writable_session("main")
    botocore_puts = []

    async def hook() -> None:
        client = await storage._clients.get()
        real = client.fs._call_s3

        async def count(method: str, *args: Any, **kwargs: Any) -> Any:
            botocore_puts.extend([method] if method == "put_object" else [])
            return await real(method, *args, **kwargs)

        client.fs._call_s3 = count

    runtime.run(hook())
    arr = zarr.create_array(session.store, name="a", shape=(64,), chunks=(8,), dtype="i4")
    arr[:] = np.arange(64, dtype="i4")
    sid = session.commit("direct")
    repo.create_tag("t", sid)
    assert botocore_puts == []
    reread = frazil.Repository.open(s3server.storage(storage.config.prefix))
    a = zarr.open_array(reread.readonly_session(tag="t").store, path="a", mode="r")
    assert (a[:] == np.arange(64)).all()


def test_direct_put_goes_to_botocore_for_its_errors() -> None:
    """A PUT the fast path does not understand (403, a bad secret) is made again through
    botocore, whose error names the S3 error code; nothing is written."""
    srv = s3server.server()
    prefix = s3server.new_prefix()
    storage = frazil.s3_storage(
        bucket=s3server.BUCKET,
        prefix=prefix,
        endpoint_url=srv.endpoint_url,
        allow_http=True,
        region="us-east-1",
        access_key_id=s3server.ACCESS_KEY,
        secret_access_key="wrong-secret",
        max_attempts=1,
    )
    with pytest.raises(StorageError, match="SignatureDoesNotMatch|AccessDenied|InvalidAccess"):
        run(storage.put("k", b"data"))
    assert run(s3server.storage(prefix).list("")) == []


def test_direct_get_falls_back_to_botocore_for_its_errors() -> None:
    """A request the direct path does not understand (here 403, bad credentials) is made
    again through botocore, whose error names the S3 error code."""
    srv = s3server.server()
    storage = frazil.s3_storage(
        bucket=s3server.BUCKET,
        prefix=s3server.new_prefix(),
        endpoint_url=srv.endpoint_url,
        allow_http=True,
        region="us-east-1",
        access_key_id=s3server.ACCESS_KEY,
        secret_access_key="wrong-secret",
        max_attempts=1,
    )
    with pytest.raises(StorageError, match="SignatureDoesNotMatch|AccessDenied|InvalidAccess"):
        run(storage.get("k"))


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
    with pytest.raises(frazil.InvalidInputError, match="S3StaticCredentials"):
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


def test_forbidden_head_reports_the_servers_code() -> None:
    """A HEAD refused with 403 has no body: the error still names the server's code
    (learnt from a one-byte GET of the same key)."""
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
    with pytest.raises(StorageError, match="InvalidAccessKeyId"):
        frazil.Repository.exists(bad)


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
    with pytest.raises(InvalidInputError, match="requester_pays"):
        frazil.s3_storage(bucket="b", prefix="p", requester_pays=True)
