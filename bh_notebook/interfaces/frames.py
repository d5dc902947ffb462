"""FrameStore: named, versioned frames (pandas DataFrames and Series, polars DataFrames, pyarrow Tables), each a
plain Parquet blob in FileStore.

The Parquet is written by pyarrow with pandas metadata and a little of ours, so a frame comes back exactly as it
was put (index, column labels of any type, every dtype, ``freq``, ``attrs``), or is refused before anything is
stored when it cannot be (Python objects in object columns): ``put`` converts the first rows back to prove it.
Any Parquet reader (Polars, DuckDB, Spark) can read the blob straight from the bucket. ``columns=``, ``filters=``,
``rows=`` and ``head()`` read the footer and then only the column chunks and row groups they need, with ranged
GETs; a whole ``get`` downloads once and checks the SHA-256. Every step is linear in the width.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import InexactFrame, NotFound, ValueTypeError
from ..storage.bucket import ProgressCallback, SeekableReader
from . import parquet_read, parquet_write
from .base import check_name
from .fingerprint import fingerprint
from .mapped import MappedRanges, ReleasableMap
from .versioned import ObjectURL, VersionedStore, check_metadata, object_url

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable, Mapping

    import pandas as pd
    import pyarrow as pa

    from ..config import BucketConfig
    from ..storage.bucket import BucketClient
    from .base import Interface

T = TypeVar("T")

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
#: Prefetch requests in flight at once.
PREFETCH_REQUESTS = 8
#: The parts of a frame version made of several Parquet blobs (``append``), in order, by the version's id. A
#: version with no rows here is one blob, its ``bh_key``; a version with parts has a small JSON manifest of them as
#: its ``bh_key`` (so its key is unique to that list of parts, and ``check`` finds it like any blob).
PARTS_TABLE = "bh_frame_parts"
MANIFEST_FORMAT = "bh-notebook frame parts 1"
#: ``compact()`` joins consecutive parts until a part holds about this many bytes of Parquet.
COMPACT_BYTES = 128 * 1024 * 1024
#: A whole read of a blob at least this big decodes it a few column chunks at a time and gives back the pages of each
#: chunk once decoded (``parquet_read``), so the blob and the table are never both whole in memory (smaller ones:
#: one read_table).
RELEASING_READ_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class FramePart:
    """One Parquet blob of a frame version: its key, rows and size."""

    bh_key: str
    n_rows: int
    nbytes: int
    #: The part's row labels when they are a RangeIndex: its first label and step (None: stored as columns).
    range_start: int | None = None
    range_step: int | None = None

    def continues(self, before: FramePart) -> bool:
        """Whether this part's RangeIndex labels go on exactly where ``before``'s end."""
        return (self.range_start is not None and before.range_start is not None and
                self.range_step == before.range_step and
                self.range_start == before.range_start + before.n_rows * int(before.range_step or 1))


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
    #: The version's id: given when it was put, unchanged by merges that move its number.
    version_id: str = ""
    #: How many Parquet blobs hold the rows (more than one after ``append``; ``compact`` joins them).
    parts: int = 1

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns), as ``DataFrame.shape``."""
        return (self.n_rows, len(self.columns))

    def __repr__(self) -> str:
        parts = f" in {self.parts} parts" if self.parts > 1 else ""
        return (f"<FrameVersion {self.name}@{self.version}: {self.n_rows:,} rows x {len(self.columns)} columns, "
                f"{self.nbytes:,} bytes{parts}, {self.bh_key[:12]}>")


def _import_arrow() -> tuple[Any, Any, Any]:
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    return pa, pq, ds


