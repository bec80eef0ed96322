"""Cloudflare R2 and Tigris: Icechunk's ``r2_storage`` and ``tigris_storage`` on frazil's
S3 backend (``s3``), with their endpoints and quirks as Icechunk 1.1.21 handles them.

* R2: the endpoint is ``https://<account_id>.r2.cloudflarestorage.com`` unless
  ``endpoint_url`` is given; the region is ``auto`` unless given; path-style addressing; a
  bucket may come as the first part of ``prefix`` (``prefix="bucket/path"``). R2 throttles
  with 429, which the S3 backend retries.
* Tigris: the endpoint is ``https://t3.storage.dev`` unless given. Strong consistency
  needs the bucket's region: every read and write carries ``X-Tigris-Regions: <region>``
  and ``X-Tigris-Consistent: true``, reads also ``Cache-Control: no-cache``; without a
  region the constructor refuses. ``use_weak_consistency=True`` reads from the closest
  region, without those headers, and is read-only. Tigris may answer 499, retried.

Conditional create and compare-and-swap are S3's ``If-None-Match``/``If-Match``, which
both stores support.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any

from ..errors import InvalidInputError
from .base import Storage
from .readonly import ReadOnlyStorage
from .s3 import S3Settings, S3Storage, s3_storage, s3_storage_from_config

TIGRIS_ENDPOINT = "https://t3.storage.dev"
R2_REGION = "auto"


def _settings(network_stream_timeout_seconds: int) -> S3Settings:
    if not isinstance(network_stream_timeout_seconds, int) or network_stream_timeout_seconds < 0:
        raise InvalidInputError("network_stream_timeout_seconds must be an int >= 0")
    if network_stream_timeout_seconds == 0:  # Icechunk: no timeout; frazil keeps its default
        return S3Settings()
    return S3Settings(read_timeout=float(network_stream_timeout_seconds))


def r2_storage(
    *,
    bucket: str | None = None,
    prefix: str | None = None,
    account_id: str | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    allow_http: bool = False,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    expires_after: dt.datetime | None = None,
    anonymous: bool | None = None,
    from_env: bool | None = None,
    get_credentials: Callable[[], Any] | None = None,
    scatter_initial_credentials: bool = False,
    network_stream_timeout_seconds: int = 60,
) -> S3Storage:
    """Storage in a Cloudflare R2 bucket (Icechunk's signature): the endpoint from
    ``account_id`` (or ``endpoint_url``), region ``auto``, path-style requests. Without
    ``bucket``, the first part of ``prefix`` is the bucket. Credentials as ``s3_storage``."""
    if bucket is None:
        if not prefix:
            raise InvalidInputError("r2_storage: give bucket, or a prefix starting with it")
        bucket, _, rest = prefix.partition("/")
        prefix = rest
    if endpoint_url is None:
        if not account_id:
            raise InvalidInputError("r2_storage: give account_id or endpoint_url")
        if not account_id.isalnum():
            raise InvalidInputError(f"r2_storage: invalid account_id {account_id!r}")
        endpoint_url = f"https://{account_id}.r2.cloudflarestorage.com"
    return s3_storage(
        bucket=bucket,
        prefix=prefix or "",
        region=region or R2_REGION,
        endpoint_url=endpoint_url,
        allow_http=allow_http,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        session_token=session_token,
        expires_after=expires_after,
        anonymous=bool(anonymous),
        from_env=bool(from_env),
        force_path_style=True,
        get_credentials=get_credentials,
        scatter_initial_credentials=scatter_initial_credentials,
        settings=_settings(network_stream_timeout_seconds),
    )


def tigris_storage(
    *,
    bucket: str,
    prefix: str | None,
    region: str | None = None,
    endpoint_url: str | None = None,
    use_weak_consistency: bool = False,
    allow_http: bool = False,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    expires_after: dt.datetime | None = None,
    anonymous: bool | None = None,
    from_env: bool | None = None,
    get_credentials: Callable[[], Any] | None = None,
    scatter_initial_credentials: bool = False,
    network_stream_timeout_seconds: int = 60,
) -> Storage:
    """Storage in a Tigris bucket (Icechunk's signature). ``region`` (the bucket's) is
    needed for consistent reads and writes; ``use_weak_consistency=True`` gives a read-only
    storage reading from the closest region instead. Credentials as ``s3_storage``."""
    if not use_weak_consistency and not region:
        raise InvalidInputError(
            "tigris_storage needs the bucket's region for consistent reads and writes; or "
            "pass use_weak_consistency=True for read-only, eventually consistent reads "
            "(experts only)"
        )
    storage = s3_storage(
        bucket=bucket,
        prefix=prefix or "",
        region=region,
        endpoint_url=endpoint_url or TIGRIS_ENDPOINT,
        allow_http=allow_http,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        session_token=session_token,
        expires_after=expires_after,
        anonymous=bool(anonymous),
        from_env=bool(from_env),
        get_credentials=get_credentials,
        scatter_initial_credentials=scatter_initial_credentials,
        settings=_settings(network_stream_timeout_seconds),
    )
    if use_weak_consistency:
        return ReadOnlyStorage(storage)
    assert region is not None
    consistent = (("X-Tigris-Regions", region), ("X-Tigris-Consistent", "true"))
    return s3_storage_from_config(
        dataclasses.replace(
            storage.config,
            read_headers=(*consistent, ("Cache-Control", "no-cache")),
            write_headers=consistent,
        )
    )
