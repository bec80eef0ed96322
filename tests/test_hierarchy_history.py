"""Hypothesis state machine of zarr hierarchies over many commits: every recorded snapshot,
opened read-only through zarr, holds exactly the groups, arrays, shapes and values it had."""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, note, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from zarr.core.sync import sync

import frazil

# int16 chunks of at most 9 elements are inline (<= 24 bytes); float32 ones above 6 native
CONFIG = frazil.RepositoryConfig(inline_chunk_threshold_bytes=24)
NAMES = ["g", "h", "a", "b"]
DTYPES = ["int16", "float32"]


@dataclass
class Node:
    """A group (``values is None``) or an array as the model holds it."""

    attrs: dict[str, Any] = field(default_factory=dict)
    values: np.ndarray | None = None
    chunks: tuple[int, ...] = ()


Tree = dict[str, Node]  # path ("" is the root) -> node


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def read_tree(store: Any) -> Tree:
    """The whole hierarchy of a store, read through zarr."""
    root = zarr.open_group(store, mode="r")
    out: Tree = {"": Node(dict(root.attrs))}
    for path, node in root.members(max_depth=None):
        if isinstance(node, zarr.Array):
            out[path] = Node(dict(node.attrs), np.asarray(node[...]), tuple(node.chunks))
        else:
            out[path] = Node(dict(node.attrs))
    return out


def assert_same_tree(got: Tree, want: Tree, where: str) -> None:
    assert sorted(got) == sorted(want), where
    for path, w in want.items():
        g = got[path]
        assert g.attrs == w.attrs, (where, path)
        if w.values is None:
            assert g.values is None, (where, path)
            continue
        assert g.values is not None, (where, path)
        assert g.chunks == w.chunks, (where, path)
        assert g.values.shape == w.values.shape, (where, path)
        assert g.values.dtype == w.values.dtype, (where, path)
        assert np.array_equal(g.values, w.values), (where, path, g.values, w.values)