class FrameStore(VersionedStore[FrameVersion]):
    """Named, versioned frames (pandas, polars, Arrow) in table ``bh_frames``; reached as ``bh.frames``."""

    table = "bh_frames"
    kind = "frame"
    load_options = frozenset({"columns", "rows"})
    #: Parquet codec and level; ``for_catalog`` picks lz4 for the local store, zstd 1 stays for buckets.
    compression: str = S3_COMPRESSION[0]
    compression_level: int | None = S3_COMPRESSION[1]
    extra_columns = (
        ("n_rows", "INTEGER NOT NULL"),
        ("columns", "TEXT NOT NULL"),
        ("dtypes", "TEXT NOT NULL"),
        ("index_names", "TEXT NOT NULL"),
        ("row_groups", "INTEGER NOT NULL"),
    )

    @classmethod
    def for_catalog(cls, conn: sqlite3.Connection, bucket: BucketClient, config: BucketConfig,
             stores: Mapping[str, Interface]) -> Interface:
        store = super().for_catalog(conn, bucket, config, stores)
        assert isinstance(store, FrameStore)
        if bucket.backend == "local":  # see LOCAL_COMPRESSION
            store.compression, store.compression_level = LOCAL_COMPRESSION
        return store

    @classmethod
    def tables(cls) -> tuple[str, ...]:
        return (cls.table, PARTS_TABLE)

    @classmethod
    def blob_columns(cls) -> dict[str, tuple[str, ...]]:
        return {cls.table: ("bh_key",), PARTS_TABLE: ("bh_key",)}

    @classmethod
    def merge_rules(cls) -> dict[str, str]:
        return {**super().merge_rules(), PARTS_TABLE: "parts"}

    def _init_schema(self) -> None:
        super()._init_schema()
        self._conn.execute(f"CREATE TABLE IF NOT EXISTS {PARTS_TABLE} (version_id TEXT NOT NULL, "
                           "part INTEGER NOT NULL, bh_key TEXT NOT NULL, n_rows INTEGER NOT NULL, "
                           "nbytes INTEGER NOT NULL, range_start INTEGER, range_step INTEGER, "
                           "PRIMARY KEY (version_id, part))")
        self._conn.execute(f"CREATE INDEX IF NOT EXISTS {PARTS_TABLE}_bh_key ON {PARTS_TABLE} (bh_key)")
        self._conn.commit()

    @staticmethod
    def shape_text(info: Any) -> str:
        parts = getattr(info, "parts", 1)
        return f"{info.n_rows:,} x {len(info.columns)}" + (f" in {parts} parts" if parts > 1 else "")

    @staticmethod
    def accepts(value: Any) -> bool:
        """What ``%bh_put`` stores as a frame: a pandas DataFrame or Series, a polars DataFrame, LazyFrame or
        Series, a pyarrow Table or RecordBatch (polars is never imported for this)."""
        import pandas as pd
        import pyarrow as pa

        if isinstance(value, (pd.DataFrame, pd.Series, pa.Table, pa.RecordBatch)):
            return True
        return type(value).__module__.split(".")[0] == "polars" and type(value).__name__ in (
            "DataFrame", "LazyFrame", "Series")

    def _to_version(self, row: dict[str, Any]) -> FrameVersion:
        return FrameVersion(
            name=row["name"], version=int(row["version"]), bh_key=row["bh_key"], n_rows=int(row["n_rows"]),
            columns=json.loads(row["columns"]), dtypes=json.loads(row["dtypes"]), nbytes=int(row["nbytes"]),
            created_at=float(row["created_at"]), metadata=json.loads(row["metadata"]) if row["metadata"] else {},
            index=json.loads(row["index_names"]), row_groups=int(row["row_groups"]),
            version_id=row.get("version_id") or "",
            parts=max(1, int(self._conn.execute(f"SELECT count(*) FROM {PARTS_TABLE} WHERE version_id = ?",
                                                (row.get("version_id"),)).fetchone()[0])),
        )

    def parts(self, name: str, version: int | None = None) -> list[FramePart]:
        """The Parquet blobs that hold a version's rows, in order (one for a version put whole)."""
        return self._parts(self.info(name, version))

    def _parts(self, info: FrameVersion) -> list[FramePart]:
        rows = self._conn.execute(f"SELECT bh_key, n_rows, nbytes, range_start, range_step FROM {PARTS_TABLE} "
                                  "WHERE version_id = ? ORDER BY part", (info.version_id,)).fetchall()
        if not rows:
            return [FramePart(info.bh_key, info.n_rows, info.nbytes)]
        return [FramePart(k, int(n), int(b), a, st) for k, n, b, a, st in rows]

    def _delete_related(self, rows: list[dict[str, Any]]) -> set[str]:
        keys: set[str] = set()
        for row in rows:
            vid = row.get("version_id")
            keys |= {r[0] for r in self._conn.execute(f"SELECT bh_key FROM {PARTS_TABLE} WHERE version_id = ?",
                                                      (vid,))}
            self._conn.execute(f"DELETE FROM {PARTS_TABLE} WHERE version_id = ?", (vid,))
        return keys

    # -- writes -----------------------------------------------------------------------------

    def put(self, name: str, df: Any, *, metadata: dict[str, str] | None = None,
            progress: ProgressCallback | None = None) -> FrameVersion:
        """Store ``df`` as the next version of ``name``; return that version.

        ``df`` is a pandas DataFrame or Series, a polars DataFrame (a LazyFrame is collected) or a pyarrow Table;
        ``get`` gives back the same type. What Parquet would not give back exactly (Python objects in object
        columns, ...) is refused with :class:`~bh_notebook.errors.InexactFrame` before anything is stored.
        Putting the same frame as the latest version again returns that version and uploads nothing.
        """
        check_name(name, "frame name")
        meta = check_metadata(metadata)
        objects: list[tuple[Any, Any, bytes]] = []  # (object columns, hashed by address)
        seen = fingerprint(df, self.compression, self.compression_level, objects=objects)
        known = self._unchanged(name, seen)
        if known is not None:  # this process put or got exactly this as the latest version
            return known
        held = self._hold(objects) if objects else None  # (their objects kept alive from before the encoding)
        prepared = _prepare(df)
        part, row_groups = self._write_part(name, prepared.table, progress)
        info = self._add_version(name, part.bh_key, part.nbytes, meta, {
            "n_rows": part.n_rows, "columns": json.dumps(prepared.columns),
            "dtypes": json.dumps(dict(zip(prepared.columns, prepared.dtypes))),
            "index_names": json.dumps(prepared.index_names), "row_groups": row_groups,
        })
        self._remember(name, info, seen, objects, held)
        return info

    def _write_part(self, name: str, table: pa.Table, progress: ProgressCallback | None) -> tuple[FramePart, int]:
        """Write ``table`` as one Parquet blob: the part, and its number of row groups."""
        pa, _, _ = _import_arrow()
        try:
            with self._files.writer(filename=f"{name.rsplit('/', 1)[-1]}.parquet",
                                    mime="application/vnd.apache.parquet", progress=progress,
                                    entry=("frame", name)) as blob:
                row_group_size = _write_parquet(table, blob, self.compression, self.compression_level)
        except pa.ArrowNotImplementedError as exc:
            raise ValueTypeError(f"this frame cannot be written as Parquet: {str(exc).splitlines()[0]}. Convert "
                                 "the column to a supported type first") from None
        bh_key = blob.bh_key
        assert bh_key is not None
        return (FramePart(bh_key, table.num_rows, blob.tell(), *_labels_of(table.schema.metadata)),
                max(1, -(-table.num_rows // row_group_size)))

    def append(self, name: str, df: Any, *, metadata: dict[str, str] | None = None,
               progress: ProgressCallback | None = None) -> FrameVersion:
        """Add ``df``'s rows after those of the latest version of ``name``, as a new version; return it.

        Only the new rows are written (one new Parquet blob, a *part*); the new version is the latest version's
        parts plus that one, and reads back as one frame, as ``pd.concat([latest, df])`` would give it, except
        that a default ``RangeIndex`` goes on counting (0..n+m-1). ``df`` must have
        the stored columns with the same types (and the same kind: pandas, polars or Arrow; an object column of only
        missing values takes the stored column's type, as ``pd.concat`` keeps it), and a RangeIndex
        that is the default (0, 1, ...) or continues the stored labels; a mismatch raises
        ``ValueTypeError`` saying what differs, before anything is stored. A name with no version yet is
        ``put``; an empty ``df`` changes nothing. Without ``metadata`` the new version keeps the latest's.
        ``compact()`` later joins many small parts into few."""
        check_name(name, "frame name")
        meta = check_metadata(metadata)
        if name not in self:
            return self.put(name, df, metadata=metadata, progress=progress)
        latest = self.info(name)
        prepared = _prepare(df)
        if prepared.table.num_rows == 0:
            return latest  # (its columns may not even have types yet: an empty object column)
        parts = self._parts(latest)
        stored = self._part_schema(parts[0])
        table = _typed_like(prepared.table, stored)
        _check_appendable(latest, stored, _read_back_schema(table))
        _check_dtypes(latest, dict(zip(prepared.columns, prepared.dtypes)))
        parts = _with_labels(parts, stored)
        table = _continue_labels(stored.metadata, table, latest.n_rows)
        new, row_groups = self._write_part(name, table, progress)
        for part in parts:  # the new version relies on them: present, and fresh enough to outlive our commit
            self._files.rely(part.bh_key, entry=("frame", name))
        return self._add_parts(name, [*parts, new], meta if metadata is not None else latest.metadata, {
            "columns": json.dumps(latest.columns), "dtypes": json.dumps(latest.dtypes),
            "index_names": json.dumps(latest.index), "row_groups": latest.row_groups + row_groups})

    def compact(self, name: str, *, part_bytes: int = COMPACT_BYTES,
                progress: ProgressCallback | None = None) -> FrameVersion:
        """Join the latest version's consecutive small parts into parts of about ``part_bytes`` of Parquet each
        (one part, when they all fit), as a new version with the same rows, columns and index; return it. The
        latest version is returned unchanged when there is nothing to join. One group of parts is in memory at a
        time."""
        check_name(name, "frame name")
        if not isinstance(part_bytes, int) or isinstance(part_bytes, bool) or part_bytes < 1:
            raise ValueTypeError("part_bytes must be a positive int (bytes of Parquet per part)")
        latest = self.info(name)
        parts = self._parts(latest)
        groups: list[list[FramePart]] = []
        for part in parts:
            joins = part.range_start is None or part.continues(groups[-1][-1]) if groups else False
            if groups and joins and sum(p.nbytes for p in groups[-1]) + part.nbytes <= part_bytes:
                groups[-1].append(part)
            else:
                groups.append([part])
        if len(groups) == len(parts):
            return latest  # no two neighbours fit together
        pa, _, _ = _import_arrow()
        joined: list[FramePart] = []
        row_groups = 0
        for group in groups:
            if len(group) == 1:
                joined.append(group[0])
                row_groups += self._part_row_groups(group[0])
                continue
            tables = self._read_parts_whole(group, None)
            table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables])
            table = table.replace_schema_metadata(_part_metadata(tables[0].schema.metadata, table.num_rows))
            del tables
            part, groups_written = self._write_part(name, table, progress)
            joined.append(part)
            row_groups += groups_written
        for part in joined:  # the parts kept as they are (checked after the slow writes, just before the commit)
            self._files.rely(part.bh_key, entry=("frame", name))
        return self._add_parts(name, joined, latest.metadata, {
            "columns": json.dumps(latest.columns), "dtypes": json.dumps(latest.dtypes),
            "index_names": json.dumps(latest.index), "row_groups": row_groups})

    def _add_parts(self, name: str, parts: list[FramePart], meta: dict[str, str],
                   extra: dict[str, Any]) -> FrameVersion:
        """A new version of ``name`` made of ``parts`` (one part: a plain version of that blob)."""
        extra = {**extra, "n_rows": sum(p.n_rows for p in parts)}
        if len(parts) == 1:
            return self._add_version(name, parts[0].bh_key, parts[0].nbytes, meta, extra)
        manifest = json.dumps({"format": MANIFEST_FORMAT, "parts": [
            {"bh_key": p.bh_key, "rows": p.n_rows, "bytes": p.nbytes} for p in parts]}, sort_keys=True).encode()
        manifest_key = self._files.put(manifest, filename=f"{name.rsplit('/', 1)[-1]}.parts.json",
                                       mime="application/json", entry=("frame", name))

        def add_parts(version_id: str) -> None:
            self._conn.executemany(
                f"INSERT INTO {PARTS_TABLE} (version_id, part, bh_key, n_rows, nbytes, range_start, range_step) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(version_id, i, p.bh_key, p.n_rows, p.nbytes, p.range_start, p.range_step)
                 for i, p in enumerate(parts)])

        latest = self._latest(name)
        if latest is not None and latest["bh_key"] == manifest_key:
            return self._to_version(latest)
        version = self._insert(name, manifest_key, sum(p.nbytes for p in parts), meta, extra, also=add_parts)
        return self.info(name, version)

    # -- lazy reads and other engines --------------------------------------------------------

    def urls(self, name: str, version: int | None = None) -> list[ObjectURL]:
        """Where the Parquet blobs of a version are (one per part, in order), for engines that read the bucket
        themselves: ``s3://bucket/key`` with ``.endpoint_url``, or ``file://`` URLs for the local store. Those
        engines do not check the bytes against their hashes; ``dataset()`` does."""
        return [object_url(self._files, p.bh_key) for p in self.parts(name, version)]

    def url(self, name: str, version: int | None = None) -> ObjectURL:
        """Where the Parquet blob of a version is (see ``VersionedStore.url``); a version of several parts has
        several: ``urls()``."""
        info = self.info(name, version)
        if info.parts > 1:
            raise ValueTypeError(f"frame {name!r}@{info.version} is held in {info.parts} Parquet parts: "
                                 f"bh.frames.urls({name!r}) lists them (or compact() it into one)")
        return object_url(self._files, info.bh_key)

    def dataset(self, name: str, version: int | None = None) -> Any:
        """A ``pyarrow.dataset.Dataset`` over a version's parts, read lazily through this store: a scan fetches
        only the footers and the column chunks of the row groups its columns and filter need, each range checked
        against the blob's chunk hashes (IntegrityError on altered bytes). polars
        (``pl.scan_pyarrow_dataset(ds)``) and DuckDB (``duckdb.from_arrow(ds)``) query it as it is. The rows
        come without the frame's pandas row labels; ``get`` gives the exact frame."""
        pa, _, ds = _import_arrow()
        import pyarrow.fs as pafs

        info = self.info(name, version)
        parts = self._parts(info)
        schema = self._part_schema(parts[0])
        handler = _BlobFileSystem(self, {f"{p.bh_key}.parquet": p for p in parts})
        return ds.FileSystemDataset.from_paths(
            [f"{p.bh_key}.parquet" for p in parts], schema=schema.remove_metadata(), format=ds.ParquetFileFormat(),
            filesystem=pafs.PyFileSystem(handler))

    def _part_schema(self, part: FramePart) -> pa.Schema:
        """A part's Arrow schema, with its metadata, from its Parquet footer (one ranged read)."""
        pa, pq, _ = _import_arrow()
        with self._open_blob(part.bh_key, part.nbytes, None) as f:
            return pq.ParquetFile(pa.PythonFile(f, mode="r")).schema_arrow

    def _part_row_groups(self, part: FramePart) -> int:
        pa, pq, _ = _import_arrow()
        with self._open_blob(part.bh_key, part.nbytes, None) as f:
            return int(pq.ParquetFile(pa.PythonFile(f, mode="r")).metadata.num_row_groups)

    def _read_part_whole(self, part: FramePart, progress: ProgressCallback | None,
                         dictionary: list[str] | None = None) -> pa.Table:
        """A whole part, downloaded once and checked against its SHA-256. ``dictionary``: the string columns to
        read through a dictionary (None: the part's own choice; the parts of a version follow the first's)."""
        pa, pq, _ = _import_arrow()
        import numpy as np

        if part.nbytes >= RELEASING_READ_BYTES and ReleasableMap.available():
            blob = ReleasableMap(part.nbytes)
            try:
                self._files.get_verified(part.bh_key, blob.view, progress=progress)
                footer = pq.ParquetFile(blob.reader())
                md = footer.metadata
                if dictionary is None:
                    dictionary = _object_string_columns(footer.schema_arrow)
                del footer
                table = parquet_read.decode_releasing(blob, md, dictionary)
            finally:
                blob.close()
            if table is not None:
                # What was freed into Arrow's default pool (the footer's, a fallback read's), mimalloc keeps about a
                # second: give it back before pandas copies.
                pa.default_memory_pool().release_unused()
                return table
            warnings.warn(f"decoding blob {part.bh_key[:12]}... read bytes already given back; it is read again",
                          RuntimeWarning, stacklevel=3)
        buf = np.empty(part.nbytes, dtype=np.uint8)  # not bytearray: that zero-fills 0.5 ms/MiB for nothing
        self._files.get_verified(part.bh_key, buf.data, progress=progress)
        footer = pq.ParquetFile(pa.BufferReader(buf))
        md = footer.metadata
        if dictionary is None:
            dictionary = _object_string_columns(footer.schema_arrow)
        del footer
        return parquet_read.read_groups(
            lambda: pq.ParquetFile(pa.BufferReader(buf), metadata=md, read_dictionary=dictionary or None),
            list(range(md.num_row_groups)), None)

    def _read_parts_whole(self, parts: list[FramePart], progress: ProgressCallback | None) -> list[pa.Table]:
        """Whole parts, every one with the first's dictionary columns, so they concatenate."""
        first = self._read_part_whole(parts[0], progress)
        dictionary = _object_string_columns(first.schema)
        return [first, *(self._read_part_whole(p, progress, dictionary) for p in parts[1:])]

    # -- reads ------------------------------------------------------------------------------

    def get(self, name: str, version: int | None = None, *, columns: list[Any] | None = None,
            filters: Any = None, rows: slice | None = None, to: str | None = None,
            progress: ProgressCallback | None = None) -> Any:
        """The frame (latest version by default), as the type that was put, or ``to="pandas" | "polars" |
        "arrow"``.

        ``columns=`` reads only those columns (the index comes along); ``filters=`` takes pyarrow's filter syntax
        (``[("year", ">=", 2020), ("region", "in", ["EU", "US"])]``, or a ``pyarrow.compute`` expression) and skips
        row groups whose statistics rule them out; ``rows=slice(a, b)`` reads only the row groups holding those
        rows. These read only the footer and the needed column chunks. Row labels are kept as ``df[mask]`` and
        ``df.iloc[a:b]`` keep them.
        """
        _check_to(to)
        info = self.info(name, version)
        if rows is not None and not isinstance(rows, slice):
            raise ValueTypeError(f"rows= takes a slice, like rows=slice(0, 100), not {type(rows).__name__}")
        if columns is None and filters is None and rows is None:
            parts = self._parts(info)
            if len(parts) == 1:
                table = self._read_part_whole(parts[0], progress)
                frame = _convert(table, to, _Rows(table.num_rows), consume=True)  # (table is unusable after)
                if to is None:  # what the version holds, as it was put: a re-put of it, untouched, is no change
                    self._remember(name, info, fingerprint(frame, self.compression, self.compression_level))
                return frame
            pa, _, _ = _import_arrow()
            tables = self._read_parts_whole(parts, progress)
            meta = _version_metadata(tables[0].schema.metadata, parts)
            table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables]).replace_schema_metadata(meta)
            del tables
            return _convert(table, to, _Rows(table.num_rows), consume=True)
        return self._read(info, columns=columns, filters=filters, rows=rows, head=None, to=to, progress=progress)

    def head(self, name: str, n: int = 5, version: int | None = None, *, to: str | None = None) -> Any:
        """The first ``n`` rows, reading only the row groups that hold them."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueTypeError("n must be a non-negative int")
        _check_to(to)
        return self._read(self.info(name, version), columns=None, filters=None, rows=None, head=n, to=to,
                          progress=None)

    def schema(self, name: str, version: int | None = None) -> pa.Schema:
        """The Arrow schema of a stored frame, read from the Parquet footer only (the first part's)."""
        return self._part_schema(self._parts(self.info(name, version))[0])

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    # -- helpers ----------------------------------------------------------------------------

    def _open_blob(self, bh_key: str, nbytes: int, progress: ProgressCallback | None) -> RangeFile:
        """A ranged-read file over a Parquet blob, with its footer already fetched (one request)."""
        f = RangeFile(self._files, bh_key, nbytes, progress)
        f.prefetch([(max(0, nbytes - FOOTER_GUESS), nbytes)])
        return f

    def _read(self, info: FrameVersion, *, columns: Any, filters: Any, rows: slice | None, head: int | None,
              to: str | None, progress: ProgressCallback | None) -> Any:
        """A partial read: of each part, only the footer and the column chunks of the row groups needed (a part
        holding none of the rows asked for is not read at all)."""
        import numpy as np

        pa, pq, ds = _import_arrow()
        expr = _filter_expression(filters, pq, ds)
        parts = self._parts(info)
        total = sum(p.n_rows for p in parts)
        wanted_rows: np.ndarray[Any, Any] | None = None
        if head is not None:
            wanted_rows = np.arange(min(head, total), dtype=np.int64)
        elif rows is not None:
            wanted_rows = np.arange(*rows.indices(total), dtype=np.int64)
        tables: list[Any] = []
        positions: list[np.ndarray[Any, Any]] = []
        metadata = None
        dictionary: list[str] | None = None
        ordered = None if wanted_rows is None else np.sort(wanted_rows)
        start = 0
        for i, part in enumerate(parts):
            stop = start + part.n_rows
            local = None
            if ordered is not None:
                lo, hi = np.searchsorted(ordered, [start, stop])
                local = ordered[lo:hi] - start
                if i > 0 and not len(local):
                    start = stop
                    continue
            table, found, schema = self._read_part(info, part, columns=columns, filters=filters, expr=expr,
                                                   local=local, progress=progress, dictionary=dictionary)
            if dictionary is None:
                dictionary = _object_string_columns(schema)
            if metadata is None:
                metadata = schema.metadata if len(parts) == 1 else _version_metadata(schema.metadata, parts)
            tables.append(table.replace_schema_metadata(None))
            if expr is not None:
                positions.append(found + start)
            start = stop
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        found = None if expr is None else positions[0] if len(positions) == 1 else np.concatenate(positions)
        if wanted_rows is not None and len(wanted_rows) > 1 and wanted_rows[1] < wanted_rows[0]:
            # A slice that steps backwards: the rows were read (and filtered) in ascending order.
            table = table.take(pa.array(np.arange(table.num_rows - 1, -1, -1, dtype=np.int64)))
            found = None if found is None else found[::-1]
        table = table.replace_schema_metadata(metadata)
        if found is not None:
            selection = _Rows(total, mask=found)
        elif head is not None:
            selection = _Rows(total, slice(0, head))
        elif rows is not None:
            selection = _Rows(total, rows)
        else:
            selection = _Rows(total)
        return _convert(table, to, selection)

    def _read_part(self, info: FrameVersion, part: FramePart, *, columns: Any, filters: Any, expr: Any,
                   local: Any, progress: ProgressCallback | None,
                   dictionary: list[str] | None = None) -> tuple[pa.Table, Any, pa.Schema]:
        """The rows of one part that ``local`` (sorted positions in the part; None: all) and ``expr`` keep, with
        the columns asked for: (table, their positions in the part, the part's schema)."""
        import numpy as np

        pa, pq, ds = _import_arrow()
        with self._open_blob(part.bh_key, part.nbytes, progress) as f:
            schema = pq.ParquetFile(pa.PythonFile(f, mode="r")).schema_arrow
            if dictionary is None:
                dictionary = _object_string_columns(schema)
            # (no read-ahead: it would call into the Python file from Arrow's I/O threads; see read_groups)
            pf = pq.ParquetFile(pa.PythonFile(f, mode="r"), read_dictionary=dictionary or None, pre_buffer=False)
            md = pf.metadata
            cols = self._check_columns(info, schema, columns)
            wanted = None if cols is None else _with_index_columns(schema, cols)
            sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
            offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]) if sizes else np.zeros(1, np.int64)
            groups = list(range(md.num_row_groups))
            if local is not None:
                groups = (np.unique(np.searchsorted(offsets, local, side="right")) - 1).tolist()
            needed = None if wanted is None else set(wanted)
            if expr is not None:
                try:
                    fragment = ds.ParquetFileFormat().make_fragment(pa.PythonFile(f, mode="r"))
                    kept = {rg.id for piece in fragment.split_by_row_group(expr, schema=fragment.physical_schema)
                            for rg in piece.row_groups}
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                    raise ValueTypeError(f"cannot apply filters={filters!r} to frame {info.name!r}: {exc}") from None
                groups = [g for g in groups if g in kept]
                if needed is not None:  # an Expression names no columns we can see: read them all, then select
                    needed = needed | _filter_columns(filters) if isinstance(filters, (list, tuple)) else None
            read_fields = None if needed is None else \
                list(dict.fromkeys([*(wanted or []), *sorted(needed - set(wanted or []))]))
            ranges = _chunk_ranges(md, schema, needed, groups)
            table = _read_mapped(f, ranges, md, dictionary, groups, read_fields, info.name) if groups else \
                _empty_table(pf, read_fields)
            if table is None:
                f.prefetch(ranges)
                table = pf.read_row_groups(groups, columns=read_fields, use_threads=False,  # (parquet_read.
                                           use_pandas_metadata=False)  # read_groups says why not Arrow's threads)
        table = table.replace_schema_metadata(schema.metadata)
        found = None  # the rows' positions in the part: what filters= needs
        if local is not None and len(groups):
            start = local - offsets[groups[0]]
            if len(start) and start[-1] - start[0] == len(start) - 1:
                table = table.slice(int(start[0]), len(start))
            else:
                table = table.take(pa.array(start))
            found = local
        if expr is not None:
            if found is None:
                found = np.concatenate([np.arange(offsets[g], offsets[g + 1], dtype=np.int64) for g in groups]) \
                    if groups else np.zeros(0, np.int64)
            # (a copy Arrow owns: the filter runs on Arrow's threads, which must not be the ones to free an array)
            table = table.append_column(_POSITION, pa.concat_arrays([pa.array(found)]))
            try:
                table = table.filter(expr)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError) as exc:
                raise ValueTypeError(f"cannot apply filters={filters!r} to frame {info.name!r}: {exc}") from None
            found = table.column(_POSITION).to_numpy()
            keep = [n for n in table.column_names if n != _POSITION and (wanted is None or n in wanted)]
            table = table.select(keep)
        return table, found, schema

    def _check_columns(self, info: FrameVersion, schema: pa.Schema, columns: Any) -> list[str] | None:
        """The Parquet field names of the columns asked for (labels of any type, as the frame had them)."""
        if columns is None:
            return None
        if isinstance(columns, (str, int, float, tuple)):
            columns = [columns]
        if not isinstance(columns, (list, tuple)):
            raise ValueTypeError("columns= takes a list of column names, like columns=['price', 'qty']")
        names = set(schema.names)
        fields = [_field_name(c) for c in columns]
        missing = [c for c, fname in zip(columns, fields) if fname not in names]
        if missing:
            from difflib import get_close_matches

            hints = {repr(m): get_close_matches(str(m), info.columns, n=1) for m in missing}
            said = ", ".join(m + (f" (did you mean {h[0]!r}?)" if h else "") for m, h in hints.items())
            shown = info.columns if len(info.columns) <= 50 else [*info.columns[:50], "..."]
            raise NotFound(f"frame {info.name!r}@{info.version} has no column {said}; it has {shown}")
        return fields


