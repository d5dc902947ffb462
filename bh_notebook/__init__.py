"""bh_notebook: stash data from a notebook into S3-compatible object storage (Cloudflare R2, AWS S3, MinIO)
or a local directory, get it back later or from another machine, and browse it."""

from __future__ import annotations

from . import errors
from .config import BucketConfig
from .database import BucketSQLite, FlushResult
from .interfaces import (
    ArrayStore,
    ArrayVersion,
    FileMetadata,
    FileStore,
    FrameStore,
    FrameVersion,
    GCReport,
    Interface,
    KVStore,
)
from .storage.snapshot import SnapshotConfig

__version__ = "0.1.0"

__all__ = [
    "ArrayStore",
    "ArrayVersion",
    "BucketConfig",
    "BucketSQLite",
    "FileMetadata",
    "FileStore",
    "FlushResult",
    "FrameStore",
    "FrameVersion",
    "GCReport",
    "Interface",
    "KVStore",
    "SnapshotConfig",
    "errors",
]
