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


def _default_progress(label: str, total: int | None) -> object:
    """Long transfers show a bar (a widget in a notebook, text in a terminal) after about a second."""
    from .notebook.progress import Progress

    return Progress(label, total)


# The core never imports the notebook layer; the package wires the default progress bar in from the top.
BucketSQLite.progress_factory = staticmethod(_default_progress)

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
    "browse",
    "current",
    "errors",
]


def browse(bh: BucketSQLite | None = None, **kwargs: object) -> object:
    """An ipywidgets Browser over ``bh`` (default: the store the magics use, else a new one from the environment)."""
    from .notebook.browser import browse as _browse

    return _browse(bh, **kwargs)


_current: BucketSQLite | None = None


def current() -> BucketSQLite:
    """The live store: the one the magics use in this kernel (never reconnected), else one started once from the
    environment (``BUCKETHEAD_*``, else the local store) and reused."""
    global _current
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        shell = None
    else:
        shell = get_ipython()
    magics = getattr(shell, "_bh_magics", None)
    if magics is not None:
        return magics.bh
    if _current is None or not _current.started:
        _current = BucketSQLite().start()
    return _current


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext bh_notebook``: register the %bh_* magics."""
    from .notebook.magics import BHMagics

    magics = BHMagics(shell=ipython)
    ipython.register_magics(magics)  # type: ignore[attr-defined]
    ipython._bh_magics = magics  # type: ignore[attr-defined]  # kept for unload


def unload_ipython_extension(ipython: object) -> None:
    """``%unload_ext bh_notebook``: flush and close the store."""
    magics = getattr(ipython, "_bh_magics", None)
    if magics is not None:
        magics.close()
        del ipython._bh_magics  # type: ignore[attr-defined]
