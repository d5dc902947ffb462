"""The shared catalog as a commit log: cost proportional to the change, checkpoints, pull, migration from the
snapshot layout, a snapshot another program rewrote, and commits that cannot be read."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bh_notebook import BucketSQLite, SnapshotConfig
from bh_notebook.config import BucketConfig
from bh_notebook.storage import open_bucket
from bh_notebook.storage.snapshot import backup_to_file
from bh_notebook.sync.changes import MAGIC, decode
from bh_notebook.sync.log import CommitLog
from bh_notebook.testing.counting import CountingBucket

NO_TIMER = SnapshotConfig(interval_seconds=0)


def _fill(bh: BucketSQLite, n: int) -> None:
    """``n`` KV entries of ~700 bytes each, the size of a catalog entry (20k make a ~14 MB catalog)."""
    rng = np.random.default_rng(0)
    rows = [(f"entry/{i:06d}", rng.bytes(300).hex().encode(), 0.0, 0.0) for i in range(n)]
    with bh.connection as conn:
        conn.executemany("INSERT INTO bh_kv (key, value, created_at, updated_at) VALUES (?, ?, ?, ?)", rows)


class _KeyRecorder(CountingBucket):
    """A CountingBucket that also records the key of every write."""

    def reset(self) -> None:
        super().reset()
        self.written_keys: list[str] = []

    def put_stream(self, fileobj, key: str, **kw):  # type: ignore[no-untyped-def]
        self.written_keys.append(key)
        return super().put_stream(fileobj, key, **kw)

    def copy(self, src_key: str, dst_key: str, *, if_match: str | None = None) -> None:
        self.written_keys.append(dst_key)
        super().copy(src_key, dst_key, if_match=if_match)


@pytest.mark.parametrize("backend", ["local", "moto"], indirect=True)
def test_one_key_change_on_a_20k_catalog_is_one_small_request(config: BucketConfig) -> None:
    counting = CountingBucket(open_bucket(config))
    with BucketSQLite(config, NO_TIMER, bucket_client=counting) as bh:
        _fill(bh, 20_000)
        bh.force_flush()
        catalog_bytes = (bh._workdir / "base.db").stat().st_size  # type: ignore[operator]
        assert catalog_bytes > 12_000_000
        counting.reset()
        bh.kv["entry/000007"] = "changed"
        result = bh.force_flush()
        assert result.uploaded
        sent = sum(counting.calls.values())
        assert sent <= 3, counting.calls
        assert counting.bytes_out <= 16 * 1024, counting.bytes_out
        assert result.nbytes == counting.bytes_out
    with BucketSQLite(config, NO_TIMER) as fresh:
        assert fresh.kv["entry/000007"] == "changed"
        assert len(list(fresh.kv.keys())) == 20_000


@pytest.mark.slow
def test_500_flushes_send_a_few_percent_of_snapshots_and_write_no_key_twice(
        make_config: Callable[..., BucketConfig]) -> None:
    config = make_config("local")
    counting = _KeyRecorder(open_bucket(config))
    with BucketSQLite(config, NO_TIMER, bucket_client=counting) as bh:
        _fill(bh, 20_000)
        bh.force_flush()
        catalog_bytes = (bh._workdir / "base.db").stat().st_size  # type: ignore[operator]
        counting.reset()
        for i in range(500):
            bh.kv[f"entry/{i:06d}"] = f"changed {i}"
            assert bh.force_flush().uploaded
        snapshots = 500 * catalog_bytes  # what flushing the whole catalog each time sends
        assert counting.bytes_out <= 0.05 * snapshots, (counting.bytes_out, snapshots)
        written = counting.written_keys
        log_keys = [k for k in written if ".log/" in k]
        assert len(log_keys) == len(set(log_keys)) == 500  # every commit a key of its own
        ckpt_keys = [k for k in written if ".ckpt/" in k]
        assert len(ckpt_keys) == len(set(ckpt_keys)) == 5  # positions 101, ... : every 100 commits
        # Only the checkpoint copy (and .prev) are rewritten, once per checkpoint, never per commit.
        assert written.count(config.key) == 5
        position = bh.log_position
    counting = CountingBucket(open_bucket(config))
    t0 = time.monotonic()
    with BucketSQLite(config, NO_TIMER, bucket_client=counting) as fresh:
        assert fresh.log_position == position
        assert fresh.kv["entry/000499"] == "changed 499"
        # A fresh reader reads the checkpoint copy and the commits after it, not the whole log.
        assert counting.calls.get("open_read", 0) <= 1 + BucketSQLite.checkpoint_every + 1
    assert time.monotonic() - t0 < 120


def test_a_session_leaves_its_work_in_the_copy_at_the_key(make_config: Callable[..., BucketConfig],
                                                            tmp_path: Path) -> None:
    """What buckethead (or any SQLite tool) opens at the key holds each finished session's work."""
    config = make_config("local")
    for i in range(3):
        with BucketSQLite(config, NO_TIMER) as bh:
            bh.kv[f"session{i}"] = str(i)
        copy = tmp_path / f"copy{i}.db"
        open_bucket(config).download(config.key, copy)
        conn = sqlite3.connect(copy)
        keys = {r[0] for r in conn.execute("SELECT key FROM bh_kv")}
        conn.close()
        assert keys == {f"session{n}" for n in range(i + 1)}


