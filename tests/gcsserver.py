"""A small fake of Google Cloud Storage's XML API for the tests, on 127.0.0.1, started once
per test process on first use, with a log of every request it answers.

Why a fake: object_store (obstore) writes, reads, lists and deletes through GCS's XML API
(``PUT /<bucket>/<object>`` with ``x-goog-if-generation-match``, ``GET``/``HEAD`` with
``Range``, ``DELETE``, ``GET /<bucket>?list-type=2``). The emulators on the package
registries do not serve it: fake-gcs-server 1.x (its Python wheel) answers every such
``PUT`` with 400 "invalid uploadType", and gcp-storage-emulator has no XML ``DELETE`` nor
listing; both accept uploads whose generation precondition is false. This fake serves those
five requests, keeps objects in memory with GCS's generations (a new one on every write)
and enforces ``x-goog-if-generation-match`` (0: the object must not exist; n: its
generation must be n; else 412 Precondition Failed). What it proves is frazil's side: the
requests sent and frazil's handling of GCS's answers; that real GCS keeps those
preconditions is GCS's documented behaviour, not something these tests can observe.

A request whose bearer token is in ``refused_tokens`` gets 401.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.sax.saxutils import escape

BUCKET = "frazil-tests"
PAGE = 1000  # keys per listing page, as GCS


@dataclass
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str  # the object's name (percent-decoded), or "" for bucket requests
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names


@dataclass
class _Object:
    data: bytes
    generation: int
    modified: float


@dataclass
class FakeGcs:
    """The server's state: buckets of objects, the request log, the next generation."""

    buckets: dict[str, dict[str, _Object]] = field(default_factory=dict)
    log: list[Recorded] = field(default_factory=list)
    refused_tokens: set[str] = field(default_factory=lambda: {"refused-token"})
    lock: threading.Lock = field(default_factory=threading.Lock)
    _generation: int = 1_700_000_000_000_000

    def next_generation(self) -> int:
        self._generation += 1
        return self._generation

    def requests_for(self, prefix: str) -> list[Recorded]:
        """The logged requests on objects whose name starts with ``prefix``."""
        with self.lock:
            return [r for r in self.log if r.path.startswith(prefix)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: FakeGcs  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- plumbing ----------------------------------------------------------------------
    def _parse(self) -> tuple[str, str, dict[str, str]]:
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.lstrip("/").split("/", 1)
        bucket = urllib.parse.unquote(parts[0])
        name = urllib.parse.unquote(parts[1]) if len(parts) > 1 else ""
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        return bucket, name, query

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _error(self, status: int, code: str) -> None:
        body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code></Error>"
        self._send(status, body.encode(), {"Content-Type": "application/xml"})

    def _begin(self) -> tuple[str, str, dict[str, str], bytes] | None:
        bucket, name, query = self._parse()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        with self.state.lock:
            self.state.log.append(Recorded(self.command, name, query, headers))
        token = headers.get("authorization", "").removeprefix("Bearer ").strip()
        if token in self.state.refused_tokens:
            self._error(401, "AuthenticationRequired")
            return None
        if bucket not in self.state.buckets:
            self._error(404, "NoSuchBucket")
            return None
        return bucket, name, query, body

    @staticmethod
    def _meta(obj: _Object) -> dict[str, str]:
        return {
            "ETag": f'"{hashlib.md5(obj.data).hexdigest()}"',
            "x-goog-generation": str(obj.generation),
            "x-goog-metageneration": "1",
            "Last-Modified": email.utils.formatdate(obj.modified, usegmt=True),
            "Content-Type": "application/octet-stream",
        }

    # -- verbs -------------------------------------------------------------------------
    def do_PUT(self) -> None:
        begun = self._begin()
        if begun is None:
            return
        bucket, name, _, body = begun
        match = self.headers.get("x-goog-if-generation-match")
        if match is not None and not match.isdecimal():
            self._error(400, "InvalidArgument")
            return
        with self.state.lock:
            objects = self.state.buckets[bucket]
            current = objects.get(name)
            if match is not None:
                wanted = int(match)
                if (wanted == 0 and current is not None) or (
                    wanted != 0 and (current is None or current.generation != wanted)
                ):
                    failed = True
                else:
                    failed = False
            else:
                failed = False
            if not failed:
                obj = _Object(body, self.state.next_generation(), time.time())
                objects[name] = obj
        if failed:
            self._error(412, "PreconditionFailed")
            return
        meta = self._meta(obj)
        self._send(200, b"", {k: meta[k] for k in ("ETag", "x-goog-generation")})

    def do_GET(self) -> None:
        begun = self._begin()
        if begun is None:
            return
        bucket, name, query, _ = begun
        if not name:
            self._list(bucket, query)
            return
        with self.state.lock:
            obj = self.state.buckets[bucket].get(name)
        if obj is None:
            self._error(404, "NoSuchKey")
            return
        headers = self._meta(obj)
        wanted = self.headers.get("Range")
        if wanted is None:
            self._send(200, obj.data, headers)
            return
        size = len(obj.data)
        first, _, last = wanted.removeprefix("bytes=").partition("-")
        if first == "":
            start, end = max(0, size - int(last)), size - 1
        else:
            start, end = int(first), (int(last) if last else size - 1)
        if start >= size:
            self._error(416, "InvalidRange")
            return
        end = min(end, size - 1)
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._send(206, obj.data[start : end + 1], headers)

    do_HEAD = do_GET

    def do_DELETE(self) -> None:
        begun = self._begin()
        if begun is None:
            return
        bucket, name, _, _ = begun
        with self.state.lock:
            gone = self.state.buckets[bucket].pop(name, None)
        if gone is None:
            self._error(404, "NoSuchKey")
        else:
            self._send(204)

    def _list(self, bucket: str, query: dict[str, str]) -> None:
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter")
        after = query.get("continuation-token") or query.get("start-after") or ""
        with self.state.lock:
            names = sorted(
                (n, o) for n, o in self.state.buckets[bucket].items() if n.startswith(prefix)
            )
        contents: list[str] = []
        prefixes: list[str] = []
        last = ""
        for n, o in names:
            if n <= after:
                continue
            if len(contents) + len(prefixes) >= PAGE:
                break
            rest = n[len(prefix) :]
            if delimiter and delimiter in rest:
                common = prefix + rest.split(delimiter, 1)[0] + delimiter
                if common not in prefixes:
                    prefixes.append(common)
                last = n
                continue
            modified = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(o.modified))
            contents.append(
                f"<Contents><Key>{escape(n)}</Key><Size>{len(o.data)}</Size>"
                f"<LastModified>{modified}</LastModified></Contents>"
            )
            last = n
        more = bool(names) and last != "" and last < names[-1][0]
        token = f"<NextContinuationToken>{escape(last)}</NextContinuationToken>" if more else ""
        body = (
            "<?xml version='1.0' encoding='UTF-8'?><ListBucketResult>"
            f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix>"
            + "".join(contents)
            + "".join(
                f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>" for p in prefixes
            )
            + token
            + "</ListBucketResult>"
        )
        self._send(200, body.encode(), {"Content-Type": "application/xml"})


