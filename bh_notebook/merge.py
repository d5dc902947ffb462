"""Three-way merge of catalogs, for several writers on one bucket.

When another process committed the snapshot since this one last synced with it, this process merges: ``base`` is
the snapshot both started from, ``theirs`` the one now in the bucket, ``ours`` the catalog in memory. The merge is
applied to ours, which is then committed with If-Match on theirs' etag.

The rules, one per kind of table; each store declares its tables' rules (``merge_rules()``, read through the
registry of kinds, ``interfaces/registry.py``), and a table no registered store owns gets the rule for user tables:

- Versioned tables (``"versioned"``: ``bh_arrays``, ``bh_frames``, ``bh_named_files``, ...): versions are
  immutable and matched by their id (given at put and kept in the row's metadata; a version from before ids, or
  put by an older writer, has a legacy id derived from its name, number, blob and time, the same on every
  writer), never by number, so both sides' new versions survive. Theirs were committed first and keep their numbers; ours that collide are renumbered to follow the
  highest (their ids stay). A version either side deleted is deleted.
- ``filestore`` (``"blobs"``): the union of both sides' blobs, less rows either side deleted (a blob is in the
  bucket before its row is anywhere, so a merged row never points at a missing object), except that a row an
  entry still uses is kept.
- ``bh_frame_parts`` (``"parts"``, the blobs of a frame version made of several): the same keyed union, on
  ``(version_id, part)``; a version's parts are written and deleted with it, and never change.
- ``bh_blob_chunks`` (a blob's chunk hashes): the same keyed union, on ``blob``. Its rows never change (they
  follow from the blob's bytes and the chunk size), so the two sides never conflict over one.
- ``bh_kv`` (``"kv"``): merged by column name, so a catalog whose ``bh_kv`` has no ``created_at`` (an older
  bh_notebook) merges with one that has it (buckethead's schema); a key taken from the other side keeps its
  creation time (theirs, or ours when they do not record it). A key changed on one side takes that side's value.
  Changed on both sides to different values (or set on one and deleted on the other) is a conflict, settled by
  **commit order: the later commit wins** (the merging writer's, since the other one committed first). No clock
  is compared; every conflict is reported.
- ``bh_retired_versions`` (``"retired"``): the highest version number each name ever had; the larger of the two
  sides.
- Other (user) tables: the side that changed one wins; changed on both sides, ours is kept and it is reported.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from .connection import PLAIN_TABLE_SQL, immediate_transaction
from .connection import quote_ident as _q
from .interfaces.base import RETIRED_TABLE
from .interfaces.files import CHUNKS_TABLE, referenced_keys
from .interfaces.kv import migrate_kv_table
from .interfaces.registry import merge_rules
from .interfaces.versioned import version_id_of

#: The rule of a table no registered store owns (a user's table): the side that changed it wins.
OTHER_RULE = "other"
#: Rules known without the registry: the retired-number table is the merge's own bookkeeping.
FALLBACK_RULES = {RETIRED_TABLE: "retired"}


def table_rules() -> dict[str, str]:
    """{table: merge rule}: the registered stores' declarations over the fallback; other tables get OTHER_RULE."""
    return {**FALLBACK_RULES, **merge_rules()}


def versioned_tables() -> frozenset[str]:
    """The tables merged by the versioned rule (every registered versioned kind's table)."""
    return frozenset(t for t, rule in table_rules().items() if rule == "versioned")


@dataclass
class MergeReport:
    """What a merge did: rows taken from the other writer, our versions renumbered, and conflicts settled."""

    taken: int = 0
    #: How many commits of other writers this merge took in (0 for a merge of a whole catalog, e.g. a branch).
    commits: int = 0
    renumbered: list[str] = field(default_factory=list)
    #: File rows kept although the other side dropped them (a merged entry still uses each): the merged catalog then
    #: differs from theirs, so it has to be committed even when nothing else of ours was waiting.
    rows_kept: int = 0
    conflicts: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        if self.commits:
            parts = [f"took in {self.commits} commit{'s' if self.commits != 1 else ''} of other writers: "
                     f"{self.taken} changes"]
        else:
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



