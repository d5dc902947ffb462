"""FrameStore: named, versioned pandas DataFrames, each a plain Parquet blob in FileStore.

The Parquet is written by pyarrow with pandas metadata, so the frame comes back exactly (index, column order,
categoricals, time zones, nullable and Arrow-backed dtypes), and any Parquet reader (Polars, DuckDB, Spark) can
read the blob straight from the bucket. ``columns=``, ``filters=`` and ``head()`` read the footer and then only the
column chunks and row groups they need, with ranged GETs; a whole ``get`` downloads once and checks the SHA-256.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import NotFound, ValueTypeError
from ..storage.bucket import ProgressCallback, SeekableReader
from .base import check_name
from .versioned import VersionedStore, check_metadata

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

#: Rows per Parquet row group at most: the unit ``head()`` and ``filters=`` fetch. Measured on a 10M-row frame,
#: 128Ki- and 1Mi-row groups write equally fast once dictionaries are limited to repetitive columns, but reading
#: two columns of 128Ki-row groups takes 155 ranged reads against 21: on R2 every request costs latency and money.
ROW_GROUP_SIZE = 1024 * 1024
#: ... and at most about this many (uncompressed) bytes, so wide frames get smaller groups.
ROW_GROUP_BYTES = 64 * 1024 * 1024
MIN_ROW_GROUP = 8 * 1024
#: zstd level 1 on buckets: ~20% smaller than lz4 or snappy, which is what a network and a storage bill see.
#: Level 3 gains ~4% for 40% more encode time.
S3_COMPRESSION = ("zstd", 1)
#: lz4 on a local directory: the fastest to write and to read, where size matters less than time.
LOCAL_COMPRESSION = ("lz4", None)
#: String columns whose sampled distinct ratio is below this get dictionary encoding; others are written plain.
DICTIONARY_RATIO = 0.5
_SAMPLE = 10_000
#: Bytes read from the end of a blob to get its Parquet footer in one request (pyarrow reads 64 KiB too).
FOOTER_GUESS = 64 * 1024
#: Prefetched ranges closer than this are fetched as one; a merged block stays under PREFETCH_BLOCK.
PREFETCH_GAP = 64 * 1024
PREFETCH_BLOCK = 64 * 1024 * 1024


@dataclass(frozen=True)
class FrameVersion:
    """One stored version of a frame, as the catalog describes it (no download needed)."""

    name: str
    version: int
    bh_key: str
    n_rows: int
    columns: list[str]
    dtypes: dict[str, str]
    nbytes: int
    created_at: float
    metadata: dict[str, str] = field(default_factory=dict)
    index: list[str] = field(default_factory=list)
    row_groups: int = 1

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns), as ``DataFrame.shape``."""
        return (self.n_rows, len(self.columns))

    def __repr__(self) -> str:
        return (f"<FrameVersion {self.name}@{self.version}: {self.n_rows:,} rows x {len(self.columns)} columns, "
                f"{self.nbytes:,} bytes, {self.bh_key[:12]}>")


class ObjectURL(str):
    """Where a blob lives: ``s3://bucket/key`` (or ``file:///path``), with the endpoint to reach it."""

    endpoint_url: str | None

    def __new__(cls, url: str, endpoint_url: str | None = None) -> ObjectURL:
        obj = super().__new__(cls, url)
        obj.endpoint_url = endpoint_url
        return obj

    def __repr__(self) -> str:
        extra = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"ObjectURL({str(self)!r}{extra})"


def _import_arrow() -> tuple[Any, Any, Any]:
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    return pa, pq, ds


