"""FileStore: the seed contract (idempotent put, row repair, gc) and streaming, on every backend."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bh_notebook import BucketConfig, BucketSQLite, FileMetadata, GCReport
from bh_notebook.errors import BlobNotFound, IntegrityError, InvalidKey, NotFound, ValueTypeError
from bh_notebook.testing.counting import CountingBucket


@pytest.fixture
def bh(config: BucketConfig):
    with BucketSQLite(config) as db:
        yield db


def test_put_returns_sha256_and_get_roundtrips(bh: BucketSQLite) -> None:
    data = b"some bytes" * 1000
    key = bh.files.put(data, filename="data.bin", mime="application/octet-stream", metadata={"src": "test"})
    assert key == hashlib.sha256(data).hexdigest()
    assert bh.files.get(key) == data
    meta = bh.files.metadata(key)
    assert isinstance(meta, FileMetadata)
    assert (meta.bh_key, meta.size, meta.mime, meta.filename, meta.metadata) == (
        key, len(data), "application/octet-stream", "data.bin", {"src": "test"})
    assert meta.created_at <= time.time()
    assert bh.bucket.exists("files/" + key)
    assert key in bh.files and len(bh.files) == 1


def test_second_put_is_noop_and_ignores_new_metadata(bh: BucketSQLite) -> None:
    k1 = bh.files.put(b"same", filename="first.txt", metadata={"v": "1"})
    lm = bh.bucket.last_modified("files/" + k1)
    k2 = bh.files.put(b"same", filename="second.txt", metadata={"v": "2"})
    assert k1 == k2
    meta = bh.files.metadata(k1)
    assert meta is not None and meta.filename == "first.txt" and meta.metadata == {"v": "1"}
    assert bh.bucket.last_modified("files/" + k1) == lm
    assert len(bh.files) == 1


def test_known_blob_put_sends_no_request(config: BucketConfig) -> None:
    from bh_notebook.storage import open_bucket

    counting = CountingBucket(open_bucket(config))
    with BucketSQLite(config, bucket_client=counting) as bh:
        key = bh.files.put(b"payload")
        before = dict(counting.calls)
        assert bh.files.put(b"payload") == key
        assert counting.calls == before  # no HEAD, no PUT: the catalog knows the blob


def test_object_present_row_missing_is_filled_from_call(bh: BucketSQLite) -> None:
    data = b"uploaded before a crash"
    key = hashlib.sha256(data).hexdigest()
    bh.bucket.put_bytes(data, "files/" + key)  # the object made it, the row did not
    assert bh.files.metadata(key) is None
    assert bh.files.put(data, filename="recovered.txt", mime="text/plain", metadata={"k": "v"}) == key
    meta = bh.files.metadata(key)
    assert meta is not None
    assert (meta.filename, meta.mime, meta.metadata, meta.size) == ("recovered.txt", "text/plain", {"k": "v"}, len(data))


def test_put_path_streams_and_defaults_filename(bh: BucketSQLite, tmp_path: Path) -> None:
    src = tmp_path / "report.csv"
    data = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(data)
    key = bh.files.put(src)
    assert key == hashlib.sha256(data).hexdigest()
    meta = bh.files.metadata(key)
    assert meta is not None and meta.filename == "report.csv" and meta.mime == "text/csv"
    out = bh.files.get(key, dest=tmp_path / "out" / "copy.csv")
    assert out == tmp_path / "out" / "copy.csv" and out.read_bytes() == data
    assert bh.files.get_range(key, 10, 20) == data[10:20]
    with bh.files.open(key) as f:
        assert f.read(5) == data[:5]


def test_put_missing_path(bh: BucketSQLite, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no file at"):
        bh.files.put(tmp_path / "does-not-exist.bin")
    with pytest.raises(ValueTypeError, match="not a regular file"):
        bh.files.put(tmp_path)
    with pytest.raises(ValueTypeError, match="Path"):
        bh.files.put(str(tmp_path / "x"))  # type: ignore[arg-type]
    with pytest.raises(ValueTypeError, match="metadata"):
        bh.files.put(b"x", metadata={"n": 1})  # type: ignore[dict-item]
    assert len(bh.files) == 0


def test_get_unknown_and_bad_keys(bh: BucketSQLite) -> None:
    with pytest.raises(NotFound):
        bh.files.get("0" * 64)
    with pytest.raises(InvalidKey):
        bh.files.get("../../etc/passwd")
    assert bh.files.metadata("0" * 64) is None
    with pytest.raises(BlobNotFound):
        bh.files.head("0" * 64)


def test_get_detects_altered_and_truncated_blobs(bh: BucketSQLite, tmp_path: Path) -> None:
    key = bh.files.put(b"original content")
    bh.bucket.put_bytes(b"tampered content", "files/" + key)
    with pytest.raises(IntegrityError, match="do not match"):
        bh.files.get(key)
    with pytest.raises(IntegrityError):
        bh.files.get(key, dest=tmp_path / "x.bin")
    assert not (tmp_path / "x.bin").exists()
    bh.bucket.put_bytes(b"orig", "files/" + key)
    with pytest.raises(IntegrityError, match="shorter"):
        bh.files.get(key)


def test_delete(bh: BucketSQLite) -> None:
    key = bh.files.put(b"bye")
    assert bh.files.delete(key) is True
    assert bh.files.metadata(key) is None and not bh.bucket.exists("files/" + key)
    assert bh.files.delete(key) is False


def test_list_pages(bh: BucketSQLite) -> None:
    put = [bh.files.put(f"blob {i}".encode()) for i in range(7)]
    keys = [m.bh_key for m in sorted((bh.files.metadata(k) for k in put),  # type: ignore[misc]
                                     key=lambda m: (m.created_at, m.bh_key), reverse=True)]  # newest first
    page1 = bh.files.list(limit=3)
    page2 = bh.files.list(limit=3, after=page1[-1].bh_key)
    page3 = bh.files.list(limit=3, after=page2[-1].bh_key)
    assert [m.bh_key for m in page1 + page2 + page3] == keys
    assert len(page3) == 1
    assert bh.files.list(after=keys[-1]) == []
    assert [m.bh_key for m in bh.files] == keys


def test_head(bh: BucketSQLite) -> None:
    key = bh.files.put(b"present")
    meta = bh.files.head(key)
    assert meta is not None and meta.size == 7
    bh.bucket.delete("files/" + key)
    with pytest.raises(BlobNotFound, match="missing from the bucket"):
        bh.files.head(key)


def test_gc_orphans_and_dangling_rows(bh: BucketSQLite) -> None:
    kept = bh.files.put(b"kept")
    dangling = bh.files.put(b"dangling")
    bh.bucket.delete("files/" + dangling)  # row without object
    young = hashlib.sha256(b"young orphan").hexdigest()
    bh.bucket.put_bytes(b"young orphan", "files/" + young)  # object without row, just written

    report = bh.files.gc(grace_seconds=300)
    assert report == GCReport(orphans_found=1, orphans_skipped_grace=1, orphans_deleted=0, dangling_rows_found=1)
    assert bh.bucket.exists("files/" + young)

    time.sleep(1.1)
    report = bh.files.gc(grace_seconds=1)  # now the orphan is old enough
    assert report == GCReport(orphans_found=1, orphans_skipped_grace=0, orphans_deleted=1, dangling_rows_found=1)
    assert not bh.bucket.exists("files/" + young)
    assert bh.files.metadata(dangling) is not None  # dangling rows are never deleted
    assert bh.files.get(kept) == b"kept"


def test_custom_prefix(make_config, backend: str) -> None:  # type: ignore[no-untyped-def]
    with BucketSQLite(make_config(backend, files_prefix="blobs")) as bh:
        key = bh.files.put(b"x")
        assert bh.bucket.exists("blobs/" + key)
        assert bh.files.object_key(key) == "blobs/" + key


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=4096))
def test_hypothesis_bytes_roundtrip(bh: BucketSQLite, data: bytes) -> None:
    key = bh.files.put(data)
    assert key == hashlib.sha256(data).hexdigest()
    assert bh.files.get(key) == data
    assert bh.files.metadata(key).size == len(data)  # type: ignore[union-attr]

