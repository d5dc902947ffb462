"""KVStore: small string settings (and an explicit bytes escape hatch) kept inline in the catalog."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, overload

from ..errors import InvalidKey, KeyTypeError, NotFound, ValueTooLarge, ValueTypeError
from .base import Entry, Interface

if TYPE_CHECKING:
    import sqlite3

    from ..config import BucketConfig
    from ..storage.bucket import BucketClient

#: Largest value kept inline, in bytes; bigger payloads belong in FileStore.
MAX_VALUE_BYTES = 1024 * 1024
#: Longest key, in characters.
MAX_KEY_LENGTH = 1024


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise KeyTypeError(f"KV keys are str, not {type(key).__name__}; convert it with str() first")
    if not key:
        raise InvalidKey("KV key is empty; use a name like 'model.lr'")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"KV key is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise InvalidKey(f"KV key {key!r} holds control characters; use printable characters only")
    return key


#: The ``bh_kv`` table exactly as buckethead creates it, so that both libraries can write one shared catalog.
KV_TABLE_SQL = (
    "CREATE TABLE IF NOT EXISTS bh_kv ("
    " key TEXT PRIMARY KEY,"
    " value BLOB NOT NULL,"
    " created_at REAL NOT NULL,"
    " updated_at REAL NOT NULL)"
)


def migrate_kv_table(conn: sqlite3.Connection, schema: str = "main") -> bool:
    """Give a ``bh_kv`` written before it had ``created_at`` (older bh_notebook) that column; return whether it did.

    Existing keys get their ``updated_at`` as creation time: the earliest time the catalog still knows of. The
    column is added NOT NULL (with a default only for SQLite's sake), so buckethead's inserts, which name it, and
    ours both fit."""
    cols = {r[1] for r in conn.execute(f"PRAGMA {schema}.table_info(bh_kv)")}
    if not cols or "created_at" in cols:
        return False
    conn.execute(f"ALTER TABLE {schema}.bh_kv ADD COLUMN created_at REAL NOT NULL DEFAULT 0")
    conn.execute(f"UPDATE {schema}.bh_kv SET created_at = updated_at")
    return True


class KVStore(Interface):
    """String key-value store in table ``bh_kv``; str in, str out, with ``set_bytes``/``get_bytes`` for binary.

    Both APIs share one BLOB column. Values live inline in the catalog, so each is limited to
    ``max_value_bytes`` (1 MiB); store anything larger with FileStore. Supports the dict protocol in its string
    form. A value stored with ``set_bytes`` that is not UTF-8 makes ``get`` raise UnicodeDecodeError: use
    ``get_bytes`` for it.
    """

    max_value_bytes: int = MAX_VALUE_BYTES

    kind = "kv"
    plural = "kv"
    article = "a kv value"
    status_key = "kv_keys"
    count_noun = "kv keys"

    @classmethod
    def for_catalog(cls, conn: sqlite3.Connection, bucket: BucketClient, config: BucketConfig,
                    stores: Mapping[str, Interface]) -> Interface:
        return cls(conn)  # values live inline in the catalog: no bucket

    @classmethod
    def merge_rules(cls) -> dict[str, str]:
        return {"bh_kv": "kv"}

    @staticmethod
    def accepts(value: Any) -> bool:
        """What ``%bh_put`` keeps in kv: a str."""
        return isinstance(value, str)

    def entries(self, prefix: str = "") -> list[Entry]:
        rows = self._conn.execute(
            "SELECT key, length(CAST(value AS BLOB)), updated_at FROM bh_kv "
            "WHERE key >= ? AND substr(key, 1, ?) = ? ORDER BY key", (prefix, len(prefix), prefix)).fetchall()
        return [Entry(name=k, version=None, size=int(n), shape="", modified=float(at)) for k, n, at in rows]

    def load(self, name: str, version: int | None = None, **options: Any) -> Any:
        if version is not None or options:
            raise InvalidKey("kv values have no versions" + (" or options" if options else ""))
        return self[name]

    def names(self, prefix: str = "") -> list[str]:
        """The keys starting with ``prefix``, sorted (``keys``, under the name every kind lists its entries by)."""
        return list(self.keys(prefix))

    def _init_schema(self) -> None:
        self._conn.execute(KV_TABLE_SQL)
        migrate_kv_table(self._conn)
        self._conn.commit()

    # -- writes -----------------------------------------------------------------------------

    def _check_size(self, key: str, data: bytes) -> None:
        if len(data) > self.max_value_bytes:
            raise ValueTooLarge(
                f"value for {key!r} is {len(data):,} bytes; KV values are kept inline and limited to "
                f"{self.max_value_bytes:,} bytes. Store it with FileStore (bh.files.put(data)) and keep its key here"
            )

    def set(self, key: str, value: str) -> None:
        """Store a str value under ``key`` (replacing any previous value)."""
        _check_key(key)
        if not isinstance(value, str):
            hint = " use set_bytes() for bytes" if isinstance(value, (bytes, bytearray, memoryview)) else \
                " convert it with str() or json.dumps() first"
            raise ValueTypeError(f"KV values are str, not {type(value).__name__}:{hint}")
        data = value.encode("utf-8")
        self._check_size(key, data)
        self._write([(key, data)])

    def set_bytes(self, key: str, value: bytes | bytearray | memoryview) -> None:
        """Store raw bytes under ``key``."""
        _check_key(key)
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ValueTypeError(f"set_bytes takes bytes, not {type(value).__name__}; use set() for str")
        data = bytes(value)
        self._check_size(key, data)
        self._write([(key, data)])

    def update(self, items: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        """Set several str values in one transaction: all are stored, or (on any bad item) none."""
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        encoded: list[tuple[str, bytes]] = []
        for key, value in pairs:
            _check_key(key)
            if not isinstance(value, str):
                raise ValueTypeError(f"KV values are str, not {type(value).__name__} (key {key!r})")
            data = value.encode("utf-8")
            self._check_size(key, data)
            encoded.append((key, data))
        self._write(encoded)

    def _write(self, pairs: list[tuple[str, bytes]]) -> None:
        now = time.time()
        with self._conn:
            self._conn.executemany(
                "INSERT INTO bh_kv (key, value, created_at, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                [(k, v, now, now) for k, v in pairs],
            )

    def delete(self, key: str) -> bool:
        """Remove ``key``; return whether it existed (a missing key is not an error)."""
        _check_key(key)
        with self._conn:
            cur = self._conn.execute("DELETE FROM bh_kv WHERE key = ?", (key,))
        return cur.rowcount > 0

    # -- reads ------------------------------------------------------------------------------

    def get_bytes(self, key: str, default: bytes | None = None) -> bytes | None:
        """The raw bytes under ``key``, or ``default`` when missing."""
        _check_key(key)
        row = self._conn.execute("SELECT value FROM bh_kv WHERE key = ?", (key,)).fetchone()
        return default if row is None else bytes(row[0])

    @overload
    def get(self, key: str) -> str | None: ...
    @overload
    def get(self, key: str, default: str) -> str: ...

    def get(self, key: str, default: str | None = None) -> str | None:
        """The str value under ``key``, or ``default`` when missing."""
        data = self.get_bytes(key)
        if data is None:
            return default
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UnicodeDecodeError(
                exc.encoding, exc.object, exc.start, exc.end,
                f"the value of {key!r} is not UTF-8 text (it was stored with set_bytes); "
                f"read it with get_bytes({key!r})",
            ) from None

    def exists(self, key: str) -> bool:
        """True when ``key`` is set."""
        _check_key(key)
        return self._conn.execute("SELECT 1 FROM bh_kv WHERE key = ?", (key,)).fetchone() is not None

    def keys(self, prefix: str = "") -> Iterator[str]:
        """An iterator over the keys starting with ``prefix`` (literally: ``%`` and ``_`` are plain characters),
        sorted. The keys are read when it is made, so writing while iterating is safe."""
        if not isinstance(prefix, str):
            raise KeyTypeError(f"prefix is a str, not {type(prefix).__name__}")
        if not prefix:
            rows = self._conn.execute("SELECT key FROM bh_kv ORDER BY key").fetchall()
        else:
            # A range scan on the primary key; LIKE would treat % and _ in the prefix as wildcards.
            rows = self._conn.execute(
                "SELECT key FROM bh_kv WHERE key >= ? AND substr(key, 1, ?) = ? ORDER BY key",
                (prefix, len(prefix), prefix),
            ).fetchall()
        return iter([r[0] for r in rows])

    def items(self, prefix: str = "") -> list[tuple[str, str]]:
        """(key, str value) pairs starting with ``prefix``; non-UTF-8 values raise as in ``get``."""
        return [(k, self[k]) for k in self.keys(prefix)]

    def created_at(self, key: str) -> float | None:
        """When ``key`` was first set (epoch seconds; kept when its value changes), or None when missing."""
        _check_key(key)
        row = self._conn.execute("SELECT created_at FROM bh_kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else float(row[0])

    def updated_at(self, key: str) -> float | None:
        """When ``key`` was last set (epoch seconds), or None when missing."""
        _check_key(key)
        row = self._conn.execute("SELECT updated_at FROM bh_kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else float(row[0])

    # -- dict protocol (str form) -----------------------------------------------------------

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise NotFound(f"no KV key {key!r}; bh.kv.keys() lists the keys")
        return value

    def __setitem__(self, key: str, value: str) -> None:
        self.set(key, value)

    def __delitem__(self, key: str) -> None:
        if not self.delete(key):
            raise NotFound(f"no KV key {key!r} to delete")

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(key) and self.exists(key)

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM bh_kv").fetchone()[0])

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __repr__(self) -> str:
        return f"<KVStore: {len(self)} keys>"
