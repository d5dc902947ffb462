"""Parquet encoded on several threads (interfaces/parquet_write.py): the bytes one writer writes, for every type and
row-group layout; the footer codec; what it refuses to move; and frame puts that use it on every backend."""

from __future__ import annotations

import decimal
import hashlib
import io
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bh_notebook import BucketSQLite
from bh_notebook.errors import InexactFrame, ValueTypeError
from bh_notebook.interfaces import frames as frames_mod
from bh_notebook.interfaces import parquet_write as pw

from .test_frames_zoo import COLUMNS


def _masked(values: list[Any], nulls: list[bool]) -> list[Any]:
    return [None if z else v for v, z in zip(values, nulls)]


#: Arrow columns from n small ints and n null flags: nested, dictionary, binary and logical types.
ARROW: dict[str, Callable[[list[int], list[bool]], pa.Array]] = {
    "int64": lambda i, z: pa.array(_masked(i, z), pa.int64()),
    "float32": lambda i, z: pa.array(_masked([x / 3 for x in i], z), pa.float32()),
    "bool": lambda i, z: pa.array(_masked([x > 0 for x in i], z), pa.bool_()),
    "string": lambda i, z: pa.array(_masked([f"s{x}" * (abs(x) % 4) for x in i], z), pa.string()),
    "large_string": lambda i, z: pa.array(_masked([f"L{x}" for x in i], z), pa.large_string()),
    "binary": lambda i, z: pa.array(_masked([bytes([abs(x) % 256]) * 3 for x in i], z), pa.binary()),
    "fixed_binary": lambda i, z: pa.array(_masked([x.to_bytes(4, "little", signed=True) for x in i], z),
                                          pa.binary(4)),
    "dictionary": lambda i, z: pa.array(_masked([f"d{x % 5}" for x in i], z)).dictionary_encode(),
    "list": lambda i, z: pa.array(_masked([list(range(abs(x) % 4)) for x in i], z), pa.list_(pa.int32())),
    "large_list": lambda i, z: pa.array(_masked([[f"{x}"] * (abs(x) % 3) for x in i], z),
                                        pa.large_list(pa.string())),
    "struct": lambda i, z: pa.array(_masked([{"a": x, "b": f"b{x}"} for x in i], z),
                                    pa.struct([("a", pa.int16()), ("b", pa.string())])),
    "map": lambda i, z: pa.array(_masked([[("k", x), ("j", -x)] for x in i], z), pa.map_(pa.string(), pa.int64())),
    "decimal": lambda i, z: pa.array(_masked([decimal.Decimal(x) / 10 for x in i], z), pa.decimal128(12, 1)),
    "timestamp": lambda i, z: pa.array(_masked(i, z), pa.timestamp("ms", "UTC")),
    "date": lambda i, z: pa.array(_masked([abs(x) for x in i], z), pa.date32()),
    "list_of_struct": lambda i, z: pa.array(_masked([[{"v": x}] * (abs(x) % 3) for x in i], z),
                                            pa.list_(pa.struct([("v", pa.int64())]))),
}


def serial_bytes(table: pa.Table, **options: Any) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **options)
    return sink.getvalue()


def threaded_bytes(table: pa.Table, threads: int, **options: Any) -> bytes:
    sink = io.BytesIO()
    pw.write_table(table, sink, threads=threads, **options)
    return sink.getvalue()


@st.composite
def arrow_tables(draw: Any) -> pa.Table:
    n = draw(st.integers(1, 400))
    kinds = draw(st.lists(st.sampled_from(sorted(ARROW)), min_size=1, max_size=6, unique=True))
    columns = {}
    for k in kinds:
        ints = draw(st.lists(st.integers(-1000, 1000), min_size=n, max_size=n))
        nulls = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        columns[k] = ARROW[k](ints, nulls)
    return pa.table(columns, metadata={b"ours": b"kept"} if draw(st.booleans()) else None)


