"""The shared BucketClient suite, run against every backend, plus each backend's own rules."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bh_notebook.errors import (
    AccessDenied,
    BucketNotFound,
    EndpointUnreachable,
    InvalidKey,
    PreconditionFailed,
)
from bh_notebook.storage import LocalBucket
from bh_notebook.storage.bucket import ChainReader
from bh_notebook.storage.s3 import S3Bucket
from bh_notebook.testing.servers import ACCESS_KEY, SECRET_KEY, S3Server, free_port
from bh_notebook.testing.store import BucketClientTests

SMALL_PARTS = dict(multipart_threshold=5 * 1024 * 1024, part_size=5 * 1024 * 1024)


def s3_bucket(server: S3Server, **kwargs: object) -> S3Bucket:
    return S3Bucket(server.new_bucket(), endpoint_url=server.endpoint_url, region="us-east-1",
                    access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, **{**SMALL_PARTS, **kwargs})  # type: ignore[arg-type]


class TestLocalBucket(BucketClientTests):
    @pytest.fixture
    def bucket(self, tmp_path: Path) -> Iterator[LocalBucket]:
        yield LocalBucket(tmp_path / "root")


class TestMotoBucket(BucketClientTests):
    @pytest.fixture
    def bucket(self, moto_server: S3Server) -> Iterator[S3Bucket]:
        b = s3_bucket(moto_server, page_size=7)
        yield b
        b.close()


class TestSeaweedBucket(BucketClientTests):
    @pytest.fixture
    def bucket(self, seaweed_server: S3Server) -> Iterator[S3Bucket]:
        b = s3_bucket(seaweed_server, page_size=7)
        yield b
        b.close()


# -- LocalBucket: the root is a wall ------------------------------------------------------------


def test_local_symlink_escape_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("do not read")
    root = tmp_path / "root"
    bucket = LocalBucket(root)
    os.symlink(outside, root / "link")
    os.symlink(outside / "secret.txt", root / "file-link")
    with pytest.raises(InvalidKey):
        bucket.get_bytes("link/secret.txt")
    with pytest.raises(InvalidKey):
        bucket.put_bytes(b"overwrite", "link/secret.txt")
    with pytest.raises(InvalidKey):
        bucket.get_bytes("file-link")
    assert (outside / "secret.txt").read_text() == "do not read"
    assert "link/secret.txt" not in bucket.list_keys()


def test_local_reserved_names_hidden_and_refused(tmp_path: Path) -> None:
    bucket = LocalBucket(tmp_path)
    bucket.put_bytes(b"x", "a")
    bucket.put_bytes(b"x", "a", if_none_match=None)
    assert bucket.list_keys() == ["a"]  # the lock file and temp files are not objects
    with pytest.raises(InvalidKey):
        bucket.put_bytes(b"x", ".bh-lock")


def test_local_prefix_dirs_pruned(tmp_path: Path) -> None:
    bucket = LocalBucket(tmp_path / "r")
    bucket.put_bytes(b"x", "a/b/c")
    bucket.delete("a/b/c")
    assert not (tmp_path / "r" / "a").exists()


def _conditional_writer(root: str, n: int, queue: "multiprocessing.Queue[str]") -> None:
    bucket = LocalBucket(root)
    wins = 0
    for i in range(n):
        info = bucket.head("counter")
        assert info is not None
        value = int(bucket.get_bytes("counter"))
        try:
            bucket.put_bytes(str(value + 1).encode(), "counter", if_match=info.etag)
            wins += 1
        except PreconditionFailed:
            pass
    queue.put(str(wins))


def test_local_conditional_writes_between_processes(tmp_path: Path) -> None:
    """Read-modify-write with If-Match from 4 processes: every successful write is counted exactly once."""
    root = tmp_path / "shared"
    LocalBucket(root).put_bytes(b"0", "counter")
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_conditional_writer, args=(str(root), 60, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    wins = sum(int(queue.get(timeout=5)) for _ in procs)
    assert wins >= 1
    assert int(LocalBucket(root).get_bytes("counter")) == wins


# -- S3Bucket: errors that say what to fix -------------------------------------------------------


def test_s3_missing_bucket(moto_server: S3Server) -> None:
    bucket = S3Bucket("no-such-bucket-here", endpoint_url=moto_server.endpoint_url, region="us-east-1",
                      access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    with pytest.raises(BucketNotFound, match="does not exist"):
        bucket.check_bucket()
    with pytest.raises(BucketNotFound, match="create it first"):
        bucket.put_bytes(b"x", "k")


def test_s3_endpoint_refusing_connections() -> None:
    port = free_port()  # nothing listens here
    bucket = S3Bucket("bucket", endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1",
                      access_key_id="k", secret_access_key="s", max_attempts=2, connect_timeout=2)
    with pytest.raises(EndpointUnreachable, match="check endpoint_url") as info:
        bucket.put_bytes(b"x", "k")
    assert isinstance(info.value, ConnectionError)


def test_s3_bad_credentials(seaweed_server: S3Server) -> None:
    """SeaweedFS checks signatures (moto does not)."""
    name = seaweed_server.new_bucket()
    bucket = S3Bucket(name, endpoint_url=seaweed_server.endpoint_url, region="us-east-1",
                      access_key_id=ACCESS_KEY, secret_access_key="wrong-secret-value")
    with pytest.raises(AccessDenied, match="credentials") as info:
        bucket.put_bytes(b"x", "k")
    assert "wrong-secret-value" not in str(info.value)


def test_s3_list_pages(moto_server: S3Server) -> None:
    bucket = s3_bucket(moto_server, page_size=3)
    keys = [f"p/{i:02d}" for i in range(10)]
    for k in keys:
        bucket.put_bytes(b"", k)
    assert bucket.list_keys("p/") == keys


def test_s3_repr_has_no_secret(moto_server: S3Server) -> None:
    bucket = s3_bucket(moto_server)
    assert SECRET_KEY not in repr(bucket) and ACCESS_KEY not in repr(bucket)


def test_s3_presigned_url(moto_server: S3Server) -> None:
    import urllib.request

    bucket = s3_bucket(moto_server)
    bucket.put_bytes(b"shared", "share/me")
    url = bucket.presigned_url("share/me", expires_in=60)
    assert url is not None and "Expires=" in url or "X-Amz-Expires=60" in str(url)
    with urllib.request.urlopen(str(url)) as r:  # noqa: S310 - loopback test server
        assert r.read() == b"shared"


def test_s3_presigned_url_expires(seaweed_server: S3Server) -> None:
    import time
    import urllib.error
    import urllib.request

    bucket = s3_bucket(seaweed_server)
    bucket.put_bytes(b"short-lived", "share/soon")
    url = bucket.presigned_url("share/soon", expires_in=1)
    assert url is not None
    time.sleep(2.5)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url)  # noqa: S310 - loopback test server
    assert info.value.code == 403


@pytest.mark.parametrize("server_name", ["moto", "seaweed"])
def test_cleanup_aborts_abandoned_multipart_uploads_by_the_buckets_clock(
        server_name: str, request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue(f"{server_name}_server")
    bucket = s3_bucket(server)
    client = bucket._client
    upload = client.create_multipart_upload(Bucket=bucket.name, Key="big/blob")
    client.upload_part(Bucket=bucket.name, Key="big/blob", UploadId=upload["UploadId"], PartNumber=1,
                       Body=b"x" * (5 * 1024 * 1024))
    assert bucket.cleanup_incomplete(older_than=3600) == 0  # started just now: a writer may be at it
    assert bucket.cleanup_incomplete(older_than=0) == 1  # abandoned (no part newer than the cutoff)
    assert not client.list_multipart_uploads(Bucket=bucket.name).get("Uploads")
    bucket.close()


# -- S3Bucket: a large copy goes in parts -------------------------------------------------------


@pytest.mark.parametrize("server_name", ["moto_server", "seaweed_server"])
def test_a_large_copy_goes_in_parts_and_keeps_the_description(server_name: str,
                                                              request: pytest.FixtureRequest) -> None:
    """One CopyObject of gigabytes sends nothing until it is done (a read timeout) and stops at 5 GiB: above the
    threshold the copy is UploadPartCopy of ranges, the source's content type and metadata kept, its ETag held."""
    b = s3_bucket(request.getfixturevalue(server_name))
    b.copy_part_size = 5 * 1024 * 1024
    calls: list[str] = []
    b.client.meta.events.register("before-call.s3.*", lambda model, **_: calls.append(model.name))
    data = os.urandom(12 * 1024 * 1024 + 321)
    etag = b.put_bytes(data, "big/src", content_type="application/x-npy", metadata={"bh-kind": "array"})
    calls.clear()
    b.copy("big/src", "big/dst", if_match=etag)
    assert calls.count("UploadPartCopy") == 3 and "CopyObject" not in calls
    assert b.get_bytes("big/dst") == data
    head = b.client.head_object(Bucket=b.name, Key="big/dst")
    assert (head["ContentType"], head["Metadata"]) == ("application/x-npy", {"bh-kind": "array"})
    b.put_bytes(data[::-1], "big/src")
    with pytest.raises(PreconditionFailed):
        b.copy("big/src", "big/other", if_match=etag)
    assert b.head("big/other") is None and b.client.list_multipart_uploads(Bucket=b.name).get("Uploads", []) == []
    b.close()


