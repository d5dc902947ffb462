"""ArrayStore: named, versioned NumPy arrays, each a standard ``.npy`` blob in FileStore.

``put`` hashes and streams the ``.npy`` header followed by the array's own memory, so a 1 GB array is never
copied whole; ``get`` downloads straight into one preallocated array, hashing as it goes. The header is kept in
the catalog too, so ``rows=`` can fetch just the bytes of the rows asked for with a ranged GET.
Object arrays are refused: they would need pickle, which is never loaded from a bucket.
"""

from __future__ import annotations

import ast
import io
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidKey, ValueTypeError
from ..storage.bucket import ProgressCallback
from .base import check_name
from .fingerprint import ArrayFingerprint, fingerprint
from .versioned import VersionedStore, check_metadata


@dataclass(frozen=True)
class ArrayVersion:
    """One stored version of an array, as the catalog describes it (no download needed)."""

    name: str
    version: int
    bh_key: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    nbytes: int
    created_at: float
    metadata: dict[str, str] = field(default_factory=dict)
    fortran_order: bool = False
    #: The version's id: given when it was put, unchanged by merges that move its number.
    version_id: str = ""

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.shape)) or "scalar"
        return (f"<ArrayVersion {self.name}@{self.version}: {shape} {self.dtype}, {self.nbytes:,} bytes, "
                f"{self.bh_key[:12]}>")


def _npy_header(arr: np.ndarray[Any, Any]) -> bytes:
    """The ``.npy`` header numpy.save would write for ``arr`` (format 1.0, or 2.0 for very wide dtypes)."""
    d = np.lib.format.header_data_from_array_1_0(arr)
    for write in (np.lib.format.write_array_header_1_0, np.lib.format.write_array_header_2_0):
        buf = io.BytesIO()
        try:
            write(buf, d)
            return buf.getvalue()
        except (ValueError, UnicodeEncodeError):
            continue
    # Field names outside latin-1 need format 3.0 (a UTF-8 header), which numpy reads but has no public writer for.
    text = "{" + "".join(f"'{k}': {d[k]!r}, " for k in sorted(d)) + "}"
    body = text.encode("utf-8")
    pad = -(6 + 2 + 4 + len(body) + 1) % 64  # the data starts 64-byte aligned, as numpy's own headers do
    body += b" " * pad + b"\n"
    return b"\x93NUMPY\x03\x00" + struct.pack("<I", len(body)) + body


def _byte_view(arr: np.ndarray[Any, Any]) -> memoryview:
    """The array's memory as flat bytes, in the order a ``.npy`` file stores it; no copy."""
    if arr.nbytes == 0:
        return memoryview(b"")
    if arr.flags.c_contiguous:
        flat = arr.reshape(-1)
    elif arr.flags.f_contiguous:
        flat = arr.T.reshape(-1)
    else:  # pragma: no cover - callers make the array contiguous first
        raise ValueError("array is not contiguous")
    return flat.view(np.uint8).data


def _refuse_objects(dtype: np.dtype[Any]) -> None:
    if dtype.hasobject:
        raise ValueTypeError(
            f"cannot store an array of dtype {dtype}: it holds Python objects, which would need pickle, and pickles "
            "are never loaded from a shared bucket (they can run code). Convert it first, e.g. arr.astype(str) or "
            "arr.astype(float), or put it in a DataFrame column and use bh.frames"
        )


