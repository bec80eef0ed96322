"""Notebook views (``_repr_html_``) of repositories, sessions, history, diffs and conflicts.

Every name, message and value shown comes from a repository, so all of it is untrusted:
each goes through ``html.escape`` (quotes included) and nothing else is ever put into the
markup: a branch named ``<script>`` shows as that text. Long lists are cut (``LIMIT``) with
the count of what is left out, so a view stays small whatever the repository holds.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Iterable, Sequence
from typing import Any

LIMIT = 50
_STYLE = (
    "<style>.frazil-view{font-family:var(--jp-content-font-family,sans-serif);"
    "font-size:13px}.frazil-view table{border-collapse:collapse;margin:4px 0}"
    ".frazil-view td,.frazil-view th{padding:2px 8px;text-align:left;"
    "border-bottom:1px solid #8884;vertical-align:top}"
    ".frazil-view code{font-size:12px}.frazil-view .muted{opacity:.65}</style>"
)


def esc(value: object) -> str:
    """``value`` as HTML text (quotes escaped: safe in text and attribute values)."""
    return html.escape(str(value), quote=True)


def _when(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _view(title: str, body: Iterable[str], *, inner: bool = False) -> str:
    style = "" if inner else _STYLE
    return f'{style}<div class="frazil-view"><b>{title}</b>{"".join(body)}</div>'


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], total: int | None = None) -> str:
    """A table of already escaped cells; ``total``: how many rows exist (if more than shown)."""
    shown = list(rows)
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in shown)
    more = ""
    if total is not None and total > len(shown):
        more = f'<div class="muted">… and {total - len(shown):,} more</div>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _metadata(meta: dict[str, Any]) -> str:
    if not meta:
        return '<span class="muted">none</span>'
    text = json.dumps(meta, sort_keys=True, default=str)
    if len(text) > 500:
        text = text[:497] + "..."
    return f"<code>{esc(text)}</code>"


def snapshot_info(info: Any) -> str:
    """One history entry."""
    rows = [
        ("id", f"<code>{esc(info.id)}</code>"),
        ("parent", f"<code>{esc(info.parent_id)}</code>" if info.parent_id else "none"),
        ("written at", esc(_when(info.written_at))),
        ("message", esc(info.message)),
        ("metadata", _metadata(info.metadata)),
    ]
    return _view("Snapshot", [_table(("", ""), [(esc(k), v) for k, v in rows])])


def history(infos: Sequence[Any], more: bool) -> str:
    """History entries, newest first; ``more``: older ones exist beyond these."""
    rows = [(f"<code>{esc(i.id)}</code>", esc(_when(i.written_at)), esc(i.message)) for i in infos]
    tail = '<div class="muted">… older snapshots not shown</div>' if more else ""
    return _view("History", [_table(("snapshot", "written at", "message"), rows), tail])


def repository(
    description: str,
    branches: Sequence[tuple[str, str]],
    tags: Sequence[tuple[str, str]],
    counts: tuple[int, int],
    containers: Sequence[str],
) -> str:
    """A repository: where it is, its branches and tags ((name, snapshot id), at most
    ``LIMIT`` each, of ``counts`` in all), its virtual chunk containers."""
    parts = [f"<div>on <code>{esc(description)}</code></div>"]
    for title, refs, total in (("branches", branches, counts[0]), ("tags", tags, counts[1])):
        rows = [(esc(n), f"<code>{esc(sid)}</code>") for n, sid in refs]
        if rows:
            parts.append(_table((title, "snapshot"), rows, total))
        else:
            parts.append(f'<div class="muted">no {title}</div>')
    if containers:
        boxes = [(f"<code>{esc(c)}</code>",) for c in list(containers)[:LIMIT]]
        parts.append(_table(("virtual chunk containers",), boxes, len(containers)))
    return _view("frazil Repository", parts)


def diff(d: Any, title: str = "Diff", *, inner: bool = False) -> str:
    """What a ``Diff`` lists: nodes by change, chunk counts per array (first coordinates)."""
    parts = []
    for label, paths in (
        ("new groups", d.new_groups),
        ("new arrays", d.new_arrays),
        ("deleted groups", d.deleted_groups),
        ("deleted arrays", d.deleted_arrays),
        ("group metadata updated", d.updated_groups),
        ("array metadata updated", d.updated_arrays),
    ):
        if paths:
            names = sorted(paths)
            cells = [(f"<code>{esc(p)}</code>",) for p in names[:LIMIT]]
            parts.append(_table((label,), cells, len(names)))
    moves = list(getattr(d, "moved_nodes", ()))
    if moves:
        pairs = [(f"<code>{esc(a)}</code>", f"<code>{esc(b)}</code>") for a, b in moves[:LIMIT]]
        parts.append(_table(("moved from", "to"), pairs, len(moves)))
    if d.updated_chunks:
        arrays = sorted(d.updated_chunks)
        rows = []
        for path in arrays[:LIMIT]:
            coords = sorted(d.updated_chunks[path])
            first = ", ".join("[" + ", ".join(map(str, c)) + "]" for c in coords[:5])
            rest = f" … ({len(coords):,} in all)" if len(coords) > 5 else ""
            rows.append((f"<code>{esc(path)}</code>", f"{len(coords):,}", esc(first + rest)))
        parts.append(_table(("array", "chunks", "coordinates"), rows, len(arrays)))
    if not parts:
        parts.append('<div class="muted">no changes</div>')
    return _view(title, parts, inner=inner)


def session(mode: str, branch: str | None, snapshot_id: str, changes: Any | None) -> str:
    """A session: its mode, branch and base snapshot, and what it has staged."""
    rows = [
        ("mode", esc(mode)),
        ("branch", esc(branch) if branch is not None else '<span class="muted">none</span>'),
        ("base snapshot", f"<code>{esc(snapshot_id)}</code>"),
    ]
    parts = [_table(("", ""), [(esc(k), v) for k, v in rows])]
    if changes is not None:
        parts.append(diff(changes, "Uncommitted changes", inner=True))
    return _view("frazil Session", parts)


def conflict_error(message: str, conflicts: Sequence[Any]) -> str:
    """A conflict error: its message and each conflict (kind, path, chunks)."""
    rows = []
    for c in conflicts[:LIMIT]:
        kind = getattr(getattr(c, "conflict_type", None), "name", type(c).__name__)
        chunks = getattr(c, "conflicted_chunks", None) or ()
        shown = ", ".join("[" + ", ".join(map(str, x)) + "]" for x in list(chunks)[:5])
        if len(chunks) > 5:
            shown += f" … ({len(chunks):,} in all)"
        rows.append((esc(kind), f"<code>{esc(getattr(c, 'path', ''))}</code>", esc(shown)))
    parts = [f"<div>{esc(message)}</div>"]
    if rows:
        parts.append(_table(("conflict", "path", "chunks"), rows, len(conflicts)))
    return _view("Conflict", parts)
