"""Several writers on one bucket: nothing is lost, versions are renumbered, conflicts are settled and reported."""

from __future__ import annotations

import multiprocessing
import time
import traceback

import numpy as np
import pandas as pd
import pytest
from pathlib import Path
from bh_notebook.errors import SnapshotCorruptError

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig
from bh_notebook.storage import open_bucket
from bh_notebook.testing.counting import CountingBucket

NO_TIMER = SnapshotConfig(interval_seconds=0)


def test_both_sides_new_versions_survive_renumbered(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as seed:
        seed.arrays.put("w", np.arange(3))  # version 1, known to both
    a = BucketSQLite(config, NO_TIMER).start()
    b = BucketSQLite(config, NO_TIMER).start()
    try:
        a.arrays.put("w", np.arange(3) + 10)  # a's version 2
        a.frames.put("only_a", pd.DataFrame({"x": [1]}))
        a.force_flush()
        b.arrays.put("w", np.arange(3) + 20)  # b's version 2 too: collides
        b.arrays.put("w", np.arange(3) + 30)  # b's version 3
        b.force_flush()
        assert b.last_merge is not None
        assert b.last_merge.renumbered == ["w@2->4"] or "w@2->" in b.last_merge.renumbered[0]
    finally:
        a.stop()
        b.stop()
    with BucketSQLite(config, NO_TIMER) as r:
        values = {v.version: int(r.arrays.get("w", v.version)[0]) for v in r.arrays.history("w")}
        assert values == {1: 0, 2: 10, 3: 30, 4: 20} or sorted(values.values()) == [0, 10, 20, 30]
        assert values[1] == 0 and values[2] == 10  # the first committer keeps its numbers
        assert sorted(values) == [1, 2, 3, 4]
        assert "only_a" in r.frames


def test_deletions_and_kv_rules(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as seed:
        seed.arrays.put("gone", np.arange(2))
        seed.kv.update({"k1": "base", "k2": "base", "k3": "base"})
    a = BucketSQLite(config, NO_TIMER).start()
    b = BucketSQLite(config, NO_TIMER).start()
    try:
        a.arrays.delete("gone")
        a.kv["k1"] = "a"  # only a changed it
        a.kv.delete("k3")  # a deleted, b rewrites it below: the write wins
        a.force_flush()
        b.kv["k2"] = "b"  # only b changed it
        b.kv["k3"] = "b"
        b.force_flush()
        assert b.last_merge is not None
        assert b.last_merge.conflicts == ["kv 'k3': kept ours over their delete (committed later)"]
    finally:
        a.stop()
        b.stop()
    with BucketSQLite(config, NO_TIMER) as r:
        assert "gone" not in r.arrays
        assert (r.kv["k1"], r.kv["k2"], r.kv["k3"]) == ("a", "b", "b")


def test_merge_reports_reach_a_callback(config: BucketConfig) -> None:
    seen = []
    a = BucketSQLite(config, NO_TIMER).start()
    b = BucketSQLite(config, NO_TIMER).start()
    b.on_merge = seen.append
    try:
        a.kv["x"] = "1"
        a.force_flush()
        b.kv["y"] = "2"
        b.force_flush()
    finally:
        a.stop()
        b.stop()
    assert len(seen) == 1 and seen[0].taken >= 1 and seen[0].commits == 1
    assert str(seen[0]).startswith("took in 1 commit of other writers")


def _writer(config: BucketConfig, n: int, entries: int, queue: "multiprocessing.Queue[str]", barrier: object) -> None:
    try:
        rng = np.random.default_rng(n)
        bh = BucketSQLite(config, SnapshotConfig(interval_seconds=0)).start()
        barrier.wait(120)  # type: ignore[attr-defined]  # all writers race from here
        merges = []
        bh.on_merge = merges.append
        for i in range(entries):
            kind = i % 4
            name = f"p{n}/e{i}"
            if kind == 0:
                bh.frames.put(name, pd.DataFrame({"n": [n] * 5, "i": np.arange(5) + i}))
            elif kind == 1:
                bh.arrays.put(name, rng.normal(size=(20, 3)))
            elif kind == 2:
                bh.kv[name] = f"value {n}/{i}"
            else:
                bh.named_files.put(name, f"file {n}/{i}".encode())
            if i % 10 == 0:
                bh.arrays.put("shared", np.full(4, n * 1000 + i))  # everyone adds versions to one name
            if i % 5 == 4:
                bh.force_flush()
        bh.stop()
        queue.put(f"ok {n} {len(merges)}")
    except BaseException:  # noqa: BLE001 - reported to the parent
        queue.put(f"error {n}: {traceback.format_exc()}")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["moto", "seaweedfs"], indirect=True)
def test_four_processes_fifty_entries_each(config: BucketConfig) -> None:
    writers, entries = 4, 50
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[str] = ctx.Queue()
    barrier = ctx.Barrier(writers)
    procs = [ctx.Process(target=_writer, args=(config, n, entries, queue, barrier)) for n in range(writers)]
    started = time.monotonic()
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
    assert all(r.startswith("ok") for r in results), results
    merges = sum(int(r.split()[2]) for r in results)
    assert merges > 0  # the writers really did race: some flushes had to merge
    with BucketSQLite(config, NO_TIMER) as r:
        for n in range(writers):
            for i in range(entries):
                name = f"p{n}/e{i}"
                kind = i % 4
                if kind == 0:
                    df = r.frames.get(name)
                    assert list(df["i"]) == list(range(i, i + 5)) and set(df["n"]) == {n}
                elif kind == 1:
                    assert r.arrays.get(name).shape == (20, 3)  # the blob is there and verifies
                elif kind == 2:
                    assert r.kv[name] == f"value {n}/{i}"
                else:
                    assert r.named_files.get(name) == f"file {n}/{i}".encode()
        shared = r.arrays.history("shared")
        assert sorted(v.version for v in shared) == list(range(1, writers * 5 + 1))
        values = sorted(int(r.arrays.get("shared", v.version)[0]) for v in shared)
        assert values == sorted(n * 1000 + i for n in range(writers) for i in range(0, entries, 10))
        assert r.files.gc(grace_seconds=3600).dangling_rows_found == 0
    print(f"{writers} writers x {entries} entries, {merges} merges, in {time.monotonic() - started:.1f} s")


def test_restore_from_previous_snapshot(config: BucketConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """``restore_from='prev'`` is an undo: the state before the newest commit, committed again as a new commit;
    a damaged copy at the key costs nothing either way (the checkpoints and the log hold the catalog)."""
    monkeypatch.setattr(BucketSQLite, "checkpoint_every", 1)
    with BucketSQLite(config, NO_TIMER) as bh:
        bh.kv["v"] = "1"
        bh.force_flush()
        bh.kv["v"] = "2"
    bucket = open_bucket(config)
    bucket.put_bytes(b"garbage, not a database", config.key)
    with BucketSQLite(config, NO_TIMER) as bh:
        assert bh.kv["v"] == "2"
    with BucketSQLite(config, NO_TIMER, restore_from="prev") as bh:
        assert bh.kv["v"] == "1" and bh.restored_from == f"{config.key} as of commit 1, the one before the newest"
        assert bh.dirty  # the undo is committed by the next flush
    with BucketSQLite(config, NO_TIMER) as bh:
        assert bh.kv["v"] == "1" and bh.log_position == 3
        bh.kv["v"] = "3"
    with BucketSQLite(config, NO_TIMER) as bh:
        assert bh.kv["v"] == "3"
        assert bh.restored_from == config.key  # the checkpoint of commit 4 replaced the damaged copy
    fresh = BucketConfig.for_local(Path(str(config.local_path) + "-empty")) if config.local_path else None
    if fresh is not None:
        with pytest.raises(SnapshotCorruptError, match="nothing was committed"):
            BucketSQLite(fresh, NO_TIMER, restore_from="prev").start()


def test_check_reports_and_fixes_only_when_asked(config: BucketConfig) -> None:
    import hashlib

    with BucketSQLite(config, NO_TIMER) as bh:
        assert bh.check().ok
        kept = bh.arrays.put("kept", np.arange(10)).bh_key
        dangling = bh.arrays.put("dangling", np.arange(20)).bh_key
        bh.bucket.delete(bh.files.object_key(dangling))
        orphan = hashlib.sha256(b"orphan").hexdigest()
        bh.bucket.put_bytes(b"orphan", bh.files.object_key(orphan))
        corrupt = bh.named_files.put("doc", b"original").bh_key
        bh.bucket.put_bytes(b"ORIGINAL", bh.files.object_key(corrupt))  # same length, other bytes
        unregistered = bh.arrays.put("lost_row", np.arange(30)).bh_key
        bh.connection.execute("DELETE FROM filestore WHERE bh_key = ?", (unregistered,))
        bh.connection.commit()

        report = bh.check()
        assert report.dangling_rows == [dangling] and report.orphan_blobs == [orphan]
        assert report.corrupt_blobs == [corrupt] and report.unregistered_blobs == [unregistered]
        assert not report.ok and report.fixed == []
        assert bh.bucket.exists(bh.files.object_key(orphan))  # nothing changed without fix=True
        assert bh.check(verify=False).corrupt_blobs == []  # a quick check does not read the bytes

        fixed = bh.check(fix=True, grace_seconds=0)
        assert len(fixed.fixed) == 2
        assert not bh.bucket.exists(bh.files.object_key(orphan))
        assert bh.files.metadata(unregistered) is not None
        assert bh.files.metadata(dangling) is not None  # dangling rows are kept for a person to decide
        assert bh.bucket.exists(bh.files.object_key(corrupt))  # the only copy, even if damaged
        again = bh.check()
        assert again.orphan_blobs == [] and again.unregistered_blobs == [] and again.dangling_rows == [dangling]
        np.testing.assert_array_equal(bh.arrays.get("lost_row"), np.arange(30))
        assert bh.files.metadata(kept) is not None


def test_a_fast_clock_wins_no_conflict(config: BucketConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    a = BucketSQLite(config, NO_TIMER).start()
    b = BucketSQLite(config, NO_TIMER).start()
    real_time = time.time
    try:
        with monkeypatch.context() as m:  # b's machine runs an hour fast
            m.setattr(time, "time", lambda: real_time() + 3600)
            b.kv["threshold"] = "from b"
            b.force_flush()
        a.kv["threshold"] = "from a"  # set and committed after b's: the later commit
        a.force_flush()
        assert a.last_merge is not None
        assert a.last_merge.conflicts == ["kv 'threshold': kept ours over their value (committed later)"]
    finally:
        a.stop()
        b.stop()
    with BucketSQLite(config, NO_TIMER) as r:
        assert r.kv["threshold"] == "from a"


def test_version_numbers_are_never_given_out_twice(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as bh:
        bh.arrays.put("x", np.arange(1))
        bh.arrays.put("x", np.arange(2))
        bh.arrays.delete("x", 2)
        assert bh.arrays.put("x", np.arange(3)).version == 3  # x@2 stays retired
        bh.arrays.delete("x")
        assert bh.arrays.put("x", np.arange(4)).version == 4
        assert [v.version for v in bh.arrays.history("x")] == [4]
    with BucketSQLite(config, NO_TIMER) as bh:  # and after a restart
        bh.frames.put("x", pd.DataFrame({"a": [1]}))
        bh.frames.delete("x")
        assert bh.frames.put("x", pd.DataFrame({"a": [2]})).version == 2
        assert bh.arrays.put("x", np.arange(5)).version == 5


def test_delete_then_put_is_neither_lost_nor_resurrected(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as seed:
        seed.arrays.put("x", np.zeros(3))
        seed.arrays.put("y", np.zeros(3))
    a = BucketSQLite(config, NO_TIMER).start()
    b = BucketSQLite(config, NO_TIMER).start()
    try:
        a.arrays.delete("x")  # a replaces x: the old data must not come back
        a.arrays.put("x", np.ones(3))
        a.force_flush()
        b.arrays.delete("y")  # b replaces y: its new put must survive a's commit, which still lists y@1
        b.arrays.put("y", np.full(3, 7.0))
        b.force_flush()
    finally:
        a.stop()
        b.stop()
    with BucketSQLite(config, NO_TIMER) as r:
        for name, value in (("x", 1.0), ("y", 7.0)):
            history = r.arrays.history(name)
            assert [v.version for v in history] == [2], (name, history)
            np.testing.assert_array_equal(r.arrays.get(name), np.full(3, value))
        assert r.check().ok


def test_numbers_stay_unique_when_both_writers_delete_and_put(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as seed:
        seed.arrays.put("s", np.arange(1))
    a = BucketSQLite(config, NO_TIMER).start()
    b = BucketSQLite(config, NO_TIMER).start()
    try:
        a.arrays.put("s", np.arange(2))  # a: s@2
        a.arrays.delete("s", 2)
        a.force_flush()
        b.arrays.put("s", np.arange(3))  # b: its own s@2, then retired, then s@3
        b.arrays.delete("s", 2)
        b.arrays.put("s", np.arange(4))
        b.force_flush()
        a.arrays.put("s", np.arange(5))
        a.force_flush()
        numbers = [v.version for v in a.arrays.history("s")]
    finally:
        a.stop()
        b.stop()
    assert len(numbers) == len(set(numbers))
    with BucketSQLite(config, NO_TIMER) as r:
        sizes = {v.version: r.arrays.get("s", v.version).size for v in r.arrays.history("s")}
        assert sizes[1] == 1 and sorted(sizes.values()) == [1, 4, 5]
        assert sizes[max(sizes)] == 5


def test_pull_takes_in_a_teammates_commits(config: BucketConfig) -> None:
    counting = CountingBucket(open_bucket(config))
    a = BucketSQLite(config, NO_TIMER, bucket_client=counting).start()
    b = BucketSQLite(config, NO_TIMER).start()
    try:
        a.kv["mine"] = "unsaved"  # a local change not flushed yet survives the pull
        b.arrays.put("teammate_result", np.arange(4))
        b.kv["shared"] = "from b"
        b.force_flush()
        assert "teammate_result" not in a.arrays
        report = a.pull()
        assert report is not None and report.taken >= 2
        np.testing.assert_array_equal(a.arrays.get("teammate_result"), np.arange(4))
        assert (a.kv["shared"], a.kv["mine"]) == ("from b", "unsaved")
        assert a.dirty  # a's own change still waits for its flush
        a.force_flush()
        counting.reset()
        assert a.pull() is None  # nothing new: one GET of the next commit, a 404
        assert counting.calls == {"open_read": 1} and counting.bytes_in == 0
        b.kv["again"] = "2"
        b.force_flush()
        assert a.pull() is not None and not a.dirty  # a had nothing waiting: it now holds b's catalog exactly
    finally:
        a.stop()
        b.stop()


def _flushing_writer(config: BucketConfig, n: int, ops: int, queue: "multiprocessing.Queue[str]",
                     barrier: object) -> None:
    """Mixed operations, each followed by force_flush(); reports what it stored and deleted."""
    try:
        rng = np.random.default_rng(100 + n)
        bh = BucketSQLite(config, SnapshotConfig(interval_seconds=0)).start()
        barrier.wait(120)  # type: ignore[attr-defined]
        merges = 0
        for i in range(ops):
            name = f"w{n}/e{i}"
            kind = i % 6
            if kind == 0:
                bh.frames.put(name, pd.DataFrame({"n": [n], "i": [i]}))
            elif kind == 1:
                bh.arrays.put(name, np.full(3, n * 1000 + i))
            elif kind == 2:
                bh.kv[name] = f"{n}/{i}"
            elif kind == 3:
                bh.named_files.put(name, f"file {n}/{i}".encode())
            elif kind == 4:
                bh.arrays.put("shared", np.full(2, n * 1000 + i))  # everyone versions one name
            else:
                victim = f"w{n}/e{i - 4}"  # delete this writer's array from four steps back
                bh.arrays.delete(victim)
            bh.force_flush()
            merges += bh.last_merge is not None
            bh.last_merge = None
            if rng.random() < 0.1:
                bh.pull()
        bh.stop()
        queue.put(f"ok {n} {merges}")
    except BaseException:  # noqa: BLE001 - reported to the parent
        queue.put(f"error {n}: {traceback.format_exc()}")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["moto", "seaweedfs"], indirect=True)
def test_writers_flushing_after_every_operation_never_give_up(config: BucketConfig) -> None:
    writers, ops = 8, 60
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[str] = ctx.Queue()
    barrier = ctx.Barrier(writers)
    procs = [ctx.Process(target=_flushing_writer, args=(config, n, ops, queue, barrier)) for n in range(writers)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    assert all(r.startswith("ok") for r in results), results
    assert sum(int(r.split()[2]) for r in results) > 0  # they raced
    with BucketSQLite(config, NO_TIMER) as r:
        for n in range(writers):
            for i in range(ops):
                name = f"w{n}/e{i}"
                kind = i % 6
                if kind == 0:
                    assert r.frames.get(name)["i"].tolist() == [i]
                elif kind == 1:
                    deleted = i + 4 < ops and (i + 4) % 6 == 5
                    assert (name in r.arrays) != deleted, name
                    if not deleted:
                        np.testing.assert_array_equal(r.arrays.get(name), np.full(3, n * 1000 + i))
                elif kind == 2:
                    assert r.kv[name] == f"{n}/{i}"
                elif kind == 3:
                    assert r.named_files.get(name) == f"file {n}/{i}".encode()
        history = r.arrays.history("shared")
        numbers = [v.version for v in history]
        assert len(numbers) == len(set(numbers)) == writers * (ops // 6)
        report = r.check()
        assert not (report.dangling_rows or report.corrupt_blobs or report.unregistered_blobs), report
        r.files.gc(grace_seconds=0)  # the deleted arrays' blobs (every writer has stopped: nothing is in flight)
        assert r.check().ok
