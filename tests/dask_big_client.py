"""The client side of the >= 4 GiB Dask runs in ``tests/test_dask.py``, in a process of its own so that its peak
RSS (``ru_maxrss``) is the client's alone.

``python tests/dask_big_client.py SCHEDULER_ADDRESS GIB`` with the bucket in ``BUCKETHEAD_BUCKET__*``: generates a
frame of at least GIB GiB on the workers, puts it, reads it back as a dask frame and compares counts, sums and a
groupby with the same computation by dask alone on the generated data; then the same for a dask array of GIB GiB.
Prints one JSON line: what was compared, the phases' seconds and the peak RSS.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import threading
import time
from typing import Any

import numpy as np
import pandas as pd

ROWS_PER_PART = 2**21  # 28 bytes a row: 56 MiB a partition
PAGE = os.sysconf("SC_PAGE_SIZE")


def _part(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = ROWS_PER_PART
    return pd.DataFrame({"id": np.arange(seed * n, (seed + 1) * n, dtype="i8"), "g": rng.integers(0, 16, n),
                         "x": rng.normal(size=n), "y": rng.random(n, dtype="f4")})


class _Peak:
    """The highest RSS of this process, sampled every 20 ms, per phase."""

    def __init__(self) -> None:
        self.phases: dict[str, int] = {}
        self.now = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.now = max(self.now, self.rss())

    def end(self, phase: str) -> None:
        self.phases[phase] = max(self.now, self.rss())
        self.now = 0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _summary(dask: Any, ddf: Any) -> dict[str, Any]:
    """Count, sums and a groupby, in one pass over the data."""
    n, sx, sid, means = dask.compute(ddf.shape[0], ddf.x.sum(), ddf.id.sum(), ddf.groupby("g").x.mean())
    return {"rows": int(n), "sum_x": float(sx), "sum_id": int(sid),
            "mean_x_by_g": {int(k): float(v) for k, v in means.sort_index().items()}}


def main(address: str, gib: float) -> dict[str, Any]:
    import dask
    import dask.array as da
    import dask.dataframe as dd
    import distributed

    from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig

    out: dict[str, Any] = {"seconds": {}}
    seconds = out["seconds"]
    peak = _Peak()
    target = int(gib * 2**30)
    with distributed.Client(address) as client, \
            BucketSQLite(BucketConfig.from_env(), SnapshotConfig(interval_seconds=0)) as bh:
        client.wait_for_workers(2)
        n_parts = math.ceil(target / (ROWS_PER_PART * 28))
        ddf = dd.from_map(_part, range(n_parts), meta=_part(0).iloc[:0], enforce_metadata=False)
        t = time.perf_counter()
        v = bh.frames.put("big", ddf)
        seconds["frame put"] = time.perf_counter() - t
        peak.end("frame put")
        out["frame"] = {"parts": v.parts, "rows": v.n_rows, "stored bytes": v.nbytes,
                        "memory bytes": n_parts * ROWS_PER_PART * 28}
        t = time.perf_counter()
        out["ours"] = _summary(dask, bh.frames.get("big", to="dask"))
        seconds["frame get + count, sums, groupby"] = time.perf_counter() - t
        peak.end("frame get + count, sums, groupby")
        t = time.perf_counter()
        out["dask alone"] = _summary(dask, ddf)
        seconds["dask alone: generate + the same"] = time.perf_counter() - t
        peak.end("dask alone: generate + the same")

        cols = 16
        rows = target // (8 * cols)
        x = da.random.default_rng(7).normal(size=(rows, cols), chunks=(2**18, cols))  # 32 MiB blocks
        t = time.perf_counter()
        a = bh.arrays.put("big_array", x)
        seconds["array put"] = time.perf_counter() - t
        peak.end("array put")
        out["array"] = {"bytes": a.nbytes, "shape": list(a.shape)}
        t = time.perf_counter()
        got = bh.arrays.get("big_array", to="dask")
        ours_sums, ours_first = dask.compute(got.sum(axis=0), got[rows - 5:])
        seconds["array get + column sums"] = time.perf_counter() - t
        peak.end("array get + column sums")
        want_sums, want_first = dask.compute(x.sum(axis=0), x[rows - 5:])
        out["array sums equal"] = bool(np.allclose(ours_sums, want_sums, rtol=1e-12, atol=1e-6))
        out["array last rows equal"] = bool(np.array_equal(ours_first, want_first))
        out["leftover streams"] = bh.bucket.list_keys(bh.files.incoming_prefix)
    peak.stop()
    out["peak rss bytes by phase"] = peak.phases
    out["peak rss bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], float(sys.argv[2]))))
