"""Interface: the base class of typed views over the catalog (an in-memory SQLite database)."""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ..config import BucketConfig
    from ..storage.bucket import BucketClient

#: The highest version number each name ever had, per table, kept when versions are deleted: a number is never
#: given out twice, so ``x@2`` always means the same data (and a merge never mistakes a new put for a deleted one).
#: Shared by every versioned kind.
RETIRED_TABLE = "bh_retired_versions"

#: Merge rules a store can give its tables (see ``merge.py``). Tables no registered store owns are merged with
#: the rule for user tables.
MERGE_RULES = ("versioned", "blobs", "kv", "retired", "parts")


@dataclass(frozen=True)
class Entry:
    """One row of the listing, as a store describes its entries (neutral: the notebook layer renders it)."""

    name: str
    version: int | None
    size: int
    shape: str
    modified: float | None
    note: str = ""


class Interface(ABC):
    """A typed view attached to a BucketSQLite: owns some ``bh_``-prefixed tables and, optionally, a bucket prefix.

    Subclasses implement ``_init_schema()`` with ``CREATE TABLE IF NOT EXISTS``, so construction is idempotent:
    the tables may already be in a restored snapshot. (FileStore's ``filestore`` table predates the ``bh_``
    prefix and keeps its name.)

    Each store also declares its **kind**, once, on the class; ``interfaces/registry.py`` lists the store classes
    and everything that works across kinds (``BucketSQLite.stores``, status, the merge, blob references, the
    magics, the browser and the listing) reads these declarations instead of naming kinds:

    - ``kind``, ``plural``, ``article``: what users call the entries ("frame", "frames", "a frame");
    - ``attr``: the ``BucketSQLite`` attribute that reaches the store (``bh.named_files``);
    - ``listed``: shown in listings and accepted as ``--kind`` (FileStore, the blob store under every kind, is not);
    - ``versioned``: entries have versions 1, 2, ... (``history``, ``delete(name, version)``);
    - ``load_options``: the keyword options ``load`` takes beyond name and version (``rows``, ``columns``);
    - ``status_key`` / ``count_noun``: its count in ``status()`` and how the count is worded;
    - ``tables()``, ``blob_columns()``, ``merge_rules()``: the tables it owns, the columns that hold blob bh-keys,
      and the merge rule of each table;
    - ``entries()`` (the listing's rows), ``shape_text()`` / ``caption()`` (what to show of a version) and
      ``load()`` (what Load and ``%bh_get`` return). How a kind is previewed is the notebook layer's business
      (no widget code lives here); a kind it has no preview for is shown from its ``info()``.
    """

    #: The singular name users see ("frame", "array", "file", "kv"; FileStore is "blob" and not listed).
    kind: ClassVar[str] = ""
    #: The plural ("frames"); defaults to kind + "s".
    plural: ClassVar[str] = ""
    #: The kind with its article ("a frame", "an array"); defaults to "a " + kind.
    article: ClassVar[str] = ""
    #: The BucketSQLite attribute that reaches the store; defaults to the plural.
    attr: ClassVar[str] = ""
    #: The key of its count in ``BucketSQLite.status()``; defaults to the plural.
    status_key: ClassVar[str] = ""
    #: How that count is worded ("kv keys"); defaults to the plural.
    count_noun: ClassVar[str] = ""
    #: Shown in listings, %bh_ls and the browser, and a value of ``--kind``.
    listed: ClassVar[bool] = True
    #: Entries have numbered versions.
    versioned: ClassVar[bool] = False
    #: Keyword options ``load`` accepts besides name and version.
    load_options: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind:  # a class naming its kind gets the derived names it does not give itself
            defaults = {"plural": kind + "s"}
            defaults["article"] = ("an " if kind[0] in "aeiou" else "a ") + kind
            for name in ("attr", "status_key", "count_noun"):
                defaults[name] = cls.__dict__.get("plural") or defaults["plural"]
            for name, value in defaults.items():
                if not cls.__dict__.get(name):
                    setattr(cls, name, value)

    @classmethod
    def for_catalog(cls, conn: sqlite3.Connection, bucket: BucketClient, config: BucketConfig,
             stores: Mapping[str, Interface]) -> Interface:
        """Build the store for a starting BucketSQLite; ``stores`` holds the stores built before it (by kind)."""
        return cls(conn, bucket)

    @classmethod
    def tables(cls) -> tuple[str, ...]:
        """The catalog tables this store owns."""
        return tuple(cls.merge_rules())

    @classmethod
    def blob_columns(cls) -> dict[str, tuple[str, ...]]:
        """{table: columns holding the bh-keys of FileStore blobs this store's entries use}."""
        return {}

    @classmethod
    def merge_rules(cls) -> dict[str, str]:
        """{table: merge rule} for the tables this store owns (one of ``MERGE_RULES``)."""
        return {}

    def status_counts(self) -> dict[str, int]:
        """What ``BucketSQLite.status()`` reports about this store."""
        return {self.status_key: len(self)}  # type: ignore[arg-type]

    def entries(self, prefix: str = "") -> list[Entry]:
        """The listing's rows: the latest of every entry whose name starts with ``prefix``."""
        return []

    @staticmethod
    def accepts(value: Any) -> bool:
        """True for a value ``%bh_put`` should store in this kind (the first listed kind that accepts it wins)."""
        return False

    def load(self, name: str, version: int | None = None, **options: Any) -> Any:
        """The value of an entry, as Load and ``%bh_get`` give it (``options``: see ``load_options``)."""
        raise NotImplementedError(f"{type(self).__name__} has no entries to load")

    def __init__(self, conn: sqlite3.Connection, bucket_client: BucketClient | None = None) -> None:
        self._conn = conn
        self._bucket = bucket_client
        self._init_schema()

    @property
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = self.__dict__.get("_live_conn")
        if conn is None:
            from ..errors import NotStarted

            raise NotStarted(f"this {type(self).__name__} belongs to a stopped BucketSQLite; start it again "
                             "(or open a new one) and use its stores")
        return conn

    @_conn.setter
    def _conn(self, conn: sqlite3.Connection) -> None:
        self.__dict__["_live_conn"] = conn

    def _detach(self) -> None:
        """Called when the store stops: every later use raises NotStarted instead of a sqlite3 error."""
        self.__dict__["_live_conn"] = None

    @abstractmethod
    def _init_schema(self) -> None:
        """Create the tables this interface owns, if they do not exist yet."""

    @property
    def connection(self) -> sqlite3.Connection:
        """The catalog connection this interface reads and writes."""
        return self._conn

    @property
    def bucket(self) -> BucketClient | None:
        """The bucket this interface stores objects in, if any."""
        return self._bucket


