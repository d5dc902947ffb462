"""Dask frames: each partition is written and read by the workers, straight to and from the bucket.

``FrameStore.put(name, ddf)`` has every worker turn its partitions into Parquet parts, hash them (the blob key and
the chunk hashes) and upload them; the client only registers the parts and commits one version listing them, so
no row passes through it. ``FrameStore.get(name, to="dask")`` returns a dask DataFrame whose partitions are the
version's parts, each read on a worker through ranged GETs checked against the part's chunk hashes, with
``columns=`` and ``filters=`` pushed down to the row groups.

The workers reach the bucket with the configuration a ``distributed`` worker plugin carries (``dask_plugin.py``,
registered under a random token per store): the tasks carry only the token, and a worker finds the plugin by it,
so credentials appear in no task, repr, dashboard or log. Without a ``distributed`` client (dask's threaded
scheduler) the token is looked up in this process. ``DaskFrameStore``, the frame store a BucketSQLite builds,
sends dask values here. Dask stays optional: ``pip install "bh_notebook[dask]"``; nothing imports it until a
dask value is met.
"""

from __future__ import annotations

import hashlib
import io
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import IntegrityError, ObjectNotFound, ValueTypeError
from ..storage import BucketClient, open_bucket
from ..storage.bucket import ChainReader, ProgressCallback
from .base import check_name
from .files import ChunkHashes, _ChunkHasher, _describe
from .frames import FrameStore
from .versioned import check_metadata

if TYPE_CHECKING:
    from ..config import BucketConfig
    from .frames import FramePart, FrameVersion
    from .versioned import VersionedStore

PARQUET = "application/vnd.apache.parquet"


def import_dask() -> tuple[Any, Any]:
    """(dask, dask.dataframe), or an install hint."""
    try:
        import dask
        import dask.dataframe as dd
    except ImportError:
        raise ImportError('Dask frames need dask: pip install "bh_notebook[dask]"') from None
    return dask, dd


def is_dask_frame(obj: object) -> bool:
    """Whether ``obj`` is a dask DataFrame or Series (dask is never imported for this)."""
    module = type(obj).__module__
    return module.split(".")[0] == "dask" and type(obj).__name__ in ("DataFrame", "Series")


@dataclass(frozen=True)
class _Spec:
    """What a worker needs to reach the store's blobs: the bucket, where blobs live, how they are hashed and
    written."""

    config: BucketConfig
    prefix: str
    chunk_size: int
    compression: str
    compression_level: int | None
    #: An object older than this (by the bucket's clock) is touched before it is relied on (FileStore's rule).
    fresh_seconds: float = 60.0

    def __repr__(self) -> str:  # never the credentials, wherever a spec is shown
        return f"<bh_notebook bucket spec {self.config.location}>"


_SPECS: dict[str, _Spec] = {}
_BUCKETS: dict[str, BucketClient] = {}
_LOCK = threading.Lock()


def _bucket(token: str) -> tuple[_Spec, BucketClient]:
    spec = _SPECS.get(token)
    if spec is None:  # a worker: the plugin registered under the token carries it
        try:
            from distributed import get_worker

            spec = getattr(get_worker().plugins.get(f"bh-notebook-{token}"), "spec", None)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            raise RuntimeError("this worker was not given the bucket (bh_notebook's worker plugin is missing): run "
                               "the computation on the distributed client the frame was opened with")
        _SPECS[token] = spec
    with _LOCK:
        bucket = _BUCKETS.get(token)
        if bucket is None:
            bucket = _BUCKETS[token] = open_bucket(spec.config)
    return spec, bucket


