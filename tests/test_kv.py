"""KVStore: the seed contract (str API, bytes escape hatch, dict protocol) on every backend."""

from __future__ import annotations

import pytest

from bh_notebook import BucketConfig, BucketSQLite, KVStore
from bh_notebook.errors import InvalidKey, KeyTypeError, NotFound, ValueTooLarge, ValueTypeError


@pytest.fixture
def bh(config: BucketConfig):
    with BucketSQLite(config) as db:
        yield db


def test_str_roundtrip_and_overwrite(bh: BucketSQLite) -> None:
    bh.kv.set("model.lr", "0.001")
    assert bh.kv.get("model.lr") == "0.001"
    bh.kv.set("model.lr", "0.01")
    assert bh.kv.get("model.lr") == "0.01"
    assert bh.kv.get("missing") is None
    assert bh.kv.get("missing", "fallback") == "fallback"
    bh.kv.set("unicode", "température ✓")
    assert bh.kv.get("unicode") == "température ✓"
    bh.kv.set("empty", "")
    assert bh.kv.get("empty") == ""


def test_bytes_escape_hatch(bh: BucketSQLite) -> None:
    bh.kv.set_bytes("blob", b"\x00\xff\xfe")
    assert bh.kv.get_bytes("blob") == b"\x00\xff\xfe"
    bh.kv.set("text", "abc")
    assert bh.kv.get_bytes("text") == b"abc"  # one column under both APIs
    assert bh.kv.get_bytes("missing") is None


def test_get_of_non_utf8_says_use_get_bytes(bh: BucketSQLite) -> None:
    bh.kv.set_bytes("bin", b"\xff\xfe\x00")
    with pytest.raises(UnicodeDecodeError) as info:
        bh.kv.get("bin")
    assert "get_bytes" in str(info.value)
    with pytest.raises(UnicodeDecodeError, match="get_bytes"):
        bh.kv["bin"]


def test_dict_protocol(bh: BucketSQLite) -> None:
    kv = bh.kv
    kv["a"] = "1"
    kv["b"] = "2"
    assert kv["a"] == "1"
    assert "a" in kv and "zzz" not in kv and 42 not in kv  # type: ignore[operator]
    assert len(kv) == 2
    assert list(kv) == ["a", "b"]
    del kv["a"]
    assert "a" not in kv and len(kv) == 1
    with pytest.raises(KeyError):
        kv["a"]
    with pytest.raises(NotFound, match="no KV key 'a'"):
        del kv["a"]


def test_delete_exists_keys(bh: BucketSQLite) -> None:
    for k in ["cfg/a", "cfg/b", "cfg%x", "other", "cfg_"]:
        bh.kv.set(k, k)
    assert bh.kv.exists("cfg/a") and not bh.kv.exists("cfg/zz")
    assert list(bh.kv.keys("cfg/")) == ["cfg/a", "cfg/b"]
    assert list(bh.kv.keys("cfg%")) == ["cfg%x"]  # prefix is literal, not a LIKE pattern
    assert list(bh.kv.keys()) == sorted(["cfg/a", "cfg/b", "cfg%x", "other", "cfg_"])
    assert bh.kv.delete("cfg/a") is True
    assert bh.kv.delete("cfg/a") is False  # a missing key is not an error


def test_update_is_all_or_nothing(bh: BucketSQLite) -> None:
    bh.kv.update({"x": "1", "y": "2"})
    assert bh.kv.items() == [("x", "1"), ("y", "2")]
    with pytest.raises(ValueTypeError):
        bh.kv.update([("z", "3"), ("w", 4)])  # type: ignore[list-item]
    assert "z" not in bh.kv


@pytest.mark.parametrize("key", [1, None, b"k", ("a",)])
def test_non_str_keys_refused(bh: BucketSQLite, key: object) -> None:
    with pytest.raises(KeyTypeError, match="KV keys are str"):
        bh.kv.set(key, "v")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        bh.kv.get(key)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["", "a\nb", "tab\tkey", "x" * 1025])
def test_bad_keys_refused(bh: BucketSQLite, key: str) -> None:
    with pytest.raises(InvalidKey):
        bh.kv.set(key, "v")


def test_wrong_value_types(bh: BucketSQLite) -> None:
    with pytest.raises(ValueTypeError, match="set_bytes"):
        bh.kv.set("k", b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueTypeError, match="str"):
        bh.kv.set("k", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueTypeError, match="use set"):
        bh.kv.set_bytes("k", "text")  # type: ignore[arg-type]


def test_oversize_value_points_to_filestore(bh: BucketSQLite) -> None:
    bh.kv.set("keep", "me")
    big = "x" * (KVStore.max_value_bytes + 1)
    with pytest.raises(ValueTooLarge, match="FileStore"):
        bh.kv.set("big", big)
    with pytest.raises(ValueTooLarge):
        bh.kv.set_bytes("big", big.encode())
    assert "big" not in bh.kv and bh.kv["keep"] == "me"
    bh.kv.set("at-limit", "y" * KVStore.max_value_bytes)
    assert len(bh.kv["at-limit"]) == KVStore.max_value_bytes


def test_schema_is_idempotent_and_survives_restart(config: BucketConfig) -> None:
    with BucketSQLite(config) as bh:
        bh.kv["persist"] = "yes"
        KVStore(bh.connection)  # building the interface again keeps the data
        assert bh.kv["persist"] == "yes"
    with BucketSQLite(config) as bh:
        assert bh.kv["persist"] == "yes"
        tables = {r[0] for r in bh.connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"bh_kv", "filestore"} <= tables
