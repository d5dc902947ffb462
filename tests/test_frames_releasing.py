"""Whole gets of big frame blobs decode a few column chunks at a time and give back each chunk's pages once it is
decoded (``parquet_read.decode_releasing``), so the blob and the table are never both in memory whole. The same frames
must come back as through one ``read_table``; the pages must really go back to the system; and a page read again after
it was given back (it reads zeros) must be caught and the blob read again."""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings

from bh_notebook import BucketSQLite
from bh_notebook.errors import ValueTypeError
from bh_notebook.interfaces import frames as frames_mod
from bh_notebook.interfaces import parquet_read
from bh_notebook.interfaces.mapped import ReleasableMap

from .test_frames_exact import assert_same
from .test_frames_zoo import zoo_frames

pytestmark = pytest.mark.skipif(not ReleasableMap.available(), reason="the system cannot say which pages are in memory")


class Decodes:
    """Counts whole reads that took the releasing path and finished there, and what each still held of its blob."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.done = 0
        self.fallbacks = 0
        self.held: list[tuple[int, int]] = []  # (bytes of the blob still in memory, blob size) after decoding
        self.planned: list[int] = []  # tasks planned by each read that planned any
        real = parquet_read.decode_releasing
        real_plan = parquet_read.decode_tasks

        def plan(md: Any, schema: Any, footer: int) -> Any:
            tasks = real_plan(md, schema, footer)
            if tasks:
                self.planned.append(len(tasks))
            return tasks

        monkeypatch.setattr(parquet_read, "decode_tasks", plan)

        def spy(blob: ReleasableMap, md: Any, dictionary: Any) -> Any:
            table = real(blob, md, dictionary)
            if table is None:
                self.fallbacks += 1
            else:
                self.done += 1
                self.held.append((blob.resident_bytes(), blob.size))
            return table

        monkeypatch.setattr(parquet_read, "decode_releasing", spy)


@pytest.fixture
def releasing(monkeypatch: pytest.MonkeyPatch) -> Decodes:
    """Every whole read takes the releasing path, one field per task."""
    monkeypatch.setattr(frames_mod, "RELEASING_READ_BYTES", 0)
    monkeypatch.setattr(parquet_read, "MIN_CHUNK_BYTES", 0)
    monkeypatch.setattr(parquet_read, "DECODE_TASK_BYTES", 1)
    return Decodes(monkeypatch)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(case=zoo_frames())
def test_zoo_comes_back_exactly_through_the_releasing_decode(
        hyp_bh: BucketSQLite, releasing: Decodes, monkeypatch: pytest.MonkeyPatch, case: tuple[Any, bool]) -> None:
    monkeypatch.setattr(frames_mod, "ROW_GROUP_SIZE", 2)  # several row groups: columns gathered across them
    monkeypatch.setattr(frames_mod, "MIN_ROW_GROUP", 1)
    value, _ = case
    try:
        v = hyp_bh.frames.put("zoo", value)
    except ValueTypeError:
        return
    before, planned = releasing.done, len(releasing.planned)
    assert_same(hyp_bh.frames.get("zoo", v.version), value)
    event(f"{len(value)} rows")
    assert releasing.done == before + 1 and releasing.fallbacks == 0
    if len(value) and (value.ndim == 1 or value.shape[1]):  # rows and columns: decoded in tasks
        assert len(releasing.planned) == planned + 1


def _frame(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    f = rng.normal(size=n)
    f[::97] = np.nan
    return pd.DataFrame({
        "id": np.arange(n, dtype=np.int64),
        "x": f,
        "nullable": pd.array(np.where(np.arange(n) % 11 == 0, None, rng.integers(0, 1000, n)), dtype="Int32"),
        "ts": pd.date_range("2020-01-01", periods=n, freq="s", tz="UTC"),
        "s": pd.array([f"name-{i % 5000}" for i in range(n)], dtype="string"),
        "cat": pd.Categorical.from_codes(rng.integers(0, 4, n), ["a", "b", "c", "d"]),
        "flag": rng.integers(0, 2, n).astype(bool),
        "small": rng.normal(size=n).astype(np.float32),
    }, index=pd.RangeIndex(5, 5 + 3 * n, 3))


def test_a_big_frame_comes_back_and_its_blob_pages_are_given_back(
        bh: BucketSQLite, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frames_mod, "RELEASING_READ_BYTES", 1024 * 1024)
    monkeypatch.setattr(parquet_read, "DECODE_TASK_BYTES", 64 * 1024)
    monkeypatch.setattr(parquet_read, "MIN_CHUNK_BYTES", 16 * 1024)  # (its chunks are about 150 KiB)
    monkeypatch.setattr(frames_mod, "ROW_GROUP_SIZE", 40_000)
    decodes = Decodes(monkeypatch)
    df = _frame(300_000)
    bh.frames.put("big", df)
    assert bh.frames.info("big").nbytes >= 1024 * 1024
    got = bh.frames.get("big")
    pd.testing.assert_frame_equal(got, df, check_exact=True)
    assert decodes.done == 1 and decodes.fallbacks == 0 and decodes.planned[0] > 8
    (held, size), = decodes.held
    # What stays: the footer, and the pages that neighbouring tasks share at their edges.
    assert held <= 0.05 * size, f"{held} of {size} bytes of the blob still in memory after decoding"
    got.iloc[0, 1] = 1.5  # pandas owns what it got: writable, and the blob's memory is gone
    assert got.iloc[0, 1] == 1.5


def test_blobs_of_small_column_chunks_are_read_in_one_go(bh: BucketSQLite, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wide frame's chunks are a few KiB: planning and gathering them one by one in Python would cost more time
    than keeping the blob is worth."""
    monkeypatch.setattr(frames_mod, "RELEASING_READ_BYTES", 0)
    decodes = Decodes(monkeypatch)
    df = pd.DataFrame(np.random.default_rng(1).normal(size=(500, 300)), columns=[f"c{i}" for i in range(300)])
    bh.frames.put("wide", df)
    pd.testing.assert_frame_equal(bh.frames.get("wide"), df, check_exact=True)
    (held, size), = decodes.held
    assert decodes.planned == [] and held >= size


