"""Branches: named catalogs in one bucket that share its blobs.

A branch is a catalog of its own under ``<key>.branch.<name>`` (the layout buckethead uses, so each library sees
the other's branches), beside the main catalog ``<key>``. It starts as a copy of a committed catalog, shares every
blob with it (nothing is copied but the catalog), commits independently (a BucketSQLite started on the branch's
key, e.g. ``bh.branches.open(name)`` or ``%bh_branch switch``), and is merged back with ``merge``.

Beside each branch, ``<key>.fork.<name>`` holds its fork point: the catalog it started from, or the state both
shared at their last merge (outside buckethead's ``<key>.branch.`` prefix, so buckethead lists no extra branches).
A merge is three-way against it, so only what changed on each side since then counts. Branches merge with main
only. Merging main into a branch follows the two-writer rules (``merge.py``); merging a branch into main differs
in two ways, because main is what others already read: every number main ever gave out stays its own (the
branch's versions are renumbered after them), and a KV key changed on both sides takes the branch's value.

Blobs belong to every catalog in the bucket: the collector spares anything any branch (or ``.prev``) uses.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .errors import InvalidKey, NotFound, PreconditionFailed
from .interfaces.files import referenced_keys_of_file
from .merge import MergeReport

if TYPE_CHECKING:
    from .config import BucketConfig
    from .storage.bucket import BucketClient
    from .storage.snapshot import SnapshotConfig


class Catalog(Protocol):
    """What branches need of a started BucketSQLite (a protocol, so that this module never imports database.py)."""

    config: BucketConfig
    snapshot_config: SnapshotConfig

    @property
    def bucket(self) -> BucketClient: ...

    @property
    def connection(self) -> sqlite3.Connection: ...

    def force_flush(self) -> Any: ...

    @property
    def dirty(self) -> bool: ...

    def pull(self) -> Any: ...

    def _copy_committed(self, dest: Path) -> None: ...

    def _merge_file(self, theirs: Path, base: Path | None, *, label: str,
                    into_shared: bool = True) -> MergeReport: ...

    def start(self) -> Any: ...

#: Between the main catalog's key and a branch's name.
SEPARATOR = ".branch."
#: Between the main catalog's key and a branch's name, for the branch's fork point.
FORK_SEPARATOR = ".fork."
#: The name of the catalog that is no branch.
MAIN = "main"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def check_branch_name(name: object) -> str:
    """A branch name: letters, digits, ``-`` and ``_``, at most 64, not ``main``."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidKey(f"branch names are 1-64 letters, digits, '-' or '_' (starting with a letter or digit), "
                         f"not {name!r}")
    if name == MAIN:
        raise InvalidKey("'main' is the main catalog, not a branch; choose another name")
    return name


def root_key(key: str) -> str:
    """The main catalog's key for a catalog key (itself, or the key a branch hangs off)."""
    return key.split(SEPARATOR, 1)[0]


def branch_of(key: str) -> str:
    """The branch a catalog key belongs to, or ``main``."""
    return key.split(SEPARATOR, 1)[1] if SEPARATOR in key else MAIN


def fork_key(root: str, name: str) -> str:
    """Where branch ``name``'s fork point is kept."""
    return f"{root}{FORK_SEPARATOR}{check_branch_name(name)}"


def branch_key(root: str, name: str) -> str:
    """The catalog key of branch ``name`` (``main``: the root key itself)."""
    return root if name == MAIN else f"{root}{SEPARATOR}{check_branch_name(name)}"


