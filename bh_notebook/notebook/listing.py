"""What the magics and the browser both show: the stores by kind, and the listing of everything stored.

A module of its own so that neither UI imports the other.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from ..database import BucketSQLite
from .display import shape_text, timestamps


def versioned_stores(bh: BucketSQLite) -> dict[str, Any]:
    """The versioned stores by the kind names the listing shows: frame, array, file (kv has no versions)."""
    return {"frame": bh.frames, "array": bh.arrays, "file": bh.named_files}


#: The kinds by the plural names the magics' and the command line's ``--kind`` take.
KINDS = ("frames", "arrays", "files", "kv")


def kinds_holding(bh: BucketSQLite, name: str) -> list[str]:
    """The kinds (plural names, see ``KINDS``) that hold an entry or key called ``name``, from the catalog."""
    found = [kind for kind, store in zip(KINDS, versioned_stores(bh).values()) if name in store]
    if name in bh.kv:
        found.append("kv")
    return found


def listing(bh: BucketSQLite, pattern: str | None = None, kind: str | None = None, prefix: str = "") -> Any:
    """What is stored, newest first, as a DataFrame: name, kind, version, size, shape, modified, note."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for k, store in versioned_stores(bh).items():
        if kind not in (None, k + "s"):
            continue
        for v in store.latest():
            rows.append({"name": v.name, "kind": k, "version": v.version, "size": v.nbytes,
                         "shape": shape_text(k, v), "modified": v.created_at,
                         "note": v.metadata.get("note", "")})
    if kind in (None, "kv"):
        for key in bh.kv.keys(prefix):
            data = bh.kv.get_bytes(key) or b""
            rows.append({"name": key, "kind": "kv", "version": None, "size": len(data), "shape": "",
                         "modified": bh.kv.updated_at(key), "note": ""})
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
