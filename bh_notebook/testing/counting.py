"""CountingBucket: a BucketClient wrapper that counts requests and bytes moved, for tests and benchmarks."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, cast

from ..storage.bucket import BucketClient, ObjectInfo, ProgressCallback, Readable, Sink, Staged


class _CountingReader:
    def __init__(self, raw: Readable, owner: CountingBucket, counter: str) -> None:
        self._raw = raw
        self._owner = owner
        self._counter = counter
        if hasattr(raw, "read_view"):  # buffers in memory, written from where they are: counted too
            self.read_view = self._read_view

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._owner._add(self._counter, len(data))
        return data

    def readinto(self, b: Any) -> int:
        n = self._raw.readinto(b)  # type: ignore[union-attr]  # callers only use it when the raw stream has it
        self._owner._add(self._counter, n or 0)
        return n

    def _read_view(self, n: int) -> memoryview:
        view: memoryview = self._raw.read_view(n)  # type: ignore[union-attr]
        self._owner._add(self._counter, view.nbytes)
        return view

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def __enter__(self) -> _CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._raw.close()


class _CountingStaged(Staged):
    """A staged object, counted as one ``put_stream`` of its bytes when it is committed (what it replaces)."""

    def __init__(self, raw: Staged, owner: CountingBucket) -> None:
        self._raw = raw
        self._owner = owner
        self._size = 0

    def write(self, data: memoryview) -> None:
        self._raw.write(data)
        self._size += memoryview(data).nbytes

    def commit(self, key: str, *, progress: ProgressCallback | None = None) -> str:
        self._owner._count("put_stream")
        etag = self._raw.commit(key, progress=progress)
        self._owner._add("bytes_out", self._size)
        return etag

    def discard(self) -> None:
        self._raw.discard()


class CountingBucket(BucketClient):
    """Delegates every call to a real bucket; ``calls`` counts them by method, ``bytes_in``/``bytes_out`` the
    bytes downloaded and uploaded."""

    def __init__(self, inner: BucketClient) -> None:
        self.inner = inner
        self.backend = inner.backend
        self.name = inner.name
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Zero the counters."""
        with self._lock:
            self.calls: dict[str, int] = {}
            self.bytes_in = 0
            self.bytes_out = 0

    def _count(self, name: str) -> None:
        with self._lock:
            self.calls[name] = self.calls.get(name, 0) + 1

    def _add(self, counter: str, n: int) -> None:
        with self._lock:
            setattr(self, counter, getattr(self, counter) + n)

    @property
    def writes(self) -> int:
        """PUT-like requests (puts and copies)."""
        return self.calls.get("put_stream", 0) + self.calls.get("copy", 0) + self.calls.get("touch", 0)

    def __getattr__(self, name: str) -> Any:  # root, endpoint_url, check_bucket, ...
        return getattr(self.inner, name)

    def head(self, key: str) -> ObjectInfo | None:
        self._count("head")
        return self.inner.head(key)

    def get_range(self, key: str, start: int, end: int | None = None) -> bytes:
        self._count("get_range")
        data = self.inner.get_range(key, start, end)
        self._add("bytes_in", len(data))
        return data

    def get_into(self, key: str, buffer: memoryview | bytearray, start: int = 0, *,
                 progress: ProgressCallback | None = None, sink: Sink | None = None) -> int:
        self._count("get_into")
        n = self.inner.get_into(key, buffer, start, progress=progress, sink=sink)
        self._add("bytes_in", n)
        return n

    def open_read(self, key: str) -> BinaryIO:
        self._count("open_read")
        return _CountingReader(self.inner.open_read(key), self, "bytes_in")  # type: ignore[return-value]

    def put_stream(self, fileobj: Readable, key: str, **kw: Any) -> str:
        self._count("put_stream")
        return self.inner.put_stream(cast(Readable, _CountingReader(fileobj, self, "bytes_out")), key, **kw)

    def stage(self, prefix: str) -> Staged | None:
        staged = self.inner.stage(prefix)
        return None if staged is None else _CountingStaged(staged, self)

    def delete(self, key: str) -> None:
        self._count("delete")
        self.inner.delete(key)

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._count("list_info")
        return self.inner.list_info(prefix)

    def download(self, key: str, path: str | os.PathLike[str], *, progress: ProgressCallback | None = None,
                 if_match: str | None = None) -> Path:
        if if_match is None:
            return super().download(key, path, progress=progress)  # counted through open_read
        self._count("download")
        dest = self.inner.download(key, path, progress=progress, if_match=if_match)
        self._add("bytes_in", dest.stat().st_size)
        return dest

    def copy(self, src_key: str, dst_key: str, *, if_match: str | None = None) -> None:
        self._count("copy")
        self.inner.copy(src_key, dst_key, if_match=if_match)

    def touch(self, key: str, *, content_type: str | None = None,
              metadata: Mapping[str, str] | None = None) -> bool:
        self._count("touch")
        return self.inner.touch(key, content_type=content_type, metadata=metadata)

    def clock(self) -> float:
        self._count("clock")
        return self.inner.clock()

    def cleanup_incomplete(self, older_than: float = 3600.0) -> int:
        self._count("cleanup_incomplete")
        return self.inner.cleanup_incomplete(older_than)

    def presigned_url(self, key: str, expires_in: int = 3600) -> str | None:
        return self.inner.presigned_url(key, expires_in)

    def generate_presigned_get(self, key: str, *, expires_in: int) -> str:
        return self.inner.generate_presigned_get(key, expires_in=expires_in)
