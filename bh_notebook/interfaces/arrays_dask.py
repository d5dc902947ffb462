"""Arrays beyond memory: a dask array streamed into one plain ``.npy`` blob, and read back as a dask array whose
blocks are ranged, verified reads on the workers.

``ArrayStore.put(name, x)`` for a dask array computes one block of rows at a time (the array is rechunked to whole
rows first) and streams the ``.npy`` header and the blocks' bytes into one upload, hashing them on the way; the
content key is known only at the end, so the bytes go to a key of their own beside the blobs
(``FileStore.incoming_prefix``, which gc and check do not count as blobs) and are copied to ``<prefix><sha256>``
on the server (an interrupted put leaves a stream there that gc removes after a day). The client holds one
block at a time. An ``np.memmap`` needs none of this: its pages are read from the file as they are streamed.

``ArrayStore.get(name, to="dask", chunks=...)`` returns a dask array of row blocks; each block is one ranged GET
on a worker, checked against the blob's chunk hashes.
"""

from __future__ import annotations

import hashlib
import io
import math
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ValueTypeError
from ..storage.bucket import ProgressCallback
from .arrays import ArrayStore
from .base import check_name
from .files import _ChunkHasher, _describe
from .frames_dask import _WorkerBlobs, import_dask, register
from .versioned import check_metadata

if TYPE_CHECKING:
    from .arrays import ArrayVersion
    from .files import ChunkHashes

NPY = "application/x-npy"
#: Rows per dask block of ``get(to="dask")`` by default: about this many bytes.
BLOCK_BYTES = 128 * 1024 * 1024


def is_dask_array(obj: object) -> bool:
    return type(obj).__module__.split(".")[0] == "dask" and type(obj).__name__ == "Array"


class _BlockReader(io.RawIOBase):
    """The ``.npy`` bytes of a dask array: its header, then each block of whole rows as it is computed, hashed as
    they are read. The next block is computed while this one is uploaded: at most two are held."""

    def __init__(self, header: bytes, x: Any, chunk_size: int) -> None:
        super().__init__()
        self._header = header
        self._blocks = iter(range(x.numblocks[0] if x.ndim else 0))
        self._x = x
        self._current = memoryview(header)
        self.sha = hashlib.sha256()
        self.chunks = _ChunkHasher(chunk_size)
        self.size = len(header) + int(x.nbytes)
        self._read = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="bh-dask-block")
        self._pending = self._submit()

    def readable(self) -> bool:
        return True

    def _submit(self) -> Future[np.ndarray[Any, Any]] | None:
        i = next(self._blocks, None)
        return None if i is None else self._pool.submit(lambda: np.ascontiguousarray(self._x.blocks[i].compute()))

    def _next(self) -> bool:
        if self._pending is None:
            return False
        block = self._pending.result()
        self._pending = self._submit()
        self._current = block.reshape(-1).view(np.uint8).data if block.nbytes else memoryview(b"")
        return True

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._pool.shutdown(wait=True)
        super().close()

    def readinto(self, b: Any) -> int:
        out = memoryview(b).cast("B")
        while not self._current.nbytes:
            if not self._next():
                return 0
        n = min(out.nbytes, self._current.nbytes)
        piece = self._current[:n]
        out[:n] = piece
        self.sha.update(piece)
        self.chunks.update(piece)
        self._current = self._current[n:]
        self._read += n
        return n


def put(store: ArrayStore, name: str, x: Any, metadata: dict[str, str]) -> ArrayVersion:
    """``ArrayStore.put`` of a dask array, one block of rows at a time."""
    import json

    from .arrays import _npy_header, _refuse_objects

    import_dask()
    dtype = np.dtype(x.dtype)
    _refuse_objects(dtype)
    if any(math.isnan(s) for s in x.shape):
        raise ValueTypeError("the dask array's shape is not known (x.compute_chunk_sizes() first)")
    if x.ndim:
        x = x.rechunk({i: -1 for i in range(1, x.ndim)})  # blocks of whole rows: their bytes follow each other
    stand_in = np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=x.shape, strides=(0,) * x.ndim)
    header = _npy_header(stand_in)
    files = store.files
    reader = _BlockReader(header, x, files.chunk_size)
    bucket = files.bucket
    assert bucket is not None
    incoming = f"{files.incoming_prefix}{uuid.uuid4().hex}"
    leaf = f"{name.rsplit('/', 1)[-1]}.npy"
    try:
        with reader:
            bucket.put_stream(reader, incoming, size=reader.size, **_describe(NPY, ("array", name)))
        bh_key = reader.sha.hexdigest()
        final = files.prefix + bh_key
        found = bucket.head(final)
        if found is None or found.size != reader.size:
            bucket.copy(incoming, final)
    finally:
        bucket.delete(incoming)
    files.adopt(bh_key, reader.size, chunks=(files.chunk_size, reader.chunks.digests()), filename=leaf, mime=NPY)
    files.rely(bh_key, entry=("array", name))  # (touched when those bytes were there already, and old)
    descr = np.lib.format.dtype_to_descr(dtype)
    return store._add_version(name, bh_key, int(x.nbytes), metadata, {
        "shape": json.dumps([int(s) for s in x.shape]), "dtype": str(dtype), "descr": repr(descr),
        "fortran_order": 0, "header": header,
    })


