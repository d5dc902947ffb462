"""The one collector of blobs: gc judges by the latest shared catalog and by the bucket's clock.

Each test is a way a shared bucket lost acknowledged data before:
- gc ran on a stale catalog and deleted the blobs another writer had just committed;
- gc compared last-modified times with this machine's clock, so a fast clock made fresh uploads look old;
- a writer relied on an old blob it had read (or uploaded long ago) without telling the bucket, while another
  writer freed and collected it: the put reported success and the data existed nowhere;
- an empty or truncated object under a blob's key was trusted by a re-put.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig
from bh_notebook.storage import open_bucket
from bh_notebook.testing.counting import CountingBucket

NO_TIMER = SnapshotConfig(interval_seconds=0)


def test_gc_takes_in_other_writers_commits_before_judging(config: BucketConfig) -> None:
    arr = np.arange(300.0)
    with BucketSQLite(config, NO_TIMER) as a, BucketSQLite(config, NO_TIMER) as b:
        a.kv["hello"] = "a"
        a.force_flush()
        b.arrays.put("b_new", arr)  # b uploads a blob and commits it; a has not pulled
        b.force_flush()
        report = a.files.gc(grace_seconds=0)  # no grace at all: only the shared catalog protects b's blob
        assert report.orphans_deleted == 0
        np.testing.assert_array_equal(b.arrays.get("b_new"), arr)
        assert "b_new" in a.arrays  # a took in b's commit on the way
    with BucketSQLite(config, NO_TIMER) as fresh:
        np.testing.assert_array_equal(fresh.arrays.get("b_new"), arr)
        assert fresh.check().ok


def test_gc_commits_this_writers_changes_first(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as a:
        key = a.arrays.put("x", np.arange(10)).bh_key
        a.force_flush()
        a.arrays.delete("x")  # not committed yet
        report = a.files.gc(grace_seconds=0)
        assert not a.dirty  # gc committed the delete before it judged the blob
        # The state before the newest commit (what restore_from="prev" brings back) still has x: kept until the
        # log moves on.
        assert report.deleted == [] and report.kept_for_other_catalogs == 1
        a.kv["moved"] = "on"
        a.force_flush()  # now the state before the newest commit no longer has x either
        assert a.files.gc(grace_seconds=0).deleted == [key]
    with BucketSQLite(config, NO_TIMER) as fresh:
        assert "x" not in fresh.arrays and fresh.check().ok


def test_gc_ages_blobs_by_the_buckets_clock_not_this_machines(
        make_config: object, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config("moto")  # type: ignore[operator]
    with BucketSQLite(config, NO_TIMER) as bh:
        orphan = bh.files.object_key("0" * 64)
        bh.bucket.put_bytes(b"an upload whose commit is on its way", orphan)
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 3600.0)  # this machine's clock is an hour fast
        report = bh.files.gc(grace_seconds=300)
        monkeypatch.setattr(time, "time", real)
        assert report.orphans_found == 1 and report.orphans_skipped_grace == 1 and report.orphans_deleted == 0
        assert bh.bucket.head(orphan) is not None


def test_a_blob_relied_on_again_is_touched_so_gc_spares_it(config: BucketConfig) -> None:
    """Writer B read x (blob K); writer A deleted x and collected K once it was old. B's put of the same bytes
    under a new name must not rely on K without renewing it: the collector would take it before B commits."""
    arr = np.arange(2000.0)
    grace = 3.0
    with BucketSQLite(config, NO_TIMER) as a, BucketSQLite(config, NO_TIMER) as b:
        a.arrays.put("x", arr)
        a.force_flush()
        b.pull()
        np.testing.assert_array_equal(b.arrays.get("x"), arr)  # b has read and verified K
        a.arrays.delete("x")
        a.force_flush()  # K is unreferenced in the shared catalog
        time.sleep(grace + 1.5)  # K is now older than the grace period
        b.files.fresh_seconds = 1.0  # (the default is 60 s against a 300 s grace; scaled down to seconds here)
        b.arrays.put("y", arr)  # b's catalog still lists K: nothing to upload, but K must be renewed
        a.files.gc(grace_seconds=grace)  # b has not committed yet
        b.force_flush()
        np.testing.assert_array_equal(b.arrays.get("y"), arr)
    with BucketSQLite(config, NO_TIMER) as fresh:
        np.testing.assert_array_equal(fresh.arrays.get("y"), arr)
        assert fresh.check().ok


def test_trust_in_a_blob_lasts_only_trust_seconds(config: BucketConfig) -> None:
    arr = np.arange(64.0)
    counting = CountingBucket(open_bucket(config))
    with BucketSQLite(config, NO_TIMER, bucket_client=counting) as bh:
        bh.arrays.put("x", arr)
        now = [time.monotonic()]
        bh.files._clock = lambda: now[0]
        bh.files._present = {k: now[0] for k in bh.files._present}
        counting.reset()
        bh.arrays.put("y", arr)  # just uploaded: no request
        assert counting.calls == {}
        now[0] += bh.files.trust_seconds + 1
        bh.arrays.put("z", arr)  # trusted no longer: one HEAD (the blob is young, so no touch)
        assert counting.calls == {"head": 1} and counting.bytes_out == 0


def test_an_empty_or_truncated_object_is_not_trusted_by_a_re_put(config: BucketConfig) -> None:
    arr = np.arange(5000, dtype="int64")
    with BucketSQLite(config, NO_TIMER) as a:
        key = a.arrays.put("x", arr).bh_key
    bucket = open_bucket(config)
    bucket.put_bytes(b"", f"{config.files_prefix.rstrip('/')}/{key}")  # what a reset after the headers left
    bucket.close()
    with BucketSQLite(config, NO_TIMER) as b:
        assert b.arrays.put("again", arr).bh_key == key  # wrong size: uploaded again, not trusted
        np.testing.assert_array_equal(b.arrays.get("x"), arr)
        assert b.check().ok


def test_check_fix_removes_orphans_through_the_collector(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as a, BucketSQLite(config, NO_TIMER) as b:
        a.kv["k"] = "v"
        a.force_flush()
        b.arrays.put("fresh", np.arange(7))  # committed by b after a last synced
        b.force_flush()
        orphan = a.files.object_key("f" * 64)
        a.bucket.put_bytes(b"left by a killed writer", orphan)
        time.sleep(1.5)
        report = a.check(fix=True, grace_seconds=1)
        assert "fresh" in a.arrays  # check took in b's commit first: b's blob is no orphan
        assert any("orphan blob ffffffffffff deleted" in line for line in report.fixed)
        assert a.bucket.head(orphan) is None
        np.testing.assert_array_equal(b.arrays.get("fresh"), np.arange(7))


def test_check_reports_rows_that_disagree_and_repairs_a_misplaced_file_row(config: BucketConfig) -> None:
    arr = np.arange(100.0)
    with BucketSQLite(config, NO_TIMER) as bh:
        key = bh.arrays.put("x", arr).bh_key
        bh.arrays.put("y", np.arange(3))
        with bh.connection as conn:
            conn.execute("UPDATE filestore SET object_key = ? WHERE bh_key = ?", (bh.files.prefix + "elsewhere", key))
            conn.execute("UPDATE bh_arrays SET bh_key = 'not-a-blob' WHERE name = 'y'")
        report = bh.check()
        assert not report.ok and len(report.inconsistent_rows) == 2, report
        assert "points at object" in str(report) and "no blob key" in str(report)
        fixed = bh.check(fix=True)
        assert any("points at its own object again" in line for line in fixed.fixed)
        np.testing.assert_array_equal(bh.arrays.get("x"), arr)
        assert bh.check().inconsistent_rows == ["an entry points at 'not-a-blob', which is no blob key"]


def test_an_upload_slower_than_fresh_seconds_is_checked_and_renewed(config: BucketConfig) -> None:
    """S3 dates a multipart upload by when it started: an upload that took long is touched once it is done, so
    the collector's grace runs from the end of the upload."""
    counting = CountingBucket(open_bucket(config))
    with BucketSQLite(config, NO_TIMER, bucket_client=counting) as bh:
        bh.files.fresh_seconds = -1.0  # every upload counts as slow
        counting.reset()
        bh.arrays.put("x", np.arange(100.0))
        assert counting.calls == {"head": 2, "put_stream": 1, "touch": 1}
        np.testing.assert_array_equal(bh.arrays.get("x"), np.arange(100.0))


def test_a_file_row_kept_by_a_pull_is_committed_so_the_other_writer_gets_it_back(config: BucketConfig) -> None:
    arr = np.arange(40.0)
    with BucketSQLite(config, NO_TIMER) as a, BucketSQLite(config, NO_TIMER) as b:
        key = a.arrays.put("x", arr).bh_key
        a.force_flush()
        b.pull()
        with a.connection as conn:  # a's catalog loses the file row (a crash, another tool) and commits that
            conn.execute("DELETE FROM filestore WHERE bh_key = ?", (key,))
        a.force_flush()
        report = b.pull()  # b keeps the row: its catalog's entry x still uses the blob
        assert report is not None and report.rows_kept == 1 and b.dirty  # so b has something to commit
        b.force_flush()
        a.pull()
        np.testing.assert_array_equal(a.arrays.get("x"), arr)  # a has the row back
