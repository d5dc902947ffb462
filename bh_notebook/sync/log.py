"""Where the commit log and its checkpoints live in the bucket, and the requests that read and write them.

For a catalog at ``key`` (``bucketsqlite/snap.db``):

- ``<key>.log/<position, 20 digits>``: commit number *position*, written once with ``If-None-Match: *``. The
  writer that gets a position is the one whose PUT created the key; everyone else reads it and tries the next.
- ``<key>.log/<position>-<sha256>.db``: the whole catalog a commit that changed the schema stands for (a commit
  whose rows cannot be a change of rows); written before the commit that names it.
- ``<key>.ckpt/<position>-<sha256>.db``: a checkpoint, the whole catalog as of that position (with its position in
  the ``bh_log_state`` table); immutable, under a key only that content has.
- ``<key>`` itself: a copy of a recent checkpoint, so buckethead (and any SQLite reader) can open the catalog; the
  log is the truth, ``<key>`` a shortcut to a recent state of it.

A branch's catalog ``<root>.branch.<name>`` keeps its log under ``<root>.branch-log.<name>/`` and its checkpoints
under ``<root>.branch-ckpt.<name>/`` instead: buckethead lists every key under ``<root>.branch.`` as a branch.
"""

from __future__ import annotations

from ..errors import BackendError, ObjectNotFound, PreconditionFailed
from ..storage import BucketClient

#: Answers that mean "another writer got there first" when creating a key with If-None-Match: 412 (it exists),
#: 409 (a concurrent conditional write is in flight) and 429 (too many writes to one key).
LOST_STATUSES = frozenset({409, 412, 429})


def lost_race(exc: BaseException) -> bool:
    """Whether a failed conditional create means someone else was first (so: read theirs, try the next)."""
    if isinstance(exc, PreconditionFailed):
        return True
    return isinstance(exc, BackendError) and getattr(exc, "status", None) in LOST_STATUSES


#: Between a main catalog's key and a branch's name (``branches.SEPARATOR``; buckethead's layout).
BRANCH = ".branch."


def prefixes(key: str) -> tuple[str, str]:
    """(log prefix, checkpoint prefix) of the catalog at ``key``."""
    if BRANCH in key:
        root, name = key.split(BRANCH, 1)
        return f"{root}.branch-log.{name}/", f"{root}.branch-ckpt.{name}/"
    return f"{key}.log/", f"{key}.ckpt/"


def catalog_of(object_key: str) -> str:
    """The catalog key an object belongs to: the catalog of a commit, whole state or checkpoint; else itself."""
    for mark in (".log/", ".ckpt/"):
        if mark in object_key:
            return object_key.split(mark, 1)[0]
    for mark in (".branch-log.", ".branch-ckpt."):
        if mark in object_key:
            root, rest = object_key.split(mark, 1)
            return f"{root}{BRANCH}{rest.split('/', 1)[0]}"
    return object_key


class CommitLog:
    """The log of one catalog key in one bucket: names, conditional creates and reads (no state of its own)."""

    def __init__(self, bucket: BucketClient, key: str) -> None:
        self.bucket = bucket
        self.key = key

    @property
    def log_prefix(self) -> str:
        return prefixes(self.key)[0]

    @property
    def checkpoint_prefix(self) -> str:
        return prefixes(self.key)[1]

    def commit_key(self, position: int) -> str:
        return f"{self.log_prefix}{position:020d}"

    def state_key(self, position: int, sha: str) -> str:
        """Where the whole catalog of a schema-changing commit at ``position`` is kept."""
        return f"{self.log_prefix}{position:020d}-{sha}.db"

    def checkpoint_key(self, position: int, sha: str) -> str:
        return f"{self.checkpoint_prefix}{position:020d}-{sha}.db"

    def put_commit(self, position: int, data: bytes) -> str | None:
        """Create commit ``position``; its etag, or None when another writer has that position already."""
        try:
            return self.bucket.put_bytes(data, self.commit_key(position), if_none_match="*",
                                         content_type="application/octet-stream")
        except BackendError as exc:
            if lost_race(exc):
                return None
            raise

    def get_commit(self, position: int) -> bytes | None:
        """Commit ``position``'s bytes: one GET, None (a 404) when nobody has committed it yet."""
        try:
            return self.bucket.get_bytes(self.commit_key(position))
        except ObjectNotFound:
            return None

    def checkpoints(self) -> list[tuple[int, str]]:
        """(position, key) of every checkpoint, newest first (one LIST; used only when ``<key>`` is unusable)."""
        found = []
        for info in self.bucket.list_info(self.checkpoint_prefix):
            name = info.key[len(self.checkpoint_prefix):]
            head = name.split("-", 1)[0]
            if head.isdigit() and name.endswith(".db"):
                found.append((int(head), info.key))
        return sorted(found, reverse=True)

    def checkpoints_at(self, position: int) -> list[str]:
        """The keys of the checkpoints written for ``position`` (one LIST)."""
        prefix = f"{self.checkpoint_prefix}{position:020d}-"
        return [info.key for info in self.bucket.list_info(prefix)]


__all__ = ["BRANCH", "CommitLog", "LOST_STATUSES", "catalog_of", "lost_race", "prefixes"]