def _read_rows(token: str, bh_key: str, chunks: ChunkHashes | None, start: int, shape: tuple[int, ...],
               dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    """Rows of a ``.npy`` blob, on a worker: one ranged GET, checked against the chunk hashes."""
    nbytes = int(np.prod(shape)) * dtype.itemsize
    data = _WorkerBlobs(token, {bh_key: chunks}).get_range_verified(bh_key, start, start + nbytes)
    return np.frombuffer(bytearray(data), dtype=dtype).reshape(shape)


def get(store: ArrayStore, info: ArrayVersion, header_len: int, chunks: Any) -> Any:
    """``ArrayStore.get(..., to="dask")``: blocks of rows, each read on a worker."""
    dask, _ = import_dask()
    import dask.array as da

    if info.fortran_order:
        raise ValueTypeError(f"array {info.name!r} is stored in Fortran order, whose rows are not contiguous: get "
                             "it whole, or put it again in C order (np.ascontiguousarray)")
    if not info.shape:
        raise ValueTypeError(f"array {info.name!r} is 0-dimensional: get it whole")
    token = register(store)
    tail = tuple(info.shape[1:])
    row_bytes = max(1, info.dtype.itemsize * math.prod(tail))
    rows = chunks if chunks is not None else max(1, BLOCK_BYTES // row_bytes)
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
        raise ValueTypeError("chunks= is the number of rows per block, a positive int (e.g. chunks=100_000)")
    hashes = store.files.chunk_hashes(info.bh_key)
    blocks = []
    for lo in range(0, info.shape[0], rows):
        n = min(rows, info.shape[0] - lo)
        part = dask.delayed(_read_rows)(token, info.bh_key, hashes, header_len + lo * row_bytes, (n, *tail),
                                        info.dtype)
        blocks.append(da.from_delayed(part, shape=(n, *tail), dtype=info.dtype))
    if not blocks:
        return da.empty((0, *tail), dtype=info.dtype)
    return da.concatenate(blocks, axis=0)


class DaskArrayStore(ArrayStore):
    """The array store a BucketSQLite builds: an ArrayStore that also takes dask arrays (streamed one block of rows
    at a time) and gives them (``get(..., to="dask")``). dask is imported only when one is met."""

    def put(self, name: str, array: Any, *, metadata: dict[str, str] | None = None,
            progress: ProgressCallback | None = None) -> ArrayVersion:
        """As ``ArrayStore.put``; a dask array is computed one block of rows at a time and streamed into one .npy."""
        if not is_dask_array(array):
            return super().put(name, array, metadata=metadata, progress=progress)
        check_name(name, "array name")
        return put(self, name, array, check_metadata(metadata))

    def get(self, name: str, version: int | None = None, *, rows: slice | None = None,
            progress: ProgressCallback | None = None, to: str | None = None, chunks: int | None = None) -> Any:
        """As ``ArrayStore.get``; ``to="dask"`` gives a dask array of blocks of ``chunks`` rows (about 128 MiB each
        by default), each one ranged read on a worker, verified."""
        if to not in (None, "numpy", "dask"):
            raise ValueTypeError(f"to={to!r}: use to='numpy' (the default) or to='dask'")
        if to != "dask":
            return super().get(name, version, rows=rows, progress=progress)
        if rows is not None:
            raise ValueTypeError("rows= is not for to='dask': slice the dask array instead")
        info = self.info(name, version)
        if info.dtype.hasobject:
            raise ValueTypeError(f"array {name!r} claims dtype {info.dtype}, which would need pickle; it was not "
                                 "written by bh_notebook and is not loaded")
        return get(self, info, len(self._row(name, info.version)["header"]), chunks)


__all__ = ["DaskArrayStore", "get", "is_dask_array", "put"]