def _blob_filesystem_base() -> type:
    import pyarrow.fs as pafs

    return pafs.FileSystemHandler


class _BlobFileSystem(_blob_filesystem_base()):  # type: ignore[misc]
    """A read-only pyarrow filesystem whose files are the Parquet parts of one frame version, each opened as a
    verified ``RangeFile`` (what ``FrameStore.dataset`` scans)."""

    def __init__(self, store: FrameStore, parts: dict[str, FramePart]) -> None:
        super().__init__()
        self._store = store
        self._parts = parts

    def _part(self, path: str) -> FramePart:
        part = self._parts.get(path.lstrip("/"))
        if part is None:
            raise FileNotFoundError(path)
        return part

    def get_type_name(self) -> str:
        return "bh-notebook-frame"

    def equals(self, other: Any) -> bool:
        return other is self

    def get_file_info(self, paths: list[str]) -> list[Any]:
        import pyarrow.fs as pafs

        infos = []
        for path in paths:
            part = self._parts.get(path.lstrip("/"))
            infos.append(pafs.FileInfo(path, pafs.FileType.NotFound) if part is None else
                         pafs.FileInfo(path, pafs.FileType.File, size=part.nbytes))
        return infos

    def get_file_info_selector(self, selector: Any) -> list[Any]:
        return self.get_file_info(list(self._parts))

    def normalize_path(self, path: str) -> str:
        return path

    def open_input_file(self, path: str) -> Any:
        import pyarrow as pa

        part = self._part(path)
        return pa.PythonFile(self._store._open_blob(part.bh_key, part.nbytes, None), mode="r")

    def open_input_stream(self, path: str) -> Any:
        return self.open_input_file(path)

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise OSError("a frame's dataset is read-only")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = delete_file = _read_only
    move = copy_file = open_output_stream = open_append_stream = _read_only


