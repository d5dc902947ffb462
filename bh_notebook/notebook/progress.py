"""Progress for long transfers: a bar with bytes and rate that appears once a transfer has run ~1 s.

In a notebook (a kernel with a front end) it is an ipywidgets bar; elsewhere a one-line text bar on stderr. Both
end with a one-line summary. Short transfers show nothing at all.
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
    """A progress callback: call it with byte counts as they move; ``close()`` ends it with a summary line.

    ``total`` may be None when unknown. Nothing is shown for transfers that finish within ``show_after`` seconds.
    """

    def __init__(self, label: str, total: int | None, *, show_after: float = SHOW_AFTER,
                 widget: bool | None = None, stream: Any = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.show_after = show_after
        self._widget_mode = in_notebook() if widget is None else widget
        self._stream = stream if stream is not None else sys.stderr
        self._started = time.monotonic()
        self._shown = False
        self._last_draw = 0.0
        self._lock = threading.Lock()
        self._bar: Any = None
        self._text: Any = None
        self.summary: str | None = None

    def __call__(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now - self._started < self.show_after:
                return
            if not self._shown:
                self._show()
            if now - self._last_draw >= 0.1:
                self._draw(now)

    def _rate(self, now: float) -> float:
        return self.done / max(now - self._started, 1e-9)

    def _show(self) -> None:
        self._shown = True
        if self._widget_mode:
            import ipywidgets as widgets
            from IPython.display import display

            self._bar = widgets.FloatProgress(min=0.0, max=1.0, value=0.0, description=self.label[:20],
                                              layout=widgets.Layout(width="50%"))
            self._text = widgets.Label()
            box = widgets.HBox([self._bar, self._text])
            box.add_class("bh-progress")
            display(box)

    def _line(self, now: float) -> str:
        rate = f"{human_bytes(self._rate(now))}/s"
        if self.total:
            pct = min(1.0, self.done / self.total)
            return f"{human_bytes(self.done)} / {human_bytes(self.total)} ({pct:.0%}) at {rate}"
        return f"{human_bytes(self.done)} at {rate}"

    def _draw(self, now: float) -> None:
        self._last_draw = now
        line = self._line(now)
        if self._widget_mode:
            if self.total:
                self._bar.value = min(1.0, self.done / self.total)
            self._text.value = line
        else:
            width = 30
            filled = int(width * min(1.0, self.done / self.total)) if self.total else 0
            bar = "#" * filled + "-" * (width - filled) if self.total else ""
            self._stream.write(f"\r{self.label} [{bar}] {line}   ")
            self._stream.flush()

    def close(self) -> None:
        """End the bar with a one-line summary (only when it was shown)."""
        with self._lock:
            now = time.monotonic()
            self.summary = (f"{self.label}: {human_bytes(self.done)} in {human_seconds(now - self._started)} "
                            f"({human_bytes(self._rate(now))}/s)")
            if not self._shown:
                return
            if self._widget_mode:
                if self.total:
                    self._bar.value = 1.0
                self._bar.bar_style = "success"
                self._text.value = self.summary
            else:
                self._stream.write("\r" + self.summary + " " * 20 + "\n")
                self._stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_factory(label: str, total: int | None) -> Progress:
    """What BucketSQLite.progress_factory is set to when the extension is loaded."""
    return Progress(label, total)
