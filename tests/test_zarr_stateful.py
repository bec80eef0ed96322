"""zarr's hypothesis state machines run against FrazilStore, plus commits between steps.

* ``ZarrHierarchyStateMachine`` only touches the store through zarr's API (groups, arrays,
  chunk writes, resizes, deletes, listing), so every key it writes is a valid Zarr key: it
  runs unchanged, with one extra rule that commits the session and carries on in a new
  writable session (the model, zarr's MemoryStore, must still match).
* ``ZarrStoreStateMachine`` writes arbitrary keys (``zarr.testing.strategies.keys``) with
  arbitrary bytes, which FrazilStore refuses by design. The subclass below keeps its read
  rules and invariants (arbitrary-key reads must still give None/False) and replaces the
  writes with valid ones: Zarr v3 ``zarr.json`` documents and chunk keys of existing arrays
  in every chunk key encoding. Its dict model follows FrazilStore's Zarr-aware semantics:
  deleting or retyping a node drops its chunks, re-encoding an array renames its chunk
  keys. Extra rules commit (state persists into the next writable session), discard staged
  changes, and probe valid-but-absent keys.
"""

from __future__ import annotations

import copy
import json
import tempfile
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, note, settings
from hypothesis.stateful import invariant, precondition, rule, run_state_machine_as_test
from zarr.core.buffer import cpu
from zarr.core.sync import sync
from zarr.testing.stateful import (
    SyncStoreWrapper,
    ZarrHierarchyStateMachine,
    ZarrStoreStateMachine,
    with_frequency,
)
from zarr.testing.strategies import keys as zarr_keys

import frazil
from frazil.errors import ReadOnlyError
from frazil.zarr_adapter import FrazilStore

pytestmark = pytest.mark.filterwarnings(
    # the hierarchy machine draws fixed-width string dtypes, which zarr flags as unspecified
    "ignore::zarr.core.dtype.common.UnstableSpecificationWarning",
)

SETTINGS = settings(
    max_examples=30,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# inline threshold low enough that the machines' chunks are a mix of inline and native
CONFIG = frazil.RepositoryConfig(inline_chunk_threshold_bytes=24)


def _new_repo(kind: str, tmp_root: str) -> frazil.Repository:
    if kind == "memory":
        return frazil.Repository.create(frazil.in_memory_storage(), CONFIG)
    return frazil.Repository.create(
        frazil.local_filesystem_storage(tempfile.mkdtemp(dir=tmp_root)), CONFIG
    )


def _keys(store: FrazilStore) -> list[str]:
    async def go() -> list[str]:
        return sorted([k async for k in store.list()])

    return sync(go())


# -- the hierarchy machine ----------------------------------------------------------------------
class FrazilHierarchyStateMachine(ZarrHierarchyStateMachine):
    def __init__(self, repo: frazil.Repository) -> None:
        self.repo = repo
        self.session = repo.writable_session("main")
        super().__init__(self.session.store)

    @precondition(lambda self: self.session.has_uncommitted_changes)
    @rule()
    def commit_and_continue(self) -> None:
        before = _keys(self.store)
        sid = self.session.commit("step")
        note(f"committed {sid}")
        assert self.store.read_only
        assert _keys(self.repo.readonly_session(snapshot_id=sid).store) == before
        self.session = self.repo.writable_session("main")
        self.store = self.session.store
        assert _keys(self.store) == before


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_zarr_hierarchy(kind: str, tmp_path: Any) -> None:
    def make() -> FrazilHierarchyStateMachine:
        return FrazilHierarchyStateMachine(_new_repo(kind, str(tmp_path)))

    run_state_machine_as_test(make, settings=SETTINGS)


# -- the key/value machine, constrained to valid Zarr keys ---------------------------------------
# Node names avoid "c" and digits, so a node path can never be mistaken for a chunk key.
NAMES = ["a", "b", "grp", "x-y"]
PATHS = ["", *NAMES, *(f"{p}/{q}" for p in NAMES[:2] for q in NAMES)]
ENCODINGS = [("default", "/"), ("default", "."), ("v2", "."), ("v2", "/")]


@dataclass
class ModelNode:
    doc: bytes
    is_array: bool
    ndim: int = 0
    grid: tuple[int, ...] = ()
    encoding: tuple[str, str] = ("default", "/")
    chunks: dict[tuple[int, ...], bytes] = field(default_factory=dict)


def meta_key(path: str) -> str:
    return f"{path}/zarr.json" if path else "zarr.json"


def chunk_key(path: str, node: ModelNode, coord: tuple[int, ...]) -> str:
    name, sep = node.encoding
    prefix = f"{path}/" if path else ""
    if name == "default":
        return prefix + ("c" + sep + sep.join(map(str, coord)) if coord else "c")
    return prefix + (sep.join(map(str, coord)) if coord else "0")


@st.composite
def array_docs(draw: st.DrawFn) -> tuple[bytes, int, tuple[int, ...], tuple[str, str]]:
    ndim = draw(st.integers(0, 2))
    shape = draw(st.lists(st.integers(0, 5), min_size=ndim, max_size=ndim))
    chunks = draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim))
    encoding = draw(st.sampled_from(ENCODINGS))
    doc = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": shape,
        "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
        "chunk_key_encoding": {"name": encoding[0], "configuration": {"separator": encoding[1]}},
        "fill_value": 0,
        "codecs": [{"name": "bytes"}],
        "attributes": {"n": draw(st.integers(0, 9))},
    }
    grid = tuple(-(-s // c) for s, c in zip(shape, chunks, strict=True))
    return json.dumps(doc).encode(), ndim, grid, encoding


def group_doc(n: int) -> bytes:
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"n": n}}).encode()


