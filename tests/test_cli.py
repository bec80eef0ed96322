"""The ``frazil`` console script, run for real in a subprocess, on repositories the tests
build (local directories and the S3 test server)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
import s3server
import zarr

import frazil
from frazil import runtime

FRAZIL = str(Path(sys.executable).parent / "frazil")


def run(
    *args: str, code: int = 0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [FRAZIL, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc


def run_json(*args: str, env: dict[str, str] | None = None) -> Any:
    return json.loads(run(*args, "--json", env=env).stdout)


def build(storage: frazil.Storage) -> frazil.Repository:
    repo = frazil.Repository.create(
        storage, frazil.RepositoryConfig(inline_chunk_threshold_bytes=8)
    )
    s = repo.writable_session("main")
    g = zarr.group(s.store)
    g.create_group("grp")
    g.create_array("grp/t", shape=(8, 6), chunks=(2, 3), dtype="i4", fill_value=0, compressors=None)
    g.create_array("flags", shape=(5,), chunks=(1,), dtype="u1", fill_value=0, compressors=None)
    s.commit("arrays")
    for i in range(4):
        s = repo.writable_session("main")
        zarr.open_array(s.store, path="grp/t")[2 * i : 2 * i + 2] = i + 1
        zarr.open_array(s.store, path="flags")[i] = 1
        s.commit(f"row {i}", metadata={"n": i})
    return repo


def content(repo: frazil.Repository, ref: str = "main") -> dict[str, list[Any]]:
    s = repo.readonly_session(ref)
    return {p: zarr.open_array(s.store, path=p, mode="r")[...].tolist() for p in ("grp/t", "flags")}


@pytest.fixture
def local_repo(tmp_path: Path) -> tuple[str, frazil.Repository]:
    path = tmp_path / "repo"
    return str(path), build(frazil.local_filesystem_storage(path))


def test_inspection_commands(local_repo: tuple[str, frazil.Repository]) -> None:
    path, repo = local_repo
    history = list(repo.ancestry(branch="main"))
    log = run_json("log", path)
    assert [e["id"] for e in log] == [i.id for i in history]
    assert log[0]["refs"] == ["main"] and log[1]["metadata"] == {"n": 2}
    assert run("log", path, "-n", "1").stdout.splitlines() == [
        f"{history[0].id} {history[0].written_at:%Y-%m-%d %H:%M:%S} (main) row 3"
    ]

    run("branch", path, "create", "dev", history[2].id)
    run("tag", path, "create", "v1")
    assert run_json("branch", path, "list") == {"dev": history[2].id, "main": history[0].id}
    assert run_json("tag", path, "list") == {"v1": history[0].id}
    graph = run("log", path, "--graph").stdout
    assert "(main, tag: v1) row 3" in graph and "(dev) row 1" in graph
    assert graph.splitlines()[-1].endswith("Repository initialized")
    run("branch", path, "reset", "dev", "v1")
    assert repo.lookup_branch("dev") == history[0].id
    run("branch", path, "delete", "dev")
    run("tag", path, "delete", "v1")
    assert repo.list_branches() == {"main"} and repo.list_tags() == set()
    err = run("tag", path, "create", "v1", code=1).stderr
    assert err.count("\n") == 1 and "never reused" in err

    d = run_json("diff", path, history[-2].id, "main")  # from "arrays" to the tip
    assert d["updated_chunks"]["/flags"] == [[0], [1], [2], [3]]
    assert len(d["updated_chunks"]["/grp/t"]) == 8 and d["new_arrays"] == []
    assert "Chunks updated:" in run("diff", path, history[-2].id, "main").stdout

    shown = run_json("show", path)
    nodes = {n["path"]: n for n in shown["nodes"]}
    assert shown["snapshot"] == history[0].id
    assert nodes["/grp/t"] == {
        **nodes["/grp/t"],
        "shape": [8, 6],
        "chunk_shape": [2, 3],
        "chunk_grid": [4, 2],
        "chunks": 8,
        "segments": 4,
    }
    assert nodes["/grp"]["type"] == "group" and nodes["/flags"]["chunks"] == 4
    assert "t  array int32 shape (8, 6)" in run("show", path, history[1].id).stdout

    stats = run_json("stats", path)
    lib = repo.chunk_storage_stats()
    assert (stats["native_chunks"], stats["native_bytes"]) == (lib.native_chunks, 8 * 24)
    assert (stats["inlined_chunks"], stats["inlined_bytes"]) == (4, 4)
    assert stats["objects"]["snapshot"][0] == len(history)


def test_sql_views(local_repo: tuple[str, frazil.Repository]) -> None:
    path, repo = local_repo
    history = list(repo.ancestry(branch="main"))
    rows = run_json(
        "sql",
        path,
        "SELECT path, kind, count(*) AS n FROM manifests GROUP BY ALL ORDER BY path, kind",
    )
    assert rows == [{"path": "/flags", "kind": 1, "n": 4}, {"path": "/grp/t", "kind": 2, "n": 8}]
    snaps = run_json("sql", path, "SELECT id, parent_id, message FROM snapshots ORDER BY id")
    assert [(r["id"], r["message"]) for r in snaps] == [
        (i.id, i.message) for i in reversed(history)
    ]
    n = run_json(
        "sql", path, f"SELECT count(*) AS n FROM nodes WHERE snapshot_id = '{history[0].id}'"
    )
    assert n == [{"n": 4}]  # /, /flags, /grp, /grp/t
    tx = run_json(
        "sql",
        path,
        "SELECT t.snapshot_id, len(t.chunks) AS k FROM transactions t "
        "WHERE change = 'chunks' AND path = '/grp/t' ORDER BY 1",
    )
    assert [r["k"] for r in tx] == [2, 2, 2, 2]
    assert run_json("sql", path, "SELECT name, snapshot_id FROM refs") == [
        {"name": "main", "snapshot_id": history[0].id}
    ]
    human = run("sql", path, "SELECT 1 AS one, NULL AS nothing").stdout.splitlines()
    assert human == ["one  nothing", "1    NULL"]
    err = run("sql", path, "SELECT * FROM nowhere", code=1).stderr
    assert err.startswith("frazil: error: SQL:") and err.count("\n") == 1


def test_maintenance_commands(local_repo: tuple[str, frazil.Repository]) -> None:
    path, repo = local_repo
    before = content(repo)
    originals = {p.name for p in (Path(path) / "manifests").iterdir()}
    compacted = run("compact", path, "--branch", "main", "--json")
    assert compacted.stderr == ""  # no progress bars when stderr is not a terminal
    out = json.loads(compacted.stdout)
    assert out["arrays"]["/grp/t"] == {"segments_before": 4, "segments_after": 1}
    fresh = frazil.Repository.open(frazil.local_filesystem_storage(path))
    assert content(fresh) == before and fresh.lookup_branch("main") == out["snapshot_id"]
    assert "nothing to compact" in run("compact", path).stdout

    assert run("fsck", path).stdout.splitlines()[-1] == "ok"
    dry = run_json("gc", path, "--older-than", "0s", "--dry-run")
    assert dry["dry_run"] and dry["snapshots_deleted"] == 0  # all history is reachable
    expired = run_json("expire", path, "--older-than", "0s")
    assert len(expired["expired"]) == 5  # everything but the tip and the first snapshot
    leftover = Path(path) / "chunks" / ".tmp-0123456789abcdef"  # a killed write's file
    leftover.write_bytes(b"partial")
    old = (dt.datetime.now() - dt.timedelta(hours=1)).timestamp()
    os.utime(leftover, (old, old))
    gc = run_json("gc", path, "--older-than", "0s")
    assert gc["snapshots_deleted"] == 5  # the 5 expired (nothing is rewritten)
    assert gc["temporaries_deleted"] == 1 and not leftover.exists()
    # the segments compaction replaced: every manifest written before it
    remaining = {p.name for p in (Path(path) / "manifests").iterdir()}
    assert gc["manifests_deleted"] == len(originals) and not remaining & originals
    fresh = frazil.Repository.open(frazil.local_filesystem_storage(path))
    assert content(fresh) == before
    assert [i.message for i in fresh.ancestry(branch="main")] == [
        "frazil: compact manifests",
        "Repository initialized",
    ]
    report = run_json("fsck", path)
    assert report["ok"] and report["snapshots"] == 2 and report["chunks"] == 8

    # damage: a chunk removed, a byte flipped in a manifest
    chunk = sorted((Path(path) / "chunks").iterdir())[0]
    chunk.unlink()
    manifest = sorted((Path(path) / "manifests").iterdir())[0]
    data = bytearray(manifest.read_bytes())
    data[40] ^= 0x01
    manifest.write_bytes(bytes(data))
    bad = run("fsck", path, "--json", code=1)
    problems = {(p["kind"], p["key"]) for p in json.loads(bad.stdout)["problems"]}
    assert problems == {
        ("missing", f"chunks/{chunk.name}"),
        ("damaged", f"manifests/{manifest.name}"),
    }
    human = run("fsck", path, code=1).stdout
    assert "\n2 problems\n" in human and f"missing: chunks/{chunk.name}" in human


def test_errors_are_one_line(tmp_path: Path, local_repo: tuple[str, frazil.Repository]) -> None:
    path, _ = local_repo
    for args in (
        ["log", str(tmp_path / "nowhere")],
        ["log", path, "--branch", "nope"],
        ["show", path, "nope"],
        ["log", str(tmp_path)],
        ["log", "gs://bucket/x"],
    ):
        proc = run(*args, code=1 if args[1] != "gs://bucket/x" else 2)
        assert proc.stdout == "" and proc.stderr.strip(), args
        if proc.returncode == 1:
            assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("frazil: error:")
    assert "Invalid value" in run("gc", path, "--older-than", "soon", code=2).stderr


def test_s3_repository(s3_server: Any) -> None:
    prefix = s3server.new_prefix()
    repo = build(s3server.storage(prefix))
    url = f"s3://{s3server.BUCKET}/{prefix}"
    env = {
        "AWS_ACCESS_KEY_ID": s3server.ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": s3server.SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    opts = ["--endpoint-url", s3_server.endpoint_url]
    history = list(repo.ancestry(branch="main"))
    assert [e["id"] for e in run_json("log", url, *opts, env=env)] == [i.id for i in history]
    assert run_json("sql", url, *opts, "SELECT count(*) AS n FROM manifests", env=env) == [
        {"n": 12}
    ]
    before = content(repo)
    originals = set(frazil.runtime.run(repo.storage.list("manifests/")))
    out = run_json("compact", url, *opts, env=env)
    assert out["arrays"]["/flags"] == {"segments_before": 4, "segments_after": 1}
    assert len(run_json("expire", url, *opts, "--older-than", "0s", env=env)["expired"]) == 5
    gc = run_json("gc", url, *opts, "--older-than", "0s", env=env)
    assert (gc["snapshots_deleted"], gc["manifests_deleted"]) == (5, len(originals))
    assert not set(frazil.runtime.run(repo.storage.list("manifests/"))) & originals
    assert run_json("fsck", url, *opts, env=env)["ok"]
    assert content(frazil.Repository.open(s3server.storage(prefix))) == before
    # credentials are required: without them the command fails in one line
    bad = run(
        "log",
        url,
        *opts,
        code=1,
        env={"AWS_ACCESS_KEY_ID": "nobody", "AWS_SECRET_ACCESS_KEY": "wrong"},
    )
    assert bad.stderr.startswith("frazil: error:")


def test_age_parsing() -> None:
    from frazil.tools.cli import parse_age

    now = dt.datetime.now(dt.UTC)
    assert abs((now - parse_age("2d")) - dt.timedelta(days=2)) < dt.timedelta(seconds=5)
    assert parse_age("2024-01-02T03:04:05") == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert parse_age("1.5h") < now - dt.timedelta(minutes=89)


def test_show_counts_match_the_library(local_repo: tuple[str, frazil.Repository]) -> None:
    path, repo = local_repo
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="grp/t")[0:2] = 0  # the fill value: chunks deleted
    s.commit("clear row 0")
    shown = {
        n["path"]: n["chunks"] for n in run_json("show", path)["nodes"] if n["type"] == "array"
    }
    live = {
        p: len(runtime.run(repo.readonly_session("main").chunk_coords(p)))
        for p in ("/grp/t", "/flags")
    }
    assert shown == live == {"/grp/t": 6, "/flags": 4}
    assert np.array(content(repo)["grp/t"])[0:2].sum() == 0


@pytest.mark.parametrize(
    "command",
    [
        ("fsck",),
        ("compact", "--branch", "main"),
        ("gc", "--older-than", "0s", "--dry-run"),
        ("expire", "--older-than", "0s"),
    ],
)
def test_progress_bars_on_a_terminal(
    local_repo: tuple[str, frazil.Repository], command: tuple[str, ...]
) -> None:
    """With stderr on a terminal (a pseudo-terminal here), the long commands draw rich
    progress bars there; stdout keeps only the result."""
    import pty

    path, _ = local_repo
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [FRAZIL, command[0], path, *command[1:]],
            stdout=subprocess.PIPE,
            stderr=follower,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
        )
        os.close(follower)
        drawn = bytearray()
        while True:
            try:
                piece = os.read(leader, 65536)
            except OSError:  # the child closed its end of the terminal
                break
            if not piece:
                break
            drawn += piece
        out, _ = proc.communicate(timeout=120)
    finally:
        os.close(leader)
    assert proc.returncode == 0, drawn.decode(errors="replace")
    text = drawn.decode(errors="replace")
    assert "Traceback" not in text
    assert "\x1b[" in text and "/" in text  # drawn with escape codes, "done/total" counts
    assert out.strip() and b"\x1b[" not in out


# -- polish: help, plurals, kind names, init, fsck --virtual ----------------------------------


def test_every_option_has_help() -> None:
    from frazil.tools.cli import cli

    missing = [
        f"{name} {param.opts[0]}"
        for name, command in cli.commands.items()
        for param in command.params
        if isinstance(param, click.Option) and not (param.help or "").strip()
    ]
    assert missing == []
    assert all((c.help or "").strip() for c in cli.commands.values())


def test_plurals_and_kind_names(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    repo = frazil.Repository.create(
        frazil.local_filesystem_storage(path),
        frazil.RepositoryConfig(inline_chunk_threshold_bytes=0),
    )
    s = repo.writable_session("main")
    a = zarr.create_array(s.store, name="one", shape=(4,), chunks=(4,), dtype="i4", fill_value=0)
    a[:] = 7
    s.commit("one chunk")
    lines = run("show", str(path)).stdout.splitlines()
    assert any(line.endswith("1 chunk written in 1 segment") for line in lines), lines
    assert run("expire", str(path), "--older-than", "30d").stdout.startswith("expired 0 snapshots")
    rows = run_json(
        "sql", str(path), "SELECT kind, kind_name, count(*) AS n FROM manifests GROUP BY ALL"
    )
    assert rows == [{"kind": 2, "kind_name": "native", "n": 1}]
    names = run_json("sql", str(path), "SELECT DISTINCT kind_name FROM manifests")
    assert names == [{"kind_name": "native"}]


def test_init(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    prefix = f"file://{data}/"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(
        json.dumps(
            {
                "inline_chunk_threshold_bytes": 0,
                "virtual_chunk_containers": [
                    {"url_prefix": prefix, "store": {"type": "local", "path": str(data)}}
                ],
            }
        )
    )
    where = tmp_path / "new" / "repo"
    out = run_json("init", str(where), "--config", str(cfg))
    assert out["virtual_chunk_containers"] == [prefix]
    repo = frazil.Repository.open(frazil.local_filesystem_storage(where))
    assert out["main"] == repo.lookup_branch("main")
    assert repo.config.inline_chunk_threshold_bytes == 0
    assert repo.config.get_virtual_chunk_container(prefix) is not None
    err = run("init", str(where), code=1).stderr  # never over an existing repository
    assert err.startswith("frazil: error:") and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert (
        "a JSON object" in run("init", str(tmp_path / "other"), "--config", str(bad), code=2).stderr
    )
    assert not (tmp_path / "other" / "refs").exists()


def _virtual_repo(tmp_path: Path) -> tuple[Path, str, Path]:
    data = tmp_path / "data"
    data.mkdir()
    src = data / "source.bin"
    src.write_bytes(bytes(range(64)))
    prefix = f"file://{data}/"
    config = frazil.RepositoryConfig.default()
    config.set_virtual_chunk_container(
        frazil.VirtualChunkContainer(prefix, frazil.local_filesystem_store(str(data)))
    )
    path = tmp_path / "repo"
    repo = frazil.Repository.create(
        frazil.local_filesystem_storage(path),
        config,
        authorize_virtual_chunk_access=frazil.containers_credentials({prefix: None}),
    )
    s = repo.writable_session("main")
    zarr.create_array(
        s.store, name="v", shape=(64,), chunks=(16,), dtype="u1", fill_value=0, compressors=None
    )
    for i in range(4):
        s.store.set_virtual_ref(f"v/c/{i}", f"{prefix}source.bin", offset=16 * i, length=16)
    s.commit("virtual")
    return path, prefix, src


def test_fsck_virtual(tmp_path: Path) -> None:
    path, prefix, src = _virtual_repo(tmp_path)
    assert run_json("fsck", str(path))["ok"]  # without --virtual nothing external is read
    ok = run_json("fsck", str(path), "--virtual", "--authorize", prefix)
    assert ok["ok"] and (ok["virtual_sources"], ok["virtual_refs"]) == (1, 4)
    # not authorized: reported as unchecked, never read
    unchecked = run_json_code("fsck", str(path), "--virtual")
    assert [p["kind"] for p in unchecked["problems"]] == ["virtual-unchecked"]
    assert unchecked["virtual_sources"] == 0
    src.write_bytes(bytes(40))  # too short for the last two chunks
    short = run_json_code("fsck", str(path), "--virtual", "--authorize", prefix)
    assert [(p["kind"], p["key"]) for p in short["problems"]] == [
        ("virtual", f"{prefix}source.bin")
    ]
    src.unlink()
    human = run("fsck", str(path), "--virtual", "--authorize", prefix, code=1).stdout
    assert f"virtual: {prefix}source.bin:" in human and human.rstrip().endswith("1 problem")
    assert run("fsck", str(path), "--authorize", prefix, code=2).returncode == 2


def test_fsck_virtual_pins(tmp_path: Path) -> None:
    path, prefix, src = _virtual_repo(tmp_path)
    repo = frazil.Repository.open(
        frazil.local_filesystem_storage(path),
        authorize_virtual_chunk_access=frazil.containers_credentials({prefix: None}),
    )
    s = repo.writable_session("main")
    etag = frazil.local_etag(src)
    s.store.set_virtual_ref("v/c/0", f"{prefix}source.bin", offset=0, length=16, checksum=etag)
    s.commit("pinned")
    assert repo.fsck(verify_virtual=True).ok
    before = src.stat().st_mtime_ns
    src.write_bytes(bytes(reversed(range(64))))  # same length, other content and ETag
    os.utime(src, ns=(before + 2 * 10**9, before + 2 * 10**9))  # whatever the clock's grain
    report = repo.fsck(verify_virtual=True, verify_chunks=False)
    assert [p.kind for p in report.problems] == ["virtual"]
    assert "ETag" in report.problems[0].message
    assert report.virtual_sources == 2  # (file, pinned) and (file, unpinned)


def run_json_code(*args: str) -> Any:
    return json.loads(run(*args, "--json", code=1).stdout)


def test_export(local_repo: tuple[str, frazil.Repository], tmp_path: Path) -> None:
    path, repo = local_repo
    first = list(repo.ancestry(branch="main"))[-2].id  # "arrays": before any row was written
    out = tmp_path / "plain"
    summary = run_json("export", f"{path}@main", str(out))
    assert summary["snapshot_id"] == repo.lookup_branch("main") and summary["chunks"] > 0
    # zarr alone, no frazil: the same content
    group = zarr.open_group(zarr.storage.LocalStore(out, read_only=True), mode="r")
    assert {k: group[k][...].tolist() for k in ("grp/t", "flags")} == content(repo)
    old = tmp_path / "old"
    run("export", f"{path}@{first}", str(old))
    group = zarr.open_group(zarr.storage.LocalStore(old, read_only=True), mode="r")
    then = repo.readonly_session(snapshot_id=first)
    assert group["grp/t"][...].tolist() == zarr.open_array(then.store, path="grp/t")[...].tolist()
    assert not group["grp/t"][...].any()  # nothing written yet at that snapshot
    err = run("export", path, str(out), code=1).stderr  # never into a non-empty folder
    assert "not empty" in err and len(err.strip().splitlines()) == 1
    human = run("export", path, str(tmp_path / "h")).stdout
    assert human.startswith(f"exported snapshot {repo.lookup_branch('main')} to ")


def test_export_virtual_needs_authorization(tmp_path: Path) -> None:
    from frazil.tools.export import export

    path, prefix, src = _virtual_repo(tmp_path)
    err = run("export", str(path), str(tmp_path / "x"), code=1).stderr
    assert "not authorized" in err
    run("export", str(path), str(tmp_path / "y"), "--authorize", prefix)
    got = zarr.open_array(zarr.storage.LocalStore(tmp_path / "y", read_only=True), path="v")
    assert got[...].tolist() == list(range(64))  # the source file's bytes
    repo = frazil.Repository.open(frazil.local_filesystem_storage(path))
    with pytest.raises(frazil.InvalidInputError, match="read-only session"):
        export(repo.writable_session("main"), str(tmp_path / "z"))


def test_split_ref() -> None:
    from frazil.tools.cli import split_ref

    assert split_ref("/data/repo@v1") == ("/data/repo", "v1")
    assert split_ref("/data/repo") == ("/data/repo", "main")
    assert split_ref("/data/a@b/repo") == ("/data/a@b/repo", "main")
    assert split_ref("s3://bucket/prefix@dev") == ("s3://bucket/prefix", "dev")
