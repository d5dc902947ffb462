"""A blob-sized memory map that holds only the checked byte ranges fetched of a blob, for pyarrow to read natively.

A partial read of a Parquet blob (``columns=``, ``filters=``, ``rows=``, ``head``) fetches the footer and the column
chunks it needs, each range checked against the blob's chunk hashes. Handing pyarrow those bytes through a Python
file object costs a call into Python for every read it makes; handing it a map of the blob's size, with the fetched
ranges written at their offsets, lets it read natively. The pages never written cost no memory.

What makes this safe is knowing that pyarrow read nothing else: a page it read that no range filled would hold zeros,
not the blob's bytes. ``read_elsewhere()`` asks the system which pages of the map are in memory (``mincore``): a
page is there only if it was written (a range) or read. Any other page means the read must be done again through the
checked file object, which fetches what is missing. Where the system cannot say, ``MappedRanges.available()`` is
False and reads go through the file object.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import sys
from typing import Any

_PAGE = mmap.PAGESIZE
#: MAP_NORESERVE (Python's mmap names it from 3.13; Linux's value on x86-64 and arm64).
_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform.startswith("linux")
                     and platform.machine() in ("x86_64", "aarch64") else 0)


def _mincore() -> Any:
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MAP_PRIVATE"):
        return None  # that a page only read shows as in memory is what this relies on; it is tested on Linux
    try:
        fn = ctypes.CDLL(None, use_errno=True).mincore
    except (OSError, AttributeError):  # pragma: no cover - a libc without mincore
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


_MINCORE = _mincore()


class MappedRanges:
    """``size`` bytes of private anonymous memory (zero, and costing nothing, until written) into which checked
    ranges of a blob are written at their offsets."""

    @staticmethod
    def available(chunk_size: int) -> bool:
        """Whether reads can be told apart from this system's side, for ranges in whole chunks of this size."""
        return _MINCORE is not None and chunk_size % _PAGE == 0

    def __init__(self, size: int) -> None:
        import pyarrow as pa

        self.size = size
        # No swap reserved: most of the map is never written, and a blob bigger than memory must still map.
        flags = mmap.MAP_PRIVATE | getattr(mmap, "MAP_ANONYMOUS", 0) | _NORESERVE
        self._map = mmap.mmap(-1, max(1, size), flags=flags)
        if hasattr(mmap, "MADV_NOHUGEPAGE"):  # a huge page would bring in the neighbours of a page written
            self._map.madvise(mmap.MADV_NOHUGEPAGE)
        self._view = memoryview(self._map)[:size]
        self._buffer = pa.py_buffer(self._view)
        self._have: list[tuple[int, int]] = []

    def write(self, start: int, data: bytes | bytearray | memoryview) -> None:
        """Place checked bytes of the blob at their offset."""
        n = memoryview(data).nbytes
        self._view[start:start + n] = data
        self._have.append((start, start + n))

    def place(self, start: int, end: int) -> memoryview:
        """Where bytes ``[start, end)`` of the blob go, for a caller to fill; counted as written."""
        self._have.append((start, end))
        return self._view[start:end]

    def holds(self, start: int, end: int) -> bool:
        return any(lo <= start and end <= hi for lo, hi in self._have)

    def reader(self) -> Any:
        """A native pyarrow file over the map."""
        import pyarrow as pa

        return pa.BufferReader(self._buffer)

    def read_elsewhere(self) -> bool:
        """Whether a page that no written range covers was read (it would have read zeros)."""
        import numpy as np

        assert _MINCORE is not None
        pages = -(-self.size // _PAGE)
        vec = np.zeros(pages, dtype=np.uint8)
        if _MINCORE(ctypes.c_void_p(self._buffer.address), pages * _PAGE, vec.ctypes.data) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")  # pragma: no cover - the map is ours, page-aligned
        touched = (vec & 1).astype(bool)
        for lo, hi in self._have:  # written pages are in memory because they were written
            touched[lo // _PAGE:-(-hi // _PAGE)] = False
        return bool(touched.any())
