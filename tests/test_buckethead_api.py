"""Code written for buckethead 0.4.1 runs against bh_notebook, and both share one bucket and one catalog.

Each test is written the way buckethead's documentation uses the library (its keyword names, its exceptions,
its table layout), on the local backend and on a real S3 server (moto).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bh_notebook import BucketConfig, BucketSQLite, FileStore, KVStore, SnapshotConfig
from bh_notebook.storage import open_bucket
from bh_notebook.storage.bucket import BucketClient

# buckethead 0.4.1's tables, exactly as it creates them.
BUCKETHEAD_KV = """
CREATE TABLE IF NOT EXISTS bh_kv (
    key        TEXT PRIMARY KEY,
    value      BLOB NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
)
"""
BUCKETHEAD_FILESTORE = """
CREATE TABLE IF NOT EXISTS filestore (
    bh_key       TEXT PRIMARY KEY,
    object_key   TEXT NOT NULL,
    size         INTEGER NOT NULL,
    mime         TEXT,
    filename     TEXT,
    created_at   REAL NOT NULL,
    metadata     TEXT
)
"""
BUCKETHEAD_FILESTORE_INDEX = "CREATE INDEX IF NOT EXISTS idx_filestore_created ON filestore(created_at)"
# How buckethead's KVStore writes a key: the row is created with both times, an update moves updated_at only.
BUCKETHEAD_KV_WRITE = (
    "INSERT INTO bh_kv (key, value, created_at, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = ?"
)
# The bh_kv of bh_notebook before it had created_at.
OLD_BH_NOTEBOOK_KV = "CREATE TABLE bh_kv (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL, updated_at REAL NOT NULL)"

NO_TIMER = SnapshotConfig(interval_seconds=0)


@pytest.fixture(autouse=True)
def _key_holds_every_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """buckethead reads and writes the catalog at the key: each session ends by refreshing the checkpoint there
    (by default only one older than a minute is), so buckethead sees what bh_notebook committed."""
    monkeypatch.setattr(BucketSQLite, "checkpoint_at_stop_seconds", 0.0)


@pytest.fixture(params=["local", "moto"])
def cfg(request: pytest.FixtureRequest, make_config: Callable[..., BucketConfig]) -> BucketConfig:
    return make_config(request.param)


def _kv_shape(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
    """bh_kv's columns as SQLite reports them: name, type, NOT NULL, default, primary key."""
    return [tuple(r[1:]) for r in conn.execute("PRAGMA table_info(bh_kv)")]


def _buckethead_kv_shape() -> list[tuple[object, ...]]:
    db = sqlite3.connect(":memory:")
    db.execute(BUCKETHEAD_KV)
    return _kv_shape(db)


def _plant(cfg: BucketConfig, path: Path) -> None:
    """Upload a catalog file as the snapshot, as another library's flush would."""
    bucket = open_bucket(cfg)
    try:
        bucket.upload(path, cfg.key)
    finally:
        bucket.close()


def _download(cfg: BucketConfig, path: Path) -> sqlite3.Connection:
    bucket = open_bucket(cfg)
    try:
        bucket.download(cfg.key, path)
    finally:
        bucket.close()
    return sqlite3.connect(path)


def _buckethead_write(conn: sqlite3.Connection, key: str, value: bytes, now: float) -> None:
    conn.execute(BUCKETHEAD_KV_WRITE, (key, value, now, now, now))
    conn.commit()


# -- one catalog, two libraries -------------------------------------------------------------------------------


