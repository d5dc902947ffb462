"""Blob writers stage their bytes in the store as they come where it can (the local directory): the blob is on disk
when its producer is done, never whole in memory, and nothing half-written is ever seen or left behind."""

from __future__ import annotations

import errno
import hashlib
import os
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig
from bh_notebook.errors import InvalidKey, StoreFull
from bh_notebook.storage import LocalBucket
from bh_notebook.storage.bucket import Staged
from bh_notebook.storage.local import RESERVED_PREFIX

NO_TIMER = SnapshotConfig(interval_seconds=0)
MB = 1024 * 1024


def _blob(bh: BucketSQLite, bh_key: str | None) -> bytes:
    assert bh_key is not None
    return bh.bucket.get_bytes(bh.files.object_key(bh_key))


def _leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(RESERVED_PREFIX + "tmp-*")]


def test_a_staged_object_is_seen_only_once_committed(tmp_path: Path) -> None:
    bucket = LocalBucket(tmp_path / "store")
    staged = bucket.stage("blobs/")
    assert staged is not None
    staged.write(memoryview(b"hello "))
    staged.write(memoryview(bytearray(b"world")))
    assert list(bucket.list_info()) == []  # (the temp file is hidden)
    with pytest.raises(InvalidKey, match="where this object was staged"):
        staged.commit("elsewhere/k")
    etag = staged.commit("blobs/k")
    assert bucket.get_bytes("blobs/k") == b"hello world"
    info = bucket.head("blobs/k")
    assert info is not None and info.etag == etag and info.size == 11
    staged.discard()  # (after a commit: nothing to do)
    assert bucket.get_bytes("blobs/k") == b"hello world"
    with pytest.raises(ValueError, match="committed or discarded"):
        staged.write(memoryview(b"more"))

    other = bucket.stage("blobs/")
    assert other is not None
    other.write(memoryview(b"never seen"))
    other.discard()
    assert [i.key for i in bucket.list_info()] == ["blobs/k"]
    assert _leftovers(bucket.root) == []


def test_s3_has_no_staging(bh_s3: BucketSQLite) -> None:
    """An S3 object is written under its key only: writers keep the bytes until the hash names them."""
    assert bh_s3.bucket.stage(bh_s3.files.incoming_prefix) is None


@pytest.fixture
def bh_s3(make_config: Callable[..., BucketConfig]) -> Iterator[BucketSQLite]:
    with BucketSQLite(make_config("moto"), NO_TIMER) as bh:
        yield bh


def test_a_local_writer_holds_a_few_batches_not_the_blob(tmp_path: Path) -> None:
    """64 MiB written in 1 MiB pieces: each piece is let go once written and hashed, so the writer never holds
    more than a few 8 MiB batches (it held all 64 MiB until close before staging)."""
    rng = np.random.default_rng(3)
    digest = hashlib.sha256()
    with BucketSQLite(BucketConfig.for_local(tmp_path / "s"), NO_TIMER) as bh:
        tracemalloc.start()
        try:
            with bh.files.writer(filename="big.bin") as w:
                for _ in range(64):
                    piece = rng.bytes(MB)
                    digest.update(piece)
                    w.write(piece)
                    del piece
                _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 32 * MB, f"the writer held {peak / MB:.0f} MiB"
        assert w.bh_key == digest.hexdigest()
        assert hashlib.sha256(_blob(bh, w.bh_key)).hexdigest() == digest.hexdigest()
        assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("backend", ["local", "moto"])
