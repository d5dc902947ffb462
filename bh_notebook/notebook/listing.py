"""What the magics and the browser both show: the stores by kind, and the listing of everything stored.

A module of its own so that neither UI imports the other. The kinds come from the registry
(``interfaces/registry.py``): nothing here names one.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from ..database import BucketSQLite
from ..interfaces.base import Interface
from ..interfaces.registry import listed_classes
from .display import timestamps


def listed_stores(bh: BucketSQLite) -> dict[str, Interface]:
    """The stores users see, by the kind names the listing shows (frame, array, file, kv, ...), in order."""
    return {kind: store for kind, store in bh.stores.items() if store.listed}


def versioned_stores(bh: BucketSQLite) -> dict[str, Any]:
    """The listed stores whose entries have versions: frame, array, file, ... (kv has no versions)."""
    return {kind: store for kind, store in listed_stores(bh).items() if store.versioned}


def kind_words(last: str = "or", *, versioned: bool = False) -> str:
    """The listed kinds for a message or a help text: 'frame, array, file or kv'."""
    return words([c.kind for c in listed_classes() if c.versioned or not versioned], last)


def words(names: list[str], last: str = "or") -> str:
    """'a, b or c'."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"


#: The listed kinds by the plural names the magics' and the command line's ``--kind`` take ("frames", ...).
KINDS = tuple(cls.plural for cls in listed_classes())
#: Plural -> kind ("frames" -> "frame").
KIND_OF = {cls.plural: cls.kind for cls in listed_classes()}


def kinds_holding(bh: BucketSQLite, name: str) -> list[str]:
    """The plurals of the listed kinds holding an entry or key called ``name``, in the registry's order."""
    return [store.plural for store in listed_stores(bh).values() if name in store]  # type: ignore[operator]


def listing(bh: BucketSQLite, pattern: str | None = None, kind: str | None = None, prefix: str = "") -> Any:
    """What is stored, newest first, as a DataFrame: name, kind, version, size, shape, modified, note.

    ``kind`` is a listed kind's plural ("frames", "kv"), or None for all."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for k, store in listed_stores(bh).items():
        if kind not in (None, store.plural):
            continue
        for e in store.entries(prefix):
            rows.append({"name": e.name, "kind": k, "version": e.version, "size": e.size, "shape": e.shape,
                         "modified": e.modified, "note": e.note})
    if prefix:
        rows = [r for r in rows if r["name"].startswith(prefix)]
    if pattern:
        glob = any(ch in pattern for ch in "*?[")
        rows = [r for r in rows if (fnmatch.fnmatchcase(r["name"], pattern) if glob else
                                    pattern.lower() in r["name"].lower() or pattern.lower() in r["note"].lower())]
    df = pd.DataFrame(rows, columns=["name", "kind", "version", "size", "shape", "modified", "note"])
    df["version"] = df["version"].astype("Int64")
    df = df.sort_values("modified", ascending=False, kind="stable").reset_index(drop=True)  # exact times first
    df["modified"] = timestamps(df["modified"])  # then shown to the second, in local time with its zone
    return df
