"""Frames come back exactly or are refused: every structure and dtype, row labels on partial reads, Series,
polars and Arrow tables, any width."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bh_notebook import BucketSQLite
from bh_notebook.errors import InexactFrame, ValueTypeError
from bh_notebook.interfaces import frames as frames_mod
from bh_notebook.interfaces.versioned import VersionedStore
from bh_notebook.interfaces.files import FileStore

from .test_frames import chunked_bytes

EXACT = {"check_exact": True, "check_freq": True, "check_flags": True}


def assert_same(got: Any, want: Any) -> None:
    """Equal values, dtypes, labels, freq, flags and attrs, as pandas' own testing sees them."""
    assert type(got) is type(want)
    if isinstance(want.index, pd.MultiIndex) and len(want) < 2:
        # A partial read builds its MultiIndex from the rows read, where iloc keeps the unused levels too
        # (the same labels; pandas 2 compares the levels' cached inferred types).
        want = want.set_axis(want.index.remove_unused_levels())
    if isinstance(want, pd.Series):
        pd.testing.assert_series_equal(got, want, **EXACT)
    else:
        pd.testing.assert_frame_equal(got, want, **EXACT)
    assert got.attrs == want.attrs


def with_attrs(df: pd.DataFrame, attrs: dict[str, Any]) -> pd.DataFrame:
    df.attrs = attrs
    return df


