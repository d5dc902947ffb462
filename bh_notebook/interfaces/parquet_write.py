"""Parquet written by several threads, as one file with the bytes a single writer would give.

pyarrow encodes a table's row groups one after another on one core (it does not expose Arrow's
``ArrowWriterProperties::set_use_threads``). Here the table is cut at row-group boundaries into slices; each slice is
encoded to memory on its own thread, with the same writer settings; the slices' data go to the sink in order, and a
footer is made from the slices' footers: their row groups one after another, each offset moved by where its slice's
data landed, ordinals renumbered, ``num_rows`` added up. Row groups of the same rows encoded with the same settings
are the same bytes whichever writer made them, so the result is byte for byte what ``pq.write_table`` writes (the
tests compare), and its SHA-256, the blob's key, is the same too: an earlier blob of the same frame is found again.

The footer is Thrift's compact protocol (``FileMetaData`` in parquet.thrift). It is decoded generically (field
ids, types and values, in order) and encoded back the way Thrift's own writer does; a slice's footer that does not
encode back to its own bytes, or one with parts that hold absolute offsets this module does not move (page
indexes, bloom filters, encryption), is our bug or a pyarrow change, and raises.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

#: Tables smaller than this are written by one thread (the pool's cost is not worth it).
PARALLEL_MIN_BYTES = 16 * 1024 * 1024
#: Footers with more column chunks (row groups x leaf columns) than this are not stitched: the Python codec takes
#: about 10 us per column chunk, and such tables (very wide ones) are written by one thread.
MAX_STITCHED_CHUNKS = 50_000
#: At most this many encoding threads.
MAX_THREADS = 8

#: ``pq.write_table`` options whose effect stays inside each row group: with others set (page indexes, bloom
#: filters and encryption put absolute offsets in the file; content-defined chunking), one writer writes the file.
SLICEABLE_OPTIONS = frozenset({
    "compression", "compression_level", "use_dictionary", "write_statistics", "store_schema", "version",
    "data_page_size", "data_page_version", "use_byte_stream_split", "column_encoding", "coerce_timestamps",
    "allow_truncated_timestamps", "use_deprecated_int96_timestamps", "use_compliant_nested_type", "write_batch_size",
    "dictionary_pagesize_limit", "store_decimal_as_integer", "write_page_checksum", "max_rows_per_page",
    "write_time_adjusted_to_utc",
})

_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(13)
_MAGIC = b"PAR1"

Field = list  # [field id, compact type, value]
#: pyarrow caps a row group at this many rows (its DEFAULT_MAX_ROW_GROUP_LENGTH); larger sizes go to one writer.
MAX_ROW_GROUP = 64 * 1024 * 1024


class FooterError(ValueError):
    """A footer this module cannot read back exactly or cannot move (our bug, or a pyarrow that writes more)."""


class _Decoder:
    """Thrift compact protocol, read into nested lists that encode back to the same bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.i = 0

    def varint(self) -> int:
        data, i, shift, n = self.data, self.i, 0, 0
        while True:
            b = data[i]
            i += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                self.i = i
                return n
            shift += 7

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def struct(self) -> list[Field]:
        fields: list[Field] = []
        last = 0
        while True:
            header = self.data[self.i]
            self.i += 1
            if header == _STOP:
                return fields
            kind, delta = header & 0x0F, header >> 4
            fid = last + delta if delta else self.zigzag()
            last = fid
            if kind in (_TRUE, _FALSE):  # a bool field: its value is in its type (kept as _TRUE, True or False)
                fields.append([fid, _TRUE, kind == _TRUE])
            else:
                fields.append([fid, kind, self.value(kind)])

    def value(self, kind: int) -> Any:
        if kind in (_I16, _I32, _I64):
            return self.zigzag()
        if kind == _STRUCT:
            return self.struct()
        if kind == _BINARY:
            n = self.varint()
            self.i += n
            return self.data[self.i - n:self.i]
        if kind in (_LIST, _SET):
            header = self.data[self.i]
            self.i += 1
            size, elem = header >> 4, header & 0x0F
            if size == 15:
                size = self.varint()
            return [elem, [self.value(elem) for _ in range(size)]]
        if kind in (_BYTE, _TRUE, _FALSE):  # (a bool inside a collection is a byte of its own)
            self.i += 1
            return self.data[self.i - 1]
        if kind == _DOUBLE:
            self.i += 8
            return self.data[self.i - 8:self.i]
        if kind == _MAP:
            size = self.varint()
            if size == 0:
                return [0, []]
            types = self.data[self.i]
            self.i += 1
            return [types, [(self.value(types >> 4), self.value(types & 0x0F)) for _ in range(size)]]
        raise FooterError(f"Thrift compact type {kind} is not known")


