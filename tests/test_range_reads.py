"""Verified range reads of native chunk objects: the block checksums a manifest row records
for a large object, a range read that fetches only the blocks it covers, damage inside and
outside the range, rows without blocks, and every path that copies rows carrying them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import frazil
from frazil import FormatError, Repository, runtime
from frazil.format import ChunkKind, ChunkRef
from frazil.format import blocks as fblocks
from frazil.format.keys import chunk_key

INNER = 16384  # f8 values: 128 KiB inner chunks
SHARD = 16 * INNER  # 2 MiB shards: above BLOCKED_MIN_LENGTH
N = 2 * SHARD


def _write(session: Any, path: str = "a", values: np.ndarray | None = None) -> np.ndarray:
    values = np.arange(N, dtype="f8") if values is None else values
    a = zarr.create_array(
        session.store,
        name=path,
        shape=(N,),
        chunks=(INNER,),
        shards=(SHARD,),
        dtype="f8",
        compressors=None,
        fill_value=-1.0,
    )
    a[:] = values
    return values


def _ref(session: Any, path: str = "a", coord: tuple[int, ...] = (0,)) -> ChunkRef:
    ref = runtime.run(session.chunk_ref(path, coord))
    assert ref is not None and ref.kind == ChunkKind.NATIVE
    return ref


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.create(frazil.local_filesystem_storage(str(tmp_path / "repo")))


@pytest.fixture
def written(repo: Repository) -> tuple[Repository, np.ndarray]:
    s = repo.writable_session("main")
    values = _write(s)
    s.commit("shards")
    return repo, values


class Fetches:
    """Records every ranged ``get`` of chunk objects made through a storage."""

    def __init__(self, storage: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, Any, int]] = []
        inner = storage.get

        async def get(key: str, byte_range: Any = None) -> bytes:
            data = await inner(key, byte_range)
            if key.startswith("chunks/"):
                self.calls.append((key, byte_range, len(data)))
            return data

        monkeypatch.setattr(storage, "get", get)

    @property
    def nbytes(self) -> int:
        return sum(n for _, _, n in self.calls)


# -- the format's pure helpers -----------------------------------------------------------------
def test_block_checksums_cover_every_block_and_catch_any_change() -> None:
    data = bytes(np.random.default_rng(1).integers(0, 256, 100_000, dtype=np.uint8))
    sums = fblocks.block_checksums(data, 4096)
    assert len(sums) == 8 * 25  # 24 full blocks and a short one
    fblocks.verify_blocks(data[8192:16384], 2, sums, 4096, "x")
    fblocks.verify_blocks(data[98304:], 24, sums, 4096, "x")  # the short last block
    bad = bytearray(data[8192:16384])
    bad[5000] ^= 1
    with pytest.raises(FormatError, match=r"x is damaged: block 3 \(bytes 12288-16383\)"):
        fblocks.verify_blocks(bytes(bad), 2, sums, 4096, "x")
    with pytest.raises(FormatError, match="damaged manifest row"):
        fblocks.check_blocks(100_000, 4096, sums[:-8], "x")
    assert fblocks.blocks_for(b"x" * 1000) == (0, None)


@pytest.mark.parametrize(
    ("byte_range", "expected"),
    [((10, 20), (10, 20)), ((-30, None), (70, 100)), ((90, 500), (90, 100)), ((5, None), (5, 100))],
)
def test_absolute_range(byte_range: tuple[int, int | None], expected: tuple[int, int]) -> None:
    assert fblocks.absolute_range(*byte_range, 100) == expected


def test_covering_spans_whole_blocks() -> None:
    assert fblocks.covering(5000, 9000, 100_000, 4096) == (1, 4096, 12288)
    assert fblocks.covering(99_000, 100_000, 100_000, 4096) == (24, 98304, 100_000)


# -- writing and reading -----------------------------------------------------------------------
def test_large_native_objects_record_block_checksums(written: tuple[Repository, Any]) -> None:
    repo, _ = written
    ref = _ref(repo.readonly_session(branch="main"))
    assert ref.block_size == fblocks.BLOCK_SIZE
    assert ref.blocks is not None
    assert len(ref.blocks) == 8 * fblocks.block_count(ref.length, ref.block_size)
    data = runtime.run(repo.storage.get(chunk_key(ref.chunk_id)))  # type: ignore[arg-type]
    assert ref.blocks == fblocks.block_checksums(data, ref.block_size)


def test_small_native_objects_have_no_blocks(repo: Repository) -> None:
    s = repo.writable_session("main")
    a = zarr.create_array(
        s.store, name="small", shape=(4096,), chunks=(2048,), dtype="f8", compressors=None
    )
    a[:] = np.arange(4096.0)
    s.commit("small")
    ref = _ref(repo.readonly_session(branch="main"), "small")
    assert ref.blocks is None and ref.block_size == 0


def test_range_read_fetches_only_covering_blocks(
    written: tuple[Repository, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, values = written
    fresh = Repository.open(frazil.local_filesystem_storage(str(repo.storage.root)))  # type: ignore[attr-defined]
    fetches = Fetches(fresh.storage, monkeypatch)
    a = zarr.open_array(fresh.readonly_session(branch="main").store, path="a", mode="r")
    got = a[3 * INNER + 5 : 3 * INNER + 10]
    np.testing.assert_array_equal(got, values[3 * INNER + 5 : 3 * INNER + 10])
    assert all(r is not None for _, r, _ in fetches.calls)  # never the whole shard
    index = 16 * SHARD // INNER + 4  # the shard index: 16 bytes per inner chunk + crc32c
    assert fetches.nbytes <= 2 * (INNER * 8) + index + 2 * fblocks.BLOCK_SIZE
    assert fetches.nbytes < SHARD * 8 // 4


def test_whole_reads_and_all_ranges_return_the_right_bytes(
    written: tuple[Repository, np.ndarray],
) -> None:
    repo, values = written
    s = repo.readonly_session(branch="main")
    ref = _ref(s)
    whole = runtime.run(s.get_chunk("a", (0,)))
    assert whole is not None and len(whole) == ref.length
    rng = np.random.default_rng(7)
    cases = [(0, 1), (0, ref.length), (-16, None), (ref.length - 1, None), (5, 5)]
    cases += [
        (int(a), int(a) + int(n))
        for a, n in zip(rng.integers(0, ref.length, 20), rng.integers(1, 200_000, 20))
    ]
    for br in cases:
        assert runtime.run(s.get_chunk("a", (0,), br)) == (
            whole[br[0] :] if br[1] is None else whole[br[0] : br[1]]
        ), br
    a = zarr.open_array(s.store, path="a", mode="r")
    np.testing.assert_array_equal(a[:], values)


def _flip(repo: Repository, ref: ChunkRef, at: int) -> None:
    path = Path(repo.storage.root) / chunk_key(ref.chunk_id)  # type: ignore[attr-defined, arg-type]
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damage_is_caught_only_by_reads_covering_the_block(
    written: tuple[Repository, np.ndarray],
) -> None:
    repo, values = written
    ref = _ref(repo.readonly_session(branch="main"))
    bs = ref.block_size
    _flip(repo, ref, 5 * bs + 100)  # inside block 5 of shard 0
    fresh = Repository.open(frazil.local_filesystem_storage(str(repo.storage.root)))  # type: ignore[attr-defined]
    s = fresh.readonly_session(branch="main")
    key = chunk_key(ref.chunk_id)  # type: ignore[arg-type]
    # a range outside the damaged block reads, and its bytes are right
    raw = values[:SHARD].tobytes()  # uncompressed inner chunks, the index after them
    assert runtime.run(s.get_chunk("a", (0,), (0, 5 * bs))) == raw[: 5 * bs]
    assert runtime.run(s.get_chunk("a", (0,), (6 * bs, 8 * bs))) == raw[6 * bs : 8 * bs]
    # a range covering it fails, naming the object and the block
    with pytest.raises(FormatError, match=rf"{key} is damaged: block 5 \(bytes {5 * bs}-"):
        runtime.run(s.get_chunk("a", (0,), (5 * bs + 200, 5 * bs + 300)))
    with pytest.raises(FormatError, match="block 5"):
        runtime.run(s.get_chunk("a", (0,), (4 * bs, 7 * bs)))
    # the whole object keeps its whole-object checksum
    with pytest.raises(FormatError, match=f"chunk {key} is damaged: checksum"):
        runtime.run(s.get_chunk("a", (0,)))
    # through zarr: the inner chunk over the damage fails, the others read exactly
    a = zarr.open_array(s.store, path="a", mode="r")
    inner = (5 * bs + 100) // (INNER * 8)
    np.testing.assert_array_equal(a[: inner * INNER], values[: inner * INNER])
    np.testing.assert_array_equal(a[SHARD:], values[SHARD:])
    with pytest.raises(FormatError, match="block 5"):
        a[inner * INNER : inner * INNER + 1]


def test_truncated_object_fails_a_range_read_past_its_end(
    written: tuple[Repository, np.ndarray],
) -> None:
    repo, _ = written
    ref = _ref(repo.readonly_session(branch="main"))
    path = Path(repo.storage.root) / chunk_key(ref.chunk_id)  # type: ignore[attr-defined, arg-type]
    path.write_bytes(path.read_bytes()[: ref.length - 10])
    s = Repository.open(frazil.local_filesystem_storage(str(path.parent.parent))).readonly_session(
        branch="main"
    )
    with pytest.raises(FormatError, match="damaged"):
        runtime.run(s.get_chunk("a", (0,), (-16, None)))


def test_rows_without_blocks_fetch_the_whole_object(
    written: tuple[Repository, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older writer's row (no block checksums) is read as before: whole and verified."""
    repo, _ = written
    s = repo.readonly_session(branch="main")
    ref = _ref(s)
    repo.reader.chunks.clear()
    fetches = Fetches(repo.storage, monkeypatch)
    got = runtime.run(
        repo.reader.chunk(ref.chunk_id, ref.checksum, (100, 200), length=ref.length)  # type: ignore[arg-type]
    )
    assert len(got) == 100
    assert fetches.calls == [(chunk_key(ref.chunk_id), None, ref.length)]  # type: ignore[arg-type]


