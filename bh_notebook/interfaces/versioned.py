"""VersionedStore: what ArrayStore and FrameStore share: named entries with versions 1, 2, ... whose bytes are
blobs in FileStore (so identical data is stored once)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import uuid
import weakref
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..errors import BlobNotFound, NotFound, ValueTypeError
from .base import RETIRED_TABLE, Entry, Interface, check_name, check_version
from .files import FileStore
from .fingerprint import addresses_digest

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..config import BucketConfig
    from ..storage.bucket import BucketClient

V = TypeVar("V")

#: Columns every versioned table has, in this order, before the subclass's own.
COMMON_COLUMNS = ("name", "version", "bh_key", "nbytes", "created_at", "metadata")
#: The key of a version's id inside its ``metadata`` JSON (hidden from ``info().metadata``). Kept there rather than
#: in a column of its own so that the tables' schema does not change: an older writer carries the id along with
#: the metadata it copies, merges and renumbers, never knowing it is there.
ID_KEY = "bh:id"


def new_version_id() -> str:
    """A version's id, given once when it is put: 32 random hex digits. The number is a display position (a
    merge may move it); the id never changes, on any writer or branch."""
    return uuid.uuid4().hex


def legacy_version_id(table: str, name: str, version: int, bh_key: str, created_at: float) -> str:
    """The id of a version put before versions had ids (or by an older writer): derived from what identified it
    then, so every writer gives the same row the same id ("l" and 31 hex digits)."""
    text = json.dumps([table, name, version, bh_key, created_at])
    return "l" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:31]


def split_metadata(table: str, name: str, version: int, bh_key: str, created_at: float,
                   metadata: str | None) -> tuple[str, dict[str, str]]:
    """(the version's id, the user's metadata) from a row's ``metadata`` column."""
    found: dict[str, Any] = {}
    if metadata:
        try:
            loaded = json.loads(metadata)
        except ValueError:
            loaded = None
        if isinstance(loaded, dict):
            found = loaded
    vid = found.pop(ID_KEY, None)
    if not isinstance(vid, str) or not vid:
        vid = legacy_version_id(table, name, version, bh_key, created_at)
    return vid, found


def version_id_of(table: str, name: str, version: int, bh_key: str, created_at: float,
                  metadata: str | None) -> str:
    """The id of a version row (see ``split_metadata``)."""
    return split_metadata(table, name, version, bh_key, created_at, metadata)[0]


def check_metadata(metadata: object) -> dict[str, str]:
    """Entry metadata: a dict of str to str (notes, tags)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in metadata.items()):
        raise ValueTypeError("metadata must be a dict of str to str, e.g. {'note': 'cleaned', 'source': 'crm'}")
    reserved = sorted(k for k in metadata if k.startswith("bh:"))
    if reserved:
        raise ValueTypeError(f"metadata keys starting with 'bh:' are bh_notebook's own ({', '.join(reserved)}); "
                             "use another name")
    return dict(metadata)


class ObjectURL(str):
    """Where a blob lives: ``s3://bucket/key`` (or ``file:///path``), with the endpoint to reach it."""

    endpoint_url: str | None

    def __new__(cls, url: str, endpoint_url: str | None = None) -> ObjectURL:
        obj = super().__new__(cls, url)
        obj.endpoint_url = endpoint_url
        return obj

    def __repr__(self) -> str:
        extra = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"ObjectURL({str(self)!r}{extra})"


def object_url(files: Any, bh_key: str) -> ObjectURL:
    """Where the blob ``bh_key`` of a FileStore is: ``s3://bucket/key`` with ``.endpoint_url``, or a file URL."""
    bucket = files.bucket
    key = files.object_key(bh_key)
    root = getattr(bucket, "root", None)
    if root is not None:
        return ObjectURL((root / key).as_uri())
    return ObjectURL(f"s3://{bucket.name}/{key}", getattr(bucket, "endpoint_url", None))


def _forget(store: weakref.ref[VersionedStore[Any]], name: str, fingerprint: bytes) -> None:
    """A frame's array that a fingerprint by address saw is gone: the fingerprint stops counting, and its copies
    are let go (a finalizer runs whenever the array goes: inside the bookkeeping, it is only noted)."""
    found = store()
    if found is not None:
        found._dead.append((name, fingerprint))
        if not found._busy:  # (else the bookkeeping under way drains it when done)
            found._drain()