def test_idle_session_sends_one_cheap_request_per_interval(make_config: Callable[..., BucketConfig]) -> None:
    config = make_config("moto")
    counting = CountingBucket(open_bucket(config))
    interval = 0.3
    bh = BucketSQLite(config, SnapshotConfig(interval_seconds=interval, min_interval_seconds=0),
                      bucket_client=counting)
    bh.auto_pull = True
    with bh:
        bh.kv["a"] = "1"
        bh.force_flush()
        time.sleep(interval * 2)
        counting.reset()
        time.sleep(interval * 10)
        calls = dict(counting.calls)
    assert counting.writes == 0 or calls.get("put_stream", 0) <= 1  # the final flush at stop() only
    reads = calls.get("open_read", 0)
    assert 1 <= reads <= 11, calls
    assert set(calls) <= {"open_read", "put_stream"}, calls


@pytest.mark.parametrize("backend", ["local", "moto"], indirect=True)
def test_pull_is_one_get_when_nothing_is_new_and_takes_in_what_is(config: BucketConfig) -> None:
    counting = CountingBucket(open_bucket(config))
    with BucketSQLite(config, NO_TIMER, bucket_client=counting) as reader, BucketSQLite(config, NO_TIMER) as w:
        w.kv["k"] = "1"
        w.force_flush()
        reader.pull()
        counting.reset()
        assert reader.pull() is None
        assert counting.calls == {"open_read": 1}
        for i in range(3):
            w.frames.put("df", pd.DataFrame({"i": [i]}))
            w.force_flush()
        report = reader.pull()
        assert report is not None and report.commits == 3
        assert [v.version for v in reader.frames.history("df")] == [3, 2, 1]
        assert not reader.dirty  # nothing of its own to commit after a pull
        counting.reset()
        assert not reader.force_flush().uploaded
        assert counting.writes == 0