class RangeFile(SeekableReader):
    """A read-only, seekable file over a blob that fetches only the byte ranges read, with ranged GETs.

    ``prefetch(ranges)`` fetches many ranges at once, in parallel, merging ranges that nearly touch; reads that
    fall inside them are then served from memory. Parquet readers ask for one column chunk at a time, which
    against a bucket on the internet would be one round trip each.

    Every range is widened to the blob's hash chunks and checked against their SHA-256 (``FileStore.
    get_range_verified``), so altered bytes raise IntegrityError instead of being decoded.
    """

    def __init__(self, files: Any, bh_key: str, size: int, progress: ProgressCallback | None = None) -> None:
        super().__init__(size)
        self._files = files
        self._key = bh_key
        self._size = size
        self._progress = progress
        self._lock = threading.Lock()
        self._blocks: list[tuple[int, bytes]] = []
        chunks = files.chunk_hashes(bh_key)
        self._checked = chunks is not None
        self._chunk = chunks.chunk_size if chunks is not None else 1
        self.bytes_fetched = 0
        self.requests = 0

    def size(self) -> int:
        return self._size

    def _widen(self, start: int, end: int) -> tuple[int, int]:
        """``[start, end)`` widened to whole hash chunks: what a verified read fetches anyway."""
        return start // self._chunk * self._chunk, min(self._size, -(-end // self._chunk) * self._chunk)

    def _fetch(self, start: int, end: int) -> bytes:
        data = self._files.get_range_verified(self._key, start, end)
        self._fetched(len(data))
        return bytes(data)

    def _fetched(self, n: int) -> None:
        """Count one request that fetched ``n`` bytes, and report them."""
        with self._lock:
            self.bytes_fetched += n
            self.requests += 1
        if self._progress is not None:
            self._progress(n)

    def _plan(self, ranges: list[tuple[int, int]], held: Callable[[int, int], bool]) -> list[list[int]]:
        """The requests that fetch ``ranges``: widened to whole chunks, those ``held`` already left out, ranges
        that nearly touch merged."""
        merged: list[list[int]] = []
        for start, end in sorted(self._widen(max(0, a), min(self._size, b)) for a, b in ranges if b > a):
            if end <= start or held(start, end):
                continue
            if merged and start - merged[-1][1] <= PREFETCH_GAP and end - merged[-1][0] <= PREFETCH_BLOCK:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        return merged

    @staticmethod
    def _parallel(fn: Callable[[int, int], T], merged: list[list[int]]) -> list[T]:
        """``fn(start, end)`` of every request, several at once."""
        if len(merged) <= 1:
            return [fn(m[0], m[1]) for m in merged]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(PREFETCH_REQUESTS, len(merged)), thread_name_prefix="bh-prefetch") as pool:
            return list(pool.map(lambda m: fn(m[0], m[1]), merged))

    def _fetch_all(self, merged: list[list[int]]) -> list[tuple[int, bytes]]:
        return list(zip([m[0] for m in merged], self._parallel(self._fetch, merged)))

    def prefetch(self, ranges: list[tuple[int, int]]) -> None:
        """Fetch these ``[start, end)`` ranges now, in parallel; later reads inside them cost no request."""
        blocks = self._fetch_all(self._plan(ranges, lambda a, b: self._cached(a, b) is not None))
        with self._lock:
            self._blocks.extend(blocks)

    def mapped(self, ranges: list[tuple[int, int]]) -> MappedRanges | None:
        """The blob's footer (already here) and these ranges, fetched and checked as ``prefetch`` does, in a map of
        the blob's size that pyarrow reads natively; None for a blob without chunk hashes, or where reads of the
        map cannot be told apart (read through this file then). Check ``read_elsewhere()`` after reading."""
        if not self._checked or not MappedRanges.available(self._chunk):
            return None
        try:
            mapped = MappedRanges(self._size)
        except (OSError, OverflowError, ValueError):  # pragma: no cover - will not map that much (ulimit -v, ...)
            return None
        into = getattr(self._files, "get_into_verified", None)

        def fetch(lo: int, hi: int) -> None:  # straight into the map, chunks checked as they arrive
            if into is None:  # a worker's reader: fetched, then copied in, each range as it comes
                mapped.write(lo, self._fetch(lo, hi))
                return
            into(self._key, mapped.place(lo, hi), lo)
            self._fetched(hi - lo)

        try:
            for start, data in self._blocks:
                mapped.write(start, data)
            self._parallel(fetch, self._plan(ranges, mapped.holds))
        except BaseException:  # an altered chunk, say: the map goes now, not with the traceback
            mapped.close()
            raise
        return mapped

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
            lo, hi = self._widen(self._pos, end)
            block = self._fetch(lo, hi)
            with self._lock:
                self._blocks.append((lo, block))
            data = block[self._pos - lo:end - lo]
        self._pos += len(data)
        return data

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        memoryview(b)[: len(data)] = data
        return len(data)


def _read_mapped(f: RangeFile, ranges: list[tuple[int, int]], md: Any, dictionary: list[str] | None,
                 groups: list[int], fields: list[str] | None, name: str) -> pa.Table | None:
    """Row groups ``groups`` (the ``fields`` of them) read natively from a map holding the footer and ``ranges``,
    fetched and checked; None where that cannot be done safely (read through the file then)."""
    arrow, pq, _ = _import_arrow()
    mapped = f.mapped(ranges)
    if mapped is None:
        return None

    table = None
    try:
        try:
            table = parquet_read.read_groups(
                lambda: pq.ParquetFile(mapped.reader(), metadata=md, read_dictionary=dictionary or None), groups,
                fields)
        except (OSError, arrow.ArrowException):  # zeros where a page header should be, if pages outside were read
            if not mapped.read_elsewhere():
                raise
        if table is None or mapped.read_elsewhere():  # a bug of _chunk_ranges: pyarrow read bytes no range covers
            warnings.warn(f"reading frame {name!r} touched bytes outside the ranges fetched; it is read again "
                          "through the checked file", RuntimeWarning, stacklevel=3)
            return None
        return table
    finally:
        mapped.close()


