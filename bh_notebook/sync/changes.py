"""Row changes between two catalog files, and the commit object that carries them.

A *change* is what turns one catalog file into another: per table, the rows to write (with their rowid, or their
primary key in a ``WITHOUT ROWID`` table) and the keys to delete. It is computed with SQL (``EXCEPT``) between the
state this process last synced with and a backup of its catalog, so its size follows what changed, not the catalog.
It can be computed only when both files have the same schema; a schema change (a new table, an added column) is
committed as a whole catalog instead (``sync/log.py``).

Applying a change to the file it was computed against gives, row for row, the file it was computed from. Applying
runs only ``DELETE`` and ``INSERT OR REPLACE`` statements that this module builds, on tables that already exist in
a vetted catalog: no SQL read from the bucket is ever executed.

The commit object: ``MAGIC``, one JSON header line naming the body's size and SHA-256, then the body (zlib of
JSON). An object whose header, size or hash does not match is refused as ``CorruptCommit``: an empty or cut-off
upload is never taken as a commit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sqlite3
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..connection import immediate_transaction
from ..connection import quote_ident as _q
from ..errors import SnapshotCorruptError

MAGIC = b"bh-notebook commit 1\n"

#: Tables that belong to the log itself: kept in checkpoint files, never part of a change or of the catalog in use.
LOG_TABLES = frozenset({"bh_log_state"})


class CorruptCommit(SnapshotCorruptError):
    """A commit object in the bucket is empty, cut off, or not what its header says; it is never applied."""


Row = list[Any]


@dataclass
class TableChange:
    """The rows one table gains or changes (``upsert``: key values, then every column) and the keys it loses."""

    key: list[str]
    columns: list[str]
    upsert: list[Row] = field(default_factory=list)
    delete: list[Row] = field(default_factory=list)


@dataclass
class Change:
    """What turns one catalog state into the next, table by table."""

    tables: dict[str, TableChange] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any(t.upsert or t.delete for t in self.tables.values())

    @property
    def rows(self) -> int:
        return sum(len(t.upsert) + len(t.delete) for t in self.tables.values())


def schema_of(conn: sqlite3.Connection, schema: str = "main") -> list[tuple[str, str, str, str | None]]:
    """The schema rows (type, name, table, SQL) that define a catalog, in a stable order: tables and indexes,
    without the log's tables, and without triggers and views (which never travel: every catalog read from the
    bucket is vetted without them)."""
    rows = conn.execute(f"SELECT type, name, tbl_name, sql FROM {schema}.sqlite_master "
                        "WHERE type IN ('table', 'index') ORDER BY type, name").fetchall()
    return [(r[0], r[1], r[2], r[3]) for r in rows if r[2] not in LOG_TABLES]


_WITHOUT_ROWID = re.compile(r"\)\s*WITHOUT\s+ROWID\s*$", re.IGNORECASE)
#: The names SQLite answers with a table's rowid, unless a column has taken the name.
ROWID_NAMES = ("rowid", "_rowid_", "oid")


def _without_rowid(conn: sqlite3.Connection, schema: str, table: str) -> bool:
    row = conn.execute(f"SELECT sql FROM {schema}.sqlite_master WHERE type = 'table' AND name = ?",
                       (table,)).fetchone()
    return bool(row and isinstance(row[0], str) and _WITHOUT_ROWID.search(row[0].strip().rstrip(";")))


def _rowid_alias(conn: sqlite3.Connection, schema: str, table: str) -> str | None:
    """A name that reads the table's rowid (no column has taken it), or None when all three are taken."""
    taken = {c.lower() for c in _columns(conn, schema, table)}
    return next((name for name in ROWID_NAMES if name not in taken), None)


def _key_columns(conn: sqlite3.Connection, schema: str, table: str) -> list[str]:
    """``["rowid"]`` for an ordinary table; the primary key's columns for a ``WITHOUT ROWID`` one."""
    if not _without_rowid(conn, schema, table):
        return ["rowid"]
    info = conn.execute(f"PRAGMA {schema}.table_info({_q(table)})").fetchall()
    return [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]


