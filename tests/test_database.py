"""BucketSQLite: restore, flush (timer, debounce, force, exit), snapshots, growth past 1 GiB, bad buckets."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig
from bh_notebook.errors import (
    BucketNotFound,
    EndpointUnreachable,
    NotStarted,
    SnapshotCorruptError,
)
from bh_notebook.storage import open_bucket
from bh_notebook.testing.servers import free_port

from bh_notebook.testing.counting import CountingBucket

NO_TIMER = SnapshotConfig(interval_seconds=0, min_interval_seconds=0)


def test_restart_sees_everything(config: BucketConfig, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("file body")
    with BucketSQLite(config) as bh:
        bh.kv["name"] = "value"
        bh.kv.set_bytes("raw", b"\x00\x01")
        key = bh.files.put(tmp_path / "f.txt")
        bh.connection.execute("CREATE TABLE user_notes (t TEXT)")
        bh.connection.execute("INSERT INTO user_notes VALUES ('mine')")
        bh.connection.commit()
    with BucketSQLite(config) as bh:
        assert bh.restored_from == config.key
        assert bh.kv["name"] == "value" and bh.kv.get_bytes("raw") == b"\x00\x01"
        assert bh.files.get(key) == b"file body"
        assert bh.connection.execute("SELECT t FROM user_notes").fetchall() == [("mine",)]
        assert not bh.dirty


def test_idle_flushes_send_no_request(config: BucketConfig) -> None:
    counting = CountingBucket(open_bucket(config))
    with BucketSQLite(config, NO_TIMER, bucket_client=counting) as bh:
        bh.kv["a"] = "1"
        assert bh.dirty
        result = bh.force_flush()
        assert result.uploaded and result.nbytes > 0
        writes = counting.writes
        calls = dict(counting.calls)
        assert not bh.dirty
        for _ in range(3):
            assert bh.flush() is False
        assert counting.calls == calls  # not even a HEAD when nothing changed
        again = bh.force_flush()  # forced, but the content is the same: no upload
        assert not again.uploaded and counting.writes == writes
        bh.kv["a"] = "2"
        assert bh.flush() is True
        assert counting.writes > writes


def test_flush_is_debounced_and_timer_catches_up(config: BucketConfig) -> None:
    uploads: list[float] = []
    snap = SnapshotConfig(interval_seconds=30, min_interval_seconds=0.6)
    with BucketSQLite(config, snap, on_flush_complete=lambda r: r.uploaded and uploads.append(time.monotonic())) as bh:
        bh.kv["x"] = "1"
        assert bh.flush() is True
        bh.kv["x"] = "2"
        assert bh.flush() is False  # too soon: left to the timer
        bh.kv["x"] = "3"
        assert bh.flush() is False
        deadline = time.monotonic() + 10
        while bh.dirty and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not bh.dirty
        assert len(uploads) == 2  # the two deferred flushes became one
        assert uploads[1] - uploads[0] >= 0.55
    with BucketSQLite(config, NO_TIMER) as bh:
        assert bh.kv["x"] == "3"


def test_background_timer_flushes(config: BucketConfig) -> None:
    done = threading.Event()
    snap = SnapshotConfig(interval_seconds=0.3, min_interval_seconds=0)
    with BucketSQLite(config, snap, on_flush_complete=lambda r: r.uploaded and done.set()) as bh:
        bh.kv["timer"] = "on"
        assert done.wait(10)
        assert not bh.dirty
        reader = BucketSQLite(config, NO_TIMER).start()
        try:
            assert reader.kv["timer"] == "on"
        finally:
            reader.stop()


def test_callbacks_and_previous_snapshot(config: BucketConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BucketSQLite, "checkpoint_every", 1)  # the key holds a checkpoint of every commit
    events: list[str] = []
    with BucketSQLite(config, NO_TIMER, on_flush_start=lambda: events.append("start"),
                      on_flush_complete=lambda r: events.append(f"done {r.uploaded}")) as bh:
        bh.kv["v"] = "1"
        bh.force_flush()
        assert not bh.bucket.exists(config.key + ".prev")  # nothing to keep yet
        bh.kv["v"] = "2"
        bh.force_flush()
        assert bh.bucket.exists(config.key + ".prev")
        prev = bh.bucket.get_bytes(config.key + ".prev")
    assert events[:4] == ["start", "done True", "start", "done True"]
    conn = sqlite3.connect(":memory:")
    conn.deserialize(prev)
    assert conn.execute("SELECT value FROM bh_kv WHERE key='v'").fetchone()[0] == b"1"


def test_keep_previous_off(make_config, backend: str) -> None:  # type: ignore[no-untyped-def]
    config = make_config(backend)
    with BucketSQLite(config, SnapshotConfig(interval_seconds=0, keep_previous=False)) as bh:
        bh.kv["v"] = "1"
        bh.force_flush()
        bh.kv["v"] = "2"
        bh.force_flush()
        assert not bh.bucket.exists(config.key + ".prev")


def test_corrupt_snapshot_raises_and_changes_nothing(config: BucketConfig) -> None:
    """A damaged catalog file with no log beside it (the whole-snapshot layout) is refused, naming the way out."""
    bucket = open_bucket(config)
    garbage = b"SQLite format 3\x00" + b"\x13" * 5000
    bucket.put_bytes(garbage, config.key)
    before = {i.key: (i.etag, i.size) for i in bucket.list_info()}
    with pytest.raises(SnapshotCorruptError, match="Nothing in the bucket was changed"):
        BucketSQLite(config, NO_TIMER).start()
    bucket.put_bytes(b"not a database at all", config.key)
    before = {i.key: (i.etag, i.size) for i in bucket.list_info()}
    with pytest.raises(SnapshotCorruptError, match=r"\.prev"):
        BucketSQLite(config, NO_TIMER).start()
    assert {i.key: (i.etag, i.size) for i in bucket.list_info()} == before


def test_a_damaged_checkpoint_copy_falls_back_to_the_log(config: BucketConfig) -> None:
    """With a commit log, a damaged copy at the key costs nothing: the newest checkpoint and the commits after it
    hold the catalog, and starting changes nothing in the bucket."""
    with BucketSQLite(config, NO_TIMER) as bh:
        bh.kv["v"] = "1"
        bh.force_flush()
        bh.kv["w"] = "2"
    bucket = open_bucket(config)
    for garbage in (b"SQLite format 3\x00" + b"\x13" * 5000, b"not a database at all", b""):
        bucket.put_bytes(garbage, config.key)
        before = {i.key: (i.etag, i.size) for i in bucket.list_info()}
        with BucketSQLite(config, NO_TIMER) as bh:
            assert (bh.kv["v"], bh.kv["w"]) == ("1", "2")
        assert {i.key: (i.etag, i.size) for i in bucket.list_info()} == before


def test_truncated_snapshot_fails_integrity_check(config: BucketConfig, tmp_path: Path) -> None:
    scratch = BucketConfig.for_local(tmp_path / "scratch")
    with BucketSQLite(scratch, NO_TIMER) as bh:
        bh.connection.execute("CREATE TABLE t (x BLOB)")
        bh.connection.executemany("INSERT INTO t VALUES (?)", [(bytes(3000),) for _ in range(200)])
        bh.connection.commit()
        bh.force_flush()
        good = bh.bucket.get_bytes(config.key)  # the checkpoint copy, as the whole-snapshot layout left one
    bucket = open_bucket(config)
    # Keep the header, scramble pages in the middle: it opens, but the integrity check fails.
    bad = good[:4096] + bytes(b ^ 0x5A for b in good[4096:len(good) // 2]) + good[len(good) // 2:]
    bucket.put_bytes(bad, config.key)
    with pytest.raises(SnapshotCorruptError):
        BucketSQLite(config, NO_TIMER).start()
    assert bucket.get_bytes(config.key) == bad


def test_second_writer_merges_instead_of_overwriting(config: BucketConfig) -> None:
    a = BucketSQLite(config, NO_TIMER).start()
    b = BucketSQLite(config, NO_TIMER).start()
    try:
        a.kv["from_a"] = "1"
        a.kv["who"] = "a"
        a.force_flush()
        b.kv["from_b"] = "2"
        b.kv["who"] = "b"  # committed after a's: the later commit wins the conflict
        result = b.force_flush()
        assert result.uploaded
        report = b.last_merge
        assert report is not None and report.conflicts == ["kv 'who': kept ours over their value (committed later)"]
        assert b.kv["from_a"] == "1"  # b now holds a's entries too
    finally:
        a.stop()
        b.stop()
    with BucketSQLite(config, NO_TIMER) as reader:
        assert (reader.kv["from_a"], reader.kv["from_b"], reader.kv["who"]) == ("1", "2", "b")


def test_connect_vends_one_connection_per_thread(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as bh:
        main = bh.connect()
        assert bh.connect() is main
        seen: list[sqlite3.Connection] = []

        def work() -> None:
            conn = bh.connect()
            seen.append(conn)
            conn.execute("CREATE TABLE IF NOT EXISTS thread_rows (n INTEGER)")
            conn.execute("INSERT INTO thread_rows VALUES (1)")
            conn.commit()

        t = threading.Thread(target=work)
        t.start()
        t.join()
        assert seen[0] is not main
        assert bh.connection.execute("SELECT count(*) FROM thread_rows").fetchone()[0] == 1
        assert bh.dirty  # changes through vended connections count
    with BucketSQLite(config, NO_TIMER) as bh:
        assert bh.connection.execute("SELECT count(*) FROM thread_rows").fetchone()[0] == 1


def test_open_transaction_is_not_snapshotted(config: BucketConfig) -> None:
    """A snapshot waits for a writer's open transaction instead of copying half of it."""
    opened = threading.Event()

    with BucketSQLite(config, NO_TIMER) as bh:
        bh.kv["committed"] = "yes"

        def writer(hold: float) -> None:
            conn = bh.connect()
            conn.execute("CREATE TABLE IF NOT EXISTS pending (x)")
            conn.commit()
            conn.execute("INSERT INTO pending VALUES (1)")  # an implicit transaction, left open a while
            opened.set()
            time.sleep(hold)
            conn.commit()

        t = threading.Thread(target=writer, args=(0.5,))
        t.start()
        opened.wait(5)
        started = time.monotonic()
        result = bh.force_flush()
        assert time.monotonic() - started >= 0.3
        assert result.uploaded
        t.join()

        # A transaction held past the wait limit: the flush gives up, the catalog stays dirty.
        bh.snapshot_wait_seconds = 0.3
        opened.clear()
        t = threading.Thread(target=writer, args=(1.5,))
        t.start()
        opened.wait(5)
        result = bh.force_flush()
        assert not result.uploaded and bh.dirty
        t.join()
        assert bh.force_flush().uploaded
    with BucketSQLite(config, NO_TIMER) as bh:
        assert bh.connection.execute("SELECT count(*) FROM pending").fetchone()[0] == 2


