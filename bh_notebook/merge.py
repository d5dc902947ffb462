"""Three-way merge of catalogs, for several writers on one bucket.

When another process committed the snapshot since this one last synced with it, this process merges: ``base`` is
the snapshot both started from, ``theirs`` the one now in the bucket, ``ours`` the catalog in memory. The merge is
applied to ours, which is then committed with If-Match on theirs' etag.

The rules, one per kind of table:

- Versioned tables (``bh_arrays``, ``bh_frames``, ``bh_named_files``): versions are immutable, so both sides'
  new versions survive. Theirs were committed first and keep their numbers; ours that collide are renumbered to
  follow the highest. A version either side deleted is deleted.
- ``filestore``: the union of both sides' blobs, less rows either side deleted (a blob is in the bucket before its
  row is anywhere, so a merged row never points at a missing object), except the rows of blobs that entries of the
  merged catalog still use (one side released a blob while the other added an entry using it).
- ``bh_kv``: a key changed on one side takes that side's value. Changed on both sides to different values (or
  set on one and deleted on the other) is a conflict, settled by **commit order: the later commit wins** (the
  merging writer's, since the other one committed first). No clock is compared; every conflict is reported.
- ``bh_retired_versions``: the highest version number each name ever had; the larger of the two sides.
- Other (user) tables: the side that changed one wins; changed on both sides, ours is kept and it is reported.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from .connection import PLAIN_TABLE_SQL
from .connection import quote_ident as _q

VERSIONED = ("bh_arrays", "bh_frames", "bh_named_files")
#: The highest version number each name ever had, per table, kept when versions are deleted: a number is never
#: given out twice, so ``x@2`` always means the same data (and a merge never mistakes a new put for a deleted one).
RETIRED_TABLE = "bh_retired_versions"


@dataclass
class MergeReport:
    """What a merge did: rows taken from the other writer, our versions renumbered, and conflicts settled."""

    taken: int = 0
    renumbered: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"merged another writer's catalog: {self.taken} changes taken"]
        if self.renumbered:
            parts.append(f"our versions renumbered: {', '.join(self.renumbered)}")
        if self.conflicts:
            parts.append(f"{len(self.conflicts)} conflicts settled (the later commit wins): "
                         f"{'; '.join(self.conflicts)}")
        return "; ".join(parts)


def _tables(conn: sqlite3.Connection, schema: str) -> list[str]:
    return [r[0] for r in conn.execute(
        f"SELECT name FROM {schema}.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]


def _columns(conn: sqlite3.Connection, schema: str, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA {schema}.table_info({_q(table)})")]



def merge_catalog(conn: sqlite3.Connection, base: Path | None, theirs: Path) -> MergeReport:
    """Merge ``theirs`` into the catalog behind ``conn`` (ours), relative to ``base`` (None: nothing in common).

    ``conn`` should be a connection of the merge's own (see ``connection.connect_catalog``): it attaches ``theirs``
    and ``base`` for the duration, and no other thread may use it meanwhile."""
    report = MergeReport()
    conn.execute("ATTACH DATABASE ? AS theirs", (str(theirs),))
    conn.execute("ATTACH DATABASE ? AS base", (str(base) if base is not None else ":memory:",))
    try:
        conn.execute("BEGIN IMMEDIATE")  # a CatalogConnection waits for other connections' transactions
        try:
            ours_tables = set(_tables(conn, "main"))
            base_tables = set(_tables(conn, "base"))
            # The retired-number table first: renumbering our versions must see both sides' highest numbers.
            for table in sorted(_tables(conn, "theirs"), key=lambda name: name != RETIRED_TABLE):
                if table not in ours_tables:  # a table only they have: copy it whole
                    sql = conn.execute("SELECT sql FROM theirs.sqlite_master WHERE type='table' AND name=?",
                                       (table,)).fetchone()[0]
                    if not (isinstance(sql, str) and PLAIN_TABLE_SQL.match(sql)):
                        report.conflicts.append(f"table {table} is not a plain table; not taken")
                        continue
                    conn.execute(sql)
                    conn.execute(f"INSERT INTO main.{_q(table)} SELECT * FROM theirs.{_q(table)}")
                    report.taken += 1
                    continue
                cols = _columns(conn, "main", table)
                if cols != _columns(conn, "theirs", table):
                    report.conflicts.append(f"table {table} has different columns on the two sides; kept ours")
                    continue
                if table not in base_tables:
                    conn.execute(f"CREATE TABLE base.{_q(table)} AS SELECT * FROM main.{_q(table)} WHERE 0")
                if table == RETIRED_TABLE:  # the highest number ever given out: the larger of the two
                    cur = conn.execute(
                        f"INSERT INTO main.{RETIRED_TABLE} (tbl, name, last) SELECT tbl, name, last FROM "
                        f"theirs.{RETIRED_TABLE} WHERE true ON CONFLICT (tbl, name) DO UPDATE SET "
                        "last = max(last, excluded.last) WHERE excluded.last > last")
                    report.taken += max(cur.rowcount, 0)
                elif table in VERSIONED:
                    _merge_versioned(conn, table, cols, report)
                elif table == "filestore":
                    _merge_keyed(conn, table, ["bh_key"], report)
                elif table == "bh_kv":
                    _merge_kv(conn, report)
                else:
                    _merge_other(conn, table, report)
            _keep_rows_of_used_blobs(conn, report)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.execute("DETACH DATABASE theirs")
        conn.execute("DETACH DATABASE base")
    return report


def _merge_versioned(conn: sqlite3.Connection, table: str, cols: list[str], report: MergeReport) -> None:
    t = _q(table)
    col_list = ", ".join(_q(c) for c in cols)
    same = "x.name = y.name AND x.version = y.version AND x.bh_key = y.bh_key AND x.created_at = y.created_at"
    # Theirs' deletions of versions in base: only that very row goes (same number, blob and time), never a
    # different row that happens to carry the number.
    deleted = conn.execute(
        f"SELECT b.name, b.version, b.bh_key, b.created_at FROM base.{t} b WHERE NOT EXISTS "
        f"(SELECT 1 FROM theirs.{t} y WHERE y.name = b.name AND y.version = b.version)").fetchall()
    for name, version, bh_key, created_at in deleted:
        cur = conn.execute(f"DELETE FROM main.{t} WHERE name = ? AND version = ? AND bh_key = ? AND created_at = ?",
                           (name, version, bh_key, created_at))
        report.taken += cur.rowcount
    added = conn.execute(
        f"SELECT {col_list} FROM theirs.{t} x WHERE NOT EXISTS (SELECT 1 FROM base.{t} y WHERE {same})").fetchall()
    for row in added:
        values = dict(zip(cols, row))
        mine = conn.execute(f"SELECT bh_key, created_at FROM main.{t} WHERE name = ? AND version = ?",
                            (values["name"], values["version"])).fetchone()
        if mine is not None:
            if (mine[0], mine[1]) == (values["bh_key"], values["created_at"]):
                continue  # the same row on both sides
            # Both sides made version N: theirs committed first and keeps it; ours moves past both sides' last.
            top = conn.execute(
                f"SELECT max(v) FROM (SELECT max(version) AS v FROM main.{t} WHERE name = ? "
                f"UNION ALL SELECT max(version) FROM theirs.{t} WHERE name = ? "
                f"UNION ALL SELECT last FROM main.{RETIRED_TABLE} WHERE tbl = ? AND name = ?)",
                (values["name"], values["name"], table, values["name"])).fetchone()[0]
            conn.execute(f"UPDATE main.{t} SET version = ? WHERE name = ? AND version = ?",
                         (int(top) + 1, values["name"], values["version"]))
            report.renumbered.append(f"{values['name']}@{values['version']}->{int(top) + 1}")
        conn.execute(f"INSERT INTO main.{t} ({col_list}) VALUES ({', '.join('?' for _ in cols)})", row)
        report.taken += 1


def _merge_keyed(conn: sqlite3.Connection, table: str, key: list[str], report: MergeReport) -> None:
    t = _q(table)
    match = " AND ".join(f"x.{_q(k)} = y.{_q(k)}" for k in key)
    cur = conn.execute(
        f"DELETE FROM main.{t} WHERE EXISTS (SELECT 1 FROM base.{t} x WHERE "
        + " AND ".join(f"x.{_q(k)} = main.{t}.{_q(k)}" for k in key)
        + f") AND NOT EXISTS (SELECT 1 FROM theirs.{t} y WHERE "
        + " AND ".join(f"y.{_q(k)} = main.{t}.{_q(k)}" for k in key) + ")")
    report.taken += cur.rowcount
    cur = conn.execute(
        f"INSERT OR IGNORE INTO main.{t} SELECT * FROM theirs.{t} x "
        f"WHERE NOT EXISTS (SELECT 1 FROM base.{t} y WHERE {match})")
    report.taken += cur.rowcount


def _keep_rows_of_used_blobs(conn: sqlite3.Connection, report: MergeReport) -> None:
    """Put back a file row one side deleted (its last entry there went) while the merged catalog has entries using
    the blob: the other side may have added one meanwhile, and an entry whose row is gone cannot be read."""
    tables = _tables(conn, "main")
    if "filestore" not in tables:
        return
    users = [t for t in tables if t != "filestore" and "bh_key" in _columns(conn, "main", t)]
    if not users:
        return
    used = " UNION ".join(f"SELECT bh_key FROM main.{_q(t)}" for t in users)
    cols = _columns(conn, "main", "filestore")
    for schema in ("theirs", "base"):
        if "filestore" not in _tables(conn, schema) or _columns(conn, schema, "filestore") != cols:
            continue
        cur = conn.execute(
            f"INSERT OR IGNORE INTO main.filestore SELECT * FROM {schema}.filestore WHERE bh_key IN ({used}) "
            "AND bh_key NOT IN (SELECT bh_key FROM main.filestore)")
        report.taken += max(cur.rowcount, 0)


def _merge_kv(conn: sqlite3.Connection, report: MergeReport) -> None:
    rows = conn.execute(
        "SELECT k.key, b.value, b.updated_at, m.value, m.updated_at, t.value, t.updated_at FROM "
        "(SELECT key FROM base.bh_kv UNION SELECT key FROM main.bh_kv UNION SELECT key FROM theirs.bh_kv) k "
        "LEFT JOIN base.bh_kv b ON b.key = k.key LEFT JOIN main.bh_kv m ON m.key = k.key "
        "LEFT JOIN theirs.bh_kv t ON t.key = k.key").fetchall()
    for key, b_val, b_at, m_val, m_at, t_val, t_at in rows:
        base_state = (b_val, b_at)
        ours_changed = (m_val, m_at) != base_state
        theirs_changed = (t_val, t_at) != base_state
        if not theirs_changed:
            continue
        if not ours_changed or (m_val, m_at) == (t_val, t_at):
            _set_kv(conn, key, t_val, t_at)
            report.taken += 1
            continue
        if m_val == t_val:
            continue  # both wrote the same value
        # A real conflict, settled by commit order: theirs is committed already and ours commits after it, so
        # ours wins, a delete as much as a write. No clock is compared: a writer whose clock is an hour fast
        # wins nothing by it.
        ours = "ours (deleted it)" if m_val is None else "ours"
        theirs = "their delete" if t_val is None else "their value"
        report.conflicts.append(f"kv {key!r}: kept {ours} over {theirs} (committed later)")


def _set_kv(conn: sqlite3.Connection, key: str, value: bytes | None, at: float | None) -> None:
    if value is None:
        conn.execute("DELETE FROM main.bh_kv WHERE key = ?", (key,))
    else:
        conn.execute("INSERT INTO main.bh_kv (key, value, updated_at) VALUES (?, ?, ?) "
                     "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                     (key, value, at))


def _differs(conn: sqlite3.Connection, a: str, b: str, table: str) -> bool:
    t = _q(table)
    return conn.execute(
        f"SELECT EXISTS (SELECT * FROM {a}.{t} EXCEPT SELECT * FROM {b}.{t}) "
        f"OR EXISTS (SELECT * FROM {b}.{t} EXCEPT SELECT * FROM {a}.{t})").fetchone()[0] == 1


def _merge_other(conn: sqlite3.Connection, table: str, report: MergeReport) -> None:
    ours_changed = _differs(conn, "main", "base", table)
    theirs_changed = _differs(conn, "theirs", "base", table)
    if theirs_changed and not ours_changed:
        conn.execute(f"DELETE FROM main.{_q(table)}")
        conn.execute(f"INSERT INTO main.{_q(table)} SELECT * FROM theirs.{_q(table)}")
        report.taken += 1
    elif theirs_changed and ours_changed and _differs(conn, "main", "theirs", table):
        report.conflicts.append(f"table {table} changed on both sides; kept ours")
