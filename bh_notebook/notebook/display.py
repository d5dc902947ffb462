"""Small formatting helpers shared by the magics and the browser."""

from __future__ import annotations

import datetime as dt
from typing import Any


def human_bytes(n: int | float | None) -> str:
    """1536 -> '1.5 KiB'."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - loop always returns


def human_seconds(s: float) -> str:
    """0.0123 -> '12 ms', 3.2 -> '3.20 s'."""
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def when(ts: float | None) -> str:
    """Epoch seconds as local 'YYYY-MM-DD HH:MM:SS'."""
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def shape_text(kind: str, info: Any) -> str:
    """'1,000 x 7' for frames, '(3, 4) float64' for arrays, '' otherwise."""
    if kind == "frame":
        return f"{info.n_rows:,} x {len(info.columns)}"
    if kind == "array":
        return f"{tuple(info.shape)} {info.dtype}"
    return ""
