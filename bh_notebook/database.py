"""BucketSQLite: an in-memory SQLite catalog that lives in a bucket.

``start()`` restores the catalog from the snapshot object (if there is one) and builds the interfaces; the
catalog is then snapshotted back to the bucket by a background timer (only when something changed), on
``flush()`` / ``force_flush()``, and at ``stop()`` or interpreter exit. Snapshots are committed with conditional
writes, so a second process writing the same bucket gets an error instead of silently overwriting.

No signal handler is installed: interrupting a notebook cell (SIGINT) never stops the store.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import random
import shutil
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from .config import BucketConfig
from . import spool
from .connection import connect_catalog
from .errors import (
    AlreadyStarted,
    BhError,
    NotCommitted,
    NotStarted,
    SnapshotCorruptError,
    ObjectNotFound,
    PreconditionFailed,
    SnapshotConflict,
)
from .interfaces.arrays import ArrayStore
from .interfaces.base import Interface
from .interfaces.files import FileStore, referenced_keys
from .interfaces.frames import FrameStore
from .interfaces.kv import KVStore
from .interfaces.named_files import NamedFileStore
from .interfaces.registry import store_classes
from .branches import Branches, shared_references

_S = TypeVar("_S", bound=Interface)
from .check import CheckReport
from .check import check as run_check
from .merge import MergeReport, merge_catalog
from .storage import BucketClient, open_bucket
from .storage.snapshot import (
    BackupTimeout,
    SnapshotConfig,
    assert_no_code,
    backup_to_file,
    file_sha256,
    restore_from_file,
    vet_catalog_file,
)

log = logging.getLogger("bh_notebook")


@dataclass(frozen=True)
class FlushResult:
    """What one flush did: whether it uploaded, how many bytes, how long it took, and the new etag."""

    uploaded: bool
    nbytes: int
    seconds: float
    etag: str | None


def _takes_two_arguments(callback: Callable[..., Any]) -> bool:
    """Whether a flush callback is buckethead's ``(duration, bytes)`` kind: it needs two positional arguments.

    Anything else (one parameter, ``*args``, a signature Python cannot read) gets the FlushResult."""
    try:
        params = inspect.signature(callback).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    return len(required) >= 2


class _Race:
    """Losing races to other writers: the first loss retries at once, later ones wait a random, growing while
    (so writers stop colliding), and after ``patience`` seconds of losing ``give_up()`` is raised."""

    def __init__(self, patience: float, give_up: Callable[[], BaseException]) -> None:
        self._patience = patience
        self._give_up = give_up
        self._losses = 0
        self._since = time.monotonic()

    def lost(self) -> None:
        self._losses += 1
        if self._losses == 1:
            return
        if time.monotonic() - self._since > self._patience:
            raise self._give_up()
        time.sleep(random.uniform(0, min(2.0, 0.02 * 2 ** min(self._losses, 10))))


class BucketSQLite:
    """The catalog of one bucket, kept in memory and snapshotted to ``config.key`` in the bucket.

    Use as a context manager, or call ``start()`` and ``stop()``. ``config=None`` reads the environment
    (``BucketConfig.from_env()``), which without any variable set means the local store under ``~/.bh_notebook``.
    """

    #: Makes progress bars for long transfers: ``factory(label, total_bytes)`` returning a callable taking byte
    #: counts, with ``close()``. The package sets a notebook/terminal bar (shown after ~1 s); None turns it off.
    progress_factory: Callable[[str, int | None], Any] | None = None
    #: How long one flush keeps merging and retrying while other writers keep committing first, before it gives
    #: up (the work stays in memory, and the next flush tries again). Retries back off with random jitter.
    commit_patience_seconds: float = 300.0
    #: Called with a MergeReport after each merge of another writer's catalog.
    on_merge: Callable[[MergeReport], Any] | None = None
    #: Pull other writers' commits on the timer while idle (one HEAD request per ``interval_seconds``).
    auto_pull: bool = False
    #: How long a snapshot waits for another connection's open write transaction before it is put off.
    snapshot_wait_seconds: float = 10.0

    def __init__(
        self,
        config: BucketConfig | None = None,
        snapshot_config: SnapshotConfig | None = None,
        *,
        on_flush_start: Callable[[], Any] | None = None,
        on_flush_complete: Callable[[FlushResult], Any] | Callable[[float, int], Any] | None = None,
        on_flush_error: Callable[[BaseException], Any] | None = None,
        bucket_client: BucketClient | None = None,
        restore_from: str = "latest",
        bucket_config: BucketConfig | None = None,
    ) -> None:
        if restore_from not in ("latest", "prev"):
            raise ValueError("restore_from is 'latest' (the snapshot) or 'prev' (the one before it, <key>.prev)")
        if bucket_config is not None:  # buckethead's name for the first argument
            if config is not None:
                raise TypeError("pass the BucketConfig once: as config (or the first argument) or as bucket_config")
            config = bucket_config
        self.restore_from_which = restore_from
        self.config = config if config is not None else BucketConfig.from_env()
        self.snapshot_config = snapshot_config if snapshot_config is not None else SnapshotConfig()
        self.on_flush_start = on_flush_start
        #: Called after each flush with its FlushResult, or, when it takes two positional arguments (buckethead's
        #: callback), with the flush's duration in seconds and the bytes uploaded (0 when nothing was).
        self.on_flush_complete = on_flush_complete
        self.on_flush_error = on_flush_error
        self._bucket_override = bucket_client
        self._bucket: BucketClient | None = None
        self._uri = f"file:bh-catalog-{uuid.uuid4().hex}?mode=memory&cache=shared"
        self._conn: sqlite3.Connection | None = None
        self._snap_conn: sqlite3.Connection | None = None
        self._local = threading.local()
        self._vended: list[sqlite3.Connection] = []
        self._vended_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._etag: str | None = None  # of the snapshot we restored or last wrote; None: none exists yet
        self._snapshot_sha: str | None = None  # content hash of that snapshot
        self._flushed_fingerprint: tuple[int, ...] | None = None
        self._last_flush_at: float | None = None  # monotonic
        self._last_flush_wall: float | None = None
        self._flush_pending = False
        self._last_error: BaseException | None = None
        self._atexit: Callable[[], None] | None = None
        self._started = False
        self.restored_from: str | None = None
        self.last_merge: MergeReport | None = None
        self._resumed: spool.SpooledCatalog | None = None  # unsaved work this process resumed, until pushed
        #: Where this process kept its catalog when its final flush failed (None: it did not).
        self.unsaved_at: Path | None = None
        #: Triggers and views found in catalogs read from the bucket, which were dropped instead of run.
        self.removed_from_bucket: list[str] = []
        self._workdir: Path | None = None  # holds base.db: the snapshot this process last synced with
        self._keep_prev_ok = True  # False after restoring from .prev: the corrupt latest must not replace it
        self._stores: dict[str, Interface] = {}  # kind -> store, in the registry's order, while started

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> BucketSQLite:
        """Open the bucket, restore the snapshot, build the interfaces and start the flush timer.

        A second ``start()`` while started raises AlreadyStarted (a RuntimeError, as buckethead raises); a
        stopped store may be started again."""
        if self._started:
            raise AlreadyStarted("BucketSQLite.start() called twice: this store is already started (use it as it "
                                 "is, or stop() it first)")
        bucket = self._bucket_override or open_bucket(self.config)
        check = getattr(bucket, "check_bucket", None)
        if check is not None:
            check()  # a missing bucket or bad credentials: a named error now, not at the first flush
        conn = connect_catalog(self._uri, check_same_thread=False)
        try:
            self._restore(bucket, conn)
        except BaseException:
            conn.close()
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None
            raise
        self._bucket = bucket
        self._conn = conn
        self._snap_conn = connect_catalog(self._uri, check_same_thread=False)
        self._vended = [conn]
        self._build_interfaces()
        self._flushed_fingerprint = self._fingerprint() if self._resumed is None else None
        self._started = True
        self._stopping.clear()
        if self.snapshot_config.interval_seconds and self.snapshot_config.interval_seconds > 0:
            self._thread = threading.Thread(target=self._run_timer, name="bh-flush", daemon=True)
            self._thread.start()
        ref = weakref.ref(self)

        def _at_exit() -> None:
            obj = ref()
            if obj is not None:
                try:
                    obj.stop()
                except Exception as exc:  # noqa: BLE001 - at exit there is nobody left to raise to
                    log.error("bh_notebook: the final catalog flush failed: %s", exc)

        self._atexit = _at_exit
        atexit.register(_at_exit)
        if self._resumed is not None:
            try:
                self.force_flush()  # push the resumed work now; on failure it stays kept and dirty
            except BhError as exc:
                log.warning("bh_notebook: the resumed work could not be pushed yet (%s); the next flush tries "
                            "again", exc)
        return self

    def _build_interfaces(self) -> None:
        """Build one store per registered kind (``interfaces/registry.py``), in the registry's order."""
        assert self._conn is not None and self._bucket is not None
        stores: dict[str, Interface] = {}
        for cls in store_classes():
            stores[cls.kind] = cls.for_catalog(self._conn, self._bucket, self.config, stores)
        files = stores["blob"]
        assert isinstance(files, FileStore)
        files.progress_factory = self.progress_factory
        files.before_collect = self._settle_for_collect
        self._stores = stores

    # The stores exist between start() and stop(); before and after, using them raises NotStarted.

    @property
    def stores(self) -> Mapping[str, Interface]:
        """Every store by its kind, in the registry's order: blob (``files``), frame, array, file, kv, ...

        A read-only view; the listed kinds (``store.listed``) are what users see in listings."""
        self._require_started()
        return MappingProxyType(self._stores)

    def _store(self, kind: str, cls: type[_S]) -> _S:
        self._require_started()
        store = self._stores[kind]
        assert isinstance(store, cls)
        return store

    @property
    def kv(self) -> KVStore:
        """Settings and small strings/bytes (``bh_kv``)."""
        return self._store("kv", KVStore)

    @property
    def files(self) -> FileStore:
        """Content-addressed blobs (``filestore``)."""
        return self._store("blob", FileStore)

    @property
    def arrays(self) -> ArrayStore:
        """Named, versioned NumPy arrays (``bh_arrays``)."""
        return self._store("array", ArrayStore)

    @property
    def frames(self) -> FrameStore:
        """Named, versioned DataFrames (``bh_frames``)."""
        return self._store("frame", FrameStore)

    @property
    def named_files(self) -> NamedFileStore:
        """Named, versioned files (``bh_named_files``)."""
        return self._store("file", NamedFileStore)

    @property
    def branches(self) -> Branches:
        """The bucket's branches: list, create, open, merge and delete them (see ``branches.py``)."""
        self._require_started()
        return Branches(self)

    def _restore(self, bucket: BucketClient, conn: sqlite3.Connection) -> None:
        key = self.config.key
        spool.clean_stale_workdirs()
        self._workdir = spool.make_workdir()
        if self.restore_from_which == "latest" and self._resume_unsaved(conn):
            return
        info = bucket.head(key)
        source = key + ".prev" if self.restore_from_which == "prev" else key
        if self.restore_from_which == "prev" and bucket.head(source) is None:
            raise SnapshotCorruptError(f"there is no previous snapshot {source!r} in {self.config.location} to "
                                       "restore from")
        if info is None and source == key:
            self._etag = None
            self._snapshot_sha = None
            return
        path = self._workdir / "restore.db"
        try:
            bucket.download(source, path)
        except ObjectNotFound:  # deleted between HEAD and GET: start empty
            self._etag = None
            return
        hint = (f" Nothing in the bucket was changed. To start from the previous snapshot ({key + '.prev'!r}), "
                "use BucketSQLite(config, restore_from='prev')." if source == key else
                " Nothing in the bucket was changed.")
        removed = restore_from_file(path, conn, label=f"catalog snapshot {source!r} in {self.config.location}",
                                    hint=hint)
        assert_no_code(conn)
        self._report_removed(removed, source)
        # What this process now holds is the base of any later merge with another writer.
        path.replace(self._workdir / "base.db")
        self._snapshot_sha = file_sha256(self._workdir / "base.db") if source == key else None
        self._etag = info.etag if info is not None else None
        self.restored_from = source
        self._keep_prev_ok = source == key

    def _resume_unsaved(self, conn: sqlite3.Connection) -> bool:
        """Resume from a catalog a stopped process could not save to this bucket, if there is one: it becomes
        the catalog in memory, with the snapshot and etag that process last synced with, so the first flush merges
        whatever was committed since, as a running writer's would."""
        for found in spool.pending(location=self.config.location, key=self.config.key):
            claimed = spool.claim(found)
            if claimed is None:
                continue  # another process took it
            assert self._workdir is not None
            try:
                removed = restore_from_file(claimed.catalog, conn, label=f"unsaved catalog at {found.path}")
                assert_no_code(conn)
            except BhError as exc:
                log.error("bh_notebook: the unsaved catalog at %s cannot be read (%s); left there", found.path, exc)
                spool.release(claimed, pushed=False)
                continue
            self._report_removed(removed, str(found.path))
            if claimed.base is not None:
                shutil.copyfile(claimed.base, self._workdir / "base.db")
            self._etag = claimed.etag
            self._snapshot_sha = None
            self._resumed = claimed
            self.restored_from = f"unsaved work saved at {found.path}"
            log.warning("bh_notebook: resuming work a stopped process could not save to %s (kept at %s until it "
                        "is pushed)", self.config.location, found.path)
            return True
        return False

    def _spool_unsaved(self, exc: BaseException) -> None:
        """Keep the catalog on local disk when the final flush failed; the next start() pushes it."""
        assert self._snap_conn is not None and self._workdir is not None
        try:
            saved = spool.save(self._snap_conn, self._workdir / "base.db", location=self.config.location,
                               key=self.config.key, etag=self._etag)
        except Exception as spool_exc:  # noqa: BLE001 - the flush error is the one to raise
            log.error("bh_notebook: the catalog could not be saved to %s nor kept on local disk (%s)",
                      self.config.location, spool_exc)
            return
        if self._resumed is not None:  # what we resumed from is now inside the new spool folder
            spool.release(self._resumed, pushed=True)
            self._resumed = None
        message = (f"the catalog could not be saved to {self.config.location}; it is kept at {saved.path} and "
                   "pushed by the next start on this bucket")
        self.unsaved_at = saved.path
        log.error("bh_notebook: %s", message)
        if hasattr(exc, "add_note"):
            exc.add_note(f"bh_notebook: {message}")

    def stop(self) -> None:
        """Flush a last time and close. Safe to call twice.

        When that last flush fails (the endpoint is down), the catalog is kept on local disk (``unsaved_at``) and
        the next ``start()`` on the same bucket resumes from it; the error is still raised."""
        if not self._started:
            return
        self._stopping.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)
        self._thread = None
        try:
            try:
                self.force_flush()
            except BaseException as exc:
                if self.dirty or self._resumed is not None:
                    self._spool_unsaved(exc)
                raise
        finally:
            self._started = False
            if self._atexit is not None:
                atexit.unregister(self._atexit)
                self._atexit = None
            with self._vended_lock:
                for c in self._vended:
                    try:
                        c.close()
                    except sqlite3.Error:
                        pass
                self._vended = []
            if self._snap_conn is not None:
                self._snap_conn.close()
                self._snap_conn = None
            self._conn = None
            for store in self._stores.values():
                store._detach()
            self._local = threading.local()
            if self._bucket is not None and self._bucket_override is None:
                self._bucket.close()
            self._bucket = None
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None

    close = stop

    def __enter__(self) -> BucketSQLite:
        """Start (unless already started, e.g. by ``branches.open``); ``stop()`` at the end of the block."""
        return self if self._started else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- access ----------------------------------------------------------------------------

    def _require_started(self) -> None:
        if not self._started:
            raise NotStarted("this BucketSQLite is not started; call start() or use it in a 'with' block")

    @property
    def connection(self) -> sqlite3.Connection:
        """The catalog connection the interfaces use (usable from any thread)."""
        self._require_started()
        assert self._conn is not None
        return self._conn

    @property
    def bucket(self) -> BucketClient:
        """The BucketClient the catalog and blobs live in."""
        self._require_started()
        assert self._bucket is not None
        return self._bucket

    @property
    def bucket_config(self) -> BucketConfig:
        """The BucketConfig (buckethead's name for ``config``)."""
        return self.config

    @property
    def uri(self) -> str:
        """The SQLite URI of the in-memory catalog: ``sqlite3.connect(bh.uri, uri=True)`` opens a connection to it
        (while started; NotStarted before)."""
        self._require_started()
        return self._uri

    @property
    def started(self) -> bool:
        """True between start() and stop()."""
        return self._started

    def connect(self) -> sqlite3.Connection:
        """A connection to the catalog for the calling thread (the same one on every call from that thread)."""
        self._require_started()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect_catalog(self._uri)
            self._local.conn = conn
            with self._vended_lock:
                self._vended.append(conn)
        return conn

    # -- dirtiness ---------------------------------------------------------------------------

    def _fingerprint(self) -> tuple[int, ...]:
        with self._vended_lock:
            counts = [c.total_changes for c in self._vended]
        try:
            assert self._snap_conn is not None
            schema = int(self._snap_conn.execute("PRAGMA schema_version").fetchone()[0])
        except sqlite3.Error:
            schema = -1  # locked by a writer right now: treat as changed
        return (sum(counts), schema)

    @property
    def dirty(self) -> bool:
        """True when the catalog changed since the last snapshot."""
        if not self._started:
            return False
        return self._fingerprint() != self._flushed_fingerprint

    @property
    def last_flush(self) -> float | None:
        """Wall-clock time (epoch seconds) of the last successful flush, or None."""
        return self._last_flush_wall

    @property
    def last_error(self) -> BaseException | None:
        """The error of the last failed flush, cleared by the next success."""
        return self._last_error

    # -- flushing ----------------------------------------------------------------------------

    def flush(self) -> bool:
        """Snapshot now if something changed and the last flush is ``min_interval_seconds`` old.

        Calls closer together are merged: the flush is left to the background timer, which runs it as soon as
        the minimum interval has passed. Returns whether a snapshot was uploaded now.
        """
        self._require_started()
        if not self.dirty:
            return False
        wait = self._until_allowed()
        if wait > 0:
            self._flush_pending = True
            self._wake.set()
            if self._thread is None:  # no timer running: nobody would pick it up later
                return self._flush(force=False).uploaded
            return False
        return self._flush(force=False).uploaded

    def request_flush(self) -> None:
        """Ask the background thread to flush as soon as the debounce allows, and return at once.

        What a notebook calls after each cell that changed the catalog: the next cell is not held up. Without a
        timer thread (``interval_seconds`` 0) this flushes now instead.
        """
        self._require_started()
        if not self.dirty:
            return
        if self._thread is None:
            self._flush(force=False)
            return
        self._flush_pending = True
        self._wake.set()

    def force_flush(self) -> FlushResult:
        """Snapshot now, ignoring the debounce; uploads only when the content differs from the last snapshot."""
        self._require_started()
        return self._flush(force=True)

    def _until_allowed(self) -> float:
        if self._last_flush_at is None:
            return 0.0
        return self.snapshot_config.min_interval_seconds - (time.monotonic() - self._last_flush_at)

    def _run_timer(self) -> None:
        interval = float(self.snapshot_config.interval_seconds)
        next_due = time.monotonic() + interval
        while not self._stopping.is_set():
            timeout = next_due - time.monotonic()
            if self._flush_pending:
                timeout = min(timeout, max(self._until_allowed(), 0.0))
            self._wake.wait(max(timeout, 0.0))
            self._wake.clear()
            if self._stopping.is_set():
                return
            due = time.monotonic() >= next_due
            pending = self._flush_pending and self._until_allowed() <= 0
            if not (due or pending):
                continue
            if due:
                next_due = time.monotonic() + interval
            try:
                if self.dirty:
                    self._flush(force=False)
                else:
                    self._flush_pending = False
                    if due and self.auto_pull:
                        self.pull()  # one HEAD a period while idle
            except BaseException as exc:  # noqa: BLE001 - reported through on_flush_error and last_error
                self._last_error = exc

    def _flush(self, *, force: bool) -> FlushResult:
        started = time.monotonic()
        with self._flush_lock:
            if not self._started:
                raise NotStarted("this BucketSQLite is not started")
            fingerprint = self._fingerprint()
            if not force and fingerprint == self._flushed_fingerprint:
                self._flush_pending = False
                return FlushResult(False, 0, 0.0, self._etag)
            if self.on_flush_start is not None:
                self.on_flush_start()
            try:
                result = self._snapshot_and_upload(fingerprint, started)
            except BackupTimeout as exc:
                self._flush_pending = True
                self._last_error = exc
                if self.on_flush_error is not None:
                    self.on_flush_error(exc)
                return FlushResult(False, 0, time.monotonic() - started, self._etag)
            except BaseException as exc:
                self._last_error = exc
                log.warning("bh_notebook: flushing the catalog failed: %s", exc)
                if self.on_flush_error is not None:
                    self.on_flush_error(exc)
                raise
            self._last_error = None
            self._flush_pending = False
            self._last_flush_at = time.monotonic()
            self._last_flush_wall = time.time()
            callback: Callable[..., Any] | None = self.on_flush_complete
            if callback is not None:
                if _takes_two_arguments(callback):
                    callback(result.seconds, result.nbytes)
                else:
                    callback(result)
            return result

    def _snapshot_and_upload(self, fingerprint: tuple[int, ...], started: float) -> FlushResult:
        assert self._snap_conn is not None and self._bucket is not None and self._workdir is not None
        key = self.config.key
        path = self._workdir / "snap.db"
        backup_to_file(self._snap_conn, path, timeout=self.snapshot_wait_seconds)
        sha = file_sha256(path)
        if sha == self._snapshot_sha and self._etag is not None:
            self._flushed_fingerprint = fingerprint
            return FlushResult(False, 0, time.monotonic() - started, self._etag)
        race = self._race("commit")
        while True:
            if self._etag is not None and self.snapshot_config.keep_previous and self._keep_prev_ok:
                try:  # only the snapshot this process synced with (and vetted) may become .prev
                    self._bucket.copy(key, key + ".prev", if_match=self._etag)
                except (ObjectNotFound, PreconditionFailed):
                    pass  # it changed: the upload below loses its race and merges
            try:
                if self._etag is None:
                    etag = self._bucket.upload(path, key, if_none_match="*")
                else:
                    etag = self._bucket.upload(path, key, if_match=self._etag)
                break
            except PreconditionFailed:
                # Another writer committed since we synced: merge theirs into ours and try again.
                race.lost()
                self._merge_remote()
                backup_to_file(self._snap_conn, path, timeout=self.snapshot_wait_seconds)
                sha = file_sha256(path)
        size = path.stat().st_size
        path.replace(self._workdir / "base.db")
        if self._resumed is not None:  # the work a stopped process could not save is in the bucket now
            spool.release(self._resumed, pushed=True)
            self._resumed = None
        self._keep_prev_ok = True
        self._etag = etag
        self._snapshot_sha = sha
        self._flushed_fingerprint = fingerprint
        return FlushResult(True, size, time.monotonic() - started, etag)

    def _race(self, what: str) -> _Race:
        return _Race(self.commit_patience_seconds, lambda: SnapshotConflict(
            f"the catalog snapshot {self.config.key!r} in {self.config.location} kept changing for "
            f"{self.commit_patience_seconds:.0f} s while this process tried to {what} it. Nothing was "
            "overwritten; your changes are still in memory and the next flush tries again."))

    def pull(self) -> MergeReport | None:
        """Take in what other writers committed since this process last synced with the bucket.

        One HEAD request when nothing is new (then None is returned); otherwise their catalog is downloaded,
        vetted and merged into this one by the same rules as a flush that lost a race, and the MergeReport is
        returned (also in ``last_merge`` and to ``on_merge``). Local changes not yet flushed are kept.
        """
        self._require_started()
        assert self._bucket is not None
        with self._flush_lock:
            info = self._bucket.head(self.config.key)
            if info is None or info.etag == self._etag:
                return None
            before = self._fingerprint()
            was_clean = before == self._flushed_fingerprint
            self.last_merge = None
            self._merge_remote()
            after = self._fingerprint()
            if self.last_merge is not None and self.last_merge.rows_kept > 0:
                # The merge kept file rows their catalog dropped: ours differs from theirs, so commit it.
                self._flushed_fingerprint = (-1, -1)
            elif was_clean and after[0] == before[0]:
                # Nothing of ours was waiting and nobody wrote meanwhile: we now hold exactly their catalog.
                self._flushed_fingerprint = after
            return self.last_merge

    def _merge_remote(self) -> None:
        """Download the snapshot another writer committed and merge it into the catalog in memory."""
        assert self._snap_conn is not None and self._bucket is not None and self._workdir is not None
        key = self.config.key
        theirs = self._workdir / "theirs.db"
        race = self._race("read")
        while True:
            info = self._bucket.head(key)
            if info is None:  # it was deleted: the next attempt creates it
                self._etag = None
                return
            try:
                self._bucket.download(key, theirs, if_match=info.etag)  # exactly the version with this etag
                break
            except (ObjectNotFound, PreconditionFailed):
                race.lost()  # another writer committed again meanwhile
        removed = vet_catalog_file(theirs, label=f"catalog snapshot {key!r} another writer committed",
                                   hint=" Not merging it; your changes are still in memory.")
        self._report_removed(removed, key)
        base = self._workdir / "base.db"
        # A connection of the merge's own: its ATTACH/DETACH never meet the notebook thread's statements, and a
        # merge that fails leaves nothing attached anywhere (closing drops the attachments).
        merge_conn = connect_catalog(self._uri)
        try:
            report = merge_catalog(merge_conn, base if base.exists() else None, theirs)
            assert_no_code(merge_conn)
        finally:
            merge_conn.close()
        theirs.replace(base)  # our catalog now contains theirs: it is the base of the next merge
        # What the bucket holds now is theirs: a flush may skip its upload only when our catalog is that file.
        self._snapshot_sha = file_sha256(base)
        self._etag = info.etag
        self.last_merge = report
        if report.conflicts:
            log.warning("bh_notebook: %s", report)
        else:
            log.info("bh_notebook: %s", report)
        if self.on_merge is not None:
            self.on_merge(report)

    def _merge_file(self, theirs: Path, base: Path | None, *, label: str, into_shared: bool = True) -> MergeReport:
        """Merge another catalog file into this one: with ``into_shared`` by the rules of a branch merged into the
        catalog others read (``merge_catalog(branch=True)``), else (main into a branch) by the two-writer rules.

        Both files are vetted first; the result is in memory, committed by the next flush."""
        assert self._workdir is not None
        removed = vet_catalog_file(theirs, label=label, hint=" Not merging it; nothing was changed.")
        if base is not None:
            removed += vet_catalog_file(base, label=f"the fork point of {label}", hint=" Not merging it.")
        self._report_removed(removed, label)
        with self._flush_lock:
            merge_conn = connect_catalog(self._uri)
            try:
                report = merge_catalog(merge_conn, base, theirs, branch=into_shared)
                assert_no_code(merge_conn)
            finally:
                merge_conn.close()
        self.last_merge = report
        if self.on_merge is not None:
            self.on_merge(report)
        return report

    def _report_removed(self, removed: list[str], key: str) -> None:
        if not removed:
            return
        self.removed_from_bucket.extend(removed)
        log.warning("bh_notebook: the catalog %r in %s held %s, which this library never creates and will not "
                    "run; dropped from this process's catalog (the next flush writes it without them)",
                    key, self.config.location, ", ".join(removed))

    def _settle_for_collect(self) -> set[str]:
        """What gc does before it judges any blob: take in what others committed, commit what we changed, and
        return the blobs the committed catalog uses (spared even if a change made since drops their last use)."""
        self.pull()
        self.force_flush()
        if self.dirty and self._last_error is not None:
            raise NotCommitted(f"gc did not run: this process's catalog changes could not be committed "
                               f"({self._last_error}); nothing was deleted. Try again when "
                               f"{self.config.location} is reachable")
        assert self._workdir is not None
        keys = shared_references(self)  # every other catalog in the bucket: branches, fork points, .prev
        with self._flush_lock:
            base = self._workdir / "base.db"
            if not base.exists():
                return keys
            conn = sqlite3.connect(f"file:{base}?mode=ro", uri=True)
            try:
                return keys | referenced_keys(conn, with_rows=True)
            finally:
                conn.close()

    # -- checks ------------------------------------------------------------------------------

    def check(self, fix: bool = False, *, verify: bool = True, grace_seconds: float = 300.0) -> CheckReport:
        """Compare the catalog with the bucket: rows pointing at missing blobs, blobs nothing points at, blobs whose
        bytes do not match their SHA-256 key (``verify=False`` skips reading them), blobs entries use that lost their
        file row, rows that disagree with each other (``inconsistent_rows``). Repairs only with ``fix=True``: file rows are restored and orphans older than ``grace_seconds``
        deleted (by ``files.gc``, the one collector); nothing that may be a row's only copy of anything is deleted.
        Other writers' commits are taken in first (``pull()``), so their new blobs are not mistaken for orphans."""
        self._require_started()
        self.pull()
        return run_check(self, fix, verify=verify, grace_seconds=grace_seconds,
                         used_elsewhere=shared_references(self))

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Backend, bucket, snapshot key, dirty/clean, last flush and entry counts; never a secret."""
        info: dict[str, Any] = {
            "backend": self.config.backend,
            "bucket": self.config.bucket,
            "location": self.config.location,
            "snapshot_key": self.config.key,
            "started": self._started,
        }
        if self._started:
            info.update(dirty=self.dirty, last_flush=self._last_flush_wall)
            # frames, arrays, named_files, kv_keys, then blobs and blob_bytes (the unlisted blob store last)
            for store in sorted(self._stores.values(), key=lambda store: not store.listed):
                info.update(store.status_counts())
        if self._last_error is not None:
            info["last_error"] = str(self._last_error)
        return info

    def __repr__(self) -> str:
        state = ("dirty" if self.dirty else "clean") if self._started else "stopped"
        return f"<BucketSQLite {self.config.backend} {self.config.location!r} key={self.config.key!r} {state}>"


__all__ = ["BhError", "BucketSQLite", "FlushResult", "SnapshotConfig"]
