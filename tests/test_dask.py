"""Dask frames on a real ``distributed.LocalCluster`` (2 worker processes, 1 GiB each): the workers write and read
the parts straight to and from the bucket, results equal dask's own, credentials stay out of the tasks, and a
tampered part is refused on the worker."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig
from bh_notebook.errors import IntegrityError, ValueTypeError
from bh_notebook.testing.servers import ACCESS_KEY, SECRET_KEY

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

NO_TIMER = SnapshotConfig(interval_seconds=0)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="1GiB",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        yield c


def _frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"g": rng.integers(0, 7, n), "x": rng.normal(size=n),
                         "label": np.array([f"v{i}" for i in range(50)])[rng.integers(0, 50, n)],
                         "when": pd.to_datetime("2024-01-01") + pd.to_timedelta(np.arange(n), unit="min")})


@pytest.mark.parametrize("backend", ["local", "moto"], indirect=True)
def test_workers_put_and_get_and_results_match_dask(client: Any, config: BucketConfig) -> None:
    df = _frame(40_000)
    ddf = dd.from_pandas(df, npartitions=5)
    with BucketSQLite(config, NO_TIMER) as bh:
        v = bh.frames.put("events", ddf, metadata={"note": "from dask"})
        assert (v.parts, v.n_rows, v.metadata) == (5, 40_000, {"note": "from dask"})
        pd.testing.assert_frame_equal(bh.frames.get("events"), ddf.compute())
        lazy = bh.frames.get("events", to="dask", columns=["g", "x"], filters=[("g", ">=", 3)])
        assert isinstance(lazy, dd.DataFrame) and lazy.npartitions == 5
        want = ddf[ddf.g >= 3][["g", "x"]]
        pd.testing.assert_frame_equal(lazy.compute(), want.compute())
        assert lazy.x.sum().compute() == pytest.approx(want.x.sum().compute())
        pd.testing.assert_series_equal(lazy.groupby("g").x.mean().compute().sort_index(),
                                       want.groupby("g").x.mean().compute().sort_index())
        assert bh.frames.get("events", to="dask").shape[0].compute() == 40_000
        assert bh.check().ok
    with BucketSQLite(config, NO_TIMER) as fresh:  # another process reads what the workers wrote
        pd.testing.assert_frame_equal(fresh.frames.get("events"), ddf.compute())  # (dask's dtypes, e.g. string)


def test_partitions_that_each_count_from_zero_read_back_as_dask_gives_them(client: Any,
                                                                           make_config: Callable[..., BucketConfig]
                                                                           ) -> None:
    """What dask's read_parquet gives: every partition's RangeIndex starts at 0."""
    ddf = dd.from_map(lambda seed: _frame(1_000, seed), [1, 2, 3])
    with BucketSQLite(make_config("local"), NO_TIMER) as bh:
        bh.frames.put("restarts", ddf)
        want = ddf.compute()
        assert list(want.index[:2]) == [0, 1] and want.index[1_000] == 0
        pd.testing.assert_frame_equal(bh.frames.get("restarts"), want)
        pd.testing.assert_frame_equal(bh.frames.get("restarts", rows=slice(990, 1_010)), want.iloc[990:1_010])
        pd.testing.assert_frame_equal(bh.frames.get("restarts", to="dask").compute(), want)


def test_a_filtered_series_and_an_appended_dask_frame(client: Any, make_config: Callable[..., BucketConfig]) -> None:
    """Filtering leaves some partitions with a RangeIndex and others with plain labels; a dask Series comes back
    as a Series; a dask frame appends to a stored frame."""
    df = pd.DataFrame({"a": np.arange(40), "b": np.arange(40) * 0.5})
    ddf = dd.from_pandas(df, npartitions=4)
    kept = ddf[ddf.a.isin([0, 1, 2, 3, 11, 13, 17, 20, 21, 22, 35])]
    with BucketSQLite(make_config("local"), NO_TIMER) as bh:
        bh.frames.put("kept", kept)
        pd.testing.assert_frame_equal(bh.frames.get("kept"), kept.compute())
        bh.frames.put("b", ddf.b)
        pd.testing.assert_series_equal(bh.frames.get("b"), ddf.b.compute())
        bh.frames.put("log", df.iloc[:10])
        v = bh.frames.append("log", dd.from_pandas(df.iloc[10:], npartitions=3))
        assert v.parts == 4
        pd.testing.assert_frame_equal(bh.frames.get("log"), df)


def test_dask_reads_only_the_columns_a_computation_uses(make_config: Callable[..., BucketConfig],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``ddf.x.sum()`` reads one column of each part, as dask's read_parquet would (dask projects columns into the
    reads); a filter's column is read and dropped."""
    import dask

    from bh_notebook.interfaces.frames import FrameStore

    read: list[Any] = []
    real = FrameStore._read_part

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        read.append(kwargs["columns"])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FrameStore, "_read_part", spy)
    df = _frame(3_000)
    with BucketSQLite(make_config("local"), NO_TIMER) as bh, dask.config.set(scheduler="sync"):
        ddf = dd.from_pandas(df, npartitions=3)
        bh.frames.put("p", ddf)
        df = ddf.compute()  # (dask's dtypes: its strings)
        lazy = bh.frames.get("p", to="dask")
        read.clear()
        assert lazy.x.sum().compute() == pytest.approx(df.x.sum())
        assert read == [["x"]] * 3
        read.clear()
        got = lazy.groupby("g").x.mean().compute().sort_index()
        pd.testing.assert_series_equal(got, df.groupby("g").x.mean().sort_index())
        assert {tuple(sorted(c)) for c in read} == {("g", "x")} and len(read) == 3
        filtered = bh.frames.get("p", to="dask", filters=[("g", "==", 2)])
        read.clear()
        assert filtered.x.sum().compute() == pytest.approx(df[df.g == 2].x.sum())
        assert read == [["x"]] * 3
        pd.testing.assert_frame_equal(filtered.compute(), df[df.g == 2])