def test_bytes_changed_after_they_are_written_do_not_change_the_blob(
        backend: str, make_config: Callable[..., BucketConfig]) -> None:
    """``write`` copies whatever is not ``bytes``: a bytearray, an Arrow buffer (one that says it is immutable too:
    a slice of a NumPy-backed array's buffer does, and Arrow's IPC writer passes such slices), a NumPy array."""
    with BucketSQLite(make_config(backend), NO_TIMER) as bh:
        mutable = bytearray(b"a" * 100)
        arrow = pa.allocate_buffer(100)
        memoryview(arrow).cast("B")[:] = b"b" * 100
        numbers = np.full(13, 3.0)
        sliced = pa.array(numbers).buffers()[1].slice(8)
        assert not sliced.is_mutable
        parts = [bytes(mutable), bytes(arrow), bytes(sliced)]
        with bh.files.writer() as w:
            w.write(mutable)
            w.write(arrow)
            w.write(sliced)
            mutable[:] = b"x" * 100
            memoryview(arrow).cast("B")[:] = b"y" * 100
            numbers[:] = 7.0
        assert _blob(bh, w.bh_key) == b"".join(parts)
        assert w.bh_key == hashlib.sha256(b"".join(parts)).hexdigest()


def _staged_long_ago(bucket: LocalBucket, data: bytes, age: float) -> Staged:
    """An object staged under ``blobs/`` holding ``data``, its file last written ``age`` seconds ago."""
    import time

    staged = bucket.stage("blobs/")
    assert staged is not None
    staged.write(memoryview(data))
    (file,) = [p for p in (bucket.root / "blobs").iterdir() if p.name.startswith(RESERVED_PREFIX)]
    then = time.time() - age
    os.utime(file, (then, then))
    return staged


def test_a_staged_object_is_dated_when_it_is_committed(tmp_path: Path) -> None:
    """A writer may stage its last bytes long before it commits them: the object is dated at the commit, as an
    upload is, so the collector's grace (by last-modified) runs from when the blob was stored."""
    import time

    bucket = LocalBucket(tmp_path / "store")
    staged = _staged_long_ago(bucket, b"old bytes", 3600)
    staged.commit("blobs/k")
    info = bucket.head("blobs/k")
    assert info is not None and time.time() - info.last_modified < 60


def test_cleanup_leaves_a_live_writers_staged_object_for_a_day(tmp_path: Path) -> None:
    """A writer whose producer is slow keeps its staged object open; the collector's cleanup of unfinished writes
    (after its grace) leaves it for a day, then removes it, and a commit after that says what happened."""
    from bh_notebook.errors import BackendError
    from bh_notebook.storage.local import STAGED_SECONDS

    bucket = LocalBucket(tmp_path / "store")
    staged = _staged_long_ago(bucket, b"slow", 7200)
    assert bucket.cleanup_incomplete(300) == 0
    staged.commit("blobs/slow")
    assert bucket.get_bytes("blobs/slow") == b"slow"

    late = _staged_long_ago(bucket, b"forgotten", STAGED_SECONDS + 60)
    assert bucket.cleanup_incomplete(300) == 1
    with pytest.raises(BackendError, match="were removed before they were stored"):
        late.commit("blobs/late")
    late.discard()
    assert [i.key for i in bucket.list_info()] == ["blobs/slow"]


