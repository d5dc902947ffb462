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
    """libc's mincore, if it tells pages written and pages only read from pages untouched (tried once on a small
    map: gVisor, for one, reports every page as in memory); else None."""
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MAP_PRIVATE"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).mincore
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        fn.restype = ctypes.c_int
        probe = _Map(3 * _PAGE)
        probe.view[0:1] = b"x"  # written
        _ = probe.view[_PAGE]  # only read
        return fn if _resident(fn, probe.address, 0, 3).tolist() == [True, True, False] else None
    except (OSError, AttributeError, ValueError):  # pragma: no cover - no mincore, or it is refused
        return None


def _resident(fn: Any, address: int, first: int, count: int) -> Any:
    """Which of pages ``[first, first + count)`` of the map at ``address`` are in memory (a numpy bool array)."""
    import numpy as np

    vec = np.zeros(count, dtype=np.uint8)
    if fn(ctypes.c_void_p(address + first * _PAGE), count * _PAGE, vec.ctypes.data) != 0:
        raise OSError(ctypes.get_errno(), "mincore failed")
    return (vec & 1).astype(bool)


def _any_resident(address: int, first: int, last: int) -> bool:
    """Whether any of pages ``[first, last)`` of the map at ``address`` is in memory (asked in bounded calls)."""
    assert _MINCORE is not None
    while first < last:
        count = min(last - first, _PAGES_PER_CALL)
        if _resident(_MINCORE, address, first, count).any():
            return True
        first += count
    return False


class _Map:
    """``size`` bytes of private anonymous memory, zero and costing nothing until written. No swap is reserved
    (most of it is never written, and a blob bigger than memory must still map); no huge pages (one would bring in
    the neighbours of a page written)."""

    def __init__(self, size: int) -> None:
        import pyarrow as pa

        self.map = mmap.mmap(-1, max(1, size), flags=mmap.MAP_PRIVATE | getattr(mmap, "MAP_ANONYMOUS", 0) | _NORESERVE)
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            self.map.madvise(mmap.MADV_NOHUGEPAGE)
        self.view = memoryview(self.map)[:size]
        self.buffer = pa.py_buffer(self.view)
        self.address = self.buffer.address

    def close(self) -> None:
        self.buffer = self.view = None  # type: ignore[assignment]
        try:
            self.map.close()
        except BufferError:  # a pyarrow reader still holds it (a traceback's frame): freed with the reader
            pass


_MINCORE = _mincore()
#: Pages asked about per mincore call: bounds its vector, whatever the blob's size.
_PAGES_PER_CALL = 256 * 1024


class MappedRanges:
    """A blob-sized map into which checked ranges of the blob are written at their offsets."""

    @staticmethod
    def available(chunk_size: int) -> bool:
        """Whether reads can be told apart from this system's side, for ranges in whole chunks of this size."""
        return _MINCORE is not None and chunk_size % _PAGE == 0

    def __init__(self, size: int) -> None:
        self.size = size
        self._map = _Map(size)
        self._have: list[tuple[int, int]] = []

    def write(self, start: int, data: bytes | bytearray | memoryview) -> None:
        """Place checked bytes of the blob at their offset."""
        n = memoryview(data).nbytes
        self._map.view[start:start + n] = data
        self._have.append((start, start + n))

    def place(self, start: int, end: int) -> memoryview:
        """Where bytes ``[start, end)`` of the blob go, for a caller to fill; counted as written."""
        self._have.append((start, end))
        return self._map.view[start:end]

    def holds(self, start: int, end: int) -> bool:
        return any(lo <= start and end <= hi for lo, hi in self._have)

    def reader(self) -> Any:
        """A native pyarrow file over the map."""
        import pyarrow as pa

        return pa.BufferReader(self._map.buffer)

    def close(self) -> None:
        """Let the memory go now (a failed read's traceback may keep this object)."""
        self._map.close()

    def read_elsewhere(self) -> bool:
        """Whether a page that no written range covers was read (it would have read zeros). True also when the
        system will not say: the caller then reads through the checked file."""
        assert _MINCORE is not None
        pages = -(-self.size // _PAGE)
        at = 0
        try:
            for lo, hi in [*sorted(self._have), (self.size, self.size)]:
                first = min(lo // _PAGE, pages)  # pages [at, first) hold nothing written
                if _any_resident(self._map.address, at, first):
                    return True
                at = max(at, first, -(-hi // _PAGE))
        except OSError:  # pragma: no cover - mincore worked at import
            return True
        return False


class ReleasableMap:
    """A whole blob downloaded into private anonymous memory, whose pages are given back to the system (MADV_DONTNEED)
    once what they hold has been decoded: a whole read then never holds the blob and the table it becomes both whole.

    A page given back reads as zeros. ``touched()`` asks the system (``mincore``) whether any was read since, which
    would mean pyarrow read bytes it was not expected to: the caller then reads the blob again, keeping every page."""

    @staticmethod
    def available() -> bool:
        return _MINCORE is not None and hasattr(mmap, "MADV_DONTNEED")

    def __init__(self, size: int) -> None:
        self.size = size
        self._map = _Map(size)
        self.view = self._map.view
        self._released: list[tuple[int, int]] = []

    def reader(self) -> Any:
        """A native pyarrow file over the blob."""
        import pyarrow as pa

        return pa.BufferReader(self._map.buffer)

    def holds_any(self, table: Any) -> bool:
        """Whether ``table`` points into the map (decoded without a copy): those pages must stay."""
        lo, hi = self._map.address, self._map.address + self.size
        return any(b is not None and lo <= b.address < hi
                   for col in table.columns for chunk in col.chunks for b in _buffers(chunk))

    def release(self, start: int, end: int) -> bool:
        """Give back the whole pages inside bytes ``[start, end)`` (a page shared with bytes outside stays). False
        when the system refuses (locked memory: ``mlockall``): the caller then keeps every page."""
        first, last = -(-start // _PAGE), end // _PAGE
        if last > first:
            try:
                self._map.map.madvise(mmap.MADV_DONTNEED, first * _PAGE, (last - first) * _PAGE)
            except OSError:
                return False
            self._released.append((first, last))
        return True

    def resident_bytes(self) -> int:
        """The bytes of the map in memory now (what the read still holds of the blob)."""
        pages = -(-self.size // _PAGE)
        return sum(int(_resident(_MINCORE, self._map.address, at, min(pages - at, _PAGES_PER_CALL)).sum())
                   for at in range(0, pages, _PAGES_PER_CALL)) * _PAGE

    def touched(self) -> bool:
        """Whether a page given back has been read (or written) since. True also when the system will not say."""
        try:
            return any(_any_resident(self._map.address, first, last) for first, last in self._released)
        except OSError:  # pragma: no cover - mincore worked at import
            return True

    def close(self) -> None:
        """Let the memory go now (a failed read's traceback may keep this object)."""
        self.view = None  # type: ignore[assignment]
        self._map.close()


def _buffers(array: Any) -> Any:
    """An Arrow array's buffers, its children's (``buffers()`` gives those) and its dictionary's (it does not)."""
    yield from array.buffers()
    if hasattr(array, "dictionary"):
        yield from _buffers(array.dictionary)