def test_a_buckethead_catalog_is_read_written_and_keeps_its_schema(cfg: BucketConfig, tmp_path: Path) -> None:
    blob = b"written by buckethead"
    bh_key = hashlib.sha256(blob).hexdigest()
    made = tmp_path / "buckethead.db"
    db = sqlite3.connect(made)
    db.execute(BUCKETHEAD_KV)
    db.execute(BUCKETHEAD_FILESTORE)
    db.execute(BUCKETHEAD_FILESTORE_INDEX)
    _buckethead_write(db, "model.lr", b"0.01", 1000.0)
    _buckethead_write(db, "model.name", b"resnet", 1001.0)
    db.execute("INSERT INTO filestore VALUES (?, ?, ?, ?, ?, ?, ?)",
               (bh_key, "files/" + bh_key, len(blob), "text/plain", "note.txt", 1002.0, '{"by": "buckethead"}'))
    db.commit()
    db.close()
    bucket = open_bucket(cfg)
    bucket.put_bytes(blob, "files/" + bh_key)
    bucket.close()
    _plant(cfg, made)

    before = time.time()
    with BucketSQLite(bucket_config=cfg, snapshot_config=NO_TIMER) as bh:
        assert bh.kv.get("model.lr") == "0.01"
        assert bh.kv["model.name"] == "resnet"
        assert bh.files.get(bh_key) == blob
        assert bh.files.metadata(bh_key).metadata == {"by": "buckethead"}  # type: ignore[union-attr]
        bh.kv["model.lr"] = "0.02"  # an update: its creation time stays
        bh.kv.set("model.epochs", "10")  # a new key
        new_key = bh.files.put(b"written by bh_notebook", filename="ours.txt")

    result = _download(cfg, tmp_path / "after.db")
    assert _kv_shape(result) == _buckethead_kv_shape()
    rows = {r[0]: r[1:] for r in result.execute("SELECT key, value, created_at, updated_at FROM bh_kv")}
    assert rows["model.name"] == (b"resnet", 1001.0, 1001.0)
    value, created, updated = rows["model.lr"]
    assert value == b"0.02" and created == 1000.0 and updated >= before
    value, created, updated = rows["model.epochs"]
    assert value == b"10" and created == updated >= before
    assert {r[0] for r in result.execute("SELECT bh_key FROM filestore")} == {bh_key, new_key}

    # buckethead writes into what bh_notebook committed, and bh_notebook reads it back.
    _buckethead_write(result, "model.lr", b"0.03", 2000.0)
    _buckethead_write(result, "from.buckethead", b"yes", 2001.0)
    result.close()
    _plant(cfg, tmp_path / "after.db")
    with BucketSQLite(cfg, NO_TIMER) as bh:
        assert bh.kv["model.lr"] == "0.03" and bh.kv["from.buckethead"] == "yes"
        assert bh.kv.created_at("model.lr") == 1000.0 and bh.kv.updated_at("model.lr") == 2000.0


def test_a_new_catalog_has_buckethead_kv_table(cfg: BucketConfig, tmp_path: Path) -> None:
    with BucketSQLite(cfg, NO_TIMER) as bh:
        bh.kv["a"] = "1"
    result = _download(cfg, tmp_path / "snap.db")
    assert _kv_shape(result) == _buckethead_kv_shape()
    _buckethead_write(result, "b", b"2", 5.0)  # buckethead's insert fits


def test_a_catalog_without_created_at_is_migrated_on_open(cfg: BucketConfig, tmp_path: Path) -> None:
    made = tmp_path / "old.db"
    db = sqlite3.connect(made)
    db.execute(OLD_BH_NOTEBOOK_KV)
    db.execute("INSERT INTO bh_kv VALUES ('old', X'6f6c64', 500.0)")
    db.commit()
    db.close()
    _plant(cfg, made)
    with BucketSQLite(cfg, NO_TIMER) as bh:
        assert bh.kv.created_at("old") == 500.0  # the earliest time the old catalog knew
        bh.kv["old"] = "changed"
        bh.kv["new"] = "x"
        assert bh.kv.created_at("old") == 500.0
    result = _download(cfg, tmp_path / "after.db")
    assert {r[1] for r in result.execute("PRAGMA table_info(bh_kv)")} == {"key", "value", "created_at",
                                                                          "updated_at"}
    _buckethead_write(result, "bh", b"1", 7.0)
    assert result.execute("SELECT value, created_at FROM bh_kv WHERE key = 'old'").fetchone() == (b"changed", 500.0)


