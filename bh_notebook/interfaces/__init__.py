"""Typed views over the catalog: the Interface base class and its stores."""

from .base import Interface
from .files import FileMetadata, FileStore, GCReport
from .kv import KVStore

__all__ = ["FileMetadata", "FileStore", "GCReport", "Interface", "KVStore"]
