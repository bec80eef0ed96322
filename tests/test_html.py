"""Notebook views (``_repr_html_``): parsed back with the standard library's HTML parser,
they hold only frazil's own markup, and every name and message from the repository (a
branch named ``<script>``, a hostile tag, message and metadata) shows as text."""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import zarr

import frazil
from frazil.conflicts import ConflictDetector
from frazil.errors import ConflictError

ALLOWED = {"style", "div", "b", "table", "thead", "tbody", "tr", "th", "td", "code", "span"}
HOSTILE_TAG = '"><img src=x onerror=alert(1)>'
HOSTILE_MESSAGE = "<script>alert('message')</script> & done"


class Parsed(HTMLParser):
    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self.open: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, (self.open, tag)
        self.open.pop()

    def handle_data(self, data: str) -> None:
        if not self.open or self.open[-1] != "style":
            self.text.append(data)

    @property
    def all_text(self) -> str:
        return "".join(self.text)


def check(markup: str) -> Parsed:
    """Well nested, only frazil's tags and class attributes."""
    p = Parsed(markup)
    assert p.open == []
    assert set(p.tags) <= ALLOWED, set(p.tags) - ALLOWED
    assert {name for name, _ in p.attrs} <= {"class"}
    return p


@pytest.fixture
def repo() -> frazil.Repository:
    repo = frazil.Repository.create(frazil.in_memory_storage())
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="temp", shape=(8,), chunks=(2,), dtype="i4", fill_value=0)
    s.commit("arrays")
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="temp")[:4] = 1
    s.commit(HOSTILE_MESSAGE, metadata={"who": "<b>bold</b>"})
    repo.create_branch("<script>", repo.lookup_branch("main"))
    repo.create_tag(HOSTILE_TAG, repo.lookup_branch("main"))
    return repo


def test_repository_and_history_views(repo: frazil.Repository) -> None:
    view = check(repo._repr_html_())
    assert "<script>" in view.all_text and HOSTILE_TAG in view.all_text
    assert repo.lookup_branch("<script>") in view.all_text
    history = repo.ancestry(branch="main")
    shown = check(history._repr_html_())
    assert HOSTILE_MESSAGE in shown.all_text and "Repository initialized" in shown.all_text
    # showing it read history afresh: the iterator still yields everything
    assert [i.message for i in history] == [HOSTILE_MESSAGE, "arrays", "Repository initialized"]
    info = repo.lookup_snapshot(repo.lookup_branch("main"))
    entry = check(info._repr_html_())
    assert HOSTILE_MESSAGE in entry.all_text and '"who": "<b>bold</b>"' in entry.all_text


def test_long_history_is_cut(repo: frazil.Repository) -> None:
    from frazil import html

    for i in range(html.LIMIT):
        s = repo.writable_session("main")
        zarr.open_array(s.store, path="temp")[0] = i
        s.commit(f"commit {i}")
    view = check(repo.ancestry(branch="main")._repr_html_())
    assert f"commit {html.LIMIT - 1}" in view.all_text and "older snapshots not shown" in (
        view.all_text
    )
    assert "Repository initialized" not in view.all_text


def test_session_and_diff_views(repo: frazil.Repository) -> None:
    s = repo.writable_session("<script>")
    assert "Uncommitted" not in check(s._repr_html_()).all_text  # nothing staged yet
    zarr.open_array(s.store, path="temp")[6:] = 5
    view = check(s._repr_html_())
    assert "<script>" in view.all_text and "writable" in view.all_text
    assert "Uncommitted changes" in view.all_text and "[3]" in view.all_text
    d = repo.diff(from_snapshot_id=repo.lookup_tag(HOSTILE_TAG), to_branch="main")
    assert "no changes" in check(d._repr_html_()).all_text
    first = next(iter(repo.ancestry(branch="main"))).parent_id
    d = repo.diff(from_snapshot_id=first, to_branch="main")
    dv = check(d._repr_html_())
    assert "/temp" in dv.all_text and "[0], [1]" in dv.all_text
    ro = check(repo.readonly_session("main")._repr_html_())
    assert "read-only" in ro.all_text and "Uncommitted" not in ro.all_text


def test_conflict_error_view(repo: frazil.Repository) -> None:
    a = repo.writable_session("main")
    b = repo.writable_session("main")
    zarr.open_array(a.store, path="temp")[0] = 7
    zarr.open_array(b.store, path="temp")[0] = 8
    a.commit("a")
    with pytest.raises(ConflictError) as err:
        b.commit("b", rebase_with=ConflictDetector())
    view = check(err.value._repr_html_())
    assert "/temp" in view.all_text and "[0]" in view.all_text
    assert any(k in view.all_text for k in ("ChunkDoubleUpdate", "ChunksUpdatedInUpdatedArray"))


@pytest.mark.slow
def test_views_render_in_chromium(repo: frazil.Repository, tmp_path: Path) -> None:
    """The views in a real browser (Debian's chromium, headless): the page renders, and no
    script from the repository ran (it would have changed the title)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("this long test needs Debian's chromium package (apt-get install chromium)")
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="temp")[6:] = 5
    page = tmp_path / "views.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>views</title>"
        "<script>window.onerror=()=>document.title='SCRIPT ERROR'</script></head><body>"
        + repo._repr_html_()
        + repo.ancestry(branch="main")._repr_html_()
        + s._repr_html_()
        + "</body></html>"
    )
    shot = Path(os.environ.get("FRAZIL_SCREENSHOT", tmp_path / "views.png"))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=640,420", page.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 10_000
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", page.as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "<title>views</title>" in dom  # no injected script changed it
    assert "&lt;script&gt;" in dom and "<img" not in dom