def test_fresh_reader_starts_from_the_newest_checkpoint(make_config: Callable[..., BucketConfig],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config("local")
    monkeypatch.setattr(BucketSQLite, "checkpoint_every", 10)
    monkeypatch.setattr(BucketSQLite, "checkpoint_at_stop_seconds", None)  # (a stop would checkpoint 25)
    with BucketSQLite(config, NO_TIMER) as w:
        for i in range(25):
            w.kv[f"k{i}"] = str(i)
            w.force_flush()
        assert w.log_position == 25
    counting = CountingBucket(open_bucket(config))
    with BucketSQLite(config, NO_TIMER, bucket_client=counting) as r:
        assert r.kv["k24"] == "24" and len(list(r.kv.keys())) == 25
        assert r.restored_from == f"{config.key} and 5 commits after it"
        assert counting.calls.get("open_read", 0) == 6  # commits 21..25, then the 404 of 26


def _old_layout_catalog(tmp_path: Path, config: BucketConfig) -> Path:
    """A catalog as the snapshot layout (an earlier bh_notebook, or buckethead) left it: one whole file at the
    key, no log."""
    scratch = BucketConfig.for_local(tmp_path / "scratch")
    with BucketSQLite(scratch, NO_TIMER) as bh:
        bh.kv["setting"] = "old"
        bh.frames.put("df", pd.DataFrame({"a": [1, 2]}))
        arr_key = bh.frames.history("df")[0].bh_key
        blob = bh.bucket.get_bytes(f"files/{arr_key}")
        path = tmp_path / "old.db"
        backup_to_file(bh.connection, path)
    bucket = open_bucket(config)
    bucket.put_bytes(blob, f"files/{arr_key}")
    bucket.upload(path, config.key)
    return path


@pytest.mark.parametrize("backend", ["local", "moto"], indirect=True)
def test_a_bucket_in_the_snapshot_layout_opens_and_continues(config: BucketConfig, tmp_path: Path) -> None:
    _old_layout_catalog(tmp_path, config)
    with BucketSQLite(config, NO_TIMER) as a:
        assert a.kv["setting"] == "old"
        assert a.frames.get("df")["a"].tolist() == [1, 2]
        assert a.log_position == 1  # taken in as the first commit
        a.frames.put("df", pd.DataFrame({"a": [3]}))
        a.force_flush()
    with BucketSQLite(config, NO_TIMER) as b:  # the key now holds a checkpoint: nothing is taken in twice
        assert b.log_position == 2
        assert [v.version for v in b.frames.history("df")] == [2, 1]
        assert b.last_merge is None
        assert b.check(verify=True).ok


@pytest.mark.parametrize("backend", ["local", "moto"], indirect=True)
def test_a_snapshot_rewritten_by_another_program_is_taken_in(config: BucketConfig, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BucketSQLite, "checkpoint_every", 3)
    bucket = open_bucket(config)
    with BucketSQLite(config, NO_TIMER) as a:
        a.kv["keep"] = "1"
        a.kv["drop"] = "1"
        a.force_flush()  # commit 1, and its checkpoint at the key
        # Another program (buckethead) rewrites the key: one key changed, one added, one deleted.
        copy = tmp_path / "theirs.db"
        bucket.download(config.key, copy)
        conn = sqlite3.connect(copy)
        conn.execute("UPDATE bh_kv SET value = CAST('2' AS BLOB) WHERE key = 'keep'")
        conn.execute("INSERT INTO bh_kv (key, value, created_at, updated_at) VALUES ('theirs', CAST('t' AS BLOB), 0, 0)")
        conn.execute("DELETE FROM bh_kv WHERE key = 'drop'")
        conn.commit()
        conn.close()
        bucket.upload(copy, config.key)
        # A fresh start notices it at once and commits it.
        with BucketSQLite(config, NO_TIMER) as b:
            assert b.kv["keep"] == "2" and b.kv["theirs"] == "t" and "drop" not in b.kv
            assert b.last_merge is not None
            position = b.log_position
            assert position == 2
        # The running writer takes it in by pulling the commit; the key holds a checkpoint again.
        a.pull()
        assert a.kv["keep"] == "2" and "drop" not in a.kv
    with BucketSQLite(config, NO_TIMER) as c:
        assert c.log_position == position  # not taken in a second time
        assert c.last_merge is None


def test_a_rewrite_is_noticed_by_the_next_commit_and_taken_in(make_config: Callable[..., BucketConfig],
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config("local")
    monkeypatch.setattr(BucketSQLite, "checkpoint_every", 2)
    bucket = open_bucket(config)
    with BucketSQLite(config, NO_TIMER) as a:
        a.kv["mine"] = "1"
        a.force_flush()  # commit 1 + checkpoint
        copy = tmp_path / "theirs.db"
        bucket.download(config.key, copy)
        conn = sqlite3.connect(copy)
        conn.execute("INSERT INTO bh_kv (key, value, created_at, updated_at) VALUES ('theirs', CAST('t' AS BLOB), 0, 0)")
        conn.commit()
        conn.close()
        bucket.upload(copy, config.key)
        a.kv["more"] = "2"
        counting_before = a.log_position
        a.force_flush()  # commit 2 HEADs the key first: not one of ours, so it is merged in and committed with it
        assert a.kv["theirs"] == "t"
        assert a.kv["mine"] == "1" and a.kv["more"] == "2"
        assert a.log_position == counting_before + 1 == 2
        assert bucket.get_bytes(config.key) != copy.read_bytes()  # a checkpoint replaced the rewritten copy
    with BucketSQLite(config, NO_TIMER) as b:
        assert b.kv["theirs"] == "t" and b.kv["more"] == "2"
        assert b.last_merge is None  # the key is a checkpoint again


@pytest.mark.parametrize("backend", ["local", "moto"], indirect=True)
@pytest.mark.parametrize("damage", ["empty", "cut", "garbage"])
def test_an_unreadable_commit_is_passed_over_by_every_reader(config: BucketConfig, damage: str) -> None:
    bucket = open_bucket(config)
    log = CommitLog(bucket, config.key)
    with BucketSQLite(config, NO_TIMER) as a:
        a.kv["before"] = "1"
        a.force_flush()
        good = log.get_commit(1)
        assert good is not None and good.startswith(MAGIC)
        bad = {"empty": b"", "cut": good[: len(good) // 2], "garbage": MAGIC + b"{}\nxx"}[damage]
        bucket.put_bytes(bad, log.commit_key(2), if_none_match="*")  # e.g. a PUT cut off on the way
        a.kv["after"] = "2"
        a.force_flush()
        assert a.log_position == 3
        assert a.kv["after"] == "2"
    with BucketSQLite(config, NO_TIMER) as b:
        assert b.kv["before"] == "1" and b.kv["after"] == "2"
        assert b.log_position == 3


def test_commit_objects_name_their_own_size_and_hash() -> None:
    from bh_notebook.sync.changes import Change, CorruptCommit, TableChange, encode

    change = Change({"bh_kv": TableChange(["rowid"], ["key", "value"], [[1, "k", b"\x00\xff"]], [[2]])})
    data = encode({"position": 1}, change)
    record, back = decode(data, label="c")
    assert record == {"position": 1}
    assert back is not None and back.tables["bh_kv"].upsert == [[1, "k", b"\x00\xff"]]
    for broken in (data[:-1], data + b"x", data.replace(b"sha256", b"sha255"), b""):
        with pytest.raises(CorruptCommit):
            decode(broken, label="c")


def test_nothing_from_a_whole_catalog_commit_runs(make_config: Callable[..., BucketConfig],
                                                   tmp_path: Path) -> None:
    """A commit that stands for a whole catalog (a schema change) is vetted like a snapshot, by its writer before
    it is sent and by every reader: a trigger planted in one is dropped, never run; a virtual table is refused."""
    from bh_notebook.errors import UntrustedCatalog
    from bh_notebook.storage.snapshot import file_sha256
    from bh_notebook.sync.changes import encode

    config = make_config("local")
    with BucketSQLite(config, NO_TIMER) as victim, BucketSQLite(config, NO_TIMER) as writer:
        victim.kv["precious"] = "1"
        victim.force_flush()
        writer.pull()
        with writer.connection as conn:  # a trigger of the writer's own never leaves its process
            conn.execute("CREATE TABLE user_notes (id INTEGER PRIMARY KEY, note TEXT)")
            conn.execute("CREATE TRIGGER own AFTER INSERT ON bh_arrays BEGIN DELETE FROM bh_kv; END")
        writer.force_flush()
        with writer.connection as conn:
            conn.execute("CREATE VIRTUAL TABLE docs USING fts5(body)")
        with pytest.raises(UntrustedCatalog, match="table 'docs'.*Drop it"):
            writer.force_flush()
        with writer.connection as conn:
            conn.execute("DROP TABLE docs")
        # An attacker with write access plants a whole catalog with a trigger straight into the log.
        victim.pull()
        planted = tmp_path / "planted.db"
        backup_to_file(victim.connection, planted)
        conn = sqlite3.connect(planted)
        conn.execute("CREATE TRIGGER wipe AFTER INSERT ON bh_arrays BEGIN DELETE FROM bh_kv; END")
        conn.commit()
        conn.close()
        bucket = open_bucket(config)
        log = CommitLog(bucket, config.key)
        n = victim.log_position + 1
        sha = file_sha256(planted)
        bucket.upload(planted, log.state_key(n, sha))
        record = {"position": n, "writer": "attacker",
                  "whole": {"key": log.state_key(n, sha), "sha256": sha, "size": planted.stat().st_size}}
        assert log.put_commit(n, encode(record, None)) is not None
        victim.pull()
        assert "trigger 'wipe'" in " ".join(victim.removed_from_bucket)
        victim.arrays.put("x", np.arange(3))
        assert victim.kv["precious"] == "1"
        victim.force_flush()
    with BucketSQLite(config, NO_TIMER) as fresh:
        assert fresh.kv["precious"] == "1"
        names = [r[0] for r in fresh.connection.execute("SELECT name FROM sqlite_master WHERE type='trigger'")]
        assert names == []
        assert "user_notes" in [r[0] for r in fresh.connection.execute("SELECT name FROM sqlite_master")]


def test_commits_are_created_once_and_a_race_moves_to_the_next_position(
        make_config: Callable[..., BucketConfig]) -> None:
    config = make_config("moto")
    with BucketSQLite(config, NO_TIMER) as a, BucketSQLite(config, NO_TIMER) as b:
        a.kv["x"] = "a"
        b.kv["y"] = "b"
        a.force_flush()
        first = CommitLog(open_bucket(config), config.key).get_commit(1)
        b.force_flush()  # loses position 1, takes in a's commit, commits 2
        assert b.log_position == 2 and b.kv["x"] == "a"
        assert CommitLog(open_bucket(config), config.key).get_commit(1) == first
        a.pull()
        assert a.kv["y"] == "b"


def test_work_saved_on_local_disk_is_pushed_into_the_log(make_config: Callable[..., BucketConfig],
                                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from bh_notebook.config import ENV_HOME

    config = make_config("local")
    with BucketSQLite(config, NO_TIMER) as other:
        other.kv["other"] = "1"
        other.force_flush()
    a = BucketSQLite(config, NO_TIMER).start()
    a.kv["mine"] = "1"
    a._spool_unsaved(RuntimeError("endpoint down"))  # what stop() does when the final flush fails
    assert a.unsaved_at is not None and a.unsaved_at.exists()
    a._flushed_fingerprint = a._fingerprint()  # as if the flush were not retried: the spool holds the work
    a._started = False
    here = os.environ[ENV_HOME]
    monkeypatch.setenv(ENV_HOME, str(tmp_path / "teammate"))  # a teammate's machine commits meanwhile
    with BucketSQLite(config, NO_TIMER) as w:
        w.kv["later"] = "1"
        w.force_flush()
        assert "mine" not in w.kv
    monkeypatch.setenv(ENV_HOME, here)
    with BucketSQLite(config, NO_TIMER) as b:  # resumes the saved work, commits it after the teammate's
        assert b.kv["mine"] == "1" and b.kv["later"] == "1" and b.kv["other"] == "1"
        assert b.log_position == 3
        assert not b.dirty
    assert not a.unsaved_at.exists()
    with BucketSQLite(config, NO_TIMER) as c:
        assert c.kv["mine"] == "1" and c.kv["later"] == "1"
        assert c.log_position == 3
