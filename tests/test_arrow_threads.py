"""A read hands Arrow Python objects that hold the bytes it decodes: a map's memoryview (``pa.py_buffer``), an array.
Each must be let go on a thread Python knows, before the read returns, not by one of Arrow's threads afterwards.

Arrow's reader, when it decodes on its own threads, drops its last reference on whichever of them finishes last,
often after the call has returned; the release then takes the GIL from a thread Python has never seen, with a new
thread state each time. CPython 3.11 crashes when that happens while ``tracemalloc.stop()`` runs (python/cpython#128679,
never fixed in 3.11): the suite's memory tests, which stop tracemalloc right after a read, crashed a worker in about
one full run in six, in a native thread with no Python frame.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from bh_notebook import BucketSQLite
from bh_notebook.interfaces import frames as frames_mod
from bh_notebook.interfaces import mapped

READS = 12  # Arrow's threads let go of a two-column read's buffer about 6 times in 10: 12 reads all but prove it


class Releases:
    """Where the Python objects given to Arrow were freed (a weakref's callback runs on the freeing thread)."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.python_reads: list[threading.Thread] = []
        self._refs: list[Any] = []

    def watch(self, obj: Any) -> None:
        self._refs.append(weakref.ref(obj, self._freed))

    def _freed(self, _ref: Any) -> None:
        self.threads.append(threading.current_thread())

    def foreign(self) -> list[str]:
        """The threads not started by Python that freed one, or read through a Python file (``current_thread()``
        makes a dummy for those)."""
        return [t.name for t in self.threads + self.python_reads if isinstance(t, threading._DummyThread)]


@pytest.fixture
def releases(monkeypatch: pytest.MonkeyPatch) -> Iterator[Releases]:
    seen = Releases()
    made = mapped._Map.__init__

    def init(self: mapped._Map, size: int) -> None:
        made(self, size)
        seen.watch(self.view)  # held by the pa.py_buffer Arrow reads through

    real_reader, real_array = pa.BufferReader, pa.array

    def reader(source: Any) -> Any:
        if isinstance(source, np.ndarray):  # a small blob downloaded whole into an array
            seen.watch(source)
        return real_reader(source)

    def array(values: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(values, np.ndarray) and values.dtype != object:  # wrapped without a copy
            seen.watch(values)
        return real_array(values, *args, **kwargs)

    real_read = frames_mod.RangeFile.read

    def read(self: Any, n: int = -1) -> bytes:  # the Python file pyarrow reads through where nothing is mapped
        seen.python_reads.append(threading.current_thread())
        return real_read(self, n)

    monkeypatch.setattr(mapped._Map, "__init__", init)
    monkeypatch.setattr(pa, "BufferReader", reader)
    monkeypatch.setattr(pa, "array", array)
    monkeypatch.setattr(frames_mod.RangeFile, "read", read)
    yield seen


@pytest.fixture
def bh(hyp_bh: BucketSQLite) -> BucketSQLite:
    """A store on the local backend and on moto (conftest's)."""
    return hyp_bh


def _settled(releases: Releases) -> list[threading.Thread]:
    """The frees so far, once nothing of the reads is left but garbage: a late free on an Arrow thread happens
    within moments of the read, so a short wait lets the old behaviour show."""
    import gc
    import time

    time.sleep(0.05)
    gc.collect()
    return list(releases.threads)


@pytest.mark.parametrize("mapping", [True, False], ids=["mapped", "through-the-file"])
def test_partial_reads_let_go_of_their_buffers_on_python_threads(bh: BucketSQLite, releases: Releases,
                                                                 mapping: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a map of the blob, and (where the system cannot say which pages were read) through the checked
    Python file, which pyarrow must not read ahead from its I/O threads; ``filters=`` too, whose positions column
    goes through Arrow's filter on its threads."""
    if mapping and mapped._MINCORE is None:
        pytest.skip("the system cannot say which pages were read: partial reads go through the file")
    if not mapping:
        monkeypatch.setattr(mapped.MappedRanges, "available", staticmethod(lambda chunk_size: False))
    rng = np.random.default_rng(5)
    n = 200_000
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.integers(0, 9, n), "c": rng.normal(size=n),
                       "s": rng.choice(["x", "y", "z"], n).astype(object)})
    bh.frames.put("f", df)
    for i in range(READS):
        pd.testing.assert_frame_equal(bh.frames.get("f", columns=["a", "s"]), df[["a", "s"]])
        pd.testing.assert_frame_equal(bh.frames.get("f", rows=slice(i, n, 7)), df.iloc[i::7])
        pd.testing.assert_frame_equal(bh.frames.head("f", 3), df.head(3))
        got = bh.frames.get("f", filters=[("b", "==", i % 9)])
        pd.testing.assert_frame_equal(got, df[df["b"] == i % 9])
    freed = _settled(releases)
    assert len(freed) >= READS  # (the positions of each filters= read at least)
    if mapping:
        assert len(freed) >= 4 * READS  # every read went through a map that was watched
    else:
        assert len(releases.python_reads) >= 4 * READS
    assert releases.foreign() == []


def test_whole_reads_let_go_of_their_buffers_on_python_threads(bh: BucketSQLite, releases: Releases) -> None:
    """The three whole reads: a small blob read from an array, a big one given back as it is decoded, and a big one
    of small column chunks (a wide frame) decoded in one read of the map."""
    rng = np.random.default_rng(6)
    small = pd.DataFrame({"a": rng.normal(size=50_000), "b": rng.integers(0, 9, 50_000)})
    big = pd.DataFrame({f"c{j}": rng.normal(size=600_000) for j in range(4)})
    wide = pd.DataFrame(rng.normal(size=(30_000, 100)), columns=[f"w{j}" for j in range(100)])
    for name, df in [("small", small), ("big", big), ("wide", wide)]:
        bh.frames.put(name, df)
    sizes = {name: bh.frames.info(name).nbytes for name in ("small", "big", "wide")}
    assert sizes["small"] < frames_mod.RELEASING_READ_BYTES <= min(sizes["big"], sizes["wide"])
    for _ in range(READS // 3):
        for name, df in [("small", small), ("big", big), ("wide", wide)]:
            pd.testing.assert_frame_equal(bh.frames.get(name), df)
    freed = _settled(releases)
    assert len(freed) >= READS
    assert releases.foreign() == []


def test_fields_split_among_threads_are_each_read_once(bh: BucketSQLite) -> None:
    """The fields of a row group are split among the threads by position: a name that stands for several fields
    (duplicates; a column 'st.x' beside a struct 'st', whose leaf is 'st.x' too) is not read once per piece."""
    n = 3000
    nested = pa.table({"st": pa.array([{"x": i, "y": -i} for i in range(n)]), "st.x": pa.array(range(n)),
                       "z": pa.array(np.arange(n, dtype=np.float64))})
    twice = pa.Table.from_arrays([pa.array(range(n)), pa.array(range(n, 2 * n)), pa.array(range(2 * n, 3 * n))],
                                 names=["a", "a", "b"])
    for name, table in [("nested", nested), ("twice", twice)]:
        bh.frames.put(name, table)
        assert bh.frames.get(name).equals(table)
        assert bh.frames.head(name, 3).equals(table.slice(0, 3))
        assert bh.frames.get(name, rows=slice(10, 2000)).equals(table.slice(10, 1990))
    assert bh.frames.get("nested", columns=["st", "z"]).equals(nested.select(["st", "z"]))
