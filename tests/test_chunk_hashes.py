"""Chunk hashes: partial reads (frame columns, filters, rows, head; array rows) are checked against the SHA-256 of
every chunk they touch, so bytes altered in the bucket raise IntegrityError instead of being returned."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig
from bh_notebook.errors import IntegrityError
from bh_notebook.interfaces import frames as frames_mod
from bh_notebook.interfaces import files as files_mod
from bh_notebook.interfaces.files import CHUNKS_TABLE, FileStore

NO_TIMER = SnapshotConfig(interval_seconds=0)
CHUNK = 4 * 1024
COLUMNS = list("abcdefg")


def _tamper(bh: BucketSQLite, bh_key: str, offset: int) -> bytes:
    """Flip one byte of the blob's object in the bucket (same length); return the original bytes."""
    key = bh.files.object_key(bh_key)
    original = bh.bucket.get_bytes(key)
    altered = bytearray(original)
    altered[offset] ^= 0xFF
    bh.bucket.put_bytes(bytes(altered), key)
    return original


def _drop_chunk_row(bh: BucketSQLite, bh_key: str) -> None:
    conn = bh.connection
    with conn:
        conn.execute(f"DELETE FROM {CHUNKS_TABLE} WHERE blob = ?", (bh_key,))


@pytest.fixture
def small_chunks(bh: BucketSQLite, monkeypatch: pytest.MonkeyPatch) -> BucketSQLite:
    """A store whose new blobs get 4 KiB chunks and whose frames get 10,000-row groups, uncompressed (so that an
    altered value byte decodes silently when nothing checks it)."""
    monkeypatch.setattr(bh.files, "chunk_size", CHUNK)
    monkeypatch.setattr(files_mod, "_ONE_GET", 0)  # array rows= beyond 4 chunks: straight into the array
    monkeypatch.setattr(frames_mod, "ROW_GROUP_SIZE", 10_000)
    monkeypatch.setattr(frames_mod, "MIN_ROW_GROUP", 1_000)
    monkeypatch.setattr(bh.frames, "compression", "none")
    monkeypatch.setattr(bh.frames, "compression_level", None)
    return bh


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame({c: rng.normal(size=40_000) for c in COLUMNS})


def _column_chunk(bh: BucketSQLite, bh_key: str, group: int, column: str) -> tuple[int, int]:
    """The byte range of one column chunk of the stored Parquet blob."""
    md = pq.ParquetFile(pa.BufferReader(bh.files.get(bh_key))).metadata
    col = md.row_group(group).column(COLUMNS.index(column))
    assert col.path_in_schema == column
    return col.data_page_offset, col.data_page_offset + col.total_compressed_size


