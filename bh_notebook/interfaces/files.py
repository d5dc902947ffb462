"""FileStore: a content-addressed blob store, one bucket object per blob, metadata in the catalog.

A blob's key (its "bh-key") is the SHA-256 hex of its bytes, so identical data is stored once. Rows live in the
``filestore`` table (its name predates the ``bh_`` convention); bytes live under ``prefix`` in the bucket.
Blobs are uploaded before their rows are written, so a row never points at an object that was not stored.
"""

from __future__ import annotations

import hashlib
import io
import json
import mimetypes
from urllib.parse import quote
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..connection import quote_ident
from ..errors import (
    BlobInUse,
    BlobNotFound,
    IntegrityError,
    InvalidBhKey,
    InvalidKey,
    KeyTypeError,
    NotFound,
    ObjectNotFound,
    StoreFull,
    StoreNotWritable,
    ValueTypeError,
)
from ..storage.bucket import CHUNK_SIZE, ChainReader, ProgressCallback, Sink, Staged, atomic_file
from .base import Interface

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..config import BucketConfig
    from ..storage.bucket import BucketClient

_BH_KEY_RE = re.compile(r"^[0-9a-f]{64}$")

#: The catalog table of chunk hashes: per blob, the SHA-256 of each ``chunk_size`` bytes, concatenated. Its key
#: column is deliberately not called ``bh_key``: every table with one counts as entries that use blobs.
CHUNKS_TABLE = "bh_blob_chunks"
_DIGEST = 32
#: Below this many bytes a put hashes the chunks in the calling thread (a helper thread would cost more).
_THREADED_HASH = 1024 * 1024
#: A verified ``get_into`` of up to this many bytes (whole chunks) is one ranged GET into a scratch buffer, then a
#: copy; a larger one lands straight in the caller's buffer, its first and last chunks' other bytes fetched beside.
_ONE_GET = 8 * 1024 * 1024


class _ChunkHasher:
    """SHA-256 digests of consecutive ``chunk_size``-byte chunks of the bytes fed to ``update``, in order."""

    def __init__(self, chunk_size: int) -> None:
        self._size = chunk_size
        self._h = hashlib.sha256()
        self._fill = 0
        self._digests = bytearray()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view.nbytes:
            take = min(self._size - self._fill, view.nbytes)
            self._h.update(view[:take])
            self._fill += take
            view = view[take:]
            if self._fill == self._size:
                self._digests += self._h.digest()
                self._h = hashlib.sha256()
                self._fill = 0

    def digests(self) -> bytes:
        """The digests of every chunk fed so far, the last one possibly short."""
        if self._fill:
            self._digests += self._h.digest()
            self._h = hashlib.sha256()
            self._fill = 0
        return bytes(self._digests)


@dataclass(frozen=True)
class ChunkHashes:
    """A blob's chunk hashes, as the catalog keeps them: chunk ``k`` is bytes ``[k * chunk_size, (k + 1) *
    chunk_size)`` (the last one ends with the blob) and its SHA-256 is ``digests[32 k : 32 k + 32]``."""

    bh_key: str
    size: int
    chunk_size: int
    digests: bytes

    def span(self, start: int, end: int) -> tuple[int, int]:
        """``[start, end)`` widened to chunk boundaries (and cut at the blob's end)."""
        cs = self.chunk_size
        return start // cs * cs, min(self.size, -(-end // cs) * cs)

    def check(self, start: int, digests: bytes) -> None:
        """Compare the digests of the whole chunks from offset ``start`` (a chunk boundary) with the catalog's."""
        first = start // self.chunk_size
        for i in range(len(digests) // _DIGEST):
            k = first + i
            if digests[i * _DIGEST:(i + 1) * _DIGEST] != self.digests[k * _DIGEST:(k + 1) * _DIGEST]:
                lo = k * self.chunk_size
                raise IntegrityError(
                    f"the stored bytes of blob {self.bh_key[:12]}... do not match the SHA-256 of its chunk {k} "
                    f"(bytes {lo}-{min(self.size, lo + self.chunk_size)}); the object was truncated or altered in "
                    "the bucket. Put the data again to repair it")


@dataclass(frozen=True)
class FileMetadata:
    """A stored blob as the catalog describes it."""

    bh_key: str
    size: int
    mime: str | None
    filename: str | None
    created_at: float
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class GCReport:
    """What ``FileStore.gc`` found and did."""

    orphans_found: int = 0
    orphans_skipped_grace: int = 0
    orphans_deleted: int = 0
    dangling_rows_found: int = 0
    #: Leftovers of writes killed half-way (temp files, unfinished multipart uploads) removed; ours, not the seed's.
    incomplete_removed: int = 0
    #: Blobs this catalog no longer uses that another catalog in the bucket still does (a branch, the previous
    #: snapshot kept for ``restore_from="prev"``, or the committed catalog); kept, not counted as orphans; ours.
    kept_for_other_catalogs: int = 0
    #: The bh-keys of the orphans deleted (or, with ``dry_run``, that would be); ours, not the seed's.
    deleted: list[str] = field(default_factory=list, compare=False)


#: Content-Type of a blob whose type is not known.
DEFAULT_CONTENT_TYPE = "application/octet-stream"


def _describe(mime: str | None, entry: tuple[str, str] | None) -> dict[str, Any]:
    """Content-Type and user metadata for a new blob (what a generic S3 browser shows about it)."""
    about: dict[str, Any] = {"content_type": mime or DEFAULT_CONTENT_TYPE}
    if entry is not None:
        kind, name = entry
        # User metadata travels as HTTP headers: ASCII only, so the name is percent-encoded (UTF-8).
        about["metadata"] = {"bh-kind": kind, "bh-name": quote(name, safe=" /-_.~!$&'()*+,;=:")}
    return about


def check_bh_key(bh_key: object) -> str:
    """Validate a bh-key: 64 lowercase hex characters."""
    if not isinstance(bh_key, str):
        raise KeyTypeError(f"bh-keys are str, not {type(bh_key).__name__}")
    if not _BH_KEY_RE.match(bh_key):
        raise InvalidKey(f"{bh_key!r} is not a bh-key (the 64-character SHA-256 hex that put() returned)")
    return bh_key


def _check_metadata(metadata: object) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in metadata.items()):
        raise ValueTypeError("metadata must be a dict of str to str, e.g. {'source': 'survey 2024'}")
    return metadata


