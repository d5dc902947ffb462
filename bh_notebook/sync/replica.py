"""One process's replica of a shared catalog: start from a checkpoint, commit changes, take in others' commits.

Thread-free: ``BucketSQLite`` (the scheduler: when to flush, pull, stop) calls it under its flush lock and hands
it two callables, one that writes the catalog in use to a file and one that merges what arrived into it.

The state this process last synced with is ``base.db`` at ``position``: the checkpoint it started from with every
commit up to ``position`` applied, row for row the state every other reader at that position holds. A flush
computes the change from ``base.db`` to a backup of the catalog in use and creates commit ``position + 1`` with
``If-None-Match: *``. When another writer created it first, this process reads every commit up to the newest,
applies them to a copy of ``base.db`` (the new head), merges the head into its catalog by the merge rules
(``merge.py``: nothing compares clocks; "later" is commit order) and tries the next position, backing off with
jitter while others keep winning. Nothing is ever overwritten except ``<key>`` itself, the checkpoint copy.
"""

from __future__ import annotations

import logging
import random
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..connection import quote_ident
from ..errors import (
    BhError,
    CatalogDeleted,
    ObjectNotFound,
    PreconditionFailed,
    SnapshotConflict,
    SnapshotCorruptError,
    UntrustedCatalog,
)
from ..merge import MergeReport, merge_catalog
from ..storage import BucketClient
from ..storage.snapshot import file_sha256, vet_catalog_file
from . import changes
from .changes import LOG_TABLES, Change, CorruptCommit
from .log import CommitLog, lost_race

log = logging.getLogger("bh_notebook")

STATE_TABLE = "bh_log_state"

#: Commits and checkpoints younger than this (by the bucket's clock) are never pruned: a writer that read the log
#: within it still finds every commit after the state it holds.
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600.0
#: Every this many seconds, a log that ended with a 404 has its floor looked at again (one HEAD of ``<key>``): the
#: commits after a reader's position may have been pruned while it slept. Far below the retention, so a clock that
#: is hours off changes nothing.
STALE_SECONDS = 600.0
#: At most this many objects are deleted by the pruning after one checkpoint (a flush waits for it).
PRUNE_LIMIT = 1000


@dataclass
class PruneReport:
    """What ``Replica.prune`` deleted: commits, whole-catalog states and checkpoints, their bytes, and the floor
    (the oldest checkpoint kept; the log after it is complete)."""

    commits: int = 0
    states: int = 0
    checkpoints: int = 0
    nbytes: int = 0
    floor: int = 0

    def __str__(self) -> str:
        if not (self.commits or self.states or self.checkpoints):
            return f"nothing to prune (the log is kept whole from checkpoint {self.floor} on)"
        return (f"pruned {self.commits} commits, {self.checkpoints} checkpoints and {self.states} whole-catalog "
                f"states up to position {self.floor}: {self.nbytes:,} bytes")


@dataclass
class Arrival:
    """What reading the log from ``position + 1`` on brought: the new head state and how it was reached."""

    head: Path
    position: int
    #: The row changes in order, when every commit was one (then they can be replayed on a catalog that equals the
    #: old base); None when some commit replaced the whole catalog.
    changes: list[Change] | None
    commits: int = 0
    skipped: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


@dataclass
class Committed:
    """A commit this process created: its position, the bytes it uploaded (checkpoints included) and etag."""

    position: int
    nbytes: int
    etag: str | None


class Race:
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


def _log_state(path: Path) -> tuple[int | None, str | None]:
    """(position, log id) a checkpoint file records in ``bh_log_state``; (None, None) when it has none."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cols = [r[1] for r in conn.execute(f"PRAGMA table_info({STATE_TABLE})")]
        if "position" not in cols:
            return None, None
        row = conn.execute(f"SELECT position, {'log_id' if 'log_id' in cols else 'NULL'} FROM {STATE_TABLE}"
                           ).fetchone()
    except sqlite3.DatabaseError:
        return None, None
    finally:
        conn.close()
    if row is None:
        return None, None
    return (row[0] if isinstance(row[0], int) else None), (row[1] if isinstance(row[1], str) else None)


def read_state(path: Path) -> int | None:
    """The log position a checkpoint file records, or None when it has none (not written by the log)."""
    return _log_state(path)[0]


def read_log_id(path: Path) -> str | None:
    """The id of the log a checkpoint file belongs to (None: it records none)."""
    return _log_state(path)[1]


def drop_log_tables(path: Path) -> None:
    """Remove the log's own tables from a catalog file (they never enter the catalog in use)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for table in LOG_TABLES:
            conn.execute(f"DROP TABLE IF EXISTS {quote_ident(table)}")
    finally:
        conn.close()