def _chunk_ranges(metadata: Any, schema: pa.Schema, columns: set[str] | None,
                  row_groups: list[int] | None) -> list[tuple[int, int]]:
    """Byte ranges of the column chunks of the fields ``columns`` (all when None) in ``row_groups`` (all when
    None). Leaf columns are matched to fields by counting, not by their dotted paths (names may hold dots)."""
    owner = [schema[i].name for i in parquet_read.leaf_fields(schema)]
    if len(owner) != metadata.num_columns:  # pragma: no cover - an unknown nesting: fall back to the paths
        owner = [metadata.schema.column(j).path.split(".")[0] for j in range(metadata.num_columns)]
    chosen = [j for j, name in enumerate(owner) if columns is None or name in columns]
    ranges = []
    for g in range(metadata.num_row_groups) if row_groups is None else row_groups:
        rg = metadata.row_group(g)
        for j in chosen:
            ranges.append(parquet_read.chunk_span(rg.column(j)))
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


_META_KEY = b"bh_notebook"
#: A column appended while filtering, to know which rows (by position) passed.
_POSITION = "__bh_position__"
#: Rows of a frame converted back to pandas at put time, to prove the conversion exact before storing.
_PROBE_ROWS = 3
#: Contents of object columns that Parquet gives back exactly (pandas.api.types.infer_dtype's names).
_EXACT_OBJECTS = {"string", "empty", "bytes", "date", "boolean"}
TO = ("pandas", "polars", "arrow")


def _check_to(to: object) -> None:
    if to is not None and to not in TO:
        raise ValueTypeError(f"to={to!r}: use to='pandas', to='polars' or to='arrow' (or None: the type put)")


def _import_polars() -> Any:
    try:
        import polars as pl
    except ImportError:
        raise ImportError("polars is not installed: pip install 'bh_notebook[polars]' (or pip install polars)") \
            from None
    return pl


def _is_polars(obj: object) -> bool:
    return type(obj).__module__.split(".")[0] == "polars"


def _field_name(label: Any) -> str:
    """The Parquet field name pyarrow gives a pandas column label (tuples of a MultiIndex: their repr)."""
    if isinstance(label, str):
        return label
    if isinstance(label, bytes):
        return label.decode("utf8")
    if isinstance(label, tuple):
        return str(tuple(map(_field_name, label)))
    return str(label)


@dataclass
class _Prepared:
    """A frame of any supported type as the Arrow table to write, with what the catalog records of it."""

    table: pa.Table
    columns: list[str]
    dtypes: list[str]
    index_names: list[str]


def _with_ours(table: pa.Table, ours: dict[str, Any]) -> pa.Table:
    meta = dict(table.schema.metadata or {})
    meta[_META_KEY] = json.dumps(ours).encode()
    return table.replace_schema_metadata(meta)


def _ours(schema: pa.Schema) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(_META_KEY)
    return json.loads(raw) if raw else {}


def _prepare(obj: Any) -> _Prepared:
    """Check ``obj`` and turn it into the Arrow table to store, or refuse it (before anything is stored)."""
    import pandas as pd

    pa, _, _ = _import_arrow()
    if _is_polars(obj):
        pl = _import_polars()
        if isinstance(obj, pl.LazyFrame):
            obj = obj.collect()
        if isinstance(obj, pl.Series):
            obj = obj.to_frame()
        if not isinstance(obj, pl.DataFrame):
            raise ValueTypeError(f"bh.frames stores polars DataFrames and LazyFrames, not {type(obj).__name__}")
        table = obj.to_arrow()
        table = _with_ours(table, {"kind": "polars", "schema": _schema_text(table.schema)})
        return _Prepared(table, list(obj.columns), [str(t) for t in obj.dtypes], [])
    if isinstance(obj, pa.RecordBatch):
        obj = pa.Table.from_batches([obj])
    if isinstance(obj, pa.Table):
        ours = {"kind": "arrow", "metadata": obj.schema.metadata is not None, "schema": _schema_text(obj.schema)}
        return _Prepared(_with_ours(obj, ours), list(obj.column_names), [str(t) for t in obj.schema.types], [])
    if isinstance(obj, pd.Series):
        name = obj.name
        if not _json_exact(name):
            raise InexactFrame(f"the Series name {name!r} would not come back exactly: use a str, int, float or "
                               "None name (s.rename('x'))")
        label = name if isinstance(name, str) else ("values" if name is None else _field_name(name))
        frame = obj.to_frame(name=label)
        frame.attrs = dict(obj.attrs)
        prepared = _prepare_pandas(frame, {"kind": "series", "name": name})
        return prepared
    if isinstance(obj, pd.DataFrame):
        return _prepare_pandas(obj, {})
    raise ValueTypeError(f"bh.frames stores pandas DataFrames and Series, polars DataFrames and pyarrow Tables, "
                         f"not {type(obj).__name__}" + ("; use bh.arrays for NumPy arrays"
                                                        if type(obj).__name__ == "ndarray" else ""))


def _pandas_range(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The RangeIndex spec of pandas metadata, when the index is one."""
    index = meta.get("index_columns", [])
    if len(index) == 1 and isinstance(index[0], dict) and index[0].get("kind") == "range":
        return index[0]
    return None


def _part_metadata(metadata: dict[bytes, bytes] | None, n_rows: int) -> dict[bytes, bytes] | None:
    """A part's schema metadata made to describe ``n_rows`` rows: a RangeIndex counts on from its start."""
    if not metadata or b"pandas" not in metadata:
        return metadata
    pandas_meta = json.loads(metadata[b"pandas"])
    spec = _pandas_range(pandas_meta)
    if spec is None:
        return metadata
    spec["stop"] = int(spec["start"]) + n_rows * int(spec["step"])
    return {**metadata, b"pandas": json.dumps(pandas_meta).encode()}


def _range_spec(metadata: dict[bytes, bytes] | None) -> dict[str, Any] | None:
    if not metadata or b"pandas" not in metadata:
        return None
    return _pandas_range(json.loads(metadata[b"pandas"]))


def _labels_of(metadata: dict[bytes, bytes] | None) -> tuple[int | None, int | None]:
    """(first label, step) of a part's RangeIndex, from its schema metadata; (None, None) for other labels."""
    spec = _range_spec(metadata)
    return (None, None) if spec is None else (int(spec["start"]), int(spec["step"]))


def _with_labels(parts: list[FramePart], first: pa.Schema) -> list[FramePart]:
    """A version's parts with their RangeIndex labels: a version put whole has no parts rows, so its one part's
    labels come from its footer (``first``, its schema)."""
    if len(parts) != 1 or parts[0].range_start is not None:
        return parts
    start, step = _labels_of(first.metadata)
    return [dataclasses.replace(parts[0], range_start=start, range_step=step)]


def _version_metadata(metadata: dict[bytes, bytes] | None, parts: list[FramePart]) -> dict[bytes, bytes] | None:
    """The metadata that describes a version of several parts: the first part's, with the row labels of them all
    (as ``pd.concat`` of the parts gives them: one RangeIndex when each part's goes on where the last ended,
    else the parts' labels one after the other, in ``part_ranges``; a ``freq`` is kept where the labels still
    fit it)."""
    n_rows = sum(p.n_rows for p in parts)
    if all(b.continues(a) for a, b in zip(parts, parts[1:])) or parts[0].range_start is None:
        return _part_metadata(metadata, n_rows)
    assert metadata is not None
    ours = json.loads(metadata.get(_META_KEY, b"{}"))
    ours["part_ranges"] = [[p.range_start, p.n_rows, p.range_step] for p in parts]
    return {**(_part_metadata(metadata, n_rows) or {}), _META_KEY: json.dumps(ours).encode()}


def _continue_labels(stored: dict[bytes, bytes] | None, table: pa.Table, n_rows: int) -> pa.Table:
    """New rows with a default RangeIndex (0, 1, ... unnamed) appended after ``n_rows`` rows whose labels are a
    RangeIndex: their labels go on from the stored ones (the part's metadata says so; no data changes)."""
    old, new = _range_spec(stored), _range_spec(table.schema.metadata)
    if old is None or new is None or (new["start"], new["step"], new.get("name")) != (0, 1, None):
        return table
    follows = int(old["start"]) + n_rows * int(old["step"])
    pandas_meta = json.loads(table.schema.metadata[b"pandas"])
    spec = _pandas_range(pandas_meta)
    assert spec is not None
    spec["start"], spec["step"] = follows, int(old["step"])
    spec["stop"] = follows + table.num_rows * int(old["step"])
    spec["name"] = old.get("name")
    return table.replace_schema_metadata({**table.schema.metadata, b"pandas": json.dumps(pandas_meta).encode()})


def _typed_like(table: pa.Table, stored: pa.Schema) -> pa.Table:
    """New rows whose object column holds only missing values (pyarrow gives it the null type) take the stored
    column's type, all nulls, as ``pd.concat`` keeps the type of a column the new rows have nothing in."""
    pa, _, _ = _import_arrow()
    for i, f in enumerate(table.schema):
        j = stored.get_field_index(f.name)
        if pa.types.is_null(f.type) and j >= 0 and not pa.types.is_null(t := stored.field(j).type):
            table = table.set_column(i, f.with_type(t), pa.nulls(table.num_rows, t))
    return table


def _read_back_schema(table: pa.Table) -> pa.Schema:
    """The schema a part written from ``table`` reads back with (Parquet keeps some types as others)."""
    import io

    _, pq, _ = _import_arrow()
    sink = io.BytesIO()
    _write_parquet(table.slice(0, 0), sink, "none", None)
    sink.seek(0)
    return pq.read_schema(sink)


def _check_dtypes(latest: FrameVersion, dtypes: dict[str, str]) -> None:
    """ValueTypeError when a column's dtype (as pandas, polars or Arrow names it: categories of an Enum, a
    timestamp's unit) differs from the stored one."""
    differ = [f"column {c!r} is {t} here but {latest.dtypes.get(c)} in the stored frame"
              for c, t in dtypes.items() if c in latest.dtypes and latest.dtypes[c] != t]
    if differ:
        raise ValueTypeError(f"cannot append to frame {latest.name!r}@{latest.version}: {'; '.join(differ)}. Convert "
                             "the columns first (df.astype(...), df.cast(...)). Nothing was stored.")


def _check_appendable(latest: FrameVersion, stored: pa.Schema, new: pa.Schema) -> None:
    """ValueTypeError saying what differs when rows of schema ``new`` cannot follow a version of ``stored``."""
    where = f"frame {latest.name!r}@{latest.version}"
    old_ours, new_ours = _ours(stored), _ours(new)
    old_kind, new_kind = old_ours.get("kind", "pandas"), new_ours.get("kind", "pandas")
    if old_kind != new_kind:
        raise ValueTypeError(f"cannot append a {new_kind} frame to {where}, which holds a {old_kind} frame: "
                             f"convert it first, or put it under another name")
    problems = []
    old_pandas = json.loads((stored.metadata or {}).get(b"pandas", b"{}"))
    new_pandas = json.loads((new.metadata or {}).get(b"pandas", b"{}"))
    old_range, new_range = _pandas_range(old_pandas), _pandas_range(new_pandas)
    if (old_range is None) != (new_range is None):
        problems.append("one index is a RangeIndex and the other is not (use df.reset_index(drop=True), or give "
                        "both the same index columns)")
    elif old_range is not None and new_range is not None:
        default = (new_range["start"], new_range["step"], new_range.get("name")) == (0, 1, None)
        if not default and new_range.get("name") != old_range.get("name"):
            problems.append(f"the index is named {new_range.get('name')!r} here but {old_range.get('name')!r} in "
                            "the stored frame (rename it, or give the new rows a default index to count on)")
    elif old_pandas.get("index_columns") != new_pandas.get("index_columns"):
        problems.append(f"the index is {new_pandas.get('index_columns')} here but {old_pandas.get('index_columns')} "
                        "in the stored frame")
    old_names, new_names = list(stored.names), list(new.names)
    if problems:
        pass
    elif old_names != new_names:
        missing = [n for n in old_names if n not in new_names]
        extra = [n for n in new_names if n not in old_names]
        if missing:
            problems.append(f"missing columns {missing}")
        if extra:
            problems.append(f"extra columns {extra}")
        if not missing and not extra:
            problems.append(f"the columns are in another order ({new_names} instead of {old_names}); reorder them "
                            f"with df[{old_names!r}]")
    else:
        for old_f, new_f in zip(stored, new):
            if not old_f.type.equals(new_f.type):
                problems.append(f"column {old_f.name!r} is {new_f.type} here but {old_f.type} in the stored frame")
    for key in sorted(set(old_ours) | set(new_ours)):
        if key in ("attrs", "freq", "schema", "repetitive_strings") or problems:
            continue
        if old_ours.get(key) != new_ours.get(key):
            problems.append(f"the column types differ in detail ({key}: {new_ours.get(key)!r} here, "
                            f"{old_ours.get(key)!r} stored); e.g. categories must be the same")
    if problems:
        raise ValueTypeError(f"cannot append to {where}: " + "; ".join(problems) + ". Nothing was stored.")


def _schema_text(schema: pa.Schema) -> str:
    """An Arrow schema's field types as text for our metadata (Parquet turns some types into others)."""
    import base64

    return base64.b64encode(schema.remove_metadata().serialize().to_pybytes()).decode()


def _cast_to_stored(table: pa.Table, text: str) -> pa.Table:
    """``table`` with the field types that were put (``timestamp[s]`` comes back from Parquet as ``[ms]``, list
    items named ``element``): each cast is exact, the values having been those types."""
    import base64

    import pyarrow as pa

    stored = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))
    fields = []
    changed = False
    for field_ in table.schema:
        i = stored.get_field_index(field_.name)
        want = stored.field(i) if i >= 0 else field_
        changed = changed or want.type != field_.type or not want.type.equals(field_.type, check_metadata=True)
        fields.append(want)
    if not changed:
        return table
    return table.cast(pa.schema(fields, metadata=table.schema.metadata))