def register(store: VersionedStore[Any]) -> str:
    """A token under which this process and every worker of the current ``distributed`` client (if any) find
    the store's bucket; one per store."""
    token: str | None = getattr(store, "_dask_token", None)
    if token is None:
        files = store.files
        config = getattr(store, "bucket_config", None)
        if config is None:
            raise ValueTypeError("Dask needs the stores of a BucketSQLite (bh.frames, bh.arrays): the workers open "
                                 "the bucket from its BucketConfig")
        spec = _Spec(config, files.prefix, files.chunk_size, getattr(store, "compression", "none"),
                     getattr(store, "compression_level", None), float(files.fresh_seconds))
        token = uuid.uuid4().hex
        _SPECS[token] = spec
        store._dask_token = token  # type: ignore[attr-defined]
    try:
        from distributed import get_client

        client = get_client()
    except (ImportError, ValueError):
        return token
    # Every time (by name, so a worker that has it keeps it): a new client, or new workers, get it too.
    from .dask_plugin import BucketPlugin

    client.register_plugin(BucketPlugin(token, _SPECS[token]), name=f"bh-notebook-{token}")
    return token


def age_of(info: Any) -> float:
    """An object's age by the bucket's clock (this machine's when the bucket did not say)."""
    import time

    return info.age if info.age is not None else max(0.0, time.time() - info.last_modified)


# -- writing: on the workers ---------------------------------------------------------------------------------


