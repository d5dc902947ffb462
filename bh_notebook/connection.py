"""Catalog connections that wait for each other instead of failing, and the SQL helpers every catalog user shares.

The catalog is one shared-cache in-memory SQLite database that several connections of this process use: the
notebook's thread, per-thread connections from ``BucketSQLite.connect()``, and the background flusher while it
snapshots or merges another writer's catalog. Shared-cache table locks answer "database table is locked" at once
(SQLite's busy timeout does not apply to them), which would surface as a raw ``sqlite3.OperationalError`` in a
cell while a flush runs. Every catalog connection is a ``CatalogConnection``: a statement that meets such a lock
waits and tries again, and only a lock held past ``wait_seconds`` becomes the named ``CatalogBusy``.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

from .errors import CatalogBusy

T = TypeVar("T")

#: A plain table's definition: the only kind of SQL from another writer's catalog this library ever executes.
PLAIN_TABLE_SQL = re.compile(r"\s*CREATE\s+TABLE\s", re.IGNORECASE)


def quote_ident(name: str) -> str:
    """An SQL identifier (a table or column name) quoted for use in a statement."""
    return '"' + name.replace('"', '""') + '"'


_BUSY = 5  # SQLITE_BUSY
_LOCKED = 6  # SQLITE_LOCKED (and SQLITE_LOCKED_SHAREDCACHE, 262, in its low byte)


def is_lock_error(exc: BaseException) -> bool:
    """True for SQLite's "database is locked" / "database table is locked" answers (another connection's lock)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (int(code) & 0xFF) in (_BUSY, _LOCKED)
    return "locked" in str(exc)  # Python 3.10 does not expose the code


class CatalogConnection(sqlite3.Connection):
    """A ``sqlite3.Connection`` whose statements wait out other catalog connections' locks."""

    #: How long one statement waits for another connection's lock before CatalogBusy.
    wait_seconds: float = 60.0

    def _retry(self, fn: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.wait_seconds
        pause = 0.0005
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not is_lock_error(exc):
                    raise
                if time.monotonic() > deadline:
                    raise CatalogBusy(
                        f"the catalog stayed locked by another thread of this process for {self.wait_seconds:.0f} s "
                        f"({exc}); nothing was changed by this statement, try again") from exc
                time.sleep(pause)
                pause = min(pause * 2, 0.02)

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        return self._retry(lambda: super(CatalogConnection, self).execute(sql, parameters))

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        rows = list(parameters)  # a generator would be consumed by a failed first try
        return self._retry(lambda: super(CatalogConnection, self).executemany(sql, rows))

    def commit(self) -> None:
        self._retry(super().commit)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        if exc_type is None:
            self.commit()
            return False
        self.rollback()
        return False


@contextmanager
def immediate_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back when the block raises (explicit statements, so the block
    may ATTACH or DETACH around it as the merges do)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def connect_catalog(uri: str, *, check_same_thread: bool = True) -> CatalogConnection:
    """A new CatalogConnection to the shared-cache catalog at ``uri``."""
    conn = sqlite3.connect(uri, uri=True, check_same_thread=check_same_thread, factory=CatalogConnection)
    assert isinstance(conn, CatalogConnection)
    return conn
