"""ArrayStore: exact round trips, versions and dedup, ranged row reads, and bad input."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bh_notebook import ArrayVersion, BucketConfig, BucketSQLite, SnapshotConfig
from bh_notebook.errors import IntegrityError, InvalidKey, KeyTypeError, NotFound, ValueTypeError

NO_TIMER = SnapshotConfig(interval_seconds=0)


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    fortran = lambda x: x.flags.f_contiguous and not x.flags.c_contiguous  # noqa: E731
    if a.flags.c_contiguous or a.flags.f_contiguous:
        assert fortran(a) == fortran(b)
    # Compare bytes, so NaN payloads, -0.0 and NaT count too.
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


CASES = {
    "float64": np.linspace(0, 1, 101),
    "nan-inf": np.array([np.nan, np.inf, -np.inf, -0.0, 1.5]),
    "int8": np.arange(-128, 128, dtype=np.int8),
    "uint64": np.array([0, 2**64 - 1], dtype=np.uint64),
    "float16": np.arange(10, dtype=np.float16),
    "longdouble": np.arange(4, dtype=np.longdouble) / 3,
    "bool": np.array([True, False, True]),
    "complex128": np.array([1 + 2j, np.nan + 1j]),
    "complex64": np.array([3 - 1j], dtype=np.complex64),
    "datetime64": np.array(["2024-01-01T12:00", "NaT"], dtype="datetime64[ns]"),
    "timedelta64": np.array([1, -5, 0], dtype="timedelta64[ms]"),
    "bytes": np.array([b"ab", b"\x00\xff"], dtype="S2"),
    "unicode": np.array(["héllo", "wörld", ""], dtype="U5"),
    "big-endian": np.arange(5, dtype=">i4"),
    "structured": np.array([(1, 2.5, b"x"), (3, -1.0, b"yz")], dtype=[("a", "<i4"), ("b", ">f8"), ("c", "S2")]),
    "nested": np.zeros(3, dtype=[("a", "i4", (2,)), ("b", [("c", "f4"), ("d", "U3")])]),
    "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    "c-2d": np.arange(24).reshape(2, 3, 4),
    "0-d": np.array(3.25),
    "empty": np.empty((0, 5), dtype=np.float32),
    "strided-view": np.arange(40).reshape(8, 5)[::2, 1::2],
    "transposed": np.arange(6).reshape(2, 3).T,
}


@pytest.mark.parametrize("case", list(CASES))
def test_exact_roundtrip(bh: BucketSQLite, case: str) -> None:
    arr = CASES[case]
    v = bh.arrays.put(case, arr)
    assert isinstance(v, ArrayVersion)
    assert (v.name, v.version, v.shape, v.dtype, v.nbytes) == (case, 1, arr.shape, arr.dtype, arr.nbytes)
    got = bh.arrays.get(case)
    assert_same(arr, got)
    # The blob is the standard .npy numpy.save writes.
    buf = io.BytesIO()
    np.save(buf, arr)
    assert v.bh_key == hashlib.sha256(buf.getvalue()).hexdigest()
    assert np.load(io.BytesIO(bh.files.get(v.bh_key)), allow_pickle=False).tobytes() == \
        np.ascontiguousarray(arr).tobytes()


def test_versions_dedup_and_history(counted) -> None:  # type: ignore[no-untyped-def]
    bh, counting = counted
    a = np.arange(1000.0)
    v1 = bh.arrays.put("w", a, metadata={"note": "first"})
    writes = counting.writes
    again = bh.arrays.put("w", a.copy(), metadata={"note": "ignored"})
    assert again == v1 and counting.writes == writes  # same data: same version, nothing uploaded
    before = counting.bytes_out
    v2 = bh.arrays.put("w", a * 2)
    # The .npy once, header and data (a local store writes them from the array's own memory): all counted.
    assert counting.bytes_out - before == bh.files.head(v2.bh_key).size
    writes += 1
    assert (v1.version, v2.version) == (1, 2)
    assert [v.version for v in bh.arrays.history("w")] == [2, 1]
    assert bh.arrays.info("w").version == 2 and bh.arrays.info("w", 1).metadata == {"note": "first"}
    assert_same(bh.arrays.get("w", 1), a)
    assert_same(bh.arrays["w"], a * 2)
    v3 = bh.arrays.put("w", a)  # back to the first data: a new version, but the blob is shared
    assert v3.version == 3 and v3.bh_key == v1.bh_key and counting.writes == writes
    assert bh.arrays.put("other", a).bh_key == v1.bh_key
    assert len(bh.files) == 2
    assert bh.arrays.names() == ["other", "w"] and "w" in bh.arrays and "nope" not in bh.arrays
    assert len(bh.arrays) == 2


def test_delete_keeps_shared_blobs(bh: BucketSQLite) -> None:
    a = np.arange(10)
    v1 = bh.arrays.put("x", a)
    bh.arrays.put("x", a + 1)
    bh.arrays.put("y", a)
    removed = bh.arrays.delete("x", 1)
    assert [v.version for v in removed] == [1]
    assert bh.files.metadata(v1.bh_key) is not None  # still used by y
    assert [v.version for v in bh.arrays.history("x")] == [2]
    bh.arrays.delete("y")
    assert bh.files.metadata(v1.bh_key) is None  # no entry uses it: its row goes ...
    assert bh.bucket.exists(bh.files.object_key(v1.bh_key))  # ... and its object waits for gc
    bh.arrays.delete("x")
    assert "x" not in bh.arrays and len(bh.files) == 0
    report = bh.files.gc(grace_seconds=0)
    assert report.orphans_deleted == 2 and not bh.bucket.exists(bh.files.object_key(v1.bh_key))
    with pytest.raises(NotFound):
        bh.arrays.delete("x")


def test_rows_fetch_only_those_bytes(counted) -> None:  # type: ignore[no-untyped-def]
    bh, counting = counted
    bh.files.chunk_size = 4096  # rows= fetches whole hash chunks: small ones here
    arr = np.arange(100_000 * 8, dtype=np.float64).reshape(100_000, 8)
    v = bh.arrays.put("big", arr)
    counting.reset()
    part = bh.arrays.get("big", rows=slice(1000, 2000))
    assert_same(part, arr[1000:2000])
    header = bh.files.metadata(v.bh_key).size - v.nbytes  # type: ignore[union-attr]
    lo, hi = header + 1000 * 8 * 8, header + 2000 * 8 * 8
    assert counting.bytes_in == (-(-hi // 4096) - lo // 4096) * 4096  # those rows, widened to whole chunks
    assert counting.calls.get("get_into", 0) + counting.calls.get("get_range", 0) == 1  # one ranged GET
    for rows in [slice(None, 10), slice(-5, None), slice(10, 0, -3), slice(5, 5), slice(0, None, 25_000),
                 slice(99_990, 200_000)]:
        assert_same(bh.arrays.get("big", rows=rows), np.ascontiguousarray(arr[rows]))
    f = np.asfortranarray(arr[:100])
    bh.arrays.put("fort", f)
    assert_same(bh.arrays.get("fort", rows=slice(3, 7)), np.ascontiguousarray(f[3:7]))


def test_whole_get_detects_altered_blob(bh: BucketSQLite) -> None:
    v = bh.arrays.put("a", np.arange(1000))
    blob = bytearray(bh.files.get(v.bh_key))
    blob[-1] ^= 0xFF
    bh.bucket.put_bytes(bytes(blob), bh.files.object_key(v.bh_key))
    with pytest.raises(IntegrityError):
        bh.arrays.get("a")
    bh.bucket.put_bytes(bytes(blob[:100]), bh.files.object_key(v.bh_key))
    with pytest.raises(IntegrityError):
        bh.arrays.get("a")


def test_object_arrays_refused_with_advice(bh: BucketSQLite) -> None:
    for bad in [np.array([1, "a", None], dtype=object), np.zeros(2, dtype=[("a", "O")])]:
        with pytest.raises(ValueTypeError, match="pickle") as info:
            bh.arrays.put("obj", bad)
        assert "astype" in str(info.value)
    assert "obj" not in bh.arrays and len(bh.files) == 0


def test_bad_input(bh: BucketSQLite) -> None:
    bh.arrays.put("ok", np.arange(3))
    with pytest.raises(ValueTypeError, match="np.asarray"):
        bh.arrays.put("x", [1, 2, 3])
    with pytest.raises(ValueTypeError, match="masked"):
        bh.arrays.put("x", np.ma.masked_array([1, 2], mask=[0, 1]))
    for name in ["", "  ", "a@1", "../x", "a//b", "tab\tname", "x" * 201]:
        with pytest.raises(InvalidKey):
            bh.arrays.put(name, np.arange(3))
    with pytest.raises(KeyTypeError):
        bh.arrays.put(3, np.arange(3))  # type: ignore[arg-type]
    with pytest.raises(NotFound, match="did you mean 'ok'"):
        bh.arrays.get("okk")
    with pytest.raises(NotFound, match=r"versions \[1\]"):
        bh.arrays.get("ok", 7)
    with pytest.raises(InvalidKey, match="count from 1"):
        bh.arrays.get("ok", 0)
    with pytest.raises(ValueTypeError, match="slice"):
        bh.arrays.get("ok", rows=[1, 2])  # type: ignore[arg-type]
    bh.arrays.put("scalar", np.array(1))
    with pytest.raises(InvalidKey, match="0-dimensional"):
        bh.arrays.get("scalar", rows=slice(0, 1))
    with pytest.raises(ValueTypeError, match="metadata"):
        bh.arrays.put("x", np.arange(2), metadata={"n": 1})  # type: ignore[dict-item]
    assert bh.arrays.names() == ["ok", "scalar"]
    assert_same(bh.arrays["ok"], np.arange(3))  # the store keeps working


def test_survives_restart(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as bh:
        bh.arrays.put("keep", np.arange(5.0), metadata={"unit": "m"})
        bh.arrays.put("keep", np.arange(6.0))
    with BucketSQLite(config, NO_TIMER) as bh:
        assert [v.version for v in bh.arrays.history("keep")] == [2, 1]
        assert_same(bh.arrays.get("keep", 1), np.arange(5.0))
        assert bh.arrays.info("keep", 1).metadata == {"unit": "m"}


dtypes = st.one_of(hnp.scalar_dtypes(), hnp.byte_string_dtypes(), hnp.unicode_string_dtypes(),
                   hnp.array_dtypes(subtype_strategy=hnp.scalar_dtypes(), max_size=3))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arr=hnp.arrays(dtype=dtypes, shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)),
       order=st.sampled_from(["C", "F"]))
def test_hypothesis_roundtrip(hyp_bh: BucketSQLite, arr: np.ndarray, order: str) -> None:
    arr = np.asarray(arr, order=order)  # type: ignore[call-overload]
    v = hyp_bh.arrays.put("h", arr)
    assert_same(arr, hyp_bh.arrays.get("h", v.version))
    if arr.ndim and arr.shape[0]:
        assert_same(np.ascontiguousarray(arr[1:]), hyp_bh.arrays.get("h", v.version, rows=slice(1, None)))


def test_tampered_catalog_row_with_object_dtype_is_not_loaded(bh: BucketSQLite) -> None:
    v = bh.arrays.put("safe", np.arange(4, dtype=np.int64))
    # Someone with write access to a shared bucket edits the catalog to claim an object array.
    bh.connection.execute("UPDATE bh_arrays SET descr = ?, dtype = 'object' WHERE name = 'safe'", (repr("|O"),))
    bh.connection.commit()
    with pytest.raises(ValueTypeError, match="pickle"):
        bh.arrays.get("safe")
    with pytest.raises(ValueTypeError, match="pickle"):
        bh.arrays.get("safe", rows=slice(0, 2))
    assert bh.files.get(v.bh_key)  # the blob itself is untouched


@pytest.mark.parametrize("name, error", [
    ("", InvalidKey), ("   ", InvalidKey), ("x" * 201, InvalidKey), ("bad\x07name", InvalidKey),
    ("../escape", InvalidKey), ("a/../b", InvalidKey), ("with@version", InvalidKey), (None, KeyTypeError),
    (b"bytes", KeyTypeError),
])
def test_bad_names_everywhere(bh: BucketSQLite, name: object, error: type) -> None:
    import pandas as pd

    stores = [(bh.arrays.put, np.arange(2)), (bh.frames.put, pd.DataFrame({"a": [1]})),
              (bh.named_files.put, b"bytes")]
    for put, value in stores:
        with pytest.raises(error) as info:
            put(name, value)  # type: ignore[operator]
        assert len(str(info.value)) > 10  # says what is wrong
    for getter in (bh.arrays.get, bh.frames.get, bh.named_files.get, bh.arrays.history, bh.frames.delete):
        with pytest.raises(error):
            getter(name)  # type: ignore[operator]
    bh.arrays.put("fine", np.arange(2))  # the store keeps working
    assert bh.arrays.names() == ["fine"] and len(bh.files) == 1
