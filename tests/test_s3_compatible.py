"""Cloudflare R2 and Tigris (``r2_storage``, ``tigris_storage``): where the constructed
storage points (no network), Icechunk's signatures, and, through a recording proxy in front
of the S3 test server, that Tigris's consistency headers go out on every read and write
(obstore's default headers: sent with every request, outside the SigV4 signature)."""

from __future__ import annotations

import asyncio
import inspect
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import s3server

import frazil
from frazil.storage import ReadOnlyStorage, S3Storage


def run(coro: Any) -> Any:
    return asyncio.run(coro)


KEYS = {"access_key_id": "AKIDEXAMPLE", "secret_access_key": "secret"}


# -- R2 ----------------------------------------------------------------------------------------
def test_r2_points_at_the_account_endpoint() -> None:
    storage = frazil.r2_storage(bucket="b", prefix="p/q", account_id="0123abcd", **KEYS)
    assert isinstance(storage, S3Storage)
    c = storage.config
    assert c.endpoint_url == "https://0123abcd.r2.cloudflarestorage.com"
    assert (c.bucket, c.prefix, c.region, c.force_path_style) == ("b", "p/q", "auto", True)
    assert storage.supports_conditional_writes
    # the bucket as the first part of the prefix; an endpoint and region of one's own
    other = frazil.r2_storage(
        prefix="bucket/in/prefix", endpoint_url="https://r2.example", region="wnam", **KEYS
    )
    assert (other.config.bucket, other.config.prefix) == ("bucket", "in/prefix")
    assert (other.config.endpoint_url, other.config.region) == ("https://r2.example", "wnam")
    assert frazil.r2_storage(prefix="only-bucket", account_id="a1", **KEYS).config.prefix == ""
    assert frazil.r2_storage(
        bucket="b", account_id="a1", network_stream_timeout_seconds=5, **KEYS
    ).config.settings.read_timeout == pytest.approx(5.0)
    with pytest.raises(frazil.InvalidInputError, match="account_id or endpoint_url"):
        frazil.r2_storage(bucket="b", prefix="p")
    with pytest.raises(frazil.InvalidInputError, match="bucket"):
        frazil.r2_storage(account_id="a1")
    with pytest.raises(frazil.InvalidInputError, match="account_id"):
        frazil.r2_storage(bucket="b", account_id="evil.example/x")


# -- Tigris ------------------------------------------------------------------------------------
def test_tigris_points_at_tigris_with_consistency_headers() -> None:
    storage = frazil.tigris_storage(bucket="b", prefix="p", region="iad", **KEYS)
    assert isinstance(storage, S3Storage)
    c = storage.config
    assert (c.endpoint_url, c.bucket, c.prefix, c.region) == (
        "https://t3.storage.dev",
        "b",
        "p",
        "iad",
    )
    assert dict(c.write_headers) == {"X-Tigris-Regions": "iad", "X-Tigris-Consistent": "true"}
    assert dict(c.read_headers) == {**dict(c.write_headers), "Cache-Control": "no-cache"}
    with pytest.raises(frazil.InvalidInputError, match="region"):
        frazil.tigris_storage(bucket="b", prefix="p", **KEYS)
    weak = frazil.tigris_storage(
        bucket="b", prefix=None, use_weak_consistency=True, endpoint_url="https://t.example"
    )
    assert isinstance(weak, ReadOnlyStorage) and not weak.writable
    assert isinstance(weak.inner, S3Storage) and weak.inner.config.read_headers == ()
    assert weak.inner.config.endpoint_url == "https://t.example"
    with pytest.raises(frazil.ReadOnlyError):
        run(weak.put("k", b"v"))


def test_signatures_are_icechunks() -> None:
    def names(fn: Any) -> list[tuple[str, Any]]:
        return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]

    creds = [
        ("access_key_id", None),
        ("secret_access_key", None),
        ("session_token", None),
        ("expires_after", None),
        ("anonymous", None),
        ("from_env", None),
        ("get_credentials", None),
        ("scatter_initial_credentials", False),
        ("network_stream_timeout_seconds", 60),
    ]
    empty = inspect.Parameter.empty
    assert names(frazil.r2_storage) == [
        ("bucket", None),
        ("prefix", None),
        ("account_id", None),
        ("endpoint_url", None),
        ("region", None),
        ("allow_http", False),
        *creds,
    ]
    assert names(frazil.tigris_storage) == [
        ("bucket", empty),
        ("prefix", empty),
        ("region", None),
        ("endpoint_url", None),
        ("use_weak_consistency", False),
        ("allow_http", False),
        *creds,
    ]
    for fn in (frazil.r2_storage, frazil.tigris_storage):
        kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
        assert kinds == {inspect.Parameter.KEYWORD_ONLY}


# -- the headers, as sent ----------------------------------------------------------------------
class _Recorder(BaseHTTPRequestHandler):
    """Forwards each request to the S3 test server unchanged (its Host header too, which the
    signature covers) and records (method, headers)."""

    protocol_version = "HTTP/1.1"
    upstream = ""
    log: list[tuple[str, dict[str, str]]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        self.log.append((self.command, {k.lower(): v for k, v in headers.items()}))
        request = urllib.request.Request(
            self.upstream + self.path, data=body, method=self.command, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                status, out_headers, data = r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            status, out_headers, data = e.code, e.headers, e.read()
        self.send_response(status)
        for k, v in out_headers.items():
            if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _forward


@pytest.fixture
def recording_proxy(s3_server: s3server.SeaweedServer) -> Iterator[tuple[str, list[Any]]]:
    log: list[tuple[str, dict[str, str]]] = []
    handler = type("Recorder", (_Recorder,), {"upstream": s3_server.endpoint_url, "log": log})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", log
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_tigris_headers_are_sent_and_signed(recording_proxy: tuple[str, list[Any]]) -> None:
    endpoint, log = recording_proxy
    storage = frazil.tigris_storage(
        bucket=s3server.BUCKET,
        prefix=s3server.new_prefix(),
        region="iad",
        endpoint_url=endpoint,
        allow_http=True,
        access_key_id=s3server.ACCESS_KEY,
        secret_access_key=s3server.SECRET_KEY,
    )
    key = "refs/branch.main/ref.json"
    assert run(storage.put_if_absent(key, b"v0")).ok
    data, version = run(storage.get_with_version(key))
    assert data == b"v0" and run(storage.put_if_version(key, b"v1", version)).ok
    assert run(storage.exists(key)) and run(storage.list("refs/")) == [key]
    run(storage.delete([key]))  # DeleteObjects
    assert not run(storage.exists(key))
    methods = {m for m, _ in log}
    assert {"PUT", "GET", "HEAD", "POST"} <= methods
    for method, headers in log:
        assert headers.get("x-tigris-regions") == "iad", (method, headers)
        assert headers.get("x-tigris-consistent") == "true"
        assert headers["authorization"].startswith("AWS4-HMAC-SHA256 ")  # signed request
        # obstore sends one set of headers on every request: writes carry Cache-Control
        # too (stored with the object, it only makes caches revalidate)
        assert headers.get("cache-control") == "no-cache", (method, headers)
