"""A re-put of data this process just put or got is known unchanged from a fingerprint of its buffers, without
encoding or uploading it again; anything that would store different bytes (an edit in place, a new dtype, attrs,
labels, another writer's newer version) still makes a new version."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig
from bh_notebook.interfaces import frames as frames_mod
from bh_notebook.interfaces.fingerprint import addresses_digest, fingerprint
from bh_notebook.testing.counting import CountingBucket

NO_TIMER = SnapshotConfig(interval_seconds=0)


def _frame(n: int = 1_000) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    return pd.DataFrame({
        "x": rng.normal(size=n), "i": np.arange(n), "n": pd.array(np.where(np.arange(n) % 7, 1, None), "Int64"),
        "s": pd.array([f"v{k % 13}" for k in range(n)], dtype="string[pyarrow]"),
        "c": pd.Categorical(np.array(["a", "b"])[np.arange(n) % 2]),
        "t": pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC"),
    }, index=pd.RangeIndex(10, 10 + n, name="row"))


def _no_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("the frame was encoded again")

    monkeypatch.setattr(frames_mod, "_prepare", refuse)


def test_a_re_put_of_what_was_put_or_got_is_answered_without_encoding_or_uploading(
        counted: tuple[BucketSQLite, CountingBucket], monkeypatch: pytest.MonkeyPatch) -> None:
    bh, counting = counted
    df, arr = _frame(), np.arange(100_000, dtype="f4").reshape(1_000, 100)
    v1, a1 = bh.frames.put("f", df), bh.arrays.put("a", arr)
    with monkeypatch.context() as m:
        _no_encoding(m)
        counting.reset()
        assert bh.frames.put("f", df) == v1 and bh.arrays.put("a", arr) == a1
        assert counting.writes == 0 and counting.bytes_out == 0
        bh.frames.get("f")  # a get of the version does not make this process forget the frame it put
        assert bh.frames.put("f", df) == v1
    bh.force_flush()
    with BucketSQLite(bh.config, NO_TIMER) as other:  # another process: gets, and puts back what it got
        got, back = other.frames.get("f"), other.arrays.get("a")
        with monkeypatch.context() as m:
            _no_encoding(m)
            assert other.frames.put("f", got).version_id == v1.version_id
            assert other.arrays.put("a", back).version_id == a1.version_id
        back[3, 3] += 1  # an edit in place: new bytes, a new version
        assert other.arrays.put("a", back).version == 2
        np.testing.assert_array_equal(other.arrays.get("a"), back)
        got.loc[12, "x"] = 0.5
        assert other.frames.put("f", got).version == 2
        pd.testing.assert_frame_equal(other.frames.get("f"), got)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_another_writers_newer_version_is_not_taken_for_ours(config: BucketConfig) -> None:
    df = _frame(50)
    with BucketSQLite(config, NO_TIMER) as a, BucketSQLite(config, NO_TIMER) as b:
        a.frames.put("f", df)
        a.force_flush()
        b.pull()
        b.frames.put("f", df.iloc[:10])
        b.force_flush()
        a.pull()
        v = a.frames.put("f", df)  # the same as our version 1, but version 2 is the latest: a new version
        assert v.version == 3
        pd.testing.assert_frame_equal(a.frames.get("f"), df)


def _edits() -> list[tuple[str, Callable[[pd.DataFrame], pd.DataFrame]]]:
    """Changes that keep the frame's length and columns, each of which must be stored as a new version."""
    def in_place(df: pd.DataFrame) -> pd.DataFrame:
        col = df.columns.get_loc("i")
        df.iat[3, col] = df.iat[3, col] + 1  # the same object, one value changed
        return df

    def attrs(df: pd.DataFrame) -> pd.DataFrame:
        df.attrs["source"] = "edited"
        return df

    def categories(df: pd.DataFrame) -> pd.DataFrame:
        df["c"] = df["c"].cat.reorder_categories(["b", "a"])
        return df

    def tz(df: pd.DataFrame) -> pd.DataFrame:
        df["t"] = df["t"].dt.tz_convert("Europe/Paris")
        return df

    return [
        ("in place", in_place), ("attrs", attrs), ("categories", categories), ("tz", tz),
        ("rename", lambda df: df.rename(columns={"x": "y"})),
        ("index", lambda df: df.set_axis(pd.RangeIndex(0, len(df), name="row"))),
        ("index name", lambda df: df.rename_axis("r")),
        ("dtype", lambda df: df.astype({"i": "int32"})),
        ("nullable hole", lambda df: df.assign(n=df["n"].where(df.index != 15))),
        ("string", lambda df: df.assign(s=df["s"].str.replace("v1", "w1"))),
        ("order", lambda df: df[list(reversed(df.columns))]),
        ("same values, new object", lambda df: df.copy()),
        ("nothing", lambda df: df),
    ]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.sampled_from(range(len(_edits()))), min_size=1, max_size=5))