def test_small_blobs_are_read_whole_in_one_go(bh: BucketSQLite, monkeypatch: pytest.MonkeyPatch) -> None:
    decodes = Decodes(monkeypatch)
    df = _frame(1000)
    bh.frames.put("small", df)
    assert bh.frames.info("small").nbytes < frames_mod.RELEASING_READ_BYTES
    pd.testing.assert_frame_equal(bh.frames.get("small"), df, check_exact=True)
    assert decodes.done == 0


def test_a_page_read_after_it_was_given_back_is_caught_and_the_blob_read_again(
        bh: BucketSQLite, releasing: Decodes, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a bug in the task plan would: the first task's bytes are given back together with every later task's,
    most of them not decoded yet. Their decoders then read zeros (wrong values or an error); the read must notice
    and start again."""
    monkeypatch.setattr(frames_mod, "ROW_GROUP_SIZE", 40_000)
    real = parquet_read.decode_tasks

    def too_far(md: Any, schema: Any, footer: int) -> Any:
        tasks = real(md, schema, footer)
        tasks[0].end = tasks[-1].end
        return tasks

    monkeypatch.setattr(parquet_read, "decode_tasks", too_far)
    df = _frame(200_000)
    bh.frames.put("f", df)
    with pytest.warns(RuntimeWarning, match="read bytes already given back; it is read again"):
        got = bh.frames.get("f")
    pd.testing.assert_frame_equal(got, df, check_exact=True)
    assert releasing.fallbacks == 1 and releasing.done == 0


def test_locked_memory_keeps_its_pages_and_the_get_still_works(
        bh: BucketSQLite, releasing: Decodes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process with locked memory (``mlockall``) cannot give pages back (``madvise`` fails with EINVAL): the read
    keeps them and finishes, where it used to raise OSError."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mlock.argtypes = libc.munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    locked: list[tuple[int, int]] = []
    real_init = ReleasableMap.__init__

    def lock(self: ReleasableMap, size: int) -> None:
        real_init(self, size)
        address = ctypes.addressof(ctypes.c_char.from_buffer(self.view))
        if libc.mlock(address, size) != 0:
            pytest.skip(f"mlock refused here (errno {ctypes.get_errno()})")
        locked.append((address, size))

    monkeypatch.setattr(ReleasableMap, "__init__", lock)
    monkeypatch.setattr(frames_mod, "ROW_GROUP_SIZE", 40_000)
    df = _frame(200_000)
    bh.frames.put("f", df)
    try:
        got = bh.frames.get("f")
    finally:
        for address, size in locked:
            libc.munlock(address, size)
    pd.testing.assert_frame_equal(got, df, check_exact=True)
    assert locked and releasing.done == 1 and releasing.fallbacks == 0
    (held, size), = releasing.held
    assert held >= size  # every page kept


def test_decoders_allocate_from_a_pool_that_gives_freed_memory_back(
        bh: BucketSQLite, releasing: Decodes, monkeypatch: pytest.MonkeyPatch) -> None:
    """Arrow's default mimalloc keeps what the decoders free for about a second, within the get's peak: they use
    jemalloc, set to give it back at once."""
    import pyarrow as pa

    try:
        jemalloc = pa.jemalloc_memory_pool()
    except NotImplementedError:
        pytest.skip("this pyarrow has no jemalloc")
    if pa.default_memory_pool().backend_name == "jemalloc":
        pytest.skip("jemalloc is the default pool here")
    seen: list[int] = []
    real_add = parquet_read._Columns.add

    def add(self: Any, task: Any, table: Any) -> None:
        seen.append(jemalloc.bytes_allocated())  # the decoded task, not yet gathered, is in the pool
        real_add(self, task, table)

    monkeypatch.setattr(parquet_read._Columns, "add", add)
    monkeypatch.setattr(frames_mod, "ROW_GROUP_SIZE", 40_000)
    df = _frame(100_000)
    bh.frames.put("f", df)
    pd.testing.assert_frame_equal(bh.frames.get("f"), df, check_exact=True)
    assert seen and max(seen) > 100_000