# -- paths that copy rows ----------------------------------------------------------------------
def test_compaction_and_merged_segments_keep_block_checksums(
    written: tuple[Repository, np.ndarray],
) -> None:
    repo, values = written
    before = _ref(repo.readonly_session(branch="main"))
    for i in range(3):  # more commits to the array: the merge policy rewrites segments
        s = repo.writable_session("main")
        a = zarr.open_array(s.store, path="a", mode="r+")
        a[SHARD + i] = -5.0
        values[SHARD + i] = -5.0
        s.commit(f"edit {i}")
    repo.compact("main")
    s = repo.readonly_session(branch="main")
    after = _ref(s)
    assert (after.chunk_id, after.block_size, after.blocks) == (
        before.chunk_id,
        before.block_size,
        before.blocks,
    )
    assert _ref(s, coord=(1,)).blocks is not None
    np.testing.assert_array_equal(zarr.open_array(s.store, path="a", mode="r")[:], values)


def test_fork_merge_carries_block_checksums(repo: Repository) -> None:
    s = repo.writable_session("main")
    zarr.create_group(s.store)
    s.commit("root")
    s = repo.writable_session("main")
    fork = s.fork()
    _write(fork, "f")
    s.merge(fork)
    s.commit("merged")
    ref = _ref(repo.readonly_session(branch="main"), "f")
    assert ref.blocks is not None and ref.block_size == fblocks.BLOCK_SIZE


