"""%bh_put and %bh_get with every frame type, numpy text scalars, and --rows reading only its row groups."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from IPython.core.interactiveshell import InteractiveShell

from bh_notebook.interfaces import frames as frames_mod
from bh_notebook.notebook.browser import Browser


@pytest.fixture
def ip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.chdir(tmp_path)
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "bh_notebook")
    yield shell
    shell.run_line_magic("unload_ext", "bh_notebook")
    InteractiveShell.clear_instance()


def test_put_series_polars_arrow_and_numpy_text(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    pl = pytest.importorskip("polars")
    s = pd.Series([1.5, 2.5], name="price")
    p = pl.DataFrame({"a": [1, 2, 3], "b": ["x", "y", None]})
    t = pa.table({"n": [[1], [2, 3]]})
    ip.user_ns.update(s=s, p=p, lz=p.lazy(), t=t, word=np.str_("hello"), raw=np.bytes_(b"\x00\x01"))
    ip.run_line_magic("bh_put", "s p lz t word raw")
    out = capsys.readouterr().out.splitlines()[-6:]
    assert [line.split()[:2] for line in out] == [["s", "frame"], ["p", "frame"], ["lz", "frame"], ["t", "frame"],
                                                  ["word", "kv"], ["raw", "file"]]
    for name in ["s", "p", "lz", "t", "word", "raw"]:
        del ip.user_ns[name]
    pd.testing.assert_series_equal(ip.run_line_magic("bh_get", "s"), s)
    from polars.testing import assert_frame_equal

    assert_frame_equal(ip.run_line_magic("bh_get", "p"), p)
    assert_frame_equal(ip.run_line_magic("bh_get", "lz"), p)
    assert_frame_equal(ip.run_line_magic("bh_get", "p --rows 1:3"), p[1:3])
    assert ip.run_line_magic("bh_get", "t").equals(t)
    assert ip.run_line_magic("bh_get", "word") == "hello" and type(ip.user_ns["word"]) is str
    assert ip.run_line_magic("bh_get", "raw") == b"\x00\x01"


def test_get_rows_reads_only_its_row_groups(ip: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frames_mod, "ROW_GROUP_SIZE", 10_000)
    monkeypatch.setattr(frames_mod, "MIN_ROW_GROUP", 1_000)
    df = pd.DataFrame({"a": np.random.default_rng(0).normal(size=100_000)}, index=pd.RangeIndex(7, 700_007, 7))
    ip.user_ns["df"] = df
    bh = ip._bh_magics.bh  # type: ignore[attr-defined]
    monkeypatch.setattr(bh.files, "chunk_size", 16 * 1024)  # reads fetch whole hash chunks: small ones here
    ip.run_line_magic("bh_put", "df")
    fetched: list[int] = []
    get_range = bh.files.get_range_verified

    def counted(*args: object, **kwargs: object) -> bytes:
        data = get_range(*args, **kwargs)
        fetched.append(len(data))
        return data

    monkeypatch.setattr(bh.files, "get_range_verified", counted)
    part = ip.run_line_magic("bh_get", "df --rows 50000:50010 --as part")
    pd.testing.assert_frame_equal(part, df.iloc[50_000:50_010])
    assert 0 < sum(fetched) < frames_mod.FOOTER_GUESS + bh.frames.info("df").nbytes / 5  # the footer, one group


def test_browser_previews_every_frame_type_and_wide_frames(ip: InteractiveShell) -> None:
    pl = pytest.importorskip("polars")
    bh = ip._bh_magics.bh  # type: ignore[attr-defined]
    bh.frames.put("p", pl.DataFrame({"a": [1, 2], "b": ["x", "y"]}))
    bh.frames.put("s", pd.Series([1, 2], name="v"))
    bh.frames.put("t", pa.table({"a": [1, 2]}))
    bh.frames.put("wide", pd.DataFrame(np.zeros((2, 1000)), columns=[f"c{i}" for i in range(1000)]))
    b = Browser(bh)
    for name in ["p", "s", "t"]:
        b.select(name)
        assert "<table" in b.preview_text()
    b.select("wide")
    text = b.preview_text()
    assert "c199" in text and "c200<" not in text and "800 more columns" in text
