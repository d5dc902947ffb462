"""The registry of kinds: the store classes a BucketSQLite builds, in order, and what they declare together.

Everything that works across kinds reads this list instead of naming kinds: ``BucketSQLite`` builds its
``stores`` from it (and counts them in ``status()``), the merge takes each table's rule from it, FileStore asks it
which columns hold blob bh-keys, and the magics, the browser and the listing iterate over its listed kinds.

Adding a kind is one new module with a store class (usually a ``VersionedStore`` subclass declaring ``table``,
``kind`` and its columns) and one line in ``STORE_CLASSES``. A class is built after those before it, so the blob
store comes first.
"""

from __future__ import annotations

from .arrays_dask import DaskArrayStore
from .base import MERGE_RULES, Interface
from .files import FileStore, declare_blob_columns
from .frames_dask import DaskFrameStore
from .kv import KVStore
from .named_files import NamedFileStore

#: The store classes, in the order they are built and listed (the listed ones in the order users see them). Frames
#: and arrays are the stores that also take dask values (``frames_dask.py``, ``arrays_dask.py``).
STORE_CLASSES: list[type[Interface]] = [FileStore, DaskFrameStore, DaskArrayStore, NamedFileStore, KVStore]


def store_classes() -> tuple[type[Interface], ...]:
    """The registered store classes, in order (read at call time: a test may register one more)."""
    classes = tuple(STORE_CLASSES)
    kinds = [cls.kind for cls in classes]
    if len(set(kinds)) != len(kinds) or not all(kinds):
        raise TypeError(f"every store class names one kind of its own; got {kinds}")
    return classes


def listed_classes() -> tuple[type[Interface], ...]:
    """The kinds users see (in listings, ``--kind``, the browser), in order: frame, array, file, kv, ..."""
    return tuple(cls for cls in store_classes() if cls.listed)


def by_plural() -> dict[str, type[Interface]]:
    """The listed kinds by their plural ("frames": FrameStore, ...)."""
    return {cls.plural: cls for cls in listed_classes()}


def merge_rules() -> dict[str, str]:
    """{table: merge rule} over every registered store; two stores giving one table different rules is an error."""
    rules: dict[str, str] = {}
    for cls in store_classes():
        for table, rule in cls.merge_rules().items():
            if rule not in MERGE_RULES:
                raise TypeError(f"{cls.__name__} gives table {table} the unknown merge rule {rule!r}")
            if rules.setdefault(table, rule) != rule:
                raise TypeError(f"table {table} has two merge rules: {rules[table]!r} and {rule!r}")
    return rules


def blob_columns() -> dict[str, tuple[str, ...]]:
    """{table: columns holding blob bh-keys} over every registered store."""
    found: dict[str, tuple[str, ...]] = {}
    for cls in store_classes():
        for table, cols in cls.blob_columns().items():
            found[table] = tuple(dict.fromkeys((*found.get(table, ()), *cols)))
    return found


declare_blob_columns(blob_columns)
