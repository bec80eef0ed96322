"""Typed, coordination-free object ids with a stable text form.

An id is 12 bytes: the first 6 are the creation time in milliseconds (big-endian), the rest
are random, so ids sort by creation time and never collide in practice. Node ids are 8 bytes,
all random (a time prefix would leave too few random bits: two nodes made in the same
millisecond would collide). The text form is Crockford base32 without padding (20
characters for 12 bytes, 13 for 8), which sorts like the bytes; ``parse`` accepts only the
canonical text (either case).
"""

from __future__ import annotations

import base64
import os
import time
from typing import ClassVar, Self

import numpy as np

from .errors import FormatError

_CROCKFORD = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class ObjectId:
    """Base class of the typed ids. Ids of different types never compare equal."""

    __slots__ = ("raw", "_text")
    SIZE: ClassVar[int] = 12
    raw: bytes
    _text: str | None  # the text form, once made (or parsed)

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes) or len(raw) != self.SIZE:
            raise FormatError(f"{type(self).__name__} must be {self.SIZE} bytes, got {raw!r}")
        object.__setattr__(self, "raw", raw)
        object.__setattr__(self, "_text", None)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("ids are immutable")

    @classmethod
    def new(cls) -> Self:
        """A fresh id: 6 bytes of milliseconds since the epoch, then random bytes."""
        ms = time.time_ns() // 1_000_000
        return cls(ms.to_bytes(6, "big") + os.urandom(cls.SIZE - 6))

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse the text form; raises ``FormatError`` naming the bad text."""
        if isinstance(text, cls):
            return text
        if not isinstance(text, str):
            raise FormatError(f"{cls.__name__}: expected a string, got {type(text).__name__}")
        want = _text_len(cls.SIZE)
        if len(text) != want or not text.isascii():
            raise FormatError(f"{cls.__name__}: {text!r} is not a valid id ({want} characters)")
        raw = _decode(text, cls.SIZE)  # None for letters outside the alphabet, pad bits set
        if raw is None:
            raise FormatError(f"{cls.__name__}: {text!r} is not a valid id")
        out = cls(raw)
        object.__setattr__(out, "_text", text.upper())
        return out

    @classmethod
    def parse_many(cls, texts: list[str]) -> list[Self]:
        """``parse`` of each text, decoded in bulk (numpy); the same errors."""
        want = _text_len(cls.SIZE)
        joined = "".join(t if type(t) is str and len(t) == want else "" for t in texts)
        if len(joined) != want * len(texts) or not joined.isascii():
            return [cls.parse(t) for t in texts]  # raises, naming the bad text
        vals = _LUT[np.frombuffer(joined.encode("ascii"), np.uint8)].reshape(len(texts), want)
        bits = np.unpackbits(vals[:, :, None], axis=2)[:, :, 3:].reshape(len(texts), want * 5)
        if (vals == 255).any() or bits[:, cls.SIZE * 8 :].any():
            return [cls.parse(t) for t in texts]
        blob = np.packbits(bits[:, : cls.SIZE * 8], axis=1).tobytes()
        out = []
        size = cls.SIZE
        for i, text in enumerate(texts):
            obj = cls.__new__(cls)
            object.__setattr__(obj, "raw", blob[i * size : (i + 1) * size])
            object.__setattr__(obj, "_text", text.upper())
            out.append(obj)
        return out

    @classmethod
    def from_trusted_text(cls, text: str) -> Self:
        """Parse text from an object already verified by its checksum (skips the
        canonical-form check); still raises ``FormatError`` on undecodable text."""
        raw = _decode(text, cls.SIZE)
        if raw is None:
            raise FormatError(f"{cls.__name__}: {text!r} is not a valid id")
        out = cls(raw)
        object.__setattr__(out, "_text", text.upper())  # decodable: canonical but for case
        return out

    def __str__(self) -> str:
        text = self._text
        if text is None:
            text = _encode(self.raw)
            object.__setattr__(self, "_text", text)
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.raw == self.raw

    def __lt__(self, other: ObjectId) -> bool:
        return self.raw < other.raw

    def __hash__(self) -> int:
        # the bytes alone: ids of different types are unequal anyway (``__eq__``)
        return hash(self.raw)

    def __reduce__(self) -> tuple[type[Self], tuple[bytes]]:
        return (type(self), (self.raw,))


_ALPHABET = _CROCKFORD.decode("ascii")
_VALUE = {ch: i for i, ch in enumerate(_ALPHABET)} | {
    ch.lower(): i for i, ch in enumerate(_ALPHABET)
}
_LUT = np.full(256, 255, np.uint8)
for _ch, _v in _VALUE.items():
    _LUT[ord(_ch)] = _v


def _encode(raw: bytes) -> str:
    """Crockford base32 of ``raw``: RFC 4648 base32 (``base64.b32encode``, in C) with its
    padding dropped and its alphabet mapped onto Crockford's (both keep the bits' order)."""
    return base64.b32encode(raw).rstrip(b"=").translate(_RFC_TO_CROCKFORD).decode("ascii")


_RFC_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD)


# Crockford digits to the digits of int(text, 32); every other ASCII character to one that
# int() refuses (so no sign, space or underscore gets through)
_TO_BASE32 = {c: "!" for c in range(128)} | {
    ord(ch): "0123456789ABCDEFGHIJKLMNOPQRSTUV"[v] for ch, v in _VALUE.items()
}


def _decode(text: object, size: int) -> bytes | None:
    """Inverse of ``_encode``; None for text that is not valid."""
    if not isinstance(text, str) or len(text) != _text_len(size) or not text.isascii():
        return None
    try:
        value = int(text.translate(_TO_BASE32), 32)
    except ValueError:
        return None
    pad = len(text) * 5 - size * 8
    if value & ((1 << pad) - 1):
        return None
    return (value >> pad).to_bytes(size, "big")


def _text_len(size: int) -> int:
    return (size * 8 + 4) // 5


class SnapshotId(ObjectId):
    """Id of a snapshot (``snapshots/<id>``) and of its transaction log."""

    __slots__ = ()


class ManifestId(ObjectId):
    """Id of a manifest segment (``manifests/<id>``)."""

    __slots__ = ()


class HistoryId(ObjectId):
    """Id of a history segment (``history/<id>``)."""

    __slots__ = ()


class ChunkId(ObjectId):
    """Id of a native chunk (``chunks/<id>``)."""

    __slots__ = ()


class NodeId(ObjectId):
    """Id of a node (group or array); stable across commits until the node is deleted."""

    __slots__ = ()
    SIZE = 8

    @classmethod
    def new(cls) -> Self:
        """A fresh id: 8 random bytes (see the module docstring)."""
        return cls(os.urandom(cls.SIZE))
