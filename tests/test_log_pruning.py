"""Pruning the commit log: old commits and checkpoints go only when no reader can still need them, and a writer
that slept through a pruning takes in the newest state instead of writing into the gap it left."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from bh_notebook import BucketSQLite, SnapshotConfig
from bh_notebook.config import BucketConfig
from bh_notebook.errors import SnapshotCorruptError
from bh_notebook.storage import open_bucket
from bh_notebook.sync.log import CommitLog
from bh_notebook.testing.counting import CountingBucket

NO_TIMER = SnapshotConfig(interval_seconds=0)


@pytest.fixture
def small_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint every 5 commits, no automatic pruning and no checkpoint at stop (each test says when)."""
    monkeypatch.setattr(BucketSQLite, "checkpoint_every", 5)
    monkeypatch.setattr(BucketSQLite, "log_retention_seconds", None)
    monkeypatch.setattr(BucketSQLite, "checkpoint_at_stop_seconds", None)


def _log_objects(config: BucketConfig) -> tuple[list[int], list[int]]:
    """(positions of the commits, positions of the checkpoints) in the bucket."""
    log = CommitLog(open_bucket(config), config.key)
    commits = sorted(int(k[len(log.log_prefix):]) for k in log.bucket.list_keys(log.log_prefix)
                     if k[len(log.log_prefix):].isdigit())
    return commits, sorted(pos for pos, _ in log.checkpoints())


def _commit_kv(bh: BucketSQLite, keys: range, prefix: str = "k") -> None:
    for i in keys:
        bh.kv[f"{prefix}{i}"] = str(i)
        assert bh.force_flush().uploaded


