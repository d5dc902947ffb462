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


# One rule for times everywhere they are shown (listings, history, status, previews): the local time, with its
# zone named, so a frame stored a minute ago never looks hours away.


def when(ts: float | None, *, seconds: bool = True) -> str:
    """Epoch seconds as local time with its zone: '2026-11-21 17:30:45 EST'."""
    if ts is None:
        return "-"
    return local_time(ts).strftime("%Y-%m-%d %H:%M:%S %Z" if seconds else "%Y-%m-%d %H:%M %Z")


def local_time(ts: float) -> dt.datetime:
    """Epoch seconds as an aware datetime in the local zone (the zone's offset at that moment)."""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).astimezone(local_zone())


def local_zone() -> dt.tzinfo:
    """The machine's zone, daylight saving included (``TZ`` is honoured)."""
    from dateutil.tz import tzlocal

    return tzlocal()


def timestamps(values: Any) -> Any:
    """A pandas column of epoch seconds as local, zone-aware times to the second (NaT where missing)."""
    import pandas as pd

    return pd.to_datetime(values, unit="s", utc=True).dt.floor("s").dt.tz_convert(local_zone())