CASES: dict[str, Callable[[], Any]] = {
    "datetime64[s]": lambda: pd.DataFrame({"a": pd.to_datetime(["2020-01-01", None]).astype("datetime64[s]")}),
    "datetime64[ms, tz]": lambda: pd.DataFrame({"a": pd.date_range("2020", periods=3, unit="ms", tz="Asia/Tokyo")}),
    "timedelta64[s]": lambda: pd.DataFrame({"a": pd.to_timedelta([1, 2, 3], unit="s").astype("timedelta64[s]")}),
    "datetime index [s] tz": lambda: pd.DataFrame({"a": [1, 2, 3]}, index=pd.DatetimeIndex(
        ["2020-01-01", "2020-01-02", "2020-01-05"]).as_unit("s").tz_localize("UTC")),
    "freq D": lambda: pd.DataFrame({"a": [1, 2, 3]}, index=pd.date_range("2020", periods=3, freq="D", name="day")),
    "freq B tz": lambda: pd.DataFrame({"a": [1, 2, 3]}, index=pd.date_range("2020", periods=3, freq="B",
                                                                            tz="Europe/Paris")),
    "timedelta freq": lambda: pd.DataFrame({"a": [1, 2, 3]}, index=pd.timedelta_range(0, periods=3, freq="h")),
    "range start/step/name": lambda: pd.DataFrame({"a": [1, 2, 3]}, index=pd.RangeIndex(5, 11, 2, name="r")),
    "int labels": lambda: pd.DataFrame({0: [1, 2, 3], 1: [4, 5, 6]}),
    "float labels": lambda: pd.DataFrame({0.5: [1, 2, 3], 1.5: [4, 5, 6]}),
    "multiindex columns": lambda: pd.DataFrame([[1, 2, 3]] * 3, columns=pd.MultiIndex.from_tuples(
        [("a", "x"), ("a", "y"), ("b", "x")], names=["top", "sub"])),
    "multiindex columns of ints": lambda: pd.DataFrame([[1, 2]] * 3, columns=pd.MultiIndex.from_tuples(
        [("a", 1), ("a", 2)])),
    "pivot_table": lambda: pd.DataFrame({"k": list("aab"), "c": list("xyx"), "v": [1, 2, 3]}).pivot_table(
        index="k", columns="c", values="v", aggfunc=["sum", "mean"]),
    "groupby agg": lambda: pd.DataFrame({"k": list("aba"), "v": [1, 2, 3]}).groupby("k").agg(["sum", "max"]),
    "unstack": lambda: pd.DataFrame({"v": range(6)}, index=pd.MultiIndex.from_product([["a", "b"], [1, 2, 3]]))
    .unstack(),
    "multiindex rows": lambda: pd.DataFrame({"a": [1, 2, 3]}, index=pd.MultiIndex.from_tuples(
        [("x", 1), ("y", 2), ("z", 3)], names=["k", "n"])),
    "empty": pd.DataFrame,
    "rows, no columns": lambda: pd.DataFrame(index=range(5)),
    "rows, no columns, named index": lambda: pd.DataFrame(index=pd.Index([3, 1, 2], name="x")),
    "attrs": lambda: with_attrs(pd.DataFrame({"a": [1, 2, 3]}), {"source": "crm", "n": [1, 2], "d": {"x": 1.5}}),
    "flags": lambda: pd.DataFrame({"a": [1, 2, 3]}).set_flags(allows_duplicate_labels=False),
    "list<int64>": lambda: pd.DataFrame({"a": pd.array([[1, 2], None, []], dtype=pd.ArrowDtype(pa.list_(pa.int64())))}),
    "struct": lambda: pd.DataFrame({"a": pd.array([{"x": 1, "y": "s"}, None, {"x": None, "y": "t"}],
                                                  dtype=pd.ArrowDtype(pa.struct([("x", pa.int64()), ("y", pa.string())])))}),
    "dictionary": lambda: pd.DataFrame({"a": pd.array(["a", "b", None], dtype=pd.ArrowDtype(
        pa.dictionary(pa.int32(), pa.string())))}),
    "map": lambda: pd.DataFrame({"a": pd.array([[("k", 1)], None, []], dtype=pd.ArrowDtype(
        pa.map_(pa.string(), pa.int64())))}),
    "list<struct>": lambda: pd.DataFrame({"a": pd.array([[{"x": 1}], None, []], dtype=pd.ArrowDtype(
        pa.list_(pa.struct([("x", pa.int64())]))))}),
    "timestamp[s][pyarrow]": lambda: pd.DataFrame({"a": pd.array([1, None, 3], dtype=pd.ArrowDtype(pa.timestamp("s")))}),
    "period": lambda: pd.DataFrame({"a": pd.period_range("2020", periods=3, freq="M")}),
    "interval": lambda: pd.DataFrame({"a": pd.interval_range(0, 3)}),
    "sparse int": lambda: pd.DataFrame({"a": pd.arrays.SparseArray([0, 1, 0])}),
    "sparse float": lambda: pd.DataFrame({"a": pd.arrays.SparseArray([np.nan, 1.5, np.nan])}),
    "object str and None": lambda: pd.DataFrame({"a": np.array(["x", None, "z"], dtype=object)}),
    "object bytes": lambda: pd.DataFrame({"a": np.array([b"x", None, b""], dtype=object)}),
    "object dates": lambda: pd.DataFrame({"a": np.array([dt.date(2020, 1, 1), None, dt.date(1, 1, 1)],
                                                        dtype=object)}),
    "python strings": lambda: pd.DataFrame({"a": pd.array(["x", None, "z"], dtype=pd.StringDtype("python"))}),
    "object index": lambda: pd.DataFrame({"a": [1, 2, 3]}, index=pd.Index(["x", "y", "z"], dtype=object)),
    "categorical index": lambda: pd.DataFrame({"a": [1, 2, 3]}, index=pd.CategoricalIndex(["x", "y", "x"])),
    "interval index": lambda: pd.DataFrame({"a": [1, 2, 3]}, index=pd.interval_range(0, 3)),
    "period index": lambda: pd.DataFrame({"a": [1, 2, 3]}, index=pd.period_range("2020", periods=3, freq="D")),
    "empty categories": lambda: pd.DataFrame({"a": pd.Categorical([], categories=[])}),
    "series": lambda: pd.Series([1, 2, 3], name="x"),
    "series without a name": lambda: pd.Series([1.5, 2.0, np.nan]),
    "series, int name, freq": lambda: pd.Series([1, 2, 3], index=pd.date_range("2020", periods=3, freq="D"),
                                                name=5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_exact(hyp_bh: BucketSQLite, case: str) -> None:
    value = CASES[case]()
    hyp_bh.frames.put("x", value)
    assert_same(hyp_bh.frames.get("x"), value)
    assert_same(hyp_bh.frames.head("x", 2), value.head(2))
    assert_same(hyp_bh.frames.get("x", rows=slice(1, 3)), value.iloc[1:3])


@pytest.mark.parametrize("value, match", [
    (pd.DataFrame({"cfg": [{"lr": 1}, {"opt": "adam"}]}), r"column 'cfg' holds Python objects .*dict.*JSON strings"),
    (pd.DataFrame({"xs": [[1, 2], [3]]}), r"column 'xs' .*list.*pa\.list_"),
    (pd.DataFrame({"s": [{1}, {2}]}), r"column 's' .*set"),
    (pd.DataFrame({"t": [(1, 2), (3, 4)]}), r"column 't' .*tuple"),
    (pd.DataFrame({"m": [1, "two", 3.0]}), r"column 'm' .*mixed"),
    (pd.DataFrame({"arrays": [np.arange(2), np.arange(3)]}), r"column 'arrays' .*ndarray"),
    (pd.DataFrame({"a": [1]}, index=pd.Index([{"k": 1}], dtype=object)), r"index level None holds"),
    (with_attrs(pd.DataFrame({"a": [1]}), {"shape": (1, 2)}), r"df\.attrs would not come back exactly"),
    (with_attrs(pd.DataFrame({"a": [1]}), {"f": object()}), r"df\.attrs"),
    (pd.DataFrame({0: [1], "b": [2]}), r"mixed types \(int, str\)"),
    (pd.Series([1], name=("a", 1)), r"Series name"),
])
def test_refused_before_anything_is_stored(bh: BucketSQLite, value: Any, match: str) -> None:
    with pytest.raises(InexactFrame, match=match):
        bh.frames.put("x", value)
    assert "x" not in bh.frames and len(bh.files) == 0


def test_unwritable_type_is_a_named_error(bh: BucketSQLite) -> None:
    with pytest.raises(ValueTypeError, match="column 'z' cannot be stored as Parquet"):
        bh.frames.put("x", pd.DataFrame({"z": np.array([1j])}))
    assert len(bh.files) == 0


def test_partial_reads_keep_row_labels(bh: BucketSQLite) -> None:
    df = pd.DataFrame({"v": np.arange(10), "w": list("abcdefghij")}, index=pd.RangeIndex(100, 130, 3, name="r"))
    bh.frames.put("r", df)
    assert_same(bh.frames.get("r", filters=[("v", ">=", 7)]), df[df.v >= 7])
    assert_same(bh.frames.get("r", filters=[("v", "in", [1, 4])], columns=["w"]), df.loc[df.v.isin([1, 4]), ["w"]])
    assert_same(bh.frames.get("r", filters=[("v", ">", 99)]), df[df.v > 99])
    assert_same(bh.frames.head("r", 3), df.head(3))
    assert_same(bh.frames.head("r", 50), df.head(50))
    assert_same(bh.frames.get("r", rows=slice(2, 9, 3)), df.iloc[2:9:3])
    assert_same(bh.frames.get("r", rows=slice(None, None, -2)), df.iloc[::-2])
    assert_same(bh.frames.get("r", rows=slice(-3, None)), df.iloc[-3:])
    timed = df.set_index(pd.date_range("2024-01-01", periods=10, freq="h", name="t"))
    bh.frames.put("t", timed)
    assert_same(bh.frames.get("t", filters=[("v", ">=", 7)]), timed[timed.v >= 7])  # one run: freq kept
    assert_same(bh.frames.get("t", filters=[("v", "in", [1, 4])]), timed[timed.v.isin([1, 4])])  # freq dropped
    assert_same(bh.frames.get("t", rows=slice(0, 10, 2)), timed.iloc[0:10:2])
    bh.frames.put("e", pd.DataFrame())
    assert bh.frames.head("e", 3).shape == (0, 0)
    bh.frames.put("nc", pd.DataFrame(index=range(5)))
    assert_same(bh.frames.head("nc", 3), pd.DataFrame(index=range(5)).head(3))
    with pytest.raises(ValueTypeError, match="rows= takes a slice"):
        bh.frames.get("r", rows=3)  # type: ignore[arg-type]


def test_columns_by_label_of_any_type(bh: BucketSQLite) -> None:
    df = pd.DataFrame(np.arange(12).reshape(3, 4), columns=pd.MultiIndex.from_product([["a", "b"], [1, 2]]))
    bh.frames.put("m", df)
    assert_same(bh.frames.get("m", columns=[("b", 1), ("a", 2)]), df[[("b", 1), ("a", 2)]])
    ints = pd.DataFrame({0: [1.5], 7: [2.5]})
    bh.frames.put("i", ints)
    assert_same(bh.frames.get("i", columns=[7]), ints[[7]])


CHUNK = 16 * 1024


@pytest.fixture
def small_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frames_mod, "ROW_GROUP_SIZE", 10_000)
    monkeypatch.setattr(frames_mod, "MIN_ROW_GROUP", 1_000)
    monkeypatch.setattr(FileStore, "chunk_size", CHUNK)  # reads fetch whole hash chunks: small ones here


def _chunk_bytes(raw: bytes, row_groups: list[int]) -> int:
    """The bytes a reader needs: the end of the blob read in one go for the footer, then these groups' chunks,
    each widened to whole hash chunks."""
    md = pq.ParquetFile(pa.BufferReader(raw)).metadata
    ranges = [(len(raw) - frames_mod.FOOTER_GUESS, len(raw))]
    for g in row_groups:
        for c in range(md.num_columns):
            col = md.row_group(g).column(c)
            start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
            ranges.append((start, start + col.total_compressed_size))
    return chunked_bytes(ranges, len(raw), CHUNK)


@pytest.mark.usefixtures("small_groups")
def test_rows_read_only_the_row_groups_needed(counted) -> None:  # type: ignore[no-untyped-def]
    bh, counting = counted
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"a": rng.normal(size=100_000), "b": rng.integers(0, 10**9, 100_000)})
    v = bh.frames.put("big", df)
    assert v.row_groups == 10
    raw = bh.files.get(v.bh_key)
    counting.reset()
    assert_same(bh.frames.get("big", rows=slice(12_000, 12_010)), df.iloc[12_000:12_010])
    assert counting.bytes_in <= 1.1 * _chunk_bytes(raw, [1])
    counting.reset()
    assert_same(bh.frames.get("big", rows=slice(9_990, 10_010)), df.iloc[9_990:10_010])  # two groups
    assert counting.bytes_in <= 1.1 * _chunk_bytes(raw, [0, 1])
    assert counting.bytes_in < 0.5 * len(raw)


