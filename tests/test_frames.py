"""FrameStore: exact pandas round trips, partial reads that fetch only what they need, versions, bad input."""

from __future__ import annotations

import datetime as dt
import decimal
import mmap
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import pandas as hpd

from bh_notebook import BucketConfig, BucketSQLite, FrameVersion, SnapshotConfig
from bh_notebook.errors import InexactFrame, IntegrityError, InvalidKey, NotFound, ValueTypeError
from bh_notebook.interfaces import frames as frames_mod
from bh_notebook.interfaces.files import FileStore
from bh_notebook.interfaces.mapped import MappedRanges
from bh_notebook.testing.servers import ACCESS_KEY, SECRET_KEY

NO_TIMER = SnapshotConfig(interval_seconds=0)


def sample(n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "id": np.arange(n),
        "price": rng.normal(size=n),
        "qty": rng.integers(0, 100, n).astype("int32"),
        "when": pd.date_range("2024-01-01", periods=n, freq="min"),
        "when_tz": pd.date_range("2024-03-30", periods=n, freq="h", tz="Europe/Paris"),
        "region": pd.Categorical(rng.choice(["EU", "US", "APAC"], n), categories=["EU", "US", "APAC", "LATAM"]),
        "level": pd.Categorical(rng.choice(["lo", "hi"], n), categories=["lo", "hi"], ordered=True),
        "user": [f"user-{i}" for i in range(n)],
        "maybe": pd.array([1, None] * (n // 2), dtype="Int64"),
        "flag": pd.array([True, None, False, True] * (n // 4), dtype="boolean"),
        "label": pd.array(["a", None] * (n // 2), dtype="string"),
        "arrow_int": pd.array(np.arange(n), dtype="int64[pyarrow]"),
        "arrow_str": pd.array([f"s{i % 7}" for i in range(n)], dtype=pd.ArrowDtype(pa.string())),
        "span": pd.to_timedelta(np.arange(n), unit="s"),
        "f32": np.arange(n, dtype=np.float32),
    })


def variants() -> dict[str, pd.DataFrame]:
    df = sample()
    multi = df.set_index(["region", "id"])
    return {
        "plain": df,
        "named-index": df.set_index("id"),
        "multiindex": multi,
        "range-step": df.set_index(pd.RangeIndex(10, 10 + 3 * len(df), 3)),
        "slice": df.iloc[17:93],
        "empty": df.iloc[0:0],
        "datetime-index": df.set_index("when"),
        "column-order": df[list(reversed(df.columns))],
        "unnamed-int-index": df.set_index(pd.Index(np.arange(len(df)) * 7)),
        "int-categories": pd.DataFrame({"c": pd.Categorical([1, 2, 1], categories=[1, 2, 3])}),
    }


@pytest.mark.parametrize("case", list(variants()))
def test_exact_roundtrip(bh: BucketSQLite, case: str) -> None:
    df = variants()[case]
    v = bh.frames.put(case, df)
    assert isinstance(v, FrameVersion)
    assert (v.n_rows, v.columns, v.shape) == (len(df), list(df.columns), df.shape)
    assert v.dtypes == {c: str(t) for c, t in df.dtypes.items()}
    pd.testing.assert_frame_equal(bh.frames.get(case), df)
    pd.testing.assert_frame_equal(bh.frames[case], df)


def test_blob_is_plain_parquet(bh: BucketSQLite) -> None:
    df = sample()
    v = bh.frames.put("plain", df)
    raw = bh.files.get(v.bh_key)
    table = pq.read_table(pa.BufferReader(raw))
    assert table.num_rows == len(df) and "price" in table.column_names


def test_url_readable_by_another_parquet_reader(config: BucketConfig, moto_server) -> None:  # type: ignore[no-untyped-def]
    df = sample()
    with BucketSQLite(config, NO_TIMER) as bh:
        bh.frames.put("shared", df)
        url = bh.frames.url("shared")
    if config.local_path is not None:
        assert url.startswith("file://")
        table = pq.read_table(url.removeprefix("file://"))
    else:
        from pyarrow import fs

        assert url.startswith(f"s3://{config.bucket}/files/") and url.endpoint_url == config.endpoint_url
        s3 = fs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, region="us-east-1",
                             endpoint_override=url.endpoint_url, scheme="http")
        table = pq.read_table(url.removeprefix("s3://"), filesystem=s3)
    # A plain reader gets everything but our dtype refinements (an Arrow-backed str comes back as pandas' own).
    pd.testing.assert_frame_equal(table.to_pandas(), df, check_dtype=False)


#: The hash chunk size of the blobs of the byte-counting tests below (see ``small_groups``).
TEST_CHUNK = 64 * 1024


def chunked_bytes(ranges: list[tuple[int, int]], size: int, chunk: int = TEST_CHUNK) -> int:
    """How many bytes fetching ``ranges`` of a blob of ``size`` bytes takes when every read fetches whole hash
    chunks: the size of the union of the ranges widened to chunk boundaries."""
    widened = sorted((a // chunk * chunk, min(size, -(-b // chunk) * chunk)) for a, b in ranges if b > a)
    total, reach = 0, 0
    for a, b in widened:
        a = max(a, reach)
        if b > a:
            total += b - a
            reach = b
    return total


def _footer_and_chunks(raw: bytes, columns: list[str], row_groups: list[int] | None = None) -> int:
    md = pq.ParquetFile(pa.BufferReader(raw)).metadata
    footer = int.from_bytes(raw[-8:-4], "little") + 8
    names = [md.schema.column(i).name for i in range(md.num_columns)]
    ranges = [(len(raw) - max(footer, frames_mod.FOOTER_GUESS), len(raw))]
    for rg in row_groups if row_groups is not None else range(md.num_row_groups):
        for ci, name in enumerate(names):
            if name in columns:
                col = md.row_group(rg).column(ci)
                start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
                if start is not None:
                    ranges.append((start, start + col.total_compressed_size))
    return chunked_bytes(ranges, len(raw))


def big_frame(n: int = 600_000) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame({
        "id": np.arange(n),
        "a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.normal(size=n),
        "ts": pd.date_range("2020-01-01", periods=n, freq="s"),
        "cat": rng.choice(["north", "south", "east", "west"], n),
        "txt": [f"user-{x}" for x in rng.integers(0, 10**9, n)],
    })


@pytest.fixture
def small_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """200k-row groups, so a test-sized frame has several; hash chunks small beside them."""
    monkeypatch.setattr(frames_mod, "ROW_GROUP_SIZE", 200_000)
    monkeypatch.setattr(FileStore, "chunk_size", TEST_CHUNK)


@pytest.mark.usefixtures("small_groups")
def test_columns_fetch_footer_and_those_chunks_only(counted) -> None:  # type: ignore[no-untyped-def]
    bh, counting = counted
    df = big_frame()
    v = bh.frames.put("big", df)
    raw = bh.files.get(v.bh_key)
    counting.reset()
    got = bh.frames.get("big", columns=["a", "cat"])
    pd.testing.assert_frame_equal(got, df[["a", "cat"]])
    needed = _footer_and_chunks(raw, ["a", "cat"])
    assert counting.bytes_in <= 1.1 * needed
    assert counting.bytes_in < 0.5 * len(raw)
    assert counting.calls.get("get_range", 0) <= 1 + 2 * v.row_groups  # the footer, then each chunk at most once


@pytest.mark.usefixtures("small_groups")
def test_partial_reads_are_decoded_natively_not_through_python_reads(
        bh: BucketSQLite, monkeypatch: pytest.MonkeyPatch) -> None:
    """The column chunks a partial read fetches go to pyarrow in a map of the blob, not through RangeFile.read (a
    call into Python for every read pyarrow makes): only the footer passes through Python."""
    if not MappedRanges.available(TEST_CHUNK):
        pytest.skip("this system cannot tell which pages of a map were read: reads go through Python there")
    df = big_frame()
    v = bh.frames.put("big", df)
    raw = bh.files.get(v.bh_key)
    through_python: list[int] = []
    read = frames_mod.RangeFile.read

    def counting_read(self: frames_mod.RangeFile, n: int = -1) -> bytes:
        data = read(self, n)
        through_python.append(len(data))
        return data

    monkeypatch.setattr(frames_mod.RangeFile, "read", counting_read)
    cases: list[tuple[dict[str, Any], pd.DataFrame]] = [
        ({"columns": ["a", "txt"]}, df[["a", "txt"]]),
        ({"rows": slice(150_000, 450_000)}, df.iloc[150_000:450_000]),
        ({"filters": [("id", ">=", 599_000)]}, df[df.id >= 599_000])]
    for kwargs, expected in cases:
        through_python.clear()
        pd.testing.assert_frame_equal(bh.frames.get("big", **kwargs), expected)
        footer = int.from_bytes(raw[-8:-4], "little") + 8
        assert sum(through_python) <= 4 * max(footer, frames_mod.FOOTER_GUESS), kwargs  # the footer, a few times


@pytest.mark.usefixtures("small_groups")
def test_a_native_read_outside_the_fetched_ranges_is_caught_and_read_again(
        bh: BucketSQLite, monkeypatch: pytest.MonkeyPatch) -> None:
    """Were the ranges a partial read fetches to miss bytes pyarrow reads, those would read as zeros from the map:
    the pages read are checked (mincore), and the read is done again through the checked file."""
    if not MappedRanges.available(TEST_CHUNK):
        pytest.skip("this system cannot tell which pages of a map were read")
    df = big_frame()
    bh.frames.put("big", df)
    ranges = frames_mod._chunk_ranges
    # Only the first column chunk of the ranges needed: the others are read from pages that were never filled.
    monkeypatch.setattr(frames_mod, "_chunk_ranges", lambda *args: ranges(*args)[:1])
    with pytest.warns(RuntimeWarning, match="touched bytes outside the ranges fetched"):
        got = bh.frames.get("big", columns=["a", "b", "txt"])
    pd.testing.assert_frame_equal(got, df[["a", "b", "txt"]])


def test_mapped_ranges_tell_a_page_read_from_the_pages_written() -> None:
    if not MappedRanges.available(4096):
        pytest.skip("this system cannot tell which pages of a map were read")
    page = mmap.PAGESIZE
    m = MappedRanges(64 * page + 100)  # the last page is partial
    m.write(4 * page, b"x" * (2 * page))
    m.place(63 * page, 64 * page + 100)[:] = b"y" * (page + 100)
    reader = m.reader()
    reader.seek(4 * page)
    assert reader.read(2 * page) == b"x" * (2 * page)
    assert not m.read_elsewhere()
    assert m.holds(4 * page, 6 * page) and not m.holds(3 * page, 5 * page)
    reader.seek(10 * page + 7)
    assert reader.read(1) == b"\0"  # a page never written: zeros, and now seen as read
    assert m.read_elsewhere()
    m.close()
    # A map reserves nothing: one bigger than this machine's memory (a partial read of a huge blob) is made, unless
    # the process's address space is limited.
    try:
        huge = MappedRanges(64 << 30)
    except OSError:
        pytest.skip("the address space is limited (ulimit -v)")
    huge.write(40 << 30, b"z" * page)
    assert not huge.read_elsewhere()
    huge.close()


@pytest.mark.usefixtures("small_groups")
def test_filters_skip_row_groups(counted) -> None:  # type: ignore[no-untyped-def]
    bh, counting = counted
    df = big_frame()
    v = bh.frames.put("big", df)
    assert v.row_groups == 3
    raw = bh.files.get(v.bh_key)
    counting.reset()
    got = bh.frames.get("big", columns=["id", "a"], filters=[("id", "<", 1000)])
    pd.testing.assert_frame_equal(got, df.loc[df.id < 1000, ["id", "a"]])  # row labels kept, as df[mask]
    assert counting.bytes_in <= 1.1 * _footer_and_chunks(raw, ["id", "a"], [0])
    both = bh.frames.get("big", filters=[("cat", "in", ["north"]), ("id", ">=", 599_990)])
    expected = df[(df.cat == "north") & (df.id >= 599_990)]
    pd.testing.assert_frame_equal(both, expected)


@pytest.mark.usefixtures("small_groups")
def test_head_reads_one_row_group(counted) -> None:  # type: ignore[no-untyped-def]
    bh, counting = counted
    df = big_frame()
    v = bh.frames.put("big", df)
    raw = bh.files.get(v.bh_key)
    counting.reset()
    pd.testing.assert_frame_equal(bh.frames.head("big", 7), df.head(7))
    assert counting.bytes_in <= 1.1 * _footer_and_chunks(raw, list(df.columns), [0])
    pd.testing.assert_frame_equal(bh.frames.head("big", 0), df.head(0))
    schema = bh.frames.schema("big")
    assert schema.names[:2] == ["id", "a"]


def test_index_comes_with_column_subset(bh: BucketSQLite) -> None:
    df = sample().set_index(["region", "id"])
    bh.frames.put("m", df)
    pd.testing.assert_frame_equal(bh.frames.get("m", columns=["price"]), df[["price"]])


def test_versions_dedup(counted) -> None:  # type: ignore[no-untyped-def]
    bh, counting = counted
    df = sample()
    v1 = bh.frames.put("s", df, metadata={"note": "raw"})
    writes = counting.writes
    assert bh.frames.put("s", df.copy()) == v1 and counting.writes == writes
    v2 = bh.frames.put("s", df.head(10))
    assert v2.version == 2 and [v.version for v in bh.frames.history("s")] == [2, 1]
    pd.testing.assert_frame_equal(bh.frames.get("s", 1), df)
    assert bh.frames.info("s", 1).metadata == {"note": "raw"}
    bh.frames.delete("s", 2)
    assert bh.frames.info("s").version == 1
    assert bh.frames.names() == ["s"] and len(bh.frames) == 1


def test_altered_blob_detected(bh: BucketSQLite) -> None:
    v = bh.frames.put("x", sample())
    bh.bucket.put_bytes(b"PAR1" + b"\x00" * (v.nbytes - 4), bh.files.object_key(v.bh_key))
    with pytest.raises(IntegrityError):
        bh.frames.get("x")


def test_bad_input(bh: BucketSQLite) -> None:
    with pytest.raises(ValueTypeError, match="duplicate column names"):
        bh.frames.put("d", pd.DataFrame([[1, 2]], columns=["a", "a"]))
    with pytest.raises(InexactFrame, match="mixed types"):
        bh.frames.put("d", pd.DataFrame({1: [1], "1": [2]}))
    with pytest.raises(ValueTypeError, match=r"column 'mixed'.*astype\(str\)"):
        bh.frames.put("d", pd.DataFrame({"ok": [1, 2, 3], "mixed": [1, "two", dt.date(2020, 1, 1)]}))
    with pytest.raises(InexactFrame, match="JSON strings"):
        bh.frames.put("d", pd.DataFrame({"cfg": [{"lr": 1}, {"opt": "adam"}]}))
    with pytest.raises(ValueTypeError, match="bh.arrays"):
        bh.frames.put("d", np.arange(3))  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        bh.frames.put("", sample())
    assert "d" not in bh.frames and len(bh.files) == 0
    bh.frames.put("good", sample())
    with pytest.raises(NotFound, match="no column 'prise' \\(did you mean 'price'\\?\\)"):
        bh.frames.get("good", columns=["prise"])
    with pytest.raises(ValueTypeError, match="filter syntax"):
        bh.frames.get("good", filters=[("price",)])
    with pytest.raises(ValueTypeError, match="cannot apply filters"):
        bh.frames.get("good", filters=[("price", "<", "not a number")])
    with pytest.raises(NotFound, match="did you mean 'good'"):
        bh.frames.get("goood")
    pd.testing.assert_frame_equal(bh.frames.get("good"), sample())


def test_object_columns_pyarrow_made_strings_are_not_scanned_again(
        bh: BucketSQLite, monkeypatch: pytest.MonkeyPatch) -> None:
    """pyarrow makes an Arrow string column of an object column only when every value is a str or missing: only
    the missing values of such a column are scanned again for inexact objects (NaT, Decimal('NaN')); the other
    object columns are scanned whole, and refused as before."""
    scanned: list[tuple[str, int]] = []
    real = frames_mod._check_objects

    def spy(values: Any, where: str, ref: str) -> None:
        scanned.append((where, len(values)))
        real(values, where, ref)

    monkeypatch.setattr(frames_mod, "_check_objects", spy)
    n = 1000
    index = pd.Index([f"r{i}" for i in range(n)], dtype=object)
    df = pd.DataFrame({"user": pd.Series([f"u{i}" if i % 9 else None for i in range(n)], index, dtype=object),
                       "code": pd.Series([np.str_(f"c{i % 3}") for i in range(n)], index, dtype=object),
                       "day": pd.Series([dt.date(2024, 1, 1 + i % 28) for i in range(n)], index, dtype=object)})
    assert (df.dtypes == object).all()
    bh.frames.put("objects", df)
    assert scanned == [("column 'user'", 112), ("column 'day'", n), ("index level None", n)]
    pd.testing.assert_frame_equal(bh.frames.get("objects"), df)


def test_objects_pyarrow_would_store_as_nulls_or_cannot_convert_are_refused(bh: BucketSQLite) -> None:
    for bad in ([b"raw", "text"], ["text", 3], ["text", {"a": 1}], ["text", ["a"]], ["text", pd.NaT],
                ["text", decimal.Decimal("NaN")], [1, 2 ** 64]):
        # (after the first rows, which the probe converts back: pyarrow makes NaT and Decimal('NaN') nulls)
        with pytest.raises(ValueTypeError, match="column 'bad'"):
            bh.frames.put("bad", pd.DataFrame({"bad": pd.Series(["t"] * 5 + bad * 3, dtype=object)}))
    with pytest.raises(ValueTypeError, match="not valid Unicode"):
        bh.frames.put("bad", pd.DataFrame({"bad": pd.Series(["t", "\udc80"], dtype=object)}))
    assert "bad" not in bh.frames


def test_survives_restart(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as bh:
        bh.frames.put("keep", sample())
    with BucketSQLite(config, NO_TIMER) as bh:
        pd.testing.assert_frame_equal(bh.frames.get("keep"), sample())
        assert bh.frames.info("keep").n_rows == 200


def test_codec_by_backend(bh: BucketSQLite) -> None:
    v = bh.frames.put("c", sample())
    raw = bh.files.get(v.bh_key)
    codec = pq.ParquetFile(pa.BufferReader(raw)).metadata.row_group(0).column(1).compression
    expected = frames_mod.LOCAL_COMPRESSION if bh.config.backend == "local" else frames_mod.S3_COMPRESSION
    assert codec == expected[0].upper()


frames = hpd.data_frames(
    columns=[
        hpd.column("i", dtype=np.int64),
        hpd.column("f", dtype=np.float64),
        hpd.column("b", dtype=bool),
        hpd.column("u", dtype=np.uint16),
        hpd.column("t", elements=st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2200, 1, 1)),
                   dtype="datetime64[ns]"),
        hpd.column("s", elements=st.text(max_size=8)),
        hpd.column("o", elements=st.one_of(st.none(), st.text(max_size=5)), dtype=object),
    ],
    index=hpd.range_indexes(max_size=30) | hpd.indexes(dtype=np.int64, max_size=30, unique=True),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(df=frames)
def test_hypothesis_roundtrip(hyp_bh: BucketSQLite, df: pd.DataFrame) -> None:
    v = hyp_bh.frames.put("h", df)
    pd.testing.assert_frame_equal(hyp_bh.frames.get("h", v.version), df)
    pd.testing.assert_frame_equal(hyp_bh.frames.get("h", v.version, columns=["s"]), df[["s"]])