def merge_catalog(conn: sqlite3.Connection, base: Path | None, theirs: Path, *,
                  branch: bool = False) -> MergeReport:
    """Merge ``theirs`` into the catalog behind ``conn`` (ours), relative to ``base`` (None: nothing in common).

    ``conn`` should be a connection of the merge's own (see ``connection.connect_catalog``): it attaches ``theirs``
    and ``base`` for the duration, and no other thread may use it meanwhile.

    ``branch=True`` is the merge of a branch (theirs) into the catalog in use (ours), which others already read:
    ours keeps its version numbers and the branch's colliding versions are renumbered after them, and a KV key
    changed on both sides takes the branch's value (merging the branch is the later, deliberate act)."""
    report = MergeReport()
    rules = table_rules()
    conn.execute("ATTACH DATABASE ? AS theirs", (str(theirs),))
    conn.execute("ATTACH DATABASE ? AS base", (str(base) if base is not None else ":memory:",))
    try:
        with immediate_transaction(conn):  # a CatalogConnection waits for other connections' transactions
            ours_tables = set(_tables(conn, "main"))
            base_tables = set(_tables(conn, "base"))
            # Merging a branch, every number this catalog ever gave out stays its own (deleted ones included):
            # taken before the retired-number table merges the branch's numbers in.
            given = _numbers_given(conn, ours_tables, rules) if branch else {}
            # The retired-number table first: renumbering our versions must see both sides' highest numbers.
            for table in sorted(_tables(conn, "theirs"), key=lambda name: rules.get(name) != "retired"):
                if table not in ours_tables:  # a table only they have: copy it whole
                    sql = conn.execute("SELECT sql FROM theirs.sqlite_master WHERE type='table' AND name=?",
                                       (table,)).fetchone()[0]
                    if not (isinstance(sql, str) and PLAIN_TABLE_SQL.match(sql)):
                        report.conflicts.append(f"table {table} is not a plain table; not taken")
                        continue
                    conn.execute(sql)
                    conn.execute(f"INSERT INTO main.{_q(table)} SELECT * FROM theirs.{_q(table)}")
                    if table == "bh_kv":
                        migrate_kv_table(conn)
                    report.taken += 1
                    continue
                if table == "bh_kv":  # merged by column name: the other writer may be older, or buckethead
                    if not {"key", "value", "updated_at"} <= set(_columns(conn, "theirs", table)):
                        report.conflicts.append("table bh_kv lacks key, value or updated_at on their side; "
                                                "kept ours")
                        continue
                    migrate_kv_table(conn)
                    if table not in base_tables:
                        conn.execute("CREATE TABLE base.bh_kv AS SELECT * FROM main.bh_kv WHERE 0")
                    _merge_kv(conn, report, theirs_win=branch)
                    continue
                cols = _columns(conn, "main", table)
                rule = rules.get(table, OTHER_RULE)
                if cols != _columns(conn, "theirs", table):
                    report.conflicts.append(f"table {table} has different columns on the two sides; kept ours")
                    continue
                if table not in base_tables:
                    conn.execute(f"CREATE TABLE base.{_q(table)} AS SELECT * FROM main.{_q(table)} WHERE 0")
                if rule == "retired":  # the highest number ever given out: the larger of the two
                    cur = conn.execute(
                        f"INSERT INTO main.{RETIRED_TABLE} (tbl, name, last) SELECT tbl, name, last FROM "
                        f"theirs.{RETIRED_TABLE} WHERE true ON CONFLICT (tbl, name) DO UPDATE SET "
                        "last = max(last, excluded.last) WHERE excluded.last > last")
                    report.taken += max(cur.rowcount, 0)
                elif table == CHUNKS_TABLE:  # checked before the rules: FileStore's second table
                    _merge_keyed(conn, table, ["blob"], report)
                elif rule == "versioned":
                    _merge_versioned(conn, table, cols, report, ours_keep=given if branch else None)
                elif rule == "blobs":
                    _merge_keyed(conn, table, ["bh_key"], report)
                elif rule == "parts":  # a version's parts: rows that never change, keyed by (version id, part)
                    _merge_keyed(conn, table, ["version_id", "part"], report)
                elif rule == "kv":
                    _merge_kv(conn, report, theirs_win=branch)
                else:
                    _merge_other(conn, table, report)
            if "filestore" in ours_tables:
                keep_rows_in_use(conn, report)
    finally:
        conn.execute("DETACH DATABASE theirs")
        conn.execute("DETACH DATABASE base")
    return report