def _varint(out: bytearray, n: int) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _zigzag(out: bytearray, n: int) -> None:
    _varint(out, (n << 1) ^ (n >> 63))


def _encode_struct(out: bytearray, fields: list[Field]) -> None:
    last = 0
    for fid, kind, value in fields:
        wire = (_TRUE if value else _FALSE) if kind in (_TRUE, _FALSE) else kind
        if last < fid <= last + 15:
            out.append(((fid - last) << 4) | wire)
        else:
            out.append(wire)
            _zigzag(out, fid)
        last = fid
        if kind not in (_TRUE, _FALSE):
            _encode_value(out, kind, value)
    out.append(_STOP)


def _encode_value(out: bytearray, kind: int, value: Any) -> None:
    if kind in (_I16, _I32, _I64):
        _zigzag(out, value)
    elif kind == _STRUCT:
        _encode_struct(out, value)
    elif kind == _BINARY:
        _varint(out, len(value))
        out += value
    elif kind in (_LIST, _SET):
        elem, items = value
        if len(items) < 15:
            out.append((len(items) << 4) | elem)
        else:
            out.append(0xF0 | elem)
            _varint(out, len(items))
        for item in items:
            _encode_value(out, elem, item)
    elif kind in (_BYTE, _TRUE, _FALSE):
        out.append(value)
    elif kind == _DOUBLE:
        out += value
    elif kind == _MAP:
        types, pairs = value
        _varint(out, len(pairs))
        if pairs:
            out.append(types)
        for k, v in pairs:
            _encode_value(out, types >> 4, k)
            _encode_value(out, types & 0x0F, v)
    else:
        raise FooterError(f"Thrift compact type {kind} is not known")


def decode_footer(footer: bytes) -> list[Field]:
    """A Parquet ``FileMetaData`` (the footer's Thrift bytes) as nested ``[field id, type, value]`` lists."""
    decoder = _Decoder(footer)
    fields = decoder.struct()
    if decoder.i != len(footer):
        raise FooterError(f"the footer has {len(footer) - decoder.i} bytes after its end")
    return fields


def encode_footer(fields: list[Field]) -> bytes:
    out = bytearray()
    _encode_struct(out, fields)
    return bytes(out)


def _get(fields: list[Field], fid: int) -> Field | None:
    return next((f for f in fields if f[0] == fid), None)


# Fields that hold absolute file offsets: RowGroup.file_offset (5); ColumnChunk.file_offset (2); ColumnMetaData's
# data_page_offset (9), index_page_offset (10), dictionary_page_offset (11).
_ROW_GROUP_OFFSETS = {5}
_CHUNK_OFFSETS = {2}
_META_OFFSETS = {9, 10, 11}
# What points at bytes this module does not rewrite (offsets inside page indexes) or cannot read (encryption):
# ColumnChunk.offset_index_offset (4), column_index_offset (6), crypto_metadata (8), encrypted_column_metadata (9);
# ColumnMetaData.bloom_filter_offset (14); FileMetaData.encryption_algorithm (8), footer_signing_key_metadata (9).
_CHUNK_REFUSED = {4, 6, 8, 9}
_META_REFUSED = {14}
_FILE_REFUSED = {8, 9}