def test_a_blob_already_stored_is_put_again_where_nothing_can_be_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Staging needs a file in the blobs' directory; where none can be made (read-only), the bytes stay in memory
    as on S3, and a put of a blob that is there already needs no write at all."""
    import tempfile

    with BucketSQLite(BucketConfig.for_local(tmp_path / "s"), NO_TIMER) as bh:
        with bh.files.writer() as first:
            first.write(b"stored" * 1000)

        def read_only(*args: object, **kwargs: object) -> object:
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(tempfile, "mkstemp", read_only)
        bh.files.trust_seconds = 0.0
        with bh.files.writer() as again:
            again.write(b"stored" * 1000)
        assert again.bh_key == first.bh_key
        from bh_notebook.errors import StoreNotWritable

        with pytest.raises(StoreNotWritable, match="make the directory writable"):
            with bh.files.writer() as new:
                new.write(b"not stored yet")
        monkeypatch.undo()  # (the catalog is saved at stop)
        assert len(bh.files) == 1


def test_a_frame_put_is_written_while_it_is_encoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame big enough to be encoded on several threads is written to disk slice by slice while later slices
    are still being encoded, before the put knows its key, and lands under its key with its own bytes."""
    import time

    from bh_notebook.interfaces import frames as frames_mod
    from bh_notebook.storage import local

    writes: list[tuple[float, int]] = []
    encoded: list[float] = []
    real_write, real_encode = local._Staged.write, frames_mod._write_parquet

    def write(self: local._Staged, data: memoryview) -> None:
        real_write(self, data)
        writes.append((time.monotonic(), memoryview(data).nbytes))

    def encode(*args: object, **kwargs: object) -> int:
        n = real_encode(*args, **kwargs)  # type: ignore[arg-type]
        encoded.append(time.monotonic())
        return n

    from bh_notebook.interfaces import files as files_mod

    handed: list[int] = []  # slices the parallel writer handed over to keep, not copied
    real_owned = files_mod.BlobWriter.write_owned

    def owned(self: files_mod.BlobWriter, data: object) -> int:
        if not isinstance(data, bytes):
            handed.append(memoryview(data).nbytes)  # type: ignore[arg-type]
        return real_owned(self, data)

    monkeypatch.setattr(files_mod.BlobWriter, "write_owned", owned)
    monkeypatch.setattr(local._Staged, "write", write)
    monkeypatch.setattr(frames_mod, "_write_parquet", encode)
    monkeypatch.setattr(frames_mod, "ROW_GROUP_SIZE", 200_000)
    monkeypatch.setattr(frames_mod, "MIN_ROW_GROUP", 1_000)
    rng = np.random.default_rng(5)
    df = pd.DataFrame({"a": rng.normal(size=3_000_000), "b": rng.integers(0, 9, 3_000_000)})
    with BucketSQLite(BucketConfig.for_local(tmp_path / "s"), NO_TIMER) as bh:
        monkeypatch.setattr(bh.frames, "compression", "none")
        info = bh.frames.put("df", df)
        assert info.row_groups == 15
        assert len(writes) > 1 and sum(n for _, n in writes) == info.nbytes
        assert writes[0][0] < encoded[0]  # (the first bytes were on disk before the encoder was done)
        assert len(handed) == 15 and sum(handed) > 0.99 * info.nbytes
        pd.testing.assert_frame_equal(bh.frames.get("df"), df)
        assert hashlib.sha256(_blob(bh, info.bh_key)).hexdigest() == info.bh_key
        assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("fail_at", [1, 3])
def test_a_full_disk_while_staging_is_a_named_error_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int) -> None:
    from bh_notebook.storage import local

    with BucketSQLite(BucketConfig.for_local(tmp_path / "s"), NO_TIMER) as bh:
        with bh.files.writer(filename="kept.txt") as before:
            before.write(b"kept")
        calls = [0]
        real_write = os.write

        def full(fd: int, data: object) -> int:
            calls[0] += 1
            if calls[0] >= fail_at:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)  # type: ignore[arg-type]

        monkeypatch.setattr(local.os, "write", full)
        with pytest.raises(StoreFull, match="free some space"):
            with bh.files.writer() as w:
                for _ in range(4):
                    w.write(os.urandom(9 * MB))
        monkeypatch.undo()
        assert w.bh_key is None
        assert _leftovers(tmp_path) == []
        assert _blob(bh, before.bh_key) == b"kept"
        assert len(bh.files) == 1


def test_a_blob_already_stored_is_not_written_again(tmp_path: Path) -> None:
    """Staged bytes of a blob the store has are dropped: the stored file is left as it was."""
    with BucketSQLite(BucketConfig.for_local(tmp_path / "s"), NO_TIMER) as bh:
        with bh.files.writer() as first:
            first.write(b"same bytes" * 1000)
        assert first.bh_key is not None
        path = tmp_path / "s" / bh.files.object_key(first.bh_key)
        before = os.stat(path)
        bh.files.trust_seconds = 0.0  # (checked with a HEAD, as another process would)
        with bh.files.writer() as again:
            again.write(b"same bytes" * 1000)
        assert again.bh_key == first.bh_key
        after = os.stat(path)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        assert _leftovers(tmp_path) == []