def _numbers_given(conn: sqlite3.Connection, tables: set[str], rules: dict[str, str]) -> dict[tuple[str, str], int]:
    """{(table, name): the highest version number ours ever gave out}, from its versions and its retired numbers."""
    given: dict[tuple[str, str], int] = {}
    for table in tables:
        if rules.get(table) == "versioned":
            for name, top in conn.execute(f"SELECT name, max(version) FROM main.{_q(table)} GROUP BY name"):
                given[(table, name)] = int(top)
    if RETIRED_TABLE in tables:
        for table, name, last in conn.execute(f"SELECT tbl, name, last FROM main.{RETIRED_TABLE}"):
            given[(table, name)] = max(given.get((table, name), 0), int(last))
    return given


class _Ids:
    """The versions of one schema's versioned table, by name: {id: (rowid, number)}, read a name at a time."""

    def __init__(self, conn: sqlite3.Connection, schema: str, table: str) -> None:
        self._conn, self._schema, self._table = conn, schema, table
        self._names: dict[str, dict[str, tuple[int, int]]] = {}

    def of(self, name: str) -> dict[str, tuple[int, int]]:
        found = self._names.get(name)
        if found is None:
            found = {version_id_of(self._table, name, version, bh_key, created_at, metadata): (rowid, version)
                     for rowid, version, bh_key, created_at, metadata in self._conn.execute(
                         f"SELECT rowid, version, bh_key, created_at, metadata FROM {self._schema}.{_q(self._table)} "
                         "WHERE name = ?", (name,))}
            self._names[name] = found
        return found

    def forget(self, name: str) -> None:
        self._names.pop(name, None)


