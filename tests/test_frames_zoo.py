"""A property test over the dtype zoo: every drawn frame comes back exactly, or is refused with the named error
(and only frames holding what cannot be exact are refused)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bh_notebook import BucketSQLite
from bh_notebook.errors import InexactFrame, ValueTypeError

from .test_frames_exact import assert_same

UNITS = ["s", "ms", "us", "ns"]
TZS = ["UTC", "Europe/Paris", "America/New_York"]


def _masked(values: list[Any], nulls: list[bool], null: Any = None) -> list[Any]:
    return [null if z else v for v, z in zip(values, nulls)]


def _dates(ints: list[int], unit: str) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.Timestamp("2020-01-01") + pd.to_timedelta(ints, unit="h")).as_unit(unit)


#: name -> (build a column from n small ints and n null flags, refused?)
COLUMNS: dict[str, tuple[Callable[[list[int], list[bool]], Any], bool]] = {}


def kind(name: str, refused: bool = False) -> Callable[[Callable[[list[int], list[bool]], Any]], Any]:
    def register(fn: Callable[[list[int], list[bool]], Any]) -> Any:
        COLUMNS[name] = (fn, refused)
        return fn
    return register


for _t in ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]:
    kind(_t)(lambda i, z, t=_t: np.array([abs(x) for x in i], dtype=t))
    kind(_t.capitalize().replace("Uint", "UInt"))(
        lambda i, z, t=_t: pd.array(_masked([abs(x) for x in i], z), dtype=t.capitalize().replace("Uint", "UInt")))
for _t in ["float16", "float32", "float64"]:
    kind(_t)(lambda i, z, t=_t: np.array(_masked([x / 2 for x in i], z, np.nan), dtype=t))
for _t in ["Float32", "Float64"]:
    kind(_t)(lambda i, z, t=_t: pd.array(_masked([x / 2 for x in i], z), dtype=t))
kind("bool")(lambda i, z: np.array([x > 0 for x in i]))
kind("boolean")(lambda i, z: pd.array(_masked([x > 0 for x in i], z), dtype="boolean"))
for _u in UNITS:
    kind(f"datetime64[{_u}]")(lambda i, z, u=_u: pd.Series(_dates(i, u)).mask(pd.Series(z, dtype=bool)))
    kind(f"timedelta64[{_u}]")(lambda i, z, u=_u: pd.Series(pd.to_timedelta(i, unit="s").as_unit(u))
                               .mask(pd.Series(z, dtype=bool)))
    for _tz in TZS:
        kind(f"datetime64[{_u}, {_tz}]")(lambda i, z, u=_u, tz=_tz: pd.Series(_dates(i, u).tz_localize(tz))
                                         .mask(pd.Series(z, dtype=bool)))
kind("string[python]")(lambda i, z: pd.array(_masked([f"s{x}" for x in i], z), dtype=pd.StringDtype("python")))
kind("string[pyarrow]")(lambda i, z: pd.array(_masked([f"s{x}" for x in i], z), dtype=pd.StringDtype("pyarrow")))
kind("str (NaN)")(lambda i, z: pd.array(_masked([f"s{x}" for x in i], z, np.nan),
                                        dtype=pd.StringDtype("pyarrow", na_value=np.nan)))
kind("category")(lambda i, z: pd.Categorical(_masked([f"c{x}" for x in i], z),
                                             categories=[f"c{x}" for x in range(-4, 5)]))
kind("ordered int category")(lambda i, z: pd.Categorical(_masked(i, z), categories=list(range(-3, 4)), ordered=True))
kind("period[D]")(lambda i, z: pd.array(_masked([pd.Period("2020-01-01", "D") + x for x in i], z, pd.NaT),
                                        dtype="period[D]"))
kind("interval")(lambda i, z: pd.arrays.IntervalArray.from_arrays(i, [x + 1 for x in i], closed="left"))
kind("Sparse[int64, 0]")(lambda i, z: pd.arrays.SparseArray(np.array(i, dtype="int64"), fill_value=0))
kind("Sparse[float64, nan]")(lambda i, z: pd.arrays.SparseArray(_masked([float(x) for x in i], z, np.nan)))
kind("int64[pyarrow]")(lambda i, z: pd.array(_masked(i, z), dtype="int64[pyarrow]"))
kind("string[pyarrow] ArrowDtype")(lambda i, z: pd.array(_masked([f"s{x}" for x in i], z),
                                                          dtype=pd.ArrowDtype(pa.string())))
kind("large_string[pyarrow]")(lambda i, z: pd.array(_masked([f"s{x}" for x in i], z),
                                                     dtype=pd.ArrowDtype(pa.large_string())))
kind("timestamp[s][pyarrow]")(lambda i, z: pd.array(_masked(i, z), dtype=pd.ArrowDtype(pa.timestamp("s"))))
kind("list<int64>[pyarrow]")(lambda i, z: pd.array(_masked([list(range(abs(x))) for x in i], z),
                                                    dtype=pd.ArrowDtype(pa.list_(pa.int64()))))
kind("struct[pyarrow]")(lambda i, z: pd.array(_masked([{"x": x, "y": f"s{x}"} for x in i], z),
                                              dtype=pd.ArrowDtype(pa.struct([("x", pa.int64()), ("y", pa.string())]))))
kind("dictionary[pyarrow]")(lambda i, z: pd.array(_masked([f"d{x}" for x in i], z),
                                                  dtype=pd.ArrowDtype(pa.dictionary(pa.int32(), pa.string()))))
kind("map[pyarrow]")(lambda i, z: pd.array(_masked([[("k", x)] for x in i], z),
                                           dtype=pd.ArrowDtype(pa.map_(pa.string(), pa.int64()))))
kind("object str")(lambda i, z: np.array(_masked([f"o{x}" for x in i], z), dtype=object))
kind("object bytes")(lambda i, z: np.array(_masked([b"b%d" % x for x in i], z), dtype=object))
kind("object dicts", refused=True)(lambda i, z: pd.Series([{"k": x} for x in i] + [{"k": 0}], dtype=object)
                                   .iloc[:len(i)].to_numpy())
kind("object lists", refused=True)(lambda i, z: pd.Series([[x] for x in i] + [[0]], dtype=object)
                                   .iloc[:len(i)].to_numpy())
kind("object mixed", refused=True)(lambda i, z: np.array([1, "one", 2.5, None] * len(i), dtype=object)[:len(i)])
kind("complex128", refused=True)(lambda i, z: np.array(i, dtype=np.complex128))


@st.composite
def indexes(draw: Any, n: int) -> pd.Index:
    which = draw(st.sampled_from(["range", "int", "str", "object", "datetime", "timedelta", "period",
                                  "categorical", "multi", "float"]))
    name = draw(st.sampled_from([None, "idx", "k"]))
    if which == "range":
        start, step = draw(st.integers(-10, 10)), draw(st.sampled_from([1, 2, 3, -1, -5]))
        return pd.RangeIndex(start, start + n * step, step, name=name)
    labels = draw(st.lists(st.integers(-50, 50), min_size=n, max_size=n, unique=True))
    if which == "int":
        return pd.Index(labels, dtype=draw(st.sampled_from(["int64", "int32", "uint64"])) if min(labels, default=0) >= 0
                        else "int64", name=name)
    if which == "float":
        return pd.Index([x / 4 for x in labels], name=name)
    if which == "str":
        return pd.Index([f"r{x}" for x in labels], name=name)
    if which == "object":
        return pd.Index([f"r{x}" for x in labels], dtype=object, name=name)
    if which == "datetime":
        freq = draw(st.sampled_from(["D", "h", "B", "MS", "15min", None]))
        tz = draw(st.sampled_from([None, *TZS]))
        unit = draw(st.sampled_from(UNITS))
        if freq is None:
            return pd.DatetimeIndex(_dates(labels, unit), name=name).tz_localize(tz)
        return pd.date_range("2021-03-01", periods=n, freq=freq, tz=tz, name=name, unit=unit)
    if which == "timedelta":
        return pd.timedelta_range(0, periods=n, freq=draw(st.sampled_from(["s", "h", None])) or "D", name=name)
    if which == "period":
        return pd.period_range("2020-01", periods=n, freq=draw(st.sampled_from(["M", "D", "Y"])), name=name)
    if which == "categorical":
        return pd.CategoricalIndex([f"r{x}" for x in labels], name=name)
    return pd.MultiIndex.from_arrays([[f"a{x % 3}" for x in labels], labels],
                                     names=draw(st.sampled_from([[None, None], ["a", "b"], ["a", None]])))


@st.composite
def zoo_frames(draw: Any) -> tuple[Any, bool]:
    n = draw(st.integers(0, 6))
    kinds = draw(st.lists(st.sampled_from(sorted(COLUMNS)), min_size=0, max_size=5))
    data = {}
    refused = False
    for k in kinds:
        ints = draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n))
        nulls = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        build, refuse = COLUMNS[k]
        data[k] = build(ints, nulls)
        refused |= refuse and n > 0
        refused |= k == "complex128"
    index = draw(indexes(n))
    df = pd.DataFrame(index=index)
    for i, values in enumerate(data.values()):
        df.insert(i, i, pd.Series(values).set_axis(index))
    labels = draw(st.sampled_from(["str", "int", "tuple"]))
    if labels == "str":
        df.columns = [f"c{i}_{k}" for i, k in enumerate(data)]
    elif labels == "tuple" and len(data):
        df.columns = pd.MultiIndex.from_tuples([(f"g{i % 2}", i) for i in range(len(data))], names=["grp", None])
    if draw(st.booleans()):
        df.attrs = {"source": "zoo", "n": n}
    if draw(st.booleans()) and df.columns.is_unique and df.index.is_unique:
        df = df.set_flags(allows_duplicate_labels=False)
    if len(data) == 1 and draw(st.booleans()):
        s = df.iloc[:, 0]
        s.name = draw(st.sampled_from([None, "s", 3]))
        return s, refused
    return df, refused


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(case=zoo_frames())
def test_zoo_exact_or_refused(hyp_bh: BucketSQLite, case: tuple[Any, bool]) -> None:
    value, refused = case
    event(f"{type(value).__name__}, {'refused' if refused else 'exact'}")
    try:
        v = hyp_bh.frames.put("zoo", value)
    except ValueTypeError as exc:
        assert refused, f"refused a frame that can be exact: {exc}"
        assert isinstance(exc, InexactFrame) or "cannot be stored as Parquet" in str(exc)
        return
    assert not refused, "stored a frame holding Python objects"
    assert_same(hyp_bh.frames.get("zoo", v.version), value)
    assert_same(hyp_bh.frames.head("zoo", 2, v.version), value.head(2))
    assert_same(hyp_bh.frames.get("zoo", v.version, rows=slice(1, 4)), value.iloc[1:4])
