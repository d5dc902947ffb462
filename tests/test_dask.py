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
from bh_notebook.testing.servers import SECRET_KEY

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