def test_not_started_errors(config: BucketConfig) -> None:
    bh = BucketSQLite(config)
    with pytest.raises(NotStarted, match="start"):
        bh.connection
    with pytest.raises(NotStarted):
        bh.force_flush()
    bh.stop()  # stopping a stopped store is fine
    assert "stopped" in repr(bh)


def test_missing_bucket_refused_at_start(moto_server) -> None:  # type: ignore[no-untyped-def]
    config = moto_server.config("bucket-that-does-not-exist")
    with pytest.raises(BucketNotFound, match="create it first"):
        BucketSQLite(config).start()


def test_refused_endpoint_at_start() -> None:
    config = BucketConfig.for_s3("b", endpoint_url=f"http://127.0.0.1:{free_port()}", access_key_id="k",
                                 secret_access_key="s")
    with pytest.raises(EndpointUnreachable):
        BucketSQLite(config).start()


def test_no_sigint_handler_installed(config: BucketConfig) -> None:
    before = signal.getsignal(signal.SIGINT)
    with BucketSQLite(config, SnapshotConfig(interval_seconds=5)):
        assert signal.getsignal(signal.SIGINT) is before
    assert signal.getsignal(signal.SIGINT) is before


def _run_child(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)


def test_final_flush_at_interpreter_exit(tmp_path: Path) -> None:
    store = tmp_path / "exit-store"
    proc = _run_child(f"""
        from bh_notebook import BucketSQLite, BucketConfig, SnapshotConfig
        bh = BucketSQLite(BucketConfig.for_local({str(store)!r}), SnapshotConfig(interval_seconds=3600)).start()
        bh.kv["written"] = "before exit"
        # no stop(): the atexit hook must flush
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    with BucketSQLite(BucketConfig.for_local(store), NO_TIMER) as bh:
        assert bh.kv["written"] == "before exit"


def test_keyboard_interrupt_does_not_stop_the_store(tmp_path: Path) -> None:
    """SIGINT in the middle of work raises KeyboardInterrupt in the caller; the store keeps running."""
    store = tmp_path / "sigint-store"
    proc = _run_child(f"""
        import os, signal, time
        # (as a kernel does: Python leaves SIGINT ignored when started by a shell that ignores it, a background job)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from bh_notebook import BucketSQLite, BucketConfig, SnapshotConfig
        bh = BucketSQLite(BucketConfig.for_local({str(store)!r}), SnapshotConfig(interval_seconds=3600)).start()
        bh.kv["a"] = "1"
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            print("interrupted")
        assert bh.started
        bh.kv["b"] = "2"
        bh.force_flush()
        print("ok")
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["interrupted", "ok"]
    with BucketSQLite(BucketConfig.for_local(store), NO_TIMER) as bh:
        assert (bh.kv["a"], bh.kv["b"]) == ("1", "2")


@pytest.mark.slow
def test_restored_catalog_grows_past_1_gib(tmp_path: Path) -> None:
    """deserialize() would cap a restored database at 1 GiB; the backup-API restore does not."""
    config = BucketConfig.for_local(tmp_path / "big")
    chunk = 64 * 1024 * 1024
    with BucketSQLite(config, NO_TIMER) as bh:
        bh.connection.execute("CREATE TABLE big (b BLOB)")
        for _ in range(15):  # 960 MiB
            bh.connection.execute("INSERT INTO big VALUES (zeroblob(?))", (chunk,))
        bh.connection.commit()
    with BucketSQLite(config, NO_TIMER) as bh:
        for _ in range(3):  # past 1 GiB after the restore
            bh.connection.execute("INSERT INTO big VALUES (zeroblob(?))", (chunk,))
        bh.connection.commit()
        total = bh.connection.execute("SELECT sum(length(b)) FROM big").fetchone()[0]
        assert total == 18 * chunk > 1024**3
        page_count = bh.connection.execute("PRAGMA page_count").fetchone()[0]
        page_size = bh.connection.execute("PRAGMA page_size").fetchone()[0]
        assert page_count * page_size > 1024**3


def test_temp_folders_of_killed_processes_are_cleaned(config: BucketConfig) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    tmp = Path(tempfile.gettempdir())
    left_by_dead = tmp / f"bh-catalog-{int(dead.stdout)}-leftover"
    left_by_dead.mkdir()
    (left_by_dead / "snap.db").write_bytes(b"x" * 100)
    ours_alive = tmp / f"bh-catalog-{os.getpid()}-inuse"
    ours_alive.mkdir()
    try:
        with BucketSQLite(config, NO_TIMER) as bh:
            bh.kv["k"] = "v"
        assert not left_by_dead.exists()
        assert ours_alive.exists()  # a live process's folder is never touched
    finally:
        shutil.rmtree(left_by_dead, ignore_errors=True)
        shutil.rmtree(ours_alive, ignore_errors=True)
