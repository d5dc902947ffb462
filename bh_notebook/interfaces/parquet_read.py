"""Whole Parquet blobs decoded with the blob's memory given back as the table grows.

A whole get used to hold the downloaded blob and the decoded table at once, plus what Arrow's allocator keeps of the
decoders' scratch: 1.85x the frame's size at the peak for the benchmark frame. Here the blob, downloaded and checked
into a ``ReleasableMap``, is decoded in tasks of a row group's consecutive column chunks (a field is never split), on
a thread per core, and the results are taken in file order. Once a task is decoded, the whole pages inside its bytes
are given back to the system, so the blob shrinks while the table grows. Fixed-width columns are copied into one
NumPy buffer each: malloc's memory, which pandas' conversion frees and which goes back to the system at once, where
Arrow's mimalloc keeps freed memory about a second. For the same reason the decoders allocate from jemalloc, set to
give freed memory back within 100 ms (``_scratch_pool``).

A page given back reads as zeros. A task's bytes are read by no later task when every column chunk lies after the
previous one (``decode_tasks`` checks, and plans nothing otherwise), but whether pyarrow read anything else is asked
of the system after decoding (``ReleasableMap.touched``, ``mincore``); if it did, the result is thrown away.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from . import parquet_write
from .mapped import ReleasableMap

if TYPE_CHECKING:
    import pyarrow as pa

#: Decode tasks hold about this many bytes of Parquet each (a task's pages are given back when it is done).
DECODE_TASK_BYTES = 4 * 1024 * 1024
#: Blobs whose column chunks average fewer bytes than this are decoded in one ``read_table``, every page kept: the
#: Python work per column chunk (planning, gathering, about 75 us) would cost more than the memory saved is worth
#: (a frame of 1,000 rows x 20,000 columns took 1.5 s longer to read).
MIN_CHUNK_BYTES = 1024 * 1024
#: The decoders' jemalloc gives freed memory back to the system after this many milliseconds (see _scratch_pool).
SCRATCH_DECAY_MS = 100
#: ``read_groups`` makes about this many tasks per thread, splitting the fields of a row group among them.
TASKS_PER_THREAD = 4
#: Decode tasks queued beyond one per worker (one chunk much slower than the next must not idle the other cores).
DECODE_AHEAD = 4


@dataclass
class _DecodeTask:
    """A row group's consecutive fields, decoded together: their leaf columns and the bytes of their chunks."""
    group: int
    fields: list[int]
    leaves: list[int]
    start: int
    end: int


def leaf_fields(schema: pa.Schema) -> list[int]:
    """The position of the field each Parquet leaf column belongs to, in leaf order."""
    return [i for i, f in enumerate(schema) for _ in range(parquet_write.leaves(f.type))]


def chunk_span(col: Any) -> tuple[int, int]:
    """Bytes ``[start, end)`` of a column chunk (its ``ColumnChunkMetaData``): its dictionary page, if any, and its
    data pages."""
    start = col.dictionary_page_offset if col.has_dictionary_page and col.dictionary_page_offset else \
        col.data_page_offset
    return int(start), int(start) + int(col.total_compressed_size)


def decode_tasks(md: Any, schema: pa.Schema, footer: int) -> list[_DecodeTask] | None:
    """The tasks of a whole read, in file order; None unless every chunk lies after the previous one and before the
    footer (what any writer does; then a task's bytes are read by no later task)."""
    owner = leaf_fields(schema)
    if len(owner) != md.num_columns:  # pragma: no cover - an unknown nesting
        return None
    tasks: list[_DecodeTask] = []
    at = 0
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        task = None
        for j in range(md.num_columns):
            start, end = chunk_span(rg.column(j))
            if start < at or end > footer:
                return None
            at = end
            i = owner[j]
            if task is not None and (task.fields[-1] == i or task.end - task.start < DECODE_TASK_BYTES):
                if task.fields[-1] != i:
                    task.fields.append(i)
                task.leaves.append(j)
                task.end = end
            else:
                task = _DecodeTask(g, [i], [j], start, end)
                tasks.append(task)
    return tasks