@pytest.mark.parametrize("server_name", ["moto_server", "seaweed_server"])
def test_a_large_touch_copies_the_object_onto_itself_in_parts(server_name: str,
                                                              request: pytest.FixtureRequest) -> None:
    """A touch renews an old blob a writer relies on; one CopyObject stops at 5 GiB (here: 10 MiB), so a larger
    blob is copied onto itself in parts."""
    b = s3_bucket(request.getfixturevalue(server_name))
    b.copy_part_size = 5 * 1024 * 1024
    b.max_copy_object = 10 * 1024 * 1024
    calls: list[str] = []
    b.client.meta.events.register("before-call.s3.*", lambda model, **_: calls.append(model.name))
    data = os.urandom(12 * 1024 * 1024 + 321)
    b.put_bytes(data, "big/blob", content_type="application/octet-stream")
    before = b.head("big/blob")
    time.sleep(1.1)  # (last-modified has whole seconds)
    calls.clear()
    assert b.touch("big/blob", content_type="application/x-npy", metadata={"bh-kind": "array"}) is True
    assert calls.count("UploadPartCopy") == 3 and "CopyObject" not in calls
    after = b.head("big/blob")
    assert before is not None and after is not None and after.last_modified > before.last_modified
    assert b.get_bytes("big/blob") == data
    head = b.client.head_object(Bucket=b.name, Key="big/blob")
    assert (head["ContentType"], head["Metadata"]) == ("application/x-npy", {"bh-kind": "array"})
    assert b.touch("big/missing") is False
    assert b.client.list_multipart_uploads(Bucket=b.name).get("Uploads", []) == []
    b.close()


@given(parts=st.lists(st.binary(max_size=9), max_size=12), seek=st.integers(0, 120),
       sizes=st.lists(st.integers(1, 7), min_size=1, max_size=5))
def test_a_chain_of_buffers_reads_as_their_concatenation(parts: list[bytes], seek: int, sizes: list[int]) -> None:
    """ChainReader's three ways to read (views of its buffers, copies into a buffer, bytes) agree with the joined
    bytes from any position, empty buffers included."""
    whole = b"".join(parts)
    for how in ("read_view", "readinto", "read"):
        reader = ChainReader(*parts)
        reader.seek(seek)
        got, k = bytearray(), 0
        while True:
            n = sizes[k % len(sizes)]
            k += 1
            if how == "read_view":
                piece = bytes(reader.read_view(n))
            elif how == "readinto":
                buf = bytearray(n)
                piece = bytes(buf[:reader.readinto(buf)])
            else:
                piece = reader.read(n)
            if not piece:
                break
            assert len(piece) <= n
            got += piece
        assert bytes(got) == whole[seek:], how