def test_wide_frame_round_trips(bh: BucketSQLite) -> None:
    """20,000 columns go through every read path (each is linear in the width; quadratic would not finish)."""
    if bh.config.backend != "local":
        pytest.skip("width is about our code, not the backend")
    width = 20_000
    df = pd.DataFrame(np.arange(3 * width, dtype=np.float64).reshape(3, width), columns=[f"c{i}" for i in range(width)])
    df["label"] = pd.Categorical(["x", "y", "x"])
    bh.frames.put("wide", df)
    assert_same(bh.frames.get("wide"), df)
    assert_same(bh.frames.head("wide", 2), df.head(2))
    assert_same(bh.frames.get("wide", columns=["c19999", "label", "c0"]), df[["c19999", "label", "c0"]])
    assert len(bh.frames.schema("wide")) == width + 1
    dupes = pd.DataFrame(np.zeros((1, width)), columns=[f"c{i % (width - 1)}" for i in range(width)])
    with pytest.raises(ValueTypeError, match="duplicate column names 'c0'"):
        bh.frames.put("dupes", dupes)


def test_series_polars_and_arrow_come_back_as_put(hyp_bh: BucketSQLite) -> None:
    pl = pytest.importorskip("polars")
    from polars.testing import assert_frame_equal as assert_polars_equal

    s = pd.Series([1.5, None, 3.0], index=pd.Index(list("abc"), name="k"), name="price")
    hyp_bh.frames.put("s", s)
    assert_same(hyp_bh.frames.get("s"), s)
    assert_same(hyp_bh.frames.get("s", filters=[("price", ">", 2)]), s[s > 2])
    assert_same(hyp_bh.frames.get("s", to="pandas"), s)
    assert hyp_bh.frames.get("s", to="arrow").column("price").to_pylist() == [1.5, None, 3.0]
    p = pl.DataFrame({"i": [1, 2, None], "s": ["a", None, "c"], "c": pl.Series(["x", "y", "x"], dtype=pl.Categorical),
                      "e": pl.Series(["lo", "hi", "lo"], dtype=pl.Enum(["lo", "hi"])), "l": [[1, 2], [], None],
                      "st": [{"a": 1}, {"a": 2}, None], "d": [dt.date(2020, 1, 1)] * 3,
                      "t": pl.Series([1, 2, 3]).cast(pl.Datetime("ms", "UTC")),
                      "u8": pl.Series([1, 2, 3], dtype=pl.UInt8)})
    v = hyp_bh.frames.put("p", p)
    assert (v.n_rows, v.columns) == (3, p.columns)
    assert_polars_equal(hyp_bh.frames.get("p"), p)
    assert_polars_equal(hyp_bh.frames.head("p", 2), p.head(2))
    assert_polars_equal(hyp_bh.frames.get("p", rows=slice(1, 3)), p[1:3])
    assert_polars_equal(hyp_bh.frames.get("p", columns=["s", "l"]), p.select("s", "l"))
    assert_polars_equal(hyp_bh.frames.get("p", filters=[("i", ">", 1)]), p.filter(pl.col("i") > 1))
    assert hyp_bh.frames.put("p", p.lazy()) == v  # a LazyFrame is collected: the same data, the same version
    assert isinstance(hyp_bh.frames.get("p", to="arrow"), pa.Table)
    assert list(hyp_bh.frames.get("p", to="pandas").columns) == p.columns
    t = pa.table({"a": pa.array([1, 2], pa.int32()), "b": pa.array(["x", None], pa.large_string()),
                  "n": pa.array([[1], None], pa.list_(pa.int8())), "ts": pa.array([1, 2], pa.timestamp("s"))})
    for table in (t, t.replace_schema_metadata({"owner": "me"})):
        hyp_bh.frames.put("t", table)
        back = hyp_bh.frames.get("t")
        assert back.equals(table, check_metadata=True) and back.schema.metadata == table.schema.metadata
    assert hyp_bh.frames.get("t", columns=["ts"]).equals(t.select(["ts"]))
    assert_polars_equal(hyp_bh.frames.get("t", to="polars"), pl.from_arrow(t))
    pd.testing.assert_frame_equal(hyp_bh.frames.get("t", to="pandas"), t.to_pandas())
    with pytest.raises(ValueTypeError, match="to='polars'"):
        hyp_bh.frames.get("t", to="numpy")


def test_plain_parquet_readers_see_polars_and_arrow_frames(bh: BucketSQLite) -> None:
    t = pa.table({"a": [1, 2, 3]})
    v = bh.frames.put("t", t)
    assert pq.read_table(io.BytesIO(bh.files.get(v.bh_key))).column("a").to_pylist() == [1, 2, 3]


def test_arrays_url(bh: BucketSQLite) -> None:
    arr = np.arange(12.0).reshape(3, 4)
    v = bh.arrays.put("a", arr)
    url = bh.arrays.url("a")
    assert url == VersionedStore.url(bh.arrays, "a")  # the one implementation frames and arrays share
    if bh.config.local_path is not None:
        assert url.startswith("file://")
        np.testing.assert_array_equal(np.load(url.removeprefix("file://")), arr)
    else:
        assert url == f"s3://{bh.config.bucket}/{bh.files.object_key(v.bh_key)}"
        assert url.endpoint_url == bh.config.endpoint_url
