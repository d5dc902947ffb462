"""VersionedStoreContract: the behaviour every versioned store (arrays, frames, named files, ...) must have, as one
pytest class; KVContract: the part of it that applies to KV (one value per key, no versions).

A test module subclasses it per kind and provides a ``bh`` fixture that yields a started BucketSQLite on a fresh
bucket (and a ``config`` fixture naming that bucket, for the restart test)::

    class TestArrays(VersionedStoreContract):
        kind = "array"

        def value(self, i):
            return np.arange(i + 1)

        def assert_same(self, got, expected):
            np.testing.assert_array_equal(got, expected)

The store is ``bh.stores[kind]``. What a missing name or version raises, what delete returns, the order names,
latest and history come in, and that numbers are never given out twice are pinned here, so all kinds agree.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from ..config import BucketConfig
from ..database import BucketSQLite, SnapshotConfig
from ..errors import InvalidKey, KeyTypeError, NotFound, NotStarted
from ..interfaces.registry import blob_columns, merge_rules

NO_TIMER = SnapshotConfig(interval_seconds=0)


class VersionedStoreContract:
    """Shared tests of a versioned store; subclasses set ``kind`` and provide ``value``/``assert_same`` and the
    ``bh`` and ``config`` fixtures."""

    kind: str = ""

    def value(self, i: int) -> Any:
        """A value to store, different for every ``i``."""
        raise NotImplementedError

    def assert_same(self, got: Any, expected: Any) -> None:
        """Fail unless ``got`` (as ``get`` returned it) equals ``expected`` (as it was put)."""
        raise NotImplementedError

    def store(self, bh: BucketSQLite) -> Any:
        return bh.stores[self.kind]

    # -- the kind's declaration -------------------------------------------------------------

    def test_declared_in_the_registry(self, bh: BucketSQLite) -> None:
        store = self.store(bh)
        assert store.kind == self.kind and store.versioned and store.listed
        assert getattr(bh, store.attr) is store  # bh.arrays, bh.named_files, ...
        assert merge_rules()[store.table] == "versioned"
        assert "bh_key" in blob_columns()[store.table]
        assert store.table in store.tables()
        assert store.status_key in bh.status()

    # -- missing names and versions ---------------------------------------------------------

    def test_missing_name_raises_notfound_a_keyerror(self, bh: BucketSQLite) -> None:
        store = self.store(bh)
        for call in (lambda: store.info("nope"), lambda: store.get("nope"), lambda: store["nope"],
                     lambda: store.history("nope"), lambda: store.delete("nope"), lambda: store.url("nope"),
                     lambda: store.load("nope"), lambda: store.info("nope", 1)):
            with pytest.raises(NotFound) as info:
                call()
            assert isinstance(info.value, KeyError)
            assert "nope" in str(info.value)

    def test_missing_name_suggests_a_close_one(self, bh: BucketSQLite) -> None:
        store = self.store(bh)
        store.put("sales_2024", self.value(0))
        with pytest.raises(NotFound, match="did you mean 'sales_2024'"):
            store.get("sales_2023")

    def test_missing_version_raises_notfound_naming_the_versions(self, bh: BucketSQLite) -> None:
        store = self.store(bh)
        store.put("x", self.value(0))
        store.put("x", self.value(1))
        for call in (lambda: store.info("x", 5), lambda: store.get("x", 5), lambda: store.delete("x", 5),
                     lambda: store.url("x", 5), lambda: store.load("x", 5)):
            with pytest.raises(NotFound, match=r"has no version 5; it has versions \[1, 2\]"):
                call()
        assert [v.version for v in store.history("x")] == [2, 1]  # nothing was deleted

    def test_bad_names_and_versions_are_refused(self, bh: BucketSQLite) -> None:
        store = self.store(bh)
        store.put("x", self.value(0))
        with pytest.raises(InvalidKey):
            store.get("x", 0)
        with pytest.raises(KeyTypeError):
            store.get("x", True)
        with pytest.raises(InvalidKey):
            store.put("a@1", self.value(0))
        with pytest.raises(KeyTypeError):
            store.get(3)

    # -- writes and versions ----------------------------------------------------------------

    def test_versions_count_from_one_and_get_each(self, bh: BucketSQLite) -> None:
        store = self.store(bh)
        assert [store.put("x", self.value(i)).version for i in range(3)] == [1, 2, 3]
        for i in range(3):
            self.assert_same(store.get("x", i + 1), self.value(i))
        self.assert_same(store.get("x"), self.value(2))
        self.assert_same(store["x"], self.value(2))
        self.assert_same(store.load("x", 2), self.value(1))
        assert store.info("x").version == 3

    def test_reput_of_the_latest_data_is_that_version(self, bh: BucketSQLite) -> None:
        store = self.store(bh)
        first = store.put("x", self.value(0))
        again = store.put("x", self.value(0))
        assert again.version == first.version == 1 and again.bh_key == first.bh_key
        assert [v.version for v in store.history("x")] == [1]

    def test_delete_returns_what_it_removed_newest_first(self, bh: BucketSQLite) -> None:
        store = self.store(bh)
        for i in range(3):
            store.put("x", self.value(i))
        one = store.delete("x", 2)
        assert [(v.name, v.version) for v in one] == [("x", 2)]
        assert [v.version for v in store.history("x")] == [3, 1]
        rest = store.delete("x")
        assert [v.version for v in rest] == [3, 1]
        assert "x" not in store and store.names() == [] and len(store) == 0
        with pytest.raises(NotFound):
            store.delete("x")

    def test_version_numbers_are_never_given_out_twice(self, bh: BucketSQLite) -> None:
        store = self.store(bh)
        store.put("x", self.value(0))
        store.put("x", self.value(1))
        store.delete("x", 2)  # the latest version
        assert store.put("x", self.value(2)).version == 3
        store.delete("x")  # every version
        assert store.put("x", self.value(3)).version == 4
        assert [v.version for v in store.history("x")] == [4]

    def test_numbers_stay_retired_across_a_restart(self, bh: BucketSQLite, config: BucketConfig) -> None:
        store = self.store(bh)
        store.put("x", self.value(0))
        store.put("x", self.value(1))
        store.delete("x")
        bh.force_flush()
        with BucketSQLite(config, NO_TIMER, bucket_client=bh.bucket) as again:
            assert "x" not in self.store(again)
            assert self.store(again).put("x", self.value(2)).version == 3

    # -- listing ------------------------------------------------------------------------------

    def test_names_iteration_in_and_len(self, bh: BucketSQLite) -> None:
        store = self.store(bh)
        for name in ("b", "exp/a", "a", "exp/b"):
            store.put(name, self.value(0))
        store.put("a", self.value(1))  # a second version: still one name
        assert store.names() == ["a", "b", "exp/a", "exp/b"]  # sorted
        assert store.names("exp/") == ["exp/a", "exp/b"]
        assert list(store) == store.names()
        assert len(store) == 4
        assert "a" in store and "exp/a" in store
        assert "c" not in store and "" not in store and 3 not in store and None not in store

    def test_latest_is_each_names_newest_version_newest_first(self, bh: BucketSQLite) -> None:
        store = self.store(bh)
        for name, i in (("old", 0), ("mid", 1), ("old", 2), ("new", 3)):
            store.put(name, self.value(i))
            time.sleep(0.002)  # created_at orders them
        assert [(v.name, v.version) for v in store.latest()] == [("new", 1), ("old", 2), ("mid", 1)]
        entries = store.entries()
        assert [(e.name, e.version) for e in entries] == [("new", 1), ("old", 2), ("mid", 1)]
        assert [e.name for e in store.entries("m")] == ["mid"]

    def test_history_is_newest_first_with_metadata(self, bh: BucketSQLite) -> None:
        store = self.store(bh)
        store.put("x", self.value(0), metadata={"note": "first"})
        store.put("x", self.value(1))
        history = store.history("x")
        assert [v.version for v in history] == [2, 1]
        assert history[1].metadata == {"note": "first"} and history[0].metadata == {}
        assert history[0].created_at >= history[1].created_at
        assert store.entries()[0].note == ""

    # -- blobs --------------------------------------------------------------------------------

    def test_deleting_an_entry_keeps_a_blob_another_entry_uses(self, bh: BucketSQLite) -> None:
        store = self.store(bh)
        a = store.put("a", self.value(7))
        b = store.put("b", self.value(7))
        assert a.bh_key == b.bh_key  # one blob, two entries
        store.delete("a")
        assert bh.files.references(a.bh_key) == [f"{store.table}:b@1"]
        assert a.bh_key in bh.files
        self.assert_same(store.get("b"), self.value(7))
        store.delete("b")
        assert bh.files.references(a.bh_key) == [] and a.bh_key not in bh.files  # released, left to gc

    def test_a_blob_a_named_file_shares_stays(self, bh: BucketSQLite) -> None:
        store = self.store(bh)
        v = store.put("x", self.value(3))
        bh.named_files.put("same", bh.files.get(v.bh_key))  # the very bytes: the same blob
        store.delete("x")
        assert bh.files.references(v.bh_key) == ["bh_named_files:same@1"]
        assert bh.named_files.get("same") == bh.files.get(v.bh_key)

    # -- lifecycle ----------------------------------------------------------------------------

    def test_a_stopped_store_raises_notstarted(self, bh: BucketSQLite, config: BucketConfig) -> None:
        with BucketSQLite(config, NO_TIMER, bucket_client=bh.bucket) as other:
            store = self.store(other)
        with pytest.raises(NotStarted):
            store.names()
        with pytest.raises(NotStarted):
            other.stores


class KVContract:
    """The part of the contract that applies to KV: one value per key, no versions; ``bh`` fixture as above."""

    def test_declared_in_the_registry(self, bh: BucketSQLite) -> None:
        kv = bh.stores["kv"]
        assert kv is bh.kv and kv.listed and not kv.versioned
        assert merge_rules()["bh_kv"] == "kv"
        assert "kv_keys" in bh.status()

    def test_missing_key(self, bh: BucketSQLite) -> None:
        kv = bh.kv
        with pytest.raises(NotFound) as info:
            kv["nope"]
        assert isinstance(info.value, KeyError)
        with pytest.raises(NotFound):
            kv.load("nope")
        with pytest.raises(NotFound):
            del kv["nope"]
        assert kv.get("nope") is None and kv.get("nope", "d") == "d"
        assert kv.delete("nope") is False  # a missing key is not an error here (the seed's rule)

    def test_delete_returns_whether_it_existed(self, bh: BucketSQLite) -> None:
        bh.kv["k"] = "v"
        assert bh.kv.delete("k") is True
        assert bh.kv.delete("k") is False

    def test_keys_iteration_in_and_len(self, bh: BucketSQLite) -> None:
        kv = bh.kv
        for key in ("b", "exp.a", "a"):
            kv[key] = key
        kv["a"] = "again"  # replaced, not versioned
        assert list(kv.keys()) == kv.names() == list(kv) == ["a", "b", "exp.a"]
        assert kv.names("exp.") == ["exp.a"]
        assert len(kv) == 3 and "a" in kv and "c" not in kv and "" not in kv and 3 not in kv
        assert [(e.name, e.version, e.size) for e in kv.entries()] == [("a", None, 5), ("b", None, 1),
                                                                       ("exp.a", None, 5)]
        assert kv.load("a") == "again"
        with pytest.raises(InvalidKey):
            kv.load("a", 1)