def _rewrite(cfg: BucketConfig, tmp_path: Path, change: Callable[[sqlite3.Connection], None]) -> None:
    """Another writer commits: the snapshot is downloaded, changed with sqlite3 and uploaded over it."""
    db = _download(cfg, tmp_path / "other.db")
    change(db)
    db.commit()
    db.close()
    _plant(cfg, tmp_path / "other.db")


def test_merge_with_a_writer_whose_kv_has_no_created_at(cfg: BucketConfig, tmp_path: Path) -> None:
    with BucketSQLite(cfg, NO_TIMER) as seed:
        seed.kv["shared"] = "1"
        seed.kv["mine"] = "m"
    with BucketSQLite(cfg, NO_TIMER) as bh:
        created = bh.kv.created_at("shared")

        def older_writer(db: sqlite3.Connection) -> None:  # its bh_kv has no created_at column
            db.execute("CREATE TABLE kv_old (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL, "
                       "updated_at REAL NOT NULL)")
            db.execute("INSERT INTO kv_old SELECT key, value, updated_at FROM bh_kv")
            db.execute("DROP TABLE bh_kv")
            db.execute("ALTER TABLE kv_old RENAME TO bh_kv")
            db.execute("UPDATE bh_kv SET value = X'32', updated_at = 3000.0 WHERE key = 'shared'")
            db.execute("INSERT INTO bh_kv VALUES ('theirs', X'74', 3001.0)")

        _rewrite(cfg, tmp_path, older_writer)
        bh.kv["ours"] = "o"
        bh.force_flush()  # loses the race, merges their catalog, commits
        assert bh.last_merge is not None and bh.last_merge.conflicts == []
        assert bh.kv["shared"] == "2" and bh.kv["theirs"] == "t" and bh.kv["ours"] == "o" and bh.kv["mine"] == "m"
        assert bh.kv.created_at("shared") == created  # an update keeps the original creation time
        assert bh.kv.created_at("theirs") == 3001.0  # a new key dates from its only known time
    with BucketSQLite(cfg, NO_TIMER) as reader:
        assert dict(reader.kv.items()) == {"shared": "2", "theirs": "t", "ours": "o", "mine": "m"}


def test_merge_with_a_buckethead_commit_carries_created_at(cfg: BucketConfig, tmp_path: Path) -> None:
    with BucketSQLite(cfg, NO_TIMER) as seed:
        seed.kv["shared"] = "1"
    with BucketSQLite(cfg, NO_TIMER) as bh:
        created = bh.kv.created_at("shared")

        def buckethead(db: sqlite3.Connection) -> None:
            _buckethead_write(db, "shared", b"2", 4000.0)
            _buckethead_write(db, "added", b"a", 4001.0)

        _rewrite(cfg, tmp_path, buckethead)
        bh.kv["ours"] = "o"
        bh.force_flush()
        assert bh.kv["shared"] == "2" and bh.kv["added"] == "a"
        assert bh.kv.created_at("shared") == created and bh.kv.updated_at("shared") == 4000.0
        assert bh.kv.created_at("added") == 4001.0
    result = _download(cfg, tmp_path / "after.db")
    assert _kv_shape(result) == _buckethead_kv_shape()


# -- BucketSQLite ---------------------------------------------------------------------------------------------


def test_constructed_with_buckethead_keywords(cfg: BucketConfig) -> None:
    snap = SnapshotConfig(interval_seconds=30.0, min_interval_seconds=1.0, keep_previous=True)
    bh = BucketSQLite(bucket_config=cfg, snapshot_config=snap)
    assert bh.bucket_config is cfg and bh.snapshot_config is snap  # readable before start(), as in buckethead
    with pytest.raises(TypeError):
        BucketSQLite(cfg, bucket_config=cfg)