def test_every_put_after_any_edits_reads_back_as_put(hyp_bh: BucketSQLite, steps: list[int]) -> None:
    """Whatever the edits between puts (in place or not), what a get returns is what was last put: the shortcut
    never answers 'unchanged' for a frame that would store other bytes."""
    name = f"f{np.random.default_rng().integers(1 << 30)}"
    df = _frame(40)
    hyp_bh.frames.put(name, df)
    for k in steps:
        df = _edits()[k][1](df)
        hyp_bh.frames.put(name, df)
        pd.testing.assert_frame_equal(hyp_bh.frames.get(name), df, check_freq=True)
        assert hyp_bh.frames.get(name).attrs == df.attrs


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_arrays_in_place_views_and_reshapes_are_new_versions(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as bh:
        arr = np.arange(24, dtype="i8").reshape(4, 6)
        assert bh.arrays.put("a", arr).version == 1
        for changed in (arr.reshape(6, 4), arr.view("f8"), np.asfortranarray(arr), arr.astype("i4")):
            v = bh.arrays.put("a", changed)
            np.testing.assert_array_equal(bh.arrays.get("a"), changed)
            assert bh.arrays.info("a", v.version).shape == changed.shape
        arr = bh.arrays.get("a")
        before = bh.arrays.info("a").version
        arr[0, 0] = 99
        assert bh.arrays.put("a", arr).version == before + 1


def test_fingerprints_are_made_only_where_exact() -> None:
    df = _frame(20)
    assert fingerprint(df) == fingerprint(df.copy()) and fingerprint(df) is not None
    wide = pd.DataFrame(np.arange(60.0).reshape(6, 10))
    split = pd.concat([wide.iloc[:, :4], wide.iloc[:, 4:]], axis=1)  # the same frame in two blocks
    assert len(split._mgr.blocks) == 2 and fingerprint(split) == fingerprint(wide)
    assert fingerprint(wide[list(reversed(wide.columns))]) != fingerprint(wide)
    assert fingerprint(df, "zstd", 3) != fingerprint(df, "zstd", 1)  # the store's settings shape the bytes
    assert fingerprint(df.assign(o=pd.Series(["a"] * 20, index=df.index, dtype=object))) is None  # objects: unknown
    assert fingerprint(df.set_index(["i", "x"])) is None
    assert fingerprint(pd.Series([1, 2], name="a")) != fingerprint(pd.Series([1, 2], name="b"))
    table = pa.table({"a": [1, 2, 3]})
    assert fingerprint(table) == fingerprint(pa.table({"a": [1, 2, 3]}))
    assert fingerprint(table) != fingerprint(table.replace_schema_metadata({"k": "v"}))
    assert fingerprint(np.arange(6).reshape(2, 3)) != fingerprint(np.arange(6).reshape(3, 2))
    assert fingerprint(np.arange(6)[::2]) == fingerprint(np.arange(0, 6, 2))
    assert fingerprint([1, 2]) is None
    # Arrow types whose buffers() do not say everything: a dictionary's values, a nested child's offset.
    assert fingerprint(pa.table({"d": pa.array(["a", "b", "a"]).dictionary_encode()})) is None
    big = pa.array(list(range(10)))
    struct = pa.StructArray.from_arrays([big.slice(0, 5)], names=["v"])
    assert fingerprint(pa.table({"s": struct})) is None
    assert fingerprint(pd.DataFrame({"l": pd.Series([[1], [2]], dtype=pd.ArrowDtype(pa.list_(pa.int64())))})) is None
    columns = pd.MultiIndex.from_arrays([np.array([1, 2], dtype="i8"), ["a", "b"]])
    assert fingerprint(pd.DataFrame([[1.0, 2.0]], columns=columns)) is None
    assert fingerprint(pa.table({"a": pa.array([], pa.int8())}).drop_columns(["a"])) != fingerprint(
        pa.table({"a": [1, 2]}).drop_columns(["a"]))  # (no columns: the number of rows still counts)
    weekdays = pd.offsets.CustomBusinessDay(weekmask="Mon Tue Wed Thu Fri")
    four_days = pd.offsets.CustomBusinessDay(weekmask="Mon Tue Wed Thu")
    assert str(weekdays) == str(four_days)
    assert fingerprint(pd.Series([1.0], index=pd.DatetimeIndex(["2024-01-01"], freq=weekdays))) != fingerprint(
        pd.Series([1.0], index=pd.DatetimeIndex(["2024-01-01"], freq=four_days)))


@pytest.mark.parametrize("backend", ["local", "moto"], indirect=True)
def test_a_blob_deleted_behind_our_back_is_uploaded_again(config: BucketConfig) -> None:
    """The shortcut relies on the version's blob as a re-put would; when it is gone, the put uploads it again."""
    arr = np.arange(1_000, dtype="i8")
    with BucketSQLite(config, NO_TIMER) as bh:
        v = bh.arrays.put("a", arr)
        bh.bucket.delete(bh.files.object_key(v.bh_key))
        bh.files._present.clear()  # (this process checked it a moment ago: forget that, as a later session would)
        assert bh.arrays.put("a", arr) == v
        np.testing.assert_array_equal(bh.arrays.get("a"), arr)
        bh.files.delete(v.bh_key, force=True)  # its catalog row too
        assert bh.arrays.put("a", arr) == v
        np.testing.assert_array_equal(bh.arrays.get("a"), arr)


def test_arrow_slices_are_hashed_by_the_bytes_they_use() -> None:
    """A column read from Parquet is many slices of larger arrays: each slice costs its own bytes, not its
    parent's whole buffers (which made a re-put of a frame got back hash its strings a thousand times over)."""
    from bh_notebook.interfaces import fingerprint as fp

    big = pa.array([f"value-{k}" for k in range(100_000)])
    sliced = pa.chunked_array([big.slice(k, 100) for k in range(0, 100_000, 100)])
    fed: list[int] = []
    raw = fp._Digest.raw

    def counting_raw(self: Any, data: Any) -> None:
        fed.append(memoryview(data).nbytes)
        raw(self, data)

    fp._Digest.raw = counting_raw  # type: ignore[method-assign]
    try:
        assert fingerprint(pa.table({"s": sliced})) is not None
    finally:
        fp._Digest.raw = raw  # type: ignore[method-assign]
    assert sum(fed) < 2 * big.nbytes, (sum(fed), big.nbytes)


_SLICE_TYPES = {
    "string": (pa.string(), st.text(max_size=5)),
    "large_binary": (pa.large_binary(), st.binary(max_size=5)),
    "int64": (pa.int64(), st.integers(-2**63, 2**63 - 1)),
    "bool": (pa.bool_(), st.booleans()),
    "fixed": (pa.binary(2), st.binary(min_size=2, max_size=2)),
    "float32": (pa.float32(), st.floats(width=32, allow_nan=False)),
}


@given(kind=st.sampled_from(sorted(_SLICE_TYPES)), data=st.data())
@settings(max_examples=150, deadline=None)
def test_any_change_inside_a_slice_changes_its_fingerprint(kind: str, data: st.DataObject) -> None:
    t, elements = _SLICE_TYPES[kind]
    values = data.draw(st.lists(st.one_of(st.none(), elements), min_size=1, max_size=40))
    start = data.draw(st.integers(0, len(values) - 1))
    n = data.draw(st.integers(1, len(values) - start))
    at = data.draw(st.integers(start, start + n - 1))
    new = data.draw(st.one_of(st.none(), elements))
    changed = [*values[:at], new, *values[at + 1:]]
    a, b = pa.array(values, t).slice(start, n), pa.array(changed, t).slice(start, n)
    if a.to_pylist() != b.to_pylist():  # (only a difference is promised: equal values may still hash apart)
        assert fingerprint(pa.table({"c": a})) != fingerprint(pa.table({"c": b}))


def _with_strings(n: int = 30) -> pd.DataFrame:
    """A frame whose strings are Python objects, as pandas 2 keeps them (and pandas 3 with dtype=object)."""
    index = pd.Index([f"row{k}" for k in range(n)], dtype=object)
    df = pd.DataFrame({  # (dtype=object: pandas 3 would make them its str dtype)
        "o": pd.Series([f"text-{k % 7}-{'x' * (k % 5)}" for k in range(n)], index=index, dtype=object),
        "x": np.arange(n, dtype="f8"),
        "p": pd.Series([None if k % 4 == 0 else f"p{k}" for k in range(n)], index=index, dtype=object)})
    assert list(df.dtypes) == [object, np.dtype("f8"), object] and df["p"].iat[0] is None
    return df


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_re_put_of_a_frame_of_python_strings_is_answered_by_address(
        counted: tuple[BucketSQLite, CountingBucket], monkeypatch: pytest.MonkeyPatch) -> None:
    bh, counting = counted
    df = _with_strings()
    v1 = bh.frames.put("f", df)
    series = df["o"]
    bh.frames.put("s", series)
    with monkeypatch.context() as m:
        _no_encoding(m)
        counting.reset()
        assert bh.frames.put("f", df) == v1 and counting.writes == 0
        assert bh.frames.put("s", series).version == 1
    df.iat[2, 0] = "".join(["text-2-", "xx"])  # the same text in a new object: a put stores the same bytes
    assert bh.frames.put("f", df).bh_key == v1.bh_key
    df.iat[2, 0] = "changed"
    assert bh.frames.put("f", df).version == 2
    pd.testing.assert_frame_equal(bh.frames.get("f"), df)
    # The objects are kept alive only while the frame's own arrays are: then the fingerprint is let go.
    store = bh.frames
    assert store._kept
    del df, series
    import gc

    gc.collect()
    assert not store._kept and all(not entry[2] for entry in store._fingerprints.values())


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_an_address_freed_and_taken_by_new_text_is_not_taken_for_the_old(config: BucketConfig) -> None:
    """A string replaced, then its replacement replaced: the newest string is often given the first one's freed
    address (always, with pandas 3), so the frame holds the same addresses as when it was put, with other text.
    The fingerprint keeps the objects it saw alive, so their addresses cannot be taken: every put after such
    edits stores the new text."""
    with BucketSQLite(config, NO_TIMER) as bh:
        for k in range(100):
            df = pd.DataFrame({"o": pd.Series(["".join(["s", str(k), "a" * 40])], dtype=object)})
            bh.frames.put("f", df)
            put_at = id(df.iat[0, 0])
            b = "".join(["b", str(k), "x" * 40])
            df.iat[0, 0] = b
            del b  # (the text put is freed now, unless something keeps it)
            c = "".join(["c", str(k), "y" * 40])
            df.iat[0, 0] = c
            del c
            assert id(df.iat[0, 0]) != put_at, f"the address of the text put was taken ({k})"
            bh.frames.put("f", df)
            assert bh.frames.get("f").iat[0, 0] == df.iat[0, 0], k


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_text_replaced_while_it_is_put_is_not_taken_for_what_was_put(config: BucketConfig) -> None:
    """The frame edited during its own put (here by the put's progress callback, during the upload): the objects
    the fingerprint saw are held from before the encoding, so the text put stays alive and no new text can take
    its address and read as it."""
    with BucketSQLite(config, NO_TIMER) as bh:
        for k in range(100):
            df = pd.DataFrame({"o": pd.Series(["".join(["A", str(k), "a" * 60])], dtype=object)})
            put_at = id(df.iat[0, 0])
            edited: list[int] = []

            def during(_: int, df: pd.DataFrame = df, k: int = k, edited: list[int] = edited) -> None:
                if not edited:
                    edited.append(1)
                    df.iat[0, 0] = "".join(["B", str(k), "b" * 60])  # (the text being put is let go by the frame)

            bh.frames.put(f"f{k}", df, progress=during)
            assert edited
            df.iat[0, 0] = "".join(["C", str(k), "c" * 60])
            assert id(df.iat[0, 0]) != put_at, f"the address of the text put was taken ({k})"
            bh.frames.put(f"f{k}", df)
            assert bh.frames.get(f"f{k}").iat[0, 0] == df.iat[0, 0], k


def _object_edits() -> list[tuple[str, Callable[[pd.DataFrame], pd.DataFrame]]]:
    def set_text(df: pd.DataFrame) -> pd.DataFrame:
        df.iat[1, 0] = "".join(["new-", str(np.random.default_rng().integers(1 << 20))])
        return df

    def same_text(df: pd.DataFrame) -> pd.DataFrame:
        df.iat[1, 0] = "".join([str(df.iat[1, 0])])  # (possibly the same object; else an equal one)
        return df

    def twice(df: pd.DataFrame) -> pd.DataFrame:
        df.iat[0, 2] = "".join(["tmp-", "y" * 10])
        df.iat[0, 2] = "".join(["two-", "z" * 10])
        return df

    def to_none(df: pd.DataFrame) -> pd.DataFrame:
        df.iat[5, 0] = None
        return df

    def index_text(df: pd.DataFrame) -> pd.DataFrame:
        return df.set_axis(pd.Index([f"r{k}" for k in range(len(df))], dtype=object))

    return [("set text", set_text), ("same text", same_text), ("twice", twice), ("to None", to_none),
            ("index", index_text), ("copy", lambda df: df.copy()), ("swap columns", lambda df: df[["p", "x", "o"]]),
            ("nothing", lambda df: df)]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.sampled_from(range(len(_object_edits()))), min_size=1, max_size=6))
def test_every_put_of_python_strings_after_any_edits_reads_back_as_put(hyp_bh: BucketSQLite,
                                                                       steps: list[int]) -> None:
    name = f"o{np.random.default_rng().integers(1 << 30)}"
    df = _with_strings()
    hyp_bh.frames.put(name, df)
    for k in steps:
        df = _object_edits()[k][1](df)
        hyp_bh.frames.put(name, df)
        pd.testing.assert_frame_equal(hyp_bh.frames.get(name), df)


def test_addresses_are_hashed_only_from_a_contiguous_array() -> None:
    """The addresses are read as the array's bytes from its start: a strided view would be read past its end."""
    values = np.array([f"v{i}" for i in range(64)], dtype=object)
    assert addresses_digest(values) == addresses_digest(values.copy())  # the same objects: the same digest
    assert addresses_digest(values) != addresses_digest(values[::-1].copy())
    with pytest.raises(ValueError, match="contiguous"):
        addresses_digest(values[::2])
