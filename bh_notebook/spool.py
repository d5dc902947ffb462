"""Unsaved catalogs kept on local disk until a bucket takes them, and leftovers of killed processes cleaned up.

When the final flush fails (the endpoint is down at ``stop()`` or at exit), the catalog this process holds is
written here with the snapshot it last synced with and that snapshot's etag. The next ``start()`` on the same
bucket and key resumes from it as if the process had never stopped: its first flush finds the snapshot changed (or
not) and merges exactly as a running writer does. Nothing the user stored is dropped because the network was down
when the kernel stopped.

The spool lives in ``$BH_NOTEBOOK_HOME/.bh-unsaved`` (``~/.bh_notebook/.bh-unsaved``): a name the local store
hides from its listings.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .config import default_home

WORKDIR_PREFIX = "bh-catalog-"


def spool_root() -> Path:
    """Where unsaved catalogs wait: ``$BH_NOTEBOOK_HOME/.bh-unsaved``."""
    return default_home() / ".bh-unsaved"


@dataclass(frozen=True)
class SpooledCatalog:
    """One unsaved catalog: its folder, the bucket location and key it belongs to, and when it was saved."""

    path: Path
    location: str
    key: str
    saved_at: float
    etag: str | None = None

    @property
    def catalog(self) -> Path:
        return self.path / "catalog.db"

    @property
    def base(self) -> Path | None:
        base = self.path / "base.db"
        return base if base.exists() else None


def save(source: sqlite3.Connection, base: Path | None, *, location: str, key: str,
         etag: str | None, live: bool = False) -> SpooledCatalog:
    """Write the catalog behind ``source``, the state it last synced with (``base``) and that state's log
    position (``etag``, as ``log:<position>``) to a new spool folder.

    ``live``: kept by a store that is still running (a flush failed); other processes leave it alone while this
    process is alive, and this one removes it once a flush succeeds. Killed, it is resumed by the next start."""
    root = spool_root()
    root.mkdir(parents=True, exist_ok=True)
    saved_at = time.time()
    staging = root / f".tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        dest = sqlite3.connect(staging / "catalog.db")
        try:
            source.backup(dest)
        finally:
            dest.close()
        if base is not None and base.exists():
            shutil.copyfile(base, staging / "base.db")
        (staging / "meta.json").write_text(json.dumps({"location": location, "key": key, "saved_at": saved_at,
                                                       "etag": etag, "live_pid": os.getpid() if live else None}))
        final = root / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(saved_at))}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.replace(final)  # complete or absent: a half-written spool folder is never picked up
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return SpooledCatalog(final, location, key, saved_at, etag)


def pending(*, location: str, key: str) -> list[SpooledCatalog]:
    """The unsaved catalogs for this bucket location and key, oldest first."""
    root = spool_root()
    if not root.is_dir():
        return []
    found = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            meta = json.loads((entry / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        live_pid = meta.get("live_pid")
        if isinstance(live_pid, int) and _alive(live_pid):
            continue  # kept by a store still running (in this process too): it pushes it itself
        if meta.get("location") == location and meta.get("key") == key and (entry / "catalog.db").exists():
            found.append(SpooledCatalog(entry, location, key, float(meta.get("saved_at", 0.0)), meta.get("etag")))
    return found


def claim(spooled: SpooledCatalog) -> SpooledCatalog | None:
    """Take ``spooled`` for this process (a rename, so two starting processes never both take it)."""
    claimed = spooled.path.with_name(f".claimed-{os.getpid()}-{spooled.path.name}")
    try:
        spooled.path.replace(claimed)
    except OSError:
        return None
    return SpooledCatalog(claimed, spooled.location, spooled.key, spooled.saved_at, spooled.etag)


def release(spooled: SpooledCatalog, *, pushed: bool) -> None:
    """Remove a claimed spool folder once its catalog was pushed, or give it back for the next start."""
    if pushed:
        shutil.rmtree(spooled.path, ignore_errors=True)
        return
    original = spooled.path.with_name(spooled.path.name.split("-", 2)[2])
    try:
        spooled.path.replace(original)
    except OSError:
        pass


def make_workdir() -> Path:
    """A private temp folder for this process's catalog copies, named with its pid (see clean_stale_workdirs)."""
    return Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but is not ours to signal, or we cannot tell: leave its folder alone
        return True
    return True


def clean_stale_workdirs(*, legacy_age: float = 86400.0) -> int:
    """Remove catalog temp folders that killed processes left behind, and claimed spool folders of dead processes
    (given back for the next start); returns how many temp folders went."""
    removed = 0
    tmp = Path(tempfile.gettempdir())
    for entry in tmp.glob(f"{WORKDIR_PREFIX}*"):
        rest = entry.name[len(WORKDIR_PREFIX):]
        pid_text = rest.split("-", 1)[0]
        try:
            if pid_text.isdigit():
                if _alive(int(pid_text)):
                    continue
            elif time.time() - entry.stat().st_mtime < legacy_age:  # an older version's name, without a pid
                continue
        except OSError:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    root = spool_root()
    if root.is_dir():
        for entry in root.glob(".claimed-*"):
            pid_text = entry.name.split("-")[1]
            if pid_text.isdigit() and not _alive(int(pid_text)):
                release(SpooledCatalog(entry, "", "", 0.0), pushed=False)
        for entry in root.glob(".tmp-*"):
            if time.time() - entry.stat().st_mtime > 3600:
                shutil.rmtree(entry, ignore_errors=True)
    return removed