class FrameStore(VersionedStore[FrameVersion]):
    """Named, versioned pandas DataFrames in table ``bh_frames``; reached as ``bh.frames``."""

    table = "bh_frames"
    kind = "frame"
    #: Parquet codec and level; BucketSQLite picks lz4 for the local store and zstd 1 for buckets.
    compression: str = S3_COMPRESSION[0]
    compression_level: int | None = S3_COMPRESSION[1]
    extra_columns = (
        ("n_rows", "INTEGER NOT NULL"),
        ("columns", "TEXT NOT NULL"),
        ("dtypes", "TEXT NOT NULL"),
        ("index_names", "TEXT NOT NULL"),
        ("row_groups", "INTEGER NOT NULL"),
    )

    def _to_version(self, row: dict[str, Any]) -> FrameVersion:
        return FrameVersion(
            name=row["name"], version=int(row["version"]), bh_key=row["bh_key"], n_rows=int(row["n_rows"]),
            columns=json.loads(row["columns"]), dtypes=json.loads(row["dtypes"]), nbytes=int(row["nbytes"]),
            created_at=float(row["created_at"]), metadata=json.loads(row["metadata"]) if row["metadata"] else {},
            index=json.loads(row["index_names"]), row_groups=int(row["row_groups"]),
        )

    # -- writes -----------------------------------------------------------------------------

    def put(self, name: str, df: pd.DataFrame, *, metadata: dict[str, str] | None = None,
            progress: ProgressCallback | None = None) -> FrameVersion:
        """Store ``df`` as the next version of ``name``; return that version.

        Putting the same frame as the latest version again returns that version and uploads nothing.
        """
        import pandas as pd

        check_name(name, "frame name")
        meta = check_metadata(metadata)
        if isinstance(df, pd.Series):
            raise ValueTypeError("bh.frames stores DataFrames; turn the Series into one with s.to_frame()")
        if not isinstance(df, pd.DataFrame):
            raise ValueTypeError(f"bh.frames stores pandas DataFrames, not {type(df).__name__}"
                                 + ("; use bh.arrays for NumPy arrays" if type(df).__name__ == "ndarray" else ""))
        _check_columns(df)
        table = _to_arrow(df)
        pa, _, _ = _import_arrow()
        with self._files.writer(filename=f"{name.rsplit('/', 1)[-1]}.parquet", mime="application/vnd.apache.parquet",
                                progress=progress, entry=("frame", name)) as blob:
            row_group_size = _write_parquet(table, pa.PythonFile(blob, mode="w"), self.compression,
                                            self.compression_level)
        bh_key = blob.bh_key
        assert bh_key is not None
        index_names = [str(n) if n is not None else f"level_{i}" for i, n in enumerate(df.index.names)] \
            if not isinstance(df.index, pd.RangeIndex) else []
        return self._add_version(name, bh_key, blob.tell(), meta, {
            "n_rows": len(df), "columns": json.dumps(list(df.columns)),
            "dtypes": json.dumps({str(c): str(t) for c, t in df.dtypes.items()}),
            "index_names": json.dumps(index_names), "row_groups": max(1, -(-len(df) // row_group_size)),
        })

    # -- reads ------------------------------------------------------------------------------

    def get(self, name: str, version: int | None = None, *, columns: list[str] | None = None,
            filters: Any = None, progress: ProgressCallback | None = None) -> pd.DataFrame:
        """The frame (latest version by default).

        ``columns=`` reads only those columns (the index comes along); ``filters=`` takes pyarrow's filter syntax
        (``[("year", ">=", 2020), ("region", "in", ["EU", "US"])]``, or a ``pyarrow.compute`` expression) and skips
        row groups whose statistics rule them out. Both read only the footer and the needed column chunks.
        """
        pa, pq, ds = _import_arrow()
        row = self._row(name, version)
        info = self._to_version(row)
        if columns is None and filters is None:
            import numpy as np

            buf = np.empty(info.nbytes, dtype=np.uint8)  # not bytearray: that zero-fills 0.5 ms/MiB for nothing
            self._files.get_verified(info.bh_key, buf.data, progress=progress)
            pf = pq.ParquetFile(pa.BufferReader(buf))
            table = pq.read_table(pa.BufferReader(buf), use_threads=True,
                                  read_dictionary=_object_string_columns(pf.schema_arrow) or None)
            return _to_pandas(table)
        cols = self._check_columns(info, columns)
        expr = _filter_expression(filters, pq, ds)
        with self._open(info, progress) as f:
            footer_schema = pq.ParquetFile(pa.PythonFile(f, mode="r")).schema_arrow
            fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(
                dictionary_columns=_object_string_columns(footer_schema)))
            fragment = fmt.make_fragment(pa.PythonFile(f, mode="r"))
            schema = fragment.physical_schema
            wanted = None if cols is None else _with_index_columns(schema, cols)
            try:
                groups = None if expr is None else [rg.id for part in fragment.split_by_row_group(expr, schema=schema)
                                                    for rg in part.row_groups]
                needed = None if wanted is None else set(wanted) | _filter_columns(filters)
                f.prefetch(_chunk_ranges(fragment.metadata, needed, groups))
                table = fragment.to_table(schema=schema, columns=wanted, filter=expr)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                raise ValueTypeError(f"cannot apply filters={filters!r} to frame {name!r}: {exc}") from None
        return _to_pandas(table)

    def head(self, name: str, n: int = 5, version: int | None = None) -> pd.DataFrame:
        """The first ``n`` rows, reading only the row groups that hold them."""
        pa, pq, _ = _import_arrow()
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueTypeError("n must be a non-negative int")
        info = self.info(name, version)
        with self._open(info, None) as f:
            pf = pq.ParquetFile(pa.PythonFile(f, mode="r"))
            groups: list[int] = []
            rows = 0
            for i in range(pf.metadata.num_row_groups):
                if rows >= max(n, 1):
                    break
                groups.append(i)
                rows += pf.metadata.row_group(i).num_rows
            f.prefetch(_chunk_ranges(pf.metadata, None, groups))
            table = pf.read_row_groups(groups, use_pandas_metadata=True) if groups else pf.schema_arrow.empty_table()
        return _to_pandas(table.slice(0, n))

    def schema(self, name: str, version: int | None = None) -> pa.Schema:
        """The Arrow schema of a stored frame, read from the Parquet footer only."""
        pa, pq, _ = _import_arrow()
        info = self.info(name, version)
        with self._open(info, None) as f:
            return pq.ParquetFile(pa.PythonFile(f, mode="r")).schema_arrow

    def url(self, name: str, version: int | None = None) -> ObjectURL:
        """Where the Parquet blob is, for other readers: ``s3://bucket/key`` with ``.endpoint_url``, or a file URL."""
        info = self.info(name, version)
        bucket = self._files.bucket
        key = self._files.object_key(info.bh_key)
        root = getattr(bucket, "root", None)
        if root is not None:
            return ObjectURL((root / key).as_uri())
        return ObjectURL(f"s3://{bucket.name}/{key}", getattr(bucket, "endpoint_url", None))  # type: ignore[union-attr]

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.get(name)

    # -- helpers ----------------------------------------------------------------------------

    def _open(self, info: FrameVersion, progress: ProgressCallback | None) -> RangeFile:
        """A ranged-read file over the blob, with its footer already fetched (one request)."""
        f = RangeFile(self._files, info.bh_key, info.nbytes, progress)
        f.prefetch([(max(0, info.nbytes - FOOTER_GUESS), info.nbytes)])
        return f

    def _check_columns(self, info: FrameVersion, columns: list[str] | None) -> list[str] | None:
        if columns is None:
            return None
        if isinstance(columns, str):
            columns = [columns]
        if not isinstance(columns, (list, tuple)) or not all(isinstance(c, str) for c in columns):
            raise ValueTypeError("columns= takes a list of column names, like columns=['price', 'qty']")
        missing = [c for c in columns if c not in info.columns and c not in info.index]
        if missing:
            from difflib import get_close_matches

            hints = {m: get_close_matches(m, info.columns, n=1) for m in missing}
            said = ", ".join(f"{m!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for m, h in hints.items())
            raise NotFound(f"frame {info.name!r}@{info.version} has no column {said}; it has {info.columns}")
        return list(columns)


class RangeFile(SeekableReader):
    """A read-only, seekable file over a blob that fetches only the byte ranges read, with ranged GETs.

    ``prefetch(ranges)`` fetches many ranges at once, in parallel, merging ranges that nearly touch; reads that
    fall inside them are then served from memory. Parquet readers ask for one column chunk at a time, which
    against a bucket on the internet would be one round trip each.
    """

    def __init__(self, files: Any, bh_key: str, size: int, progress: ProgressCallback | None = None) -> None:
        super().__init__(size)
        self._files = files
        self._key = bh_key
        self._size = size
        self._progress = progress
        self._lock = threading.Lock()
        self._blocks: list[tuple[int, bytes]] = []
        self.bytes_fetched = 0
        self.requests = 0

    def size(self) -> int:
        return self._size

    def _fetch(self, start: int, end: int) -> bytes:
        data = self._files.get_range(self._key, start, end)
        with self._lock:
            self.bytes_fetched += len(data)
            self.requests += 1
        if self._progress is not None:
            self._progress(len(data))
        return bytes(data)

    def prefetch(self, ranges: list[tuple[int, int]]) -> None:
        """Fetch these ``[start, end)`` ranges now, in parallel; later reads inside them cost no request."""
        merged: list[list[int]] = []
        for start, end in sorted((max(0, a), min(self._size, b)) for a, b in ranges):
            if end <= start or self._cached(start, end) is not None:
                continue
            if merged and start - merged[-1][1] <= PREFETCH_GAP and end - merged[-1][0] <= PREFETCH_BLOCK:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        if not merged:
            return
        if len(merged) == 1:
            blocks = [(merged[0][0], self._fetch(*merged[0]))]
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(8, len(merged)), thread_name_prefix="bh-prefetch") as pool:
                blocks = list(zip([m[0] for m in merged], pool.map(lambda m: self._fetch(m[0], m[1]), merged)))
        with self._lock:
            self._blocks.extend(blocks)

    def _cached(self, start: int, end: int) -> bytes | None:
        for block_start, data in self._blocks:
            if block_start <= start and end <= block_start + len(data):
                return data[start - block_start:end - block_start]
        return None

    def read(self, n: int = -1) -> bytes:
        end = self._size if n is None or n < 0 else min(self._size, self._pos + n)
        if end <= self._pos:
            return b""
        data = self._cached(self._pos, end)
        if data is None:
            data = self._fetch(self._pos, end)
        self._pos += len(data)
        return data

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        memoryview(b)[: len(data)] = data
        return len(data)


def _chunk_ranges(metadata: Any, columns: set[str] | None, row_groups: list[int] | None) -> list[tuple[int, int]]:
    """Byte ranges of the column chunks of ``columns`` (all when None) in ``row_groups`` (all when None)."""
    ranges = []
    for g in range(metadata.num_row_groups) if row_groups is None else row_groups:
        rg = metadata.row_group(g)
        for j in range(rg.num_columns):
            col = rg.column(j)
            if columns is not None and col.path_in_schema.split(".")[0] not in columns:
                continue
            start = col.dictionary_page_offset if col.has_dictionary_page and col.dictionary_page_offset else \
                col.data_page_offset
            ranges.append((int(start), int(start) + int(col.total_compressed_size)))
    return ranges


def _filter_columns(filters: Any) -> set[str]:
    """Column names a filter in pyarrow's list syntax mentions (an Expression: none known, nothing prefetched)."""
    names: set[str] = set()
    if isinstance(filters, (list, tuple)):
        for item in filters:
            if isinstance(item, tuple) and item and isinstance(item[0], str):
                names.add(item[0])
            elif isinstance(item, (list, tuple)):
                names |= _filter_columns(item)
    return names


def _check_columns(df: pd.DataFrame) -> None:
    import pandas as pd

    if isinstance(df.columns, pd.MultiIndex):
        raise ValueTypeError("MultiIndex columns cannot be stored as Parquet; flatten them first, e.g. "
                             "df.columns = ['_'.join(map(str, c)) for c in df.columns]")
    bad = [c for c in df.columns if not isinstance(c, str)]
    if bad:
        raise ValueTypeError(f"column names must be str for Parquet; these are not: {bad[:5]!r}. "
                             "Rename them, e.g. df.columns = df.columns.map(str)")
    dupes = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
    if dupes:
        raise ValueTypeError(f"duplicate column names {dupes!r}: Parquet needs unique names; rename them first")
    index_names = [n for n in df.index.names if n is not None]
    clash = [n for n in index_names if n in set(df.columns)]
    if clash:
        raise ValueTypeError(f"index level(s) {clash!r} share a name with a column; rename one of them")


def _to_arrow(df: pd.DataFrame) -> pa.Table:
    import pandas as pd

    pa, _, _ = _import_arrow()
    try:
        table = pa.Table.from_pandas(df, preserve_index=None)
    except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        message = str(exc)
        column = next((c for c in df.columns if f"column {c} " in message or f"column {c!s}" in message), None)
        where = f"column {column!r}" if column is not None else "a column"
        raise ValueTypeError(
            f"{where} cannot be stored as Parquet ({message.splitlines()[0]}). Columns of mixed Python objects "
            f"need one type: convert with df[{column or 'col'!r}].astype(str) (or a numeric type) first"
        ) from None
    ours: dict[str, Any] = {}
    categoricals = _categorical_metadata(df)
    if categoricals:
        ours["categoricals"] = categoricals
    # ArrowDtype columns read back as pandas' own extension dtypes unless told otherwise.
    arrow_columns = [str(c) for c, t in df.dtypes.items() if isinstance(t, pd.ArrowDtype)]
    if arrow_columns:
        ours["arrow_columns"] = arrow_columns
    # StringDtype comes in storages (python, pyarrow) and NA flavours (NA, nan) that Parquet does not tell apart.
    strings = {str(c): {"storage": t.storage, "na": "nan" if t.na_value is not pd.NA else "NA"}
               for c, t in df.dtypes.items() if isinstance(t, pd.StringDtype)}
    if strings:
        ours["string_dtypes"] = strings
    if ours:
        meta = dict(table.schema.metadata or {})
        meta[_META_KEY] = json.dumps(ours).encode()
        table = table.replace_schema_metadata(meta)
    return table


_META_KEY = b"bh_notebook"


def _categorical_metadata(df: pd.DataFrame) -> dict[str, Any]:
    """Categories of categorical columns, which Parquet loses when they are empty or not strings."""
    import pandas as pd

    out: dict[str, Any] = {}
    for name, dtype in df.dtypes.items():
        if not isinstance(dtype, pd.CategoricalDtype):
            continue
        cats = dtype.categories
        if len(cats) > 100_000 or cats.dtype.kind not in "iufbOT" and str(cats.dtype) not in ("str", "string"):
            continue
        values = cats.tolist()
        try:
            json.dumps(values)
        except (TypeError, ValueError):
            continue
        out[str(name)] = {"categories": values, "ordered": bool(dtype.ordered), "dtype": str(cats.dtype)}
    return out


def _restore_dtypes(table: pa.Table, df: pd.DataFrame) -> pd.DataFrame:
    """Put back what Parquet's pandas metadata cannot: categories, and Arrow-backed column dtypes."""
    import numpy as np
    import pandas as pd

    ours = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
    pandas_meta = table.schema.pandas_metadata or {}
    original = {c.get("name"): c for c in pandas_meta.get("columns", [])}
    for name in ours.get("repetitive_strings", []):
        col = original.get(name)
        if name in df.columns and col is not None and isinstance(df[name].dtype, pd.CategoricalDtype) \
                and col.get("numpy_type") == "object":
            # Categorical -> object by a take on the categories: one str object per distinct value; nulls None.
            codes = df[name].cat.codes.to_numpy()
            values = np.asarray(df[name].cat.categories, dtype=object)
            out = np.empty(len(codes), dtype=object)
            present = codes >= 0
            out[present] = values[codes[present]]
            df[name] = pd.Series(out, index=df.index, name=name, dtype=object)
    for name, col in original.items():
        # pandas 3 reads object columns of strings back as its str dtype: keep what was stored (None stays None).
        if name in df.columns and name in table.column_names and col.get("numpy_type") == "object" \
                and df[name].dtype != object and not isinstance(df[name].dtype, pd.CategoricalDtype):
            values = table.column(name).to_numpy(zero_copy_only=False)
            df[name] = pd.Series(values, index=df.index, name=name, dtype=object)
    for name, spec in ours.get("string_dtypes", {}).items():
        if name in df.columns:
            wanted = pd.StringDtype(spec["storage"], na_value=np.nan if spec["na"] == "nan" else pd.NA)
            if df[name].dtype != wanted:
                df[name] = df[name].astype(wanted)
    for name in ours.get("arrow_columns", []):
        if name in df.columns and name in table.column_names and not isinstance(df[name].dtype, pd.ArrowDtype):
            df[name] = pd.Series(pd.arrays.ArrowExtensionArray(table.column(name)), index=df.index, name=name)
    cats = ours.get("categoricals", {})
    for name, spec in cats.items():
        if name not in df.columns:
            continue
        try:
            index = pd.Index(spec["categories"], dtype=spec["dtype"])
        except (TypeError, ValueError):
            index = pd.Index(spec["categories"])
        wanted = pd.CategoricalDtype(index, ordered=spec["ordered"])
        if df[name].dtype != wanted:
            df[name] = df[name].astype(wanted)
    return df


def _write_parquet(table: pa.Table, sink: Any, compression: str, level: int | None) -> int:
    """Write ``table`` as Parquet to ``sink``; return the row-group size used."""
    _, pq, _ = _import_arrow()
    low_card, high_card = _string_columns(table)
    repetitive = [c for c in low_card if not _is_dictionary(table.schema.field(c).type)]
    if repetitive:  # read back through a dictionary: one Python str per distinct value, not per row
        meta = dict(table.schema.metadata or {})
        ours = json.loads(meta.get(_META_KEY, b"{}"))
        ours["repetitive_strings"] = repetitive
        meta[_META_KEY] = json.dumps(ours).encode()
        table = table.replace_schema_metadata(meta)
    row_bytes = max(1, table.nbytes // max(1, table.num_rows))
    row_group_size = max(MIN_ROW_GROUP, min(ROW_GROUP_SIZE, ROW_GROUP_BYTES // row_bytes))
    pq.write_table(
        table, sink, row_group_size=row_group_size, compression=compression, compression_level=level,
        # Dictionaries only where they pay (categoricals, repetitive strings); statistics everywhere except on
        # high-cardinality strings, where they cost time and rarely prune a row group.
        use_dictionary=low_card,
        write_statistics=[c for c in table.column_names if c not in high_card] if high_card else True,
    )
    return row_group_size


def _object_string_columns(schema: pa.Schema) -> list[str]:
    """Repetitive string columns that pandas holds as Python objects (pandas < 3, or dtype=object): reading them
    through a dictionary makes one str per distinct value instead of one per row. pandas 3's str columns stay
    in Arrow and need none of this."""
    raw = (schema.metadata or {}).get(_META_KEY)
    if not raw:
        return []
    repetitive = json.loads(raw).get("repetitive_strings", [])
    columns = {c.get("name"): c for c in (schema.pandas_metadata or {}).get("columns", [])}
    return [c for c in repetitive if columns.get(c, {}).get("numpy_type") == "object"]


def _is_dictionary(t: pa.DataType) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_dictionary(t))


def _string_columns(table: pa.Table) -> tuple[list[str], set[str]]:
    """(columns worth dictionary encoding, high-cardinality string columns), judged on a sample."""
    pa, _, _ = _import_arrow()
    import pyarrow.compute as pc

    low: list[str] = []
    high: set[str] = set()
    for name, column in zip(table.column_names, table.columns):
        t = column.type
        if pa.types.is_dictionary(t):
            low.append(name)
        elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) \
                or pa.types.is_large_binary(t) or getattr(pa.types, "is_string_view", lambda _: False)(t):
            sample = column.slice(0, _SAMPLE)
            if len(sample) and pc.count_distinct(sample).as_py() / len(sample) < DICTIONARY_RATIO:
                low.append(name)
            else:
                high.add(name)
    return low, high


def _filter_expression(filters: Any, pq: Any, ds: Any) -> Any:
    if filters is None:
        return None
    import pyarrow.compute as pc

    if isinstance(filters, pc.Expression):
        return filters
    try:
        return pq.filters_to_expression(filters)
    except (TypeError, ValueError, IndexError) as exc:
        raise ValueTypeError(
            f"filters={filters!r} is not in pyarrow's filter syntax: use a list of (column, op, value) tuples "
            f"like [('year', '>=', 2020)] ({exc})"
        ) from None


def _with_index_columns(schema: pa.Schema, columns: list[str]) -> list[str]:
    """The requested columns plus the stored index columns, so the frame comes back with its index."""
    meta = schema.pandas_metadata or {}
    extra = [c for c in meta.get("index_columns", []) if isinstance(c, str) and c not in columns]
    return [*columns, *extra]


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    # Strings that were read through a dictionary are turned back into their own dtype below; other strings are
    # not worth deduplicating (that hashes every value; pandas 3 keeps them in Arrow anyway).
    return _restore_dtypes(table, table.to_pandas(deduplicate_objects=False))