class HierarchyHistoryMachine(RuleBasedStateMachine):
    def __init__(self, storage: frazil.Storage) -> None:
        super().__init__()
        self.repo = frazil.Repository.create(storage, CONFIG)
        self.session = self.repo.writable_session("main")
        zarr.open_group(self.session.store, mode="w", attributes={"root": True})
        self.tree: Tree = {"": Node({"root": True})}
        first = self.session.commit("root group")
        self.history: dict[str, Tree] = {first: copy.deepcopy(self.tree)}
        self.ever: set[str] = {""}  # every path that ever held a node
        self.session = self.repo.writable_session("main")
        self.n = 0

    # -- helpers ---------------------------------------------------------------------------
    def groups(self) -> list[str]:
        return sorted(p for p, n in self.tree.items() if n.values is None and p.count("/") < 2)

    def arrays(self) -> list[str]:
        return sorted(p for p, n in self.tree.items() if n.values is not None)

    def open(self, path: str) -> Any:
        return zarr.open(self.session.store, path=path, mode="r+")

    def check(self, sid: str) -> None:
        store = self.repo.readonly_session(snapshot_id=sid).store
        want = self.history[sid]
        assert_same_tree(read_tree(store), want, sid)
        for path in self.ever - want.keys():  # deleted nodes are absent, not just unlisted
            assert not sync(store.exists(f"{path}/zarr.json")), (sid, path)

    # -- changes ---------------------------------------------------------------------------
    @rule(data=st.data(), name=st.sampled_from(NAMES))
    def create_group(self, data: st.DataObject, name: str) -> None:
        parent = data.draw(st.sampled_from(self.groups()), label="parent")
        path = _join(parent, name)
        if path in self.tree:
            return
        zarr.open_group(self.session.store, path=parent, mode="r+").create_group(
            name, attributes={"made": self.n}
        )
        note(f"group {path!r}")
        self.tree[path] = Node({"made": self.n})
        self.ever.add(path)

    @rule(data=st.data(), name=st.sampled_from(NAMES), dtype=st.sampled_from(DTYPES))
    def create_array(self, data: st.DataObject, name: str, dtype: str) -> None:
        parent = data.draw(st.sampled_from(self.groups()), label="parent")
        path = _join(parent, name)
        if path in self.tree:
            return
        ndim = data.draw(st.integers(1, 2), label="ndim")
        shape = tuple(data.draw(st.lists(st.integers(0, 7), min_size=ndim, max_size=ndim)))
        chunks = tuple(data.draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)))
        zarr.open_group(self.session.store, path=parent, mode="r+").create_array(
            name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, compressors=None
        )
        note(f"array {path!r} {shape} chunks {chunks} {dtype}")
        self.tree[path] = Node({}, np.zeros(shape, dtype), chunks)
        self.ever.add(path)

    @precondition(lambda self: bool(self.arrays()))
    @rule(data=st.data())
    def write(self, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(self.arrays()), label="array")
        values = self.tree[path].values
        assert values is not None
        sel = []
        for n in values.shape:
            start = data.draw(st.integers(0, n), label="start")
            sel.append(slice(start, data.draw(st.integers(start, n), label="stop")))
        value = data.draw(st.integers(-50, 50), label="value")
        note(f"write {path!r}[{sel}] = {value}")
        self.open(path)[tuple(sel)] = value
        values[tuple(sel)] = value

    @precondition(lambda self: bool(self.arrays()))
    @rule(data=st.data())
    def resize(self, data: st.DataObject) -> None:
        """Grow to any size; shrink only to a multiple of the chunk size, so no chunk that
        straddles the new edge keeps values beyond it (zarr keeps those on purpose)."""
        path = data.draw(st.sampled_from(self.arrays()), label="array")
        node = self.tree[path]
        assert node.values is not None
        new = []
        for n, c in zip(node.values.shape, node.chunks):
            options = [m for m in range(0, 10) if m >= n or m % c == 0]
            new.append(data.draw(st.sampled_from(options), label="size"))
        note(f"resize {path!r} {node.values.shape} -> {tuple(new)}")
        self.open(path).resize(tuple(new))
        grown = np.zeros(new, node.values.dtype)
        keep = tuple(slice(0, min(a, b)) for a, b in zip(node.values.shape, new))
        grown[keep] = node.values[keep]
        node.values = grown

    @precondition(lambda self: len(self.tree) > 1)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(sorted(p for p in self.tree if p)), label="node")
        parent, _, name = path.rpartition("/")
        note(f"delete {path!r}")
        del zarr.open_group(self.session.store, path=parent, mode="r+")[name]
        for p in list(self.tree):
            if p == path or p.startswith(path + "/"):
                del self.tree[p]

    @rule(data=st.data(), value=st.integers(0, 9))
    def set_attribute(self, data: st.DataObject, value: int) -> None:
        path = data.draw(st.sampled_from(sorted(self.tree)), label="node")
        self.open(path).attrs["v"] = value
        self.tree[path].attrs["v"] = value

    # -- commits and time travel -----------------------------------------------------------
    @precondition(lambda self: self.session.has_uncommitted_changes)
    @rule()
    def commit(self) -> None:
        self.n += 1
        sid = self.session.commit(f"step {self.n}")
        note(f"commit {sid}")
        self.history[sid] = copy.deepcopy(self.tree)
        self.session = self.repo.writable_session("main")
        assert [i.id for i in self.repo.ancestry(branch="main")][0] == sid

    @rule(data=st.data())
    def time_travel(self, data: st.DataObject) -> None:
        self.check(data.draw(st.sampled_from(sorted(self.history)), label="snapshot"))

    @invariant()
    def staged_matches(self) -> None:
        assert_same_tree(read_tree(self.session.store), self.tree, "staged")

    def teardown(self) -> None:
        ids = [i.id for i in self.repo.ancestry(branch="main")]
        assert sorted(ids[:-1]) == sorted(self.history)  # the last is the empty first one
        for sid in self.history:
            self.check(sid)


def _settings(examples: int, steps: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def test_hierarchy_history_memory() -> None:
    run_state_machine_as_test(
        lambda: HierarchyHistoryMachine(frazil.in_memory_storage()), settings=_settings(40, 40)
    )


def test_hierarchy_history_local(tmp_path: Path) -> None:
    def make() -> HierarchyHistoryMachine:
        return HierarchyHistoryMachine(
            frazil.local_filesystem_storage(tempfile.mkdtemp(dir=tmp_path))
        )

    run_state_machine_as_test(make, settings=_settings(8, 25))


@pytest.mark.slow
def test_hierarchy_history_memory_long() -> None:
    run_state_machine_as_test(
        lambda: HierarchyHistoryMachine(frazil.in_memory_storage()), settings=_settings(300, 60)
    )
