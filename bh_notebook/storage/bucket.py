"""BucketClient: the small abstract core every storage backend implements.

A backend implements seven primitives (``head``, ``get_range``, ``open_read``, ``put_stream``, ``delete``,
``list_info``, ``copy``); everything else (``exists``, ``get_bytes``, ``put_bytes``, ``upload``, ``download``,
``last_modified``, ``list_keys``, ``get_into``) has a default built on them that a backend may override when it
can do better. Method names and argument order follow the client of the library we grow from, so code written
for it reads the same: data or path first, key second on writes.
"""

from __future__ import annotations

import bisect
import io
import itertools
import os
import tempfile
import time
from abc import ABCMeta, abstractmethod
from contextlib import contextmanager
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Union

from ..errors import BackendError, IntegrityError, InvalidKey, KeyTypeError, ObjectNotFound, PreconditionFailed

if TYPE_CHECKING:
    from ..config import BucketConfig

#: Streaming uploads switch to multipart above this many bytes.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
#: Size of one part of a multipart upload, and of one read when streaming.
PART_SIZE = 8 * 1024 * 1024
#: Parts of a server-side copy of a large object (each one request that must end within a read timeout).
COPY_PART_SIZE = 64 * 1024 * 1024
#: The largest object one CopyObject may copy (the S3 limit): a touch of a larger one goes in parts.
MAX_COPY_OBJECT = 5 * 1024 * 1024 * 1024
#: Reads from a stream are done in pieces of this size.
CHUNK_SIZE = 1024 * 1024

#: What put_stream reads from: an open binary file, or one of our raw streams (ChainReader, ...).
Readable = Union[BinaryIO, io.RawIOBase]

#: Called with the number of bytes moved since the last call.
ProgressCallback = Callable[[int], None]
#: Called with consecutive pieces of what was read, in order (e.g. a hasher's ``update``).
Sink = Callable[[memoryview], object]


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD tells: size in bytes, entity tag (quoted, as S3 gives it), last modified (epoch seconds).

    ``server_time`` is the bucket's own clock when the answer was given (an S3 response's ``Date``), when known:
    ages are measured against it, never against this machine's clock.
    """

    key: str
    size: int
    etag: str
    last_modified: float
    server_time: float | None = None

    @property
    def age(self) -> float | None:
        """Seconds since the object was last written, by the bucket's clock (None when that clock is unknown)."""
        return None if self.server_time is None else max(0.0, self.server_time - self.last_modified)


def check_key(key: object) -> str:
    """Validate an object key: a non-empty str with no empty, ``.`` or ``..`` segment, no NUL, no leading '/'."""
    if not isinstance(key, str):
        raise KeyTypeError(f"object keys are str, not {type(key).__name__}")
    if not key:
        raise InvalidKey("object key is empty")
    if len(key.encode("utf-8")) > 1024:
        raise InvalidKey(f"object key is {len(key.encode('utf-8'))} bytes long; S3 allows at most 1024")
    if "\x00" in key or "\\" in key:
        raise InvalidKey(f"object key {key!r} holds a NUL or backslash")
    if key.startswith("/") or key.endswith("/"):
        raise InvalidKey(f"object key {key!r} must not start or end with '/'")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise InvalidKey(f"object key {key!r} has an empty, '.' or '..' path segment")
    return key


#: The longest a presigned URL may live: 7 days, the S3 and R2 limit.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600


def check_expires_in(expires_in: object) -> int:
    """Validate a presigned URL's lifetime: whole seconds from 1 to 7 days."""
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or not 1 <= expires_in <= MAX_PRESIGN_SECONDS:
        raise ValueError(f"expires_in is a whole number of seconds from 1 to {MAX_PRESIGN_SECONDS} (7 days), "
                         f"not {expires_in!r}")
    return expires_in