def _json_exact(value: Any) -> bool:
    """Whether ``value`` comes back from JSON equal and of the same types (no tuples turned into lists...)."""
    try:
        back = json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return False
    return _same(value, back)


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b) or (a != a and b != b)


def _check_frame(df: pd.DataFrame) -> None:
    """Refuse labels and attrs that Parquet cannot hold or would not give back exactly, in time linear in the
    width (the values: ``_check_values``)."""
    import pandas as pd

    columns = df.columns
    if not columns.is_unique:
        dupes = sorted({repr(c) for c in columns[columns.duplicated()]})
        raise ValueTypeError(f"duplicate column names {', '.join(dupes[:10])}: Parquet needs unique names; rename "
                             "them first")
    if not isinstance(columns, pd.MultiIndex) and columns.dtype == object:
        kinds = {type(c).__name__ for c in columns}
        if len(kinds) > 1:
            raise InexactFrame(f"column labels of mixed types ({', '.join(sorted(kinds))}) would come back as one "
                               "type; make them one type first, e.g. df.columns = df.columns.map(str)")
        fields = [_field_name(c) for c in columns]
        if len(set(fields)) != len(fields):
            raise ValueTypeError("column labels that differ only in type (like 1 and '1') would share one Parquet "
                                 "name; rename them, e.g. df.columns = df.columns.map(str)")
    index_names = {_field_name(n) for n in df.index.names if n is not None}
    if index_names:
        clash = sorted(index_names & set(map(_field_name, columns)))
        if clash:
            raise ValueTypeError(f"index level(s) {clash!r} share a name with a column; rename one of them")
    if not _json_exact(df.attrs):
        raise InexactFrame(f"df.attrs would not come back exactly ({df.attrs!r:.200}): keep str keys and JSON "
                           "values (str, int, float, bool, None, lists and dicts of them)")


def _check_values(df: pd.DataFrame, *, strings: dict[int, Any] | None = None) -> None:
    """Refuse object columns and index levels holding Python objects that would not come back exactly.

    ``strings``: object columns (by position) that pyarrow converted to an Arrow string type, with that Arrow
    column. pyarrow does so only when every value is a str or what it takes for missing, and it makes exactly
    those missing ones null: only they are scanned (None, NaN and pd.NA pass; NaT or Decimal('NaN') would come
    back as None, and are refused), found from the Arrow column's nulls, so a column without any costs nothing
    (asking pandas which values are missing scans every object: 0.3 s for 10M rows)."""
    import pyarrow.compute as pc

    columns = df.columns
    strings = strings or {}
    for i, dtype in enumerate(df.dtypes):
        if dtype != object:
            continue
        values = df.iloc[:, i]
        converted = strings.get(i)
        if converted is not None:
            if not converted.null_count:
                continue
            missing = pc.is_null(converted).to_numpy(zero_copy_only=False)
            values = values.to_numpy()[missing]
        _check_objects(values, f"column {columns[i]!r}", f"df[{columns[i]!r}]")
    for level in range(df.index.nlevels):
        values = df.index.get_level_values(level) if df.index.nlevels > 1 else df.index
        if values.dtype == object:
            _check_objects(values, f"index level {df.index.names[level]!r}", "the index")


def _check_objects(values: Any, where: str, ref: str) -> None:
    import pandas as pd

    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind in _EXACT_OBJECTS:
        return
    example = next((v for v in values if v is not None and not (isinstance(v, float) and v != v)), None)
    raise InexactFrame(
        f"{where} holds Python objects ({kind}, e.g. {type(example).__name__} {example!r:.80}) that Parquet would "
        f"not give back exactly; convert them first: to JSON strings ({ref}.map(json.dumps)), to one type "
        f"({ref}.astype(str), {ref}.astype(float)), or to an Arrow nested dtype "
        f"({ref}.astype(pd.ArrowDtype(pa.list_(pa.int64()))), or pa.struct([...]))"
    )


def _simple(dtype: Any) -> bool:
    """Dtypes that pyarrow's pandas conversion gives back exactly without help (no probe needed)."""
    import numpy as np

    return isinstance(dtype, np.dtype) and (dtype.kind in "biuf" or dtype == np.dtype("datetime64[ns]"))