def _columns(conn: sqlite3.Connection, schema: str, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA {schema}.table_info({_q(table)})")]


def _table_change(conn: sqlite3.Connection, new: str, base: str, table: str) -> TableChange | None:
    """The rows of ``table`` that differ from ``base`` to ``new`` (same schema); None when its rows cannot be
    named (an ordinary table whose columns took every name of the rowid).

    Rows are matched on the rowid (a b-tree lookup per row, instead of EXCEPT sorting both tables) or, in a
    ``WITHOUT ROWID`` table, on the primary key; values are compared byte for byte and by type (``'abc'`` and
    ``'ABC'`` under NOCASE, ``1`` and ``1.0``, are changes)."""
    cols = _columns(conn, new, table)
    t = _q(table)
    key = _key_columns(conn, new, table)
    if key == ["rowid"]:
        alias = _rowid_alias(conn, new, table)
        if alias is None:
            return None
        join = f"b.{alias} = n.{alias}"
        new_keys, base_keys, missing = [f"n.{alias}"], [f"b.{alias}"], f"b.{alias} IS NULL"
    else:
        join = " AND ".join(f"b.{_q(k)} = n.{_q(k)}" for k in key)  # the key's own collation, as its uniqueness
        new_keys = [f"n.{_q(k)}" for k in key]
        base_keys = [f"b.{_q(k)}" for k in key]
        missing = f"b.{_q(key[0])} IS NULL"  # primary key columns of a WITHOUT ROWID table are NOT NULL
    differs = " OR ".join(f"(n.{_q(c)} IS NOT b.{_q(c)} COLLATE BINARY OR typeof(n.{_q(c)}) IS NOT "
                          f"typeof(b.{_q(c)}))" for c in cols) or "0"
    upsert = [list(r) for r in conn.execute(
        f"SELECT {', '.join([*new_keys, *(f'n.{_q(c)}' for c in cols)])} FROM {new}.{t} n "
        f"LEFT JOIN {base}.{t} b ON {join} WHERE {missing} OR {differs}")]
    delete = [list(r) for r in conn.execute(
        f"SELECT {', '.join(base_keys)} FROM {base}.{t} b WHERE NOT EXISTS "
        f"(SELECT 1 FROM {new}.{t} n WHERE {join})")]
    return TableChange(key, cols, upsert, delete)


def diff(base: Path | None, new: Path) -> Change | None:
    """The change from ``base`` (None: an empty catalog) to ``new``; None when their schemas differ or a table's
    rows cannot be named (the new state must then be committed whole)."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("ATTACH DATABASE ? AS new", (str(new),))
        conn.execute("ATTACH DATABASE ? AS base", (str(base) if base is not None else ":memory:",))
        if schema_of(conn, "base") != schema_of(conn, "new"):
            if base is None and not schema_of(conn, "new"):
                return Change()
            return None
        change = Change()
        for (table,) in conn.execute("SELECT name FROM new.sqlite_master WHERE type = 'table' ORDER BY name")\
                .fetchall():
            if table in LOG_TABLES:
                continue
            tc = _table_change(conn, "new", "base", table)
            if tc is None:
                return None
            if tc.upsert or tc.delete:
                change.tables[table] = tc
        return change
    finally:
        conn.close()


def same_rows(conn: sqlite3.Connection, a: str, b: str) -> bool:
    """Whether databases ``a`` and ``b`` of ``conn`` hold the same schema and the same rows (with the same
    rowids, values equal byte for byte and by type), log tables aside."""
    if schema_of(conn, a) != schema_of(conn, b):
        return False
    for (table,) in conn.execute(f"SELECT name FROM {a}.sqlite_master WHERE type = 'table'").fetchall():
        if table in LOG_TABLES:
            continue
        tc = _table_change(conn, a, b, table)
        if tc is None or tc.upsert or tc.delete:
            return False
    return True


def apply(path: Path, change: Change) -> None:
    """Apply ``change`` to the catalog file at ``path`` (the state it was computed against), in one transaction.

    Raises CorruptCommit when the change names a table or columns the file does not have."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA trusted_schema = OFF")
        with immediate_transaction(conn):
            apply_to(conn, change)
    finally:
        conn.close()


