"""A catalog read from a shared bucket is data, never code; a cut-off upload is never taken for a catalog.

Anyone with write access to the bucket can rewrite the snapshot object. What they plant there must not run in
another writer's process (triggers, views), and an empty or truncated object must not read as "everything was
deleted", neither on start nor when merged, and must never overwrite the good previous snapshot (``.prev``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig
from bh_notebook.errors import SnapshotCorruptError, UntrustedCatalog


from bh_notebook.storage import open_bucket

NO_TIMER = SnapshotConfig(interval_seconds=0)

WIPE_ON_INSERT = """
CREATE TRIGGER planted AFTER INSERT ON bh_arrays BEGIN
    DELETE FROM filestore;
    DELETE FROM bh_arrays;
    DELETE FROM bh_kv;
END
"""


def _rewrite_snapshot(config: BucketConfig, tmp_path: Path, *sql: str) -> None:
    """What an attacker with write access does: download snap.db, change it with sqlite3, upload it back."""
    bucket = open_bucket(config)
    try:
        path = tmp_path / "planted.db"
        bucket.download(config.key, path)
        db = sqlite3.connect(path)
        for statement in sql:
            db.executescript(statement)
        db.commit()
        db.close()
        bucket.upload(path, config.key)
    finally:
        bucket.close()


def _overwrite_snapshot(config: BucketConfig, data: bytes) -> None:
    bucket = open_bucket(config)
    try:
        bucket.put_bytes(data, config.key)
    finally:
        bucket.close()


def _seed(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as bh:
        bh.arrays.put("kept", np.arange(10))
        bh.kv["setting"] = "1"


def test_planted_trigger_never_runs_in_the_victim(config: BucketConfig, tmp_path: Path) -> None:
    _seed(config)
    _rewrite_snapshot(config, tmp_path, WIPE_ON_INSERT)
    with BucketSQLite(config, NO_TIMER) as victim:
        victim.arrays.put("new", np.arange(5))  # the insert the trigger was waiting for
        victim.force_flush()
        assert victim.kv["setting"] == "1"
        np.testing.assert_array_equal(victim.arrays.get("kept"), np.arange(10))
        schema = victim.connection.execute("SELECT type, name FROM sqlite_master WHERE type IN "
                                           "('trigger', 'view')").fetchall()
        assert schema == []
        assert victim.removed_from_bucket == ["trigger 'planted'"]  # and the user is told
    with BucketSQLite(config, NO_TIMER) as reader:  # the victim's commit carried no trigger onwards
        assert reader.removed_from_bucket == []
        assert sorted(reader.arrays) == ["kept", "new"]
        assert reader.check().ok


def test_planted_view_and_trigger_are_dropped_from_a_merged_catalog(config: BucketConfig, tmp_path: Path) -> None:
    _seed(config)
    victim = BucketSQLite(config, NO_TIMER).start()
    try:
        _rewrite_snapshot(config, tmp_path, WIPE_ON_INSERT,
                          "CREATE VIEW planted_view AS SELECT * FROM bh_kv; CREATE TABLE extra (id INTEGER PRIMARY KEY)")
        victim.arrays.put("mine", np.arange(3))
        victim.force_flush()  # loses the race against the planted snapshot and merges it
        assert sorted(victim.removed_from_bucket) == ["trigger 'planted'", "view 'planted_view'"]
        victim.arrays.put("after", np.arange(4))
        victim.force_flush()
        assert sorted(victim.arrays) == ["after", "kept", "mine"]
        assert victim.kv["setting"] == "1"
    finally:
        victim.stop()
    with BucketSQLite(config, NO_TIMER) as reader:
        assert reader.removed_from_bucket == []
        assert sorted(reader.arrays) == ["after", "kept", "mine"]
        tables = {r[0] for r in reader.connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "extra" in tables  # a plain user table is carried, as buckethead's catalogs need


def test_virtual_table_is_refused(config: BucketConfig, tmp_path: Path) -> None:
    """A copy at the key holding a virtual table is never opened: with a commit log beside it, the store starts
    from the checkpoints and the log (and says so); with none (the old layout), it refuses to start."""
    _seed(config)
    _rewrite_snapshot(config, tmp_path, "CREATE VIRTUAL TABLE planted USING fts5(body)")
    with BucketSQLite(config, NO_TIMER) as bh:
        assert bh.kv["setting"] == "1"
        assert any("planted" in line for line in bh.removed_from_bucket)
    old = BucketConfig.for_local(tmp_path / "old-layout")
    bucket = open_bucket(old)
    with BucketSQLite(BucketConfig.for_local(tmp_path / "scratch"), NO_TIMER) as scratch:
        scratch.kv["setting"] = "1"
        path = tmp_path / "virtual.db"
        from bh_notebook.storage.snapshot import backup_to_file

        backup_to_file(scratch.connection, path)
    db = sqlite3.connect(path)
    db.execute("CREATE VIRTUAL TABLE planted USING fts5(body)")
    db.commit()
    db.close()
    bucket.upload(path, old.key)
    with pytest.raises(UntrustedCatalog, match="planted"):
        BucketSQLite(old, NO_TIMER).start()


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_cut_off_snapshot_is_refused_not_read_as_empty(config: BucketConfig, damage: str, tmp_path: Path) -> None:
    _seed(config)
    bucket = open_bucket(config)
    try:
        good = bucket.get_bytes(config.key)
    finally:
        bucket.close()
    _overwrite_snapshot(config, b"" if damage == "empty" else good[: len(good) // 2])
    with BucketSQLite(config, NO_TIMER) as bh:  # never read as empty: the checkpoints and the log hold it all
        assert bh.kv["setting"] == "1" and sorted(bh.arrays) == ["kept"]
    old = BucketConfig.for_local(tmp_path / "old-layout")  # no log beside it: refused, never read as empty
    open_bucket(old).put_bytes(b"" if damage == "empty" else good[: len(good) // 2], old.key)
    with pytest.raises(SnapshotCorruptError, match="restore_from='prev'"):
        BucketSQLite(old, NO_TIMER).start()


def test_cut_off_snapshot_never_replaces_prev_or_merges_as_deletes(config: BucketConfig,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BucketSQLite, "checkpoint_every", 1)
    writer = BucketSQLite(config, NO_TIMER).start()
    try:
        writer.arrays.put("first", np.arange(3))
        writer.force_flush()
        writer.arrays.put("second", np.arange(4))
        writer.force_flush()  # .prev now holds the checkpoint with "first"
        _overwrite_snapshot(config, b"")  # another writer's upload was cut off after the headers
        writer.arrays.put("third", np.arange(5))
        writer.force_flush()  # the empty copy is noticed, never merged as "everything was deleted"
        assert sorted(writer.arrays) == ["first", "second", "third"]  # nothing merged away
        bucket = open_bucket(config)
        assert bucket.get_bytes(config.key + ".prev") != b""  # the damaged copy never became .prev
        assert bucket.get_bytes(config.key) != b""  # the next checkpoint replaced it
    finally:
        writer.stop()
    with BucketSQLite(config, NO_TIMER) as reader:
        assert sorted(reader.arrays) == ["first", "second", "third"]
