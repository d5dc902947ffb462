"""Fingerprints of values in memory, so that a re-put of data this process has just put or got is known to be
unchanged without encoding and hashing it again.

A fingerprint is an XXH3-128 digest of everything a put reads from the value: its type, labels, dtypes, attrs and
every byte of every buffer. Putting the value again with the same fingerprint would write the same bytes, so the
put can answer with the version it already knows (``VersionedStore._unchanged``). A fingerprint is made only where
that is exact, and is ``None`` otherwise (the put then encodes as always):

- a NumPy array: the ``.npy`` header and data bytes, i.e. the blob itself;
- a pyarrow Table: its serialized schema (with metadata) and each chunk's offset, length and buffers;
- a pandas DataFrame or Series whose columns and index hold NumPy numbers, times and booleans, masked (nullable)
  values, Arrow-backed values (pandas' default strings from 3.0) or categoricals of those, with labels and attrs
  that pickle. Object columns (Python strings in pandas 2), a MultiIndex, sparse, period and interval columns get
  none: reading their bytes would not say whether the objects behind them changed.

XXH3 is not a cryptographic hash: a fingerprint guards against one's own edits, not against an adversary, who
could only collide their own process's data. The blob's key stays the SHA-256 of its content.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np


class _Inexact(Exception):
    """This value has no exact fingerprint."""


class _Digest:
    def __init__(self, objects: list[tuple[Any, Any, bytes]] | None = None) -> None:
        import xxhash

        self._h = xxhash.xxh3_128()
        #: Where object columns go, hashed by their pointers (None: they have no fingerprint); see ``fingerprint``.
        self._objects = objects

    def pointers(self, arr: np.ndarray[Any, Any], owner: Any) -> None:
        """Object values (a column, or neighbouring columns of a 2-D block) by the addresses they hold, which say
        what they hold only while those objects stay alive (``fingerprint``'s ``objects``)."""
        if self._objects is None:
            raise _Inexact
        flat = np.ascontiguousarray(arr).reshape(-1)  # (a strided view: its pointers copied, the same addresses)
        digest = addresses_digest(flat)
        self.tag("objects", arr.shape)
        self._h.update(digest)
        self._objects.append((owner, flat, digest))

    def tag(self, *items: Any) -> None:
        """Small things (type names, labels, dtypes, attrs), pickled; each one is framed by its length."""
        try:
            data = pickle.dumps(items, protocol=4)
        except Exception as exc:  # noqa: BLE001 - anything that does not pickle has no fingerprint
            raise _Inexact from exc
        self.raw(data)

    def raw(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        self._h.update(len(view).to_bytes(8, "little"))
        self._h.update(view)

    def numpy(self, arr: np.ndarray[Any, Any]) -> None:
        self._numpy_head(arr)
        order = "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"
        flat = arr.T if order == "F" else np.ascontiguousarray(arr)  # (a strided view: hashed through a copy)
        self._h.update(flat.reshape(-1).view(np.uint8).data if flat.size else b"")

    def _numpy_head(self, arr: np.ndarray[Any, Any]) -> None:
        """Everything of an array but its bytes, and their length: the bytes follow, in the ``.npy``'s order."""
        if arr.dtype.hasobject:
            raise _Inexact
        order = "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"  # as the .npy is written
        self.tag(arr.dtype.str, arr.dtype.descr if arr.dtype.fields else None, arr.shape, order)
        self._h.update(arr.nbytes.to_bytes(8, "little"))

    def arrow(self, chunked: Any) -> None:
        """A pyarrow (Chunked)Array of a flat type: its type, and per chunk its offset, length, null count and
        buffers. Nested, dictionary and extension types have none: their children, dictionaries and offsets are
        not all in ``buffers()``."""
        if not _flat(chunked.type):
            raise _Inexact
        chunks = chunked.chunks if hasattr(chunked, "chunks") else [chunked]
        self.tag("arrow", str(chunked.type), len(chunks))
        for chunk in chunks:
            self.tag(chunk.offset, len(chunk), chunk.null_count)
            for piece in _covered(chunk):
                if piece is None:
                    self.tag(None)
                else:
                    self.raw(piece)

    def values(self, values: Any) -> None:
        """What a column or an index holds: numpy, masked, Arrow-backed or categorical values."""
        import pandas as pd

        dtype = values.dtype
        self.tag(type(values).__module__, type(values).__qualname__, repr(dtype),
                 repr(getattr(dtype, "tz", None)), type(getattr(dtype, "tz", None)).__qualname__)
        if isinstance(values, np.ndarray):
            self.numpy(values)
        elif isinstance(values, pd.Categorical):
            self.tag(bool(values.ordered))
            self.numpy(values.codes)
            if values.categories.dtype == object:  # (few, and kept whole): their values themselves
                self.tag(values.categories.tolist())
            else:
                self.values(values.categories.array)
        elif isinstance(values, (pd.arrays.DatetimeArray, pd.arrays.TimedeltaArray)):
            self.tag(getattr(values, "freq", None))  # (the offset itself: a weekmask and holidays too)
            self.numpy(values._ndarray)
        elif type(values).__name__ in ("NumpyExtensionArray", "PandasArray"):
            held = values._ndarray  # (the array itself: to_numpy() may give a new read-only view of it)
            if held.dtype.hasobject:
                self.pointers(held, held)
            else:
                self.numpy(held)
        elif hasattr(values, "_pa_array"):  # Arrow-backed: ArrowExtensionArray, pyarrow-stored strings
            self.arrow(values._pa_array)  # (asked first: pandas 2 warns on their deprecated ``_data``)
        elif hasattr(values, "_data") and hasattr(values, "_mask"):  # masked: Int64, Float64, boolean
            self.numpy(values._data)
            self.numpy(values._mask)
        else:
            raise _Inexact

    def index(self, index: Any) -> None:
        import pandas as pd

        self.tag(type(index).__qualname__, list(index.names))
        if isinstance(index, pd.MultiIndex):
            raise _Inexact
        if isinstance(index, pd.RangeIndex):
            self.tag(index.start, index.stop, index.step)
            return
        self.tag(getattr(index, "freq", None))
        self.values(index.array)


def _columns(d: _Digest, df: Any) -> None:
    """Each column's values in column order, whatever blocks pandas keeps them in (a frame got back and the
    frame put have the same fingerprint); the columns of a 2-D block are hashed as rows of it, one call each, so
    20,000 columns cost milliseconds."""
    mgr = df._mgr
    blocks = mgr.blocks
    run: tuple[Any, int, int] | None = None  # (2-D block values, first loc, end loc): neighbouring rows of it

    def flush() -> None:
        if run is None:
            return
        if run[0].dtype.hasobject:  # (Python objects: by address, kept alive by the caller)
            d.pointers(run[0][run[1]:run[2]], run[0])
        else:  # (a column's length is known from its dtype, tagged, and the rows: no framing)
            d._h.update(np.ascontiguousarray(run[0][run[1]:run[2]]).reshape(-1).view(np.uint8).data)

    for blkno, loc in zip(mgr.blknos.tolist(), mgr.blklocs.tolist()):
        values = blocks[blkno].values
        if isinstance(values, np.ndarray) and values.ndim == 2:
            if run is not None and run[0] is values and run[2] == loc:
                run = (values, run[1], loc + 1)
                continue
            flush()
            run = (values, loc, loc + 1)
            continue
        flush()
        run = None
        d.values(values if values.ndim == 1 else values[loc])
    flush()


def _flat(t: Any) -> bool:
    """An Arrow type whose array is wholly described by its offset, length and ``buffers()``."""
    import pyarrow as pa

    return bool(pa.types.is_primitive(t) or pa.types.is_string(t) or pa.types.is_large_string(t)
                or pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)
                or pa.types.is_decimal(t) or pa.types.is_null(t)) and not isinstance(t, pa.ExtensionType)


def _covered(chunk: Any) -> list[Any]:
    """The bytes of a flat Arrow array's buffers that its own elements use (None for an absent buffer).

    An array read from Parquet is often a slice of a larger one, whose ``buffers()`` are the whole parent's:
    hashing those whole would hash the parent once per slice. Every bit an element of the slice uses is covered
    (a bitmap's edge bytes may hold neighbours' bits too: a change there only changes the fingerprint)."""
    import pyarrow as pa

    buffers = chunk.buffers()
    start, n, t = chunk.offset, len(chunk), chunk.type
    if pa.types.is_null(t):
        return [None if b is None else b"" for b in buffers]

    def bits(buf: Any) -> Any:
        return None if buf is None else memoryview(buf)[start // 8:-(-(start + n) // 8)]

    if pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        validity, offsets, data = buffers
        width = 8 if pa.types.is_large_string(t) or pa.types.is_large_binary(t) else 4
        used = memoryview(offsets)[start * width:(start + n + 1) * width]
        ends = np.frombuffer(used, dtype=np.int64 if width == 8 else np.int32)
        lo, hi = int(ends[0]), int(ends[-1])
        return [bits(validity), used, None if data is None else memoryview(data)[lo:hi]]
    validity, values = buffers
    width = t.bit_width  # (fixed-width: numbers, times, decimals, fixed-size binary)
    if width == 1:
        return [bits(validity), bits(values)]
    size = width // 8
    return [bits(validity), None if values is None else memoryview(values)[start * size:(start + n) * size]]


class ArrayFingerprint:
    """The fingerprint of ``arr`` made while its bytes arrive (a download): feed them in order to ``update``, then
    ``digest()`` is what ``fingerprint(arr)`` gives, without another pass over the array."""

    def __init__(self, arr: np.ndarray[Any, Any]) -> None:
        self._d = _Digest()
        self._d.tag(type(arr).__module__, type(arr).__qualname__, ())
        self._d._numpy_head(arr)
        self.update = self._d._h.update

    def digest(self) -> bytes:
        return bytes(self._d._h.digest())


def addresses_digest(arr: np.ndarray[Any, Any]) -> bytes:
    """XXH3-128 of the addresses a contiguous object array holds (numpy has no view of them: read in place)."""
    import ctypes

    import xxhash

    if not arr.nbytes:
        return bytes(xxhash.xxh3_128().digest())
    if not arr.flags.c_contiguous:  # (the bytes are read from its start: a strided view would read past its end)
        raise ValueError("addresses_digest takes a contiguous array")
    return bytes(xxhash.xxh3_128((ctypes.c_char * arr.nbytes).from_address(arr.ctypes.data)).digest())


def fingerprint(value: Any, *settings: Any, objects: list[tuple[Any, Any, bytes]] | None = None) -> bytes | None:
    """The exact fingerprint of ``value`` (with the store's ``settings`` that shape its bytes), or None.

    With ``objects`` (a list), object columns (Python strings in pandas 2) are hashed by the addresses they hold,
    and ``(owner, values, digest of their addresses)`` of each is appended to it: such a fingerprint is exact only
    while every object it saw is kept alive (an address freed and taken by a new object would read as the old
    one), which is what the caller must see to before relying on it (``VersionedStore._hold`` and ``_remember``);
    it stops relying on it when the owner (the frame's array) is gone.
    """
    import pandas as pd

    d = _Digest(objects)
    try:
        d.tag(type(value).__module__, type(value).__qualname__, settings)
        if isinstance(value, np.ndarray):
            d.numpy(value)  # (dtype, shape, order and bytes: all the .npy holds)
        elif isinstance(value, pd.DataFrame):
            if (objects is None and any(dtype == object for dtype in value.dtypes)) \
                    or isinstance(value.index, pd.MultiIndex) or isinstance(value.columns, pd.MultiIndex):
                return None  # (before hashing any column)
            d.tag(list(value.columns), type(value.columns).__qualname__, list(value.columns.names),
                  str(value.columns.dtype), dict(value.attrs), value.flags.allows_duplicate_labels)
            d.index(value.index)
            d.tag([repr(dtype) for dtype in value.dtypes])
            _columns(d, value)
        elif isinstance(value, pd.Series):
            d.tag(value.name, dict(value.attrs), value.flags.allows_duplicate_labels)
            d.index(value.index)
            d.values(value.array)
        elif type(value).__module__.split(".")[0] == "pyarrow" and type(value).__name__ == "Table":
            d.raw(value.schema.serialize())
            d.tag(value.num_rows)
            for column in value.columns:
                d.arrow(column)
        else:
            return None
    except (_Inexact, AttributeError):  # (an attribute another pandas version lacks: no fingerprint, not a guess)
        if objects is not None:
            objects.clear()
        return None
    return bytes(d._h.digest())


__all__ = ["ArrayFingerprint", "addresses_digest", "fingerprint"]