class Branches:
    """The branches of the bucket a BucketSQLite is started on; reached as ``bh.branches``."""

    def __init__(self, bh: Catalog) -> None:  # a started BucketSQLite
        self._bh = bh

    @property
    def root(self) -> str:
        return root_key(self._bh.config.key)

    @property
    def current(self) -> str:
        """The branch this BucketSQLite is on (``main`` for the main catalog)."""
        return branch_of(self._bh.config.key)

    def list(self) -> list[str]:
        """``main`` and every branch in the bucket, by name."""
        prefix = self.root + SEPARATOR
        names = {info.key[len(prefix):] for info in self._bh.bucket.list_info(prefix)}
        return [MAIN, *sorted(n for n in names if _NAME_RE.match(n) and n != MAIN)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name == MAIN or (
            bool(_NAME_RE.match(name)) and self._bh.bucket.head(branch_key(self.root, name)) is not None))

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.list())

    def create(self, name: str, *, overwrite: bool = False) -> str:
        """Make branch ``name`` from this catalog as it is now (committed first); return its catalog key.

        The branch's log starts with one commit holding that catalog (and a checkpoint at its key). Refused with
        PreconditionFailed when the branch exists, unless ``overwrite=True`` (which replaces it with the current
        catalog, as buckethead's overwrite does)."""
        from .sync.replica import Replica

        key = branch_key(self.root, check_branch_name(name))
        self._bh.force_flush()
        bucket = self._bh.bucket
        exists = PreconditionFailed(f"branch {name!r} exists already in {self._bh.config.location}; switch to "
                                    "it, or create it with overwrite=True to start it again from here")
        if overwrite:
            _delete_catalog(bucket, key)
        elif bucket.head(key) is not None:
            raise exists
        with tempfile.TemporaryDirectory(prefix="bh-branch-") as tmp:
            snap = Path(tmp) / "snap.db"
            self._bh._copy_committed(snap)
            work = Path(tmp) / "work"
            work.mkdir()
            replica = Replica(bucket, key, work, location=self._bh.config.location)
            if replica.log.get_commit(1) is not None:
                raise exists

            def taken(*_: object) -> MergeReport:
                raise exists  # another process created the branch meanwhile

            def copy(path: Path) -> None:
                shutil.copyfile(snap, path)

            replica.commit(copy, taken)
            bucket.upload(snap, fork_key(self.root, name))
        return key

    def delete(self, name: str) -> bool:
        """Delete branch ``name``'s catalog and log (its blobs stay for the collector); return whether it existed.

        The branch in use cannot be deleted; switch away first."""
        key = branch_key(self.root, check_branch_name(name))
        if key == self._bh.config.key:
            raise InvalidKey(f"branch {name!r} is the one in use; switch to another before deleting it")
        existed = self._bh.bucket.head(key) is not None
        _delete_catalog(self._bh.bucket, key)
        self._bh.bucket.delete(fork_key(self.root, name))
        return existed

    def open(self, name: str) -> Any:
        """A started BucketSQLite on branch ``name`` (``main``: the main catalog), with this one's settings."""
        import dataclasses

        key = branch_key(self.root, name)
        if name != MAIN and self._bh.bucket.head(key) is None:
            raise NotFound(f"no branch {name!r} in {self._bh.config.location}; bh.branches.create({name!r}) makes "
                           "one from the current catalog")
        make: Any = type(self._bh)  # a BucketSQLite, without importing database.py
        return make(dataclasses.replace(self._bh.config, key=key), self._bh.snapshot_config).start()

    def merge(self, name: str) -> MergeReport:
        """Merge branch ``name`` into this catalog (three-way, against the branch's fork point) and commit.

        Afterwards the fork point is the state both now share, so a later merge takes only newer changes.
        To merge the main catalog into a branch, open the branch and merge ``main`` (with the two-writer rules:
        main keeps its version numbers, and a KV key changed on both sides keeps the branch's value, the later
        commit). Branches merge with main only: a fork point describes a branch and main."""
        key = branch_key(self.root, name)
        if key == self._bh.config.key:
            raise InvalidKey(f"{name!r} is the catalog in use; merge another branch into it")
        if name != MAIN and self.current != MAIN:
            raise InvalidKey(f"branches merge with main only: switch to main and merge {name!r} there (then merge "
                             f"main into {self.current!r})")
        # The fork point of the branch involved: the one merged in, or (merging main into a branch) this one.
        base_key = fork_key(self.root, name if name != MAIN else self.current)
        bucket = self._bh.bucket
        self._bh.pull()
        with tempfile.TemporaryDirectory(prefix="bh-branch-") as tmp:
            theirs = Path(tmp) / "theirs.db"
            read = catalog_state(bucket, key, Path(tmp))
            if read is None:
                raise NotFound(f"no branch {name!r} in {self._bh.config.location}")
            read.replace(theirs)
            base: Path | None = Path(tmp) / "base.db"
            try:
                bucket.download(base_key, base)  # type: ignore[arg-type]
            except NotFound:
                base = None  # no fork point known: everything on the branch counts as its change
            kept = Path(tmp) / "merged-from.db"
            shutil.copyfile(theirs, kept)
            report = self._bh._merge_file(theirs, base, label=f"branch {name!r}", into_shared=name != MAIN)
            self._bh.force_flush()
            if self._bh.dirty:  # not committed (the flush will be retried): the old fork point still holds
                return report
            bucket.upload(kept, base_key)  # what was merged in is now the state both sides share
        return report

