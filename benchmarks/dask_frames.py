"""Dask frames through bh_notebook against dask's own Parquet I/O on the same SeaweedFS, and append against a put.

    python benchmarks/dask_frames.py                      # 20M rows (~0.8 GB in memory) on 2 workers; 10M-row append
    python benchmarks/dask_frames.py --rows 2000000 --append-rows 1000000    # a smoke run

Rows (medians of --runs; "ratio" is ours / baseline, below 1 means we are faster):
  dask put        bh.frames.put(name, ddf): the workers write, hash and upload the parts, the client commits one
                  version; vs ddf.to_parquet("s3://...") through s3fs. Both generate the rows on the workers.
  dask get+sum    bh.frames.get(name, to="dask") and a sum of one column (only its chunks are fetched, verified);
                  vs dd.read_parquet(...) and the same sum
  dask groupby    the same, with a groupby-mean over two columns
  client peak     how far the client process's RSS rose during our put and get (the rows never pass through it)
  append 1%       frames.append of 1% new rows to a stored frame vs putting the whole frame: time and bytes sent
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig  # noqa: E402
from bh_notebook.storage import open_bucket  # noqa: E402
from bh_notebook.testing.counting import CountingBucket  # noqa: E402
from bh_notebook.testing.servers import ACCESS_KEY, SECRET_KEY, SeaweedServer  # noqa: E402
from catalog_log import timed  # noqa: E402
from run import PeakRSS  # noqa: E402

NO_TIMER = SnapshotConfig(interval_seconds=0)
ROWS_PER_PARTITION = 1_000_000


def make_partition(i: int) -> pd.DataFrame:
    rng = np.random.default_rng(i)
    n = ROWS_PER_PARTITION
    return pd.DataFrame({"id": np.arange(i * n, (i + 1) * n), "g": rng.integers(0, 100, n),
                         "x": rng.normal(size=n), "y": rng.normal(size=n), "z": rng.integers(0, 10**9, n)})


def row(backend: str, op: str, ours: float, base: float, note: str = "") -> None:
    print(f"| {backend} | {op} | {ours:.2f} s | {base:.2f} s | {ours / base:.2f} | {note} |", flush=True)


def bench_dask(rows: int, runs: int) -> None:
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    partitions = max(1, rows // ROWS_PER_PARTITION)
    with SeaweedServer() as server, LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                                 memory_limit="1GiB", dashboard_address=None) as cluster, \
            Client(cluster):
        bucket = server.new_bucket()
        config = server.config(bucket)
        storage = {"key": ACCESS_KEY, "secret": SECRET_KEY, "client_kwargs": {"endpoint_url": server.endpoint_url}}
        ddf = dd.from_map(make_partition, list(range(partitions)))
        nbytes = int(ddf.memory_usage(deep=True).sum().compute())
        print(f"| SeaweedFS | dataset | {partitions * ROWS_PER_PARTITION:,} rows, {nbytes / 2**30:.2f} GiB in memory, "
              f"{partitions} partitions | | | |", flush=True)
        with BucketSQLite(config, NO_TIMER) as bh:
            counter = iter(range(10**6))
            peaks: list[int] = []

            def ours_put() -> None:
                with PeakRSS() as p:
                    bh.frames.put(f"bench{next(counter)}", ddf)
                peaks.append(p.added)

            def dask_put() -> None:
                ddf.to_parquet(f"s3://{bucket}/dask-bench-{time.monotonic_ns()}/", storage_options=storage,
                               write_index=False)

            t_dask = timed(dask_put, runs)
            t_ours = timed(ours_put, runs)
            row("SeaweedFS", "dask put", t_ours, t_dask)
            path = f"s3://{bucket}/dask-bench-read/"
            ddf.to_parquet(path, storage_options=storage, write_index=False)

            def ours_sum() -> None:
                with PeakRSS() as p:
                    bh.frames.get("bench0", to="dask", columns=["x"]).x.sum().compute()
                peaks.append(p.added)

            def dask_sum() -> None:
                dd.read_parquet(path, columns=["x"], storage_options=storage).x.sum().compute()

            row("SeaweedFS", "dask get + sum of 1 column", timed(ours_sum, runs), timed(dask_sum, runs))

            def ours_groupby() -> None:
                bh.frames.get("bench0", to="dask", columns=["g", "x", "y"]).groupby("g")[["x", "y"]].mean().compute()

            def dask_groupby() -> None:
                dd.read_parquet(path, columns=["g", "x", "y"], storage_options=storage).groupby("g")[
                    ["x", "y"]].mean().compute()

            row("SeaweedFS", "dask get + groupby-mean", timed(ours_groupby, runs), timed(dask_groupby, runs))
            ours = bh.frames.get("bench0", to="dask", columns=["g", "x"]).groupby("g").x.sum().compute()
            theirs = dd.read_parquet(path, columns=["g", "x"], storage_options=storage).groupby("g").x.sum().compute()
            assert np.allclose(ours.sort_index().to_numpy(), theirs.sort_index().to_numpy())
            print(f"| SeaweedFS | client RSS rise, ours (max over puts and gets) | {max(peaks) / 2**20:.0f} MiB | | | "
                  f"the dataset is {nbytes / 2**20:.0f} MiB |", flush=True)


def bench_append(backend: str, config: BucketConfig, rows: int, runs: int) -> None:
    frame = pd.concat([make_partition(i) for i in range(max(1, rows // ROWS_PER_PARTITION))], ignore_index=True)
    extra = make_partition(10**6).iloc[: len(frame) // 100].reset_index(drop=True)
    counting = CountingBucket(open_bucket(config))
    with BucketSQLite(config, NO_TIMER, bucket_client=counting) as bh:
        counter = iter(range(10**6))

        def full_put() -> None:
            bh.frames.put(f"full{next(counter)}", frame.assign(z=frame.z + next(counter)))  # new bytes each time

        counting.reset()
        t_put = timed(full_put, runs)
        put_bytes = counting.bytes_out // runs
        bh.frames.put("log", frame)
        names = iter(range(10**6))

        def append() -> None:
            bh.frames.append("log", extra.assign(z=extra.z + next(names)))

        counting.reset()
        t_append = timed(append, runs)
        append_bytes = counting.bytes_out // runs
        row(backend, f"append 1% ({len(extra):,} rows) to {len(frame):,} rows, vs a put", t_append, t_put,
            f"bytes sent {append_bytes:,} vs {put_bytes:,} ({append_bytes / put_bytes:.2%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--append-rows", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print("| backend | operation | ours | baseline | ratio | note |")
    print("|---|---|---|---|---|---|")
    bench_dask(args.rows, args.runs)
    with tempfile.TemporaryDirectory(prefix="bh-bench-append-") as root:
        bench_append("local", BucketConfig.for_local(root), args.append_rows, args.runs)
    with SeaweedServer() as server:
        bench_append("SeaweedFS", server.config(server.new_bucket()), args.append_rows, args.runs)


if __name__ == "__main__":
    main()