def _moved_row_groups(fields: list[Field], shift: int, first_ordinal: int) -> list[list[Field]]:
    """The footer's row groups (``FileMetaData.row_groups``, field 4) with their offsets moved by ``shift``."""
    refused = [f[0] for f in fields if f[0] in _FILE_REFUSED]
    if refused:
        raise FooterError(f"the slice's footer has FileMetaData fields {refused} (encryption), which are not moved")
    row_groups = _get(fields, 4)
    groups: list[list[Field]] = row_groups[2][1] if row_groups is not None else []
    for n, group in enumerate(groups):
        for f in group:
            if f[0] in _ROW_GROUP_OFFSETS:
                f[2] += shift
            elif f[0] == 7:  # ordinal
                f[2] = first_ordinal + n
        chunks = _get(group, 1)
        for chunk in chunks[2][1] if chunks is not None else []:
            for f in chunk:
                if f[0] in _CHUNK_REFUSED:
                    raise FooterError(f"a column chunk has field {f[0]} (page index or encryption), not moved")
                if f[0] in _CHUNK_OFFSETS and f[2]:  # (pyarrow writes 0 in this deprecated field: kept)
                    f[2] += shift
                elif f[0] == 3:  # ColumnMetaData
                    for m in f[2]:
                        if m[0] in _META_REFUSED:
                            raise FooterError(f"a column's metadata has field {m[0]} (bloom filter), not moved")
                        if m[0] in _META_OFFSETS:
                            m[2] += shift
    return groups


class _Slice:
    """One encoded slice: its data (between the leading magic and its footer) and its decoded footer."""

    def __init__(self, buffer: pa.Buffer) -> None:
        view = memoryview(buffer)
        n = len(view)
        (footer_len,) = struct.unpack("<I", view[n - 8:n - 4])
        if bytes(view[:4]) != _MAGIC or bytes(view[n - 4:]) != _MAGIC:
            raise FooterError("an encoded slice is not a Parquet file")
        footer = bytes(view[n - 8 - footer_len:n - 8])
        self.fields = decode_footer(footer)
        if encode_footer(self.fields) != footer:
            raise FooterError("a slice's footer does not encode back to its own bytes")
        self.data = view[4:n - 8 - footer_len]  # (of a buffer only this slice holds, never changed)


def leaves(t: pa.DataType) -> int:
    """How many Parquet leaf columns an Arrow field of type ``t`` is written as."""
    import pyarrow as pa

    if isinstance(t, pa.ExtensionType):
        return leaves(t.storage_type)
    if pa.types.is_dictionary(t):
        return leaves(t.value_type)
    if pa.types.is_map(t):
        return leaves(t.key_type) + leaves(t.item_type)
    if pa.types.is_struct(t):
        return sum(leaves(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) \
            or getattr(pa.types, "is_list_view", lambda _: False)(t):
        return leaves(t.value_type)
    return 1


def threads_available() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not on Linux)
        return os.cpu_count() or 1