class ArrayStore(VersionedStore[ArrayVersion]):
    """Named, versioned NumPy arrays in table ``bh_arrays``; reached as ``bh.arrays``."""

    table = "bh_arrays"
    kind = "array"
    load_options = frozenset({"rows"})
    extra_columns = (
        ("shape", "TEXT NOT NULL"),
        ("dtype", "TEXT NOT NULL"),
        ("descr", "TEXT NOT NULL"),
        ("fortran_order", "INTEGER NOT NULL"),
        ("header", "BLOB NOT NULL"),
    )

    def _to_version(self, row: dict[str, Any]) -> ArrayVersion:
        return ArrayVersion(
            name=row["name"], version=int(row["version"]), bh_key=row["bh_key"],
            shape=tuple(json.loads(row["shape"])), dtype=self._dtype(row), nbytes=int(row["nbytes"]),
            created_at=float(row["created_at"]), metadata=json.loads(row["metadata"]) if row["metadata"] else {},
            fortran_order=bool(row["fortran_order"]),
            version_id=row.get("version_id") or "",
        )

    @staticmethod
    def shape_text(info: Any) -> str:
        return f"{tuple(info.shape)} {info.dtype}"

    @staticmethod
    def accepts(value: Any) -> bool:
        """What ``%bh_put`` stores as an array: a NumPy array or scalar."""
        return isinstance(value, (np.ndarray, np.generic))

    @staticmethod
    def _dtype(row: dict[str, Any]) -> np.dtype[Any]:
        # The descr is kept as the .npy header keeps it: a Python literal, read back with literal_eval.
        return np.lib.format.descr_to_dtype(ast.literal_eval(row["descr"]))

    # -- writes -----------------------------------------------------------------------------

    def put(self, name: str, array: Any, *, metadata: dict[str, str] | None = None,
            progress: ProgressCallback | None = None) -> ArrayVersion:
        """Store ``array`` as the next version of ``name``; return that version.

        Putting the same data as the latest version again returns that version and uploads nothing.
        """
        check_name(name, "array name")
        meta = check_metadata(metadata)
        if isinstance(array, np.ma.MaskedArray):
            raise ValueTypeError("masked arrays are not supported: store arr.data and arr.mask as two arrays")
        if isinstance(array, np.generic):
            array = np.asarray(array)
        if not isinstance(array, np.ndarray):
            raise ValueTypeError(
                f"bh.arrays stores NumPy arrays, not {type(array).__name__}; convert with np.asarray(...)"
                + (" or use bh.frames for a DataFrame" if type(array).__name__ in ("DataFrame", "Series") else "")
            )
        arr = np.asarray(array)  # drop ndarray subclasses (np.matrix, ...): the .npy holds the plain array
        _refuse_objects(arr.dtype)
        if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
            arr = np.array(arr, order="C", copy=True)  # a strided view: one copy is unavoidable
        seen = fingerprint(arr)
        known = self._unchanged(name, seen)
        if known is not None:  # this process put or got exactly these bytes as the latest version
            return known
        header = _npy_header(arr)
        data = _byte_view(arr)
        bh_key = self._files.put_buffers(header, data, filename=f"{name.rsplit('/', 1)[-1]}.npy",
                                         mime="application/x-npy", progress=progress, entry=("array", name))
        descr = np.lib.format.dtype_to_descr(arr.dtype)
        info = self._add_version(name, bh_key, int(arr.nbytes), meta, {
            "shape": json.dumps(list(arr.shape)), "dtype": str(arr.dtype), "descr": repr(descr),
            "fortran_order": int(bool(arr.flags.f_contiguous and not arr.flags.c_contiguous)), "header": header,
        })
        self._remember(name, info, seen)
        return info

    # -- reads ------------------------------------------------------------------------------

    def get(self, name: str, version: int | None = None, *, rows: slice | None = None,
            progress: ProgressCallback | None = None) -> np.ndarray[Any, Any]:
        """The array (latest version by default). ``rows=slice(a, b)`` fetches only those rows' bytes.

        A whole get is checked against the blob's SHA-256, a ``rows=`` read against the hashes of the chunks it
        touches (IntegrityError when the bucket's bytes were altered).
        """
        row = self._row(name, version)
        info = self._to_version(row)
        if info.dtype.hasobject:
            # Only a tampered catalog can say this (put refuses object arrays): raw bytes must never become
            # Python object pointers, and pickles are never loaded.
            raise ValueTypeError(f"array {name!r} claims dtype {info.dtype}, which would need pickle; it was not "
                                 "written by bh_notebook and is not loaded")
        header = bytes(row["header"])
        if rows is not None:
            return self._get_rows(info, len(header), rows, progress)
        out = np.empty(info.shape, dtype=info.dtype, order="F" if info.fortran_order else "C")
        seen = ArrayFingerprint(out)  # (made as the bytes arrive: no second pass over the array)
        self._files.get_verified(info.bh_key, _byte_view(out), head=header, progress=progress, also=seen.update)
        self._remember(name, info, seen.digest())  # a re-put of it, untouched, is no change
        return out

    def _get_rows(self, info: ArrayVersion, offset: int, rows: slice, progress: ProgressCallback | None
                  ) -> np.ndarray[Any, Any]:
        if not isinstance(rows, slice):
            raise ValueTypeError(f"rows= takes a slice, like rows=slice(0, 100), not {type(rows).__name__}")
        if not info.shape:
            raise InvalidKey(f"array {info.name!r} is 0-dimensional: it has no rows to slice")
        index = range(*rows.indices(info.shape[0]))
        if info.fortran_order:
            # Rows are not contiguous in a Fortran-ordered .npy: read the whole (verified) array instead.
            return np.ascontiguousarray(self.get(info.name, info.version, progress=progress)[rows])
        tail = info.shape[1:]
        if len(index) == 0:
            return np.empty((0, *tail), dtype=info.dtype)
        lo, hi = min(index), max(index) + 1
        row_bytes = info.dtype.itemsize * math.prod(tail)
        out = np.empty((hi - lo, *tail), dtype=info.dtype)
        if out.nbytes:
            self._files.get_into_verified(info.bh_key, _byte_view(out), offset + lo * row_bytes, progress=progress)
        if index.step == 1:
            return out
        return out[np.asarray(index) - lo]

    def __getitem__(self, name: str) -> np.ndarray[Any, Any]:
        return self.get(name)

