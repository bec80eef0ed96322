"""Direct S3 requests: SigV4-signed ``GetObject`` and ``PutObject`` sent over aiohttp,
bypassing botocore's request pipeline (the S3 backend's fast path for chunk traffic).

Reading and writing chunks is the hot path of every zarr read and write, and botocore's
generic machinery (event hooks, endpoint rules, user-agent assembly, response parsing)
costs about 1 ms of CPU per request, which on a small machine caps concurrent requests
long before the network does. A GET or PUT needs none of it: this module builds the URL,
signs it (AWS Signature Version 4, checked against botocore's signer in the tests) with the
client's current credentials, and sends it, for about a quarter of the CPU. Like botocore,
it signs the payload of a PUT over plain http (its SHA-256 protects the bytes in transit)
and leaves it unsigned over https (TLS does).

It answers only what it understands: for GETs 200, 206, 404 and 416; for PUTs 200, 412
(a failed ``If-None-Match``/``If-Match``) and 404; for both the transient statuses (429,
5xx) and transport errors, which the caller retries. For anything else (a redirect to
another region, 400, 403, ...), and for keys with characters that would need
percent-encoding, it returns ``None`` and the caller makes the request through botocore,
which knows how to report or follow it (a refused request changed nothing, so sending it
again is safe).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import inspect
import re
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from ..errors import NotFoundError, TransientStorageError

_SAFE_KEY = re.compile(r"[A-Za-z0-9._\-/]+")
_SAFE_BUCKET = re.compile(r"[a-z0-9][a-z0-9\-]*[a-z0-9]")
TRANSIENT_STATUS = frozenset({408, 429, 499, 500, 502, 503, 504})  # 499: Tigris


class RangeNotSatisfiable(Exception):
    """The server answered 416."""


class PreconditionFailed(Exception):
    """The server answered 412 to a conditional PUT."""


@contextmanager
def _transport_errors_are_transient(what: str) -> Iterator[None]:
    """A dropped connection, a timeout or a cut-off body: worth trying again."""
    import aiohttp

    try:
        yield
    except (
        aiohttp.ClientPayloadError,
        aiohttp.ClientConnectionError,
        TimeoutError,
        ConnectionError,
    ) as e:
        raise TransientStorageError(f"{what}: {type(e).__name__}: {e}") from e


def base_url(
    bucket: str, region: str | None, endpoint_url: str | None, force_path_style: bool
) -> str | None:
    """The URL that keys are appended to, or None where botocore must work it out (AWS
    with no region given: it discovers the bucket's region)."""
    if endpoint_url is not None:
        return f"{endpoint_url.rstrip('/')}/{bucket}/"
    if region is None:
        return None
    if force_path_style or not _SAFE_BUCKET.fullmatch(bucket):
        return f"https://s3.{region}.amazonaws.com/{bucket}/"
    return f"https://{bucket}.s3.{region}.amazonaws.com/"


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


UNSIGNED = "UNSIGNED-PAYLOAD"


class SigV4:
    """Signature Version 4 headers for S3 requests."""

    def __init__(self, region: str) -> None:
        self.region = region
        self._keys: dict[tuple[str, str], bytes] = {}  # (secret, date) -> signing key

    def _signing_key(self, secret: str, date: str) -> bytes:
        key = self._keys.get((secret, date))
        if key is None:
            key = _hmac(("AWS4" + secret).encode("utf-8"), date)
            for part in (self.region, "s3", "aws4_request"):
                key = _hmac(key, part)
            if len(self._keys) > 8:
                self._keys.clear()
            self._keys[(secret, date)] = key
        return key

    def headers(
        self,
        url: str,
        extra: dict[str, str],
        access_key: str,
        secret: str,
        token: str | None,
        now: dt.datetime | None = None,
        *,
        method: str = "GET",
        payload_hash: str = UNSIGNED,
    ) -> dict[str, str]:
        """All headers to send for ``method url`` (``url`` already percent-encoded);
        ``payload_hash`` is the hex SHA-256 of the body, or ``UNSIGNED-PAYLOAD``."""
        parts = urlsplit(url)
        stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
        date = stamp[:8]
        headers = {
            "host": parts.netloc,
            "x-amz-content-sha256": payload_hash,
            "x-amz-date": stamp,
            **{k.lower(): v for k, v in extra.items()},
        }
        if token:
            headers["x-amz-security-token"] = token
        names = sorted(headers)
        signed = ";".join(names)
        canonical = "\n".join(
            [
                method,
                parts.path or "/",
                parts.query,
                "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names),
                signed,
                payload_hash,
            ]
        )
        scope = f"{date}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256",
                stamp,
                scope,
                hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
            ]
        )
        signature = hmac.new(
            self._signing_key(secret, date), to_sign.encode("utf-8"), hashlib.sha256
        ).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        )
        return headers