def _merge_versioned(conn: sqlite3.Connection, table: str, cols: list[str], report: MergeReport, *,
                     ours_keep: dict[tuple[str, str], int] | None = None) -> None:
    """Versions are matched by id (kept in their metadata; see ``versioned.split_metadata``), never by number: a
    version the other side deleted is deleted here, one it added is added (moving ours when both used a number).

    Only rows that differ between two sides are looked at by id (a row equal in name, number, blob, time and
    metadata is the same version on both), so a merge costs what changed, not the size of the table.

    ``ours_keep`` (merging a branch): ours keeps every number it gave out, given as {(table, name): highest};
    a branch version at or below it moves past both sides' last."""
    t = _q(table)
    same = ("y.name = x.name AND y.version = x.version AND y.bh_key = x.bh_key AND y.created_at IS x.created_at "
            "AND y.metadata IS x.metadata")
    base, theirs, main = _Ids(conn, "base", table), _Ids(conn, "theirs", table), _Ids(conn, "main", table)
    # Theirs' deletions of versions in base: the version with that id goes, wherever its number is here.
    gone = conn.execute(f"SELECT x.name, x.version, x.bh_key, x.created_at, x.metadata FROM base.{t} x "
                        f"WHERE NOT EXISTS (SELECT 1 FROM theirs.{t} y WHERE {same})").fetchall()
    for name, version, bh_key, created_at, metadata in gone:
        vid = version_id_of(table, name, version, bh_key, created_at, metadata)
        if vid in theirs.of(name):
            continue  # still there (its row changed, not its identity)
        mine = main.of(name).get(vid)
        if mine is not None:
            conn.execute(f"DELETE FROM main.{t} WHERE rowid = ?", (mine[0],))
            main.forget(name)
            report.taken += 1
    col_list = ", ".join(_q(c) for c in cols)
    added = conn.execute(f"SELECT x.rowid, x.name, x.version, x.bh_key, x.created_at, x.metadata FROM theirs.{t} x "
                         f"WHERE NOT EXISTS (SELECT 1 FROM base.{t} y WHERE {same}) ORDER BY x.rowid").fetchall()
    for rowid, name, version, bh_key, created_at, metadata in added:
        vid = version_id_of(table, name, version, bh_key, created_at, metadata)
        if vid in base.of(name) or vid in main.of(name):
            continue  # known to base already (its row changed), or the same version on both sides
        row = conn.execute(f"SELECT {col_list} FROM theirs.{t} WHERE rowid = ?", (rowid,)).fetchone()
        mine = conn.execute(f"SELECT 1 FROM main.{t} WHERE name = ? AND version = ?", (name, version)).fetchone()
        taken_here = ours_keep is not None and version <= ours_keep.get((table, name), 0)
        if mine is not None or taken_here:
            # Both sides made version N: theirs committed first and keeps it; ours moves past both sides' last.
            # (Merging a branch, ours is the shared catalog and keeps it; the branch's version moves instead.)
            top = conn.execute(
                f"SELECT max(v) FROM (SELECT max(version) AS v FROM main.{t} WHERE name = ? "
                f"UNION ALL SELECT max(version) FROM theirs.{t} WHERE name = ? "
                f"UNION ALL SELECT last FROM main.{RETIRED_TABLE} WHERE tbl = ? AND name = ?)",
                (name, name, table, name)).fetchone()[0]
            if ours_keep is not None:
                row = tuple(int(top) + 1 if c == "version" else v for c, v in zip(cols, row))
                report.renumbered.append(f"{name}@{version}->{int(top) + 1} (from the branch)")
            else:
                conn.execute(f"UPDATE main.{t} SET version = ? WHERE name = ? AND version = ?",
                             (int(top) + 1, name, version))
                report.renumbered.append(f"{name}@{version}->{int(top) + 1}")
        conn.execute(f"INSERT INTO main.{t} ({col_list}) VALUES ({', '.join('?' for _ in cols)})", row)
        main.forget(name)
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


def keep_rows_in_use(conn: sqlite3.Connection, report: MergeReport) -> None:
    """A file row one side dropped (its last entry went) stays while a merged entry of the other side uses it.

    One writer deletes its last entry using blob K and drops K's row; the other puts the same bytes again under a
    new name, relying on the row it still has. Without this the merged catalog holds an entry whose blob has no
    row: unreadable, and fair game for the collector."""
    have = {r[0] for r in conn.execute("SELECT bh_key FROM main.filestore")}
    used = referenced_keys(conn)  # the collector's own reading (unqualified names resolve to main first)
    cols = ", ".join(_q(c) for c in _columns(conn, "main", "filestore"))
    for key in sorted(used - have):
        for schema in ("theirs", "base"):
            if not conn.execute(f"SELECT 1 FROM {schema}.sqlite_master WHERE type = 'table' AND name = "
                                "'filestore'").fetchone():
                continue
            if set(_columns(conn, schema, "filestore")) < set(_columns(conn, "main", "filestore")):
                continue
            cur = conn.execute(f"INSERT OR IGNORE INTO main.filestore ({cols}) SELECT {cols} FROM "
                               f"{schema}.filestore WHERE bh_key = ?", (key,))
            if cur.rowcount > 0:
                report.taken += 1
                report.rows_kept += 1
                _keep_chunks(conn, schema, key)
                break