def test_frame_partial_reads_detect_an_altered_row_group(small_chunks: BucketSQLite) -> None:
    bh = small_chunks
    df = _frame()
    v = bh.frames.put("f", df)
    assert v.row_groups == 4
    chunks = bh.files.chunk_hashes(v.bh_key)
    assert chunks is not None and chunks.chunk_size == CHUNK and len(chunks.digests) == 32 * -(-v.nbytes // CHUNK)
    lo, hi = _column_chunk(bh, v.bh_key, 0, "d")  # column d of the first row group
    _tamper(bh, v.bh_key, (lo + hi) // 2)

    with pytest.raises(IntegrityError, match=r"chunk \d+ .*Put the data again"):
        bh.frames.get("f", columns=["d"])
    with pytest.raises(IntegrityError):
        bh.frames.get("f", columns=["a", "d"])
    with pytest.raises(IntegrityError):
        bh.frames.get("f", filters=[("d", ">", 0.0)])
    with pytest.raises(IntegrityError):
        bh.frames.get("f", rows=slice(0, 10))
    with pytest.raises(IntegrityError):
        bh.frames.head("f", 3)
    with pytest.raises(IntegrityError):
        bh.frames.get("f")  # the whole read, checked by the blob's own hash as before

    # Reads that touch only other chunks still succeed, with the right values.
    pd.testing.assert_frame_equal(bh.frames.get("f", columns=["a", "b"]), df[["a", "b"]])
    pd.testing.assert_frame_equal(bh.frames.get("f", columns=["g"], filters=[("g", ">", 1.0)]),
                                  df.loc[df["g"] > 1.0, ["g"]])
    pd.testing.assert_frame_equal(bh.frames.get("f", rows=slice(30_000, 30_010)), df.iloc[30_000:30_010])
    pd.testing.assert_frame_equal(bh.frames.get("f", rows=slice(15_000, 25_000), columns=["d"]),
                                  df.iloc[15_000:25_000][["d"]])


def test_array_rows_detect_an_altered_row_block(small_chunks: BucketSQLite) -> None:
    bh = small_chunks
    arr = np.random.default_rng(3).normal(size=(1000, 64))  # 512 bytes a row: 8 rows a chunk
    v = bh.arrays.put("a", arr)
    header = len(bh.arrays._row("a", None)["header"])
    _tamper(bh, v.bh_key, header + 500 * 512 + 10)  # inside row 500

    with pytest.raises(IntegrityError, match=r"chunk \d+"):
        bh.arrays.get("a", rows=slice(499, 502))  # a few rows: one request for the whole chunks
    with pytest.raises(IntegrityError, match=r"chunk \d+"):
        bh.arrays.get("a", rows=slice(100, 900))  # many rows: straight into the array, the edges beside
    with pytest.raises(IntegrityError):
        bh.arrays.get("a", rows=slice(490, 510, 3))
    with pytest.raises(IntegrityError):
        bh.arrays.get("a")
    np.testing.assert_array_equal(bh.arrays.get("a", rows=slice(0, 100)), arr[:100])
    np.testing.assert_array_equal(bh.arrays.get("a", rows=slice(0, 480)), arr[:480])
    np.testing.assert_array_equal(bh.arrays.get("a", rows=slice(520, 1000)), arr[520:])
    np.testing.assert_array_equal(bh.arrays.get("a", rows=slice(700, 703)), arr[700:703])


def test_blob_without_chunk_hashes_still_reads(small_chunks: BucketSQLite) -> None:
    bh = small_chunks
    df = _frame()
    arr = np.arange(10_000, dtype=np.int64).reshape(1000, 10)
    fv = bh.frames.put("f", df)
    av = bh.arrays.put("a", arr)
    for key in (fv.bh_key, av.bh_key):
        _drop_chunk_row(bh, key)  # as a blob put by an older version, or by another library
        assert bh.files.chunk_hashes(key) is None
    pd.testing.assert_frame_equal(bh.frames.get("f", columns=["c"]), df[["c"]])
    pd.testing.assert_frame_equal(bh.frames.get("f", filters=[("a", ">", 0.0)]), df[df["a"] > 0.0])
    pd.testing.assert_frame_equal(bh.frames.get("f", rows=slice(5, 9)), df.iloc[5:9])
    pd.testing.assert_frame_equal(bh.frames.head("f", 2), df.head(2))
    np.testing.assert_array_equal(bh.arrays.get("a", rows=slice(10, 20)), arr[10:20])
    assert bh.files.get_range_verified(av.bh_key, 3, 40) == bh.files.get(av.bh_key)[3:40]
    # Putting the same bytes again records the chunk hashes it has in hand.
    assert bh.arrays.put("a", arr).bh_key == av.bh_key
    assert bh.files.chunk_hashes(av.bh_key) is not None
    np.testing.assert_array_equal(bh.arrays.get("a", rows=slice(10, 20)), arr[10:20])


def test_chunk_rows_go_with_their_file_rows(small_chunks: BucketSQLite, tmp_path: object) -> None:
    bh = small_chunks
    a = bh.files.put(b"x" * 10_000)
    b = bh.files.put(b"y" * 10_000)
    c = bh.arrays.put("c", np.arange(5000)).bh_key
    rows = lambda: {r[0] for r in bh.connection.execute(f"SELECT blob FROM {CHUNKS_TABLE}")}  # noqa: E731
    assert {a, b, c} <= rows()
    bh.files.delete(a)
    bh.files.release(b)
    bh.arrays.delete("c")
    assert not {a, b, c} & rows()
    # The chunk table is no table of entries: it keeps no blob alive.
    assert CHUNKS_TABLE not in bh.files._referencing_tables()


def test_path_puts_and_writers_record_the_same_chunks(small_chunks: BucketSQLite, tmp_path: object) -> None:
    from pathlib import Path

    bh = small_chunks
    data = np.random.default_rng(1).bytes(3 * 1024 * 1024 + 123)  # above the threaded-hash threshold
    path = Path(str(tmp_path)) / "blob.bin"
    path.write_bytes(data)
    k1 = bh.files.put(path)
    first = bh.files.chunk_hashes(k1)
    _drop_chunk_row(bh, k1)
    with bh.files.writer() as w:
        w.write(data[:1000])
        w.write(data[1000:])
    assert w.bh_key == k1
    second = bh.files.chunk_hashes(k1)
    _drop_chunk_row(bh, k1)
    assert bh.files.put_buffers(data[:5], data[5:]) == k1
    third = bh.files.chunk_hashes(k1)
    assert first is not None and first == second == third
    assert len(first.digests) == 32 * -(-len(data) // CHUNK)


def test_two_writers_putting_the_same_blob_do_not_conflict(config: BucketConfig) -> None:
    a = BucketSQLite(config, NO_TIMER).start()
    b = BucketSQLite(config, NO_TIMER).start()
    try:
        a.arrays.put("x", np.arange(100_000))
        a.force_flush()
        b.arrays.put("y", np.arange(100_000))  # the same blob, its chunk row made on both sides
        b.arrays.put("z", np.arange(7))
        b.force_flush()
        assert b.last_merge is not None and b.last_merge.conflicts == []
    finally:
        a.stop()
        b.stop()
    with BucketSQLite(config, NO_TIMER) as r:
        for name in ("x", "y", "z"):
            assert r.files.chunk_hashes(r.arrays.info(name).bh_key) is not None
        np.testing.assert_array_equal(r.arrays.get("y", rows=slice(10, 20)), np.arange(10, 20))


def test_a_file_row_kept_by_a_merge_keeps_its_chunk_hashes(config: BucketConfig) -> None:
    arr = np.arange(100_000)
    with BucketSQLite(config, NO_TIMER) as seed:
        key = seed.arrays.put("x", arr).bh_key
    a = BucketSQLite(config, NO_TIMER).start()
    b = BucketSQLite(config, NO_TIMER).start()
    try:
        a.arrays.delete("x")  # its blob's file and chunk rows go
        a.force_flush()
        assert b.arrays.put("y", arr).bh_key == key  # relies on the rows b still has
        b.force_flush()  # the merge keeps the file row b's entry uses, and its chunk hashes with it
    finally:
        a.stop()
        b.stop()
    with BucketSQLite(config, NO_TIMER) as r:
        assert r.files.chunk_hashes(key) is not None
        np.testing.assert_array_equal(r.arrays.get("y", rows=slice(5, 9)), arr[5:9])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), size=st.integers(0, 2000))
def test_ranged_reads_return_the_bytes_and_catch_any_flipped_byte(hyp_bh: BucketSQLite, data: st.DataObject,
                                                                  size: int) -> None:
    files = hyp_bh.files
    files.chunk_size = 64  # an instance attribute: the class keeps its own
    one_get = files_mod._ONE_GET
    files_mod._ONE_GET = data.draw(st.sampled_from([0, one_get]), label="one GET up to")
    try:
        blob = data.draw(st.binary(min_size=size, max_size=size), label="blob")
        key = files.put(blob)
        chunks = files.chunk_hashes(key)
        assert chunks is not None and chunks.chunk_size == 64
        start = data.draw(st.integers(0, size), label="start")
        end = data.draw(st.integers(start, size), label="end")
        assert files.get_range_verified(key, start, end) == blob[start:end]
        buf = bytearray(end - start)
        assert files.get_into_verified(key, buf, start) == end - start
        assert bytes(buf) == blob[start:end]
        if end > start:
            lo, hi = chunks.span(start, end)
            where = data.draw(st.integers(lo, hi - 1), label="flipped byte")
            original = _tamper(hyp_bh, key, where)
            try:
                with pytest.raises(IntegrityError, match=f"chunk {where // 64} "):
                    files.get_range_verified(key, start, end)
                with pytest.raises(IntegrityError, match=f"chunk {where // 64} "):
                    files.get_into_verified(key, bytearray(end - start), start)
            finally:
                hyp_bh.bucket.put_bytes(original, files.object_key(key))
    finally:
        del files.chunk_size
        files_mod._ONE_GET = one_get
    assert FileStore.chunk_size == 1024 * 1024