class Replica:
    """This process's replica of the catalog at ``key``: ``base.db`` in ``workdir`` at ``position``."""

    def __init__(self, bucket: BucketClient, key: str, workdir: Path, *, checkpoint_every: int = 100,
                 keep_previous: bool = True, patience: float = 300.0, location: str = "",
                 retention_seconds: float | None = DEFAULT_RETENTION_SECONDS) -> None:
        self.log = CommitLog(bucket, key)
        self.bucket = bucket
        self.key = key
        self.workdir = workdir
        self.checkpoint_every = max(1, int(checkpoint_every))
        self.keep_previous = keep_previous
        self.patience = patience
        #: After each periodic checkpoint, prune what is older than this (None: never prune on our own).
        self.retention_seconds = retention_seconds
        self.location = location
        self.writer = uuid.uuid4().hex
        self.position = 0
        #: The id of this log, chosen by its first commit: a log deleted and begun again (a branch deleted, or
        #: created again) has another, so a late commit to the old one is never applied to the new one.
        self.log_id: str | None = None
        #: Etags of ``<key>`` known to be genuine checkpoints, with their positions (ours, seen at start, or
        #: announced in others' commits): such a copy may be replaced without reading it first.
        self.known_checkpoints: dict[str, int] = {}
        #: The newest position a genuine checkpoint is known for: every commit up to it exists, or was pruned
        #: (``prune``). A reader that finds the log ending below it has fallen into a pruned stretch, and starts
        #: again from that checkpoint instead of writing into the hole.
        self.known_floor = 0
        #: When ``known_floor`` was last brought up to date from the bucket (``learn_floor``).
        self.floor_checked = 0.0
        #: SHA-256 of every foreign ``<key>`` (one written by another program) already taken in as a commit.
        self.taken_in: set[str] = set()
        #: Etags of copies at ``<key>`` already looked at and found damaged or taken in (replaced at the next
        #: checkpoint; not downloaded again meanwhile).
        self.passed_over: set[str] = set()
        self._announce: list[tuple[str, int]] = []  # checkpoints we wrote, announced by our next commit
        self.removed: list[str] = []  # triggers/views dropped from catalogs read from the bucket
        #: Copies at the key that could not be used (damaged, or holding what this library never runs), passed
        #: over for the checkpoints and the log.
        self.refused: list[str] = []
        self.skipped: list[str] = []  # commits that could not be read, passed over by every reader alike
        self.took_in_report: MergeReport | None = None
        self.committed = False  # whether this process created a commit
        #: A copy of ``<key>`` another program wrote, found while checkpointing: (file, sha, etag), merged into
        #: the catalog in use and committed by the running ``commit``.
        self.pending_foreign: tuple[Path, str, str] | None = None
        #: After ``open(take_in=False)``: a copy of ``<key>`` another program wrote, not taken in.
        self.foreign_copy: Path | None = None

    @property
    def base(self) -> Path:
        return self.workdir / "base.db"

    def _know(self, etag: str, position: int) -> None:
        """``<key>`` with ``etag`` is a genuine checkpoint of ``position``."""
        self.known_checkpoints[etag] = position
        self.known_floor = max(self.known_floor, position)

    def _race(self, what: str) -> Race:
        return Race(self.patience, lambda: SnapshotConflict(
            f"the catalog {self.key!r} in {self.location} kept receiving other writers' commits for "
            f"{self.patience:.0f} s while this process tried to {what}. Nothing was overwritten; your changes are "
            "still in memory and the next flush tries again."))

    # -- starting ----------------------------------------------------------------------------------------------

    def open(self, *, take_in: bool = True,
             hint: str = " Nothing in the bucket was changed.") -> tuple[Path | None, int]:
        """Build ``base.db`` at the newest position, starting from the checkpoint copy at ``<key>``, and take in
        a ``<key>`` another program rewrote (``take_in=False``, for readers that must not write: it is left in
        ``foreign_copy``). Returns (the state file, commits replayed); the file is None when the bucket holds no
        catalog yet."""
        source = self.key
        start = self.workdir / "start.db"
        foreign: tuple[Path, str, str] | None = None  # (file, sha, etag) of a catalog another program wrote
        info = self.bucket.head(source)
        have_base = False
        if info is not None:
            try:
                self.bucket.download(source, start, if_match=info.etag)
            except (ObjectNotFound, PreconditionFailed):
                info = None  # replaced meanwhile: the log holds whatever replaced it
        if info is not None:
            try:
                self.removed += vet_catalog_file(start, label=f"catalog snapshot {source!r} in {self.location}",
                                                 hint=hint)
                position = read_state(start)
                sha = file_sha256(start)
                genuine = position is not None and self.bucket.head(self.log.checkpoint_key(position, sha)) \
                    is not None
            except SnapshotCorruptError as exc:
                if not self.log.checkpoints() and self.log.get_commit(1) is None:
                    raise  # no log to fall back on: the snapshot was the only copy
                log.warning("bh_notebook: the catalog snapshot %r in %s cannot be used (%s); starting from the "
                            "newest checkpoint and the commit log instead", source, self.location, exc)
                self.refused.append(f"the copy at {source!r}: {exc}")
                genuine, position = False, None
                sha = ""
                start.unlink(missing_ok=True)
            if genuine:
                assert position is not None
                self.log_id = read_log_id(start)
                drop_log_tables(start)
                start.replace(self.base)
                self.position = position
                self._know(info.etag, position)
                self.floor_checked = time.time()
                have_base = True
            elif start.exists():
                foreign = (start, sha, info.etag)
                have_base = self._start_from_checkpoint(position)
            else:
                have_base = self._start_from_checkpoint(None)
        if not have_base or self.floor_checked == 0.0:
            self._floor_from_listing()
            if have_base and self.position < self.known_floor:
                have_base = self._start_from_checkpoint(None)  # the one it recorded is older than the pruning
        arrival = self.fetch(have_base)
        replayed = 0
        if arrival is not None:
            arrival.head.replace(self.base)
            self.position = arrival.position
            replayed = arrival.commits
            have_base = True
        if foreign is not None and foreign[1] not in self.taken_in:
            if take_in:
                self._take_in(*foreign)
                have_base = True
            else:
                self.foreign_copy = foreign[0]
        return (self.base if have_base else None), replayed

    def _checkpoint_file(self, position: int | None, dest: Path) -> int | None:
        """Download the checkpoint of ``position`` (None: the newest that reads) to ``dest``, checked against its
        key's hash, vetted, without the log's tables; its position, or None when none reads."""
        candidates = ([(position, k) for k in self.log.checkpoints_at(position)] if position is not None
                      else self.log.checkpoints())
        for pos, ckey in candidates:
            try:
                self.bucket.download(ckey, dest)
                if file_sha256(dest) != ckey.rsplit("-", 1)[-1][:-3]:
                    raise SnapshotCorruptError(f"checkpoint {ckey!r} does not match its hash")
                self.removed += vet_catalog_file(dest, label=f"checkpoint {ckey!r}")
            except (ObjectNotFound, SnapshotCorruptError) as exc:
                log.warning("bh_notebook: checkpoint %r cannot be used (%s)", ckey, exc)
                dest.unlink(missing_ok=True)  # never left behind as a state to build on
                continue
            theirs = read_log_id(dest)
            if self.log_id is not None and theirs is not None and theirs != self.log_id:
                log.warning("bh_notebook: checkpoint %r belongs to another log of this catalog (it was deleted "
                            "and begun again); not used", ckey)
                dest.unlink(missing_ok=True)
                continue
            self.log_id = self.log_id or theirs
            drop_log_tables(dest)
            self.known_floor = max(self.known_floor, pos)
            return pos
        return None

    def _floor_from_listing(self) -> None:
        """``known_floor`` from the checkpoints listed (one LIST), when ``<key>`` cannot tell it."""
        listed = self.log.checkpoints()
        if listed:
            self.known_floor = max(self.known_floor, listed[0][0])
        self.floor_checked = time.time()

    def _start_from_checkpoint(self, position: int | None) -> bool:
        """Start from the checkpoint at ``position`` (None: the newest one that reads); False when none does."""
        found = self._checkpoint_file(position, self.base)
        self.position = found or 0
        return found is not None

    def _foreign_parts(self, theirs: Path) -> tuple[Path, Path | None]:
        """A foreign copy of ``<key>`` without the log's tables, and the checkpoint it was made from (if any)."""
        position = read_state(theirs)
        fork: Path | None = None
        if position is not None:
            fork = self.workdir / "fork.db"
            if self._checkpoint_file(position, fork) is None:
                fork = None
        drop_log_tables(theirs)
        return theirs, fork

    def _take_in(self, theirs: Path, sha: str, etag: str) -> None:
        """At start (nothing in use yet): commit what another program (buckethead, an older bh_notebook) wrote
        to ``<key>``, merged three ways against the checkpoint it started from (or, with none, as a union), then
        replace ``<key>`` with a genuine checkpoint so no one takes it in twice."""
        theirs, fork = self._foreign_parts(theirs)
        race = self._race("take in the rewritten catalog")
        while True:
            merged = self.workdir / "taken.db"
            if self.base.exists():
                shutil.copyfile(self.base, merged)
            else:
                merged.unlink(missing_ok=True)
                sqlite3.connect(merged).close()
            conn = sqlite3.connect(merged)
            try:
                report = merge_catalog(conn, fork, theirs)
            finally:
                conn.close()
            if self._try_commit(merged, {"took_in": sha}) is not None:
                self.took_in_report = report
                log.warning("bh_notebook: %r in %s was rewritten by another program since the last checkpoint; "
                            "its changes were taken in as commit %d (%s)", self.key, self.location, self.position,
                            report)
                break
            race.lost()
            arrival = self.fetch()
            if arrival is not None:
                self.accept(arrival)
            if sha in self.taken_in:
                break  # another writer took it in first: its commit is in the state now
        self.taken_in.add(sha)
        self._checkpoint_quietly(replace_etag=etag)

    # -- reading the log -------------------------------------------------------------------------------------

    def fetch(self, have_base: bool | None = None) -> Arrival | None:
        """Read commits from ``position + 1`` until one is missing and apply them to a copy of ``base.db``.

        One GET (a 404) when nothing is new: then None. ``base.db`` and ``position`` are left alone; the caller
        merges the head into its catalog and then calls ``accept``."""
        n = self.position + 1
        data = self.log.get_commit(n)
        if data is None:
            self._check_floor_now_and_then()
            if self.position < self.known_floor:
                return self._from_checkpoint()
            return None
        head = self.workdir / "head.db"
        has_base = self.base.exists() if have_base is None else have_base and self.base.exists()
        if has_base:
            shutil.copyfile(self.base, head)
        else:
            head.unlink(missing_ok=True)
            sqlite3.connect(head).close()
        arrival = self._replay(Arrival(head, self.position, []), data, None)
        self._check_floor_now_and_then()
        if arrival.position < self.known_floor:  # the log ends below a checkpoint: we read into a pruned stretch
            return self._from_checkpoint() or arrival
        return arrival

    def _check_floor_now_and_then(self) -> None:
        """A log that ended with a 404: every ``STALE_SECONDS``, make sure it did not end in a stretch pruned
        meanwhile (one HEAD of ``<key>``), so a reader that only pulls is never stuck below the others."""
        if time.time() - self.floor_checked > STALE_SECONDS:
            self.learn_floor()

    def learn_floor(self) -> int:
        """Bring ``known_floor`` up to date: the position of the genuine checkpoint at ``<key>`` (one HEAD), or,
        when ``<key>`` is missing, damaged or written by another program, the newest checkpoint listed (one LIST;
        one that does not read counts too: pruning never goes above it). Returns the floor."""
        if self.key_position() is None:
            self._floor_from_listing()
        self.floor_checked = time.time()
        return self.known_floor

    def _from_checkpoint(self) -> Arrival | None:
        """The head built from the newest checkpoint and the commits after it, for a reader whose next commits
        were pruned: taken in by a three-way merge against the state it holds (``changes`` is None), never by
        writing into the hole the pruned commits left. None when no checkpoint newer than ours reads."""
        head = self.workdir / "rebuilt.db"  # not head.db: a failed rebuild leaves what the caller holds alone
        found = self._checkpoint_file(None, head)
        if found is None or found <= self.position:
            head.unlink(missing_ok=True)
            return None
        log.warning("bh_notebook: the commits after position %d of %r in %s were pruned; taking in the state "
                    "from checkpoint %d on", self.position, self.key, self.location, found)
        return self._replay(Arrival(head, found, None), self.log.get_commit(found + 1), None)

    def key_position(self) -> int | None:
        """One HEAD of ``<key>``: the position of the genuine checkpoint it holds (looked at once when unknown),
        or None when it is missing, damaged or written by another program (then waiting in
        ``pending_foreign``)."""
        return self._position_at_key(self.bucket.head(self.key))

    def _position_at_key(self, info: Any) -> int | None:
        """What ``key_position`` says of the copy at ``<key>`` that a HEAD described (None: no object)."""
        if info is None:
            return None
        if info.etag in self.known_checkpoints:
            return self.known_checkpoints[info.etag]
        if info.etag in self.passed_over or self.pending_foreign is not None:
            return None
        found = self._look_at_copy(info.etag)
        if found == -1:
            self.passed_over.add(info.etag)
            return None
        return found

    def _replay(self, arrival: Arrival, data: bytes | None, stop: int | None) -> Arrival:
        """Apply commits from ``arrival.position + 1`` (``data``: its bytes, already read) to ``arrival.head``,
        until one is missing or ``stop`` is reached."""
        n = arrival.position + 1
        while data is not None:
            label = f"commit {self.log.commit_key(n)!r} in {self.location}"
            try:
                record, change = changes.decode(data, label=label)
                log_id = record.get("log_id")
                if n == 1 and isinstance(log_id, str):
                    self.log_id = log_id
                elif self.log_id is not None and isinstance(log_id, str) and log_id != self.log_id:
                    raise CorruptCommit(f"{label} belongs to an earlier log of this catalog, since deleted (a "
                                        "writer that kept it open committed late)")
                if change is not None:
                    changes.apply(arrival.head, change)
                    if arrival.changes is not None:
                        arrival.changes.append(change)
                else:
                    self._apply_whole(record, arrival.head, label)
                    arrival.changes = None
            except CorruptCommit as exc:
                # Every reader passes over the same unreadable commit, so all still agree on the state.
                log.error("bh_notebook: %s; passed over (every reader does the same)", exc)
                arrival.skipped.append(str(exc))
                self.skipped.append(str(exc))
            else:
                took = record.get("took_in")
                if isinstance(took, str):
                    self.taken_in.add(took)
                for etag, pos in record.get("checkpoints", []) or []:
                    if isinstance(etag, str) and isinstance(pos, int):
                        self._know(etag, pos)
            arrival.position = n
            arrival.commits += 1
            n += 1
            data = self.log.get_commit(n) if stop is None or n <= stop else None
        return arrival

    def state_at(self, position: int, dest: Path) -> None:
        """The catalog as of commit ``position`` (an earlier state: the newest checkpoint at or before it, and the
        commits after that), at ``dest``."""
        start = 0
        for pos, _ in self.log.checkpoints():
            if pos <= position and self._checkpoint_file(pos, dest) is not None:
                start = pos
                break
        else:
            dest.unlink(missing_ok=True)
            sqlite3.connect(dest).close()
        if start < position:
            reached = self._replay(Arrival(dest, start, None), self.log.get_commit(start + 1), position)
            if reached.position < position:
                dest.unlink(missing_ok=True)
                raise SnapshotCorruptError(
                    f"the state of {self.key!r} in {self.location} as of commit {position} cannot be rebuilt: "
                    f"the commits after checkpoint {start} end at {reached.position} (pruned, or never written)")

    def _apply_whole(self, record: dict[str, Any], head: Path, label: str) -> None:
        whole = record.get("whole")
        if not isinstance(whole, dict) or not isinstance(whole.get("key"), str) \
                or not str(whole["key"]).startswith(self.log.log_prefix):
            raise CorruptCommit(f"{label} names no catalog")
        path = self.workdir / "whole.db"
        try:
            self.bucket.download(whole["key"], path)
        except ObjectNotFound as exc:
            raise CorruptCommit(f"{label} names a catalog that is missing") from exc
        if path.stat().st_size != whole.get("size") or file_sha256(path) != whole.get("sha256"):
            raise CorruptCommit(f"{label} names a catalog whose bytes do not match it")
        try:
            self.removed += vet_catalog_file(path, label=f"catalog of {label}")
        except SnapshotCorruptError as exc:
            raise CorruptCommit(str(exc)) from exc
        drop_log_tables(path)
        path.replace(head)

    def accept(self, arrival: Arrival) -> None:
        """The head ``arrival`` built is now what this process has synced with."""
        arrival.head.replace(self.base)
        self.position = arrival.position

    # -- committing ------------------------------------------------------------------------------------------

    def _try_commit(self, candidate: Path, extra: dict[str, Any] | None = None, *,
                    change: Change | None | bool = True) -> Committed | None:
        """Create commit ``position + 1`` turning ``base.db`` into ``candidate`` (``change``, when the caller
        computed it already); None when another writer has that position. On success ``candidate`` becomes
        ``base.db``."""
        n = self.position + 1
        if change is True:
            change = changes.diff(self.base if self.base.exists() else None, candidate)
        assert change is None or isinstance(change, Change)
        if n == 1:
            self.log_id = uuid.uuid4().hex  # a new log (were it lost, the winner's id is read with its commit)
        record: dict[str, Any] = {"position": n, "writer": self.writer, "log_id": self.log_id, **(extra or {})}
        if self._announce:
            record["checkpoints"] = [[etag, pos] for etag, pos in self._announce]
        nbytes = 0
        uploaded: str | None = None
        if change is None:  # the schema changed: the commit stands for the whole catalog
            # Readers vet it (a trigger or view dropped, anything else refused): vet it the same way first, so
            # what this process builds on is what they apply, and nothing is shipped that they would not run.
            try:
                vet_catalog_file(candidate, label="catalog")
            except UntrustedCatalog as exc:
                found = str(exc).split("(", 1)[-1].split(")", 1)[0]
                raise UntrustedCatalog(f"the catalog holds {found}, which other writers would refuse to open (a "
                                       "virtual table, e.g. FTS5, or a malformed schema row): it cannot be shared "
                                       "through the bucket. Drop it from the catalog; nothing was committed and "
                                       "your changes are still in memory.") from None
            sha = file_sha256(candidate)
            key = self.log.state_key(n, sha)
            try:
                self.bucket.upload(candidate, key, if_none_match="*")
                nbytes += candidate.stat().st_size
                uploaded = key
            except PreconditionFailed:
                pass  # the very same bytes are there already
            record["whole"] = {"key": key, "sha256": sha, "size": candidate.stat().st_size}
        data = changes.encode(record, change)
        etag = self.log.put_commit(n, data)
        if etag is None:
            if uploaded is not None:
                self._drop_unnamed(n, uploaded)
            return None
        self._announce = []
        candidate.replace(self.base)
        self.position = n
        self.committed = True
        return Committed(n, nbytes + len(data), etag)

    def _drop_unnamed(self, position: int, key: str) -> None:
        """Delete the whole catalog uploaded for a position another writer took, unless the commit there names it
        (a PUT of ours that landed although its answer was lost: that commit is ours)."""
        data = self.log.get_commit(position)
        try:
            record, _ = changes.decode(data or b"", label="commit")
        except CorruptCommit:
            return  # unreadable: keep what might be named
        whole = record.get("whole")
        if record.get("writer") == self.writer or (isinstance(whole, dict) and whole.get("key") == key):
            return
        try:
            self.bucket.delete(key)
        except BhError:
            pass

    def commit(self, snapshot: Callable[[Path], None],
               merge_in: Callable[[Arrival, Path | None], MergeReport]) -> tuple[Committed | None, MergeReport | None]:
        """Commit the catalog in use (``snapshot`` writes it to a file) if it differs from ``base.db``.

        Losing the race, others' commits are read and merged in (``merge_in(arrival, old_base)``) and the next
        position is tried. A ``<key>`` another program rewrote (one HEAD per commit looks) is merged in the same
        way and committed with ours. Returns what was committed (None: nothing) and the last merge, if any."""
        race = self._race("commit")
        merged: MergeReport | None = None
        extra: dict[str, Any] | None = None
        replace: str | None = None
        done: Committed | None = None
        self.notice_rewrite()
        if self.position < self.known_floor:  # others' checkpoints are ahead of us: catch up before creating
            arrival = self.fetch()
            if arrival is not None:
                merged = self.take(arrival, merge_in)
        while True:
            pending, self.pending_foreign = self.pending_foreign, None
            if pending is not None and extra is None and pending[1] not in self.taken_in:
                theirs, fork = self._foreign_parts(pending[0])
                merged = merge_in(Arrival(theirs, self.position, None), fork)
                self.took_in_report = merged
                log.warning("bh_notebook: %r in %s was rewritten by another program; its changes were merged in "
                            "and are committed now (%s)", self.key, self.location, merged)
                extra, replace = {"took_in": pending[1]}, pending[2]
            candidate = self.workdir / "candidate.db"
            snapshot(candidate)
            change = changes.diff(self.base if self.base.exists() else None, candidate)
            if change is not None and not change and extra is None:
                candidate.unlink(missing_ok=True)
                return done, merged
            if self.position < self.known_floor:
                candidate.unlink(missing_ok=True)
                raise SnapshotCorruptError(
                    f"the commit log of {self.key!r} in {self.location} ends below its checkpoint "
                    f"{self.known_floor} and no checkpoint after position {self.position} could be read, so "
                    "nothing was committed (that would write into the stretch pruning left). Your changes are "
                    "kept; `bh-notebook check` shows what the bucket holds.")
            result = self._try_commit(candidate, extra, change=change)
            if result is None:
                race.lost()
                arrival = self.fetch()
                if arrival is not None:
                    merged = self.take(arrival, merge_in)
                if extra is not None and extra["took_in"] in self.taken_in:
                    extra = None  # another writer took it in first; its commit is merged
                continue
            if done is not None:
                result.nbytes += done.nbytes
            done = result
            if extra is not None:
                self.taken_in.add(extra["took_in"])
                extra = None
                done.nbytes += self._checkpoint_quietly(replace_etag=replace)
            elif self.position == 1 or self.position % self.checkpoint_every == 0:
                done.nbytes += self._checkpoint_quietly()
                if self.position > 1 and self.retention_seconds is not None:
                    self._prune_quietly()
            if self.pending_foreign is None:
                return done, merged

    def notice_rewrite(self) -> None:
        """One HEAD of ``<key>``: when it is not a checkpoint this process knows, look at it (a genuine
        checkpoint of another writer is remembered; a copy another program wrote waits in ``pending_foreign``)."""
        info = self.bucket.head(self.key)
        if info is None and self.position > 0:
            self._check_log_is_ours()
        self._position_at_key(info)  # a damaged copy, or one taken in already, is not read again at every commit

    def _check_log_is_ours(self) -> None:
        """CatalogDeleted when the log this process built on is gone or was begun again by someone else."""
        data = self.log.get_commit(1)
        theirs: str | None = None
        if data is not None:
            try:
                theirs = changes.decode(data, label="commit 1")[0].get("log_id")
            except CorruptCommit:
                return
        if data is None or (self.log_id is not None and theirs != self.log_id):
            raise CatalogDeleted(f"the catalog {self.key!r} in {self.location} was deleted (or created again) "
                                 "while this process had it open, so nothing more is committed to it. Your "
                                 "changes are still in memory; copy what you need to another catalog.")

    def checkpoint_if_stale(self, min_age: float) -> int:
        """Write a checkpoint when ``<key>`` holds an older position and was written more than ``min_age``
        seconds ago by the bucket's clock (what a process does at stop, so readers of ``<key>`` such as buckethead
        see a recent state, at most one rewrite of the key per ``min_age``). Returns the bytes uploaded."""
        if not self.committed or not self.base.exists() or self.position == 0:
            return 0  # a session that only read leaves the bucket as it found it
        info = self.bucket.head(self.key)
        if info is not None:
            known = self.known_checkpoints.get(info.etag)
            if known is not None and known >= self.position:
                return 0
            if info.age is not None and info.age < min_age:
                return 0
        return self._checkpoint_quietly()

    def take(self, arrival: Arrival, merge_in: Callable[[Arrival, Path | None], MergeReport]) -> MergeReport:
        """Merge ``arrival`` into the catalog in use, then make its head the new base."""
        report = merge_in(arrival, self.base if self.base.exists() else None)
        self.accept(arrival)
        return report

    # -- pruning -------------------------------------------------------------------------------------------------

    def _prune_quietly(self) -> None:
        assert self.retention_seconds is not None
        try:
            report = self.prune(retention_seconds=self.retention_seconds, limit=PRUNE_LIMIT)
        except BhError as exc:  # pruning only saves space; the next checkpoint tries again
            log.warning("bh_notebook: pruning the commit log of %r failed (%s)", self.key, exc)
            return
        if report.nbytes:
            log.info("bh_notebook: %s", report)

    def prune(self, *, retention_seconds: float = DEFAULT_RETENTION_SECONDS, keep_checkpoints: int = 2,
              limit: int | None = None) -> PruneReport:
        """Delete what no reader can still need: commits, whole-catalog states and checkpoints at or below the
        *floor*, the oldest of the ``keep_checkpoints`` newest checkpoints (never above the one ``<key>`` holds),
        and only those older than ``retention_seconds`` by the bucket's clock.

        Who could need them: a fresh reader starts from ``<key>`` or a checkpoint, at or above the floor; an undo
        (the state before the newest commit) starts from a kept checkpoint; a writer that read the log within the
        retention holds a position whose next commits are kept. A writer asleep for longer finds the log ending
        below a checkpoint it knows (``<key>`` tells it), and takes in the newest state by a three-way merge
        instead of writing into the gap (``fetch``). Commit 1 is kept: it names the log (``log_id``)."""
        keep_checkpoints = max(2, int(keep_checkpoints))
        report = PruneReport()
        at_key = self.key_position()
        if at_key is None:
            return report  # <key> is not a checkpoint we can vouch for: prune nothing
        checkpoints = []
        for info in self.bucket.list_info(self.log.checkpoint_prefix):
            name = info.key[len(self.log.checkpoint_prefix):]
            head = name.split("-", 1)[0]
            if head.isdigit() and name.endswith(".db"):
                checkpoints.append((int(head), info))
        positions = sorted({pos for pos, _ in checkpoints}, reverse=True)
        if len(positions) < keep_checkpoints:
            return report
        floor = min(positions[keep_checkpoints - 1], at_key)
        report.floor = floor
        now = self.bucket.clock()

        def old(info: Any) -> bool:
            return now - info.last_modified >= retention_seconds

        doomed: list[tuple[str, int, str]] = []  # (kind, size, key)
        for pos, info in checkpoints:
            if pos < floor and old(info):
                doomed.append(("checkpoints", info.size, info.key))
        for info in self.bucket.list_info(self.log.log_prefix):
            name = info.key[len(self.log.log_prefix):]
            head = name[:20]
            if not head.isdigit() or int(head) > floor or not old(info):
                continue
            if int(head) == 1:
                continue  # commit 1 names the log (and the catalog it stands for, when it stands for one)
            if name == head:
                doomed.append(("commits", info.size, info.key))
            elif name.endswith(".db"):
                doomed.append(("states", info.size, info.key))
        # Oldest first, at most ``limit``: a long log is pruned over several checkpoints, a little at a time. A
        # reader racing with us may stop early in the stretch; it finds the floor above it and starts again
        # from the newest checkpoint (``fetch``).
        for kind, size, key in sorted(doomed, key=lambda d: d[2])[:limit]:
            self.bucket.delete(key)
            setattr(report, kind, getattr(report, kind) + 1)
            report.nbytes += size
        return report

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def _checkpoint_quietly(self, *, replace_etag: str | None = None) -> int:
        try:
            return self.checkpoint(replace_etag=replace_etag)
        except BhError as exc:  # the commit is in; a checkpoint only shortens others' start
            log.warning("bh_notebook: writing checkpoint %d failed (%s); the log holds everything",
                        self.position, exc)
            return 0

    def checkpoint(self, *, replace_etag: str | None = None) -> int:
        """Write ``base.db`` as the checkpoint of ``position`` under its own key and copy it to ``<key>``.

        ``<key>`` is replaced only when it is a genuine checkpoint of an older position (or ``replace_etag``, a
        foreign copy just taken in); a copy another program wrote is taken in first. Returns bytes uploaded."""
        if not self.base.exists():
            return 0
        path = self.workdir / "ckpt.db"
        shutil.copyfile(self.base, path)
        conn = sqlite3.connect(path)
        try:
            conn.execute(f"CREATE TABLE {STATE_TABLE} (position INTEGER NOT NULL, writer TEXT NOT NULL, log_id TEXT)")
            conn.execute(f"INSERT INTO {STATE_TABLE} VALUES (?, ?, ?)", (self.position, self.writer, self.log_id))
            conn.commit()
        finally:
            conn.close()
        sha = file_sha256(path)
        size = path.stat().st_size
        nbytes = 0
        try:
            self.bucket.upload(path, self.log.checkpoint_key(self.position, sha), if_none_match="*")
            nbytes += size
        except PreconditionFailed:
            pass
        for _ in range(3):
            info = self.bucket.head(self.key)
            if info is not None and info.etag != replace_etag:
                known = self.known_checkpoints.get(info.etag)
                if known is None:
                    known = self._look_at_copy(info.etag)
                    if known is None:
                        return nbytes  # another program wrote it: taken in first, then replaced
                if known >= self.position:
                    return nbytes
            try:
                if info is not None and self.keep_previous and info.etag in self.known_checkpoints:
                    try:  # only a genuine checkpoint becomes .prev, never a damaged or foreign copy
                        self.bucket.copy(self.key, self.key + ".prev", if_match=info.etag)
                    except (ObjectNotFound, PreconditionFailed):
                        continue
                if info is None:
                    etag = self.bucket.upload(path, self.key, if_none_match="*")
                else:
                    etag = self.bucket.upload(path, self.key, if_match=info.etag)
            except PreconditionFailed:
                continue  # replaced meanwhile: look again
            nbytes += size
            self._know(etag, self.position)
            self._announce.append((etag, self.position))
            return nbytes
        return nbytes

    def _look_at_copy(self, etag: str) -> int | None:
        """Read ``<key>`` (etag ``etag``): the position it is a genuine checkpoint of, or None after taking in a
        copy another program wrote."""
        path = self.workdir / "look.db"
        try:
            self.bucket.download(self.key, path, if_match=etag)
        except (ObjectNotFound, PreconditionFailed):
            return -1  # changed again: treat as old and look once more
        try:
            removed = vet_catalog_file(path, label=f"catalog snapshot {self.key!r}")
            position = read_state(path)
            sha = file_sha256(path)
            if position is not None and self.bucket.head(self.log.checkpoint_key(position, sha)) is not None:
                theirs = read_log_id(path)
                if self.log_id is not None and theirs is not None and theirs != self.log_id:
                    self._check_log_is_ours()  # a checkpoint of a log begun again: raises CatalogDeleted
                self._know(etag, position)
                return position
        except SnapshotCorruptError:
            return -1  # damaged: a checkpoint may replace it
        if sha in self.taken_in:
            return -1
        self.removed += removed
        kept = self.workdir / f"foreign-{sha[:16]}.db"
        path.replace(kept)
        self.pending_foreign = (kept, sha, etag)
        return None


def read_head(bucket: BucketClient, key: str, workdir: Path) -> list[Path]:
    """The catalog files that make up the newest state of the catalog at ``key``, without writing anything: the
    state built from its checkpoint and log, and a copy another program wrote to ``key`` and nobody took in yet.
    Empty when there is no catalog at ``key``. Used to read branches and other catalogs (gc spares their blobs)."""
    replica = Replica(bucket, key, workdir)
    path, _ = replica.open(take_in=False)
    files = [p for p in (path, replica.foreign_copy) if p is not None]
    return files


__all__ = ["DEFAULT_RETENTION_SECONDS", "Arrival", "Committed", "PruneReport", "Race", "Replica", "STATE_TABLE", "drop_log_tables", "read_head", "read_log_id", "read_state"]
