"""Frames of several parts: append uploads only the new rows, compact joins parts, every read (whole, columns=,
filters=, rows=, head, the lazy dataset) sees one frame, and gc, check, merges and the commit log follow the
parts."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig
from bh_notebook.errors import BlobNotFound, IntegrityError, ValueTypeError
from bh_notebook.interfaces import frames as frames_mod
from bh_notebook.interfaces.frames import PARTS_TABLE
from bh_notebook.testing.counting import CountingBucket

NO_TIMER = SnapshotConfig(interval_seconds=0)


def _batch(start: int, n: int, seed: int = 0) -> pd.DataFrame:
    """Rows ``start .. start+n`` of a frame with the dtypes a log has: ints, floats, strings, a categorical, times,
    nullable ints and bools."""
    rng = np.random.default_rng(seed + start)
    i = np.arange(start, start + n)
    return pd.DataFrame({
        "id": i,
        "value": rng.normal(size=n),
        "label": [f"row {k}" for k in i],
        "kind": pd.Categorical(np.array(["a", "b", "c"])[i % 3], categories=["a", "b", "c"]),
        "at": pd.to_datetime("2024-01-01") + pd.to_timedelta(i, unit="s"),
        "count": pd.array(np.where(i % 5 == 0, None, i % 7), dtype="Int64"),
        "flag": i % 2 == 0,
    })


def _expected(sizes: list[int]) -> pd.DataFrame:
    """What appending batches of these sizes gives (an empty batch adds nothing)."""
    starts = np.cumsum([0, *sizes[:-1]])
    return pd.concat([_batch(int(s), n) for s, n in zip(starts, sizes) if n], ignore_index=True)


def test_append_reads_back_as_one_frame_and_uploads_only_the_new_rows(config: BucketConfig) -> None:
    counting = CountingBucket(__import__("bh_notebook.storage", fromlist=["open_bucket"]).open_bucket(config))
    with BucketSQLite(config, NO_TIMER, bucket_client=counting) as bh:
        first = bh.frames.put("log", _batch(0, 20_000))
        counting.reset()
        v2 = bh.frames.append("log", _batch(20_000, 200), metadata={"note": "day 2"})
        new_part = bh.frames.parts("log")[-1]
        assert counting.bytes_out < 2 * new_part.nbytes + 4096  # the new part and a small manifest
        assert new_part.nbytes < first.nbytes / 20
        assert (v2.version, v2.parts, v2.n_rows) == (2, 2, 20_200)
        assert v2.metadata == {"note": "day 2"}
        assert bh.frames.shape_text(v2) == "20,200 x 7 in 2 parts"
        assert [p.bh_key for p in bh.frames.parts("log")][:1] == [first.bh_key]  # the first part is shared
        expected = _expected([20_000, 200])
        pd.testing.assert_frame_equal(bh.frames.get("log"), expected)
        pd.testing.assert_frame_equal(bh.frames.get("log", 1), expected.iloc[:20_000])  # v1 is untouched
        pd.testing.assert_frame_equal(bh.frames.head("log", 3), expected.head(3))
        pd.testing.assert_frame_equal(bh.frames.get("log", rows=slice(19_990, 20_010)), expected.iloc[19_990:20_010])
        pd.testing.assert_frame_equal(bh.frames.get("log", columns=["value", "kind"]), expected[["value", "kind"]])
        pd.testing.assert_frame_equal(bh.frames.get("log", filters=[("id", ">=", 19_995)]),
                                      expected[expected.id >= 19_995])
        assert bh.frames.get("log", to="arrow").num_rows == 20_200
        v3 = bh.frames.append("log", _batch(20_200, 0))  # nothing to add: nothing changes
        assert v3.version == 2
        assert bh.check().ok
    with BucketSQLite(config, NO_TIMER) as fresh:  # the parts travelled through the commit log
        pd.testing.assert_frame_equal(fresh.frames.get("log"), expected)


@pytest.mark.parametrize("backend", ["local", "moto"], indirect=True)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=5).map(lambda s: [1 + s[0], *s[1:]]),
       query=st.sampled_from(["all", "head", "rows", "back", "cols", "filter"]),
       a=st.integers(min_value=0, max_value=120), b=st.integers(min_value=0, max_value=120))
def test_any_sequence_of_appends_reads_as_the_concatenation(make_config: Callable[..., BucketConfig],
                                                           backend: str, sizes: list[int], query: str,
                                                           a: int, b: int) -> None:
    config = make_config(backend)
    with BucketSQLite(config, NO_TIMER) as bh:
        start = 0
        for n in sizes:
            bh.frames.append("t", _batch(start, n))
            start += n
        expected = _expected(sizes)
        lo, hi = min(a, b), max(a, b)
        if query == "all":
            got, want = bh.frames.get("t"), expected
        elif query == "head":
            got, want = bh.frames.head("t", a), expected.head(a)
        elif query == "rows":
            got, want = bh.frames.get("t", rows=slice(lo, hi)), expected.iloc[lo:hi]
        elif query == "back":
            got, want = bh.frames.get("t", rows=slice(hi, lo, -3)), expected.iloc[hi:lo:-3]
        elif query == "cols":
            got, want = bh.frames.get("t", columns=["label", "count"]), expected[["label", "count"]]
        else:
            got = bh.frames.get("t", filters=[("id", ">=", lo), ("id", "<", hi)])
            want = expected[(expected.id >= lo) & (expected.id < hi)]
        pd.testing.assert_frame_equal(got, want)


def test_a_mismatched_append_says_what_differs_and_stores_nothing(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as bh:
        bh.frames.put("log", _batch(0, 10))
        bh.force_flush()
        blobs = len(bh.files.list())
        wrong = {
            "missing columns ['flag']": _batch(10, 5).drop(columns="flag"),
            "extra columns ['more']": _batch(10, 5).assign(more=1),
            "column 'value' is int64 here but double": _batch(10, 5).assign(value=1),
            "categories must be the same": _batch(10, 5).assign(
                kind=pd.Categorical(["a"] * 5, categories=["a", "b", "c", "d"])),
            "in another order": _batch(10, 5)[["value", "id", "label", "kind", "at", "count", "flag"]],
            "RangeIndex and the other is not": _batch(10, 5).set_index("label"),
            "is named 'n' here but None": _batch(10, 5).set_axis(pd.RangeIndex(100, 105, name="n")),
            "a arrow frame": pa.Table.from_pandas(_batch(10, 5), preserve_index=False),
        }
        for says, df in wrong.items():
            with pytest.raises(ValueTypeError, match=says.replace("[", r"\[").replace("]", r"\]")):
                bh.frames.append("log", df)
        assert [v.version for v in bh.frames.history("log")] == [1]
        assert len(bh.files.list()) == blobs
        assert not bh.dirty


def test_new_rows_whose_object_column_is_all_missing_append_as_pandas_concatenates(config: BucketConfig) -> None:
    """pyarrow gives an object column of only None the null type: the new rows take the stored column's type, as
    ``pd.concat`` keeps it, where the append used to be refused ("is null here but string")."""
    df = pd.DataFrame({"s": pd.Series(["a", None, "c"], dtype=object), "n": [1.0, 2.0, 3.0]})
    more = pd.DataFrame({"s": pd.Series([None, None], dtype=object), "n": [4.0, 5.0]})
    with BucketSQLite(config, NO_TIMER) as bh:
        bh.frames.put("log", df)
        v = bh.frames.append("log", more)
        again = bh.frames.append("log", df)
        assert (v.parts, again.parts) == (2, 3)
        want = pd.concat([df, more, df], ignore_index=True)
        pd.testing.assert_frame_equal(bh.frames.get("log"), want)
        pd.testing.assert_frame_equal(bh.frames.get("log", columns=["s"], rows=slice(2, 6)), want[["s"]].iloc[2:6])
        assert bh.frames.schema("log").field("s").type == pa.string()
        bh.frames.compact("log")
        pd.testing.assert_frame_equal(bh.frames.get("log"), want)


def test_index_labels_follow_pandas(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as bh:
        numbered = pd.DataFrame({"v": [1.0, 2.0]}, index=pd.RangeIndex(10, 12, name="n"))
        bh.frames.put("numbered", numbered)
        bh.frames.append("numbered", pd.DataFrame({"v": [3.0]}, index=pd.RangeIndex(12, 13, name="n")))
        pd.testing.assert_frame_equal(bh.frames.get("numbered"), pd.DataFrame(
            {"v": [1.0, 2.0, 3.0]}, index=pd.RangeIndex(10, 13, name="n")))
        jump = pd.DataFrame({"v": [4.0, 5.0]}, index=pd.RangeIndex(100, 104, 2, name="n"))
        bh.frames.append("numbered", jump)  # labels that do not go on: kept, as pd.concat keeps them
        expected = pd.concat([bh.frames.get("numbered", 2), jump])
        assert list(expected.index) == [10, 11, 12, 100, 102]
        pd.testing.assert_frame_equal(bh.frames.get("numbered"), expected)
        pd.testing.assert_frame_equal(bh.frames.get("numbered", rows=slice(2, 4)), expected.iloc[2:4])
        pd.testing.assert_frame_equal(bh.frames.head("numbered", 2), expected.head(2))
        assert bh.frames.compact("numbered").parts == 2  # only neighbours whose labels go on are joined
        pd.testing.assert_frame_equal(bh.frames.get("numbered"), expected)
        by_time = pd.DataFrame({"v": [1.0, 2.0]}, index=pd.date_range("2024-01-01", periods=2, freq="D", name="t"))
        more = pd.DataFrame({"v": [3.0]}, index=pd.date_range("2024-01-03", periods=1, freq="D", name="t"))
        bh.frames.put("ts", by_time)
        bh.frames.append("ts", more)
        expected = pd.concat([by_time, more])  # labels kept, and the freq they still fit: what pd.concat gives
        pd.testing.assert_frame_equal(bh.frames.get("ts"), expected)
        assert bh.frames.get("ts").index.freq == "D"
        pd.testing.assert_frame_equal(bh.frames.get("ts", rows=slice(1, 3)), expected.iloc[1:3])
        later = pd.DataFrame({"v": [4.0]}, index=pd.date_range("2024-02-01", periods=1, freq="D", name="t"))
        bh.frames.append("ts", later)  # a gap: no freq fits any more
        expected = pd.concat([expected, later])
        assert expected.index.freq is None
        pd.testing.assert_frame_equal(bh.frames.get("ts"), expected)


def _peak_python_bytes(read: Callable[[], object]) -> tuple[object, int]:
    """What ``read()`` returns, and the most memory Python and numpy held at once during it (tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        got = read()
        return got, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_partial_read_costs_the_rows_read_not_the_whole_frame(make_config: Callable[..., BucketConfig]) -> None:
    """head(5) of a 16M-row frame whose parts' labels jump, or whose index has a freq, once built the labels (or
    a stand-in index) of all 16M rows: 128 MB and more for five rows (a client reading 4 GiB lazily held GiBs)."""
    n = 8_000_000
    jumping = pd.DataFrame({"v": np.zeros(n, dtype="i1")}, index=pd.RangeIndex(0, 2 * n, 2))
    timed = pd.DataFrame({"v": np.zeros(2 * n, dtype="i1")},
                         index=pd.date_range("2024-01-01", periods=2 * n, freq="s", name="t"))
    with BucketSQLite(make_config("local"), NO_TIMER) as bh:
        bh.frames.put("log", pd.DataFrame({"v": np.ones(n, dtype="i1")}))
        bh.frames.append("log", jumping)
        bh.frames.put("timed", timed)
        for name, read, want in [
            ("log", lambda: bh.frames.head("log", 5), pd.DataFrame({"v": np.ones(5, dtype="i1")})),
            ("log", lambda: bh.frames.get("log", rows=slice(-3, None)), jumping.iloc[-3:]),
            ("log", lambda: bh.frames.get("log", rows=slice(n + 4, n - 3, -3)),
             pd.concat([pd.DataFrame({"v": np.ones(n, dtype="i1")}).iloc[n - 2:], jumping.iloc[:5]]).iloc[::-3]),
            ("timed", lambda: bh.frames.head("timed", 5), timed.head(5)),
            ("timed", lambda: bh.frames.get("timed", rows=slice(2 * n - 10, 2 * n - 40, -7)),
             timed.iloc[2 * n - 10:2 * n - 40:-7]),
        ]:
            got, peak = _peak_python_bytes(read)
            pd.testing.assert_frame_equal(got, want)
            if name == "timed":
                assert got.index.freq == want.index.freq
            assert peak < 48 * 2**20, (name, peak / 2**20)  # (one row group's index column is 8 MB)


@pytest.mark.parametrize("backend", ["local"], indirect=True)  # (100 appends: the backends are covered above)
def test_compact_joins_parts_into_few_with_the_same_rows(config: BucketConfig,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with BucketSQLite(config, NO_TIMER) as bh:
        sizes = [50] * 100
        start = 0
        for n in sizes:
            bh.frames.append("events", _batch(start, n))
            start += n
        before = bh.frames.info("events")
        assert before.parts == 100 and before.version == 100
        expected = _expected(sizes)
        pd.testing.assert_frame_equal(bh.frames.get("events"), expected)
        part_bytes = sum(p.nbytes for p in bh.frames.parts("events")) // 3 + 1
        few = bh.frames.compact("events", part_bytes=part_bytes)
        assert few.version == 101 and 2 <= few.parts <= 4
        pd.testing.assert_frame_equal(bh.frames.get("events"), expected)
        one = bh.frames.compact("events")
        assert one.parts == 1 and one.n_rows == 5_000
        pd.testing.assert_frame_equal(bh.frames.get("events"), expected)
        assert bh.frames.compact("events").version == one.version  # nothing left to join
        pd.testing.assert_frame_equal(bh.frames.get("events", 37), _expected([50] * 37))  # old versions read
        bh.frames.delete("events")
        bh.force_flush()
        report = bh.files.gc(0)
        assert report.orphans_deleted >= 100  # every part and manifest, once nothing uses them
        assert bh.check().ok
        assert bh.connection.execute(f"SELECT count(*) FROM {PARTS_TABLE}").fetchone()[0] == 0


def test_gc_keeps_parts_that_a_remaining_version_uses(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as bh:
        bh.frames.put("log", _batch(0, 100))
        bh.frames.append("log", _batch(100, 10))
        bh.frames.append("log", _batch(110, 10))
        bh.frames.delete("log", 1)
        bh.frames.delete("log", 3)
        bh.force_flush()
        bh.files.gc(0)
        assert bh.check().ok
        pd.testing.assert_frame_equal(bh.frames.get("log", 2), _expected([100, 10]))


def test_two_writers_appending_to_one_name_keep_both(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as a, BucketSQLite(config, NO_TIMER) as b:
        a.frames.put("log", _batch(0, 10))
        a.force_flush()
        b.pull()
        a.frames.append("log", _batch(10, 5))
        b.frames.append("log", _batch(10, 7, seed=1))
        a.force_flush()
        b.force_flush()
        assert b.last_merge is not None and b.last_merge.renumbered == ["log@2->3"]
        a.pull()
        for bh in (a, b):
            pd.testing.assert_frame_equal(bh.frames.get("log", 2), _expected([10, 5]))
            assert bh.frames.get("log", 3).shape == (17, 7)
            assert bh.check().ok


def test_a_tampered_part_is_refused_by_every_read(make_config: Callable[..., BucketConfig],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config("moto")
    with BucketSQLite(config, NO_TIMER) as bh:
        monkeypatch.setattr(bh.files, "chunk_size", 4096)
        monkeypatch.setattr(bh.frames, "compression", "none")
        monkeypatch.setattr(bh.frames, "compression_level", None)
        bh.frames.put("log", _batch(0, 2_000))
        bh.frames.append("log", _batch(2_000, 2_000))
        part = bh.frames.parts("log")[1]
        key = bh.files.object_key(part.bh_key)
        data = bytearray(bh.bucket.get_bytes(key))
        data[part.nbytes // 3] ^= 0xFF
        bh.bucket.put_bytes(bytes(data), key)
        for read in (lambda: bh.frames.get("log"), lambda: bh.frames.get("log", columns=["value", "id"]),
                     lambda: bh.frames.get("log", rows=slice(1_990, 4_000)),
                     lambda: bh.frames.get("log", filters=[("id", ">=", 0)]),
                     lambda: bh.frames.dataset("log").to_table()):
            with pytest.raises(IntegrityError):
                read()
        pd.testing.assert_frame_equal(bh.frames.head("log", 10), _batch(0, 10))  # the first part is sound


def test_dataset_is_queried_lazily_by_pyarrow_polars_and_duckdb(config: BucketConfig) -> None:
    pl = pytest.importorskip("polars")
    duckdb = pytest.importorskip("duckdb")
    with BucketSQLite(config, NO_TIMER) as bh:
        for start in (0, 3_000, 6_000):
            bh.frames.append("t", _batch(start, 3_000))
        expected = _expected([3_000] * 3)
        want = expected[expected.kind == "b"]["value"].sum()
        data = bh.frames.dataset("t")
        assert data.count_rows() == 9_000
        table = data.to_table(columns=["value"], filter=ds.field("id") >= 8_990)
        assert table.column("value").to_pylist() == expected.value.iloc[8_990:].tolist()
        got = pl.scan_pyarrow_dataset(data).filter(pl.col("kind") == "b").select(pl.col("value").sum()).collect()
        assert got.item() == pytest.approx(want)
        con = duckdb.connect()
        con.register("t", data)
        assert con.execute("SELECT sum(value) FROM t WHERE kind = 'b'").fetchone()[0] == pytest.approx(want)
        assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 9_000
        urls = bh.frames.urls("t")
        assert len(urls) == 3 and all(u.startswith(("s3://", "file://")) for u in urls)
        with pytest.raises(ValueTypeError, match=r"urls\('t'\)"):
            bh.frames.url("t")


def test_row_groups_of_a_part_are_read_only_when_needed(make_config: Callable[..., BucketConfig],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """head() of a frame of many parts reads the first part only."""
    config = make_config("moto")
    counting = CountingBucket(__import__("bh_notebook.storage", fromlist=["open_bucket"]).open_bucket(config))
    monkeypatch.setattr(frames_mod, "FOOTER_GUESS", 64 * 1024)
    with BucketSQLite(config, NO_TIMER, bucket_client=counting) as bh:
        for start in range(0, 50_000, 10_000):
            bh.frames.append("t", _batch(start, 10_000))
        bh.frames.info("t")
        counting.reset()
        pd.testing.assert_frame_equal(bh.frames.head("t", 5), _batch(0, 5))
        first = bh.frames.parts("t")[0]
        assert counting.bytes_in <= first.nbytes + 4096


def test_check_reports_parts_that_do_not_add_up(make_config: Callable[..., BucketConfig]) -> None:
    with BucketSQLite(make_config("local"), NO_TIMER) as bh:
        bh.frames.put("log", _batch(0, 10))
        v = bh.frames.append("log", _batch(10, 5))
        assert bh.check().ok
        with bh.connection as conn:
            conn.execute(f"UPDATE {PARTS_TABLE} SET n_rows = 4 WHERE version_id = ? AND part = 1", (v.version_id,))
            conn.execute(f"INSERT INTO {PARTS_TABLE} SELECT 'gone', part, bh_key, n_rows, nbytes, range_start, "
                         f"range_step FROM {PARTS_TABLE} "
                         "WHERE version_id = ?", (v.version_id,))
        problems = bh.check().inconsistent_rows
        assert any("holds 15 rows but its parts add up to 14" in p for p in problems)
        assert any("which no frame version has" in p for p in problems)


def test_rows_stepping_backwards_with_filters_across_parts(make_config: Callable[..., BucketConfig]) -> None:
    with BucketSQLite(make_config("local"), NO_TIMER) as bh:
        bh.frames.put("g", pd.DataFrame({"x": range(8)}))
        bh.frames.append("g", pd.DataFrame({"x": range(8, 12)}))
        full = bh.frames.get("g")
        for step in (-1, -3):
            got = bh.frames.get("g", rows=slice(None, None, step), filters=[("x", ">", 2)])
            want = full.iloc[::step]
            pd.testing.assert_frame_equal(got, want[want.x > 2])


def test_polars_and_arrow_types_must_match_in_detail(make_config: Callable[..., BucketConfig]) -> None:
    pl = pytest.importorskip("polars")
    with BucketSQLite(make_config("local"), NO_TIMER) as bh:
        bh.frames.put("e", pl.DataFrame({"c": pl.Series(["a", "b"], dtype=pl.Enum(["a", "b"]))}))
        with pytest.raises(ValueTypeError, match="column 'c' is Enum"):
            bh.frames.append("e", pl.DataFrame({"c": pl.Series(["z"], dtype=pl.Enum(["z"]))}))
        bh.frames.put("t", pa.table({"at": pa.array([1, 2], pa.timestamp("s"))}))
        with pytest.raises(ValueTypeError, match=r"column 'at' is timestamp\[ms\] here but timestamp\[s\]"):
            bh.frames.append("t", pa.table({"at": pa.array([1500], pa.timestamp("ms"))}))
        assert bh.frames.info("e").version == 1 and bh.frames.info("t").version == 1


def test_reused_parts_are_checked_after_the_new_part_is_written(make_config: Callable[..., BucketConfig],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A collector that deletes a reused part while the new one uploads: the append must fail, not commit a
    version pointing at a missing blob."""
    with BucketSQLite(make_config("local"), NO_TIMER) as bh:
        first = bh.frames.put("log", _batch(0, 10))
        bh.force_flush()
        original = frames_mod.FrameStore._write_part

        def slow_write(self, name, table, progress):  # type: ignore[no-untyped-def]
            written = original(self, name, table, progress)
            bh.bucket.delete(bh.files.object_key(first.bh_key))  # gone meanwhile (another writer's gc)
            return written

        monkeypatch.setattr(frames_mod.FrameStore, "_write_part", slow_write)
        bh.files._present.clear()  # not checked lately by this process
        with pytest.raises(BlobNotFound):
            bh.frames.append("log", _batch(10, 5))
        assert [v.version for v in bh.frames.history("log")] == [1]


def test_check_fix_drops_parts_an_older_writer_left_behind(make_config: Callable[..., BucketConfig]) -> None:
    with BucketSQLite(make_config("local"), NO_TIMER) as bh:
        bh.frames.put("f", _batch(0, 10))
        bh.frames.append("f", _batch(10, 5))
        with bh.connection as conn:  # what an older bh_notebook's delete does: the version row only
            conn.execute("DELETE FROM bh_frames WHERE version = 2")
        report = bh.check(fix=True)
        assert any("frame parts of the deleted version" in f for f in report.fixed)
        assert bh.check().inconsistent_rows == []
        bh.force_flush()
        bh.files.gc(0)
        assert bh.check().ok
