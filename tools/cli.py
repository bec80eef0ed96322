"""The ``frazil`` command line: create (init), inspect (log, show, diff, stats, sql), manage
refs, keep a repository fast and small (compact, gc, expire, fsck), export a snapshot
as a plain zarr store, and import an Icechunk repository.

Every command takes the repository first: a local path, ``file://path``,
``s3://bucket/prefix`` (with ``--endpoint-url`` and the usual AWS environment variables)
or a read-only ``http(s)://`` URL. Output is for people unless ``--json`` is given.
Errors are one line on stderr and a non-zero exit (``FRAZIL_DEBUG=1`` shows tracebacks).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import click

import frazil
from frazil import runtime
from frazil.compaction import count_chunks
from frazil.errors import FrazilError, NotFoundError
from frazil.format import ARRAY
from frazil.format.common import load_json
from frazil.format.errors import FormatError

from . import sqlviews

_SNAPSHOT_ID = re.compile(r"^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{20}$")


# -- opening repositories --------------------------------------------------------------------
def storage_for(
    location: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    anonymous: bool = False,
) -> frazil.Storage:
    """The storage a command-line REPO argument names."""
    if location.startswith("s3://"):
        bucket, _, prefix = location[len("s3://") :].partition("/")
        if not bucket:
            raise click.UsageError(f"no bucket in {location!r}; use s3://bucket/prefix")
        return frazil.s3_storage(
            bucket=bucket,
            prefix=prefix,
            endpoint_url=endpoint_url,
            region=region,
            allow_http=bool(endpoint_url and endpoint_url.startswith("http://")),
            anonymous=anonymous,
            from_env=not anonymous,
        )
    if location.startswith(("http://", "https://")):
        return frazil.http_storage(location)
    if location.startswith("file://"):
        location = location[len("file://") :]
    elif "://" in location:
        raise click.UsageError(
            f"unsupported repository location {location!r}: use a local "
            "path, file://, s3:// or http(s)://"
        )
    if not os.path.isdir(location):
        raise NotFoundError(f"no frazil repository at {location} (no such directory)")
    return frazil.local_filesystem_storage(location)


@dataclass
class Ctx:
    """What every command gets: how to open the repository and how to print."""

    location: str
    json: bool
    endpoint_url: str | None
    region: str | None
    anonymous: bool
    authorize: tuple[str, ...] = ()
    _repo: frazil.Repository | None = None

    def storage(self) -> frazil.Storage:
        return storage_for(
            self.location,
            endpoint_url=self.endpoint_url,
            region=self.region,
            anonymous=self.anonymous,
        )

    @property
    def repo(self) -> frazil.Repository:
        if self._repo is None:
            self._repo = frazil.Repository.open(
                self.storage(),
                authorize_virtual_chunk_access=(
                    frazil.containers_credentials(dict.fromkeys(self.authorize))
                    if self.authorize
                    else None
                ),
            )
        return self._repo

    def emit(self, data: Any, human: Callable[[], object]) -> None:
        if self.json:
            click.echo(json.dumps(data, indent=2, default=_json_default, sort_keys=False))
        else:
            human()


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def repo_command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add REPO and the options every command shares; pass a ``Ctx`` as ``ctx``."""

    @functools.wraps(fn)
    def wrapper(
        repo: str,
        as_json: bool,
        endpoint_url: str | None,
        region: str | None,
        anonymous: bool,
        **kwargs: Any,
    ) -> Any:
        return fn(Ctx(repo, as_json, endpoint_url, region, anonymous), **kwargs)

    for deco in (
        click.option("--anonymous", is_flag=True, help="S3: unsigned requests (public buckets)."),
        click.option("--region", default=None, help="S3 region."),
        click.option(
            "--endpoint-url",
            default=None,
            envvar="FRAZIL_ENDPOINT_URL",
            help="S3-compatible endpoint (e.g. http://127.0.0.1:8333).",
        ),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output."),
        click.argument("repo"),
    ):
        wrapper = deco(wrapper)
    return wrapper


