"""Interface: the base class of typed views over the catalog (an in-memory SQLite database)."""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..storage.bucket import BucketClient


class Interface(ABC):
    """A typed view attached to a BucketSQLite: owns some ``bh_``-prefixed tables and, optionally, a bucket prefix.

    Subclasses implement ``_init_schema()`` with ``CREATE TABLE IF NOT EXISTS``, so construction is idempotent:
    the tables may already be in a restored snapshot. (FileStore's ``filestore`` table predates the ``bh_``
    prefix and keeps its name.)
    """

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