@dataclass
class GcsServer:
    """One running fake (its HTTP server thread) and its state."""

    httpd: ThreadingHTTPServer
    state: FakeGcs
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def config(self) -> dict[str, str]:
        """``gcs_storage(config=...)`` for this server."""
        return {"base_url": self.url, "allow_http": "true"}

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def start() -> GcsServer:
    state = FakeGcs()
    state.buckets[BUCKET] = {}
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="fake-gcs", daemon=True)
    thread.start()
    return GcsServer(httpd, state, thread)


_lock = threading.Lock()
_server: GcsServer | None = None
_owner_pid: int | None = None


def server() -> GcsServer:
    """The process's fake GCS, started on first use."""
    global _server, _owner_pid
    with _lock:
        if _server is None or _owner_pid != os.getpid():
            _server = start()
            _owner_pid = os.getpid()
        return _server


def shutdown() -> None:
    global _server
    with _lock:
        if _server is not None and _owner_pid == os.getpid():
            _server.stop()
        _server = None


def storage(prefix: str | None = None, **kwargs: Any) -> Any:
    """A GCS storage on the fake under ``prefix`` (a fresh one if None), with a bearer
    token unless other credentials are given."""
    import frazil

    srv = server()
    credentials = {} if kwargs else {"bearer_token": "test-token"}
    return frazil.gcs_storage(
        bucket=BUCKET,
        prefix=prefix if prefix is not None else new_prefix(),
        config=srv.config,
        **credentials,
        **kwargs,
    )


def new_prefix() -> str:
    return f"t/{uuid.uuid4().hex}"