def _write_partition(pdf: Any, token: str, name: str, plain_index: bool = False) -> dict[str, Any]:
    """One partition as one Parquet part: written to memory, hashed, uploaded (unless the bucket holds those bytes
    already, fresh); what the client needs to register it. ``plain_index``: a RangeIndex is stored as a column
    of labels (when other partitions' labels are not a RangeIndex)."""
    import pandas as pd

    from .frames import _labels_of, _prepare, _read_back_schema, _write_parquet

    spec, bucket = _bucket(token)
    if plain_index and isinstance(pdf.index, pd.RangeIndex):
        pdf = pdf.set_axis(pd.Index(pdf.index.to_numpy(), dtype="int64", name=pdf.index.name), axis=0)
    prepared = _prepare(pdf)
    table = prepared.table
    sink = io.BytesIO()
    # (one thread: the cluster's workers already run partitions side by side)
    row_group_size = _write_parquet(table, sink, spec.compression, spec.compression_level, threads=1)
    data = sink.getbuffer()
    bh_key = hashlib.sha256(data).hexdigest()
    chunker = _ChunkHasher(spec.chunk_size)
    chunker.update(data)
    object_key = spec.prefix + bh_key
    describe = _describe(PARQUET, ("frame", name))
    info = bucket.head(object_key)
    if info is None or info.size != len(data):
        bucket.put_stream(ChainReader(data), object_key, size=len(data), **describe)
    elif age_of(info) > spec.fresh_seconds:  # old: renewed so gc's grace runs from now
        bucket.touch(object_key, **describe)
    range_start, range_step = _labels_of(table.schema.metadata)
    return {
        "bh_key": bh_key, "nbytes": len(data), "n_rows": table.num_rows,
        "row_groups": max(1, -(-table.num_rows // row_group_size)),
        "range_start": range_start, "range_step": range_step,
        "chunk_size": spec.chunk_size, "digests": chunker.digests(),
        "schema": _read_back_schema(table).serialize().to_pybytes(),
        "columns": prepared.columns, "dtypes": prepared.dtypes, "index_names": prepared.index_names,
    }


def put(store: FrameStore, name: str, ddf: Any, metadata: dict[str, str], *,
        after: FrameVersion | None = None) -> FrameVersion:
    """``FrameStore.put`` of a dask DataFrame or Series: the workers write the parts; one version lists them
    (``after``: a version whose parts come first, for ``append``)."""
    import json

    import pyarrow as pa

    from .frames import FramePart, _check_appendable, _with_labels

    dask, _ = import_dask()
    token = register(store)
    before: list[FramePart] = []
    reference = []  # what every partition must match: the stored version's first part (appending), else none
    if after is not None:
        before = store._parts(after)
        stored = store._part_schema(before[0])  # one footer read
        before = _with_labels(before, stored)
        reference = [(_Described(name, after.n_rows, after.version), stored)]

    def write(plain_index: bool) -> list[dict[str, Any]]:
        tasks = [dask.delayed(_write_partition)(part, token, name, plain_index) for part in ddf.to_delayed()]
        done = list(dask.compute(*tasks))
        return [w for w in done if w["n_rows"]] or done[:1]

    def mismatch(written: list[dict[str, Any]]) -> str | None:
        schemas = [pa.ipc.read_schema(pa.py_buffer(w["schema"])) for w in written]
        for i, schema in enumerate(schemas):
            against = reference or ([(_Described(name, written[0]["n_rows"]), schemas[0])] if i else [])
            for described, first in against:
                try:
                    _check_appendable(described, first, schema)  # type: ignore[arg-type]
                except ValueTypeError as exc:
                    said = str(exc).split(": ", 1)[-1].replace(" Nothing was stored.", "")
                    return f"partition {i} of the dask frame for {name!r} does not match {said}"
        return None

    written = write(False)
    if not written:
        raise ValueTypeError(f"the dask frame for {name!r} has no partitions")
    problem = mismatch(written)
    if problem is not None and "RangeIndex" in problem:
        written = write(True)  # some partitions' labels are a RangeIndex, others not: store them all as labels
        problem = mismatch(written)
    if problem is not None:
        raise ValueTypeError(f"{problem}. Give the columns explicit dtypes (ddf.astype) and put it again; the "
                             "parts already uploaded are collected by gc.")
    for w in written:
        store.files.adopt(w["bh_key"], w["nbytes"], chunks=(w["chunk_size"], w["digests"]),
                          filename=f"{name.rsplit('/', 1)[-1]}.parquet", mime=PARQUET)
    parts = [*before, *(FramePart(w["bh_key"], w["n_rows"], w["nbytes"], w["range_start"], w["range_step"])
                         for w in written)]
    for part in parts:  # the workers may have uploaded some long ago: present, and fresh enough to outlive our commit
        store.files.rely(part.bh_key, entry=("frame", name))
    first = written[0]
    if after is not None:
        return store._add_parts(name, parts, metadata, {
            "columns": json.dumps(after.columns), "dtypes": json.dumps(after.dtypes),
            "index_names": json.dumps(after.index), "row_groups": after.row_groups + sum(w["row_groups"]
                                                                                        for w in written)})
    return store._add_parts(name, parts, metadata, {
        "columns": json.dumps(first["columns"]), "dtypes": json.dumps(dict(zip(first["columns"], first["dtypes"]))),
        "index_names": json.dumps(first["index_names"]), "row_groups": sum(w["row_groups"] for w in written)})


@dataclass(frozen=True)
class _Described:
    """What ``_check_appendable`` reads of a version, for comparing two partitions."""

    name: str
    n_rows: int
    version: int = 0


# -- reading: on the workers ---------------------------------------------------------------------------------


class _WorkerBlobs:
    """What a ``RangeFile`` needs of a FileStore, on a worker: verified ranged reads of blobs whose chunk hashes
    the task carries."""

    def __init__(self, token: str, chunks: dict[str, ChunkHashes | None]) -> None:
        self._spec, self._bucket = _bucket(token)
        self._chunks = chunks

    def chunk_hashes(self, bh_key: str) -> ChunkHashes | None:
        return self._chunks.get(bh_key)

    def get_range_verified(self, bh_key: str, start: int, end: int | None = None) -> bytes:
        chunks = self._chunks.get(bh_key)
        key = self._spec.prefix + bh_key
        if chunks is None:  # a part put before chunk hashes: read unverified, as the store does
            return self._bucket.get_range(key, start, end)
        start, end, _ = slice(start, end).indices(chunks.size)
        if end <= start:
            return b""
        lo, hi = chunks.span(start, end)
        try:
            data = self._bucket.get_range(key, lo, hi)
        except ObjectNotFound:
            raise IntegrityError(f"part {bh_key[:12]} is missing from the bucket; bh.check() says more") from None
        if len(data) != hi - lo:
            raise IntegrityError(f"part {bh_key[:12]} in the bucket is not the size the catalog says")
        hasher = _ChunkHasher(chunks.chunk_size)
        hasher.update(data)
        chunks.check(lo, hasher.digests())
        return bytes(data[start - lo:end - lo])


def _read_partition(task: tuple[str, FrameVersion, FramePart, ChunkHashes | None, Any, list[str]],
                    columns: Any = None) -> Any:
    """One part as a pandas DataFrame (its own row labels), reading only what ``columns`` and ``filters`` need.
    dask passes ``columns=`` itself when a computation uses only some (``ddf.x.sum()`` reads one column)."""
    from .frames import FrameStore, _convert, _filter_expression, _import_arrow, _Rows

    token, info, part, chunks, filters, dictionary = task
    if columns is not None and not isinstance(columns, list):
        import pandas as pd

        columns = list(columns) if isinstance(columns, (tuple, pd.Index)) else [columns]
    _, pq, ds = _import_arrow()
    reader = FrameStore.__new__(FrameStore)  # only its read path is used: no catalog on a worker
    reader._files = _WorkerBlobs(token, {part.bh_key: chunks})  # type: ignore[assignment]
    expr = _filter_expression(filters, pq, ds)
    table, found, schema = reader._read_part(info, part, columns=columns, filters=filters, expr=expr, local=None,
                                             progress=None, dictionary=dictionary)
    rows = _Rows(part.n_rows, mask=found) if expr is not None else _Rows(part.n_rows)
    return _convert(table.replace_schema_metadata(schema.metadata), "pandas", rows)


def get(store: FrameStore, info: FrameVersion, columns: Any, filters: Any) -> Any:
    """``FrameStore.get(..., to="dask")``: one partition per part, read on the workers."""
    from .frames import _object_string_columns

    _, dd = import_dask()
    token = register(store)
    parts = store._parts(info)
    meta = store._read(info, columns=columns, filters=filters, rows=None, head=0, to="pandas", progress=None)
    dictionary = _object_string_columns(store._part_schema(parts[0]))
    tasks = [(token, info, p, store.files.chunk_hashes(p.bh_key), filters, dictionary) for p in parts]
    return dd.from_map(_read_partition, tasks, meta=meta, label=f"bh-frame-{info.name}", enforce_metadata=False,
                       columns=None if columns is None or not hasattr(meta, "columns") else list(meta.columns))


class DaskFrameStore(FrameStore):
    """The frame store a BucketSQLite builds: a FrameStore that also takes dask DataFrames and Series (written by
    the workers) and gives them (``get(..., to="dask")``). dask is imported only when one is met."""

    @staticmethod
    def accepts(value: Any) -> bool:
        return is_dask_frame(value) or FrameStore.accepts(value)

    def put(self, name: str, df: Any, *, metadata: dict[str, str] | None = None,
            progress: ProgressCallback | None = None) -> FrameVersion:
        """As ``FrameStore.put``; a dask DataFrame or Series is written partition by partition on the workers,
        each partition a part of the new version (nothing passes through this process)."""
        if not is_dask_frame(df):
            return super().put(name, df, metadata=metadata, progress=progress)
        check_name(name, "frame name")
        return put(self, name, df, check_metadata(metadata))

    def append(self, name: str, df: Any, *, metadata: dict[str, str] | None = None,
               progress: ProgressCallback | None = None) -> FrameVersion:
        """As ``FrameStore.append``; a dask frame's partitions become the new parts, written on the workers."""
        if not is_dask_frame(df) or name not in self:
            return super().append(name, df, metadata=metadata, progress=progress)
        check_name(name, "frame name")
        latest = self.info(name)
        meta = check_metadata(metadata) if metadata is not None else latest.metadata
        return put(self, name, df, meta, after=latest)

    def get(self, name: str, version: int | None = None, *, columns: list[Any] | None = None,
            filters: Any = None, rows: slice | None = None, to: str | None = None,
            progress: ProgressCallback | None = None) -> Any:
        """As ``FrameStore.get``; ``to="dask"`` gives a dask DataFrame with one partition per part, each read on a
        worker (``columns=`` and ``filters=`` reach the row groups; no ``rows=``)."""
        if to != "dask":
            return super().get(name, version, columns=columns, filters=filters, rows=rows, to=to, progress=progress)
        if rows is not None:
            raise ValueTypeError("rows= is not for to='dask' (its partitions are the parts); filter the frame "
                                 "instead, or use .partitions[...]")
        return get(self, self.info(name, version), columns, filters)


__all__ = ["DaskFrameStore", "get", "import_dask", "is_dask_frame", "put", "register"]