class _OpensFromConfig(ABCMeta):
    """``BucketClient(config)``, as buckethead builds its client, opens the backend the config names."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is BucketClient:
            return _open_from_config(*args, **kwargs)
        return super().__call__(*args, **kwargs)


def _open_from_config(config: BucketConfig) -> BucketClient:
    from ..config import BucketConfig
    from . import open_bucket

    if not isinstance(config, BucketConfig):
        raise TypeError(f"BucketClient(config) takes a BucketConfig, not {type(config).__name__}; backends are "
                        "built as S3Bucket(...) or LocalBucket(path)")
    return open_bucket(config)


class BucketClient(metaclass=_OpensFromConfig):
    """One bucket: put, get, list and delete objects by key.

    ``BucketClient(config)`` opens the backend a BucketConfig names (an S3Bucket, or a LocalBucket for a local
    store), as buckethead's client is built.
    """

    #: "local" or "s3"; shown in status output.
    backend: str = "?"
    #: The bucket's name (for a local bucket, its directory's name).
    name: str = ""

    # -- the primitives --------------------------------------------------------------------

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """Size, etag and last-modified of ``key``, or None when it does not exist."""

    @abstractmethod
    def get_range(self, key: str, start: int, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of ``key`` (Python slice rules; ``end=None`` means to the end)."""

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A readable binary stream of the whole object; raise ObjectNotFound when missing."""

    @abstractmethod
    def put_stream(
        self,
        fileobj: Readable,
        key: str,
        *,
        size: int | None = None,
        if_none_match: str | None = None,
        if_match: str | None = None,
        progress: ProgressCallback | None = None,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Write everything ``fileobj`` yields to ``key``; return the new etag.

        ``if_none_match="*"`` writes only when the key does not exist; ``if_match=etag`` only when the current
        object has that etag. A lost condition raises PreconditionFailed and changes nothing. ``content_type``
        and ``metadata`` (user metadata, ASCII) describe the object to whoever browses the bucket; backends
        without such a notion ignore them.
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete ``key``; a missing key is not an error."""

    @abstractmethod
    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (all pages), in the server's listing order.

        That is lexicographic on S3 and R2; servers built on a file tree may list ``a/...`` before ``a.txt``.
        """

    @abstractmethod
    def copy(self, src_key: str, dst_key: str, *, if_match: str | None = None) -> None:
        """Copy an object inside the bucket; with ``if_match``, only while the source still has that etag
        (PreconditionFailed otherwise)."""

    @abstractmethod
    def touch(self, key: str, *, content_type: str | None = None,
              metadata: Mapping[str, str] | None = None) -> bool:
        """Make ``key``'s last-modified time now, keeping its bytes; False when it does not exist.

        What a writer does to a blob it is about to rely on, so that the collector, which only takes blobs
        unreferenced for longer than its grace period *by last-modified*, leaves it alone while the writer's
        commit is on its way. ``content_type`` and ``metadata`` describe the object afresh where a backend keeps
        them (S3 rewrites them on a copy onto itself).
        """

    # -- defaults built on the primitives ----------------------------------------------------

    def clock(self) -> float:
        """The bucket's current time in epoch seconds (the clock its last-modified times come from)."""
        return time.time()

    def exists(self, key: str) -> bool:
        """True when ``key`` exists."""
        return self.head(key) is not None

    def last_modified(self, key: str) -> float | None:
        """Last-modified time of ``key`` in epoch seconds, or None when it does not exist."""
        info = self.head(key)
        return None if info is None else info.last_modified

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key that starts with ``prefix``, in order."""
        return [info.key for info in self.list_info(prefix)]

    def get_bytes(self, key: str) -> bytes:
        """The whole object as bytes."""
        with self.open_read(key) as f:
            return f.read()

    def put_bytes(
        self,
        data: bytes | bytearray | memoryview,
        key: str,
        *,
        if_none_match: str | None = None,
        if_match: str | None = None,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Write ``data`` to ``key``; return the new etag."""
        view = memoryview(data).cast("B")
        return self.put_stream(io.BytesIO(view), key, size=view.nbytes, if_none_match=if_none_match,
                               if_match=if_match, content_type=content_type, metadata=metadata)

    def upload(self, path: str | os.PathLike[str], key: str, *, progress: ProgressCallback | None = None,
               if_none_match: str | None = None, if_match: str | None = None, content_type: str | None = None,
               metadata: Mapping[str, str] | None = None) -> str:
        """Stream a local file to ``key``; return the new etag."""
        p = Path(path)
        with p.open("rb") as f:
            return self.put_stream(f, key, size=os.fstat(f.fileno()).st_size, progress=progress,
                                   if_none_match=if_none_match, if_match=if_match, content_type=content_type,
                                   metadata=metadata)

    def download(self, key: str, path: str | os.PathLike[str], *, progress: ProgressCallback | None = None,
                 if_match: str | None = None) -> Path:
        """Stream ``key`` into a local file, atomically (a temp file beside it, then a rename).

        With ``if_match``, only the object with that etag is downloaded: PreconditionFailed when it changed (or
        changes during the download), never a file that mixes two versions.
        """
        dest = Path(path)
        if if_match is not None:
            info = self.head(key)
            if info is None:
                raise ObjectNotFound(f"no object {key!r} to download")
            if info.etag != if_match:
                raise PreconditionFailed(f"{key!r} changed since it was read; not downloaded")
        with atomic_file(dest) as out, self.open_read(key) as src:
            while chunk := src.read(CHUNK_SIZE):
                out.write(chunk)
                if progress is not None:
                    progress(len(chunk))
        if if_match is not None:
            after = self.head(key)
            if after is None or after.etag != if_match:
                dest.unlink(missing_ok=True)
                raise PreconditionFailed(f"{key!r} changed while it was downloaded")
        return dest

    def get_into(self, key: str, buffer: memoryview | bytearray, start: int = 0,
                 *, progress: ProgressCallback | None = None, sink: Sink | None = None) -> int:
        """Read ``len(buffer)`` bytes of ``key`` from offset ``start`` straight into ``buffer``; return the count.

        ``sink``, when given, sees the bytes in order as they arrive (to hash them while later ones download).
        """
        view = memoryview(buffer).cast("B")
        done = 0
        total = view.nbytes
        while done < total:
            n = min(PART_SIZE, total - done)
            chunk = self.get_range(key, start + done, start + done + n)
            if len(chunk) != n:
                raise IntegrityError(f"{key!r} ended after {start + done + len(chunk)} bytes; it is shorter than expected")
            view[done:done + n] = chunk
            if sink is not None:
                sink(view[done:done + n])
            done += n
            if progress is not None:
                progress(n)
        return done

    def cleanup_incomplete(self, older_than: float = 3600.0) -> int:
        """Remove what writes killed half-way left behind (temp files, unfinished multipart uploads) that is older
        than ``older_than`` seconds; return how many. Nothing by default."""
        return 0

    def presigned_url(self, key: str, expires_in: int = 3600) -> str | None:
        """A URL anyone can GET ``key`` with until it expires, or None where the backend has no such thing."""
        return None

    def stage(self, prefix: str) -> Staged | None:
        """A place to write an object's bytes as they are made, before its key is known (a blob's key is the hash
        of what is still being written), among the keys that start with ``prefix``; ``Staged.commit(key)`` then
        makes them the object ``key``. None where the backend has no such place: an S3 object is written under its
        key, and a copy to another key would cost as much as the upload."""
        return None

    def generate_presigned_get(self, key: str, *, expires_in: int) -> str:
        """A URL anyone can GET ``key`` with for ``expires_in`` seconds (1 s to 7 days), signed locally, as
        buckethead's client gives it. Raises BackendError where the backend has no such URLs."""
        check_key(key)
        url = self.presigned_url(key, check_expires_in(expires_in))
        if url is None:
            raise BackendError(f"the {self.backend} backend has no presigned URLs")
        return url

    def close(self) -> None:
        """Release connections; the client may not be used afterwards."""

    def __enter__(self) -> BucketClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Staged(metaclass=ABCMeta):
    """Bytes written to the store before their key is known (``BucketClient.stage``): ``write`` them in order,
    then ``commit`` them under a key, or ``discard`` them. Nobody sees them before ``commit``."""

    @abstractmethod
    def write(self, data: memoryview) -> None:
        """Append ``data``."""

    @abstractmethod
    def commit(self, key: str, *, progress: ProgressCallback | None = None) -> str:
        """Make what was written the object ``key`` (durably, and replacing any object there, as ``put_stream``
        does); return its etag. ``progress`` hears of the bytes made durable."""

    @abstractmethod
    def discard(self) -> None:
        """Forget what was written (a no-op after ``commit`` or a ``discard``)."""


