"""Segment filters: the small Bloom filter a snapshot may record per manifest segment, saying
which chunk coordinates the segment can hold (SPEC §4.1).

A filter never says "not here" for a coordinate the segment holds; it may say "maybe" for
one it does not (about 1% of the time at the sizes written here). Readers skip a segment
whose filter says "not here" without reading it.

Bytes: one byte ``k`` (the number of probes, 1 to 16), then ``m / 8`` bytes of bits, ``m`` a
power of two from 64 to 65,536; bit ``b`` is bit ``b % 8`` (least significant first) of
byte ``1 + b // 8``. A coordinate ``c`` hashes to ``h`` (``coord_hash``: the splitmix64
finaliser folded over the coordinates, from a fixed seed); its probes are
``(h1 + j * h2) mod m`` for ``j < k``, where ``h1`` is the low 32 bits of ``h`` and ``h2``
the high 32 bits with the lowest bit set. The coordinate may be in the segment iff all
its probe bits are set.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import FormatError

_M64 = (1 << 64) - 1
SEED = 0x6672617A696C6631  # "frazilf1"
_GAMMA = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB

BITS_PER_ROW = 10
"""Filter bits per coordinate (rounded up to a power of two): about 1% false positives."""
MIN_BITS = 64
MAX_BITS = 8192
"""Segments that would need more bits (over about 800 rows) get no filter: a snapshot lists
every segment's filter, and large segments are few and usually dense."""
_LIMIT_BITS = 1 << 16  # what a reader accepts
MAX_PROBES = 16


def _mix(z: int) -> int:
    z = (z + _GAMMA) & _M64
    z = ((z ^ (z >> 30)) * _MUL1) & _M64
    z = ((z ^ (z >> 27)) * _MUL2) & _M64
    return z ^ (z >> 31)


def coord_hash(coord: tuple[int, ...]) -> int:
    """The 64-bit hash of a chunk coordinate (``h = mix(h ^ c)`` over its coordinates, from
    ``SEED``; coordinates as 64-bit two's complement)."""
    h = SEED
    for c in coord:
        h = _mix(h ^ (c & _M64))
    return h


def coord_hashes(coords: np.ndarray) -> np.ndarray:
    """``coord_hash`` of every row of ``coords`` (n x ndim integers), as uint64, in bulk."""
    coords = np.ascontiguousarray(coords, dtype=np.int64)
    h = np.full(coords.shape[0], SEED, np.uint64)
    gamma, mul1, mul2 = np.uint64(_GAMMA), np.uint64(_MUL1), np.uint64(_MUL2)
    s30, s27, s31 = np.uint64(30), np.uint64(27), np.uint64(31)
    with np.errstate(over="ignore"):
        for d in range(coords.shape[1]):
            z = (h ^ coords[:, d].view(np.uint64)) + gamma
            z = (z ^ (z >> s30)) * mul1
            z = (z ^ (z >> s27)) * mul2
            h = z ^ (z >> s31)
    return h


def filter_bits(rows: int) -> int | None:
    """How many bits a filter of ``rows`` coordinates gets; None: too many rows for one."""
    bits = max(MIN_BITS, 1 << max(0, (BITS_PER_ROW * rows - 1).bit_length()))
    return bits if bits <= MAX_BITS else None


def _probes(bits: int, rows: int) -> int:
    return max(1, min(MAX_PROBES, round(bits / max(rows, 1) * math.log(2))))


def _positions(h: np.ndarray, bits: int, k: int) -> np.ndarray:
    """The probe bit positions of hashes ``h`` (n x k)."""
    h1 = (h & np.uint64(0xFFFFFFFF)).astype(np.int64)
    h2 = ((h >> np.uint64(32)) | np.uint64(1)).astype(np.int64)
    j = np.arange(k, dtype=np.int64)
    return (h1[:, None] + j[None, :] * h2[:, None]) & (bits - 1)


def build_filter(coords: np.ndarray) -> bytes | None:
    """The filter of a segment's coordinates (n x ndim), or None if it has too many rows
    (``MAX_BITS``) or none."""
    rows = coords.shape[0]
    bits = filter_bits(rows)
    if bits is None or rows == 0:
        return None
    k = _probes(bits, rows)
    on = np.zeros(bits, bool)
    on[_positions(coord_hashes(coords), bits, k).reshape(-1)] = True
    return bytes([k]) + np.packbits(on, bitorder="little").tobytes()


def check_filter(data: bytes, what: str) -> bytes:
    """``data`` if it is a well-formed filter, else ``FormatError`` naming ``what``."""
    n = len(data) - 1
    if n < MIN_BITS // 8 or n > _LIMIT_BITS // 8 or n & (n - 1) or not 1 <= data[0] <= MAX_PROBES:
        raise FormatError(f"{what}: damaged segment filter ({len(data)} bytes, k={data[:1]!r})")
    return data


def may_contain(data: bytes, h: int) -> bool:
    """Whether the filter ``data`` (well-formed) admits the coordinate of hash ``h``."""
    k, mask = data[0], (len(data) - 1) * 8 - 1
    h1, h2 = h & 0xFFFFFFFF, (h >> 32) | 1
    for j in range(k):
        b = (h1 + j * h2) & mask
        if not data[1 + (b >> 3)] >> (b & 7) & 1:
            return False
    return True


def may_contain_many(data: bytes, coords: np.ndarray) -> np.ndarray:
    """``may_contain`` for every row of ``coords`` (n x ndim), in bulk (bool array)."""
    k, bits = data[0], (len(data) - 1) * 8
    on = np.unpackbits(np.frombuffer(data, np.uint8, offset=1), bitorder="little").astype(bool)
    return on[_positions(coord_hashes(coords), bits, k)].all(axis=1)
