"""Catalog snapshots: write an in-memory SQLite database to a file and restore it, with checks.

Restores go through SQLite's backup API into the in-memory database rather than ``deserialize()``, which
caps a database at 1 GiB ("database or disk is full") and would stop a restored catalog from growing.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import SnapshotCorruptError


@dataclass(frozen=True)
class SnapshotConfig:
    """When the catalog is snapshotted to the bucket.

    ``interval_seconds``: the background flush period (0 or less turns the timer off).
    ``min_interval_seconds``: ``flush()`` calls closer together than this are merged into one.
    ``keep_previous``: copy the snapshot to ``<key>.prev`` before replacing it.
    """

    interval_seconds: float = 60.0
    min_interval_seconds: float = 5.0
    keep_previous: bool = True


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


def restore_from_file(path: Path, target: sqlite3.Connection, *, label: str = "snapshot",
                      hint: str = "") -> None:
    """Check ``path`` with ``PRAGMA integrity_check`` and copy it into ``target``.

    Raises SnapshotCorruptError, naming ``label``, when the file is not a healthy SQLite database; ``target``
    is then left as it was.
    """
    try:
        src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise SnapshotCorruptError(f"cannot open the {label}: {exc}.{hint}") from exc
    try:
        try:
            rows = src.execute("PRAGMA integrity_check").fetchall()
        except sqlite3.DatabaseError as exc:
            raise SnapshotCorruptError(f"the {label} is not a valid SQLite database ({exc}).{hint}") from exc
        problems = [str(r[0]) for r in rows if r[0] != "ok"]
        if problems:
            raise SnapshotCorruptError(
                f"the {label} failed SQLite's integrity check: {'; '.join(problems[:3])}.{hint}"
            )
        src.backup(target)
    finally:
        src.close()