class VersionedStore(Interface, Generic[V]):
    """Named, versioned entries in one ``bh_`` table; the bytes of each version are a FileStore blob."""

    #: The table this store owns.
    table: str
    #: The bucket's configuration, for Dask workers (set by ``for_catalog``; None for a store made by hand).
    bucket_config: BucketConfig | None = None
    #: The subclass's own columns: (name, SQL type) pairs.
    extra_columns: Sequence[tuple[str, str]] = ()
    versioned = True

    @classmethod
    def for_catalog(cls, conn: sqlite3.Connection, bucket: BucketClient, config: BucketConfig,
             stores: Mapping[str, Interface]) -> Interface:
        files = stores.get("blob")
        assert isinstance(files, FileStore), "the blob store is built before the versioned stores"
        store = cls(conn, bucket, files=files)
        store.bucket_config = config  # what Dask workers open the bucket with
        return store

    @classmethod
    def merge_rules(cls) -> dict[str, str]:
        return {cls.table: "versioned", RETIRED_TABLE: "retired"}

    @classmethod
    def tables(cls) -> tuple[str, ...]:
        return (cls.table,)  # the retired-number table is shared by every versioned kind

    @classmethod
    def blob_columns(cls) -> dict[str, tuple[str, ...]]:
        return {cls.table: ("bh_key",)}

    def __init__(self, conn: sqlite3.Connection, bucket_client: BucketClient | None = None, *,
                 files: FileStore | None = None) -> None:
        if files is None:
            if bucket_client is None:
                raise TypeError(f"{type(self).__name__} needs a bucket_client or a FileStore (files=...)")
            files = FileStore(conn, bucket_client)
        self._files = files
        #: name -> (version id, blob, fingerprints) of values this process put or got as that version (a few).
        self._fingerprints: dict[str, tuple[str, str, list[bytes]]] = {}
        #: (name, fingerprint made by address) -> copies of the object columns it hashed, which keep every object
        #: alive (so no address can come to mean another object), and the finalizers that note when the frame's
        #: own arrays are gone (in ``_dead``, acted on by ``_drain``). One per name at most.
        self._kept: dict[tuple[str, bytes], tuple[list[Any], list[weakref.finalize]]] = {}
        self._dead: list[tuple[str, bytes]] = []
        self._busy = False
        super().__init__(conn, bucket_client if bucket_client is not None else files.bucket)

    def _init_schema(self) -> None:
        extra = "".join(f", {col} {typ}" for col, typ in self.extra_columns)
        self._conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            " name TEXT NOT NULL, version INTEGER NOT NULL, bh_key TEXT NOT NULL, nbytes INTEGER NOT NULL,"
            f" created_at REAL NOT NULL, metadata TEXT{extra}, PRIMARY KEY (name, version))"
        )
        self._conn.execute(f"CREATE INDEX IF NOT EXISTS {self.table}_bh_key ON {self.table} (bh_key)")
        self._conn.execute(f"CREATE TABLE IF NOT EXISTS {RETIRED_TABLE} (tbl TEXT NOT NULL, name TEXT NOT NULL, "
                           "last INTEGER NOT NULL, PRIMARY KEY (tbl, name))")
        self._conn.commit()

    @property
    def files(self) -> FileStore:
        """The FileStore the blobs live in."""
        return self._files

    # -- rows -------------------------------------------------------------------------------

    @property
    def _columns(self) -> list[str]:
        return [*COMMON_COLUMNS, *(c for c, _ in self.extra_columns)]

    def _select(self, where: str, params: Sequence[Any], order: str = "") -> list[dict[str, Any]]:
        cols = self._columns
        cur = self._conn.execute(f"SELECT {', '.join(cols)} FROM {self.table} WHERE {where} {order}", params)
        return [self._with_id(dict(zip(cols, row))) for row in cur.fetchall()]

    def _with_id(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row with its ``version_id`` taken out of its metadata, which keeps the user's part only (a row
        put before ids, or by an older writer, gets its legacy id, as every merge gives it)."""
        vid, user = split_metadata(self.table, row["name"], row["version"], row["bh_key"], row["created_at"],
                                   row["metadata"])
        row["version_id"] = vid
        row["metadata"] = json.dumps(user, sort_keys=True) if user else None
        return row

    def _row(self, name: str, version: int | None) -> dict[str, Any]:
        check_name(name, f"{self.kind} name")
        version = check_version(version)
        if version is None:
            rows = self._select("name = ?", (name,), "ORDER BY version DESC LIMIT 1")
        else:
            rows = self._select("name = ? AND version = ?", (name, version))
        if not rows:
            raise NotFound(self._not_found(name, version))
        return rows[0]

    def _not_found(self, name: str, version: int | None) -> str:
        versions = [r[0] for r in self._conn.execute(
            f"SELECT version FROM {self.table} WHERE name = ? ORDER BY version", (name,))]
        if versions and version is not None:
            return f"{self.kind} {name!r} has no version {version}; it has versions {versions}"
        from difflib import get_close_matches

        close = get_close_matches(name, self.names(), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else f"; {self._attr}.names() lists them"
        return f"no {self.kind} named {name!r}{hint}"

    @property
    def _attr(self) -> str:
        return f"bh.{self.attr}"

    def _latest(self, name: str) -> dict[str, Any] | None:
        rows = self._select("name = ?", (name,), "ORDER BY version DESC LIMIT 1")
        return rows[0] if rows else None

    def _insert(self, name: str, bh_key: str, nbytes: int, metadata: dict[str, str], extra: dict[str, Any],
                also: Callable[[str], None] | None = None) -> int:
        """Add the next version of ``name``; return its number. ``also(version_id)`` runs in the same
        transaction (rows of the store's other tables that belong to the version)."""
        cols = self._columns
        with self._conn:
            row = self._conn.execute(
                f"SELECT max(v) FROM (SELECT max(version) AS v FROM {self.table} WHERE name = ? "
                f"UNION ALL SELECT last FROM {RETIRED_TABLE} WHERE tbl = ? AND name = ?)",
                (name, self.table, name)).fetchone()
            version = int(row[0] or 0) + 1
            vid = new_version_id()
            values = {"name": name, "version": version, "bh_key": bh_key, "nbytes": nbytes,
                      "created_at": time.time(), "metadata": json.dumps({**metadata, ID_KEY: vid}, sort_keys=True),
                      **extra}
            self._conn.execute(
                f"INSERT INTO {self.table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
                [values[c] for c in cols],
            )
            if also is not None:
                also(vid)
        return version

    def _unchanged(self, name: str, fingerprint: bytes | None) -> V | None:
        """The latest version of ``name`` when this process put or got exactly ``fingerprint`` as it, and it is
        still the latest (a re-put that would write the same bytes); its blob is relied on as a re-put would."""
        self._drain()
        known = self._fingerprints.get(name)
        if fingerprint is None or known is None or fingerprint not in known[2]:
            return None
        latest = self._latest(name)
        if latest is None or latest["bh_key"] != known[1] or latest["version_id"] != known[0]:
            return None
        try:
            if self._files.chunk_hashes(latest["bh_key"]) is None:
                return None  # (a blob from before chunk hashes: the put records them, as it always has)
            self._files.rely(latest["bh_key"], entry=(self.kind, name))
        except BlobNotFound:
            return None  # gone from the catalog or the bucket: the put uploads it again
        return self._to_version(latest)

    @staticmethod
    def _hold(objects: list[tuple[Any, Any, bytes]]) -> list[Any] | None:
        """Copies of the object values a fingerprint hashed by address (a reference to every object, so none can be
        freed and its address taken), made before the value is encoded; None when they no longer hold what was
        hashed (the value changed meanwhile: the fingerprint is not remembered)."""
        copies = [values.copy() for _, values, _ in objects]
        if any(addresses_digest(c) != digest for c, (_, _, digest) in zip(copies, objects)):
            return None
        return copies

    def _remember(self, name: str, info: Any, fingerprint: bytes | None,
                  objects: list[tuple[Any, Any, bytes]] | None = None, held: list[Any] | None = None) -> None:
        """``fingerprint`` is what this process put as (or got from) the version ``info``; ``objects`` are the
        object values it hashed by address and ``held`` their copies from ``_hold`` (none: not remembered)."""
        if fingerprint is None or (objects and held is None):
            return
        self._busy = True
        try:
            self._note(name, info, fingerprint, objects, held)
        finally:
            self._busy = False
        self._drain()

    def _note(self, name: str, info: Any, fingerprint: bytes, objects: list[tuple[Any, Any, bytes]] | None,
              held: list[Any] | None) -> None:
        if objects and held is not None:
            for key in [key for key in self._kept if key[0] == name]:  # (one set of copies per name)
                self._drop(*key)
            me = weakref.ref(self)
            finalizers = []
            for owner in {id(owner): owner for owner, _, _ in objects}.values():
                finalizer = weakref.finalize(owner, _forget, me, name, fingerprint)
                finalizer.atexit = False
                finalizers.append(finalizer)
            self._kept[(name, fingerprint)] = (held, finalizers)
        known = self._fingerprints.get(name)
        if known is None or known[:2] != (info.version_id, info.bh_key):
            self._fingerprints[name] = (info.version_id, info.bh_key, [fingerprint])
        elif fingerprint not in known[2]:  # (the frame put and the frame got back may differ in their layout)
            known[2][:] = [*known[2][-3:], fingerprint]
        for key in list(self._kept):  # copies no remembered fingerprint needs any more are let go
            entry = self._fingerprints.get(key[0])
            if entry is None or key[1] not in entry[2]:
                self._drop(*key)

    def _drain(self) -> None:
        """Forget the fingerprints whose frames' arrays are gone (noted by their finalizers)."""
        if self._busy:
            return
        self._busy = True
        try:
            while self._dead:
                self._drop(*self._dead.pop())
        finally:
            self._busy = False

    def _drop(self, name: str, fingerprint: bytes) -> None:
        """Forget a fingerprint made by address: it no longer answers for ``name``, and the objects it saw are no
        longer kept alive."""
        entry = self._fingerprints.get(name)
        if entry is not None and fingerprint in entry[2]:
            entry[2].remove(fingerprint)
        kept = self._kept.pop((name, fingerprint), None)
        if kept is not None:
            for finalizer in kept[1]:
                finalizer.detach()

    def _add_version(self, name: str, bh_key: str, nbytes: int, metadata: dict[str, str],
                     extra: dict[str, Any]) -> V:
        """The latest version of ``name`` when it already holds ``bh_key`` (a re-put of unchanged data), else a
        new version with these columns."""
        latest = self._latest(name)
        if latest is not None and latest["bh_key"] == bh_key:
            return self._to_version(latest)
        return self.info(name, self._insert(name, bh_key, nbytes, metadata, extra))

    @abstractmethod
    def _to_version(self, row: dict[str, Any]) -> V:
        """Build the public version record from a row."""

    # -- what the notebook layer shows ------------------------------------------------------

    @staticmethod
    def shape_text(info: Any) -> str:
        """The shape the listing shows for a version ('1,000 x 7', '(3, 4) float64'); '' when it has none."""
        return ""

    @staticmethod
    def caption(info: Any) -> str | None:
        """A name the data came with (a file's name), shown where the shape would be; None when none."""
        return None

    def entries(self, prefix: str = "") -> list[Entry]:
        return [Entry(name=v.name, version=v.version, size=v.nbytes,  # type: ignore[attr-defined]
                      shape=self.shape_text(v), modified=v.created_at,  # type: ignore[attr-defined]
                      note=v.metadata.get("note", ""))  # type: ignore[attr-defined]
                for v in self.latest() if v.name.startswith(prefix)]  # type: ignore[attr-defined]

    def load(self, name: str, version: int | None = None, **options: Any) -> Any:
        unknown = sorted(set(options) - self.load_options)
        if unknown:
            raise ValueTypeError(f"{self.plural} take no {', '.join(unknown)} option")
        get: Any = getattr(self, "get")  # each kind's own get, with its own options
        return get(name, version, **options)

    # -- public reads -----------------------------------------------------------------------

    def info(self, name: str, version: int | None = None) -> V:
        """The catalog's record of a version (the latest by default); no bucket request."""
        return self._to_version(self._row(name, version))

    def history(self, name: str) -> list[V]:
        """Every version of ``name``, newest first."""
        check_name(name, f"{self.kind} name")
        rows = self._select("name = ?", (name,), "ORDER BY version DESC")
        if not rows:
            raise NotFound(self._not_found(name, None))
        return [self._to_version(r) for r in rows]

    def url(self, name: str, version: int | None = None) -> ObjectURL:
        """Where the blob of a version is, for other readers: ``s3://bucket/key`` with ``.endpoint_url``, or a
        ``file://`` URL for the local store (a ``.npy`` for arrays, a Parquet file for frames)."""
        return object_url(self._files, self._row(name, version)["bh_key"])

    def names(self, prefix: str = "") -> list[str]:
        """The names stored, sorted; only those starting with ``prefix`` when given."""
        rows = self._conn.execute(f"SELECT DISTINCT name FROM {self.table} ORDER BY name").fetchall()
        return [r[0] for r in rows if r[0].startswith(prefix)]

    def latest(self) -> list[V]:
        """The latest version of every name, newest first."""
        cols = self._columns
        cur = self._conn.execute(
            f"SELECT {', '.join('t.' + c for c in cols)} FROM {self.table} t JOIN "
            f"(SELECT name, max(version) AS v FROM {self.table} GROUP BY name) m "
            "ON t.name = m.name AND t.version = m.v ORDER BY t.created_at DESC"
        )
        return [self._to_version(self._with_id(dict(zip(cols, r)))) for r in cur.fetchall()]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return self._conn.execute(f"SELECT 1 FROM {self.table} WHERE name = ? LIMIT 1", (name,)).fetchone() is not None

    def __len__(self) -> int:
        return int(self._conn.execute(f"SELECT count(DISTINCT name) FROM {self.table}").fetchone()[0])

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        n = len(self)
        return f"<{type(self).__name__}: {n} {self.kind}{'' if n == 1 else 's'}>"

    # -- deletes ----------------------------------------------------------------------------

    def _delete_related(self, rows: list[dict[str, Any]]) -> set[str]:
        """Delete the rows of the store's other tables that belong to the versions ``rows`` (inside the delete's
        transaction); return the blob keys they used."""
        return set()

    def delete(self, name: str, version: int | None = None) -> list[V]:
        """Remove one version, or every version of ``name`` when ``version`` is None; return what was removed.

        Rows only: a blob no remaining entry of any kind points at loses its file row and becomes an orphan,
        which ``bh.files.gc()`` / ``%bh_gc`` removes from the bucket after its grace period. Nothing is deleted
        from the bucket here, so a writer killed before its next flush never leaves a committed catalog pointing
        at a deleted blob.
        """
        check_name(name, f"{self.kind} name")
        version = check_version(version)
        if version is None:
            rows = self._select("name = ?", (name,), "ORDER BY version DESC")
        else:
            rows = self._select("name = ? AND version = ?", (name, version))
        if not rows:
            raise NotFound(self._not_found(name, version))
        with self._conn:
            self._conn.execute(
                f"INSERT INTO {RETIRED_TABLE} (tbl, name, last) VALUES (?, ?, ?) ON CONFLICT (tbl, name) "
                "DO UPDATE SET last = max(last, excluded.last)",
                (self.table, name, max(int(r["version"]) for r in rows)))
            if version is None:
                self._conn.execute(f"DELETE FROM {self.table} WHERE name = ?", (name,))
            else:
                self._conn.execute(f"DELETE FROM {self.table} WHERE name = ? AND version = ?", (name, version))
            keys = self._delete_related(rows)
        keys |= {r[c] for r in rows for c in self.blob_columns().get(self.table, ()) if r.get(c)}
        for key in keys:
            if not self._files.references(key):  # no entry of any kind uses it (an array and a file may share it)
                self._files.release(key)  # the row goes; the object waits for gc (see FileStore.release)
        return [self._to_version(r) for r in rows]