def test_credentials_never_appear_in_tasks_or_worker_logs(client: Any, make_config: Callable[..., BucketConfig]
                                                          ) -> None:
    config = make_config("moto")
    with BucketSQLite(config, NO_TIMER) as bh:
        bh.frames.put("secretive", dd.from_pandas(_frame(2_000), npartitions=2))
        lazy = bh.frames.get("secretive", to="dask")
        graph = dict(lazy.__dask_graph__())
        assert SECRET_KEY not in repr(graph) and SECRET_KEY not in str(graph)
        lazy.compute()
        logs = client.get_worker_logs()
        assert SECRET_KEY not in repr(logs)
        assert SECRET_KEY not in repr(client.run(lambda: {k: repr(v) for k, v in sys.modules[
            "bh_notebook.interfaces.frames_dask"]._SPECS.items()}))


def test_a_tampered_part_is_refused_on_the_worker(client: Any, make_config: Callable[..., BucketConfig],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with BucketSQLite(make_config("moto"), NO_TIMER) as bh:
        monkeypatch.setattr(bh.frames, "compression", "none")
        monkeypatch.setattr(bh.frames, "compression_level", None)
        bh.frames.put("t", dd.from_pandas(_frame(20_000), npartitions=2))
        part = bh.frames.parts("t")[1]
        key = bh.files.object_key(part.bh_key)
        data = bytearray(bh.bucket.get_bytes(key))
        data[part.nbytes // 2] ^= 0xFF
        bh.bucket.put_bytes(bytes(data), key)
        with pytest.raises(IntegrityError):
            bh.frames.get("t", to="dask").compute()
        with pytest.raises(IntegrityError):
            bh.frames.get("t")


def test_partitions_of_different_types_are_refused(client: Any, make_config: Callable[..., BucketConfig]) -> None:
    pieces = [pd.DataFrame({"a": [1, 2]}), pd.DataFrame({"a": [1.5, 2.5]})]
    ddf = dd.from_map(lambda i: pieces[i], [0, 1], meta=pieces[0], enforce_metadata=False)
    with BucketSQLite(make_config("local"), NO_TIMER) as bh:
        with pytest.raises(ValueTypeError, match="partition 1 of the dask frame for 'mixed' does not match"):
            bh.frames.put("mixed", ddf)
        assert "mixed" not in bh.frames


def test_without_dask_the_error_says_what_to_install(make_config: Callable[..., BucketConfig],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with BucketSQLite(make_config("local"), NO_TIMER) as bh:
        bh.frames.put("plain", _frame(10))
        monkeypatch.setitem(sys.modules, "dask", None)
        monkeypatch.setitem(sys.modules, "dask.dataframe", None)
        with pytest.raises(ImportError, match=r'pip install "bh_notebook\[dask\]"'):
            bh.frames.get("plain", to="dask")


da = pytest.importorskip("dask.array")


@pytest.mark.parametrize("backend", ["local", "moto"], indirect=True)
def test_a_dask_array_streams_into_one_npy_and_reads_back_in_blocks(client: Any, config: BucketConfig) -> None:
    x = da.random.default_rng(3).normal(size=(120_000, 12), chunks=(25_000, 5))  # rechunked to whole rows
    with BucketSQLite(config, NO_TIMER) as bh:
        v = bh.arrays.put("emb", x, metadata={"note": "dask"})
        assert v.shape == (120_000, 12) and v.dtype == np.float64 and v.metadata == {"note": "dask"}
        want = x.compute()
        np.testing.assert_array_equal(bh.arrays.get("emb"), want)
        np.testing.assert_array_equal(bh.arrays.get("emb", rows=slice(50_000, 50_010)), want[50_000:50_010])
        blob = bh.bucket.get_bytes(bh.files.object_key(v.bh_key))  # a plain .npy, as numpy.save writes it
        import io

        np.testing.assert_array_equal(np.load(io.BytesIO(blob)), want)
        lazy = bh.arrays.get("emb", to="dask", chunks=40_000)
        assert lazy.chunks[0] == (40_000, 40_000, 40_000)
        np.testing.assert_array_equal(lazy.compute(), want)
        assert float(lazy[:, 3].sum().compute()) == pytest.approx(float(want[:, 3].sum()))
        again = bh.arrays.put("emb", x)  # the same bytes: the same version, nothing new
        assert again.version == 1
        assert bh.bucket.list_keys(bh.files.incoming_prefix) == []
        assert bh.check().ok


def test_a_memmap_is_stored_from_its_file(make_config: Callable[..., BucketConfig], tmp_path: Any) -> None:
    mm = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype="f4", shape=(50_000, 16))
    mm[:] = np.arange(16, dtype="f4")
    with BucketSQLite(make_config("local"), NO_TIMER) as bh:
        bh.arrays.put("mm", mm)
        np.testing.assert_array_equal(bh.arrays.get("mm"), np.asarray(mm))


def test_a_tampered_array_block_is_refused_on_the_worker(client: Any, make_config: Callable[..., BucketConfig]
                                                         ) -> None:
    with BucketSQLite(make_config("moto"), NO_TIMER) as bh:
        v = bh.arrays.put("a", np.arange(3_000_000, dtype="i8"))
        key = bh.files.object_key(v.bh_key)
        data = bytearray(bh.bucket.get_bytes(key))
        data[len(data) - 1000] ^= 0xFF
        bh.bucket.put_bytes(bytes(data), key)
        lazy = bh.arrays.get("a", to="dask", chunks=1_000_000)
        np.testing.assert_array_equal(lazy[:1_000_000].compute(), np.arange(1_000_000))  # its chunks are sound
        with pytest.raises(IntegrityError):
            lazy.compute()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_4_gib_of_frame_and_of_array_go_through_seaweedfs_on_the_workers(
        client: Any, seaweed_server: Any, tmp_path: Any) -> None:
    """At least 4 GiB of frame and 4 GiB of array, generated on the workers, put and read back through SeaweedFS:
    what the workers read equals what dask computes from the generated data, and the client (a process of its own,
    tests/dask_big_client.py) stays under 1 GiB RSS the whole time."""
    import json
    import os
    import subprocess
    from pathlib import Path

    env = dict(os.environ, BUCKETHEAD_BUCKET__NAME=seaweed_server.new_bucket(),
               BUCKETHEAD_BUCKET__ENDPOINT_URL=seaweed_server.endpoint_url, BUCKETHEAD_BUCKET__REGION="us-east-1",
               BUCKETHEAD_BUCKET__ACCESS_KEY_ID=ACCESS_KEY, BUCKETHEAD_BUCKET__SECRET_ACCESS_KEY=SECRET_KEY,
               BH_NOTEBOOK_HOME=str(tmp_path / "home"),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    script = Path(__file__).with_name("dask_big_client.py")
    run = subprocess.run([sys.executable, str(script), client.scheduler.address, "4"], env=env,
                         capture_output=True, text=True, timeout=1700)
    assert run.returncode == 0, run.stderr[-4000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    print(json.dumps(out, indent=1))  # the figures, for the record (pytest -s)
    assert out["frame"]["memory bytes"] >= 4 * 2**30 and out["frame"]["parts"] == out["ours"]["rows"] // 2**21
    ours, want = out["ours"], out["dask alone"]
    assert (ours["rows"], ours["sum_id"]) == (want["rows"], want["sum_id"])
    assert ours["sum_x"] == pytest.approx(want["sum_x"], rel=1e-9)
    assert ours["mean_x_by_g"].keys() == want["mean_x_by_g"].keys() and len(want["mean_x_by_g"]) == 16
    for g, m in want["mean_x_by_g"].items():
        assert ours["mean_x_by_g"][g] == pytest.approx(m, rel=1e-9, abs=1e-12)
    assert out["array"]["bytes"] >= 4 * 2**30
    assert out["array sums equal"] and out["array last rows equal"] and out["leftover streams"] == []
    assert out["peak rss bytes"] < 2**30, out["peak rss bytes"] / 2**20

