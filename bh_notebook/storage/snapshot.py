"""Catalog snapshots: write an in-memory SQLite database to a file and restore it, with checks.

Restores go through SQLite's backup API into the in-memory database rather than ``deserialize()``, which
caps a database at 1 GiB ("database or disk is full") and would stop a restored catalog from growing.
"""

from __future__ import annotations

import hashlib
import math
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from ..connection import PLAIN_TABLE_SQL, quote_ident
from ..errors import ConfigError, SnapshotCorruptError, UntrustedCatalog


@dataclass(frozen=True)
class SnapshotConfig:
    """When the catalog is snapshotted to the bucket.

    ``interval_seconds``: the background flush period (0 turns the timer off).
    ``min_interval_seconds``: ``flush()`` calls closer together than this are merged into one.
    ``keep_previous``: copy the snapshot to ``<key>.prev`` before replacing it.
    """

    interval_seconds: float = 60.0
    min_interval_seconds: float = 5.0
    keep_previous: bool = True

    def __post_init__(self) -> None:
        # buckethead's rules (positive numbers, min_interval_seconds <= interval_seconds, a bool), except that 0
        # is allowed here: no timer, or no debounce.
        for name in ("interval_seconds", "min_interval_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ConfigError(f"SnapshotConfig.{name} must be a finite number of seconds >= 0, not {value!r}")
        if 0 < self.interval_seconds < self.min_interval_seconds:
            raise ConfigError(
                "SnapshotConfig.min_interval_seconds must be <= interval_seconds (got "
                f"min={self.min_interval_seconds}, interval={self.interval_seconds})")
        if not isinstance(self.keep_previous, bool):
            raise ConfigError(f"SnapshotConfig.keep_previous must be True or False, not {self.keep_previous!r}")


class BackupTimeout(Exception):
    """A write transaction stayed open too long for a consistent snapshot; try later."""


def backup_to_file(
    source: sqlite3.Connection,
    path: Path,
    *,
    timeout: float = 10.0,
) -> None:
    """Copy the committed state of ``source`` to a new database file at ``path``.

    The copy is one backup step, which SQLite refuses (and Python retries) while any connection of the
    shared-cache database holds a write transaction, so the file never holds half a transaction.
    """
    deadline = time.monotonic() + timeout

    def check(status: int, remaining: int, total: int) -> None:
        if time.monotonic() > deadline:
            raise BackupTimeout("a write transaction stayed open; the snapshot will be taken later")

    path.unlink(missing_ok=True)
    dest = sqlite3.connect(path)
    try:
        source.backup(dest, pages=-1, progress=check, sleep=0.005)
        dest.commit()
    finally:
        dest.close()


def file_sha256(path: Path) -> str:
    """SHA-256 hex of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


_INDEX_SQL = re.compile(r"\s*CREATE\s+(UNIQUE\s+)?INDEX\s", re.IGNORECASE)



def vet_catalog_file(path: Path, *, label: str = "snapshot", hint: str = "") -> list[str]:
    """Make a catalog file from the bucket safe to open here, in place, and say what was removed.

    Nothing read from the bucket may run in this process: triggers and views (SQL that would execute on our own
    writes and reads) are dropped from the file and named in the returned list; a table that is not a plain
    ``CREATE TABLE`` (a virtual table, or a schema row whose SQL does not match its type) is refused with
    UntrustedCatalog. A file that fails ``PRAGMA integrity_check`` or holds no tables at all (an empty or cut-off
    upload reads as an empty database) is refused with SnapshotCorruptError, so it is never taken for a catalog in
    which everything was deleted. ``path`` must be this process's own copy: it is modified.
    """
    if path.stat().st_size == 0:
        raise SnapshotCorruptError(f"the {label} is empty (0 bytes): an upload that was cut off.{hint}")
    try:
        db = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise SnapshotCorruptError(f"cannot open the {label}: {exc}.{hint}") from exc
    removed: list[str] = []
    try:
        try:
            db.execute("PRAGMA trusted_schema = OFF")
            rows = db.execute("PRAGMA integrity_check").fetchall()
            problems = [str(r[0]) for r in rows if r[0] != "ok"]
            if problems:
                raise SnapshotCorruptError(
                    f"the {label} failed SQLite's integrity check: {'; '.join(problems[:3])}.{hint}")
            schema = db.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
        except sqlite3.DatabaseError as exc:
            raise SnapshotCorruptError(f"the {label} is not a valid SQLite database ({exc}).{hint}") from exc
        tables = 0
        for kind, name, sql in schema:
            if kind in ("trigger", "view"):
                db.execute(f"DROP {kind.upper()} IF EXISTS {quote_ident(name)}")
                removed.append(f"{kind} {name!r}")
            elif kind == "table" and isinstance(sql, str) and PLAIN_TABLE_SQL.match(sql):
                tables += not name.startswith("sqlite_")
            elif kind == "index" and (sql is None or (isinstance(sql, str) and _INDEX_SQL.match(sql))):
                pass
            else:
                raise UntrustedCatalog(
                    f"the {label} holds a schema object this library never creates ({kind} {name!r}); it was "
                    f"not opened, so nothing in it ran.{hint}")
        if tables == 0:
            raise SnapshotCorruptError(f"the {label} holds no tables: an empty or cut-off upload, not a "
                                       f"catalog.{hint}")
    finally:
        db.close()
    return removed


def restore_from_file(path: Path, target: sqlite3.Connection, *, label: str = "snapshot",
                      hint: str = "", vetted: bool = False) -> list[str]:
    """Vet ``path`` (see vet_catalog_file; ``vetted=True``: this process vetted it already) and copy it into
    ``target``; returns what vetting removed.

    Raises SnapshotCorruptError (or UntrustedCatalog), naming ``label``, when the file is not a healthy catalog;
    ``target`` is then left as it was.
    """
    removed = [] if vetted else vet_catalog_file(path, label=label, hint=hint)
    try:
        src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise SnapshotCorruptError(f"cannot open the {label}: {exc}.{hint}") from exc
    try:
        src.backup(target)
    finally:
        src.close()
    return removed


def assert_no_code(conn: sqlite3.Connection) -> None:
    """Raise UntrustedCatalog when the catalog behind ``conn`` holds a trigger or a view (it never should)."""
    found = conn.execute("SELECT type, name FROM main.sqlite_master WHERE type IN ('trigger', 'view')").fetchall()
    if found:
        raise UntrustedCatalog(f"the catalog holds {found[0][0]} {found[0][1]!r}, which this library never creates")