class FileStore(Interface):
    """Content-addressable blob store: owns the ``filestore`` table and a prefix in the bucket.

    Its kind is "blob": the store under every other kind, reached as ``bh.files`` and ``bh.stores["blob"]`` but
    not listed with the entries (a blob is listed through the entries that use it)."""

    kind = "blob"
    attr = "files"
    listed = False

    @classmethod
    def for_catalog(cls, conn: sqlite3.Connection, bucket: BucketClient, config: BucketConfig,
             stores: Mapping[str, Interface]) -> Interface:
        return cls(conn, bucket, prefix=config.files_prefix)

    @classmethod
    def merge_rules(cls) -> dict[str, str]:
        return {"filestore": "blobs"}

    def status_counts(self) -> dict[str, int]:
        return {"blobs": len(self), "blob_bytes": self.total_size()}

    #: Makes a progress callback for a transfer, ``factory(label, total_bytes)``; it is used when a call passes no
    #: ``progress=`` and is closed (``.close()``) when the transfer ends. BucketSQLite sets it; None shows nothing.
    progress_factory: Callable[[str, int | None], Any] | None = None

    @contextmanager
    def _progress(self, progress: ProgressCallback | None, label: str, total: int | None) -> Iterator[Any]:
        if progress is not None or self.progress_factory is None:
            yield progress
            return
        bar = self.progress_factory(label, total)
        try:
            yield bar
        finally:
            bar.close()

    #: How long (seconds) a blob this process uploaded or checked stays trusted: a re-put within it sends no
    #: request. Later, or for a blob known only from the catalog, a re-put costs one HEAD, and a row whose object
    #: is gone (or has the wrong size) is repaired by uploading the bytes again instead of being trusted.
    trust_seconds: float = 60.0
    #: A blob a put relies on without uploading it must have been written at most this long ago by the bucket's
    #: clock; an older one is touched (its last-modified set to now, its bytes kept). With ``trust_seconds`` this
    #: bounds the age of anything a new row points at to 120 s, well inside the collector's default grace (300 s):
    #: a blob whose last entry another writer deleted survives until this writer's commit shows it is used again.
    fresh_seconds: float = 60.0
    #: Set by BucketSQLite: brings the catalog to the latest shared state (pull, then commit) before ``gc()``
    #: decides anything, and returns the blobs that committed state uses, which are spared too: no blob is judged
    #: by a stale catalog or by a change only this process has made.
    before_collect: Callable[[], set[str]] | None = None

    #: Bytes per chunk hash of new blobs (see ``bh_blob_chunks``): a ranged read fetches and checks whole chunks.
    #: Blobs keep the chunk size they were put with.
    chunk_size: int = 1024 * 1024

    def __init__(self, conn: sqlite3.Connection, bucket_client: BucketClient, prefix: str = "files/") -> None:
        self._prefix = prefix if prefix.endswith("/") else prefix + "/"
        super().__init__(conn, bucket_client)
        self._store: BucketClient = bucket_client
        # Blobs this process uploaded or checked, with when (monotonic): see ``trust_seconds``.
        self._present: dict[str, float] = {}
        self._clock: Callable[[], float] = time.monotonic

    def _trusted(self, bh_key: str) -> bool:
        """True when this process uploaded or checked the blob within ``trust_seconds``."""
        seen = self._present.get(bh_key)
        return seen is not None and self._clock() - seen < self.trust_seconds

    def _renew_after_slow_upload(self, started: float, object_key: str, size: int, describe: dict[str, Any]) -> None:
        """An upload that took longer than ``fresh_seconds`` may carry the time it *started* as its last-modified
        (S3 dates a multipart upload by its initiation): check it once more, touching it when it looks old, so the
        collector's grace runs from now."""
        if self._clock() - started > self.fresh_seconds and not self._rely_on(object_key, size, describe):
            raise IntegrityError(f"{object_key!r} is missing or has the wrong size right after it was uploaded; "
                                 "nothing points at it yet. Put the data again")

    def adopt(self, bh_key: str, size: int, *, chunks: tuple[int, bytes], filename: str | None,
              mime: str | None) -> None:
        """Register a blob another process (a Dask worker) uploaded, with its chunk hashes. Not trusted: call
        ``rely`` right before a row points at it (the upload may be older than gc's grace)."""
        check_bh_key(bh_key)
        if self._has_row(bh_key):
            self._add_chunks(bh_key, chunks)
        else:
            self._insert(bh_key, self._prefix + bh_key, size, mime, filename, None, chunks)

    def rely(self, bh_key: str, *, entry: tuple[str, str] | None = None) -> None:
        """About to point a new row at a blob already stored (a frame version that reuses the parts of the one
        before it): make sure the object is in the bucket and fresh enough to outlive the commit that adds the
        row, as a re-put of its bytes would (nothing when this process checked it lately; else one HEAD, and a
        touch when it is old). BlobNotFound when it is gone: nothing is written then."""
        if self._trusted(bh_key):
            return
        row = self._conn.execute("SELECT object_key, size, mime FROM filestore WHERE bh_key = ?",
                                 (bh_key,)).fetchone()
        if row is None or not self._rely_on(row[0], int(row[1]), _describe(row[2], entry)):
            raise BlobNotFound(f"blob {bh_key[:12]} is missing from {'the catalog' if row is None else 'the bucket'}"
                               "; nothing was stored. bh.check() says which entries it belongs to")
        self._present[bh_key] = self._clock()

    def _rely_on(self, object_key: str, size: int, describe: dict[str, Any]) -> bool:
        """Whether the object is in the bucket with the right size, made fresh enough to outlive our commit.

        One HEAD; plus a touch when the object is older than ``fresh_seconds``. False means: upload it."""
        info = self._store.head(object_key)
        if info is None or info.size != size:  # gone, or an empty or truncated object: put the bytes again
            return False
        age = info.age if info.age is not None else time.time() - info.last_modified
        if age > self.fresh_seconds:
            return self._store.touch(object_key, **describe)
        return True

    def _init_schema(self) -> None:
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS filestore ("
            " bh_key TEXT PRIMARY KEY NOT NULL,"
            " object_key TEXT NOT NULL,"
            " size INTEGER NOT NULL,"
            " mime TEXT,"
            " filename TEXT,"
            " created_at REAL NOT NULL,"
            " metadata TEXT)"
        )
        # buckethead's index: list() pages newest first.
        self._conn.execute("CREATE INDEX IF NOT EXISTS idx_filestore_created ON filestore(created_at)")
        self._conn.execute(
            f"CREATE TABLE IF NOT EXISTS {CHUNKS_TABLE} ("
            " blob TEXT PRIMARY KEY NOT NULL,"
            " chunk_size INTEGER NOT NULL,"
            " digests BLOB NOT NULL)"
        )
        self._conn.commit()

    @property
    def prefix(self) -> str:
        """The bucket prefix blobs are stored under."""
        return self._prefix

    def object_key(self, bh_key: str) -> str:
        """The bucket key of a blob."""
        return self._prefix + check_bh_key(bh_key)

    # -- writes -----------------------------------------------------------------------------

    def put(
        self,
        data: bytes | bytearray | memoryview | Path,
        *,
        filename: str | None = None,
        mime: str | None = None,
        metadata: dict[str, str] | None = None,
        progress: ProgressCallback | None = None,
        entry: tuple[str, str] | None = None,
    ) -> str:
        """Upload; return the bh-key (SHA-256 hex of the contents).

        When the catalog already has the bh-key this is a no-op (new metadata is ignored, and no request is
        sent). When the object exists but the row is missing (a put that crashed half-way), the row is filled
        in from this call's arguments. A Path is hashed and uploaded by streaming, never read whole into
        memory; its name is the default ``filename``.

        The object gets ``mime`` as its Content-Type (else one guessed from ``filename``, else
        ``application/octet-stream``) and, when ``entry=(kind, name)`` says which entry it is first stored for,
        user metadata ``bh-kind`` and ``bh-name`` (percent-encoded UTF-8), so that a generic S3 browser explains
        it. The key stays the content hash; a blob shared by later entries keeps the first one's metadata.
        """
        metadata = _check_metadata(metadata)
        if isinstance(data, os.PathLike) and not isinstance(data, Path):
            data = Path(data)
        if isinstance(data, Path):
            path = data
            try:
                size = path.stat().st_size
                if not path.is_file():
                    raise ValueTypeError(f"{path} is not a regular file; put() stores files, not directories")
                bh_key, digests = _hash_file(path, self.chunk_size)
            except FileNotFoundError:
                raise NotFound(f"no file at {path}; check the path (relative paths start at {Path.cwd()})") from None
            filename = filename if filename is not None else path.name
            if mime is None and filename:
                mime = mimetypes.guess_type(filename)[0]
            return self._put_blob(
                bh_key, size, label=filename or path.name, mime=mime, filename=filename, metadata=metadata,
                progress=progress, entry=entry, chunks=(self.chunk_size, digests),
                send=lambda key, cb, describe: self._store.upload(path, key, progress=cb, **describe))
        if isinstance(data, (bytes, bytearray, memoryview)):
            if mime is None and filename:
                mime = mimetypes.guess_type(filename)[0]
            return self.put_buffers(data, filename=filename, mime=mime, metadata=metadata, progress=progress,
                                    entry=entry)
        if isinstance(data, str):
            raise ValueTypeError("put() takes bytes or a pathlib.Path; for a path in a str use Path(...), "
                                 "for text use text.encode()")
        raise ValueTypeError(f"put() takes bytes or a pathlib.Path, not {type(data).__name__}")

    def put_buffers(
        self,
        *buffers: bytes | bytearray | memoryview,
        filename: str | None = None,
        mime: str | None = None,
        metadata: dict[str, str] | None = None,
        progress: ProgressCallback | None = None,
        entry: tuple[str, str] | None = None,
    ) -> str:
        """Store the concatenation of ``buffers`` as one blob without joining them in memory; return its bh-key.

        Useful for a header followed by a large buffer (an array's memory): both are hashed and streamed in place.
        """
        metadata = _check_metadata(metadata)
        views = [memoryview(b).cast("B") for b in buffers]
        hasher = hashlib.sha256()
        chunker = _ChunkHasher(self.chunk_size)

        def hash_chunks() -> None:
            for v in views:
                chunker.update(v)

        if sum(v.nbytes for v in views) >= _THREADED_HASH:
            # One pass over the bytes, two hashes side by side: hashlib releases the GIL on large updates.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(1, thread_name_prefix="bh-hash") as pool:
                done = pool.submit(hash_chunks)
                for v in views:
                    hasher.update(v)
                done.result()
        else:
            for v in views:
                hasher.update(v)
            hash_chunks()
        return self._store_hashed(hasher.hexdigest(), views, filename=filename, mime=mime, metadata=metadata,
                                  progress=progress, entry=entry, chunks=(self.chunk_size, chunker.digests()))

    def writer(self, *, filename: str | None = None, mime: str | None = None,
               metadata: dict[str, str] | None = None, progress: ProgressCallback | None = None,
               entry: tuple[str, str] | None = None) -> BlobWriter:
        """A writable file object whose bytes become one blob when it is closed; its ``bh_key`` is set then.

        The bytes are hashed in a helper thread while the caller is still producing them (a Parquet encoder,
        say), so the hash costs no extra time at the end::

            with bh.files.writer(filename="t.parquet") as w:
                pq.write_table(table, w)
            w.bh_key
        """
        return BlobWriter(self, filename=filename, mime=mime, metadata=_check_metadata(metadata), progress=progress,
                          entry=entry)

    def _store_hashed(self, bh_key: str, views: list[memoryview], *, filename: str | None, mime: str | None,
                      metadata: dict[str, str] | None, progress: ProgressCallback | None,
                      entry: tuple[str, str] | None = None, chunks: tuple[int, bytes] | None = None) -> str:
        """Store ``views`` (whose SHA-256 hex is ``bh_key``, computed by the caller from exactly these bytes, as
        were the chunk hashes ``chunks``, ``(chunk_size, digests)``).

        A no-op when the row exists and the object is known to be in the bucket; a row whose object is gone is
        repaired by uploading again (the seed's rule: a put is a no-op only when the blob is in both tiers)."""
        size = sum(v.nbytes for v in views)
        return self._put_blob(
            bh_key, size, label=filename or bh_key[:12], mime=mime, filename=filename, metadata=metadata,
            progress=progress, entry=entry, chunks=chunks,
            send=lambda key, cb, describe: self._store.put_stream(ChainReader(*views), key, size=size, progress=cb,
                                                                  **describe))

    def _store_staged(self, bh_key: str, staged: Staged, size: int, *, filename: str | None, mime: str | None,
                      metadata: dict[str, str] | None, progress: ProgressCallback | None,
                      entry: tuple[str, str] | None = None, chunks: tuple[int, bytes] | None = None) -> str:
        """``_store_hashed`` for bytes already written to the store's staging place (``BlobWriter``): committed
        under the blob's key when it must be stored, discarded when it is there already."""
        try:
            return self._put_blob(
                bh_key, size, label=filename or bh_key[:12], mime=mime, filename=filename, metadata=metadata,
                progress=progress, entry=entry, chunks=chunks,
                send=lambda key, cb, describe: staged.commit(key, progress=cb))
        finally:
            staged.discard()

    def _put_blob(self, bh_key: str, size: int, *, label: str, mime: str | None, filename: str | None,
                  metadata: dict[str, str] | None, progress: ProgressCallback | None,
                  entry: tuple[str, str] | None, chunks: tuple[int, bytes] | None,
                  send: Callable[[str, ProgressCallback | None, dict[str, Any]], object]) -> str:
        """What every put does once the bytes are hashed: trust a blob this process checked lately, else rely on
        the object in the bucket (HEAD, size, touch when old) or upload it with ``send(object_key, progress,
        describe)``; then register the row (or add chunk hashes to an older one)."""
        has_row = self._has_row(bh_key)
        if has_row and self._trusted(bh_key):
            self._add_chunks(bh_key, chunks)
            return bh_key
        object_key = self._prefix + bh_key
        describe = _describe(mime, entry)
        if not self._rely_on(object_key, size, describe):
            started = self._clock()
            with self._progress(progress, f"put {label}", size) as cb:
                send(object_key, cb, describe)
            self._renew_after_slow_upload(started, object_key, size, describe)
        self._present[bh_key] = self._clock()
        if not has_row:
            self._insert(bh_key, object_key, size, mime, filename, metadata, chunks)
        else:
            self._add_chunks(bh_key, chunks)
        return bh_key

    def _insert(self, bh_key: str, object_key: str, size: int, mime: str | None, filename: str | None,
                metadata: dict[str, str] | None, chunks: tuple[int, bytes] | None = None) -> None:
        with self._conn:
            self._conn.execute(
                "INSERT OR IGNORE INTO filestore "
                "(bh_key, object_key, size, mime, filename, created_at, metadata) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (bh_key, object_key, size, mime, filename, time.time(),
                 json.dumps(metadata, sort_keys=True) if metadata else None),
            )
            if chunks is not None:
                self._conn.execute(f"INSERT OR IGNORE INTO {CHUNKS_TABLE} (blob, chunk_size, digests) "
                                   "VALUES (?, ?, ?)", (bh_key, chunks[0], chunks[1]))

    def _add_chunks(self, bh_key: str, chunks: tuple[int, bytes] | None) -> None:
        """Record the chunk hashes of a blob that has a row but none yet (an older blob, put again)."""
        if chunks is None or self._conn.execute(
                f"SELECT 1 FROM {CHUNKS_TABLE} WHERE blob = ?", (bh_key,)).fetchone() is not None:
            return
        with self._conn:
            self._conn.execute(f"INSERT OR IGNORE INTO {CHUNKS_TABLE} (blob, chunk_size, digests) VALUES (?, ?, ?)",
                               (bh_key, chunks[0], chunks[1]))

    def _referencing_tables(self) -> dict[str, tuple[set[str], tuple[str, ...]]]:
        """The catalog tables whose rows use blobs: {table: (its columns, the columns holding bh-keys)}."""
        return referencing_tables(self._conn)

    def references(self, bh_key: str) -> list[str]:
        """The entries that use blob ``bh_key``, as ``table:name@version`` (or ``table:row`` for other tables)."""
        found: list[str] = []
        for table, (cols, using) in self._referencing_tables().items():
            what = "name, version" if {"name", "version"} <= cols else "NULL, NULL"
            where = " OR ".join(f"{quote_ident(c)} = ?" for c in using)
            for name, version in self._conn.execute(
                    f"SELECT {what} FROM {quote_ident(table)} WHERE {where}", (bh_key,) * len(using)):
                found.append(f"{table}:{name}@{version}" if name is not None else f"{table}:row")
        return found

    def referenced_keys(self) -> set[str]:
        """Every blob some entry uses (whether or not its file row is there)."""
        return referenced_keys(self._conn)

    def delete(self, bh_key: str, *, force: bool = False) -> bool:
        """Remove the row and the object; return whether the row existed. A missing key is not an error.

        Refused with BlobInUse while an entry (an array, frame or named file version) uses the blob: deleting
        the entry frees it for ``gc()``. ``force=True`` deletes anyway, breaking those entries.
        """
        check_bh_key(bh_key)
        if not force:
            users = self.references(bh_key)
            if users:
                shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
                raise BlobInUse(f"blob {bh_key[:12]}... is used by {shown}; delete those entries instead (gc "
                                "removes the blob once nothing uses it), or pass force=True to break them")
        row = self._fetch_row(bh_key)
        self._present.pop(bh_key, None)
        with self._conn:
            self._conn.execute("DELETE FROM filestore WHERE bh_key = ?", (bh_key,))
            self._conn.execute(f"DELETE FROM {CHUNKS_TABLE} WHERE blob = ?", (bh_key,))
        self._store.delete(row["object_key"] if row else self._prefix + bh_key)
        return row is not None

    def release(self, bh_key: str) -> bool:
        """Drop the catalog's row of a blob no entry uses any more, leaving the object to ``gc()``.

        What entry deletes call: the object must outlive every catalog that still points at it, and the catalog
        already committed to the bucket does until the next flush (a writer killed in between would otherwise
        leave it pointing at nothing). ``gc()`` removes the object once it is an orphan past its grace period.
        Returns whether the row existed.
        """
        check_bh_key(bh_key)
        with self._conn:
            cur = self._conn.execute("DELETE FROM filestore WHERE bh_key = ?", (bh_key,))
            self._conn.execute(f"DELETE FROM {CHUNKS_TABLE} WHERE blob = ?", (bh_key,))
        self._present.pop(bh_key, None)  # gc may take the object from now on
        return cur.rowcount > 0

    # -- reads ------------------------------------------------------------------------------

    def _has_row(self, bh_key: str) -> bool:
        return self._conn.execute("SELECT 1 FROM filestore WHERE bh_key = ?", (bh_key,)).fetchone() is not None

    def _fetch_row(self, bh_key: str) -> dict[str, Any] | None:
        cur = self._conn.execute(
            "SELECT bh_key, object_key, size, mime, filename, created_at, metadata FROM filestore WHERE bh_key = ?",
            (bh_key,),
        )
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in cur.description], row))

    @staticmethod
    def _row_to_metadata(row: dict[str, Any]) -> FileMetadata:
        return FileMetadata(
            bh_key=row["bh_key"], size=int(row["size"]), mime=row["mime"], filename=row["filename"],
            created_at=float(row["created_at"]), metadata=json.loads(row["metadata"]) if row["metadata"] else {},
        )

    def _require(self, bh_key: str) -> dict[str, Any]:
        if isinstance(bh_key, str) and not _BH_KEY_RE.match(bh_key):
            raise InvalidBhKey(f"{bh_key!r} is not a bh-key (the 64-character SHA-256 hex that put() returned)")
        check_bh_key(bh_key)
        row = self._fetch_row(bh_key)
        if row is None:
            raise BlobNotFound(f"no blob {bh_key[:12]}... in the file store; bh.files.list() shows what is stored")
        return row

    def metadata(self, bh_key: str) -> FileMetadata | None:
        """The stored metadata for ``bh_key``, or None if absent or not a bh-key at all (catalog only, no
        request)."""
        if not isinstance(bh_key, str) or not _BH_KEY_RE.match(bh_key):
            return None
        row = self._fetch_row(bh_key)
        return None if row is None else self._row_to_metadata(row)

    def head(self, bh_key: str) -> FileMetadata:
        """The metadata for ``bh_key``, checking with one HEAD request that its object is in the bucket too.

        Raises BlobNotFound (a FileNotFoundError and a KeyError) when the catalog has no such blob or its object
        is missing; ``metadata()`` answers None instead, from the catalog alone."""
        row = self._require(bh_key)
        if not self._store.exists(row["object_key"]):
            raise self._missing(bh_key)
        return self._row_to_metadata(row)

    def get(self, bh_key: str, dest: Path | str | None = None, *,
            progress: ProgressCallback | None = None) -> Any:
        """The blob's bytes, or with ``dest`` the path it was streamed to. Verifies the SHA-256 on the way.

        Raises BlobNotFound (a FileNotFoundError and a KeyError) for an unknown bh-key or a missing object, and
        IntegrityError when the stored bytes do not match it.
        """
        row = self._require(bh_key)
        object_key = row["object_key"]
        if dest is None:
            buf = bytearray(int(row["size"]))
            self.get_verified(bh_key, buf, progress=progress)
            return bytes(buf)
        target = Path(dest)
        hasher = hashlib.sha256()
        with atomic_file(target) as out:
            try:
                src = self._store.open_read(object_key)
            except ObjectNotFound:
                raise self._missing(bh_key) from None
            with src, self._progress(progress, f"get {target.name}", int(row["size"])) as cb:
                while chunk := src.read(CHUNK_SIZE):
                    hasher.update(chunk)
                    out.write(chunk)
                    if cb is not None:
                        cb(len(chunk))
            if hasher.hexdigest() != bh_key:
                raise self._corrupt(bh_key)
        return target

    def open(self, bh_key: str) -> io.BufferedReader:
        """A readable stream of the blob (not verified; use ``get`` for checked bytes)."""
        row = self._require(bh_key)
        try:
            return io.BufferedReader(self._store.open_read(row["object_key"]), CHUNK_SIZE)  # type: ignore[arg-type]
        except ObjectNotFound:
            raise self._missing(bh_key) from None

    def get_range(self, bh_key: str, start: int, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of the blob, with one ranged GET (not verified; ``get_range_verified`` checks
        the chunks it touches)."""
        row = self._require(bh_key)
        try:
            return self._store.get_range(row["object_key"], start, end)
        except ObjectNotFound:
            raise self._missing(bh_key) from None

    def get_into(self, bh_key: str, buffer: memoryview | bytearray, start: int = 0, *,
                 progress: ProgressCallback | None = None) -> int:
        """Read ``len(buffer)`` bytes of the blob from ``start`` straight into ``buffer`` (not verified)."""
        row = self._require(bh_key)
        try:
            return self._store.get_into(row["object_key"], buffer, start, progress=progress)
        except ObjectNotFound:
            raise self._missing(bh_key) from None

    def chunk_hashes(self, bh_key: str) -> ChunkHashes | None:
        """The blob's chunk hashes from the catalog, or None for a blob put without them (read unverified).

        Raises IntegrityError when the catalog's row cannot describe the blob (a bad chunk size, or a number of
        digests that does not fit its size)."""
        return self._chunks_of(self._require(bh_key))

    def _chunks_of(self, row: dict[str, Any]) -> ChunkHashes | None:
        bh_key, size = row["bh_key"], int(row["size"])
        found = self._conn.execute(f"SELECT chunk_size, digests FROM {CHUNKS_TABLE} WHERE blob = ?",
                                   (bh_key,)).fetchone()
        if found is None:
            return None
        chunk_size, digests = found
        if not (isinstance(chunk_size, int) and chunk_size > 0 and isinstance(digests, bytes)
                and len(digests) == -(-size // chunk_size) * _DIGEST):
            raise IntegrityError(f"the catalog's chunk hashes of blob {bh_key[:12]}... do not fit the blob "
                                 f"({size} bytes); delete its {CHUNKS_TABLE} row, or put the data again")
        return ChunkHashes(bh_key, size, chunk_size, digests)

    def get_range_verified(self, bh_key: str, start: int, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of the blob (slice rules), checked against its chunk hashes: the range is widened
        to whole chunks, fetched with one ranged GET and each chunk's SHA-256 compared with the catalog's.

        Raises IntegrityError naming the chunk whose bytes were altered. A blob without chunk hashes (put by an
        older version) is read unverified, as ``get_range`` does."""
        row = self._require(bh_key)
        chunks = self._chunks_of(row)
        if chunks is None:
            return self.get_range(bh_key, start, end)
        start, end, _ = slice(start, end).indices(chunks.size)
        if end <= start:
            return b""
        lo, hi = chunks.span(start, end)
        try:
            data = self._store.get_range(row["object_key"], lo, hi)
        except ObjectNotFound:
            raise self._missing(bh_key) from None
        if len(data) != hi - lo:
            raise self._corrupt(bh_key)
        hasher = _ChunkHasher(chunks.chunk_size)
        hasher.update(data)
        chunks.check(lo, hasher.digests())
        return data if (lo, hi) == (start, end) else data[start - lo:end - lo]

    def get_into_verified(self, bh_key: str, buffer: memoryview | bytearray, start: int = 0, *,
                          progress: ProgressCallback | None = None) -> int:
        """Read ``len(buffer)`` bytes of the blob from ``start`` into ``buffer``, checked against its chunk hashes.

        The bytes of the first and last chunks outside the range are fetched too (up to 8 MiB of whole chunks with
        one ranged GET, then a copy; more lands straight in ``buffer``, the edges fetched beside), and the chunks
        are hashed as they arrive. A blob without chunk hashes is read unverified, as ``get_into`` does."""
        row = self._require(bh_key)
        chunks = self._chunks_of(row)
        view = memoryview(buffer).cast("B")
        end = start + view.nbytes
        if chunks is None or not view.nbytes:
            return self.get_into(bh_key, view, start, progress=progress)
        if start < 0 or end > chunks.size:
            raise ValueError(f"bytes {start}-{end} are outside blob {bh_key[:12]}... ({chunks.size} bytes)")
        lo, hi = chunks.span(start, end)
        object_key = row["object_key"]
        hasher = _ChunkHasher(chunks.chunk_size)
        try:
            if (lo, hi) != (start, end) and hi - lo <= max(_ONE_GET, 4 * chunks.chunk_size):
                whole = bytearray(hi - lo)
                self._store.get_into(object_key, whole, lo, progress=progress, sink=hasher.update)
                chunks.check(lo, hasher.digests())
                view[:] = memoryview(whole)[start - lo:end - lo]
                return view.nbytes
            before, after = bytearray(start - lo), bytearray(hi - end)
            if before:
                self._store.get_into(object_key, before, lo)
                hasher.update(before)
            self._store.get_into(object_key, view, start, progress=progress, sink=hasher.update)
            if after:
                self._store.get_into(object_key, after, end)
                hasher.update(after)
        except ObjectNotFound:
            raise self._missing(bh_key) from None
        chunks.check(lo, hasher.digests())
        return view.nbytes

    def get_verified(self, bh_key: str, buffer: memoryview | bytearray, *, head: bytes = b"",
                     progress: ProgressCallback | None = None, also: Sink | None = None) -> None:
        """Fill ``buffer`` with the blob's bytes that follow ``head`` and check the SHA-256 of the two together.

        For a caller that already knows the blob's first bytes (an array's ``.npy`` header, kept in the catalog):
        the rest lands straight in its final place, and is hashed while it downloads. ``also`` sees the same
        pieces in order, beside the hash (another digest of them).
        """
        row = self._require(bh_key)
        view = memoryview(buffer).cast("B")
        if len(head) + view.nbytes != int(row["size"]):
            raise self._corrupt(bh_key)
        hasher = hashlib.sha256(head)

        def both(piece: memoryview) -> None:
            hasher.update(piece)
            also(piece)  # type: ignore[misc]  # (only when given)

        sink: Sink = hasher.update if also is None else both
        try:
            if view.nbytes:
                with self._progress(progress, f"get {row['filename'] or bh_key[:12]}", view.nbytes) as cb:
                    self._store.get_into(row["object_key"], view, len(head), progress=cb, sink=sink)
            elif not self._store.exists(row["object_key"]):
                raise ObjectNotFound(row["object_key"])
        except ObjectNotFound:
            raise self._missing(bh_key) from None
        if hasher.hexdigest() != bh_key:
            raise self._corrupt(bh_key)
        # Not marked trusted: a read says nothing about the object's age, and another writer may be about to
        # free it; a re-put of these bytes checks (one HEAD) and touches it if it is old.

    def _missing(self, bh_key: str) -> BlobNotFound:
        return BlobNotFound(f"blob {bh_key[:12]}... is in the catalog but its object is missing from the bucket; "
                            "bh.files.gc() reports such dangling rows")

    def _corrupt(self, bh_key: str) -> IntegrityError:
        return IntegrityError(f"the stored bytes of blob {bh_key[:12]}... do not match its SHA-256; the object "
                              "was truncated or altered in the bucket. Put the data again to repair it")

    def list(self, limit: int = 100, after: str | None = None) -> list[FileMetadata]:
        """Up to ``limit`` blobs, newest first (by ``created_at``, then bh-key, both descending), starting after
        the blob whose bh-key is ``after`` (for paging: pass the last one of the previous page). An ``after`` the
        catalog does not hold gives an empty page."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("limit must be a positive int")
        cols = "bh_key, object_key, size, mime, filename, created_at, metadata"
        order = "ORDER BY created_at DESC, bh_key DESC LIMIT ?"
        if after is None:
            cur = self._conn.execute(f"SELECT {cols} FROM filestore {order}", (limit,))
        else:
            mark = self._conn.execute("SELECT created_at, bh_key FROM filestore WHERE bh_key = ?",
                                      (after,)).fetchone()
            if mark is None:
                return []
            cur = self._conn.execute(f"SELECT {cols} FROM filestore WHERE (created_at, bh_key) < (?, ?) {order}",
                                     (mark[0], mark[1], limit))
        names = [d[0] for d in cur.description]
        return [self._row_to_metadata(dict(zip(names, r))) for r in cur.fetchall()]

    def __iter__(self) -> Iterator[FileMetadata]:
        after: str | None = None
        while page := self.list(limit=500, after=after):
            yield from page
            after = page[-1].bh_key

    def __contains__(self, bh_key: object) -> bool:
        return isinstance(bh_key, str) and bool(_BH_KEY_RE.match(bh_key)) and self._has_row(bh_key)

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM filestore").fetchone()[0])

    def total_size(self) -> int:
        """Sum of the stored blobs' sizes, in bytes."""
        return int(self._conn.execute("SELECT coalesce(sum(size), 0) FROM filestore").fetchone()[0])

    def __repr__(self) -> str:
        return f"<FileStore: {len(self)} blobs, {self.total_size():,} bytes under {self._prefix!r}>"

    # -- reconciliation ----------------------------------------------------------------------

    def gc(self, grace_seconds: float = 300.0, *, dry_run: bool = False) -> GCReport:
        """Delete the blobs nothing uses any more: the one collector of blobs (entry deletes never remove any).

        Mark and sweep over the latest shared catalog: when this store belongs to a BucketSQLite, it first takes
        in what other writers committed and commits this process's changes (``before_collect``), so that neither
        a stale catalog nor a change only this process has decides. An object is deleted only when no row and no
        entry of any kind (any table with a ``bh_key`` column) points at it and it was last written longer than
        ``grace_seconds`` ago *by the bucket's clock*. Writers touch an old blob before they rely on it (see
        ``fresh_seconds``), so bytes put again since they became unreferenced are spared too. Each candidate is
        looked at once more (one HEAD) just before it is deleted. Dangling rows (a row whose object is gone) are
        counted, never deleted: a person decides.

        A grace period shorter than ``trust_seconds + fresh_seconds`` plus the time a writer takes to commit is
        only safe while no other writer is putting; the default (300 s) leaves three minutes for that commit.
        """
        if isinstance(grace_seconds, bool) or not isinstance(grace_seconds, (int, float)) or grace_seconds < 0:
            raise ValueError(f"grace_seconds must be a number of seconds >= 0, not {grace_seconds!r}")
        shared = self.before_collect() if self.before_collect is not None else set()
        return self._sweep(float(grace_seconds), dry_run=dry_run, spare=shared)

    def _sweep(self, grace_seconds: float, *, dry_run: bool, spare: set[str]) -> GCReport:
        report = GCReport()
        rows = {r[0] for r in self._conn.execute("SELECT bh_key FROM filestore")}
        known = rows | self.referenced_keys()  # an entry whose file row was lost still owns its blob
        seen: set[str] = set()
        now = self._store.clock()
        for info in self._store.list_info(self._prefix):
            bh_key = info.key[len(self._prefix):]
            seen.add(bh_key)
            if bh_key in known:
                continue
            if bh_key in spare:
                report.kept_for_other_catalogs += 1
                continue
            report.orphans_found += 1
            if now - info.last_modified < grace_seconds:
                report.orphans_skipped_grace += 1
                continue
            if not dry_run:
                latest = self._store.head(info.key)  # a writer may have touched it since the listing
                if latest is None:
                    continue
                latest_age = latest.age if latest.age is not None else now - latest.last_modified
                if latest.etag != info.etag or latest_age < grace_seconds:
                    report.orphans_skipped_grace += 1
                    continue
                self._store.delete(info.key)
            report.orphans_deleted += 1
            report.deleted.append(bh_key)
        report.dangling_rows_found = len(rows - seen)
        if not dry_run:
            report.incomplete_removed = self._store.cleanup_incomplete(grace_seconds)
            # Streams a killed writer left where bytes wait for their hash (a dask array's put): after a day.
            for info in self._store.list_info(self.incoming_prefix):
                if now - info.last_modified > max(grace_seconds, INCOMING_SECONDS):
                    self._store.delete(info.key)
                    report.incomplete_removed += 1
        return report

    @property
    def incoming_prefix(self) -> str:
        """Where bytes whose hash is not known yet are streamed (beside the blobs, not among them: gc and check
        do not take them for orphans while they are on their way)."""
        return self._prefix.rstrip("/") + "-incoming/"