def read_groups(open_file: Callable[[], Any], groups: list[int], fields: list[str] | None) -> pa.Table:
    """Row groups ``groups`` of a Parquet file (the ``fields`` of them; all when None), as ``read_row_groups`` gives
    them, decoded side by side on threads of ours: ``ParquetFile``s from ``open_file()``, one per thread at most,
    reading with ``use_threads=False``. Fewer row groups than ``TASKS_PER_THREAD`` per core: each one's fields are split (by
    position), so a slow field (strings) does not leave the other cores idle.

    Not on Arrow's threads, because of what they do after the read has returned. The task that finishes last there
    drops the last reference to the reader, and so to the Python object that holds the bytes (``pa.py_buffer`` of a
    map or an array, a ``PythonFile``); releasing it takes the GIL from a thread Python has not seen, a new thread
    state each time. CPython 3.11 does that unsafely while ``tracemalloc.stop()`` runs (a crash in the native
    thread, python/cpython#128679) or while the interpreter shuts down. On our threads it happens before we return.
    """
    import pyarrow as pa

    first = open_file()
    leaves = _leaves_by_field(first, fields)
    workers = parquet_write.threads_available()
    per = max(1, min(len(leaves or ()), -(-TASKS_PER_THREAD * workers // max(1, len(groups)))))
    if not leaves or not groups or (len(groups) == 1 and per == 1):
        return first.read_row_groups(groups, columns=fields, use_threads=False)
    cut = [0, *(len(leaves) * k // per for k in range(1, per)), len(leaves)]
    tasks = [(g, [j for field in leaves[cut[k]:cut[k + 1]] for j in field]) for g in groups for k in range(per)]
    spare, lock = [first], threading.Lock()  # readers not in use: at most one per thread is opened

    def decode(task: tuple[int, list[int]]) -> pa.Table:
        with lock:
            file = spare.pop() if spare else None
        if file is None:
            file = open_file()
        try:
            return file.reader.read_row_group(task[0], column_indices=task[1], use_threads=False)
        finally:
            with lock:
                spare.append(file)

    with ThreadPoolExecutor(min(workers, len(tasks)), thread_name_prefix="bh-decode") as pool:
        pieces = list(pool.map(decode, tasks))
    del spare, first
    tables = [_side_by_side(pieces[i:i + per]) for i in range(0, len(pieces), per)] if per > 1 else pieces
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _leaves_by_field(file: Any, fields: list[str] | None) -> list[list[int]] | None:
    """The leaf columns ``read_row_groups(columns=fields)`` reads, by the field each belongs to, in the order it gives
    the fields; None where they cannot be told (a split by names would read a name that stands for several fields,
    duplicates or a ``st.x`` beside a struct ``st``, once per piece)."""
    n = file.metadata.num_columns
    owner = leaf_fields(file.schema_arrow)
    if len(owner) != n:  # pragma: no cover - an unknown nesting
        return None
    try:  # (pyarrow's own choice of leaves for names: a name selects every leaf whose dotted path it starts)
        chosen = list(range(n)) if fields is None else file._get_column_indices(fields)
    except AttributeError:  # pragma: no cover - a pyarrow without it: one read
        return None
    by_field: dict[int, list[int]] = {}
    for j in dict.fromkeys(chosen):
        by_field.setdefault(owner[j], []).append(j)
    return list(by_field.values())


def _side_by_side(pieces: list[pa.Table]) -> pa.Table:
    """The columns of tables of the same rows, in order, as one table (the first's schema metadata)."""
    import pyarrow as pa

    schema = pa.schema([f for t in pieces for f in t.schema], metadata=pieces[0].schema.metadata)
    return pa.Table.from_arrays([c for t in pieces for c in t.columns], schema=schema)


def decode_releasing(blob: ReleasableMap, md: Any, dictionary: list[str]) -> pa.Table | None:
    """The table in the whole blob in ``blob`` (``md``: its footer; ``dictionary``: the string columns to read through
    a dictionary). None when a page given back was read again: it read zeros, so what it decoded, or the error it
    raised, is not the blob's; the caller then reads the blob again."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tasks = None
    if blob.size >= md.num_row_groups * md.num_columns * MIN_CHUNK_BYTES:
        schema = pq.ParquetFile(blob.reader(), metadata=md, read_dictionary=dictionary or None).schema_arrow
        tasks = decode_tasks(md, schema, blob.size - md.serialized_size - 8)
    if not tasks:  # small chunks, no row group or no column, or chunks out of order: one read, every page kept
        return read_groups(lambda: pq.ParquetFile(blob.reader(), metadata=md, read_dictionary=dictionary or None),
                           list(range(md.num_row_groups)), None)
    local = threading.local()
    scratch = _scratch_pool()

    def decode(task: _DecodeTask) -> Any:  # a reader per thread, its schema made once
        if not hasattr(local, "reader"):
            local.reader = _reader(blob, md, dictionary, scratch)
        return local.reader.read_row_group(task.group, column_indices=task.leaves, use_threads=False)

    starts = list(accumulate((md.row_group(g).num_rows for g in range(md.num_row_groups)), initial=0))
    columns = _Columns(schema, md.num_rows, starts)
    workers = min(parquet_write.threads_available(), len(tasks))
    keep = False
    with ThreadPoolExecutor(workers, thread_name_prefix="bh-decode") as pool:
        pending: deque[Any] = deque()
        sent = 0
        try:
            for k, task in enumerate(tasks):
                while sent < len(tasks) and sent - k < workers + DECODE_AHEAD:
                    pending.append(pool.submit(decode, tasks[sent]))
                    sent += 1
                part = pending.popleft().result()
                keep = keep or blob.holds_any(part)  # decoded without a copy: every page stays
                if not keep:
                    keep = not blob.release(task.start, task.end)
                columns.add(task, part)
                del part
        except (OSError, pa.ArrowException):  # zeros where a page header should be, if a page given back was read
            if not blob.touched():
                raise
        finally:
            for f in pending:
                f.cancel()
    del local
    if blob.touched():
        return None
    return columns.table()


def _scratch_pool() -> Any:
    """The pool the decoders allocate from: jemalloc set to give freed memory back within ``SCRATCH_DECAY_MS``,
    where the wheel has it.

    What a decoder allocates is freed within moments (the fixed-width columns are copied out), but Arrow's default
    mimalloc keeps freed memory about a second, inside the get's peak. Fresh-process peaks, mimalloc / this pool:
    a 134 MiB frame of random floats 1.92x / 1.72x the frame, the 752 MiB benchmark frame 1.22x / 1.15x, at the
    same CPU time (a decay of 0 gave 1.58x and 1.13x, but 0.5 s more CPU time for the benchmark frame: every free
    became a system call and every allocation fresh pages). The decay is jemalloc's alone; it is left as it is
    when jemalloc is the process's default pool (someone chose it), and then that pool is used."""
    import pyarrow as pa

    default = pa.default_memory_pool()
    if default.backend_name == "jemalloc":
        return default
    try:
        pool = pa.jemalloc_memory_pool()
        pa.jemalloc_set_decay_ms(SCRATCH_DECAY_MS)
    except NotImplementedError:  # a pyarrow built without jemalloc
        return default
    return pool


def _reader(blob: ReleasableMap, md: Any, dictionary: list[str], pool: Any) -> Any:
    """A native Parquet reader over the blob that allocates from ``pool``, opened as ``pq.ParquetFile`` opens one
    (``ParquetFile`` takes no pool; its reader is the one it makes here)."""
    import inspect

    import pyarrow.parquet as pq
    from pyarrow._parquet import ParquetReader

    options: dict[str, Any] = {}
    opened_as = inspect.signature(pq.ParquetFile).parameters
    if "arrow_extensions_enabled" in opened_as:  # (not in older pyarrow; ParquetReader's own default differs)
        options["arrow_extensions_enabled"] = opened_as["arrow_extensions_enabled"].default
    reader = ParquetReader(memory_pool=pool)
    reader.open(blob.reader(), metadata=md, read_dictionary=dictionary or None, **options)
    return reader


def _fixed_width(t: pa.DataType) -> bool:
    import pyarrow as pa

    return (pa.types.is_integer(t) or (pa.types.is_floating(t) and t.bit_width >= 32) or pa.types.is_timestamp(t)
            or pa.types.is_duration(t) or pa.types.is_date(t) or pa.types.is_time(t))


class _Columns:
    """A whole read's columns, gathered from its decode tasks: fixed-width ones in one NumPy buffer each (with a
    validity bitmap made at the end if some value is null), others as their chunks."""

    def __init__(self, schema: pa.Schema, n_rows: int, group_starts: list[int]) -> None:
        self.schema, self.n, self.group_starts = schema, n_rows, group_starts
        self.types: dict[int, Any] = {}
        self.values: dict[int, Any] = {}
        self.valid: dict[int, Any] = {}
        self.chunks: dict[int, list[Any]] = {}

    def add(self, task: _DecodeTask, table: pa.Table) -> None:
        import numpy as np

        for i, col in zip(task.fields, table.columns):
            if i not in self.types:
                self.types[i] = col.type
                if _fixed_width(col.type):
                    self.values[i] = np.empty(self.n, dtype=f"u{col.type.bit_width // 8}")
                else:
                    self.chunks[i] = []
            if i in self.chunks:
                self.chunks[i].extend(col.chunks)
                continue
            values, at = self.values[i], self.group_starts[task.group]
            for chunk in col.chunks:
                m = len(chunk)
                if m:
                    values[at:at + m] = np.frombuffer(chunk.buffers()[1], dtype=values.dtype,
                                                      count=chunk.offset + m)[chunk.offset:]
                if chunk.null_count:
                    valid = self.valid.get(i)
                    if valid is None:
                        valid = self.valid[i] = np.ones(self.n, dtype=bool)
                    valid[at:at + m] = chunk.is_valid().to_numpy(zero_copy_only=False)
                at += m

    def table(self) -> pa.Table:
        import numpy as np

        import pyarrow as pa

        arrays, fields = [], []
        for i, f in enumerate(self.schema):
            t = self.types[i]
            if i in self.values:
                values, valid = self.values.pop(i), self.valid.pop(i, None)  # the table holds the only reference
                bitmap = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
                nulls = 0 if valid is None else self.n - int(np.count_nonzero(valid))
                arrays.append(pa.Array.from_buffers(t, self.n, [bitmap, pa.py_buffer(values)], null_count=nulls))
                del values, valid
            else:
                arrays.append(pa.chunked_array(self.chunks.pop(i), t))
            fields.append(f.with_type(t))
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=self.schema.metadata))