def test_before_start_the_properties_raise_runtime_error(cfg: BucketConfig) -> None:
    bh = BucketSQLite(cfg, NO_TIMER)
    for name in ("uri", "connection", "kv", "files"):
        with pytest.raises(RuntimeError, match="not started"):
            getattr(bh, name)
    with pytest.raises(RuntimeError):
        bh.connect()


def test_uri_opens_a_connection_to_the_catalog(cfg: BucketConfig) -> None:
    with BucketSQLite(cfg, NO_TIMER) as bh:
        bh.kv["k"] = "v"
        other = sqlite3.connect(bh.uri, uri=True)
        try:
            assert other.execute("SELECT value FROM bh_kv WHERE key = 'k'").fetchone() == (b"v",)
        finally:
            other.close()


def test_a_second_start_raises(cfg: BucketConfig) -> None:
    bh = BucketSQLite(cfg, NO_TIMER)
    bh.start()
    try:
        with pytest.raises(RuntimeError, match="called twice"):
            bh.start()
        assert bh.started
    finally:
        bh.stop()


def test_on_flush_complete_takes_duration_and_bytes(cfg: BucketConfig) -> None:
    seen: list[tuple[float, int]] = []
    results: list[object] = []

    def on_flush_complete(duration: float, nbytes: int) -> None:  # buckethead's callback
        seen.append((duration, nbytes))

    with BucketSQLite(cfg, NO_TIMER, on_flush_complete=on_flush_complete) as bh:
        bh.kv["k"] = "v"
        bh.force_flush()
    assert seen and isinstance(seen[0][0], float) and seen[0][0] >= 0 and seen[0][1] > 0
    with BucketSQLite(cfg, NO_TIMER, on_flush_complete=results.append) as bh:
        bh.kv["k"] = "w"
        bh.force_flush()
    assert results and getattr(results[0], "uploaded") is True  # one argument: the FlushResult


@pytest.mark.parametrize("kwargs", [
    dict(interval_seconds=5.0, min_interval_seconds=10.0),  # min above interval
    dict(interval_seconds=-1.0),
    dict(min_interval_seconds=-0.5),
    dict(interval_seconds=float("nan")),
    dict(interval_seconds="60"),
    dict(keep_previous="yes"),
])
def test_snapshot_config_is_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SnapshotConfig(**kwargs)  # type: ignore[arg-type]


def test_snapshot_config_defaults_and_off() -> None:
    assert SnapshotConfig() == SnapshotConfig(interval_seconds=60.0, min_interval_seconds=5.0, keep_previous=True)
    SnapshotConfig(interval_seconds=0)  # ours: no timer
    SnapshotConfig(interval_seconds=1.0, min_interval_seconds=0)  # ours: no debounce


# -- KVStore and FileStore ------------------------------------------------------------------------------------


def test_kv_keys_is_an_iterator(cfg: BucketConfig) -> None:
    with BucketSQLite(cfg, NO_TIMER) as bh:
        bh.kv["b"] = "2"
        bh.kv["a"] = "1"
        keys = bh.kv.keys()
        assert isinstance(keys, Iterator)
        assert next(keys) == "a" and list(keys) == ["b"]
        assert list(bh.kv.keys("a")) == ["a"]


def test_kv_store_on_a_plain_connection() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute(BUCKETHEAD_KV)
    kv = KVStore(conn)
    kv.set("k", "v")
    kv.set_bytes("b", b"\xff")
    assert kv.get("k") == "v" and kv.get_bytes("b") == b"\xff" and kv.get("missing") is None
    assert kv.delete("k") is True and kv.delete("k") is False
    with pytest.raises(KeyError):
        kv["k"]
    assert len(kv) == 1 and "b" in kv