@st.composite
def pandas_tables(draw: Any) -> pa.Table:
    """A frame of the dtype zoo, prepared as a put prepares it (pandas metadata and ours in the schema)."""
    n = draw(st.integers(1, 300))
    kinds = draw(st.lists(st.sampled_from(sorted(k for k, (_, refused) in COLUMNS.items() if not refused)),
                          min_size=1, max_size=5, unique=True))
    df = pd.DataFrame({k: COLUMNS[k][0](draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n)),
                                        draw(st.lists(st.booleans(), min_size=n, max_size=n)))
                       for k in kinds})
    try:
        return frames_mod._prepare(df).table
    except (InexactFrame, ValueTypeError):
        return pa.table({"x": pa.array(range(n))})


def writer_options(draw: Any, table: pa.Table) -> dict[str, Any]:
    names = table.column_names
    return {
        "row_group_size": draw(st.integers(1, max(1, table.num_rows // 2))),
        "compression": draw(st.sampled_from(["zstd", "lz4", "snappy", "none"])),
        "use_dictionary": draw(st.one_of(st.booleans(), st.lists(st.sampled_from(names), unique=True))),
        "write_statistics": draw(st.one_of(st.booleans(), st.lists(st.sampled_from(names), unique=True))),
        "store_schema": draw(st.booleans()),
        "data_page_size": draw(st.sampled_from([None, 64, 1 << 20])),
    }


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data(), threads=st.integers(2, 5))
def test_threads_write_the_bytes_one_writer_writes(monkeypatch: pytest.MonkeyPatch, data: Any, threads: int) -> None:
    monkeypatch.setattr(pw, "PARALLEL_MIN_BYTES", 0)
    table = data.draw(st.one_of(arrow_tables(), pandas_tables()))
    options = writer_options(data.draw, table)
    rest = {k: v for k, v in options.items() if k != "row_group_size"}
    slices = pw.plan_slices(table, options["row_group_size"], threads, rest)
    n_groups = -(-table.num_rows // options["row_group_size"])
    assert len(slices) >= 2 if n_groups >= 2 else len(slices) == 1
    assert sum(n for _, n in slices) == table.num_rows
    one = serial_bytes(table, **options)
    many = threaded_bytes(table, threads, **options)
    assert many == one
    assert pq.read_table(io.BytesIO(many)).equals(pq.read_table(io.BytesIO(one)))


def test_slices_hold_whole_row_groups_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    table = pa.table({"x": np.arange(1000)})
    assert pw.plan_slices(table, 30, 2, {}) == [(0, 1000)]  # 8 KB: one writer
    monkeypatch.setattr(pw, "PARALLEL_MIN_BYTES", 0)
    assert pw.plan_slices(table, 30, 2, {}) == [(g * 30, 30 if g < 33 else 10) for g in range(34)]
    assert pw.plan_slices(table, 30, 1, {}) == [(0, 1000)]
    assert pw.plan_slices(table, 1000, 4, {}) == [(0, 1000)]  # one row group
    # pyarrow's own row-group size (None, -1) or one above its cap: what one writer does
    for size in (None, -1, 0, pw.MAX_ROW_GROUP + 1):
        assert pw.plan_slices(table, size, 4, {}) == [(0, 1000)]  # type: ignore[arg-type]


def test_a_few_slices_are_held_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A row group per slice, encoded at most threads + 1 ahead of the one being written: the encoded bytes held
    at any time are a few row groups', not the file's."""
    monkeypatch.setattr(pw, "PARALLEL_MIN_BYTES", 0)
    held = [0, 0, 0]  # slices alive, their bytes now, the most bytes at once

    class Counted(pw._Slice):
        def __init__(self, buffer: pa.Buffer) -> None:
            super().__init__(buffer)
            self.size = buffer.size
            held[0] += 1
            held[1] += self.size
            held[2] = max(held[2], held[1])

        def __del__(self) -> None:
            held[0] -= 1
            held[1] -= self.size

    monkeypatch.setattr(pw, "_Slice", Counted)
    table = pa.table({"x": np.arange(100_000), "s": [f"v{i}" for i in range(100_000)]})
    data = threaded_bytes(table, 2, row_group_size=1000)  # 100 row groups
    assert data == serial_bytes(table, row_group_size=1000)
    assert held[0] == 0
    assert 0 < held[2] <= 5 * len(data) // 100, (held[2], len(data))


def test_a_footer_it_cannot_move_is_left_to_one_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pyarrow that wrote footers this module cannot move would still get its files written, by one writer,
    before any byte reaches the sink; a sink without write() (a path) is one writer's too."""
    monkeypatch.setattr(pw, "PARALLEL_MIN_BYTES", 0)
    table = pa.table({"x": np.arange(1000)})

    def refuse(*args: Any) -> Any:
        raise pw.FooterError("a field this module does not know")

    with monkeypatch.context() as m:
        m.setattr(pw, "_moved_row_groups", refuse)
        assert threaded_bytes(table, 2, row_group_size=100) == serial_bytes(table, row_group_size=100)
    with monkeypatch.context() as m:
        m.setattr(pw, "encode_footer", lambda fields: b"not what was read")
        assert threaded_bytes(table, 2, row_group_size=100) == serial_bytes(table, row_group_size=100)


# -- the footer codec ---------------------------------------------------------------------------------------

_SCALARS = {
    pw._I16: st.integers(-(2 ** 15), 2 ** 15 - 1),
    pw._I32: st.integers(-(2 ** 31), 2 ** 31 - 1),
    pw._I64: st.integers(-(2 ** 63), 2 ** 63 - 1),
    pw._BINARY: st.binary(max_size=40),
    pw._DOUBLE: st.floats(allow_nan=False).map(lambda x: np.float64(x).tobytes()),
    pw._BYTE: st.integers(0, 255),
}


def _elements(kind: int, structs: Any) -> Any:
    if kind == pw._STRUCT:
        return structs
    if kind == pw._TRUE:  # a bool inside a collection: a byte, 1 or 2
        return st.sampled_from([1, 2])
    return _SCALARS[kind]


def _thrift_structs() -> Any:
    def extend(structs: Any) -> Any:
        kinds = st.sampled_from([*_SCALARS, pw._TRUE, pw._STRUCT])
        value = st.sampled_from([*_SCALARS, pw._STRUCT]).flatmap(lambda k: st.tuples(st.just(k), _elements(k, structs)))
        collection = kinds.flatmap(lambda k: st.tuples(
            st.just(pw._LIST), st.tuples(st.just(k), st.lists(_elements(k, structs), max_size=20)).map(list)))
        pairs = st.tuples(st.sampled_from([pw._I32, pw._BINARY]), st.sampled_from([pw._I64, pw._STRUCT])).flatmap(
            lambda kv: st.tuples(st.just(pw._MAP), st.tuples(
                st.just((kv[0] << 4) | kv[1]),
                st.lists(st.tuples(_elements(kv[0], structs), _elements(kv[1], structs)), min_size=1, max_size=4)
            ).map(list)))
        boolean = st.tuples(st.just(pw._TRUE), st.booleans())
        return st.lists(st.tuples(st.integers(-300, 300), st.one_of(value, collection, pairs, boolean)),
                        max_size=8, unique_by=lambda f: f[0]).map(
            lambda fs: [[fid, k, v] for fid, (k, v) in fs])

    return st.recursive(st.just([]), extend, max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(fields=_thrift_structs())
def test_the_footer_codec_reads_back_what_it_writes(fields: list[Any]) -> None:
    """Field ids in any order and far apart (the long form), lists of 15 and more, negative ints, bools alone and
    inside lists, maps, doubles: decoding what was encoded gives the same fields and the same bytes."""
    encoded = pw.encode_footer(fields)
    decoded = pw.decode_footer(encoded)
    assert pw.encode_footer(decoded) == encoded
    assert decoded == fields


@pytest.mark.parametrize("kind", sorted(ARROW))
def test_the_footer_codec_gives_pyarrows_footers_back_byte_for_byte(kind: str) -> None:
    table = pa.table({kind: ARROW[kind](list(range(-20, 20)), [i % 7 == 0 for i in range(40)])})
    data = serial_bytes(table, row_group_size=9, store_schema=True)
    footer_len = int.from_bytes(data[-8:-4], "little")
    footer = data[-8 - footer_len:-8]
    assert pw.encode_footer(pw.decode_footer(footer)) == footer


def test_a_footer_that_points_into_page_indexes_is_refused() -> None:
    """Page indexes hold absolute page offsets in the data: a slice with them cannot be moved, and says so."""
    table = pa.table({"x": np.arange(100)})
    data = serial_bytes(table, row_group_size=10, write_page_index=True)
    piece = pw._Slice(pa.py_buffer(data))
    with pytest.raises(ValueError, match="page index"):
        pw._moved_row_groups(piece.fields, 100, 0)
    with pytest.raises(ValueError, match="trailing|after its end"):
        pw.decode_footer(pw.encode_footer(piece.fields) + b"\x00")


@pytest.mark.parametrize("option", [{"write_page_index": True}, {"sorting_columns": [pq.SortingColumn(0)]},
                                    {"use_content_defined_chunking": True}])
def test_options_that_reach_outside_a_row_group_are_written_by_one_writer(
        monkeypatch: pytest.MonkeyPatch, option: dict[str, Any]) -> None:
    monkeypatch.setattr(pw, "PARALLEL_MIN_BYTES", 0)
    table = pa.table({"x": np.arange(1000), "s": [f"v{i % 13}" for i in range(1000)]})
    assert len(pw.plan_slices(table, 100, 4, {})) > 1
    assert pw.plan_slices(table, 100, 4, option) == [(0, 1000)]
    assert threaded_bytes(table, 4, row_group_size=100, **option) == serial_bytes(table, row_group_size=100, **option)


# -- frame puts ---------------------------------------------------------------------------------------------

def test_frame_puts_encode_row_groups_side_by_side(bh: BucketSQLite, monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame of several row groups is encoded on several threads into the blob one writer would write (the
    same SHA-256: a put by one writer finds it again), and reads back whole and in part."""
    monkeypatch.setattr(pw, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(frames_mod, "ROW_GROUP_SIZE", frames_mod.MIN_ROW_GROUP)
    n = 10 * frames_mod.MIN_ROW_GROUP + 77
    rng = np.random.default_rng(5)
    df = pd.DataFrame({"id": np.arange(n), "x": rng.normal(size=n),
                       "city": rng.choice(["Oslo", "Lima", "Pune"], n),
                       "note": [f"n{i}" for i in range(n)],
                       "when": pd.date_range("2024-01-01", periods=n, freq="s")})
    encoders: list[str] = []
    real = pq.write_table

    def spy(table: pa.Table, where: Any, **kwargs: Any) -> None:
        encoders.append(threading.current_thread().name)
        real(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", spy)
    many = bh.frames.put("many", df)
    assert len(encoders) > 1 and all(name.startswith("bh-parquet") for name in encoders), encoders
    assert many.row_groups == 11

    monkeypatch.setattr(pw, "threads_available", lambda: 1)
    encoders.clear()
    one = bh.frames.put("one", df)
    assert len(encoders) == 1 and not encoders[0].startswith("bh-parquet")
    assert one.bh_key == many.bh_key  # byte for byte the same blob
    blob = bh.files.get(many.bh_key)
    assert hashlib.sha256(blob).hexdigest() == many.bh_key
    assert pq.ParquetFile(io.BytesIO(blob)).metadata.num_row_groups == 11
    pd.testing.assert_frame_equal(bh.frames.get("many"), df)
    pd.testing.assert_frame_equal(bh.frames.get("many", columns=["note", "when"]), df[["note", "when"]])
    pd.testing.assert_frame_equal(bh.frames.get("many", rows=slice(40_000, 50_000)), df.iloc[40_000:50_000])
    picked = bh.frames.get("many", filters=[("city", "==", "Lima")])
    pd.testing.assert_frame_equal(picked, df[df["city"] == "Lima"])