def plan_slices(table: pa.Table, row_group_size: int, threads: int,
                options: dict[str, Any]) -> list[tuple[int, int]]:
    """Row ranges ``(offset, length)`` to encode side by side, a row group each; one range means one writer."""
    n_rows = table.num_rows
    if any(value for key, value in options.items() if key not in SLICEABLE_OPTIONS):
        return [(0, n_rows)]
    if not isinstance(row_group_size, int) or not 0 < row_group_size <= MAX_ROW_GROUP:
        return [(0, n_rows)]  # (None, -1: pyarrow's own choice, which one writer makes)
    n_groups = -(-n_rows // row_group_size) if n_rows else 0
    if threads < 2 or n_groups < 2 or table.nbytes < PARALLEL_MIN_BYTES:
        return [(0, n_rows)]
    if n_groups * sum(leaves(f.type) for f in table.schema) > MAX_STITCHED_CHUNKS:
        return [(0, n_rows)]
    return [(g * row_group_size, min(row_group_size, n_rows - g * row_group_size)) for g in range(n_groups)]


def write_table(table: pa.Table, sink: Any, *, row_group_size: int, threads: int | None = None,
                **options: Any) -> None:
    """``pq.write_table(table, sink, row_group_size=..., **options)``, encoded on ``threads`` threads (default:
    the cores this process may use, up to 8); ``sink`` (a file object) gets ``write(buffer)`` calls, in order.

    One row group per slice, and at most ``threads + 1`` slices encoded ahead of the one being written: the
    memory held beyond one writer's is a few row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    threads = min(MAX_THREADS, threads if threads is not None else threads_available())
    slices = plan_slices(table, row_group_size, threads, options) if hasattr(sink, "write") else [(0, 0)]
    if len(slices) == 1:
        pq.write_table(table, sink, row_group_size=row_group_size, **options)
        return

    def encode(offset: int, length: int) -> _Slice:
        out = pa.BufferOutputStream()
        pq.write_table(table.slice(offset, length), out, row_group_size=row_group_size, **options)
        return _Slice(out.getvalue())

    todo = iter(slices)
    with ThreadPoolExecutor(threads, thread_name_prefix="bh-parquet") as pool:
        pending: list[Future[_Slice]] = [pool.submit(encode, *s) for s in itertools.islice(todo, threads + 1)]

        def next_slice() -> _Slice:
            piece = pending.pop(0).result()
            more = next(todo, None)
            if more is not None:
                pending.append(pool.submit(encode, *more))
            return piece

        try:
            try:
                first = next_slice()
                first_groups = _moved_row_groups(first.fields, 0, 0)
            except FooterError:  # (before anything is written: one writer writes the file, below)
                first = None
            if first is not None:
                _stitch(first, first_groups, next_slice, len(slices), sink)
        finally:
            for f in pending:  # (after a failure: the slices not started are not encoded)
                f.cancel()
    if first is None:
        pq.write_table(table, sink, row_group_size=row_group_size, **options)


def _stitch(first: _Slice, groups: list[list[Field]], next_slice: Callable[[], _Slice], n_slices: int,
            sink: Any) -> None:
    """Write the slices' data in order as they are done (each one let go once written), then the footer. A sink
    with ``write_owned`` (``files.BlobWriter``) is handed each slice's data, which nothing changes afterwards, to
    keep without a copy."""
    write_data = getattr(sink, "write_owned", sink.write)
    head = first.fields
    head_rest = encode_footer([f for f in head if f[0] not in (3, 4)])
    rows = _get(head, 3)
    n_rows = rows[2] if rows is not None else 0
    sink.write(_MAGIC)
    write_data(first.data)
    position = len(_MAGIC) + len(first.data)
    del first
    for _ in range(n_slices - 1):
        piece = next_slice()
        if encode_footer([f for f in piece.fields if f[0] not in (3, 4)]) != head_rest:
            raise FooterError("the slices' footers differ beyond their rows (schema, key-value metadata, ...)")
        groups += _moved_row_groups(piece.fields, position - len(_MAGIC), len(groups))
        rows = _get(piece.fields, 3)
        n_rows += rows[2] if rows is not None else 0
        write_data(piece.data)
        position += len(piece.data)
        del piece
    fields: list[Field] = []
    for f in head:
        if f[0] == 3:
            f = [3, f[1], n_rows]
        elif f[0] == 4:
            f = [4, f[1], [f[2][0], groups]]
        fields.append(f)
    footer = encode_footer(fields)
    sink.write(footer)
    sink.write(struct.pack("<I", len(footer)) + _MAGIC)
