"""A consistency check of a catalog against its bucket: reports, and repairs only when asked."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .errors import ObjectNotFound

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
    fixed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not (self.dangling_rows or self.orphan_blobs or self.corrupt_blobs or self.unregistered_blobs
                    or self.lost_blobs)

    def __str__(self) -> str:
        if self.ok:
            return "catalog and bucket agree" + (f"; fixed: {'; '.join(self.fixed)}" if self.fixed else "")
        parts = [f"{len(self.dangling_rows)} rows point at missing blobs",
                 f"{len(self.orphan_blobs)} blobs no row points at",
                 f"{len(self.corrupt_blobs)} blobs whose bytes do not match their key",
                 f"{len(self.unregistered_blobs)} blobs used by entries but missing from the file table",
                 f"{len(self.lost_blobs)} blobs entries use that are gone (row and object)"]
        text = "; ".join(parts)
        return text + (f"; fixed: {'; '.join(self.fixed)}" if self.fixed else "")


def check(bh: Catalog, fix: bool = False, *, verify: bool = True, grace_seconds: float = 300.0) -> CheckReport:
    """Compare the catalog's rows with the bucket's objects. See ``BucketSQLite.check``."""
    report = CheckReport()
    files = bh.files
    conn = bh.connection
    prefix = files.prefix
    objects = {info.key[len(prefix):]: info for info in bh.bucket.list_info(prefix)}
    rows = {r[0]: int(r[1]) for r in conn.execute("SELECT bh_key, size FROM filestore")}
    used = files.referenced_keys()  # the registered kinds' blob columns, and any other table's bh_key column

    report.dangling_rows = sorted(k for k in rows if k not in objects)
    report.unregistered_blobs = sorted(k for k in used if k not in rows and k in objects)
    report.lost_blobs = sorted(k for k in used if k not in rows and k not in objects)
    report.orphan_blobs = sorted(k for k in objects if k not in rows and k not in used)
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
        now = time.time()
        for key in report.unregistered_blobs:  # the bytes are there and entries use them: put the row back
            info = objects[key]
            files._insert(key, info.key, info.size, None, None, None)
            report.fixed.append(f"file row restored for {key[:12]}")
        for key in report.orphan_blobs:
            if now - objects[key].last_modified >= grace_seconds:
                bh.bucket.delete(objects[key].key)
                report.fixed.append(f"orphan blob {key[:12]} deleted")
        # Dangling rows and corrupt blobs are reported, never removed: they may be the only trace of the data.
    return report
