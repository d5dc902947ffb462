"""LocalBucket: a directory that behaves like a bucket. The embedded default backend.

Objects are plain files under the root, one per key ('/' in keys are directories). Writes go to a temp file
in the same directory and are renamed into place, so readers never see a half-written object. Conditional
writes take an exclusive lock on a lock file in the root (the ``filelock`` package: ``flock`` on POSIX,
``msvcrt`` locking on Windows), so they are safe between processes as well as threads. ETags are derived from the file's identity (inode, size, mtime): every write makes a new file, so the
etag changes on every write and is stable otherwise, which is what conditional writes need.

Content types and user metadata given to ``put_stream`` are not kept (S3 backends keep them): the catalog holds
each blob's MIME type and filename anyway, and a directory has nowhere natural to put them.

A read-only directory or a full disk raises StoreNotWritable or StoreFull, saying what to do.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import filelock

from ..errors import (
    BackendError,
    IntegrityError,
    InvalidKey,
    ObjectNotFound,
    PreconditionFailed,
    StoreFull,
    StoreNotWritable,
)
from .bucket import (
    CHUNK_SIZE,
    BucketClient,
    ObjectInfo,
    ProgressCallback,
    Readable,
    Sink,
    Staged,
    atomic_file,
    check_expires_in,
    check_key,
)

#: Names starting with this are ours (temp files, the lock); they are hidden from listings and refused as keys.
RESERVED_PREFIX = ".bh-"
_LOCK_NAME = ".bh-lock"
#: Staged objects (``LocalBucket.stage``): a writer may keep one open while its producer is slow, so
#: ``cleanup_incomplete`` leaves them for a day, as FileStore leaves S3 uploads waiting for their hash.
_STAGED_PREFIX = RESERVED_PREFIX + "staged-"
STAGED_SECONDS = 24 * 3600.0


class LocalBucket(BucketClient):
    """A bucket kept in a local directory (created on first use)."""

    backend = "local"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendError(f"cannot create the local store at {self.root}: {exc.strerror}; "
                               "choose a writable directory (BucketConfig.for_local(path))") from exc
        self._real_root = Path(os.path.realpath(self.root))
        self.name = self.root.name or "local"
        self._thread_lock = threading.Lock()
        # One lock object per bucket; the thread lock keeps this process's threads in line, the file lock
        # other processes.
        self._file_lock = filelock.FileLock(str(self._real_root / _LOCK_NAME), timeout=60, thread_local=False)

    def __repr__(self) -> str:
        return f"LocalBucket({str(self.root)!r})"

    # -- paths ------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        """The file for ``key``; refuse keys that could land outside the root, even through symlinks."""
        check_key(key)
        parts = key.split("/")
        if any(part.startswith(RESERVED_PREFIX) for part in parts):
            raise InvalidKey(f"object key {key!r} uses the reserved prefix {RESERVED_PREFIX!r}")
        path = self._real_root.joinpath(*parts)
        # Resolve symlinks in the directories (and the file, if it is one) and check containment.
        real = Path(os.path.realpath(path))
        if real != self._real_root and self._real_root not in real.parents:
            raise InvalidKey(f"object key {key!r} resolves outside the store's root {self.root}")
        return path

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """Exclusive between this process's threads and other processes."""
        with self._thread_lock:
            try:
                self._file_lock.acquire(poll_interval=0.001)
            except filelock.Timeout:
                raise BackendError(f"timed out waiting for the lock {self._file_lock.lock_file}; "
                                   "is another process stuck writing this store?") from None
            try:
                yield
            finally:
                self._file_lock.release()

    @contextmanager
    def _writing(self, key: str) -> Iterator[None]:
        """Turn a read-only directory or a full disk into a named error that says what to do."""
        try:
            yield
        except OSError as exc:
            if isinstance(exc, BackendError):
                raise
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise StoreNotWritable(
                    f"cannot write {key!r} to the local store at {self.root}: {exc.strerror or exc}; make the "
                    "directory writable or choose another one (BH_NOTEBOOK_HOME, BucketConfig.for_local(path))",
                    code=errno.errorcode.get(exc.errno or 0)) from exc
            if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG):
                raise StoreFull(
                    f"cannot write {key!r} to the local store at {self.root}: {exc.strerror or exc}; free some "
                    "space (%bh_gc removes unreferenced blobs) or choose a store on a larger disk",
                    code=errno.errorcode.get(exc.errno or 0)) from exc
            raise

    # -- primitives -------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not _is_file(st):
            return None
        return ObjectInfo(key=key, size=st.st_size, etag=_etag(st), last_modified=st.st_mtime,
                          server_time=time.time())

    def touch(self, key: str, *, content_type: str | None = None,
              metadata: Mapping[str, str] | None = None) -> bool:
        path = self._path(key)
        try:
            if not _is_file(os.stat(path)):
                return False
            os.utime(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def get_range(self, key: str, start: int, end: int | None = None) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                lo, hi, _ = slice(start, end).indices(size)
                if hi <= lo:
                    return b""
                f.seek(lo)
                return f.read(hi - lo)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"no object {key!r} in {self.root}") from None

    def get_into(self, key: str, buffer: memoryview | bytearray, start: int = 0,
                 *, progress: ProgressCallback | None = None, sink: Sink | None = None) -> int:
        view = memoryview(buffer).cast("B")
        path = self._path(key)
        try:
            f = open(path, "rb", buffering=0)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"no object {key!r} in {self.root}") from None
        with f:
            f.seek(start)
            # The sink (a hasher) runs in a helper thread on the piece just read while the next one is read.
            pending: Future[object] | None = None
            pool = ThreadPoolExecutor(1, thread_name_prefix="bh-sink") if sink is not None else None
            try:
                done = 0
                while done < view.nbytes:
                    n = f.readinto(view[done:done + 16 * CHUNK_SIZE])
                    if not n:
                        raise IntegrityError(f"{key!r} ended after {start + done} bytes; it is shorter than expected")
                    if pool is not None and sink is not None:
                        if pending is not None:
                            pending.result()
                        pending = pool.submit(sink, view[done:done + n])
                    done += n
                    if progress is not None:
                        progress(n)
                if pending is not None:
                    pending.result()
            finally:
                if pool is not None:
                    pool.shutdown(wait=True)
        return done

    def open_read(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"no object {key!r} in {self.root}") from None

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
        if if_none_match not in (None, "*"):
            raise ValueError("if_none_match only accepts '*'")
        path = self._path(key)
        with self._writing(key):
            return self._put(fileobj, key, path, if_none_match, if_match, progress)

    def _put(self, fileobj: Readable, key: str, path: Path, if_none_match: str | None, if_match: str | None,
             progress: ProgressCallback | None) -> str:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise InvalidKey(f"cannot store {key!r}: a parent of it is an object already") from None
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=RESERVED_PREFIX + "tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                readinto = getattr(fileobj, "readinto", None)
                read_view = getattr(fileobj, "read_view", None)
                if read_view is not None:  # buffers in memory (an array's): written from where they are
                    while (view := read_view(8 * CHUNK_SIZE)).nbytes:
                        out.write(view)
                        if progress is not None:
                            progress(view.nbytes)
                elif readinto is not None:
                    buf = bytearray(8 * CHUNK_SIZE)
                    view = memoryview(buf)
                    while n := readinto(view):
                        out.write(view[:n])
                        if progress is not None:
                            progress(n)
                else:
                    while chunk := fileobj.read(8 * CHUNK_SIZE):
                        out.write(chunk)
                        if progress is not None:
                            progress(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            with self._lock():
                if if_none_match is not None or if_match is not None:
                    current = self.head(key)
                    if if_none_match == "*" and current is not None:
                        raise PreconditionFailed(f"{key!r} already exists (if_none_match='*')")
                    if if_match is not None and (current is None or current.etag != if_match):
                        raise PreconditionFailed(
                            f"{key!r} changed since it was read (etag {if_match} expected, "
                            f"found {current.etag if current else 'no object'})"
                        )
                if path.is_dir():
                    raise InvalidKey(f"cannot store {key!r}: it is a prefix of other objects")
                os.replace(tmp, path)
                st = os.stat(path)
            return _etag(st)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def stage(self, prefix: str) -> _Staged:
        """A temp file in the directory the keys starting with ``prefix`` go to: ``commit`` renames it into
        place, so the bytes are written while they are made (a blob's hash is known only at its end) rather than
        after, and are not held in memory until then."""
        head, _, _ = prefix.rpartition("/")
        directory = self._path(head) if head else self._real_root
        with self._writing(prefix):
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise InvalidKey(f"cannot store under {prefix!r}: a parent of it is an object already") from None
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=_STAGED_PREFIX)
        return _Staged(self, fd, tmp, prefix)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._writing(key), self._lock():
            try:
                os.unlink(path)
            except (FileNotFoundError, NotADirectoryError):
                return
            except IsADirectoryError:
                return
        self._prune_dirs(path.parent)

    def _prune_dirs(self, directory: Path) -> None:
        """Remove empty directories left by deletes, as S3 has no empty 'folders'."""
        while directory != self._real_root and self._real_root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if not isinstance(prefix, str):
            raise InvalidKey(f"prefix must be a str, not {type(prefix).__name__}")
        # Walk only the directory the prefix points into.
        head, _, _ = prefix.rpartition("/")
        start = self._real_root.joinpath(*head.split("/")) if head else self._real_root
        if ".." in head.split("/"):
            raise InvalidKey(f"prefix {prefix!r} has a '..' segment")
        yield from (info for info in self._walk(start, head + "/" if head else "") if info.key.startswith(prefix))

    def _walk(self, directory: Path, key_prefix: str) -> Iterator[ObjectInfo]:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        # S3 orders keys by their bytes: "a/b" sorts after "a.txt" but before "a0"; emulate by sorting full keys.
        items: list[tuple[str, os.DirEntry[str]]] = []
        for entry in entries:
            if entry.name.startswith(RESERVED_PREFIX):
                continue
            items.append((key_prefix + entry.name + ("/" if entry.is_dir(follow_symlinks=False) else ""), entry))
        items.sort(key=lambda item: item[0].encode("utf-8"))
        for key, entry in items:
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), key)
            elif entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                yield ObjectInfo(key=key, size=st.st_size, etag=_etag(st), last_modified=st.st_mtime)

    def generate_presigned_get(self, key: str, *, expires_in: int) -> str:
        """A ``file://`` URL of the object (a local store has nothing to sign: it does not expire, and only this
        machine can read it). ``expires_in`` is checked as for S3."""
        path = self._path(key)
        check_expires_in(expires_in)
        return path.as_uri()

    def cleanup_incomplete(self, older_than: float = 3600.0) -> int:
        """Delete temp files of writes that never finished (a killed process) older than ``older_than`` seconds;
        staged objects (``stage``) only after ``STAGED_SECONDS`` (a day) too, as their writer may still be at work."""
        removed = 0
        cutoff = time.time() - older_than
        staged_cutoff = time.time() - max(older_than, STAGED_SECONDS)
        for dirpath, _dirs, names in os.walk(self._real_root):
            for name in names:
                if name.startswith(RESERVED_PREFIX + "tmp-"):
                    before = cutoff
                elif name.startswith(_STAGED_PREFIX):
                    before = staged_cutoff
                else:
                    continue
                path = os.path.join(dirpath, name)
                try:
                    if os.stat(path).st_mtime <= before:
                        os.unlink(path)
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def download(self, key: str, path: str | os.PathLike[str], *, progress: ProgressCallback | None = None,
                 if_match: str | None = None) -> Path:
        dest = Path(path)
        with self.open_read(key) as src:  # an open file keeps its version: writes replace files, never edit them
            if if_match is not None and _etag(os.fstat(src.fileno())) != if_match:
                raise PreconditionFailed(f"{key!r} changed since it was read (etag {if_match} expected); "
                                         "not downloaded")
            with atomic_file(dest) as out:
                while chunk := src.read(CHUNK_SIZE):
                    out.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
        return dest

    def copy(self, src_key: str, dst_key: str, *, if_match: str | None = None) -> None:
        with self.open_read(src_key) as src:
            if if_match is not None and _etag(os.fstat(src.fileno())) != if_match:
                raise PreconditionFailed(f"{src_key!r} changed since it was read (etag {if_match} expected); "
                                         "not copied")
            self.put_stream(src, dst_key)


