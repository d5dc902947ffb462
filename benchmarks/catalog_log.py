"""Benchmarks of the shared catalog's commit log against flushing whole snapshots, on the same bucket.

    python benchmarks/catalog_log.py                    # 100k entries, local store and SeaweedFS
    python benchmarks/catalog_log.py --entries 20000 --backends local

Rows:
  one-key flush     a one-key change committed (ours: one small commit) vs uploading the whole catalog file
                    (what a snapshot flush sends: backup + SHA-256 + upload, measured here on the same catalog)
  fresh start       a new BucketSQLite on the bucket (checkpoint copy + the commits after it) vs downloading and
                    restoring the whole catalog file
  pull 100 commits  a reader takes in 100 one-key commits of another writer vs downloading the catalog 100 times
                    (a snapshot reader downloads it whole once per change it takes in)
  log kept, pruned  what the log and its checkpoints hold in the bucket after 300 one-key commits (a checkpoint
                    every 100), with pruning after each checkpoint (retention 0) vs without; the time column is
                    the writer's time for the 300 commits
"ratio" is ours / baseline; "bytes" what our side moved; "requests" ours.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig  # noqa: E402
from bh_notebook.storage import open_bucket  # noqa: E402
from bh_notebook.storage.snapshot import backup_to_file, file_sha256  # noqa: E402
from bh_notebook.testing.counting import CountingBucket  # noqa: E402
from bh_notebook.testing.servers import SeaweedServer  # noqa: E402

NO_TIMER = SnapshotConfig(interval_seconds=0)


def timed(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fill(bh: BucketSQLite, n: int) -> None:
    rows = [(f"entry/{i:07d}", os.urandom(300).hex().encode(), 0.0, 0.0) for i in range(n)]
    with bh.connection as conn:
        conn.executemany("INSERT INTO bh_kv (key, value, created_at, updated_at) VALUES (?, ?, ?, ?)", rows)


def row(backend: str, op: str, ours: float, base: float, moved: int, requests: int) -> None:
    print(f"| {backend} | {op} | {ours * 1000:.1f} ms | {base * 1000:.1f} ms | {ours / base:.3f} | "
          f"{moved:,} B | {requests} |", flush=True)


def bench(backend: str, config: BucketConfig, entries: int, runs: int) -> None:
    counting = CountingBucket(open_bucket(config))
    work = Path(tempfile.mkdtemp(prefix="bh-bench-log-"))
    try:
        with BucketSQLite(config, NO_TIMER, bucket_client=counting) as bh:
            fill(bh, entries)
            bh.force_flush()
            size = (bh._workdir / "base.db").stat().st_size  # type: ignore[operator]
            print(f"| {backend} | catalog of {entries:,} entries | {size / 1e6:.1f} MB | | | | |", flush=True)
            raw = open_bucket(config)
            counter = iter(range(10**9))

            def ours_flush() -> None:
                bh.kv[f"entry/{next(counter) % entries:07d}"] = "changed"
                bh.force_flush()

            def snapshot_flush() -> None:
                path = work / "snap.db"
                backup_to_file(bh.connection, path)
                file_sha256(path)
                raw.upload(path, "bench/snapshot.db")

            counting.reset()
            t_ours = timed(ours_flush, runs)
            moved, requests = counting.bytes_out // runs, sum(counting.calls.values()) // runs
            t_snap = timed(snapshot_flush, runs)
            row(backend, "one-key flush", t_ours, t_snap, moved, requests)

            started: list[BucketSQLite] = []

            def ours_start() -> None:  # start only: its stop() is not part of a reader's start
                counting.reset()
                started.append(BucketSQLite(config, NO_TIMER, bucket_client=counting).start())

            def snapshot_start() -> None:
                path = work / "restore.db"
                raw.download("bench/snapshot.db", path)
                target = sqlite3.connect(":memory:")
                src = sqlite3.connect(path)
                src.backup(target)
                src.close()
                target.close()

            t_ours = timed(ours_start, runs)
            row(backend, "fresh start", t_ours, timed(snapshot_start, runs), counting.bytes_in,
                sum(counting.calls.values()))
            for store in started:
                store.stop()

            reader_counting = CountingBucket(open_bucket(config))
            with BucketSQLite(config, NO_TIMER, bucket_client=reader_counting) as reader:
                for i in range(100):
                    bh.kv[f"entry/{i:07d}"] = f"pulled {i}"
                    bh.force_flush()
                reader_counting.reset()
                t0 = time.perf_counter()
                reader.pull()
                t_pull = time.perf_counter() - t0
                assert reader.kv["entry/0000099"] == "pulled 99"
                t_snap = timed(snapshot_start, 3) * 100  # a snapshot reader downloads the whole file per change
                row(backend, "pull 100 commits", t_pull, t_snap, reader_counting.bytes_in,
                    sum(reader_counting.calls.values()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def stored_log(config: BucketConfig) -> tuple[int, int]:
    """(bytes, objects) under the log's and the checkpoints' prefixes of ``config.key``."""
    bucket = open_bucket(config)
    infos = [i for prefix in (f"{config.key}.log/", f"{config.key}.ckpt/") for i in bucket.list_info(prefix)]
    return sum(i.size for i in infos), len(infos)


def bench_pruning(backend: str, make: Callable[[], BucketConfig], entries: int) -> None:
    results = {}
    for retention in (None, 0.0):
        config = make()
        with BucketSQLite(config, NO_TIMER) as bh:
            bh.log_retention_seconds = retention
            assert bh._replica is not None
            bh._replica.retention_seconds = retention
            fill(bh, entries)
            bh.force_flush()
            t0 = time.perf_counter()
            for i in range(300):
                bh.kv[f"entry/{i:07d}"] = f"changed {i}"
                bh.force_flush()
            seconds = time.perf_counter() - t0
        results[retention] = (seconds, *stored_log(config))
    (t_keep, b_keep, n_keep), (t_prune, b_prune, n_prune) = results[None], results[0.0]
    print(f"| {backend} | 300 commits, pruning after each checkpoint (vs never) | {t_prune:.2f} s | {t_keep:.2f} s"
          f" | {t_prune / t_keep:.3f} | | |", flush=True)
    print(f"| {backend} | log in the bucket after them, pruned (vs kept) | {b_prune:,} B in {n_prune} objects | "
          f"{b_keep:,} B in {n_keep} objects | {b_prune / b_keep:.3f} | | |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--backends", default="local,seaweedfs")
    args = parser.parse_args()
    print("| backend | operation | ours | whole snapshots | ratio | bytes (ours) | requests (ours) |")
    print("|---|---|---|---|---|---|---|")
    for backend in args.backends.split(","):
        if backend == "local":
            root = Path(tempfile.mkdtemp(prefix="bh-bench-store-"))
            try:
                bench("local", BucketConfig.for_local(root), args.entries, args.runs)
                stores = iter(range(10**6))
                bench_pruning("local", lambda: BucketConfig.for_local(root / f"prune{next(stores)}"),
                              args.entries // 10)
            finally:
                shutil.rmtree(root, ignore_errors=True)
        elif backend == "seaweedfs":
            with SeaweedServer() as server:
                bench("SeaweedFS", server.config(server.new_bucket()), args.entries, args.runs)
                bench_pruning("SeaweedFS", lambda: server.config(server.new_bucket()), args.entries // 10)
        else:
            raise SystemExit(f"unknown backend {backend!r}")


if __name__ == "__main__":
    main()