def resolve(repo: frazil.Repository, ref: str) -> str:
    """A branch name, tag name or snapshot id, as a snapshot id."""
    for lookup in (repo.lookup_branch, repo.lookup_tag):
        try:
            return lookup(ref)
        except (NotFoundError, frazil.InvalidInputError):
            pass
    if _SNAPSHOT_ID.match(ref):
        return repo.lookup_snapshot(ref.upper()).id
    raise NotFoundError(f"no branch, tag or snapshot named {ref!r}")


def parse_age(text: str) -> dt.datetime:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` (ago), or an ISO 8601 time (UTC if no
    offset is given): the cutoff time."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    now = dt.datetime.now(dt.UTC)
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
        return now - dt.timedelta(**{unit[m.group(2)]: float(m.group(1))})
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: give an age like 30d, 12h, 90m, 45s, 2w or an ISO 8601 time"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


# -- progress ------------------------------------------------------------------------------
@contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[str, int, int | None], None] | None]:
    """A ``progress(stage, done, total)`` callback drawing rich bars on stderr when it is
    a terminal; None (no output) otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int | None) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total)
        bars.update(tasks[stage], completed=done, total=total)

    with bars:
        yield update


# -- the commands --------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(frazil.__dict__.get("__version__", "0.1.0"), prog_name="frazil")
def cli() -> None:
    """frazil: Git-like version control for Zarr v3 on object storage."""


def _info_dict(info: frazil.SnapshotInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "parent_id": info.parent_id,
        "written_at": info.written_at,
        "message": info.message,
        "metadata": info.metadata,
    }


def _labels(repo: frazil.Repository) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in sorted(repo.list_branches()):
        out.setdefault(repo.lookup_branch(name), []).append(name)
    for name in sorted(repo.list_tags()):
        out.setdefault(repo.lookup_tag(name), []).append(f"tag: {name}")
    return out


def _when(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


@cli.command()
@repo_command
@click.option("--branch", "-b", default=None, help="Branch (default main).")
@click.option("--graph", is_flag=True, help="Draw the history of every branch and tag.")
@click.option("-n", "limit", type=int, default=None, help="Show at most N snapshots.")
def log(ctx: Ctx, branch: str | None, graph: bool, limit: int | None) -> None:
    """History, newest first."""
    repo = ctx.repo
    labels = _labels(repo)
    if graph:
        rows = _graph(repo, branch, labels, limit)
        ctx.emit(
            [
                {**_info_dict(i), "refs": labels.get(i.id, []), "graph": g}
                for g, i in rows
                if i is not None
            ],
            lambda: _lines(g if i is None else f"{g}{_one_line(i, labels)}" for g, i in rows),
        )
        return
    infos: list[frazil.SnapshotInfo] = []
    for info in repo.ancestry(branch=branch or "main"):
        if limit is not None and len(infos) >= limit:
            break
        infos.append(info)
    ctx.emit(
        [{**_info_dict(i), "refs": labels.get(i.id, [])} for i in infos],
        lambda: _lines(_one_line(i, labels) for i in infos),
    )


def _lines(lines: Iterable[str]) -> None:
    for line in lines:
        click.echo(line)


def _one_line(info: frazil.SnapshotInfo, labels: dict[str, list[str]]) -> str:
    refs = labels.get(info.id)
    shown = f" ({', '.join(refs)})" if refs else ""
    return f"{info.id} {_when(info.written_at)}{shown} {info.message}"


def _graph(
    repo: frazil.Repository, branch: str | None, labels: dict[str, list[str]], limit: int | None
) -> list[tuple[str, frazil.SnapshotInfo | None]]:
    """Rows of (lanes drawing, snapshot or None for a joining line) for the history of
    ``branch`` or of every branch and tag; children always come before their parent."""
    tips = (
        [repo.lookup_branch(branch)]
        if branch
        else [
            repo.lookup_branch(b)
            for b in sorted(repo.list_branches(), key=lambda b: (b != "main", b))
        ]
        + [repo.lookup_tag(t) for t in sorted(repo.list_tags())]
    )
    infos: dict[str, frazil.SnapshotInfo] = {}
    children: dict[str, int] = {}
    for tip in tips:
        for info in repo.ancestry(snapshot_id=tip):
            if info.id in infos:
                break
            infos[info.id] = info
    for info in infos.values():
        if info.parent_id:
            children[info.parent_id] = children.get(info.parent_id, 0) + 1
    # newest first, but never a parent before all its children
    ready = sorted(
        (i for i in infos.values() if not children.get(i.id)),
        key=lambda i: (i.written_at, i.id),
        reverse=True,
    )
    lanes: list[str | None] = []
    rows: list[tuple[str, frazil.SnapshotInfo | None]] = []
    while ready and (limit is None or len(rows) < limit):
        info = ready.pop(0)
        cols = [c for c, x in enumerate(lanes) if x == info.id]
        if not cols:
            lanes.append(info.id)
            cols = [len(lanes) - 1]
        col = cols[0]
        if len(cols) > 1:  # other lanes end here: draw them joining this one first
            rows.append(
                (
                    "".join(
                        ("/ " if c in cols[1:] else "| " if x else "  ")
                        for c, x in enumerate(lanes)
                    ).rstrip(),
                    None,
                )
            )
            for c in cols[1:]:
                lanes[c] = None
            while lanes and lanes[-1] is None:
                lanes.pop()
        rows.append(
            (
                "".join("* " if c == col else ("| " if x else "  ") for c, x in enumerate(lanes)),
                info,
            )
        )
        lanes[col] = info.parent_id
        while lanes and lanes[-1] is None:
            lanes.pop()
        if info.parent_id and info.parent_id in infos:
            children[info.parent_id] -= 1
            if not children[info.parent_id]:
                ready.append(infos[info.parent_id])
                ready.sort(key=lambda i: (i.written_at, i.id), reverse=True)
    return rows


def _refs(ctx: Ctx, kind: str, action: str, name: str | None, ref: str | None) -> None:
    """``frazil branch`` and ``frazil tag``: list, create, delete, reset (branches)."""
    repo = ctx.repo
    names, lookup, create, delete = (
        (repo.list_branches, repo.lookup_branch, repo.create_branch, repo.delete_branch)
        if kind == "branch"
        else (repo.list_tags, repo.lookup_tag, repo.create_tag, repo.delete_tag)
    )
    if action == "list":
        rows = {n: lookup(n) for n in sorted(names())}
        ctx.emit(rows, lambda: _lines(f"{n}\t{s}" for n, s in rows.items()))
        return
    if name is None or (action == "reset" and ref is None):
        raise click.UsageError(
            f"{kind} {action} needs NAME" + (" and REF" if action == "reset" else "")
        )
    if action == "delete":
        delete(name)
        ctx.emit({"deleted": name}, lambda: click.echo(f"deleted {kind} {name}"))
        return
    sid = resolve(repo, ref or "main")
    (create if action == "create" else repo.reset_branch)(name, sid)
    done = "created" if action == "create" else "reset"
    ctx.emit(
        {kind: name, "snapshot": sid},
        lambda: click.echo(f"{done} {kind} {name} {'at' if done == 'created' else 'to'} {sid}"),
    )


@cli.command()
@repo_command
@click.argument("action", type=click.Choice(["list", "create", "delete", "reset"]))
@click.argument("name", required=False)
@click.argument("ref", required=False)
def branch(ctx: Ctx, action: str, name: str | None, ref: str | None) -> None:
    """Branches: list | create NAME [REF] | delete NAME | reset NAME REF."""
    _refs(ctx, "branch", action, name, ref)


@cli.command()
@repo_command
@click.argument("action", type=click.Choice(["list", "create", "delete"]))
@click.argument("name", required=False)
@click.argument("ref", required=False)
def tag(ctx: Ctx, action: str, name: str | None, ref: str | None) -> None:
    """Tags: list | create NAME [REF] | delete NAME."""
    _refs(ctx, "tag", action, name, ref)


@cli.command()
@repo_command
@click.argument("from_ref", metavar="FROM")
@click.argument("to_ref", metavar="TO")
def diff(ctx: Ctx, from_ref: str, to_ref: str) -> None:
    """What changed from FROM to TO (branch, tag or snapshot id; FROM an ancestor)."""
    repo = ctx.repo
    d = repo.diff(from_snapshot_id=resolve(repo, from_ref), to_snapshot_id=resolve(repo, to_ref))
    data: dict[str, Any] = {k: sorted(v) for k, v in asdict(d).items() if k != "updated_chunks"}
    data["updated_chunks"] = {p: sorted(map(list, c)) for p, c in d.updated_chunks.items()}
    ctx.emit(data, lambda: click.echo(str(d)))


@cli.command()
@repo_command
@click.argument("ref", required=False, default="main")
def show(ctx: Ctx, ref: str) -> None:
    """The node tree of REF (default main): shapes, chunk grids, chunk counts."""
    repo = ctx.repo
    sid = resolve(repo, ref)
    session = repo.readonly_session(snapshot_id=sid)
    nodes = []
    for rec in session.nodes():
        entry: dict[str, Any] = {
            "path": rec.path,
            "type": rec.node_type,
            "node_id": str(rec.node_id),
        }
        if rec.node_type == ARRAY:
            meta = session.node_meta(rec)  # checks the document first
            doc = load_json(rec.zarr_json, f"zarr.json of {rec.path!r}")
            chunk_shape = ((doc.get("chunk_grid") or {}).get("configuration") or {}).get(
                "chunk_shape"
            )
            entry.update(
                shape=doc.get("shape"),
                dtype=doc.get("data_type"),
                chunk_shape=chunk_shape,
                chunk_grid=list(meta.grid) if meta.grid is not None else None,
                chunks=runtime.run(count_chunks(repo.reader, rec)),
                segments=len(rec.segments),
            )
        nodes.append(entry)

    def human() -> None:
        click.echo(f"snapshot {sid}")
        for n in nodes:
            depth = 0 if n["path"] == "/" else n["path"].count("/")
            name = n["path"] if n["path"] == "/" else n["path"].rsplit("/", 1)[1]
            pad = "  " * depth
            if n["type"] == ARRAY:
                click.echo(
                    f"{pad}{name}  array {n['dtype']} shape {_dims(n['shape'])} "
                    f"chunks {_dims(n['chunk_shape'])} grid {_dims(n['chunk_grid'])}  "
                    f"{_count(n['chunks'], 'chunk')} written in "
                    f"{_count(n['segments'], 'segment')}"
                )
            else:
                click.echo(f"{pad}{name}{'/' if name != '/' else ''}")

    ctx.emit({"snapshot": sid, "nodes": nodes}, human)


def _count(n: int, noun: str) -> str:
    """``1 chunk``, ``2 chunks``, ``1,000 chunks``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _dims(values: Any) -> str:
    return "?" if values is None else "(" + ", ".join(map(str, values)) + ")"


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@cli.command()
@repo_command
def stats(ctx: Ctx) -> None:
    """Chunk counts and bytes (native, inline, virtual) and objects by kind."""
    repo = ctx.repo
    s = repo.chunk_storage_stats()
    objects = sqlviews.object_counts(repo.storage)
    data = {**asdict(s), "total_bytes": s.total_bytes, "objects": objects}

    def human() -> None:
        for kind, n, b in (
            ("native", s.native_chunks, s.native_bytes),
            ("inline", s.inlined_chunks, s.inlined_bytes),
            ("virtual", s.virtual_chunks, s.virtual_bytes),
        ):
            click.echo(f"{kind:8} {n:>10} chunks {_human_bytes(b):>12}")
        click.echo("objects in storage:")
        for kind, (n, b) in objects.items():
            click.echo(f"  {kind:15} {n:>10} {_human_bytes(b):>12}")

    ctx.emit(data, human)


@cli.command()
@repo_command
@click.argument("query")
def sql(ctx: Ctx, query: str) -> None:
    """Run QUERY in duckdb over the views snapshots, nodes, manifests, transactions, refs."""
    names, rows = sqlviews.run_sql(ctx.repo, query)

    def human() -> None:
        table = [[_cell(v) for v in r] for r in rows]
        widths = [max([len(n), *(len(r[i]) for r in table)]) for i, n in enumerate(names)]
        click.echo("  ".join(n.ljust(w) for n, w in zip(names, widths)).rstrip())
        for r in table:
            click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())

    ctx.emit([dict(zip(names, r)) for r in rows], human)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, dt.datetime):
        return value.isoformat()
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


@cli.command()
@repo_command
@click.option("--branch", "-b", default="main", show_default=True, help="Branch to compact.")
@click.option(
    "--rows-per-segment",
    type=int,
    default=None,
    help="At most this many chunk references per segment (default: the "
    "repository's manifest_split_rows).",
)
def compact(ctx: Ctx, branch: str, rows_per_segment: int | None) -> None:
    """Merge each array's manifest segments; commits a snapshot with identical content."""
    with progress_bar(True) as progress:
        s = ctx.repo.compact(branch, rows_per_segment=rows_per_segment, progress=progress)
    data = {
        "snapshot_id": s.snapshot_id,
        "arrays": {
            p: {"segments_before": b, "segments_after": a} for p, (b, a) in s.arrays.items()
        },
        "refs": s.refs,
        "attempts": s.attempts,
    }

    def human() -> None:
        if s.snapshot_id is None:
            click.echo(f"nothing to compact on {branch}")
            return
        for p, (b, a) in s.arrays.items():
            click.echo(f"{p}: {b} segments -> {a}")
        click.echo(f"committed {s.snapshot_id} on {branch} ({s.refs} chunk references)")

    ctx.emit(data, human)


@cli.command()
@repo_command
@click.option(
    "--older-than",
    "older_than",
    required=True,
    help="Only delete objects older than this (30d, 12h, or an ISO time).",
)
@click.option("--dry-run", is_flag=True, help="Count, delete nothing.")
def gc(ctx: Ctx, older_than: str, dry_run: bool) -> None:
    """Delete unreachable objects older than --older-than."""
    cutoff = parse_age(older_than)
    with progress_bar(True) as progress:
        s = ctx.repo.garbage_collect(cutoff, dry_run=dry_run, progress=progress)
    data = {**asdict(s), "cutoff": cutoff}

    def human() -> None:
        verb = "would delete" if dry_run else "deleted"
        click.echo(
            f"{verb} {_count(s.snapshots_deleted, 'snapshot')}, "
            f"{_count(s.transaction_logs_deleted, 'transaction log')}, "
            f"{_count(s.manifests_deleted, 'manifest')}, {_count(s.chunks_deleted, 'chunk')} "
            f"({_human_bytes(s.bytes_deleted)}); kept {s.reachable:,} reachable "
            f"and {s.kept_young:,} younger than {cutoff.isoformat()}"
        )
        if s.temporaries_deleted:
            click.echo(
                f"removed {_count(s.temporaries_deleted, 'temporary file')} left by "
                "interrupted writes"
            )
        if s.fork_journals_deleted:
            click.echo(f"{verb} {_count(s.fork_journals_deleted, 'fork journal object')}")

    ctx.emit(data, human)


@cli.command()
@repo_command
@click.option(
    "--older-than",
    "older_than",
    required=True,
    help="Drop history written before this (30d, 12h, or an ISO time).",
)
def expire(ctx: Ctx, older_than: str) -> None:
    """Drop old snapshots from branch histories (then run gc to reclaim space)."""
    cutoff = parse_age(older_than)
    with progress_bar(True) as progress:
        ids = ctx.repo.expire_snapshots(cutoff, progress=progress)
    ctx.emit(
        {"expired": sorted(ids), "cutoff": cutoff},
        lambda: click.echo(
            f"expired {_count(len(ids), 'snapshot')} written before {cutoff.isoformat()}"
        ),
    )


@cli.command()
@repo_command
@click.option(
    "--quick", is_flag=True, help="Check chunks' presence and size only, not their checksums."
)
@click.option(
    "--virtual",
    is_flag=True,
    help="Also check that the source file of every virtual chunk a branch or tag reads "
    "exists, is long enough and matches its ETag or last-modified pin.",
)
@click.option(
    "--authorize",
    "authorize",
    multiple=True,
    metavar="PREFIX",
    help="With --virtual: a virtual chunk container (url prefix) fsck may read, with the "
    "environment's credentials; repeatable. Sources under no authorized container are "
    "reported as virtual-unchecked.",
)
def fsck(ctx: Ctx, quick: bool, virtual: bool, authorize: tuple[str, ...]) -> None:
    """Check every reachable object exists and matches its checksum; exit 1 on problems."""
    if authorize and not virtual:
        raise click.UsageError("--authorize is for --virtual")
    ctx.authorize = authorize
    with progress_bar(True) as progress:
        r = ctx.repo.fsck(verify_chunks=not quick, verify_virtual=virtual, progress=progress)
    data = {
        **{k: v for k, v in asdict(r).items() if k != "problems"},
        "ok": r.ok,
        "problems": [asdict(p) for p in r.problems],
    }

    def human() -> None:
        click.echo(
            f"checked {_count(r.refs, 'ref')}, {_count(r.snapshots, 'snapshot')}, "
            f"{_count(r.transaction_logs, 'transaction log')}, "
            f"{_count(r.manifests, 'manifest')}, {_count(r.chunks, 'chunk')} "
            f"({_human_bytes(r.bytes_verified)} verified)"
        )
        if virtual:
            click.echo(
                f"probed {_count(r.virtual_sources, 'virtual chunk source')} for "
                f"{_count(r.virtual_refs, 'virtual reference')}"
            )
        for p in r.problems:
            click.echo(str(p))
        click.echo("ok" if r.ok else _count(len(r.problems), "problem"))

    ctx.emit(data, human)
    if not r.ok:
        sys.exit(1)


@cli.command()
@repo_command
@click.option(
    "--config",
    "config_file",
    type=click.File("r"),
    default=None,
    help="A JSON file with the repository's settings, in the form of its config.json "
    "(format/SPEC.md), e.g. its virtual_chunk_containers.",
)
def init(ctx: Ctx, config_file: Any) -> None:
    """Create an empty repository at REPO (a new or empty directory, or S3 prefix)."""
    config = None
    if config_file is not None:
        where = getattr(config_file, "name", "--config")
        try:
            doc = json.load(config_file)
        except ValueError as e:
            raise click.BadParameter(f"{where}: not JSON: {e}") from None
        if not isinstance(doc, dict):
            raise click.BadParameter(f"{where}: a JSON object of settings expected")
        try:
            config = frazil.RepositoryConfig.from_dict(doc)
        except (FrazilError, FormatError, TypeError, ValueError) as e:
            raise click.BadParameter(f"{where}: {_one(e)}") from None
    if "://" not in ctx.location or ctx.location.startswith("file://"):
        path = ctx.location.removeprefix("file://")
        os.makedirs(path, exist_ok=True)
    repo = frazil.Repository.create(ctx.storage(), config)
    main = repo.lookup_branch("main")
    containers = sorted((config.virtual_chunk_containers or {}) if config else {})
    ctx.emit(
        {"created": ctx.location, "main": main, "virtual_chunk_containers": containers},
        lambda: click.echo(
            f"created an empty frazil repository at {ctx.location} (main at {main})"
            + (f"; virtual chunk containers: {', '.join(containers)}" if containers else "")
        ),
    )


def split_ref(location: str) -> tuple[str, str]:
    """``REPO[@REF]``: the repository and the ref after the last ``@`` (default main), when
    that part names no folder (has no ``/``)."""
    head, sep, ref = location.rpartition("@")
    if sep and head and ref and "/" not in ref:
        return head, ref
    return location, "main"


@cli.command()
@repo_command
@click.argument("dest")
@click.option(
    "--authorize",
    "authorize",
    multiple=True,
    metavar="PREFIX",
    help="A virtual chunk container (url prefix) whose chunks may be read, with the "
    "environment's credentials; repeatable. Needed when the snapshot has virtual chunks.",
)
def export(ctx: Ctx, dest: str, authorize: tuple[str, ...]) -> None:
    """Write REPO[@REF] (branch, tag or snapshot id; default main) to DEST, an empty
    local folder or fsspec URL, as a plain zarr v3 store that zarr opens without frazil."""
    from .export import export as run_export

    ctx.location, ref = split_ref(ctx.location)
    ctx.authorize = authorize
    repo = ctx.repo
    session = repo.readonly_session(snapshot_id=resolve(repo, ref))
    with progress_bar(True) as progress:
        s = run_export(session, dest, progress=progress)
    ctx.emit(
        asdict(s),
        lambda: click.echo(
            f"exported snapshot {s.snapshot_id} to {dest}: {_count(s.keys, 'key')} "
            f"({_count(s.chunks, 'chunk')}, {_human_bytes(s.bytes)})"
        ),
    )


@cli.command("import-icechunk")
@click.argument("source")
@click.argument("dest")
@click.option(
    "--authorize",
    "authorize",
    multiple=True,
    metavar="PREFIX",
    help="An Icechunk virtual chunk container (url prefix) whose chunks may be read, with "
    "the environment's credentials; repeatable. Needed when SOURCE has virtual chunks: they "
    "are read from their sources and written as frazil native chunks.",
)
@click.option(
    "--source-endpoint-url",
    default=None,
    help="S3-compatible endpoint of an s3:// SOURCE (e.g. http://127.0.0.1:8333).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
def import_icechunk(
    source: str,
    dest: str,
    authorize: tuple[str, ...],
    source_endpoint_url: str | None,
    as_json: bool,
) -> None:
    """Copy the Icechunk repository SOURCE (a local path or s3://bucket/prefix) into the
    frazil repository DEST (a local path: created if absent, resumed if an earlier import
    stopped part way): every branch, tag and commit, with messages and metadata.

    Needs the icechunk package. Only Icechunk's public API is used, and it cannot tell
    where a virtual chunk points: every chunk, virtual ones included, is read through
    Icechunk and written as a frazil native chunk (authorize virtual sources with
    --authorize). Each commit copies only what changed since its parent."""
    from .icechunk_import import import_icechunk as run_import
    from .icechunk_import import load_icechunk, open_source

    if "ICECHUNK_LOG" not in os.environ:  # Icechunk logs warnings to stdout: keep it clean
        load_icechunk().set_logs_filter("error")
    src = open_source(
        source,
        authorize_virtual_chunk_access=dict.fromkeys(authorize) if authorize else None,
        endpoint_url=source_endpoint_url,
    )
    if "://" not in dest or dest.startswith("file://"):
        os.makedirs(dest.removeprefix("file://"), exist_ok=True)
    with progress_bar(True) as progress:
        s = run_import(src, storage_for(dest), progress=progress)
    s.destination = dest
    data = {k: v for k, v in asdict(s).items() if k != "snapshots"}
    data["snapshots"] = s.snapshots
    Ctx(dest, as_json, None, None, False).emit(
        data,
        lambda: click.echo(
            f"imported {_count(s.commits_imported, 'commit')} from {source} into {dest} "
            f"({s.commits_already_there} already there; {_count(s.chunks_copied, 'chunk')} "
            f"copied as native chunks, {_human_bytes(s.bytes_copied)}; "
            f"{_count(s.chunks_deleted, 'chunk deletion')}); "
            f"{len(s.branches)} branch{'' if len(s.branches) == 1 else 'es'}, "
            f"{_count(len(s.tags), 'tag')}"
        ),
    )


# -- entry point --------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """The console script: run ``cli``; errors become one line and exit status 1."""
    debug = bool(os.environ.get("FRAZIL_DEBUG"))
    try:
        cli.main(args=argv, prog_name="frazil", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("frazil: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("frazil: interrupted", err=True)
        sys.exit(130)
    except (FrazilError, FormatError) as e:
        if debug:
            raise
        click.echo(f"frazil: error: {_one(e)}", err=True)
        sys.exit(1)
    except Exception as e:  # never a traceback for the user
        if debug:
            raise
        click.echo(f"frazil: error: {type(e).__name__}: {_one(e)}", err=True)
        sys.exit(1)


def _one(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
    main()
