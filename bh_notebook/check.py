"""A consistency check of a catalog against its bucket: reports, and repairs only when asked."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .errors import ObjectNotFound

_HEX64 = re.compile(r"^[0-9a-f]{64}$")

if TYPE_CHECKING:
    import sqlite3

    from .interfaces.files import FileStore
    from .storage.bucket import BucketClient


class Catalog(Protocol):
    """What the check reads: the catalog's connection, its FileStore and the bucket (a started BucketSQLite)."""

    @property
    def files(self) -> FileStore: ...

    @property
    def connection(self) -> sqlite3.Connection: ...

    @property
    def bucket(self) -> BucketClient: ...


@dataclass
class CheckReport:
    """What ``BucketSQLite.check`` found (bh-keys), and what it repaired."""

    dangling_rows: list[str] = field(default_factory=list)
    orphan_blobs: list[str] = field(default_factory=list)
    corrupt_blobs: list[str] = field(default_factory=list)
    unregistered_blobs: list[str] = field(default_factory=list)
    #: Blobs entries use that have neither a file row nor an object: those entries' data is gone.
    lost_blobs: list[str] = field(default_factory=list)
    #: Rows that disagree with each other: a file row whose object key is not the blob's own, an entry whose blob
    #: key is not a SHA-256 hex digest (descriptions, not bh-keys).
    inconsistent_rows: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not (self.dangling_rows or self.orphan_blobs or self.corrupt_blobs or self.unregistered_blobs
                    or self.lost_blobs or self.inconsistent_rows)

    def __str__(self) -> str:
        if self.ok:
            return "catalog and bucket agree" + (f"; fixed: {'; '.join(self.fixed)}" if self.fixed else "")
        parts = [f"{len(self.dangling_rows)} rows point at missing blobs",
                 f"{len(self.orphan_blobs)} blobs no row points at",
                 f"{len(self.corrupt_blobs)} blobs whose bytes do not match their key",
                 f"{len(self.unregistered_blobs)} blobs used by entries but missing from the file table",
                 f"{len(self.lost_blobs)} blobs entries use that are gone (row and object)"]
        if self.inconsistent_rows:
            parts.append(f"{len(self.inconsistent_rows)} inconsistent rows ({'; '.join(self.inconsistent_rows[:3])}"
                         f"{' ...' if len(self.inconsistent_rows) > 3 else ''})")
        text = "; ".join(parts)
        return text + (f"; fixed: {'; '.join(self.fixed)}" if self.fixed else "")


def _frame_versions(conn: sqlite3.Connection) -> dict[str, tuple[str, int, int]] | None:
    """{version id: (name, number, rows)} of the frame versions, when the catalog has frame parts (else None)."""
    from .interfaces.frames import PARTS_TABLE
    from .interfaces.versioned import version_id_of

    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if PARTS_TABLE not in tables or "bh_frames" not in tables:
        return None
    return {version_id_of("bh_frames", name, version, key, at, meta): (name, version, int(rows))
            for name, version, key, at, meta, rows in conn.execute(
                "SELECT name, version, bh_key, created_at, metadata, n_rows FROM bh_frames")}


def _parts_by_version(conn: sqlite3.Connection) -> dict[str, int]:
    """{version id: rows of its parts} in ``bh_frame_parts``."""
    from .interfaces.frames import PARTS_TABLE

    return {vid: int(total) for vid, total in conn.execute(
        f"SELECT version_id, sum(n_rows) FROM {PARTS_TABLE} GROUP BY version_id ORDER BY 1")}


def _orphan_parts(conn: sqlite3.Connection) -> list[str]:
    """Version ids in ``bh_frame_parts`` that no frame version has."""
    versions = _frame_versions(conn)
    return [] if versions is None else [vid for vid in _parts_by_version(conn) if vid not in versions]