#: An object under ``FileStore.incoming_prefix`` older than this is a killed writer's, deleted by gc.
INCOMING_SECONDS = 24 * 3600.0


class BlobWriter(io.RawIOBase):
    """A file object that collects bytes, hashing them in helper threads, and stores them as a blob on close.

    Where the store can stage an object before its key is known (a local directory: ``BucketClient.stage``), the
    bytes are also written there by a third helper as they come, and let go once written and hashed: the blob is
    on disk when the producer (a Parquet encoder) is done, and never whole in memory. Elsewhere they are kept
    until close, when the hash, the blob's key, is known and they are uploaded."""

    _BATCH = 8 * 1024 * 1024

    def __init__(self, files: FileStore, *, filename: str | None, mime: str | None,
                 metadata: dict[str, str] | None, progress: ProgressCallback | None,
                 entry: tuple[str, str] | None = None) -> None:
        super().__init__()
        from concurrent.futures import ThreadPoolExecutor

        self._files = files
        self._opts = {"filename": filename, "mime": mime, "metadata": metadata, "progress": progress,
                      "entry": entry}
        self._chunks: list[Any] = []
        self._batch: list[Any] = []
        self._batch_size = 0
        self._size = 0
        self._hasher = hashlib.sha256()
        self._chunker = _ChunkHasher(files.chunk_size)
        self._chunk_size = files.chunk_size
        try:
            self._staged = files._store.stage(files._prefix)
        except (StoreNotWritable, StoreFull):  # (kept in memory: a blob already stored needs no write at all)
            self._staged = None
        # Helpers: the whole-content hash, the chunk hashes and the staging write of a batch run side by side.
        self._pool = ThreadPoolExecutor(2 if self._staged is None else 3, thread_name_prefix="bh-hash")
        self._pending: list[Any] = []
        self.bh_key: str | None = None

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._size

    def write(self, b: Any) -> int:
        return self.write_owned(b if type(b) is bytes else bytes(b))  # (anything that may change later: copied)

    def write_owned(self, data: Any) -> int:
        """``write`` a buffer that no one changes afterwards (``bytes``, or one its maker hands over, as the
        parallel Parquet writer does with each encoded slice): it is kept as it is, not copied."""
        size = memoryview(data).nbytes
        if self._staged is None:
            self._chunks.append(data)
        self._batch.append(data)
        self._batch_size += size
        self._size += size
        if self._batch_size >= self._BATCH:
            self._flush_batch()
        return size

    def _flush_batch(self) -> None:
        for pending in self._pending:
            pending.result()
        batch, self._batch, self._batch_size = self._batch, [], 0
        hasher = self._hasher
        chunker = self._chunker
        staged = self._staged

        def update() -> None:
            for piece in batch:
                hasher.update(piece)

        def update_chunks() -> None:
            for piece in batch:
                chunker.update(piece)

        def stage() -> None:
            assert staged is not None
            for piece in batch:
                staged.write(memoryview(piece))

        self._pending = [self._pool.submit(update), self._pool.submit(update_chunks)]
        if staged is not None:
            self._pending.append(self._pool.submit(stage))

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._flush_batch()
            for pending in self._pending:
                pending.result()
            chunks = (self._chunk_size, self._chunker.digests())
            if self._staged is not None:
                self.bh_key = self._files._store_staged(self._hasher.hexdigest(), self._staged, self._size,
                                                        chunks=chunks, **self._opts)  # type: ignore[arg-type]
            else:
                self.bh_key = self._files._store_hashed(
                    self._hasher.hexdigest(), [memoryview(c) for c in self._chunks],
                    chunks=chunks, **self._opts)  # type: ignore[arg-type]
        finally:
            self._pool.shutdown(wait=self._staged is not None)  # (no staging write runs once its file is gone)
            self._chunks = []
            if self._staged is not None:
                self._staged.discard()
            super().close()

    def discard(self) -> None:
        """Drop what was written without storing it."""
        self._pool.shutdown(wait=True)  # (a staging write in flight ends before its file is removed)
        self._chunks = []
        self._batch = []
        if self._staged is not None:
            self._staged.discard()
        super().close()

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is not None:
            self.discard()
        else:
            self.close()