def _prepare_pandas(df: pd.DataFrame, ours: dict[str, Any]) -> _Prepared:
    import pandas as pd

    pa, _, _ = _import_arrow()
    _check_frame(df)
    dtypes = list(df.dtypes)
    source = df
    sparse: dict[str, str] = {}
    casts: dict[str, str] = {}
    fields = [_field_name(c) for c in df.columns]
    for i, (field_, dtype) in enumerate(zip(fields, dtypes)):
        if isinstance(dtype, pd.SparseDtype):
            if source is df:
                source = df.copy(deep=False)
            source.isetitem(i, df.iloc[:, i].sparse.to_dense())
            sparse[field_] = str(dtype)
        elif getattr(dtype, "kind", "") in "mM" and str(dtype) not in ("datetime64[ns]", "timedelta64[ns]"):
            casts[field_] = str(dtype)
    try:
        table = pa.Table.from_pandas(source, preserve_index=None)
    except Exception as exc:
        _check_values(df)  # (what it refuses, it refuses with its own words)
        if isinstance(exc, UnicodeError):
            raise ValueTypeError(f"a column holds text that is not valid Unicode ({exc}), such as a lone surrogate "
                                 "from a bad decode; repair it first, e.g. df[col] = df[col].str.encode('utf-8', "
                                 "'replace').str.decode('utf-8')") from None
        if not isinstance(exc, (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError)):
            raise
        message = str(exc)
        column = next((c for c in df.columns if f"column {c} " in message or f"column {c!s}" in message), None)
        where = f"column {column!r}" if column is not None else "a column"
        raise ValueTypeError(
            f"{where} cannot be stored as Parquet ({message.splitlines()[0]}). Columns of mixed Python objects "
            f"need one type: convert with df[{column or 'col'!r}].astype(str) (or a numeric type) first"
        ) from None
    found = [table.schema.get_field_index(f) for f in fields]  # (-1: no field of that name)
    arrow_types = [table.schema.field(j).type if j >= 0 else None for j in found]
    _check_values(df, strings={
        i: table.column(found[i]) for i, (t, at) in enumerate(zip(dtypes, arrow_types))
        if t == object and at is not None and (pa.types.is_string(at) or pa.types.is_large_string(at))})
    ours = dict(ours)
    if sparse:
        ours["sparse"] = sparse
    if casts:
        ours["casts"] = casts
    categoricals = _categorical_metadata(fields, dtypes)
    if categoricals:
        ours["categoricals"] = categoricals
    # ArrowDtype columns read back as pandas' own extension dtypes unless told otherwise.
    arrow_columns = [f for f, t in zip(fields, dtypes) if isinstance(t, pd.ArrowDtype)]
    if arrow_columns:
        ours["arrow_columns"] = arrow_columns
    # StringDtype comes in storages (python, pyarrow) and NA flavours (NA, nan) that Parquet does not tell apart.
    strings = {f: {"storage": t.storage, "na": "nan" if t.na_value is not pd.NA else "NA"}
               for f, t in zip(fields, dtypes) if isinstance(t, pd.StringDtype)}
    if strings:
        ours["string_dtypes"] = strings
    index = df.index
    if isinstance(index, (pd.DatetimeIndex, pd.TimedeltaIndex)) and index.freq is not None:
        ours["freq"] = index.freqstr
    levels = [index] if index.nlevels == 1 else [index.levels[i] for i in range(index.nlevels)]
    object_levels = [i for i, lv in enumerate(levels) if lv.dtype == object]
    if object_levels and not isinstance(index, pd.RangeIndex):
        ours["object_index"] = object_levels
    index_casts = {str(i): str(lv.dtype) for i, lv in enumerate(levels)
                   if getattr(lv.dtype, "kind", "") in "mM" and str(lv.dtype) not in ("datetime64[ns]",
                                                                                     "timedelta64[ns]")}
    if index_casts:
        ours["index_casts"] = index_casts
    if isinstance(index, pd.CategoricalIndex):  # Parquet loses the categories of an empty or sliced index
        ours["index_categories"] = _categorical_metadata(["index"], [index.dtype]).get("index")
    if not df.flags.allows_duplicate_labels:
        ours["allows_duplicate_labels"] = False
    if df.attrs:
        ours["attrs"] = df.attrs
    table = _with_ours(table, ours)
    _probe(df, table, dtypes, fields)
    pandas_meta = table.schema.pandas_metadata or {}
    index_names = [c if isinstance(c, str) else f"level_{i}"
                   for i, c in enumerate(pandas_meta.get("index_columns", [])) if isinstance(c, str)]
    return _Prepared(table, fields, [str(t) for t in dtypes], index_names)


def _probe(df: pd.DataFrame, table: pa.Table, dtypes: list[Any], fields: list[str]) -> None:
    """Convert the first rows back as ``get`` will, and refuse the frame unless they come back exactly.

    Only columns whose dtype needs more than pyarrow's own conversion are probed, so this costs the same at any
    width: a frame of 20,000 float columns probes one.
    """
    import pandas as pd

    k = min(len(df), _PROBE_ROWS)
    chosen = [i for i, t in enumerate(dtypes) if not _simple(t)]
    if not chosen and dtypes:
        chosen = [0]
    if len(chosen) == len(dtypes):
        want, sub = df.iloc[:k], table.slice(0, k)
    else:
        index_fields = [c for c in (table.schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)]
        want = df.iloc[:k].iloc[:, chosen]  # (rows first: df.iloc[:k, chosen] takes the columns whole, then slices)
        sub = table.select([fields[i] for i in chosen] + index_fields).slice(0, k)
    got = _to_pandas(sub, _ours(table.schema), _Rows(len(df), slice(0, k)))
    try:
        pd.testing.assert_frame_equal(got, want, check_exact=True, check_freq=True, check_flags=True)
        assert got.attrs == want.attrs, f"attrs differ: {got.attrs!r} != {want.attrs!r}"
    except AssertionError as exc:
        said = " ".join(str(exc).split())[:300]
        raise InexactFrame(f"this frame would not come back exactly from Parquet ({said}); convert the columns or "
                           "labels involved to a plain type first (e.g. df.columns = df.columns.map(str))") from None


def _categorical_metadata(fields: list[str], dtypes: list[Any]) -> dict[str, Any]:
    """Categories of categorical columns, which Parquet loses when they are empty or not strings."""
    import pandas as pd

    out: dict[str, Any] = {}
    for name, dtype in zip(fields, dtypes):
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
        out[name] = {"categories": values, "ordered": bool(dtype.ordered), "dtype": str(cats.dtype)}
    return out


def _categorical_dtype(spec: dict[str, Any]) -> Any:
    import pandas as pd

    try:
        index = pd.Index(spec["categories"], dtype=spec["dtype"])
    except (TypeError, ValueError):
        index = pd.Index(spec["categories"])
    return pd.CategoricalDtype(index, ordered=spec["ordered"])


class _Rows:
    """Which rows of a stored frame a table holds: all, a slice (as ``iloc``) or positions (as a boolean mask).
    Everything here costs the size of the rows read, never of the whole frame (a ``head(5)`` of 100M rows)."""

    def __init__(self, total: int, rows: slice | None = None, mask: Any = None) -> None:
        self.total = total
        self.rows = rows
        self.mask = mask

    def positions(self) -> Any:
        """The positions read, in the order read (None: all of them)."""
        import numpy as np

        if self.mask is not None:
            return np.asarray(self.mask, dtype=np.intp)
        return None if self.rows is None else np.arange(*self.rows.indices(self.total), dtype=np.intp)

    def index(self, full: Any) -> Any:
        import numpy as np

        if self.mask is not None:  # df[mask] takes the rows it keeps: so do we
            return full.take(np.asarray(self.mask, dtype=np.intp))
        return full if self.rows is None else full[self.rows]

    def part_labels(self, part_ranges: list[list[int]], name: Any) -> Any:
        """The labels of the rows read when the parts' RangeIndexes do not go on from each other (what
        ``pd.concat`` of the parts gives): ``part_ranges`` holds each part's (start, rows, step)."""
        import numpy as np
        import pandas as pd

        starts, counts, steps = (np.array(v, dtype=np.int64).reshape(-1) for v in zip(*part_ranges))
        offsets = np.concatenate([[0], np.cumsum(counts)])
        at = self.positions()
        if at is None:
            at = np.arange(self.total, dtype=np.int64)
        which = np.searchsorted(offsets, at, side="right") - 1
        return pd.Index(starts[which] + (at - offsets[which]) * steps[which], dtype=np.int64, name=name)

    def freq(self, freq: Any, index: Any) -> Any:
        """The freq pandas gives these rows of an index with ``freq`` (``index`` holds the rows read): worked out
        by pandas itself, on a stand-in index of the same freq over the span of the rows read."""
        import pandas as pd

        at = self.positions()
        if at is None:
            return freq
        lo, hi = (int(at.min()), int(at.max())) if len(at) else (0, 0)
        first = int(at[0]) if len(at) else 0
        if isinstance(index, pd.DatetimeIndex):
            anchor = index[0] - (first - lo) * freq if len(index) else \
                freq.rollforward(pd.Timestamp("2000-01-01", tz=index.tz))
            stand_in = pd.date_range(anchor, periods=hi - lo + 1, freq=freq, unit=index.unit)
        else:
            anchor = index[0] - (first - lo) * freq if len(index) else pd.Timedelta(0)
            stand_in = pd.timedelta_range(anchor, periods=hi - lo + 1, freq=freq, unit=index.unit)
        if self.rows is not None:  # the same slice, shifted to start at the stand-in's first row
            start, stop, step = self.rows.indices(self.total)
            shifted = slice(start - lo, None if stop - lo < 0 else stop - lo, step)
            return stand_in[shifted].freq if len(at) else stand_in[:0].freq
        return stand_in.take(at - lo).freq


def _convert(table: pa.Table, to: str | None, rows: _Rows, *, consume: bool = False) -> Any:
    """The stored type (or ``to``) from a table read back; ``rows`` says which rows it holds. ``consume``: the
    caller holds no other table sharing its columns and never uses it again (pyarrow's ``self_destruct``: using it
    afterwards crashes the process); each column's memory then goes as soon as pandas has its copy."""
    ours = _ours(table.schema)
    kind = ours.get("kind", "pandas")
    stored = "pandas" if kind in ("pandas", "series") else kind
    to = to or stored
    if stored != "pandas" or to != "pandas":
        meta = dict(table.schema.metadata or {})
        meta.pop(_META_KEY, None)
        if stored == "arrow" and not ours.get("metadata"):
            meta = {}
        plain = table.replace_schema_metadata(meta or None)
        if "schema" in ours:
            plain = _cast_to_stored(plain, ours["schema"])
        if to == "arrow":
            return plain
        if to == "polars":
            return _import_polars().from_arrow(plain)
        if stored != "pandas":
            return plain.to_pandas()
    df = _to_pandas(table, ours, rows, consume=consume)
    if kind == "series":
        s = df.iloc[:, 0]
        s.name = ours.get("name")
        s.attrs = dict(df.attrs)
        if not df.flags.allows_duplicate_labels:
            s = s.set_flags(allows_duplicate_labels=False)
        return s
    return df


