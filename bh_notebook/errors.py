"""Named exceptions of bh_notebook.

Every error a user can meet has its own class with a one-line docstring, and a
message that says what to do instead. Each also inherits the matching built-in,
so ``except KeyError`` or ``except ValueError`` keeps working in caller code.
"""

from __future__ import annotations


class BhError(Exception):
    """Base class of every bh_notebook error.

    ``code`` is the storage server's error code (e.g. ``"SlowDown"``) and ``status`` its HTTP status when the
    error came from a server's answer; both are None otherwise.
    """

    def __init__(self, *args: object, code: str | None = None, status: int | None = None) -> None:
        super().__init__(*args)
        self.code = code
        self.status = status

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.args, self.code, self.status))


class ConfigError(BhError, ValueError):
    """The bucket configuration is incomplete or malformed."""


class NotFound(BhError, KeyError):
    """A name, key, version or object does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message; keep it readable.
        return str(self.args[0]) if self.args else ""


class ObjectNotFound(NotFound):
    """An object key does not exist in the bucket."""


class InvalidKey(BhError, ValueError):
    """A key or name is empty, too long, or holds forbidden characters or path segments."""


class BlobNotFound(NotFound, FileNotFoundError):
    """A blob (bh-key) is not in the file store, or its object is missing; also a FileNotFoundError, as buckethead
    raises for an unknown bh-key."""


class InvalidBhKey(InvalidKey, BlobNotFound):
    """A string that cannot be a bh-key (64 lowercase hex characters) was given where one is read."""


class AlreadyStarted(BhError, RuntimeError):
    """``start()`` was called on a BucketSQLite that is already started."""


class KeyTypeError(BhError, TypeError):
    """A key or name is not a str."""


class ValueTypeError(BhError, TypeError):
    """A value has a type this store does not accept."""


class InexactFrame(ValueTypeError):
    """A frame holds something Parquet would not give back exactly (Python objects, ...); it is refused."""


class ValueTooLarge(BhError, ValueError):
    """A value is too large to keep inline; store it as a file instead."""


class BackendError(BhError, OSError):
    """The storage backend failed in a way not covered by a more specific error."""


class BucketNotFound(BackendError):
    """The bucket does not exist (or the endpoint does not serve it)."""


class AccessDenied(BackendError, PermissionError):
    """The credentials are missing, wrong, or not allowed to do this."""


class EndpointUnreachable(BackendError, ConnectionError):
    """The storage endpoint could not be reached after retries."""


class PreconditionFailed(BackendError):
    """A conditional write lost: the object changed (or appeared) since it was read."""


class StoreNotWritable(BackendError, PermissionError):
    """The local store's directory is read-only or not ours to write."""


class StoreFull(BackendError):
    """The disk (or quota) holding the local store is full."""


def _rebuild(cls: type[BhError], args: tuple[object, ...], code: str | None, status: int | None) -> BhError:
    return cls(*args, code=code, status=status)


class BlobInUse(BhError, ValueError):
    """A blob cannot be deleted while entries use it; delete the entries (gc then removes the blob)."""


class IntegrityError(BhError):
    """Stored bytes do not match the hash they are stored under."""


class SnapshotCorruptError(BhError):
    """The catalog snapshot in the bucket is not a valid SQLite database."""


class UntrustedCatalog(SnapshotCorruptError):
    """A catalog from the bucket holds schema objects that could run code here (a malformed or virtual table)."""


class SnapshotConflict(BhError):
    """Another writer committed a snapshot that could not be merged with ours."""


class CatalogDeleted(BhError):
    """The catalog this process writes was deleted or created anew in the bucket (a branch deleted, or created again
    with overwrite) while it was open; nothing more is committed to it. Your changes are still in memory."""


class NotCommitted(BhError):
    """This process's catalog changes could not be committed, so an operation that needs them shared (gc) did not
    run; nothing was deleted. Try again when the bucket is reachable."""


class CatalogBusy(BhError, TimeoutError):
    """Another thread of this process held the catalog locked for too long; try again."""


class NotStarted(BhError, RuntimeError):
    """The BucketSQLite is not started (or already stopped)."""


__all__ = [
    "AccessDenied",
    "CatalogDeleted",
    "AlreadyStarted",
    "BackendError",
    "BhError",
    "BlobInUse",
    "BlobNotFound",
    "BucketNotFound",
    "CatalogBusy",
    "ConfigError",
    "EndpointUnreachable",
    "InexactFrame",
    "IntegrityError",
    "InvalidBhKey",
    "InvalidKey",
    "KeyTypeError",
    "NotCommitted",
    "NotFound",
    "NotStarted",
    "ObjectNotFound",
    "PreconditionFailed",
    "SnapshotConflict",
    "SnapshotCorruptError",
    "UntrustedCatalog",
    "StoreFull",
    "StoreNotWritable",
    "ValueTooLarge",
    "ValueTypeError",
]