#: Where the registered kinds' blob columns come from: ``interfaces/registry.py`` (which imports this module) sets
#: it when it is imported. Until then only ``bh_key`` columns count, which is what every built-in kind uses.
_declared_blob_columns: list[Callable[[], dict[str, tuple[str, ...]]]] = [dict]


def declare_blob_columns(source: Callable[[], dict[str, tuple[str, ...]]]) -> None:
    """Set where ``referencing_tables`` learns which columns of which tables hold blob keys (the registry)."""
    _declared_blob_columns[0] = source


def referencing_tables(conn: sqlite3.Connection) -> dict[str, tuple[set[str], tuple[str, ...]]]:
    """The tables of the catalog behind ``conn`` whose rows use blobs: {table: (its columns, the bh-key columns)}.

    The registered kinds say which of their columns hold bh-keys (``blob_columns()``); any other table with a
    ``bh_key`` column (a user's table, a buckethead catalog's) counts too, through that column."""
    declared = _declared_blob_columns[0]()
    found: dict[str, tuple[set[str], tuple[str, ...]]] = {}
    for (table,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'filestore' "
            "AND name NOT LIKE 'sqlite_%'").fetchall():
        cols = {r[1] for r in conn.execute(f"PRAGMA table_info({quote_ident(table)})")}
        using = tuple(c for c in declared.get(table, ()) if c in cols)
        if "bh_key" in cols and "bh_key" not in using:
            using += ("bh_key",)
        if using:
            found[table] = (cols, using)
    return found