def apply_to(conn: sqlite3.Connection, change: Change, schema: str = "main") -> None:
    """Apply ``change`` to the database ``schema`` of ``conn`` inside the caller's transaction.

    Raises CorruptCommit when the change names a table or columns the database does not have."""
    try:
        for table, tc in change.tables.items():
            if table in LOG_TABLES or not conn.execute(
                    f"SELECT 1 FROM {schema}.sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone():
                raise CorruptCommit(f"a commit changes table {table!r}, which the catalog does not have")
            if _columns(conn, schema, table) != tc.columns or _key_columns(conn, schema, table) != tc.key:
                raise CorruptCommit(f"a commit's columns for table {table!r} do not match the catalog's")
            if any(len(r) != len(tc.key) for r in tc.delete) or \
                    any(len(r) != len(tc.key) + len(tc.columns) for r in tc.upsert):
                raise CorruptCommit(f"a commit's row for table {table!r} has the wrong number of values")
            t = f"{schema}.{_q(table)}"
            if tc.key == ["rowid"]:
                alias = _rowid_alias(conn, schema, table)
                if alias is None:
                    raise CorruptCommit(f"a commit changes table {table!r} by rowid, which it cannot name")
                keys = [alias]
            else:
                keys = [_q(k) for k in tc.key]
            where = " AND ".join(f"{k} = ?" for k in keys)
            conn.executemany(f"DELETE FROM {t} WHERE {where}", tc.delete)
            if tc.key == ["rowid"]:
                names = ", ".join([keys[0], *(_q(c) for c in tc.columns)])
                rows = tc.upsert
                width = 1 + len(tc.columns)
            else:  # the key columns are among the columns: send each value once
                names = ", ".join(_q(c) for c in tc.columns)
                rows = [r[len(tc.key):] for r in tc.upsert]
                width = len(tc.columns)
            conn.executemany(f"INSERT OR REPLACE INTO {t} ({names}) VALUES ({', '.join('?' * width)})", rows)
    except sqlite3.DatabaseError as exc:
        raise CorruptCommit(f"a commit could not be applied: {exc}") from exc


# -- the commit object ------------------------------------------------------------------------------------------


def _encode_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"b": base64.b64encode(value).decode("ascii")}
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        data = value.get("b")
        if not isinstance(data, str) or len(value) != 1:
            raise CorruptCommit("a commit holds a value of no known type")
        return base64.b64decode(data)
    if value is None or isinstance(value, (int, float, str)):
        return value
    raise CorruptCommit("a commit holds a value of no known type")


def encode(record: dict[str, Any], change: Change | None) -> bytes:
    """The commit object for ``record`` (position, writer, ...) and ``change`` (None for a whole-catalog commit)."""
    body = dict(record)
    if change is not None:
        body["tables"] = {
            name: {"key": tc.key, "columns": tc.columns,
                   "upsert": [[_encode_value(v) for v in r] for r in tc.upsert],
                   "delete": [[_encode_value(v) for v in r] for r in tc.delete]}
            for name, tc in change.tables.items()}
    data = zlib.compress(json.dumps(body, separators=(",", ":"), allow_nan=True).encode(), 6)
    header = json.dumps({"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}).encode()
    return MAGIC + header + b"\n" + data


def decode(blob: bytes, *, label: str) -> tuple[dict[str, Any], Change | None]:
    """The record and change of a commit object; CorruptCommit (naming ``label``) unless it is whole and intact."""
    if not blob.startswith(MAGIC):
        raise CorruptCommit(f"{label} is not a commit ({len(blob)} bytes): an empty or cut-off upload, or "
                            "something else written under the log's key")
    rest = blob[len(MAGIC):]
    line, sep, data = rest.partition(b"\n")
    try:
        header = json.loads(line)
        size, sha = int(header["size"]), str(header["sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptCommit(f"{label} has an unreadable header") from exc
    if not sep or len(data) != size or hashlib.sha256(data).hexdigest() != sha:
        raise CorruptCommit(f"{label} is cut off or damaged: {len(data)} bytes where its header names {size} "
                            "with another hash")
    try:
        body = json.loads(zlib.decompress(data))
    except (ValueError, zlib.error) as exc:
        raise CorruptCommit(f"{label} cannot be decoded: {exc}") from exc
    if not isinstance(body, dict):
        raise CorruptCommit(f"{label} is not a commit record")
    tables = body.pop("tables", None)
    if tables is None:
        return body, None
    change = Change()
    try:
        for name, t in tables.items():
            change.tables[str(name)] = TableChange(
                [str(k) for k in t["key"]], [str(c) for c in t["columns"]],
                [[_decode_value(v) for v in r] for r in t["upsert"]],
                [[_decode_value(v) for v in r] for r in t["delete"]])
    except (KeyError, TypeError, AttributeError) as exc:
        raise CorruptCommit(f"{label} has a malformed table change") from exc
    return body, change


__all__ = ["MAGIC", "LOG_TABLES", "Change", "CorruptCommit", "TableChange", "apply", "apply_to", "decode", "diff", "encode",
           "same_rows", "schema_of"]