def _to_pandas(table: pa.Table, ours: dict[str, Any], rows: _Rows, *, consume: bool = False) -> pd.DataFrame:
    import pandas as pd

    import pyarrow as pa

    pandas_meta = table.schema.pandas_metadata or {}
    arrow_columns = set(ours.get("arrow_columns", []))
    light = table
    if arrow_columns and pandas_meta:
        # ArrowDtype columns are taken from the table as they are (below); pyarrow's pandas conversion gets a
        # column of nulls in their place (it cannot parse the dtype names of nested ArrowDtypes, and a
        # ``types_mapper`` would turn off its handling of the other columns' extension types).
        for col in pandas_meta.get("columns", []):
            if col.get("field_name", col.get("name")) in arrow_columns:
                col["numpy_type"] = "object"
        for i, name in enumerate(table.column_names):
            if name in arrow_columns:
                light = light.set_column(i, name, pa.nulls(table.num_rows, pa.null()))
        meta = dict(table.schema.metadata or {})
        meta[b"pandas"] = json.dumps(pandas_meta).encode()
        light = light.replace_schema_metadata(meta)
    names = table.column_names
    if consume:  # what _restore_dtypes reads of the table once the conversion has emptied it
        later = {c.get("field_name", c.get("name")) for c in pandas_meta.get("columns", [])
                 if c.get("numpy_type") == "object"} | arrow_columns
        table = table.select([n for n in names if n in later])
    # Strings that were read through a dictionary are turned back into their own dtype below; other strings are
    # not worth deduplicating (that hashes every value; pandas 3 keeps them in Arrow anyway). A consumed table's
    # columns are freed one by one as they are copied: on one thread, one column is in memory twice at a time.
    df = light.to_pandas(deduplicate_objects=False, self_destruct=consume, use_threads=not consume)
    del light
    if consume:
        pa.default_memory_pool().release_unused()
    df = _restore_dtypes(table, df, ours, pandas_meta, names)
    return _restore_rows(df, ours, pandas_meta, rows)


def _restore_rows(df: pd.DataFrame, ours: dict[str, Any], pandas_meta: dict[str, Any], rows: _Rows) -> pd.DataFrame:
    """Row labels as the matching pandas operation keeps them; index dtypes, freq, flags and attrs."""
    import pandas as pd

    index_columns = pandas_meta.get("index_columns", [])
    if len(index_columns) == 1 and isinstance(index_columns[0], dict) and index_columns[0].get("kind") == "range":
        spec = index_columns[0]
        if ours.get("part_ranges"):  # parts whose labels do not go on from each other: what pd.concat gives
            index = rows.part_labels(ours["part_ranges"], spec.get("name"))
        else:
            index = rows.index(pd.RangeIndex(int(spec["start"]), int(spec["stop"]), int(spec["step"]),
                                             name=spec.get("name")))
        if len(df) != len(index):  # no columns: Parquet kept no rows
            df = df.reindex(index)
        else:
            df.index = index
    levels = ours.get("object_index", [])
    if levels or ours.get("index_casts"):
        casts = {int(k): v for k, v in ours.get("index_casts", {}).items()}
        if df.index.nlevels == 1:
            if levels:
                df.index = df.index.astype(object)
            elif 0 in casts and str(df.index.dtype) != casts[0]:
                df.index = df.index.astype(casts[0])
        else:
            new = [lv.astype(object) if i in levels else lv.astype(casts[i]) if i in casts else lv
                   for i, lv in enumerate(df.index.levels)]
            df.index = df.index.set_levels(new)
    if ours.get("index_categories"):
        wanted = _categorical_dtype(ours["index_categories"])
        if df.index.dtype != wanted:
            df.index = pd.CategoricalIndex(df.index.astype(object), dtype=wanted, name=df.index.name)
    freq = ours.get("freq")
    if freq is not None and isinstance(df.index, (pd.DatetimeIndex, pd.TimedeltaIndex)):
        from pandas.tseries.frequencies import to_offset

        wanted = rows.freq(to_offset(freq), df.index)
        if wanted is not None:
            try:
                df.index = type(df.index)(df.index, freq=wanted)
            except ValueError:  # parts appended with a gap: no freq fits, as pd.concat would find
                pass
    if "attrs" in ours:
        df.attrs = ours["attrs"]
    if ours.get("allows_duplicate_labels") is False:
        df = df.set_flags(allows_duplicate_labels=False)
    return df


def _restore_dtypes(table: pa.Table, df: pd.DataFrame, ours: dict[str, Any],
                    pandas_meta: dict[str, Any], names: list[str] | None = None) -> pd.DataFrame:
    """Put back what Parquet's pandas metadata cannot: categories, Arrow-backed dtypes, units, sparse, ...

    Columns are found by position (labels may be ints or tuples), each in constant time: linear in the width.
    ``names``: the table's column names, where ``table`` holds only the columns read here.
    """
    import numpy as np
    import pandas as pd

    index_fields = {c for c in pandas_meta.get("index_columns", []) if isinstance(c, str)}
    fields = [n for n in (table.column_names if names is None else names) if n not in index_fields]
    if len(fields) != df.shape[1]:  # pragma: no cover - pyarrow keeps one pandas column per data field
        raise AssertionError(f"{df.shape[1]} columns for {len(fields)} fields")
    position = {f: i for i, f in enumerate(fields)}
    dtypes = list(df.dtypes)

    def column(field_: str) -> pd.Series:
        return df.iloc[:, position[field_]]

    original = {c.get("field_name", c.get("name")): c for c in pandas_meta.get("columns", [])}
    repetitive = set(ours.get("repetitive_strings", []))
    for name, col in original.items():
        i = position.get(name)
        if i is None or col.get("numpy_type") != "object" or name in ours.get("arrow_columns", ()):
            continue
        dtype = dtypes[i]
        if name in repetitive and isinstance(dtype, pd.CategoricalDtype):
            # Categorical -> object by a take on the categories: one str object per distinct value; nulls None.
            cat = column(name)
            codes = cat.cat.codes.to_numpy()
            values = np.empty(len(cat.cat.categories) + 1, dtype=object)  # a null's code, -1, takes the last: None
            values[:-1] = np.asarray(cat.cat.categories, dtype=object)
            df.isetitem(i, pd.Series(values.take(codes), index=df.index, dtype=object))
        elif dtype != object and not isinstance(dtype, pd.CategoricalDtype):
            # pandas 3 reads object columns of strings back as its str dtype: keep what was stored (None stays None).
            values = table.column(name).to_numpy(zero_copy_only=False)
            df.isetitem(i, pd.Series(values, index=df.index, dtype=object))
    for name, spec in ours.get("string_dtypes", {}).items():
        if name in position:
            wanted = pd.StringDtype(spec["storage"], na_value=np.nan if spec["na"] == "nan" else pd.NA)
            if dtypes[position[name]] != wanted:
                df.isetitem(position[name], column(name).astype(wanted))
    for name in ours.get("arrow_columns", []):
        if name in position and not isinstance(df.iloc[:, position[name]].dtype, pd.ArrowDtype):
            df.isetitem(position[name], pd.Series(pd.arrays.ArrowExtensionArray(table.column(name)), index=df.index))
    for name, dtype_name in {**ours.get("casts", {}), **ours.get("sparse", {})}.items():
        if name in position and str(df.iloc[:, position[name]].dtype) != dtype_name:
            df.isetitem(position[name], column(name).astype(pd.api.types.pandas_dtype(dtype_name)))
    for name, spec in ours.get("categoricals", {}).items():
        if name not in position:
            continue
        wanted = _categorical_dtype(spec)
        if df.iloc[:, position[name]].dtype != wanted:
            df.isetitem(position[name], column(name).astype(wanted))
    return df


def _write_parquet(table: pa.Table, sink: Any, compression: str, level: int | None,
                   threads: int | None = None) -> int:
    """Write ``table`` as Parquet to ``sink``, encoded on ``threads`` threads (default: the cores there are);
    return the row-group size used."""
    low_card, high_card = _string_columns(table)
    repetitive = [c for c in low_card if not _is_dictionary(table.schema.field(c).type)]
    if repetitive:  # read back through a dictionary: one Python str per distinct value, not per row
        ours = _ours(table.schema)
        ours["repetitive_strings"] = repetitive
        table = _with_ours(table, ours)
    row_bytes = max(1, table.nbytes // max(1, table.num_rows))
    row_group_size = max(MIN_ROW_GROUP, min(ROW_GROUP_SIZE, ROW_GROUP_BYTES // row_bytes))
    parquet_write.write_table(  # pq.write_table's bytes, the row groups encoded side by side
        table, sink, row_group_size=row_group_size, threads=threads, compression=compression, compression_level=level,
        # Dictionaries only where they pay (categoricals, repetitive strings); statistics everywhere except on
        # high-cardinality strings, where they cost time and rarely prune a row group.
        use_dictionary=low_card,
        write_statistics=[c for c in table.column_names if c not in high_card] if high_card else True,
        store_schema=True,
    )
    return row_group_size


def _object_string_columns(schema: pa.Schema) -> list[str]:
    """Repetitive string columns that pandas holds as Python objects (pandas < 3, or dtype=object): reading them
    through a dictionary makes one str per distinct value instead of one per row. pandas 3's str columns stay
    in Arrow and need none of this."""
    repetitive = _ours(schema).get("repetitive_strings", [])
    if not repetitive:
        return []
    columns = {c.get("field_name", c.get("name")): c for c in (schema.pandas_metadata or {}).get("columns", [])}
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
    is_view = getattr(pa.types, "is_string_view", lambda _: False)
    for name, t in zip(table.column_names, table.schema.types):
        if pa.types.is_dictionary(t):
            low.append(name)
        elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) \
                or pa.types.is_large_binary(t) or is_view(t):
            sample = table.column(name).slice(0, _SAMPLE)
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
    chosen = set(columns)
    extra = [c for c in meta.get("index_columns", []) if isinstance(c, str) and c not in chosen]
    return [*columns, *extra]


def _empty_table(pf: Any, fields: list[str] | None) -> pa.Table:
    """No rows, with the schema the reader would give (dictionary-read columns included)."""
    table = pf.schema_arrow.empty_table()
    return table if fields is None else table.select(fields)