def referenced_keys(conn: sqlite3.Connection, *, with_rows: bool = False) -> set[str]:
    """Every blob an entry of the catalog behind ``conn`` uses; with ``with_rows``, the file table's rows too."""
    keys: set[str] = set()
    for table, (_, using) in referencing_tables(conn).items():
        for col in using:
            keys |= {r[0] for r in conn.execute(
                f"SELECT DISTINCT {quote_ident(col)} FROM {quote_ident(table)} WHERE {quote_ident(col)} IS NOT NULL")}
    if with_rows and conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'filestore'").fetchone():
        keys |= {r[0] for r in conn.execute("SELECT bh_key FROM filestore")}
    return keys


def referenced_keys_of_file(path: Path) -> set[str]:
    """Every blob the catalog file at ``path`` uses, its file rows included (opened read-only)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return referenced_keys(conn, with_rows=True)
    finally:
        conn.close()


def _hash_file(path: Path, chunk_size: int) -> tuple[str, bytes]:
    """The file's SHA-256 hex and its chunk digests, in one pass (the two hashes side by side in two threads)."""
    from concurrent.futures import ThreadPoolExecutor

    h = hashlib.sha256()
    chunker = _ChunkHasher(chunk_size)
    with path.open("rb", buffering=0) as f, ThreadPoolExecutor(1, thread_name_prefix="bh-hash") as pool:
        buf = bytearray(CHUNK_SIZE * 4)
        view = memoryview(buf)
        while n := f.readinto(view):
            part = view[:n]
            if n >= _THREADED_HASH:
                done = pool.submit(chunker.update, part)
                h.update(part)
                done.result()
            else:
                h.update(part)
                chunker.update(part)
    return h.hexdigest(), chunker.digests()
