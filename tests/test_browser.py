"""The Browser widget, without a kernel: state after filter, sort, select, load, delete, history, copy key."""

from __future__ import annotations

import logging
import struct
import sys
import zlib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ipywidgets as widgets
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig
from bh_notebook.notebook.browser import Browser, array_picture
from bh_notebook.notebook.progress import Progress
from bh_notebook.testing.counting import CountingBucket
from bh_notebook.storage import open_bucket


@pytest.fixture(autouse=True)
def callbacks_must_not_fail(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """ipywidgets only logs exceptions raised in callbacks when no shell runs; fail the test on them."""
    caplog.set_level(logging.WARNING)
    yield
    bad = [r for r in caplog.records if "Exception in callback" in r.getMessage() or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[BucketSQLite, CountingBucket]]:
    config = BucketConfig.for_local(tmp_path / "store")
    counting = CountingBucket(open_bucket(config))
    bh = BucketSQLite(config, SnapshotConfig(interval_seconds=0), bucket_client=counting).start()
    rng = np.random.default_rng(0)
    bh.frames.put("sales", pd.DataFrame({"region": ["EU", "US"] * 50, "units": np.arange(100)}),
                  metadata={"note": "raw export"})
    bh.frames.put("sales", pd.DataFrame({"region": ["EU"] * 10, "units": np.arange(10)}),
                  metadata={"note": "cleaned export"})
    bh.arrays.put("weights", rng.normal(size=(40, 30)))
    bh.arrays.put("signal", np.sin(np.linspace(0, 10, 200)))
    bh.arrays.put("big", rng.normal(size=(2_000_000,)))  # 16 MB: previews read only its first rows
    bh.named_files.put("readme", b"# Title\nsome text\n" * 3, metadata={"note": "docs"})
    bh.named_files.put("logo", Path(_write_png(tmp_path)))
    bh.kv["lr"] = "0.01"
    yield bh, counting
    bh.stop()


def _write_png(tmp_path: Path) -> str:
    path = tmp_path / "logo.png"
    png = array_picture(np.arange(10.0))
    assert png is not None
    path.write_bytes(png)
    return str(path)


def test_listing_is_served_from_the_catalog(store) -> None:  # type: ignore[no-untyped-def]
    bh, counting = store
    counting.reset()
    b = Browser(bh)
    assert b.names == ["lr", "logo", "readme", "big", "signal", "weights", "sales"]  # newest first
    assert counting.calls == {}  # no bucket request to list
    assert "7 entries" in b.page_label.value
    assert "local" in b.state.value and "unsaved changes" in b.state.value
    assert len(repr(b)) < 200


def test_search_and_kind_filter(store) -> None:  # type: ignore[no-untyped-def]
    b = Browser(store[0])
    b.search.value = "s*"
    assert b.names == ["signal", "sales"]
    b.search.value = "ned exp"  # a substring of a note
    assert b.names == ["sales"]
    b.search.value = ""
    b.kind.value = "arrays"
    assert b.names == ["big", "signal", "weights"]
    b.kind.value = "kv"
    assert b.names == ["lr"]


def test_sort_and_pages(store) -> None:  # type: ignore[no-untyped-def]
    b = Browser(store[0], page_size=3)
    b.sort.value = "name"
    b.order.value = False
    assert b.names == sorted(b.names)
    assert [r["name"] for r in b.visible] == ["big", "logo", "lr"]
    b.next_button.click()
    assert [r["name"] for r in b.visible] == ["readme", "sales", "signal"]
    b.next_button.click()
    b.next_button.click()  # stays on the last page
    assert [r["name"] for r in b.visible] == ["weights"] and "page 3 of 3" in b.page_label.value
    b.prev_button.click()
    assert b.page == 1
    b.sort.value = "size"
    b.order.value = True
    assert b.names[0] == "big"


def test_select_previews_fetch_little_and_are_cached(store) -> None:  # type: ignore[no-untyped-def]
    bh, counting = store
    b = Browser(bh)
    counting.reset()
    b.select("big")
    text = b.preview_text()
    assert "shape (2000000,)" in text and "min" in text and "first 524,272 rows" in text
    assert counting.bytes_in <= 4 * 1024 * 1024
    assert any(type(w).__name__ == "Image" for w in b.preview.children[0].children)
    fetched = counting.bytes_in
    b.select("sales")
    assert "10 rows x 2 columns" in b.preview_text() and "<table" in b.preview_text()
    b.select("big")
    assert counting.bytes_in > fetched  # the frame preview read something...
    before = counting.bytes_in
    b.select("big")
    assert counting.bytes_in == before  # ...but a cached preview reads nothing
    b.select("readme")
    assert "# Title" in b.preview_text() and "docs" in b.preview_text()
    b.select("logo")
    assert "image/png" in b.preview_text()
    b.select("lr")
    assert "0.01" in b.preview_text()
    b.select("weights")
    assert "shape (40, 30)" in b.preview_text()


def test_load_returns_and_binds(store, shell) -> None:  # type: ignore[no-untyped-def]
    bh = store[0]
    b = Browser(bh)
    b.select("weights")
    assert b.var_name.value == "weights"
    value = b.load()  # no shell: returned only
    np.testing.assert_array_equal(value, bh.arrays.get("weights"))
    b2 = Browser(bh, shell=shell)
    b2.select("sales")
    b2.var_name.value = "my_sales"
    b2.load_button.click()
    pd.testing.assert_frame_equal(shell.user_ns["my_sales"], bh.frames.get("sales"))
    assert "my_sales" in b2.status.value


def test_history_then_load_an_old_version(store) -> None:  # type: ignore[no-untyped-def]
    bh = store[0]
    b = Browser(bh)
    b.select("sales")
    b.history_button.click()
    assert [v for _, v in b.versions.options] == [2, 1] and b.versions.layout.display is None
    b.versions.value = 1
    assert "100 rows" in b.preview_text()
    old = b.load(var="old")
    assert len(old) == 100


def test_delete_needs_confirmation(store) -> None:  # type: ignore[no-untyped-def]
    bh = store[0]
    b = Browser(bh)
    b.select("signal")
    b.delete_button.click()
    assert "signal" in bh.arrays and b.confirm_button.layout.display is None
    b.cancel_button.click()
    assert b.confirm_button.layout.display == "none" and "signal" in bh.arrays
    b.delete_button.click()
    b.confirm_button.click()
    assert "signal" not in bh.arrays and "signal" not in b.names and b.selected is None
    b.select("lr")
    b.delete(confirm=True)
    assert "lr" not in bh.kv


def test_copy_key(store) -> None:  # type: ignore[no-untyped-def]
    bh = store[0]
    b = Browser(bh)
    b.select("weights")
    b.copy_button.click()
    assert b.key_box.value == bh.files.object_key(bh.arrays.info("weights").bh_key)


def test_actions_need_a_selection(store) -> None:  # type: ignore[no-untyped-def]
    b = Browser(store[0])
    with pytest.raises(ValueError, match="select an entry"):
        b.load()
    with pytest.raises(KeyError):
        b.select("nothing-like-this")


PICTURED = [np.arange(50.0), np.random.default_rng(1).normal(size=200_000), np.arange(100).reshape(10, 10),
            np.array([np.nan, 1.0, 2.0]), np.sin(np.linspace(0, 10, 5000))]


def test_pictures_without_matplotlib_are_valid_png(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    for data in PICTURED:
        png = array_picture(data)
        assert png is not None and png.startswith(b"\x89PNG\r\n\x1a\n")
        width, height = struct.unpack(">II", png[16:24])
        assert 0 < width <= 320 and 0 < height <= 120
        idat = png[png.index(b"IDAT") + 4:png.index(b"IEND") - 8]
        assert len(zlib.decompress(idat)) == height * (width * 3 + 1)
    assert array_picture(np.array(["a"])) is None and array_picture(np.zeros((2, 2, 2))) is None


def test_pictures_are_drawn_by_matplotlib_when_installed() -> None:
    pytest.importorskip("matplotlib")
    for data in PICTURED:
        png = array_picture(data)
        assert png is not None and png.startswith(b"\x89PNG\r\n\x1a\n")
        assert struct.unpack(">II", png[16:24]) == (640, 240)  # drawn at twice the size shown, with axes
    assert array_picture(np.array(["a"])) is None and array_picture(np.zeros((2, 2, 2))) is None


def test_matplotlib_is_imported_only_to_draw() -> None:
    import subprocess

    code = ("import sys, bh_notebook.notebook.browser, bh_notebook.notebook.magics; "
            "print('matplotlib' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == "False"


def test_progress_text_bar_after_a_second(capsys: pytest.CaptureFixture[str]) -> None:
    import io

    out = io.StringIO()
    quick = Progress("put x", 100, widget=False, stream=out)
    quick(100)
    quick.close()
    assert out.getvalue() == "" and quick.summary is not None  # short transfers show nothing
    slow = Progress("put big", 1000, widget=False, stream=out, show_after=0.0)
    slow(500)
    slow(500)
    slow.close()
    text = out.getvalue()
    assert text.rstrip().splitlines()[-1].split("\r")[-1].startswith("put big: 100%|")
    assert "0.98kB/0.98kB" in text  # tqdm's units, 1024 to the k


def test_progress_in_a_kernel_is_tqdms_notebook_bar() -> None:
    from tqdm.notebook import tqdm as notebook_tqdm

    bar = Progress("get y", 10, widget=True, show_after=0.0)
    bar(10)
    bar.close()
    assert isinstance(bar._bar, notebook_tqdm) and bar._bar.container.children[1].value == 10


def test_progress_shown_for_long_api_transfers(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Progress.__init__, "__kwdefaults__", {"show_after": 0.0, "widget": False, "stream": None})
    with BucketSQLite(BucketConfig.for_local(tmp_path / "p"), SnapshotConfig(interval_seconds=0)) as bh:
        bh.arrays.put("a", np.zeros(1_000_000))
        bh.arrays.get("a")
    err = capsys.readouterr().err
    assert "put a.npy: 100%" in err and "get a.npy: 100%" in err and "7.63MB/7.63MB" in err


# -- hostile names: everything that reaches HTML is escaped ---------------------------------------------------

HOSTILE = ["<img src=x onerror=\"window.__pwned=1\">", "<script>window.__pwned=1</script>", "a&b \"q\" 'q'",
           "<b onmouseover='x'>bold"]


class _Tags(HTMLParser):
    """Collects the tags and attributes a piece of markup would create in a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


SAFE_TAGS = {"span", "b", "i", "br", "pre", "code", "table", "thead", "tbody", "tr", "th", "td", "style", "div"}


def _html_values(w: Any) -> list[str]:
    found = [w.value] if isinstance(w, widgets.HTML) else []
    for child in getattr(w, "children", ()):
        found += _html_values(child)
    return found


def _assert_inert(b: Browser) -> str:
    """Every HTML widget of the browser creates only harmless tags, no event handler; returns the visible text."""
    text = []
    for markup in _html_values(b):
        parser = _Tags()
        parser.feed(markup)
        for tag, attrs in parser.tags:
            assert tag in SAFE_TAGS, (tag, markup)
            assert all(not name.startswith("on") and name != "src" for name, _ in attrs), (attrs, markup)
        text.append("".join(parser.text))
    return "\n".join(text)


def _hostile_store(root: Path, name: str) -> BucketSQLite:
    bh = BucketSQLite(BucketConfig.for_local(root), SnapshotConfig(interval_seconds=0)).start()
    meta = {"note": name, name: name}
    bh.frames.put(name, pd.DataFrame({name: [name, "x"], "n": [1, 2]}), metadata=meta)
    bh.frames.put(name, pd.DataFrame({name: [name], "n": [3]}), metadata=meta)
    bh.arrays.put(name, np.zeros(3, dtype=[(name, "f8")]), metadata=meta)
    bh.named_files.put(name, name.encode(), metadata=meta)
    bh.kv[name] = name
    return bh


def _drive_every_view(b: Browser, name: str, shell: Any) -> str:
    seen = [_assert_inert(b)]
    for kind in ("frame", "array", "file", "kv"):
        b.select(name, kind)
        seen.append(_assert_inert(b))
        b.history()
        b.copy_key()
        b.delete()  # asks first: the status line names the entry
        seen.append(_assert_inert(b))
        b.load(var=name)  # not a variable name: the status line says so
        seen.append(_assert_inert(b))
        b.load(var="ok")
        seen.append(_assert_inert(b))
    b.shell = shell
    b.select(name, "frame")
    b.load(var="ok")
    seen.append(_assert_inert(b))
    b._preview_cache.clear()
    b.bh.frames.delete(name)  # the preview of a vanished entry shows the error text
    b._show_preview()
    seen.append(_assert_inert(b))
    return "\n".join(seen)


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_show_as_text(tmp_path: Path, name: str, shell: Any) -> None:
    bh = _hostile_store(tmp_path / "s", name)
    try:
        b = Browser(bh, shell=None)
        text = _drive_every_view(b, name, shell)
        assert name in text  # shown literally, as text
        assert name in b.message or name.replace("\"", "'") in b.message or "loaded" in b.message
    finally:
        bh.stop()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(alphabet=st.sampled_from("<>&\"'=/ abxs"), min_size=1, max_size=30).filter(
    lambda s: s == s.strip() and not s.startswith("/") and not s.endswith("/")
    and all(p not in ("", ".", "..") for p in s.split("/"))))
def test_any_name_reaches_html_escaped(tmp_path: Path, name: str) -> None:
    import uuid

    bh = BucketSQLite(BucketConfig.for_local(tmp_path / uuid.uuid4().hex), SnapshotConfig(interval_seconds=0)).start()
    try:
        bh.arrays.put(name, np.arange(3.0), metadata={"note": name})
        bh.kv[name] = name
        b = Browser(bh)
        for kind in ("array", "kv"):
            b.select(name, kind)
            b.delete()
            assert name in _assert_inert(b)
    finally:
        bh.stop()


def test_progress_labels_are_escaped_in_the_notebook_bar() -> None:
    bar = Progress(HOSTILE[0], 10, widget=True, show_after=0.0)
    bar(5)
    values = [w.value for w in bar._bar.container.children if isinstance(w, widgets.HTML)]
    bar(5)
    bar.close()
    values += [w.value for w in bar._bar.container.children if isinstance(w, widgets.HTML)]
    assert any("&lt;img" in v for v in values)
    for markup in values:
        parser = _Tags()
        parser.feed(markup)
        assert parser.tags == [], markup


def test_refresh_pulls_a_teammates_entries(store: tuple[BucketSQLite, CountingBucket]) -> None:
    bh = store[0]
    bh.force_flush()
    b = Browser(bh)
    with BucketSQLite(bh.config, SnapshotConfig(interval_seconds=0)) as teammate:
        teammate.arrays.put("teammate_result", np.arange(3))
    b.refresh()  # what search and sorting call: no bucket request, the old catalog
    assert "teammate_result" not in [r["name"] for r in b._rows]
    b.refresh_button.click()  # the Refresh button pulls first
    assert "teammate_result" in [r["name"] for r in b._rows]
    assert "pulled" in b.message
