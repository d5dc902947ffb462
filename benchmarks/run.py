"""Benchmarks: bh_notebook's frames and arrays against baselines run in the same process, interleaved.

    python benchmarks/run.py              # the default sizes (10M-row frame, 1 GB array), ~5 minutes
    python benchmarks/run.py --quick      # 1M rows, 100 MB: a smoke run
    python benchmarks/run.py --backends local
    python benchmarks/run.py --wide --backends local   # only the wide frames: 2k, 5k, 20k columns

Backends: the local directory store and SeaweedFS (started here on loopback). Baselines:
  frames  raw pandas/pyarrow Parquet (+ boto3 put_object / get_object on S3), ArcticDB (LMDB locally, its S3
          backend on the same SeaweedFS), IPython's %store (local only);
  arrays  np.save / np.load to a file locally, boto3 upload_fileobj / download_fileobj on S3.
Every figure is the median of --runs runs, each measured after os.sync() (untimed). "ratio" is ours / baseline (below 1 means we are faster). "moved" is
bytes sent to or fetched from the store by our side; "peak" is how far the process's RSS rose during our call.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig  # noqa: E402
from bh_notebook.storage import open_bucket  # noqa: E402
from bh_notebook.testing.counting import CountingBucket  # noqa: E402
from bh_notebook.testing.servers import ACCESS_KEY, SECRET_KEY, SeaweedServer  # noqa: E402

MB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- measuring ------------------------------------------------------------------------------------


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Samples RSS every 2 ms in a thread; ``.added`` is the peak above the starting value."""

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.start = rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())

    @property
    def added(self) -> int:
        return self.peak - self.start


@dataclass
class Row:
    backend: str
    operation: str
    size: str
    ours: float
    baseline_name: str
    baseline: float | None
    moved: int | None
    peak: int | None
    note: str = ""


#: Bytes of memory touched (and freed) before each measurement: see ``timed``. Set per section from its data size.
WARM_BYTES = 0


def warm_memory(n: int) -> None:
    """Touch ``n`` bytes of fresh memory, then free them. On a virtual machine that gives memory freed for a few
    seconds back to its host (free page reporting), touching it again costs about 2.4 s per GiB here, against 0.12 s
    for memory the guest still holds: whichever measurement allocates first would pay for the others."""
    if n > 0:
        block = np.empty(n, dtype=np.uint8)
        block[::PAGE] = 1
        del block


def timed(fn: Callable[[], Any]) -> tuple[float, Any, int]:
    """Seconds, result and peak RSS added of ``fn()``, each measurement starting from the same state, untimed:
    dirty pages that earlier steps left (np.save's file, a server's writes) written out (the kernel writing them
    back meanwhile would slow down whichever call came next), and ``WARM_BYTES`` of memory touched
    (``warm_memory``)."""
    if hasattr(os, "sync"):
        os.sync()
    warm_memory(WARM_BYTES)
    with PeakRSS() as mem:
        t = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - t
    return elapsed, result, mem.added


def fresh_get_peak(config: BucketConfig, name: str, tmp: Path) -> int:
    """How far RSS rises during ``bh.frames.get(name)`` in a new process (the store opened, pandas and pyarrow
    imported, before the call): the cost of a get alone, not what this process's allocators kept from earlier
    steps."""
    import pickle
    import subprocess

    saved = tmp / "config.pickle"
    saved.write_bytes(pickle.dumps(config))
    script = (
        "import gc, pickle, sys; sys.path.insert(0, sys.argv[1]); import run\n"
        "config = pickle.loads(open(sys.argv[2], 'rb').read())\n"
        "run.BucketSQLite.progress_factory = None\n"
        "with run.BucketSQLite(config, run.SnapshotConfig(interval_seconds=0)) as bh:\n"
        "    bh.frames.schema(sys.argv[3]); gc.collect()\n"
        "    with run.PeakRSS() as mem:\n"
        "        got = bh.frames.get(sys.argv[3])\n"
        "    print(mem.added)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(Path(__file__).resolve().parent), str(saved), name],
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1])


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def hash_like_a_put(data: memoryview, chunk_size: int) -> None:
    """The hashing a put of ``data`` must do: the whole SHA-256 (the blob's key) and the SHA-256 of each chunk,
    side by side in two threads as the put does."""
    from bh_notebook.interfaces.files import _ChunkHasher

    chunks = _ChunkHasher(chunk_size)
    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(chunks.update, data)
        hashlib.sha256(data).hexdigest()
        done.result()