@pytest.mark.usefixtures("small_checkpoints")
def test_prune_keeps_what_readers_need_and_deletes_the_rest(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as w:
        w.frames.put("df", pd.DataFrame({"a": [1, 2, 3]}))
        w.force_flush()
        _commit_kv(w, range(22))  # positions 2..23; checkpoints at 1, 5, 10, 15, 20
        assert w.log_position == 23
        kept_young = w.prune_log()  # the default retention: everything is days younger than it
        assert (kept_young.commits, kept_young.checkpoints) == (0, 0)
        assert _log_objects(config) == (list(range(1, 24)), [1, 5, 10, 15, 20])
        report = w.prune_log(retention_seconds=0)
        assert report.floor == 15  # the older of the two newest checkpoints
        assert (report.commits, report.checkpoints) == (14, 3)  # commits 2..15; checkpoints 1, 5, 10
        assert report.nbytes > 0
        assert _log_objects(config) == ([1, *range(16, 24)], [15, 20])
        assert w.prune_log(retention_seconds=0).nbytes == 0  # nothing more to prune
        _commit_kv(w, range(22, 24))
        assert w.check().ok
    with BucketSQLite(config, NO_TIMER) as fresh:  # a fresh reader: the key's checkpoint and the commits after
        assert fresh.log_position == 25
        assert {k: fresh.kv[k] for k in fresh.kv.keys()} == {f"k{i}": str(i) for i in range(24)}
        assert fresh.frames.get("df")["a"].tolist() == [1, 2, 3]
        assert fresh.check().ok
    # The state before the newest commit (an undo) still starts from a kept checkpoint.
    with BucketSQLite(config, NO_TIMER, restore_from="prev") as undo:
        assert "k23" not in undo.kv and undo.kv["k22"] == "22"


@pytest.mark.usefixtures("small_checkpoints")
@pytest.mark.parametrize("how", ["flush", "pull"])
def test_a_writer_that_slept_through_a_pruning_loses_nothing(config: BucketConfig, how: str) -> None:
    """Its next commit's position was pruned: it must take in the newest state, never create that position in
    the gap (where every reader, starting from a later checkpoint, would never see it)."""
    with BucketSQLite(config, NO_TIMER) as sleeper, BucketSQLite(config, NO_TIMER) as busy:
        sleeper.kv["shared"] = "sleeper's"
        sleeper.force_flush()
        asleep_at = sleeper.log_position
        busy.pull()
        _commit_kv(busy, range(20), prefix="busy")
        assert busy.prune_log(retention_seconds=0).commits > 5
        commits, _ = _log_objects(config)
        assert asleep_at + 1 not in commits  # the sleeper's next position is gone
        assert sleeper._replica is not None
        sleeper._replica.floor_checked = 0.0  # it last looked at the checkpoint long ago
        if how == "pull":
            report = sleeper.pull()
            assert report is not None
            assert sleeper.kv["busy19"] == "19"
        sleeper.frames.put("late", pd.DataFrame({"x": [7]}))
        sleeper.kv["busy3"] = "changed while asleep"
        assert sleeper.force_flush().uploaded
        assert sleeper.log_position > busy.log_position
        assert asleep_at + 1 not in _log_objects(config)[0]  # nothing was written into the gap
        busy.pull()
        assert busy.frames.get("late")["x"].tolist() == [7]
    with BucketSQLite(config, NO_TIMER) as fresh:
        assert fresh.frames.get("late")["x"].tolist() == [7]
        assert fresh.kv["busy3"] == "changed while asleep"
        assert fresh.kv["busy19"] == "19" and fresh.kv["shared"] == "sleeper's"
        assert fresh.check().ok


@pytest.mark.usefixtures("small_checkpoints")
def test_a_reader_pulls_with_one_get_and_looks_at_the_key_every_ten_minutes(make_config: Callable[..., BucketConfig]
                                                                          ) -> None:
    config = make_config("local")
    counting = CountingBucket(open_bucket(config))
    with BucketSQLite(config, NO_TIMER, bucket_client=counting) as reader, BucketSQLite(config, NO_TIMER) as w:
        _commit_kv(w, range(3))
        reader.pull()
        counting.reset()
        assert reader.pull() is None
        assert counting.calls == {"open_read": 1}  # just heard from the log: one GET
        assert reader._replica is not None
        reader._replica.floor_checked = 0.0
        counting.reset()
        assert reader.pull() is None
        assert counting.calls == {"open_read": 1, "head": 1}  # now and then: one HEAD of the key as well
        counting.reset()
        assert reader.pull() is None
        assert counting.calls == {"open_read": 1}


@pytest.mark.usefixtures("small_checkpoints")
def test_the_committing_writer_prunes_after_each_checkpoint(make_config: Callable[..., BucketConfig],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config("local")
    monkeypatch.setattr(BucketSQLite, "log_retention_seconds", 0.0)
    with BucketSQLite(config, NO_TIMER) as w:
        _commit_kv(w, range(42))
    commits, checkpoints = _log_objects(config)
    assert checkpoints == [35, 40]
    assert commits == [1, *range(36, 43)]
    with BucketSQLite(config, NO_TIMER) as fresh:
        assert len(list(fresh.kv.keys())) == 42


@pytest.mark.usefixtures("small_checkpoints")
def test_an_undo_past_the_kept_log_says_so(make_config: Callable[..., BucketConfig]) -> None:
    config = make_config("local")
    with BucketSQLite(config, NO_TIMER) as w:
        _commit_kv(w, range(11))  # checkpoints at 1, 5, 10
        w.prune_log(retention_seconds=0)  # floor 5
        assert w._replica is not None and w._workdir is not None
        w._replica.state_at(6, w._workdir / "six.db")  # after the floor: rebuilt
        with pytest.raises(SnapshotCorruptError, match="cannot be rebuilt"):
            w._replica.state_at(3, w._workdir / "three.db")


def _damage(config: BucketConfig, key: str) -> None:
    bucket = open_bucket(config)
    bucket.put_bytes(b"not a checkpoint", key)


@pytest.mark.usefixtures("small_checkpoints")
def test_a_copy_written_back_from_before_the_pruning_is_taken_in_after_the_newest_state(
        make_config: Callable[..., BucketConfig], tmp_path: Path) -> None:
    """Another program read the key at checkpoint 5 and writes its copy back after pruning removed commits up to
    15: the next start must take it in on top of the newest state, not rebuild from commit 1 and write commit 2
    into the gap."""
    config = make_config("local")
    bucket = open_bucket(config)
    with BucketSQLite(config, NO_TIMER) as busy:
        _commit_kv(busy, range(5))  # checkpoint 5 at the key
        copy = tmp_path / "copy.db"
        bucket.download(config.key, copy)
        _commit_kv(busy, range(5, 23))
        busy.prune_log(retention_seconds=0)
    conn = sqlite3.connect(copy)
    conn.execute("INSERT INTO bh_kv (key, value, created_at, updated_at) VALUES ('theirs', 'x', 0, 0)")
    conn.commit()
    conn.close()
    bucket.upload(copy, config.key)  # foreign: its bytes are no checkpoint's
    with BucketSQLite(config, NO_TIMER) as next_one:
        assert next_one.log_position > 23
    commits, _ = _log_objects(config)
    assert 2 not in commits  # nothing written into the gap
    with BucketSQLite(config, NO_TIMER) as fresh:
        keys = set(fresh.kv.keys())
        assert {f"k{i}" for i in range(23)} | {"theirs"} <= keys


@pytest.mark.usefixtures("small_checkpoints")
def test_a_resumed_unsaved_catalog_from_before_the_pruning_loses_nothing(
        make_config: Callable[..., BucketConfig], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from bh_notebook.config import ENV_HOME

    config = make_config("local")
    first = BucketSQLite(config, NO_TIMER).start()
    _commit_kv(first, range(2))
    first.kv["unsaved"] = "kept on disk"
    first._spool_unsaved(RuntimeError("endpoint down"))  # what stop() does when the final flush fails
    first._flushed_fingerprint = first._fingerprint()
    first._started = False
    here = os.environ[ENV_HOME]
    monkeypatch.setenv(ENV_HOME, str(tmp_path / "teammate"))  # a teammate commits and prunes meanwhile
    with BucketSQLite(config, NO_TIMER) as busy:
        _commit_kv(busy, range(2, 25))
        busy.prune_log(retention_seconds=0)
    _damage(config, config.key)  # and the copy at the key cannot tell the resumed writer where the log is
    monkeypatch.setenv(ENV_HOME, here)
    with BucketSQLite(config, NO_TIMER) as resumed:
        assert "unsaved work" in (resumed.restored_from or "")
        resumed.force_flush()
    assert 3 not in _log_objects(config)[0]
    with BucketSQLite(config, NO_TIMER) as fresh:
        assert fresh.kv["unsaved"] == "kept on disk" and fresh.kv["k24"] == "24"


@pytest.mark.usefixtures("small_checkpoints")
def test_a_reader_whose_rebuild_fails_keeps_a_sound_state_and_refuses_to_commit(
        make_config: Callable[..., BucketConfig]) -> None:
    """The log ends below the checkpoint at the key (a commit deleted under a racing reader) and no checkpoint
    after the reader's position reads: the reader keeps the commits it could read, and its next commit is refused
    rather than written into the gap; its changes stay in memory."""
    config = make_config("local")
    reader = BucketSQLite(config, NO_TIMER).start()
    with BucketSQLite(config, NO_TIMER) as busy:
        _commit_kv(busy, range(6))
        reader.pull()  # at 6
        _commit_kv(busy, range(6, 22))  # checkpoints 1, 5, 10, 15, 20
        log = CommitLog(open_bucket(config), config.key)
        open_bucket(config).delete(log.commit_key(10))
        for pos, key in log.checkpoints():
            if pos >= 10:
                _damage(config, key)
        assert reader._replica is not None
        reader._replica.floor_checked = 0.0
        reader.pull()
        assert reader.log_position == 9
        base = reader._workdir / "base.db"  # type: ignore[operator]
        conn = sqlite3.connect(base)
        assert conn.execute("SELECT count(*) FROM bh_kv").fetchone()[0] == 9
        conn.close()
        reader.kv["mine"] = "waiting"
        with pytest.raises(SnapshotCorruptError, match="no checkpoint after position 9 could be read"):
            reader.force_flush()
        assert reader.kv["mine"] == "waiting"
        assert 10 not in _log_objects(config)[0]
    with pytest.raises(SnapshotCorruptError):  # its last flush fails the same way; the work is kept on disk
        reader.stop()
    assert reader.unsaved_at is not None and reader.unsaved_at.exists()


@pytest.mark.usefixtures("small_checkpoints")
def test_pruning_keeps_the_catalog_commit_1_stands_for(make_config: Callable[..., BucketConfig]) -> None:
    config = make_config("local")
    with BucketSQLite(config, NO_TIMER) as w:
        _commit_kv(w, range(12))
        log = CommitLog(open_bucket(config), config.key)
        firsts = [k for k in log.bucket.list_keys(log.log_prefix) if k[len(log.log_prefix):].startswith(f"{1:020d}")]
        w.prune_log(retention_seconds=0)
        assert [k for k in firsts if log.bucket.exists(k)] == firsts
        assert w._replica is not None and w._workdir is not None
        w._replica.state_at(1, w._workdir / "one.db")