#: Longest entry name, in characters.
MAX_NAME_LENGTH = 200


def check_name(name: object, what: str = "name") -> str:
    """Validate an entry name (of an array, frame, ...): a non-empty str without control characters, '@' or '..'.

    Names may hold '/' to group entries ("exp1/weights"); '@' is kept for ``name@version`` in the magics.
    """
    from ..errors import InvalidKey, KeyTypeError

    if not isinstance(name, str):
        raise KeyTypeError(f"{what}s are str, not {type(name).__name__}")
    if not name or not name.strip():
        raise InvalidKey(f"{what} is empty; use a short name like 'sales_2024'")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidKey(f"{what} is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}")
    if name != name.strip():
        raise InvalidKey(f"{what} {name!r} starts or ends with whitespace")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidKey(f"{what} {name!r} holds control characters; use printable characters only")
    if "@" in name:
        raise InvalidKey(f"{what} {name!r} holds '@', which separates a name from a version (name@3)")
    if name.startswith("/") or name.endswith("/") or any(p in ("", ".", "..") for p in name.split("/")):
        raise InvalidKey(f"{what} {name!r} has an empty, '.' or '..' part; use names like 'exp1/weights'")
    return name


def check_version(version: object) -> int | None:
    """Validate a version number: None (the latest) or a positive int."""
    from ..errors import InvalidKey, KeyTypeError

    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int):
        raise KeyTypeError(f"versions are positive ints, not {type(version).__name__}")
    if version < 1:
        raise InvalidKey(f"version {version} does not exist: versions count from 1")
    return version