def test_fsck_checks_recorded_block_checksums(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = repo.writable_session("main")
    _write(s)
    s.commit("good")
    assert repo.fsck().ok
    from frazil import session as session_module

    def wrong(data: bytes) -> tuple[int, bytes | None]:
        size, sums = fblocks.blocks_for(data)
        return size, None if sums is None else bytes(8) + sums[8:]

    monkeypatch.setattr(session_module, "blocks_for", wrong)
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="a", mode="r+")[:SHARD] = 2.0
    s.commit("wrong blocks")
    problems = repo.fsck().problems
    assert len(problems) == 1
    assert "block checksums recorded" in problems[0].message
    assert "block 0" in problems[0].message


def test_range_reads_on_s3_fetch_only_covering_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a real S3 server (the tests' SeaweedFS): the shard index (a suffix) and one inner
    chunk, and nothing else of the shard, are fetched; damage in the range is caught."""
    import s3server

    storage = s3server.storage()
    repo = Repository.create(storage)
    s = repo.writable_session("main")
    values = _write(s)
    s.commit("shards")
    fresh = Repository.open(s3server.storage(storage.config.prefix))
    fetches = Fetches(fresh.storage, monkeypatch)
    a = zarr.open_array(fresh.readonly_session(branch="main").store, path="a", mode="r")
    np.testing.assert_array_equal(a[INNER * 7 : INNER * 8], values[INNER * 7 : INNER * 8])
    index = 16 * SHARD // INNER + 4
    assert sorted(n for _, _, n in fetches.calls) == [index, INNER * 8]
    ref = _ref(fresh.readonly_session(branch="main"))
    key = chunk_key(ref.chunk_id)  # type: ignore[arg-type]
    data = bytearray(runtime.run(storage.get(key)))
    data[INNER * 8 * 7 + 3] ^= 1
    runtime.run(storage.put(key, bytes(data)))
    again = Repository.open(s3server.storage(storage.config.prefix))
    b = zarr.open_array(again.readonly_session(branch="main").store, path="a", mode="r")
    np.testing.assert_array_equal(b[: INNER * 7], values[: INNER * 7])
    with pytest.raises(
        FormatError, match=f"{key} is damaged: block {INNER * 8 * 7 // fblocks.BLOCK_SIZE}"
    ):
        b[INNER * 7 : INNER * 8]


def test_rebase_and_shift_keep_block_checksums(written: tuple[Repository, np.ndarray]) -> None:
    repo, values = written
    ours = repo.writable_session("main")
    zarr.open_array(ours.store, path="a", mode="r+")[SHARD:] = values[:SHARD]
    theirs = repo.writable_session("main")
    zarr.create_group(theirs.store, path="g")
    theirs.commit("theirs first")
    ours.commit("ours, rebased", rebase_with=frazil.ConflictDetector())
    s = repo.readonly_session(branch="main")
    moved = _ref(s, coord=(1,))
    assert moved.blocks is not None and moved.blocks == _ref(s).blocks  # the same bytes
    shift = repo.writable_session("main")
    shift.shift_array("a", (-1,))
    shift.commit("shifted")
    s = repo.readonly_session(branch="main")
    shifted = _ref(s)
    assert (shifted.chunk_id, shifted.blocks) == (moved.chunk_id, moved.blocks)
    got = runtime.run(s.get_chunk("a", (0,), (INNER * 8 * 3, INNER * 8 * 4)))
    assert got == values[3 * INNER : 4 * INNER].tobytes()
