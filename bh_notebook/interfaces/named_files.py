"""NamedFileStore: files and byte strings kept under a name, with versions; the bytes are FileStore blobs.

FileStore finds blobs by their SHA-256; this store gives them names, so ``%bh_put report.pdf --as report`` can be
found again as "report".
"""

from __future__ import annotations

import json
import mimetypes
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ValueTypeError
from ..storage.bucket import ProgressCallback
from .base import check_name
from .versioned import VersionedStore, check_metadata


@dataclass(frozen=True)
class NamedFileVersion:
    """One stored version of a named file."""

    name: str
    version: int
    bh_key: str
    nbytes: int
    created_at: float
    metadata: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    mime: str | None = None
    #: The version's id: given when it was put, unchanged by merges that move its number.
    version_id: str = ""

    def __repr__(self) -> str:
        what = f" {self.filename!r}" if self.filename else ""
        return f"<NamedFileVersion {self.name}@{self.version}:{what} {self.nbytes:,} bytes, {self.bh_key[:12]}>"


class NamedFileStore(VersionedStore[NamedFileVersion]):
    """Files and bytes under names, in table ``bh_named_files``; reached as ``bh.named_files``."""

    table = "bh_named_files"
    kind = "file"
    attr = "named_files"
    status_key = "named_files"
    extra_columns = (("filename", "TEXT"), ("mime", "TEXT"))

    @staticmethod
    def caption(info: Any) -> str | None:
        return info.filename

    @staticmethod
    def accepts(value: Any) -> bool:
        """What ``%bh_put`` stores as a named file: bytes, a bytearray or memoryview, or a path."""
        return isinstance(value, (bytes, bytearray, memoryview, os.PathLike))

    def _to_version(self, row: dict[str, Any]) -> NamedFileVersion:
        return NamedFileVersion(
            name=row["name"], version=int(row["version"]), bh_key=row["bh_key"], nbytes=int(row["nbytes"]),
            created_at=float(row["created_at"]), metadata=json.loads(row["metadata"]) if row["metadata"] else {},
            filename=row["filename"], mime=row["mime"],
            version_id=row.get("version_id") or "",
        )

    def put(self, name: str, data: bytes | bytearray | memoryview | os.PathLike[str], *,
            metadata: dict[str, str] | None = None, progress: ProgressCallback | None = None) -> NamedFileVersion:
        """Store bytes or a file (streamed) as the next version of ``name``; the same content again is a no-op."""
        check_name(name, "file name")
        meta = check_metadata(metadata)
        if isinstance(data, os.PathLike):
            path = Path(data)
            bh_key = self._files.put(path, progress=progress, entry=("file", name))
            filename: str | None = path.name
            size = path.stat().st_size
        elif isinstance(data, (bytes, bytearray, memoryview)):
            bh_key = self._files.put(bytes(data) if isinstance(data, memoryview) else data, progress=progress,
                                     entry=("file", name))
            filename = None
            size = memoryview(data).nbytes
        else:
            raise ValueTypeError(f"named files hold bytes or a pathlib.Path, not {type(data).__name__}")
        mime = mimetypes.guess_type(filename)[0] if filename else None
        return self._add_version(name, bh_key, size, meta, {"filename": filename, "mime": mime})

    def get(self, name: str, version: int | None = None, *, dest: str | os.PathLike[str] | None = None,
            progress: ProgressCallback | None = None) -> Any:
        """The bytes (checked against their SHA-256), or with ``dest`` the path they were streamed to."""
        info = self.info(name, version)
        return self._files.get(info.bh_key, dest=Path(dest) if dest is not None else None, progress=progress)

    def __getitem__(self, name: str) -> bytes:
        return self.get(name)