def test_unknown_blob_raises_file_not_found(cfg: BucketConfig, tmp_path: Path) -> None:
    with BucketSQLite(cfg, NO_TIMER) as bh:
        unknown = "0" * 64
        with pytest.raises(FileNotFoundError):
            bh.files.get(unknown)
        with pytest.raises(FileNotFoundError):
            bh.files.get(unknown, dest=tmp_path / "x")
        with pytest.raises(FileNotFoundError):
            bh.files.head(unknown)
        with pytest.raises(FileNotFoundError):
            bh.files.get("not-a-key")
        with pytest.raises(KeyError):  # and still our NotFound
            bh.files.get(unknown)
        assert bh.files.metadata(unknown) is None
        assert bh.files.metadata("not-a-key") is None
        assert bh.files.metadata("../../etc/passwd") is None
        key = bh.files.put(b"present")
        meta = bh.files.head(key)
        assert meta.size == 7 and meta.bh_key == key


def test_list_is_newest_first_with_a_bh_key_cursor(cfg: BucketConfig) -> None:
    with BucketSQLite(cfg, NO_TIMER) as bh:
        keys = []
        for i in range(5):
            keys.append(bh.files.put(f"blob {i}".encode()))
            time.sleep(0.002)
        newest_first = list(reversed(keys))
        assert [m.bh_key for m in bh.files.list()] == newest_first
        page1 = bh.files.list(limit=2)
        page2 = bh.files.list(limit=2, after=page1[-1].bh_key)
        page3 = bh.files.list(limit=2, after=page2[-1].bh_key)
        assert [m.bh_key for m in page1 + page2 + page3] == newest_first and len(page3) == 1
        assert bh.files.list(after=newest_first[-1]) == []
        assert bh.files.list(after="f" * 64) == []  # a cursor the catalog does not hold: no page


def test_a_file_store_on_a_bucket_client_built_from_config(cfg: BucketConfig, tmp_path: Path) -> None:
    client = BucketClient(cfg)  # type: ignore[abstract]
    try:
        assert isinstance(client, BucketClient)
        client.put_bytes(b"hello", "docs/a.txt")
        assert client.exists("docs/a.txt") and client.get_bytes("docs/a.txt") == b"hello"
        assert list(client.list_keys("docs/")) == ["docs/a.txt"]
        assert client.last_modified("docs/a.txt") is not None and client.last_modified("docs/none") is None
        src = tmp_path / "up.bin"
        src.write_bytes(b"uploaded")
        client.upload(src, "docs/up.bin")
        client.download("docs/up.bin", tmp_path / "down.bin")
        assert (tmp_path / "down.bin").read_bytes() == b"uploaded"
        client.copy("docs/a.txt", "docs/b.txt")
        client.delete("docs/a.txt")
        assert not client.exists("docs/a.txt") and client.exists("docs/b.txt")

        conn = sqlite3.connect(":memory:")
        files = FileStore(conn, client, prefix="blobs")
        key = files.put(b"content", filename="c.txt", mime="text/plain", metadata={"k": "v"})
        assert client.exists("blobs/" + key) and files.get(key) == b"content"
        assert files.head(key).metadata == {"k": "v"}
    finally:
        client.close()
    with pytest.raises(TypeError):
        BucketClient("not a config")  # type: ignore[abstract, arg-type]


def test_generate_presigned_get(cfg: BucketConfig) -> None:
    with BucketSQLite(cfg, NO_TIMER) as bh:
        key = bh.files.put(b"shared bytes")
        url = bh.bucket.generate_presigned_get("files/" + key, expires_in=300)
        assert isinstance(url, str)
        with urllib.request.urlopen(url) as answer:  # noqa: S310 - a loopback server or a local file
            assert answer.read() == b"shared bytes"
        for bad in (0, 7 * 24 * 3600 + 1, 1.5):
            with pytest.raises(ValueError):
                bh.bucket.generate_presigned_get("files/" + key, expires_in=bad)  # type: ignore[arg-type]