def _delete_catalog(bucket: BucketClient, key: str) -> None:
    """Delete the catalog at ``key``: its checkpoint copy, ``.prev``, commit log and checkpoints."""
    from .sync.log import prefixes

    # Newest first: a delete cut short leaves a shorter log, never a gap in which a new log's commit 1 would
    # sit beneath an old log's later commits.
    for prefix in prefixes(key):
        for info in sorted(bucket.list_info(prefix), key=lambda i: i.key, reverse=True):
            bucket.delete(info.key)
    for k in (key, key + ".prev"):
        bucket.delete(k)


def catalog_state(bucket: BucketClient, key: str, workdir: Path) -> Path | None:
    """The newest state of the catalog at ``key`` (its checkpoint and log; a copy another program wrote to
    ``key`` merged in), as a vetted file in ``workdir``; None when there is none. Writes nothing to the bucket."""
    from .merge import merge_catalog
    from .sync.replica import read_head

    work = Path(tempfile.mkdtemp(prefix="state-", dir=workdir))
    files = read_head(bucket, key, work)
    if not files:
        return None
    head = files[0]
    for other in files[1:]:  # a foreign copy: merged in as a union (its fork point is not needed to read)
        conn = sqlite3.connect(head)
        try:
            merge_catalog(conn, None, other)
        finally:
            conn.close()
    return head


def shared_references(bh: Catalog) -> set[str]:
    """Blobs any catalog in the bucket uses: the main catalog, every branch and fork point, and ``.prev`` copies.

    What the collector spares besides this process's own catalog (each read as its checkpoint plus its log, and a
    copy another program wrote, every file vetted before it is opened)."""
    from .sync.log import catalog_of
    from .sync.replica import read_head

    bucket = bh.bucket
    root = root_key(bh.config.key)
    catalogs: set[str] = set()
    logged: set[str] = {bh.config.key}
    for info in bucket.list_info(root):
        name = catalog_of(info.key)
        if name != info.key:
            logged.add(name)
        rest = name[len(root):]
        if name == bh.config.key or not (rest == "" or rest.startswith(".")):
            continue  # our own catalog is read from memory; "snap.db2" is another catalog's business
        catalogs.add(name)
    # The copy before a logged catalog's checkpoint: restored from, its log brings it to that catalog's newest
    # state, so it needs no blob the catalog itself does not.
    catalogs = {c for c in catalogs if not (c.endswith(".prev") and c[:-len(".prev")] in logged)}
    keys: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="bh-refs-") as tmp:
        for n, key in enumerate(sorted(catalogs)):
            work = Path(tmp) / str(n)
            work.mkdir()
            for path in read_head(bucket, key, work):
                keys |= referenced_keys_of_file(path)
    return keys