def write_and_fsync(data: memoryview, path: Path) -> None:
    """Write ``data`` to a new file and make it durable: what a local put must do besides hashing."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# -- data -----------------------------------------------------------------------------------------


def make_frame(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(42)
    return pd.DataFrame({
        "id": np.arange(n, dtype=np.int64),
        "a": rng.normal(size=n),
        "b": rng.normal(size=n),
        "c": rng.normal(size=n),
        "ts": pd.Timestamp("2020-01-01") + pd.to_timedelta(np.arange(n) * 997, unit="ms"),
        "region": pd.Series(rng.choice([f"region-{i:02d}" for i in range(20)], n)).astype(str),
        "user": pd.Series(np.char.add("user-", rng.integers(0, 10**9, n).astype(str))).astype(str),
    })


# -- baselines --------------------------------------------------------------------------------------


class StoreMagic:
    """IPython's %store (pickleshare) in a throwaway profile."""

    def __init__(self, tmp: Path) -> None:
        os.environ["IPYTHONDIR"] = str(tmp / "ipython")
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config

        c = Config()
        c.HistoryManager.enabled = False
        self.shell = InteractiveShell.instance(config=c)
        self.shell.run_line_magic("load_ext", "storemagic")

    def put(self, df: pd.DataFrame) -> None:
        import contextlib

        self.shell.user_ns["df"] = df
        with contextlib.redirect_stdout(io.StringIO()):  # %store prints "Stored 'df'" every time
            self.shell.run_line_magic("store", "df")

    def get(self) -> pd.DataFrame:
        self.shell.user_ns.pop("df", None)
        self.shell.db.cache.clear()  # otherwise pickleshare returns the cached object without reading
        self.shell.run_line_magic("store", "-r df")
        return self.shell.user_ns["df"]


def arctic_library(uri: str) -> Any:
    try:
        from arcticdb import Arctic
    except ImportError:
        return None
    ac = Arctic(uri)
    return ac.get_library("bench", create_if_missing=True)


# -- the runs ---------------------------------------------------------------------------------------