class DirectClient:
    """Signed GETs and PUTs for one event loop: an aiohttp session and the client's
    credentials."""

    def __init__(
        self,
        base: str,
        region: str,
        s3_client: Any,
        anonymous: bool,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        read_headers: tuple[tuple[str, str], ...] = (),
        write_headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        import aiohttp

        self._read_headers = {k.lower(): v for k, v in read_headers}
        self._write_headers = {k.lower(): v for k, v in write_headers}
        self._base = base
        self._region = region
        self._client = s3_client  # aiobotocore client: source of (refreshed) credentials
        self._anonymous = anonymous
        self._signer = SigV4(region)
        self._sign_payload = not base.startswith("https://")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections),
            timeout=aiohttp.ClientTimeout(sock_connect=connect_timeout, sock_read=read_timeout),
            auto_decompress=False,
        )

    async def close(self) -> None:
        await self._session.close()

    async def _credentials(self) -> Any:
        creds = getattr(getattr(self._client, "_request_signer", None), "_credentials", None)
        if creds is None:
            return None
        frozen = creds.get_frozen_credentials()
        return await frozen if inspect.isawaitable(frozen) else frozen

    async def _sign(
        self, url: str, headers: dict[str, str], method: str = "GET", payload_hash: str = UNSIGNED
    ) -> dict[str, str] | None:
        """The headers to send, signed; None if there are no credentials to sign with."""
        if self._anonymous:
            return headers
        creds = await self._credentials()
        if creds is None:
            return None
        return self._signer.headers(
            url,
            headers,
            creds.access_key,
            creds.secret_key,
            creds.token,
            method=method,
            payload_hash=payload_hash,
        )

    async def get(
        self, key: str, range_header: str | None, what: str
    ) -> tuple[bytes, dict[str, Any], bool] | None:
        """(bytes, the response's ``ETag`` and ``LastModified`` as botocore names them,
        whether the range was applied), or None: ask botocore."""
        if not _SAFE_KEY.fullmatch(key):
            return None
        import yarl

        url = self._base + key
        wanted = dict(self._read_headers)
        if range_header is not None:
            wanted["range"] = range_header
        headers = await self._sign(url, wanted)
        if headers is None:
            return None
        with _transport_errors_are_transient(what):
            async with self._session.get(
                yarl.URL(url, encoded=True), headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
                if status in (200, 206):
                    data = await resp.read()
                    length = resp.headers.get("Content-Length")
                    if length is not None and int(length) != len(data):
                        raise TransientStorageError(
                            f"{what}: short read ({len(data)} of {length} bytes)"
                        )
                    meta: dict[str, Any] = {"ETag": resp.headers.get("ETag", "")}
                    modified = resp.headers.get("Last-Modified")
                    if modified:
                        try:
                            meta["LastModified"] = parsedate_to_datetime(modified)
                        except (TypeError, ValueError):
                            pass
                    return data, meta, status == 206
                if status == 404:
                    body = await resp.read()
                    if b"NoSuchBucket" in body:
                        return None  # let botocore word it
                    raise NotFoundError(f"{what}: not found")
                if status == 416:
                    raise RangeNotSatisfiable(what)
                if status in TRANSIENT_STATUS:
                    raise TransientStorageError(f"{what}: HTTP {status}")
                return None

    async def put(self, key: str, data: bytes, conditions: dict[str, str], what: str) -> str | None:
        """One PutObject: the new ETag ('' if the server sent none), or None: ask
        botocore. ``conditions`` are ``If-None-Match``/``If-Match`` headers; a failed one
        raises ``PreconditionFailed``, an ``If-Match`` on a missing key may raise
        ``NotFoundError`` (servers differ)."""
        if not _SAFE_KEY.fullmatch(key):
            return None
        import yarl

        url = self._base + key
        payload = hashlib.sha256(data).hexdigest() if self._sign_payload else UNSIGNED
        headers = await self._sign(
            url,
            {**self._write_headers, "content-length": str(len(data)), **conditions},
            "PUT",
            payload,
        )
        if headers is None:
            return None
        with _transport_errors_are_transient(what):
            async with self._session.put(
                yarl.URL(url, encoded=True), data=data, headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
                await resp.read()
                if status == 200:
                    return resp.headers.get("ETag", "")
                if status == 412:
                    raise PreconditionFailed(what)
                if status == 404 and "If-Match" in conditions:
                    raise NotFoundError(f"{what}: not found")
                if status in TRANSIENT_STATUS:
                    raise TransientStorageError(f"{what}: HTTP {status}")
                return None
