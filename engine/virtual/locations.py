"""Virtual chunk locations: every URL parsed and normalised once into one canonical form.

A location (``s3://bucket/key``, ``gs://bucket/key``, ``http(s)://host/path``,
``file:///absolute/path``) is untrusted text: it comes from a repository anyone may have
written. ``parse_location`` turns it into a ``Location`` or refuses it, and only that
value is ever used afterwards: to decide which container holds it, and to read it. Nothing
decodes it again later, so no spelling of a path can mean one thing to the check and
another to the reader.

The rules (the same for container prefixes and for locations):

* the scheme is lower-cased (``gcs`` is ``gs``); for http(s) the host is lower-cased and a
  default port (80, 443) dropped; ``user:password@`` in a URL is refused (it would hide
  the real host), as is any host for ``file://`` but ``localhost``;
* the path is percent-decoded exactly once (as Icechunk's object store decodes it); the
  decoded path must be valid UTF-8 with no control characters or backslashes, and no
  ``.`` or ``..`` segment, spelled plainly or encoded (``%2e%2e``, ``..%2f``);
* a raw ``?`` or ``#`` is refused (it would cut the path short); encode it as ``%3F`` /
  ``%23`` when it is part of a name;
* a location lies in a container when their schemes and hosts (buckets) agree and the
  prefix's path segments begin the location's: ``s3://data`` holds ``s3://data/x.nc``
  but not ``s3://data-2/x.nc``, ``file:///srv/in`` holds ``file:///srv/in/a`` but not
  ``file:///srv/inside``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, unquote

__all__ = ["Location", "LocationError", "parse_location"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ALIASES = {"gcs": "gs", "s3a": "s3"}
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~\-]+)(:[0-9]{1,5})?$")
_BUCKET = re.compile(r"^[A-Za-z0-9._\-]+$")
_PATH_SAFE = "/~!$&'()*+,;=:@"  # left unencoded in the canonical text (RFC 3986 pchar)


class LocationError(ValueError):
    """``parse_location`` refused a location; the message says why."""


@dataclass(frozen=True, slots=True)
class Location:
    """A parsed, normalised location: ``scheme`` (lower case), ``host`` (a bucket, an
    http ``host[:port]``, or "" for local files) and the decoded ``path`` (starting with
    ``/`` unless empty)."""

    scheme: str
    host: str
    path: str

    @property
    def segments(self) -> tuple[str, ...]:
        """The path's segments, without the empty one a trailing ``/`` leaves."""
        parts = self.path.split("/")[1:]
        if parts and parts[-1] == "":
            parts.pop()
        return tuple(parts)

    @property
    def key(self) -> str:
        """The object key in its bucket (``s3``, ``gs``): the path without its ``/``."""
        return self.path[1:]

    @property
    def url(self) -> str:
        """The canonical text form (the path percent-encoded again where it must be)."""
        return f"{self.scheme}://{self.host}{quote(self.path, safe=_PATH_SAFE)}"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.host}"

    def contains(self, other: Location) -> bool:
        """``other`` lies under this location, taken as a container prefix."""
        if (self.scheme, self.host) != (other.scheme, other.host):
            return False
        mine = self.segments
        return other.segments[: len(mine)] == mine

    def __str__(self) -> str:
        return self.url


@lru_cache(maxsize=65536)
def parse_location(text: str) -> Location:
    """``text`` as a ``Location``, or ``LocationError`` saying what is wrong with it."""
    if not isinstance(text, str):
        raise LocationError(f"a location must be a string, got {type(text).__name__}")
    m = _SCHEME.match(text)
    if m is None:
        raise LocationError(f"error parsing location {text!r}: not a URL (scheme://...)")
    if _CONTROL.search(text):
        raise LocationError(f"location {text!r} contains control characters")
    if "?" in text or "#" in text:
        raise LocationError(
            f"location {text!r} has a '?' or '#' (a query or fragment is "
            "not part of an object's name; percent-encode them as %3F, %23)"
        )
    scheme = m.group(1).lower()
    scheme = _ALIASES.get(scheme, scheme)
    rest = text[m.end() :]
    host, slash, raw_path = rest.partition("/")
    path = slash + raw_path
    host = _host(text, scheme, host)
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise LocationError(f"location {text!r}: its path does not decode to UTF-8") from None
    if _CONTROL.search(decoded) or "\\" in decoded:
        raise LocationError(
            f"location {text!r}: its decoded path has control characters or backslashes"
        )
    if any(p in (".", "..") for p in decoded.split("/")):
        raise LocationError(
            f"location {text!r} has '.' or '..' path segments (spelled "
            "plainly or percent-encoded); they could step out of a container"
        )
    if scheme == "file" and not decoded.startswith("/"):
        raise LocationError(f"location {text!r}: a local file is file:///absolute/path")
    return Location(scheme, host, decoded)


def _host(text: str, scheme: str, host: str) -> str:
    if "@" in host:
        raise LocationError(
            f"location {text!r} has user information before its host "
            "('user@host'), which frazil refuses"
        )
    if scheme == "file":
        if host not in ("", "localhost"):
            raise LocationError(
                f"location {text!r}: file:// URLs name no host other than "
                "localhost (use file:///absolute/path)"
            )
        return ""
    if not host:
        raise LocationError(f"location {text!r} names no bucket or host")
    if scheme in _DEFAULT_PORTS:
        if not _HOST.match(host):
            raise LocationError(f"location {text!r}: {host!r} is not a host[:port]")
        host = host.lower()
        name, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        if port and name and port == _DEFAULT_PORTS[scheme]:
            host = name
        return host
    if not _BUCKET.match(host):
        raise LocationError(f"location {text!r}: {host!r} is not a bucket name")
    return host