def _part_problems(conn: sqlite3.Connection) -> list[str]:
    """Frame parts that belong to no version, and versions whose parts do not add up to their rows."""
    versions = _frame_versions(conn)
    if versions is None:
        return []
    parts = _parts_by_version(conn)
    found = [f"frame parts of version id {vid[:12]}, which no frame version has"
             for vid in parts if vid not in versions]
    found += [f"frame {versions[vid][0]!r}@{versions[vid][1]} holds {versions[vid][2]} rows but its parts add up "
              f"to {total}" for vid, total in parts.items() if vid in versions and total != versions[vid][2]]
    return found


def check(bh: Catalog, fix: bool = False, *, verify: bool = True, grace_seconds: float = 300.0,
          used_elsewhere: set[str] | frozenset[str] = frozenset()) -> CheckReport:
    """Compare the catalog's rows with the bucket's objects. See ``BucketSQLite.check``.

    ``used_elsewhere``: blobs other catalogs in the bucket use (branches, fork points) and the state before the
    newest commit (what an undo brings back); they are no orphans."""
    report = CheckReport()
    files = bh.files
    conn = bh.connection
    prefix = files.prefix
    objects = {info.key[len(prefix):]: info for info in bh.bucket.list_info(prefix)}
    rows = {r[0]: int(r[1]) for r in conn.execute("SELECT bh_key, size FROM filestore")}
    used = files.referenced_keys()  # the registered kinds' blob columns, and any other table's bh_key column
    misplaced = {k: ok for k, ok in conn.execute("SELECT bh_key, object_key FROM filestore")
                 if ok != prefix + k}
    for key, object_key in sorted(misplaced.items()):
        report.inconsistent_rows.append(f"file row {key[:12]} points at object {object_key!r}, not its own")
    for key in sorted(k for k in used if not (isinstance(k, str) and _HEX64.match(k))):
        report.inconsistent_rows.append(f"an entry points at {str(key)[:40]!r}, which is no blob key")
    used = {k for k in used if isinstance(k, str) and _HEX64.match(k)}
    report.inconsistent_rows.extend(_part_problems(conn))

    report.dangling_rows = sorted(k for k in rows if k not in objects)
    report.unregistered_blobs = sorted(k for k in used if k not in rows and k in objects)
    report.lost_blobs = sorted(k for k in used if k not in rows and k not in objects)
    report.orphan_blobs = sorted(k for k in objects if k not in rows and k not in used and k not in used_elsewhere)
    for key in sorted(set(rows) & set(objects)):
        info = objects[key]
        if info.size != rows[key]:
            report.corrupt_blobs.append(key)
            continue
        if verify:
            h = hashlib.sha256()
            try:
                with bh.bucket.open_read(info.key) as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
            except ObjectNotFound:
                report.dangling_rows.append(key)
                continue
            if h.hexdigest() != key:
                report.corrupt_blobs.append(key)
    if fix:
        for key in sorted(misplaced):  # the blob's own object is there with its size: point the row back at it
            if key in objects and objects[key].size == rows.get(key) and key not in report.corrupt_blobs:
                with conn:
                    conn.execute("UPDATE filestore SET object_key = ? WHERE bh_key = ?", (prefix + key, key))
                report.fixed.append(f"file row {key[:12]} points at its own object again")
        for vid in _orphan_parts(conn):  # parts of a version an older writer deleted without knowing of them
            with conn:
                conn.execute("DELETE FROM bh_frame_parts WHERE version_id = ?", (vid,))
            report.fixed.append(f"frame parts of the deleted version {vid[:12]} dropped (gc collects their blobs)")
        for key in report.unregistered_blobs:  # the bytes are there and entries use them: put the row back
            info = objects[key]
            files._insert(key, info.key, info.size, None, None, None)
            report.fixed.append(f"file row restored for {key[:12]}")
        if report.orphan_blobs:
            # Orphans go through the one collector: it takes in other writers' commits first, spares young or
            # touched blobs and anything the shared catalog uses, and judges age by the bucket's clock.
            gc = files.gc(grace_seconds)
            for key in gc.deleted:
                report.fixed.append(f"orphan blob {key[:12]} deleted")
        # Dangling rows and corrupt blobs are reported, never removed: they may be the only trace of the data.
    return report
