"""The store contract (bh_notebook/testing/stores.py) for every versioned kind and for KV, on the local store and
on S3 (moto)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

from bh_notebook import BucketConfig, BucketSQLite
from bh_notebook.testing.stores import NO_TIMER, KVContract, VersionedStoreContract


@pytest.fixture(params=["local", "moto"])
def config(request: pytest.FixtureRequest, make_config: Callable[..., BucketConfig]) -> BucketConfig:
    """A fresh bucket on the local store, then on moto (this module's own ``config``: two backends, not three)."""
    return make_config(request.param)


@pytest.fixture
def bh(config: BucketConfig) -> Iterator[BucketSQLite]:
    with BucketSQLite(config, NO_TIMER) as store:
        yield store


class TestArrays(VersionedStoreContract):
    kind = "array"

    def value(self, i: int) -> Any:
        return np.arange(i + 1, dtype=np.int64) * 10

    def assert_same(self, got: Any, expected: Any) -> None:
        np.testing.assert_array_equal(got, expected)
        assert got.dtype == expected.dtype


class TestFrames(VersionedStoreContract):
    kind = "frame"

    def value(self, i: int) -> Any:
        return pd.DataFrame({"x": range(i + 1), "label": [f"r{j}" for j in range(i + 1)]})

    def assert_same(self, got: Any, expected: Any) -> None:
        pd.testing.assert_frame_equal(got, expected)


class TestNamedFiles(VersionedStoreContract):
    kind = "file"

    def value(self, i: int) -> Any:
        return f"contents {i}\n".encode() * (i + 1)

    def assert_same(self, got: Any, expected: Any) -> None:
        assert got == expected


class TestKV(KVContract):
    pass
