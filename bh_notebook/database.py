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
from .connection import connect_catalog, immediate_transaction
from .errors import (
    AlreadyStarted,
    BhError,
    NotCommitted,
    NotStarted,
    SnapshotCorruptError,
    SnapshotConflict,
)
from .interfaces.arrays import ArrayStore
from .interfaces.base import Interface
from .interfaces.files import FileStore, referenced_keys_of_file
from .interfaces.frames import FrameStore
from .interfaces.kv import KVStore
from .interfaces.named_files import NamedFileStore
from .interfaces.registry import store_classes
from .branches import Branches, shared_references

_S = TypeVar("_S", bound=Interface)
from .check import CheckReport
from .check import check as run_check
from .merge import MergeReport, keep_rows_in_use, merge_catalog
from .storage import BucketClient, open_bucket
from .storage.snapshot import (
    BackupTimeout,
    SnapshotConfig,
    assert_no_code,
    backup_to_file,
    restore_from_file,
    vet_catalog_file,
)
from .sync import changes as sync_changes
from .sync.replica import DEFAULT_RETENTION_SECONDS, Arrival, PruneReport, Replica

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
    #: Pull other writers' commits on the timer while idle (one GET, a 404 when nothing is new, per
    #: ``interval_seconds``).
    auto_pull: bool = False
    #: Every this many commits, the committing writer writes a checkpoint (the whole catalog, under a key of its
    #: own, copied to ``config.key``), which bounds how many commits a fresh reader replays.
    checkpoint_every: int = 100
    #: At ``stop()``, a process whose commits are newer than the checkpoint at ``config.key`` writes one when that
    #: checkpoint is older than this many seconds (by the bucket's clock), so buckethead and other readers of the
    #: key see the session's work; 0: at every stop that committed something. The command line uses 60 (a
    #: command is a short session). None turns it off.
    checkpoint_at_stop_seconds: float | None = 0.0
    #: After each periodic checkpoint, the committing writer prunes commits and checkpoints older than this (by the
    #: bucket's clock) that no reader can still need (``prune_log``). None: never prune automatically.
    log_retention_seconds: float | None = DEFAULT_RETENTION_SECONDS
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
            raise ValueError("restore_from is 'latest' (the newest state) or 'prev' (the state before the newest "
                             "commit, committed again by the first flush)")
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
        self._replica: Replica | None = None  # the commit log's state: base.db at a position
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
        self._kept: spool.SpooledCatalog | None = None  # our own work kept on disk after a failed flush
        self._rolled_back = False  # started with restore_from="prev": the earlier state waits to be committed
        #: Where this process kept its catalog when its final flush failed (None: it did not).
        self.unsaved_at: Path | None = None
        #: Triggers and views found in catalogs read from the bucket, which were dropped instead of run.
        self.removed_from_bucket: list[str] = []
        self._workdir: Path | None = None  # holds base.db: the state this process last synced with
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
        self._flushed_fingerprint = self._fingerprint() if self._resumed is None and not self._rolled_back else None
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

    def _new_replica(self, bucket: BucketClient) -> Replica:
        assert self._workdir is not None
        return Replica(bucket, self.config.key, self._workdir, checkpoint_every=self.checkpoint_every,
                       keep_previous=self.snapshot_config.keep_previous, patience=self.commit_patience_seconds,
                       location=self.config.location, retention_seconds=self.log_retention_seconds)

    def _restore(self, bucket: BucketClient, conn: sqlite3.Connection) -> None:
        """Build the newest state from the checkpoint at ``config.key`` (or ``.prev``) and the commit log after
        it, and copy it into the catalog in memory."""
        key = self.config.key
        spool.clean_stale_workdirs()
        self._workdir = spool.make_workdir()
        self._replica = replica = self._new_replica(bucket)
        if self.restore_from_which == "latest" and self._resume_unsaved(conn):
            return
        source = key + ".prev" if self.restore_from_which == "prev" else key
        hint = (f" Nothing in the bucket was changed. To start from the previous snapshot ({key + '.prev'!r}), "
                "use BucketSQLite(config, restore_from='prev')." if source == key else
                " Nothing in the bucket was changed.")
        state, replayed = replica.open(hint=hint)
        self._report_removed(replica.removed, key)
        replica.removed = []
        self.removed_from_bucket.extend(replica.refused)
        if replica.took_in_report is not None:
            self.last_merge = replica.took_in_report
        if source != key:  # the state before the newest commit, committed again by the first flush
            if replica.position < 1:
                raise SnapshotCorruptError(f"there is no earlier state of the catalog in {self.config.location} to "
                                           "restore from: nothing was committed yet")
            assert self._workdir is not None
            state = self._workdir / "earlier.db"
            replica.state_at(replica.position - 1, state)
            self._rolled_back = True
            self.restored_from = f"{key} as of commit {replica.position - 1}, the one before the newest"
        if state is None:
            return
        # Built from vetted files by applying row changes: vetted already.
        restore_from_file(state, conn, label=f"catalog {source!r} in {self.config.location}", vetted=True)
        assert_no_code(conn)
        if source == key:
            self.restored_from = source if not replayed else f"{source} and {replayed} commits after it"

    def _resume_unsaved(self, conn: sqlite3.Connection) -> bool:
        """Resume from a catalog a stopped process could not save to this bucket, if there is one: it becomes
        the catalog in memory, with the state and log position that process last synced with, so the first flush
        takes in whatever was committed since and commits the rest, as a running writer's would."""
        assert self._replica is not None
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
            position = claimed.etag[len("log:"):] if claimed.etag and claimed.etag.startswith("log:") else ""
            if claimed.base is not None and position.isdigit():
                shutil.copyfile(claimed.base, self._workdir / "base.db")
                self._replica.position = int(position)
                self._replica.learn_floor()  # the log may have been pruned past it meanwhile
            # else: saved by the snapshot layout; its first flush merges it with the log from the start
            self._resumed = claimed
            self.restored_from = f"unsaved work saved at {found.path}"
            log.warning("bh_notebook: resuming work a stopped process could not save to %s (kept at %s until it "
                        "is pushed)", self.config.location, found.path)
            return True
        return False

    def keep_unsaved(self) -> Path | None:
        """Keep the catalog on local disk now if it has changes no flush has committed (what a notebook does
        after a cell while the bucket is unreachable); returns where, or None when nothing needed keeping."""
        self._require_started()
        with self._flush_lock:
            self._keep_on_disk()
        return self._kept.path if self._kept is not None else None

    def _keep_on_disk(self) -> None:
        """After a failed flush: keep the catalog on local disk (replacing what an earlier failure kept), so the
        work survives this process being killed before a flush succeeds; the next start here pushes it."""
        if not self.dirty or self._snap_conn is None or self._workdir is None or self._replica is None:
            return
        try:
            kept = spool.save(self._snap_conn, self._workdir / "base.db", location=self.config.location,
                              key=self.config.key, etag=f"log:{self._replica.position}", live=True)
        except Exception as exc:  # noqa: BLE001 - the flush error is the one that matters
            log.error("bh_notebook: the catalog could not be kept on local disk either (%s)", exc)
            return
        if self._kept is not None:
            spool.release(self._kept, pushed=True)
        self._kept = kept
        self.unsaved_at = kept.path
        log.warning("bh_notebook: until the next flush succeeds, this process's unsaved catalog is kept at %s "
                    "(a restart here pushes it)", kept.path)

    def _spool_unsaved(self, exc: BaseException) -> None:
        """Keep the catalog on local disk when the final flush failed; the next start() pushes it."""
        assert self._snap_conn is not None and self._workdir is not None
        try:
            assert self._replica is not None
            saved = spool.save(self._snap_conn, self._workdir / "base.db", location=self.config.location,
                               key=self.config.key, etag=f"log:{self._replica.position}")
        except Exception as spool_exc:  # noqa: BLE001 - the flush error is the one to raise
            log.error("bh_notebook: the catalog could not be saved to %s nor kept on local disk (%s)",
                      self.config.location, spool_exc)
            return
        if self._resumed is not None:  # what we resumed from is now inside the new spool folder
            spool.release(self._resumed, pushed=True)
            self._resumed = None
        if self._kept is not None:
            spool.release(self._kept, pushed=True)
            self._kept = None
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
            if self.checkpoint_at_stop_seconds is not None and self._replica is not None:
                try:
                    self._replica.checkpoint_if_stale(self.checkpoint_at_stop_seconds)
                except BhError as exc:  # everything is committed; the copy at the key only lags behind
                    log.warning("bh_notebook: the checkpoint at stop was not written (%s)", exc)
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
            self._replica = None

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
                return FlushResult(False, 0, 0.0, None)
            if self.on_flush_start is not None:
                self.on_flush_start()
            try:
                result = self._snapshot_and_upload(fingerprint, started)
            except BackupTimeout as exc:
                self._flush_pending = True
                self._last_error = exc
                if self.on_flush_error is not None:
                    self.on_flush_error(exc)
                return FlushResult(False, 0, time.monotonic() - started, None)
            except BaseException as exc:
                self._last_error = exc
                log.warning("bh_notebook: flushing the catalog failed: %s", exc)
                if isinstance(exc, BhError) and not self._stopping.is_set():
                    self._keep_on_disk()
                if self.on_flush_error is not None:
                    self.on_flush_error(exc)
                raise
            self._last_error = None
            self._flush_pending = False
            if self._kept is not None:  # what a failed flush kept is in the log now
                if self.dirty:  # newer changes are not: keep them (with the new base) instead
                    self._keep_on_disk()
                else:
                    spool.release(self._kept, pushed=True)
                    self._kept = None
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
        """Commit what changed since the state this process last synced with, as the next commit of the log."""
        assert self._snap_conn is not None and self._replica is not None
        snap_conn = self._snap_conn

        def snapshot(path: Path) -> None:
            backup_to_file(snap_conn, path, timeout=self.snapshot_wait_seconds)

        self.last_merge = None
        committed, _ = self._replica.commit(snapshot, self._merge_arrival)
        if self._resumed is not None and committed is not None or self._resumed is not None and not self.dirty:
            spool.release(self._resumed, pushed=True)  # the work a stopped process could not save is in
            self._resumed = None
        if self.last_merge is not None and self.last_merge.rows_kept > 0 and committed is None:
            self._flushed_fingerprint = (-1, -1)  # a kept row makes ours differ from the log: commit it next
        else:
            self._flushed_fingerprint = fingerprint
        if committed is None:
            return FlushResult(False, 0, time.monotonic() - started, None)
        return FlushResult(True, committed.nbytes, time.monotonic() - started, committed.etag)

    def prune_log(self, *, retention_seconds: float | None = None, keep_checkpoints: int = 2) -> PruneReport:
        """Delete old commits and checkpoints of this catalog's log that no reader can still need.

        Kept: the ``keep_checkpoints`` newest checkpoints (at least 2, so the state before the newest commit can
        always be rebuilt), every commit after the oldest of them, commit 1, and anything younger than
        ``retention_seconds`` (default ``log_retention_seconds``, 7 days) by the bucket's clock, so a writer that
        read the log within that time finds every commit after its state. A writer asleep for longer takes in the
        newest checkpoint by a three-way merge; nothing it holds is lost. Blobs are never touched here (``gc``)."""
        self._require_started()
        assert self._replica is not None
        if retention_seconds is None:
            retention_seconds = (self.log_retention_seconds if self.log_retention_seconds is not None
                                 else DEFAULT_RETENTION_SECONDS)
        with self._flush_lock:
            return self._replica.prune(retention_seconds=retention_seconds, keep_checkpoints=keep_checkpoints)

    @property
    def log_position(self) -> int:
        """The position in the commit log of the state this process last synced with (0: none yet)."""
        return self._replica.position if self._replica is not None else 0

    def pull(self) -> MergeReport | None:
        """Take in what other writers committed since this process last synced with the bucket.

        One GET (a 404) when nothing is new: then None is returned. Otherwise the new commits are read, applied and
        merged into this catalog by the same rules as a flush that lost a race, and the MergeReport is returned
        (also in ``last_merge`` and to ``on_merge``). Local changes not yet flushed are kept.
        """
        self._require_started()
        assert self._replica is not None
        with self._flush_lock:
            before = self._fingerprint()
            was_clean = before == self._flushed_fingerprint
            arrival = self._replica.fetch()
            if arrival is None:
                return None
            self.last_merge = None
            report = self._replica.take(arrival, self._merge_arrival)
            after = self._fingerprint()
            if report.rows_kept > 0:
                # The merge kept file rows their catalog dropped: ours differs from theirs, so commit it.
                self._flushed_fingerprint = (-1, -1)
            elif was_clean and after[0] == before[0]:
                # Nothing of ours was waiting and nobody wrote meanwhile: we now hold exactly the new state.
                self._flushed_fingerprint = after
            return report

    def _merge_arrival(self, arrival: Arrival, old_base: Path | None) -> MergeReport:
        """Bring what other writers committed into the catalog in memory.

        When the catalog still equals the state it last synced with (nothing of ours is waiting), their row
        changes are replayed on it as they are, row for row; otherwise their head is merged in three ways
        (``merge.py``)."""
        self._report_removed(self._replica.removed if self._replica is not None else [], self.config.key)
        if self._replica is not None:
            self._replica.removed = []
        merge_conn = connect_catalog(self._uri)
        try:
            report = None
            if arrival.changes is not None and old_base is not None:
                report = _replay_if_unchanged(merge_conn, old_base, arrival.head, arrival.changes)
            if report is None:
                report = merge_catalog(merge_conn, old_base, arrival.head)
            assert_no_code(merge_conn)
        finally:
            merge_conn.close()
        report.commits = arrival.commits
        self.last_merge = report
        if report.conflicts:
            log.warning("bh_notebook: %s", report)
        else:
            log.info("bh_notebook: %s", report)
        if self.on_merge is not None:
            self.on_merge(report)
        return report

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

    def _copy_committed(self, dest: Path) -> None:
        """The state this process last committed or synced with (call after a flush), at ``dest``."""
        assert self._workdir is not None
        base = self._workdir / "base.db"
        with self._flush_lock:
            if base.exists():
                shutil.copyfile(base, dest)
                return
        backup_to_file(self.connection, dest)  # nothing committed yet (an empty catalog): ours as it is

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
            if base.exists():
                keys |= referenced_keys_of_file(base)
        return keys | self._kept_for_undo()

    def _kept_for_undo(self) -> set[str]:
        """The blobs the state before the newest commit uses: what ``restore_from="prev"`` (an undo) brings back,
        which the collector spares and the check does not count as orphans."""
        with self._flush_lock:
            if self._replica is None or self._replica.position <= 1 or self._workdir is None:
                return set()
            earlier = self._workdir / "earlier-gc.db"
            try:
                self._replica.state_at(self._replica.position - 1, earlier)
            except SnapshotCorruptError as exc:  # no undo can bring it back either: nothing to spare
                log.warning("bh_notebook: %s", exc)
                return set()
            try:
                return referenced_keys_of_file(earlier)
            finally:
                earlier.unlink(missing_ok=True)

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
                         used_elsewhere=shared_references(self) | self._kept_for_undo())

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
            info.update(dirty=self.dirty, last_flush=self._last_flush_wall, log_position=self.log_position)
            # frames, arrays, named_files, kv_keys, then blobs and blob_bytes (the unlisted blob store last)
            for store in sorted(self._stores.values(), key=lambda store: not store.listed):
                info.update(store.status_counts())
        if self._last_error is not None:
            info["last_error"] = str(self._last_error)
        return info

    def __repr__(self) -> str:
        state = ("dirty" if self.dirty else "clean") if self._started else "stopped"
        return f"<BucketSQLite {self.config.backend} {self.config.location!r} key={self.config.key!r} {state}>"