class FrazilStoreStateMachine(ZarrStoreStateMachine):
    def __init__(self, repo: frazil.Repository) -> None:
        self.repo = repo
        self.session = repo.writable_session("main")
        super().__init__(self.session.store)
        self.nodes: dict[str, ModelNode] = {}
        self.committed: dict[str, ModelNode] = {}

    # -- the model --------------------------------------------------------------------------
    def _render(self) -> None:
        """Rebuild the inherited dict model (key -> Buffer) from the node model."""
        model: dict[str, Any] = {}
        for path, node in self.nodes.items():
            model[meta_key(path)] = cpu.Buffer.from_bytes(node.doc)
            for coord, data in node.chunks.items():
                model[chunk_key(path, node, coord)] = cpu.Buffer.from_bytes(data)
        self.model = model

    def _can_hold(self, path: str, is_array: bool) -> bool:
        """Zarr's rule: no node below an array; an array has no nodes below it."""
        parts = path.split("/") if path else []
        ancestors = ["/".join(parts[:i]) for i in range(len(parts))]
        if any(a in self.nodes and self.nodes[a].is_array for a in ancestors):
            return False
        if is_array:
            below = f"{path}/" if path else ""
            return not any(p != path and p.startswith(below) for p in self.nodes)
        return True

    def _arrays(self) -> list[str]:
        return sorted(p for p, n in self.nodes.items() if n.is_array)

    # -- writes (replacing the inherited arbitrary-key `set`) -------------------------------
    @rule(data=st.data(), n=st.integers(1, 4))
    def set(self, data: st.DataObject, n: int) -> None:  # type: ignore[override]
        assert not self.store.read_only
        for _ in range(n):  # a few writes per step, so the store fills up between clears
            if self._arrays() and data.draw(st.booleans(), label="write a chunk"):
                self._set_chunk(data)
            else:
                self._set_metadata(data)
        self._render()

    def _set_metadata(self, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(PATHS), label="node path")
        if data.draw(st.booleans(), label="array"):
            doc, ndim, grid, encoding = data.draw(array_docs(), label="array doc")
            new = ModelNode(doc, True, ndim, grid, encoding)
        else:
            new = ModelNode(group_doc(data.draw(st.integers(0, 9))), False)
        if not self._can_hold(path, new.is_array):
            return
        note(f"(set) {meta_key(path)!r} <- {new.doc.decode()}")
        self.store.set(meta_key(path), cpu.Buffer.from_bytes(new.doc))
        old = self.nodes.get(path)
        # same type (and same ndim for arrays) updates the node and keeps its chunks
        if old is not None and old.is_array == new.is_array and old.ndim == new.ndim:
            new.chunks = old.chunks
        self.nodes[path] = new

    def _set_chunk(self, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(self._arrays()), label="array")
        node = self.nodes[path]
        coord = tuple(data.draw(st.integers(0, max(g, 1) - 1)) for g in node.grid)
        value = data.draw(st.binary(max_size=60), label="chunk bytes")
        key = chunk_key(path, node, coord)
        note(f"(set) {key!r} <- {len(value)} bytes")
        self.store.set(key, cpu.Buffer.from_bytes(value))
        node.chunks[coord] = value

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.model)))
        note(f"(delete) {key!r}")
        self.store.delete(key)
        for path, node in list(self.nodes.items()):
            if key == meta_key(path):
                del self.nodes[path]  # the node and its chunks
            for coord in list(node.chunks):
                if key == chunk_key(path, node, coord):
                    del node.chunks[coord]
        self._render()

    @rule(data=st.data())
    @with_frequency(0.3)
    def delete_dir(self, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(PATHS), label="prefix")
        note(f"(delete_dir) {path!r}")
        sync(self.store.store.delete_dir(path))
        for p in list(self.nodes):
            if p == path or p.startswith(f"{path}/") or path == "":
                del self.nodes[p]
        self._render()

    @rule()
    @with_frequency(0.1)
    def clear(self) -> None:
        super().clear()
        self.nodes.clear()

    # -- inherited cheap reads, made rarer so more steps change the state --------------------
    @rule()
    @with_frequency(0.2)
    def is_empty(self) -> None:
        super().is_empty()

    @rule(key=zarr_keys())
    @with_frequency(0.3)
    def exists(self, key: str) -> None:
        super().exists(key)

    @rule(key=zarr_keys(), data=st.data())
    @with_frequency(0.3)
    def get_invalid_zarr_keys(self, key: str, data: st.DataObject) -> None:
        super().get_invalid_zarr_keys(key, data)

    # -- transactions ------------------------------------------------------------------------
    @precondition(lambda self: self.session.has_uncommitted_changes)
    @rule()
    def commit_and_continue(self) -> None:
        sid = self.session.commit("step")
        note(f"(commit) {sid}")
        assert self.store.read_only
        try:
            self.store.set("zarr.json", cpu.Buffer.from_bytes(group_doc(0)))
        except ReadOnlyError:
            pass
        else:
            raise AssertionError("a committed session's store accepted a write")
        self.committed = copy.deepcopy(self.nodes)
        assert _keys(self.repo.readonly_session(snapshot_id=sid).store) == sorted(self.model)
        self.session = self.repo.writable_session("main")
        self.store = SyncStoreWrapper(self.session.store)

    @precondition(lambda self: self.session.has_uncommitted_changes)
    @rule()
    def discard_changes(self) -> None:
        note("(discard)")
        self.session.discard_changes()
        self.nodes = copy.deepcopy(self.committed)
        self._render()

    # -- reads of valid keys that hold nothing -----------------------------------------------
    @precondition(lambda self: bool(self.nodes))
    @rule(data=st.data())
    def get_absent_chunk(self, data: st.DataObject) -> None:
        arrays = self._arrays()
        if not arrays:
            return
        path = data.draw(st.sampled_from(arrays))
        node = self.nodes[path]
        coord = tuple(data.draw(st.integers(0, max(g, 1) + 2)) for g in node.grid)
        key = chunk_key(path, node, coord)
        if coord in node.chunks:
            assert self.store.get(key, self.prototype) == self.model[key]
        else:
            assert self.store.get(key, self.prototype) is None
            assert not self.store.exists(key)

    @invariant()
    def check_read_only_view(self) -> None:
        view = self.store.store.with_read_only(True)
        assert view.read_only
        assert _keys(view) == sorted(self.model)


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_zarr_store(kind: str, tmp_path: Any) -> None:
    def make() -> FrazilStoreStateMachine:
        return FrazilStoreStateMachine(_new_repo(kind, str(tmp_path)))

    run_state_machine_as_test(make, settings=SETTINGS)
