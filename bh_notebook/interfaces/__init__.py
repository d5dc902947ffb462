"""Typed views over the catalog: the Interface base class and its stores."""

from .arrays import ArrayStore, ArrayVersion
from .base import Entry, Interface
from .files import FileMetadata, FileStore, GCReport
from .frames import FrameStore, FrameVersion
from .kv import KVStore
from .named_files import NamedFileStore, NamedFileVersion

__all__ = ["ArrayStore", "ArrayVersion", "Entry", "FileMetadata", "FileStore", "FrameStore", "FrameVersion", "GCReport",
           "Interface", "KVStore", "NamedFileStore", "NamedFileVersion"]