def _replay_if_unchanged(conn: sqlite3.Connection, old_base: Path, head: Path,
                         arrived: list[sync_changes.Change]) -> MergeReport | None:
    """Replay ``arrived`` on the catalog behind ``conn`` when it holds exactly ``old_base`` (checked inside the
    same transaction, so no write of ours slips in between); None when it does not (then merge instead).

    A file row the arrived commits dropped while an entry still uses it is kept, as a merge keeps it
    (``merge.keep_rows_in_use``); the catalog then differs from ``head`` and has to be committed."""
    report = MergeReport(taken=sum(change.rows for change in arrived))
    conn.execute("ATTACH DATABASE ? AS base", (str(old_base),))
    conn.execute("ATTACH DATABASE ? AS theirs", (str(head),))
    try:
        with immediate_transaction(conn):  # a CatalogConnection waits for other connections' transactions
            if not sync_changes.same_rows(conn, "main", "base"):
                return None  # (nothing was written: the transaction commits empty)
            for change in arrived:
                sync_changes.apply_to(conn, change)
            if conn.execute("SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = 'filestore'"
                            ).fetchone():
                keep_rows_in_use(conn, report)
    finally:
        conn.execute("DETACH DATABASE base")
        conn.execute("DETACH DATABASE theirs")
    return report


__all__ = ["BhError", "BucketSQLite", "FlushResult", "SnapshotConfig"]
