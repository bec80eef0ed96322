"""Block checksums of large native chunk objects: compute, select the blocks a range covers, verify.

A native chunk object of at least ``BLOCKED_MIN_LENGTH`` bytes is cut into blocks of
``BLOCK_SIZE`` bytes (the last one shorter) and its manifest row records the xxh3-64 of
each block (SPEC §4.2, ``block_size`` and ``block_checksums``), so a byte-range read (zarr's
sharding codec reading one inner chunk of a shard) fetches only the blocks the range covers
and still verifies every byte it returns.
"""

from __future__ import annotations

import numpy as np
import xxhash

from .common import checksum_hex
from .errors import FormatError

BLOCK_SIZE = 32 * 1024
"""Bytes per block (bench/bench_shard_read.py, README): one 128 KiB inner chunk of a
256 MiB shard then fetches at most 160 KiB, and its 32 KiB shard index at most 64 KiB:
224 KiB, within the 288 KiB of 2x the inner chunk plus the index (64 KiB blocks reach
it exactly); the checksums take 8 bytes per 32 KiB."""

BLOCKED_MIN_LENGTH = 1 << 20
"""Objects shorter than this get no block checksums (a range read fetches them whole:
at most 1 MiB, and their manifest rows stay small)."""


def block_count(length: int, block_size: int) -> int:
    """How many blocks an object of ``length`` bytes has."""
    return -(-length // block_size)


def block_checksums(data: bytes | memoryview, block_size: int = BLOCK_SIZE) -> bytes:
    """The xxh3-64 of each ``block_size`` block of ``data``, as little-endian uint64s."""
    view = memoryview(data)
    sums = np.fromiter(
        (
            xxhash.xxh3_64_intdigest(view[i : i + block_size])
            for i in range(0, len(view), block_size)
        ),
        np.uint64,
        block_count(len(view), block_size),
    )
    return sums.astype("<u8", copy=False).tobytes()


def blocks_for(data: bytes | memoryview) -> tuple[int, bytes | None]:
    """``(block_size, block_checksums)`` a writer records for a native chunk object:
    ``(0, None)`` below ``BLOCKED_MIN_LENGTH``."""
    if len(data) < BLOCKED_MIN_LENGTH:
        return 0, None
    return BLOCK_SIZE, block_checksums(data, BLOCK_SIZE)


def check_blocks(length: int, block_size: int, sums: bytes, what: str) -> None:
    """``FormatError`` unless ``sums`` holds one checksum per block of ``length`` bytes."""
    if block_size <= 0 or len(sums) != 8 * block_count(length, block_size):
        raise FormatError(
            f"{what}: damaged manifest row: {len(sums)} bytes of block checksums for "
            f"{length} bytes in blocks of {block_size}"
        )


def absolute_range(start: int, end: int | None, length: int) -> tuple[int, int]:
    """A byte range (``end`` None: to the end; negative ``start``: the last ``-start``
    bytes) as ``[start, end)`` clamped to an object of ``length`` bytes."""
    if start < 0:
        start, end = max(length + start, 0), None
    stop = length if end is None else min(end, length)
    start = min(max(start, 0), length)
    return start, max(stop, start)


def covering(start: int, stop: int, length: int, block_size: int) -> tuple[int, int, int]:
    """For ``[start, stop)`` (non-empty, within ``length``): the first block, and the byte
    span ``[lo, hi)`` of the blocks that cover it."""
    first, last = start // block_size, (stop - 1) // block_size
    return first, first * block_size, min((last + 1) * block_size, length)


def verify_blocks(
    data: bytes | memoryview, first: int, sums: bytes, block_size: int, what: str
) -> None:
    """Check ``data``, the bytes of blocks ``first``, ``first + 1``, … (the last one may
    be the object's short last block), against the recorded ``sums``; ``FormatError``
    naming ``what`` and the first damaged block."""
    got = np.frombuffer(block_checksums(data, block_size), "<u8")
    n = len(got)
    want = np.frombuffer(sums, "<u8", count=n, offset=8 * first)
    bad = np.flatnonzero(got != want)
    if len(bad):
        b = first + int(bad[0])
        raise FormatError(
            f"{what} is damaged: block {b} (bytes {b * block_size}-"
            f"{b * block_size + min(block_size, len(data) - int(bad[0]) * block_size) - 1}) "
            f"has checksum {checksum_hex(int(got[bad[0]]))}, not the "
            f"{checksum_hex(int(want[bad[0]]))} recorded when it was written"
        )
