"""Moving nodes: checking a move and listing the records it re-paths (``Session.move``).

A node keeps its id when it moves, and chunk references are keyed by node id (in the
change set and in manifest segments), so a move re-paths node records only: no chunk
reference is read, re-keyed or rewritten, whatever the size of the moved arrays. The
commit records a moved node as deleted at its old path and created at its new one with
the same node id (``format/SPEC.md``, "Moves"); diffs and rebases pair the two rows by id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from frazil.format import GROUP, NodeRecord

from .errors import AlreadyExistsError, ErrorKind, InvalidInputError, NotFoundError


def parent_path(path: str) -> str:
    """The path of the group holding ``path`` ('/a/b' -> '/a', '/a' -> '/')."""
    head = path.rsplit("/", 1)[0]
    return head or "/"


def plan_move(
    src: str,
    dst: str,
    node: Callable[[str], NodeRecord | None],
    nodes: Iterable[NodeRecord],
) -> list[tuple[NodeRecord, str]]:
    """The (record, new path) pairs that move the node at ``src`` and its subtree to
    ``dst`` (both normalized), given the session's current nodes (``node(path)``, and
    all of them in ``nodes``); refuses moves that cannot be done, saying what and where.

    Raises
    ------
    InvalidInputError
        ``src`` is the root, ``dst`` is ``src`` or under it, or ``dst``'s parent is an
        array.
    NotFoundError
        No node at ``src``, or no group at ``dst``'s parent (the root excepted).
    AlreadyExistsError
        A node is at ``dst``, or at a path the moved subtree would take.
    """
    what = f"cannot move {src!r} to {dst!r}"
    if src == "/":
        raise InvalidInputError(
            f"{what}: the root group cannot be moved", kind=ErrorKind.NOT_ALLOWED
        )
    if dst == "/":
        raise AlreadyExistsError(
            f"{what}: the root group's path is taken", kind=ErrorKind.MOVE_WONT_OVERWRITE
        )
    rec = node(src)
    if rec is None:
        raise NotFoundError(f"{what}: no group or array at {src!r}", kind=ErrorKind.NODE_NOT_FOUND)
    if dst == src or dst.startswith(src + "/"):
        raise InvalidInputError(
            f"{what}: a node cannot move into itself or its own subtree",
            kind=ErrorKind.MOVE_INTO_SELF_OR_DESCENDANT,
        )
    if node(dst) is not None:
        raise AlreadyExistsError(
            f"{what}: a node is already at {dst!r} (a move never overwrites)",
            kind=ErrorKind.MOVE_WONT_OVERWRITE,
        )
    parent = parent_path(dst)
    holder = node(parent)
    if holder is None and parent != "/":
        raise NotFoundError(
            f"{what}: no group at {parent!r} to move it into",
            kind=ErrorKind.MOVE_DESTINATION_PARENT_MISSING,
        )
    if holder is not None and holder.node_type != GROUP:
        raise InvalidInputError(
            f"{what}: {parent!r} is an array, not a group",
            kind=ErrorKind.MOVE_DESTINATION_PARENT_NOT_GROUP,
        )
    prefix = src + "/"
    moves = [(rec, dst)]
    for n in nodes:
        if n.path.startswith(prefix):
            moves.append((n, dst + n.path[len(src) :]))
    for n, path in moves[1:]:
        if node(path) is not None:
            raise AlreadyExistsError(
                f"{what}: {n.path!r} would move onto {path!r}, which exists",
                kind=ErrorKind.MOVE_WONT_OVERWRITE,
            )
    return moves
