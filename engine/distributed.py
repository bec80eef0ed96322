"""``frazil.distributed``: Icechunk's helpers for distributed array frameworks (merging forks)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from .errors import InvalidInputError, InvalidTypeError
from .session import ForkSession, Session

__all__ = ["extract_session", "merge_sessions"]


def _flatten(items: Iterable[Any]) -> Iterator[Any]:
    for item in items:
        if isinstance(item, list | tuple):
            yield from _flatten(item)
        else:
            yield item


def extract_session(zarray: Any, axis: Any = None, keepdims: Any = None) -> Session:
    """The session behind a zarr array opened on a frazil store (``axis`` and ``keepdims``
    are ignored: they let dask call it as a reduction)."""
    session = getattr(zarray.store, "session", None)
    if not isinstance(session, Session):
        raise InvalidInputError(
            f"{zarray!r} is not stored in a frazil session (its store is "
            f"{type(zarray.store).__name__})"
        )
    return session


def merge_sessions(
    *sessions: ForkSession | list[ForkSession] | list[list[ForkSession]],
) -> ForkSession:
    """Merge forks (lists of them, nested, are flattened) into the first one and return it.

    As in Icechunk 1.x, every argument is a ``ForkSession``; ``session.merge(*forks)`` is
    the preferred spelling. frazil also still runs Icechunk's older form, deprecated:
    ``merge_sessions(session, *copies)`` where ``session`` is a writable ``Session`` whose
    copies were sent to workers inside ``with session.allow_pickling():``. That merges into
    ``session`` what the copies handed back carry and what copies that never came back
    journaled, and returns ``session`` (see ``Session.allow_pickling``).

    Raises
    ------
    InvalidInputError
        No sessions, or one that is neither a ``ForkSession`` nor, first, a session that
        allowed pickling.
    ConflictError
        Two of them wrote the same chunk (see ``Session.merge``).
    """
    first, *rest = list(_flatten(sessions)) or [None]
    if first is None:
        raise InvalidInputError("merge_sessions needs at least one session")
    for s in rest:
        if not isinstance(s, ForkSession) and s is not first:
            raise InvalidTypeError(
                f"merge_sessions merges ForkSession objects. Received {type(s).__name__!r}; "
                "fork with session.fork() and merge with session.merge(*forks)"
            )
    if isinstance(first, Session) and not isinstance(first, ForkSession):
        return first._merge_pickled(rest)  # type: ignore[return-value]
    if not isinstance(first, ForkSession):
        raise InvalidTypeError(
            f"merge_sessions merges ForkSession objects. Received {type(first).__name__!r}"
        )
    first.merge(*rest)
    return first