def _is_file(st: os.stat_result) -> bool:
    import stat

    return stat.S_ISREG(st.st_mode)


class _Staged(Staged):
    """A temp file beside the objects of one directory (``LocalBucket.stage``)."""

    def __init__(self, bucket: LocalBucket, fd: int, tmp: str, prefix: str) -> None:
        self._bucket = bucket
        self._fd: int | None = fd
        self._tmp = tmp
        self._prefix = prefix
        self._size = 0

    def write(self, data: memoryview) -> None:
        fd = self._fd
        if fd is None:
            raise ValueError("this staged object was committed or discarded")
        view = memoryview(data).cast("B")
        with self._bucket._writing(self._prefix + "<a new blob>"):
            while view.nbytes:
                n = os.write(fd, view)
                view = view[n:]
                self._size += n

    def commit(self, key: str, *, progress: ProgressCallback | None = None) -> str:
        fd = self._fd
        if fd is None:
            raise ValueError("this staged object was committed or discarded")
        if key.rpartition("/")[0] != self._prefix.rpartition("/")[0]:  # (a rename within one directory)
            raise InvalidKey(f"{key!r} is not in the directory of {self._prefix!r}, where this object was staged")
        bucket = self._bucket
        path = bucket._path(key)
        with bucket._writing(key):
            os.fsync(fd)
            self._fd = None
            os.close(fd)
            try:
                os.chmod(self._tmp, 0o644)
                os.utime(self._tmp)  # (dated now, as a new upload is: the collector's grace runs from here)
            except FileNotFoundError:
                raise BackendError(f"the bytes staged for {key!r} in {bucket.root} were removed before they were "
                                   f"stored (cleanup_incomplete removes staged objects after "
                                   f"{STAGED_SECONDS / 3600:.0f} h); put the data again") from None
            with bucket._lock():
                if path.is_dir():
                    raise InvalidKey(f"cannot store {key!r}: it is a prefix of other objects")
                os.replace(self._tmp, path)
                st = os.stat(path)
        self._tmp = ""
        if progress is not None:
            progress(self._size)
        return _etag(st)

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tmp:
            try:
                os.unlink(self._tmp)
            except OSError:
                pass
            self._tmp = ""


def _etag(st: os.stat_result) -> str:
    ident = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode()
    return '"' + hashlib.md5(ident, usedforsecurity=False).hexdigest() + '"'
