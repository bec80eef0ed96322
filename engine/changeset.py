"""A session's staged changes: nodes created, updated or deleted, and chunk references set."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from frazil.format import ChunkRef, NodeId, NodeRecord

Coord = tuple[int, ...]


@dataclass
class ChangeSet:
    """Staged changes, relative to the session's base snapshot.

    ``nodes`` maps a path to its staged record, or to None where the base node was
    deleted. ``chunks`` maps a node id to the chunk refs set on it (tombstones for deleted
    chunks). A node replaced at the same path gets a new node id, so its chunks start empty.
    """

    nodes: dict[str, NodeRecord | None] = field(default_factory=dict)
    chunks: dict[NodeId, dict[Coord, ChunkRef]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def is_empty(self) -> bool:
        return not self.nodes and not any(self.chunks.values())

    def set_node(self, record: NodeRecord) -> None:
        with self.lock:
            self.nodes[record.path] = record

    def delete_node(self, path: str, node_id: NodeId | None, in_base: bool) -> None:
        with self.lock:
            if in_base:
                self.nodes[path] = None
            else:
                self.nodes.pop(path, None)
            if node_id is not None:
                self.chunks.pop(node_id, None)

    def set_chunk(self, node_id: NodeId, coord: Coord, ref: ChunkRef) -> None:
        with self.lock:
            self.chunks.setdefault(node_id, {})[coord] = ref

    def chunk(self, node_id: NodeId, coord: Coord) -> ChunkRef | None:
        refs = self.chunks.get(node_id)
        return None if refs is None else refs.get(coord)

    def node_chunks(self, node_id: NodeId) -> Iterator[tuple[Coord, ChunkRef]]:
        return iter(list(self.chunks.get(node_id, {}).items()))

    def clear(self) -> None:
        with self.lock:
            self.nodes.clear()
            self.chunks.clear()

    def __getstate__(self) -> dict[str, object]:
        return {"nodes": self.nodes, "chunks": self.chunks}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.nodes = state["nodes"]  # type: ignore[assignment]
        self.chunks = state["chunks"]  # type: ignore[assignment]
        self.lock = threading.Lock()