def bench_backend(name: str, args: argparse.Namespace, rows: list[Row], tmp: Path,
                  server: SeaweedServer | None) -> None:
    if server is None:
        config = BucketConfig.for_local(tmp / "bh-store")
        client = None
        bucket = None
    else:
        bucket = server.new_bucket("bench")
        config = server.config(bucket)
        client = server.client()
    counting = CountingBucket(open_bucket(config))
    BucketSQLite.progress_factory = None  # measure transfers, not progress bars
    bh = BucketSQLite(config, SnapshotConfig(interval_seconds=0), bucket_client=counting).start()
    runs = args.runs

    # ---------------- frames ----------------
    df = make_frame(args.rows)
    size = f"{args.rows / 1e6:g}M rows"
    print(f"[{name}] frame: {args.rows:,} rows, {df.memory_usage(deep=True).sum() / MB:,.0f} MB in memory", flush=True)
    global WARM_BYTES
    WARM_BYTES = int(1.25 * df.memory_usage(deep=True).sum())  # (a get makes the frame again, and a bit more)
    arctic = None
    if not args.no_arctic:
        if server is None:
            arctic = arctic_library(f"lmdb://{tmp / 'arctic-lmdb'}?map_size=20GB")
        else:
            host, port = server.endpoint_url.removeprefix("http://").split(":")
            arctic_bucket = server.new_bucket("arctic")
            arctic = arctic_library(f"s3://{host}:{arctic_bucket}?port={port}&access={ACCESS_KEY}&secret={SECRET_KEY}")
        if arctic is None:
            print("  (arcticdb is not installed: pip install -e '.[bench]' in a fresh venv; skipping it)")
    store = StoreMagic(tmp) if server is None and not args.no_store else None

    t: dict[str, list[float]] = {}
    peaks: dict[str, list[int]] = {}
    moved: dict[str, int] = {}

    def record(key: str, seconds: float, peak: int | None = None) -> None:
        t.setdefault(key, []).append(seconds)
        if peak is not None:
            peaks.setdefault(key, []).append(peak)

    raw_path = tmp / "raw.parquet"
    for i in range(runs):
        df_i = df.copy(deep=False)
        # A fresh name per run so each put writes a new version (re-puts are measured separately below).
        frame_i = df_i.assign(id=df_i["id"] + i)
        counting.reset()
        s, v, p = timed(lambda: bh.frames.put(f"bench/frame{i}", frame_i))
        record("ours_put", s, p)
        moved["frame_put"] = counting.bytes_out
        blob_size = v.nbytes

        if client is None:
            s, _, _ = timed(lambda: frame_i.to_parquet(raw_path))
        else:
            def raw_put() -> None:
                buf = io.BytesIO()
                frame_i.to_parquet(buf)
                client.put_object(Bucket=bucket, Key=f"raw/frame{i}.parquet", Body=buf.getvalue())
            s, _, _ = timed(raw_put)
        record("raw_put", s)
        if arctic is not None:
            s, _, _ = timed(lambda: arctic.write(f"frame{i}", frame_i))
            record("arctic_put", s)
        if store is not None:
            s, _, _ = timed(lambda: store.put(frame_i))
            record("store_put", s)

        counting.reset()
        s, got, p = timed(lambda: bh.frames.get(f"bench/frame{i}"))
        record("ours_get", s, p)
        moved["frame_get"] = counting.bytes_in
        if i == 0:
            pd.testing.assert_frame_equal(got, frame_i)
        del got
        if client is None:
            s, _, _ = timed(lambda: pd.read_parquet(raw_path))
        else:
            s, _, _ = timed(lambda: pd.read_parquet(io.BytesIO(
                client.get_object(Bucket=bucket, Key=f"raw/frame{i}.parquet")["Body"].read())))
        record("raw_get", s)
        if arctic is not None:
            s, _, _ = timed(lambda: arctic.read(f"frame{i}").data)
            record("arctic_get", s)
        if store is not None:
            s, _, _ = timed(store.get)
            record("store_get", s)

        counting.reset()
        s, sub, _ = timed(lambda: bh.frames.get(f"bench/frame{i}", columns=["a", "region"]))
        record("ours_cols", s)
        moved["frame_cols"] = counting.bytes_in
        if client is None:
            s, _, _ = timed(lambda: pd.read_parquet(raw_path, columns=["a", "region"]))
        else:
            s, _, _ = timed(lambda: pd.read_parquet(io.BytesIO(
                client.get_object(Bucket=bucket, Key=f"raw/frame{i}.parquet")["Body"].read()), columns=["a", "region"]))
        record("raw_cols", s)
        if i < runs - 1:  # (the last one stays: the re-put below puts it again)
            del frame_i
        del df_i
        gc.collect()
        print(f"  run {i + 1}/{runs}: put {t['ours_put'][-1]:.2f}s get {t['ours_get'][-1]:.2f}s", flush=True)

    # What reading 2 of 7 columns must fetch: the footer plus those columns' chunks.
    import pyarrow as pa
    import pyarrow.parquet as pq

    blob = bh.files.get(bh.frames.info("bench/frame0").bh_key)
    md = pq.ParquetFile(pa.BufferReader(blob)).metadata
    footer = int.from_bytes(blob[-8:-4], "little") + 8
    names = [md.schema.column(j).name for j in range(md.num_columns)]
    needed = footer + sum(md.row_group(g).column(j).total_compressed_size
                          for g in range(md.num_row_groups) for j, n in enumerate(names) if n in ("a", "region"))
    del blob

    def add(op: str, ours: str, base: str, base_name: str, mv: str | None, note: str = "") -> None:
        if base not in t:
            return
        rows.append(Row(name, op, size, median(t[ours]), base_name, median(t[base]),
                        moved.get(mv) if mv else None, int(median(peaks[ours])) if ours in peaks else None, note))

    add("frame put", "ours_put", "raw_put", "to_parquet" + (" + put_object" if client else ""), "frame_put",
        f"blob {blob_size / MB:.0f} MB")
    add("frame put", "ours_put", "arctic_put", "ArcticDB " + ("LMDB" if client is None else "S3"), "frame_put")
    add("frame put", "ours_put", "store_put", "%store", "frame_put")
    add("frame get", "ours_get", "raw_get", ("get_object + " if client else "") + "read_parquet", "frame_get")
    add("frame get", "ours_get", "arctic_get", "ArcticDB " + ("LMDB" if client is None else "S3"), "frame_get")
    add("frame get", "ours_get", "store_get", "%store -r", "frame_get")
    bh.force_flush()  # (the catalog in the bucket, for the process below)
    frame_mb = df.memory_usage(deep=True).sum()
    alone = [fresh_get_peak(config, "bench/frame0", tmp) for _ in range(runs)]
    rows.append(Row(name, "frame get, peak in a fresh process", size, median(t["ours_get"]), "-", None, None,
                    int(median(alone)), f"{median(alone) / frame_mb:.2f}x the frame's {frame_mb / MB:,.0f} MiB "
                    f"(in this process: {median(peaks['ours_get']) / frame_mb:.2f}x)"))
    add("frame get 2/7 cols", "ours_cols", "raw_cols", "read_parquet(columns=)", "frame_cols",
        f"fetched {moved['frame_cols'] / needed:.3f}x footer+chunks, {moved['frame_cols'] / blob_size:.2f}x blob")

    # Re-put of unchanged data: a new object with the same contents (encoded and hashed again), then the very
    # frame this process put, and a frame it got (known from its fingerprint).
    put_s = median(t["ours_put"])
    same = df.assign(id=df["id"] + 0)
    counting.reset()
    s, _, _ = timed(lambda: bh.frames.put("bench/frame0", same))
    rows.append(Row(name, "frame re-put, same contents (new object)", size, s, "frame put", put_s,
                    counting.bytes_out, None, f"{counting.writes} PUT requests"))
    counting.reset()
    s, _, _ = timed(lambda: bh.frames.put(f"bench/frame{runs - 1}", frame_i))
    rows.append(Row(name, "frame re-put, the frame this process put", size, s, "frame put", put_s,
                    counting.bytes_out, None, f"{counting.writes} PUT requests"))
    got_frame = bh.frames.get("bench/frame0")
    counting.reset()
    s, _, _ = timed(lambda: bh.frames.put("bench/frame0", got_frame))
    rows.append(Row(name, "frame re-put, a frame this process got", size, s, "frame put", put_s,
                    counting.bytes_out, None, f"{counting.writes} PUT requests"))
    del df, same, got_frame, frame_i
    gc.collect()

    # ---------------- arrays ----------------
    n = args.array_mb * MB // 8
    arr = np.random.default_rng(7).random(n)
    WARM_BYTES = int(1.25 * arr.nbytes)
    asize = f"{arr.nbytes / 1024**3:g} GiB" if arr.nbytes >= 1024**3 else f"{arr.nbytes / MB:g} MiB"
    print(f"[{name}] array: {arr.nbytes / MB:,.0f} MB float64", flush=True)
    npy = tmp / "raw.npy"
    buf = io.BytesIO()
    np.save(buf, arr)
    npy_bytes = buf.getbuffer()
    ta: dict[str, list[float]] = {}
    pa_: dict[str, list[int]] = {}
    for i in range(runs):
        if i == 0:
            arr_i = arr
        else:  # new contents, so every run really uploads
            arr_i = arr.copy()
            arr_i[0] = -float(i)
        counting.reset()
        s, v, p = timed(lambda: bh.arrays.put(f"bench/array{i}", arr_i))
        ta.setdefault("put", []).append(s)
        pa_.setdefault("put", []).append(p)
        moved["arr_put"] = counting.bytes_out
        if client is None:
            s, _, _ = timed(lambda: np.save(npy, arr_i))
        else:
            s, _, _ = timed(lambda: client.upload_fileobj(io.BytesIO(npy_bytes), bucket, f"raw/array{i}.npy"))
        ta.setdefault("raw_put", []).append(s)
        if client is None:  # what a put cannot skip, each measured on its own
            s, _, _ = timed(lambda: hash_like_a_put(npy_bytes, bh.files.chunk_size))
            ta.setdefault("hash", []).append(s)
            s, _, _ = timed(lambda: write_and_fsync(npy_bytes, tmp / "raw-synced.npy"))
            ta.setdefault("write_fsync", []).append(s)

        counting.reset()
        s, got, p = timed(lambda: bh.arrays.get(f"bench/array{i}"))
        ta.setdefault("get", []).append(s)
        pa_.setdefault("get", []).append(p)
        moved["arr_get"] = counting.bytes_in
        if i == 0:
            assert np.array_equal(got, arr_i)
        del got
        if client is None:
            s, _, _ = timed(lambda: np.load(npy))
        else:
            def raw_get() -> None:
                out = io.BytesIO()
                client.download_fileobj(bucket, f"raw/array{i}.npy", out)
            s, _, _ = timed(raw_get)
        ta.setdefault("raw_get", []).append(s)
        if client is None:
            s, _, _ = timed(lambda: hashlib.sha256(np.load(npy)).hexdigest())
            ta.setdefault("load_verify", []).append(s)

        counting.reset()
        k = n // 100
        s, part, _ = timed(lambda: bh.arrays.get(f"bench/array{i}", rows=slice(n // 2, n // 2 + k)))
        ta.setdefault("rows", []).append(s)
        moved["arr_rows"] = counting.bytes_in
        del part, arr_i
        gc.collect()
        print(f"  run {i + 1}/{runs}: put {ta['put'][-1]:.2f}s get {ta['get'][-1]:.2f}s", flush=True)

    base = "np.save" if client is None else "boto3 upload_fileobj"
    rows.append(Row(name, "array put", asize, median(ta["put"]), base, median(ta["raw_put"]), moved["arr_put"],
                    int(median(pa_["put"])), f"peak +{median(pa_['put']) / arr.nbytes:.1%} of the array"))
    base = "np.load" if client is None else "boto3 download_fileobj"
    rows.append(Row(name, "array get", asize, median(ta["get"]), base, median(ta["raw_get"]), moved["arr_get"],
                    int(median(pa_["get"])), f"peak {median(pa_['get']) / arr.nbytes:.2f}x the array (its own memory)"))
    if client is None:
        hash_s, write_s = median(ta["hash"]), median(ta["write_fsync"])
        rows.append(Row(name, "array put", asize, median(ta["put"]), "hash + write + fsync", hash_s + write_s,
                        None, None, f"aim <= 1.5: SHA-256 and chunk hashes {hash_s:.2f} s, write + fsync "
                        f"{write_s:.2f} s, np.save {median(ta['raw_put']):.2f} s"))
        rows.append(Row(name, "array get", asize, median(ta["get"]), "np.load + SHA-256", median(ta["load_verify"]),
                        None, None, "aim <= 1.5"))
    rows.append(Row(name, "array get rows= 1%", asize, median(ta["rows"]), "whole get", median(ta["get"]),
                    moved["arr_rows"], None, f"fetched {moved['arr_rows'] / arr.nbytes:.2%} of the bytes"))
    put_s = median(ta["put"])
    for label, value in [("same contents (new object)", arr.copy()), ("the array this process put", arr),
                         ("an array this process got", bh.arrays.get("bench/array0"))]:
        counting.reset()
        s, _, _ = timed(lambda: bh.arrays.put("bench/array0", value))
        rows.append(Row(name, f"array re-put, {label}", asize, s, "array put", put_s, counting.bytes_out, None,
                        f"{counting.writes} PUT requests"))
        del value
    del arr, npy_bytes, buf
    bh.stop()
    gc.collect()


def bench_wide(name: str, args: argparse.Namespace, rows: list[Row], tmp: Path,
               server: SeaweedServer | None) -> None:
    """Wide frames (feature matrices, one-hot frames): every path against raw pyarrow on the same table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    global WARM_BYTES
    WARM_BYTES = 0  # (frames of 1,000 rows: a few MB each, many calls)

    from bh_notebook.notebook.browser import Browser

    if server is None:
        config = BucketConfig.for_local(tmp / "bh-wide")
        client = bucket = None
    else:
        bucket = server.new_bucket("wide")
        config = server.config(bucket)
        client = server.client()
    BucketSQLite.progress_factory = None
    bh = BucketSQLite(config, SnapshotConfig(interval_seconds=0)).start()
    raw_path = tmp / "wide-raw.parquet"

    def raw_write(df: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(df)
        if client is None:
            pq.write_table(table, raw_path)
        else:
            sink = io.BytesIO()
            pq.write_table(table, sink)
            client.put_object(Bucket=bucket, Key="raw.parquet", Body=sink.getvalue())

    def raw_read() -> pd.DataFrame:
        if client is None:
            return pq.read_table(raw_path).to_pandas()
        body = client.get_object(Bucket=bucket, Key="raw.parquet")["Body"].read()
        return pq.read_table(pa.BufferReader(body)).to_pandas()

    try:
        for width in args.wide_columns:
            df = pd.DataFrame(np.random.default_rng(width).normal(size=(args.wide_rows, width)),
                              columns=[f"f{i}" for i in range(width)])
            size = f"{args.wide_rows:,} x {width:,}"
            print(f"[{name}] wide frame {size}", flush=True)
            half = [f"f{i}" for i in range(0, width, 2)]
            t: dict[str, list[float]] = {}
            for i in range(args.runs):
                for key, fn in [
                    ("raw write", lambda: raw_write(df)),
                    ("put", lambda: bh.frames.put(f"wide{width}_{i}", df)),
                    ("raw read", raw_read),
                    ("get", lambda: bh.frames.get(f"wide{width}_{i}")),
                    ("head", lambda: bh.frames.head(f"wide{width}_{i}")),
                    ("schema", lambda: bh.frames.schema(f"wide{width}_{i}")),
                    ("columns=", lambda: bh.frames.get(f"wide{width}_{i}", columns=half)),
                    ("preview", lambda: Browser(bh).select(f"wide{width}_{i}")),
                ]:
                    gc.collect()
                    t.setdefault(key, []).append(timed(fn)[0])
            for op, base in [("put", "raw write"), ("get", "raw read"), ("head", "raw read"),
                             ("schema", "raw read"), ("columns= (half)", "raw read"), ("browser preview", "raw read")]:
                key = op.split()[0] if op != "browser preview" else "preview"
                rows.append(Row(name, f"wide {op}", size, median(t[key]), f"pyarrow {base}", median(t[base]),
                                None, None))
    finally:
        bh.stop()


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= 1024**3:
        return f"{n / 1024**3:.2f} GiB"
    if n >= MB:
        return f"{n / MB:.1f} MiB"
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


def print_table(rows: list[Row]) -> None:
    header = ["backend", "operation", "size", "ours s", "baseline", "base s", "ratio", "moved", "peak", "note"]
    table = [header]
    for r in rows:
        ratio = f"{r.ours / r.baseline:.2f}" if r.baseline else "-"
        table.append([r.backend, r.operation, r.size, f"{r.ours:.3f}", r.baseline_name,
                      f"{r.baseline:.3f}" if r.baseline is not None else "-", ratio, fmt_bytes(r.moved),
                      fmt_bytes(r.peak), r.note])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for j, row in enumerate(table):
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000, help="frame rows (default 10M)")
    ap.add_argument("--array-mb", type=int, default=1024, help="array size in MiB (default 1024)")
    ap.add_argument("--runs", type=int, default=3, help="runs per measurement; medians are reported (default 3)")
    ap.add_argument("--backends", default="local,seaweedfs", help="comma-separated: local, seaweedfs")
    ap.add_argument("--quick", action="store_true", help="1M rows, 100 MiB array")
    ap.add_argument("--no-arctic", action="store_true", help="skip the ArcticDB baseline")
    ap.add_argument("--no-store", action="store_true", help="skip the %%store baseline")
    ap.add_argument("--wide", action="store_true", help="only the wide-frame rows")
    ap.add_argument("--no-wide", action="store_true", help="skip the wide-frame rows")
    ap.add_argument("--wide-columns", default="2000,5000,20000", help="widths of the wide frames (default 2k,5k,20k)")
    ap.add_argument("--wide-rows", type=int, default=1000, help="rows of the wide frames (default 1000)")
    args = ap.parse_args()
    args.wide_columns = [int(w) for w in args.wide_columns.split(",") if w.strip()]
    if args.quick:
        args.rows, args.array_mb = 1_000_000, 100
    import pyarrow

    print(f"bh_notebook benchmarks: pandas {pd.__version__}, pyarrow {pyarrow.__version__}, numpy {np.__version__}, "
          f"{os.cpu_count()} cores")
    rows: list[Row] = []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        tmp = Path(tempfile.mkdtemp(prefix=f"bh-bench-{backend}-"))
        try:
            if backend == "local":
                if not args.wide:
                    bench_backend("local", args, rows, tmp, None)
                if not args.no_wide:
                    bench_wide("local", args, rows, tmp, None)
            elif backend == "seaweedfs":
                with SeaweedServer() as server:
                    if not args.wide:
                        bench_backend("seaweedfs", args, rows, tmp, server)
                    if not args.no_wide:
                        bench_wide("seaweedfs", args, rows, tmp, server)
            else:
                raise SystemExit(f"unknown backend {backend!r}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