@contextmanager
def atomic_file(dest: Path) -> Iterator[BinaryIO]:
    """A file to write that appears at ``dest`` only when the block ends without an error (temp file + rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class SeekableReader(io.RawIOBase):
    """Base of read-only, seekable streams of a known length: position bookkeeping only."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self._length = length
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos


class ChainReader(SeekableReader):
    """A read-only stream over several buffers (e.g. a .npy header and an array's memory), copying only on read."""

    def __init__(self, *parts: bytes | bytearray | memoryview) -> None:
        views = [memoryview(p).cast("B") for p in parts]
        super().__init__(sum(v.nbytes for v in views))
        self._parts = views
        self._sizes = [v.nbytes for v in views]
        self._starts = list(itertools.accumulate(self._sizes, initial=0))[:-1]
        self.size = self._length

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self._pos
        n = min(n, self.size - self._pos)
        if n <= 0:
            return b""
        pieces: list[memoryview] = []
        offset = 0
        want = n
        for part, size in zip(self._parts, self._sizes):
            if want <= 0:
                break
            if self._pos < offset + size:
                lo = self._pos - offset
                take = min(size - lo, want)
                pieces.append(part[lo:lo + take])
                self._pos += take
                want -= take
            offset += size
        return pieces[0].tobytes() if len(pieces) == 1 else b"".join(pieces)

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        dest = memoryview(b).cast("B")
        want = min(dest.nbytes, self.size - self._pos)
        written = 0
        offset = 0
        for part, size in zip(self._parts, self._sizes):
            if written >= want:
                break
            if self._pos >= offset + size:
                offset += size
                continue
            lo = self._pos - offset
            take = min(size - lo, want - written)
            dest[written:written + take] = part[lo:lo + take]
            written += take
            self._pos += take
            offset += size
        return written

    def read_view(self, n: int) -> memoryview:
        """Up to ``n`` of the next bytes as a view of the buffer holding them, without copying (shorter at the end
        of a buffer; empty at the end of the stream)."""
        if self._pos >= self.size or n <= 0:
            return memoryview(b"")
        # The last buffer starting at or before the position (found by bisection: a Parquet writer's output is
        # thousands of pieces); empty buffers start where the next one does, so this one holds the position.
        k = bisect.bisect_right(self._starts, self._pos) - 1
        lo = self._pos - self._starts[k]
        view = self._parts[k][lo:lo + n]
        self._pos += view.nbytes
        return view