def _keep_chunks(conn: sqlite3.Connection, schema: str, key: str) -> None:
    """Bring back the chunk hashes of a file row kept by ``keep_rows_in_use``, when ``schema`` has them."""
    tables = {r[0] for r in conn.execute(f"SELECT name FROM {schema}.sqlite_master WHERE type = 'table'")}
    mine = {r[0] for r in conn.execute("SELECT name FROM main.sqlite_master WHERE type = 'table'")}
    if CHUNKS_TABLE not in tables or CHUNKS_TABLE not in mine:
        return
    if _columns(conn, schema, CHUNKS_TABLE) != _columns(conn, "main", CHUNKS_TABLE):
        return
    conn.execute(f"INSERT OR IGNORE INTO main.{CHUNKS_TABLE} SELECT * FROM {schema}.{CHUNKS_TABLE} WHERE blob = ?",
                 (key,))


def _merge_kv(conn: sqlite3.Connection, report: MergeReport, *, theirs_win: bool = False) -> None:
    # A side whose bh_kv predates created_at (an older bh_notebook) knows a key only from its last update.
    t_created = "t.created_at" if "created_at" in _columns(conn, "theirs", "bh_kv") else "NULL"
    rows = conn.execute(
        "SELECT k.key, b.value, b.updated_at, m.value, m.updated_at, m.created_at, t.value, t.updated_at, "
        f"{t_created} FROM "
        "(SELECT key FROM base.bh_kv UNION SELECT key FROM main.bh_kv UNION SELECT key FROM theirs.bh_kv) k "
        "LEFT JOIN base.bh_kv b ON b.key = k.key LEFT JOIN main.bh_kv m ON m.key = k.key "
        "LEFT JOIN theirs.bh_kv t ON t.key = k.key").fetchall()
    for key, b_val, b_at, m_val, m_at, m_created, t_val, t_at, t_created_at in rows:
        base_state = (b_val, b_at)
        ours_changed = (m_val, m_at) != base_state
        theirs_changed = (t_val, t_at) != base_state
        if not theirs_changed:
            continue
        if not ours_changed or (m_val, m_at) == (t_val, t_at):
            # Their row as they have it; without their created_at, a key we hold keeps ours and a new one dates
            # from their update.
            created = t_created_at if t_created_at is not None else m_created if m_created is not None else t_at
            _set_kv(conn, key, t_val, t_at, created)
            report.taken += 1
            continue
        if m_val == t_val:
            continue  # both wrote the same value
        # A real conflict, settled by commit order: theirs is committed already and ours commits after it, so
        # ours wins, a delete as much as a write. No clock is compared: a writer whose clock is an hour fast
        # wins nothing by it. Merging a branch, the branch's value is what was asked for.
        ours = "ours (deleted it)" if m_val is None else "ours"
        theirs = "their delete" if t_val is None else "their value"
        if theirs_win:
            _set_kv(conn, key, t_val, t_at, t_created_at if t_created_at is not None else m_created)
            report.taken += 1
            report.conflicts.append(f"kv {key!r}: took the branch's {'delete' if t_val is None else 'value'} over "
                                    f"{'the delete' if m_val is None else 'the value'} here")
            continue
        report.conflicts.append(f"kv {key!r}: kept {ours} over {theirs} (committed later)")


def _set_kv(conn: sqlite3.Connection, key: str, value: bytes | None, at: float | None,
            created: float | None) -> None:
    if value is None:
        conn.execute("DELETE FROM main.bh_kv WHERE key = ?", (key,))
    else:
        conn.execute("INSERT INTO main.bh_kv (key, value, created_at, updated_at) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at, "
                     "created_at = excluded.created_at",
                     (key, value, created if created is not None else at, at))


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


__all__ = ["RETIRED_TABLE", "MergeReport", "keep_rows_in_use", "merge_catalog", "table_rules", "versioned_tables"]
