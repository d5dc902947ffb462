"""Progress for long transfers, drawn by tqdm: its notebook bar in a kernel, its text bar on stderr elsewhere.

A bar appears only once a transfer has run ~1 s (tqdm's ``delay``); short transfers show nothing at all.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from .display import human_bytes, human_seconds

#: A transfer shows progress once it has run this long.
SHOW_AFTER = 1.0


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where widgets can be displayed)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class Progress:
    """A progress callback: call it with byte counts as they move; ``close()`` ends the bar.

    ``total`` may be None when unknown. ``summary`` holds a one-line account of the transfer after ``close()``.
    """

    def __init__(self, label: str, total: int | None, *, show_after: float = SHOW_AFTER,
                 widget: bool | None = None, stream: Any = None) -> None:
        notebook = widget if widget is not None else in_notebook()
        if notebook:
            from tqdm.notebook import tqdm as bar_class
        else:
            from tqdm import tqdm as bar_class
        self.label = label
        self.total = total
        self.done = 0
        self.summary: str | None = None
        self._started = time.monotonic()
        self._lock = threading.Lock()  # transfers report from several threads
        shape = ("{l_bar}{bar}| {n_fmt}B/{total_fmt}B [{elapsed}<{remaining}, {rate_fmt}]" if total
                 else "{desc}: {n_fmt}B [{elapsed}, {rate_fmt}]")
        # tqdm's notebook bar puts a desc given to its constructor into an HTML widget as it is; set later, it is
        # escaped like the rest of the line (labels hold file names, which come from anyone writing the bucket).
        self._bar = bar_class(total=total, desc=None if notebook else label, unit="B", unit_scale=True,
                              unit_divisor=1024,
                              bar_format=shape, delay=show_after, mininterval=0.1, leave=True, dynamic_ncols=True,
                              file=stream if stream is not None else sys.stderr)
        self._bar.desc = label

    def __call__(self, n: int) -> None:
        with self._lock:
            self.done += n
            self._bar.update(n)

    def close(self) -> None:
        """End the bar (it stays, complete, when it was shown)."""
        with self._lock:
            took = time.monotonic() - self._started
            self.summary = (f"{self.label}: {human_bytes(self.done)} in {human_seconds(took)} "
                            f"({human_bytes(self.done / max(took, 1e-9))}/s)")
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_factory(label: str, total: int | None) -> Progress:
    """What BucketSQLite.progress_factory is set to when the extension is loaded."""
    return Progress(label, total)
