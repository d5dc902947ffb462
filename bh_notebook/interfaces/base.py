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
