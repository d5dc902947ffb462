"""BucketClientTests: the behaviour every BucketClient must have, as one pytest class.

A backend's test module subclasses it and provides a ``bucket`` fixture that yields a fresh, empty client::

    class TestLocalBucket(BucketClientTests):
        @pytest.fixture
        def bucket(self, tmp_path):
            yield LocalBucket(tmp_path)

The missing-key and repeat-delete rules are pinned here, so all backends agree on them.
"""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import pytest

from ..errors import InvalidKey, KeyTypeError, NotFound, ObjectNotFound, PreconditionFailed
from ..storage.bucket import BucketClient, ChainReader

#: Bigger than the multipart threshold a backend fixture should configure for tests (5 MiB).
LARGE = 11 * 1024 * 1024 + 123


class BucketClientTests:
    """Shared tests; subclasses provide the ``bucket`` fixture."""

    # -- bytes in, bytes out ----------------------------------------------------------------

    def test_put_get_roundtrip(self, bucket: BucketClient) -> None:
        etag = bucket.put_bytes(b"hello world", "a/b/c.txt")
        assert isinstance(etag, str) and etag
        assert bucket.get_bytes("a/b/c.txt") == b"hello world"

    def test_empty_object(self, bucket: BucketClient) -> None:
        bucket.put_bytes(b"", "empty")
        assert bucket.get_bytes("empty") == b""
        info = bucket.head("empty")
        assert info is not None and info.size == 0

    def test_overwrite_replaces(self, bucket: BucketClient) -> None:
        bucket.put_bytes(b"one", "k")
        bucket.put_bytes(b"two!", "k")
        assert bucket.get_bytes("k") == b"two!"
        assert bucket.head("k").size == 4  # type: ignore[union-attr]

    def test_put_accepts_bytearray_and_memoryview(self, bucket: BucketClient) -> None:
        bucket.put_bytes(bytearray(b"abc"), "ba")
        bucket.put_bytes(memoryview(b"xyz123")[1:4], "mv")
        assert bucket.get_bytes("ba") == b"abc"
        assert bucket.get_bytes("mv") == b"yz1"

    # -- missing keys -----------------------------------------------------------------------

    def test_missing_key_rules(self, bucket: BucketClient) -> None:
        assert bucket.exists("nope") is False
        assert bucket.head("nope") is None
        assert bucket.last_modified("nope") is None
        with pytest.raises(ObjectNotFound):
            bucket.get_bytes("nope")
        with pytest.raises(KeyError):  # ObjectNotFound is a KeyError too
            bucket.get_range("nope", 0, 10)
        with pytest.raises(NotFound):
            with bucket.open_read("nope"):
                pass

    def test_delete_missing_and_repeat_delete_are_not_errors(self, bucket: BucketClient) -> None:
        bucket.delete("never-existed")
        bucket.put_bytes(b"x", "d/x")
        bucket.delete("d/x")
        bucket.delete("d/x")
        assert not bucket.exists("d/x")
        assert bucket.list_keys("d/") == []

    # -- metadata ---------------------------------------------------------------------------

    def test_head_and_last_modified(self, bucket: BucketClient) -> None:
        before = time.time()
        etag = bucket.put_bytes(b"12345", "h")
        info = bucket.head("h")
        assert info is not None
        assert info.key == "h" and info.size == 5 and info.etag == etag
        lm = bucket.last_modified("h")
        assert lm is not None and before - 5 <= lm <= time.time() + 5

    def test_etag_stable_until_written(self, bucket: BucketClient) -> None:
        e1 = bucket.put_bytes(b"v1", "e")
        assert bucket.head("e").etag == e1  # type: ignore[union-attr]
        assert bucket.head("e").etag == e1  # type: ignore[union-attr]
        e2 = bucket.put_bytes(b"v2-different", "e")
        assert e2 != e1
        assert bucket.head("e").etag == e2  # type: ignore[union-attr]

    # -- listing ----------------------------------------------------------------------------

    def test_list_keys_prefix_and_order(self, bucket: BucketClient) -> None:
        keys = ["b", "a/2", "a/1", "a.txt", "a0", "ab/c", "c/d/e"]
        for k in keys:
            bucket.put_bytes(k.encode(), k)
        # Order is lexicographic, except that servers built on a file tree (SeaweedFS) list "a/..." before
        # "a.txt"; callers must not rely on that corner.
        assert sorted(bucket.list_keys()) == sorted(keys)
        assert bucket.list_keys("a/") == ["a/1", "a/2"]
        assert sorted(bucket.list_keys("a")) == sorted(k for k in keys if k.startswith("a"))
        assert bucket.list_keys("b") == ["b"]
        assert bucket.list_keys("c/d") == ["c/d/e"]
        assert bucket.list_keys("zzz") == []
        infos = list(bucket.list_info("a/"))
        assert [i.size for i in infos] == [3, 3]
        assert all(i.last_modified > 0 for i in infos)

    def test_list_many_keys(self, bucket: BucketClient) -> None:
        keys = [f"many/{i:04d}" for i in range(25)]
        for k in keys:
            bucket.put_bytes(b"", k)
        assert bucket.list_keys("many/") == keys

    # -- ranges -----------------------------------------------------------------------------

    def test_get_range(self, bucket: BucketClient) -> None:
        data = bytes(range(256)) * 4
        bucket.put_bytes(data, "r")
        assert bucket.get_range("r", 0, 10) == data[:10]
        assert bucket.get_range("r", 100, 356) == data[100:356]
        assert bucket.get_range("r", 1000) == data[1000:]
        assert bucket.get_range("r", 1000, 5000) == data[1000:]
        assert bucket.get_range("r", 5, 5) == b""
        assert bucket.get_range("r", 2000, 3000) == b""
        assert bucket.get_range("r", -24) == data[-24:]

    def test_get_into(self, bucket: BucketClient) -> None:
        data = os.urandom(LARGE)
        bucket.put_bytes(data, "into")
        buf = bytearray(LARGE - 1000)
        assert bucket.get_into("into", buf, 500) == len(buf)
        assert bytes(buf) == data[500:LARGE - 500]

    # -- streams and files ------------------------------------------------------------------

    def test_upload_download(self, bucket: BucketClient, tmp_path: Path) -> None:
        src = tmp_path / "src.bin"
        data = os.urandom(300_000)
        src.write_bytes(data)
        etag = bucket.upload(src, "up/src.bin")
        assert bucket.head("up/src.bin").etag == etag  # type: ignore[union-attr]
        out = bucket.download("up/src.bin", tmp_path / "sub" / "out.bin")
        assert out.read_bytes() == data
        assert [p.name for p in (tmp_path / "sub").iterdir()] == ["out.bin"]  # no temp file left behind

    def test_download_missing_leaves_nothing(self, bucket: BucketClient, tmp_path: Path) -> None:
        with pytest.raises(ObjectNotFound):
            bucket.download("nope", tmp_path / "dl" / "out.bin")
        assert not (tmp_path / "dl").exists() or list((tmp_path / "dl").iterdir()) == []

    def test_large_stream_roundtrip(self, bucket: BucketClient) -> None:
        data = os.urandom(LARGE)
        moved: list[int] = []
        header = b"HEADER" * 10
        etag = bucket.put_stream(ChainReader(header, memoryview(data)), "big", size=len(header) + LARGE,
                                 progress=moved.append)
        assert sum(moved) == len(header) + LARGE
        assert bucket.head("big").etag == etag  # type: ignore[union-attr]
        assert bucket.head("big").size == len(header) + LARGE  # type: ignore[union-attr]
        assert bucket.get_bytes("big") == header + data
        with bucket.open_read("big") as f:
            assert f.read(60) == header
        assert bucket.get_range("big", LARGE - 7) == (header + data)[LARGE - 7:]

    def test_stream_of_unknown_size(self, bucket: BucketClient) -> None:
        data = os.urandom(LARGE)
        bucket.put_stream(io.BytesIO(data), "unsized")
        assert bucket.get_bytes("unsized") == data

    def test_copy(self, bucket: BucketClient) -> None:
        bucket.put_bytes(b"payload", "src")
        bucket.copy("src", "dst/copy")
        assert bucket.get_bytes("dst/copy") == b"payload"
        assert bucket.get_bytes("src") == b"payload"
        with pytest.raises(ObjectNotFound):
            bucket.copy("missing", "dst/other")

    def test_download_if_match(self, bucket: BucketClient, tmp_path: Path) -> None:
        etag = bucket.put_bytes(b"version one", "dl")
        assert bucket.download("dl", tmp_path / "one", if_match=etag).read_bytes() == b"version one"
        bucket.put_bytes(b"version two", "dl")
        with pytest.raises(PreconditionFailed):
            bucket.download("dl", tmp_path / "stale", if_match=etag)
        assert not (tmp_path / "stale").exists()

    def test_copy_if_match(self, bucket: BucketClient) -> None:
        etag = bucket.put_bytes(b"known", "src")
        bucket.copy("src", "dst/known", if_match=etag)
        assert bucket.get_bytes("dst/known") == b"known"
        bucket.put_bytes(b"changed since", "src")
        with pytest.raises(PreconditionFailed):
            bucket.copy("src", "dst/known", if_match=etag)
        assert bucket.get_bytes("dst/known") == b"known"

    # -- conditional writes -----------------------------------------------------------------

    def test_touch_renews_last_modified_and_keeps_the_bytes(self, bucket: BucketClient) -> None:
        bucket.put_bytes(b"kept bytes", "t/blob", content_type="text/plain")
        before = bucket.head("t/blob")
        assert before is not None
        time.sleep(1.1)  # S3 times have whole seconds
        assert bucket.touch("t/blob", content_type="text/plain", metadata={"bh-kind": "array"}) is True
        after = bucket.head("t/blob")
        assert after is not None and after.last_modified > before.last_modified
        assert after.size == before.size and bucket.get_bytes("t/blob") == b"kept bytes"
        assert bucket.touch("t/missing") is False
        assert bucket.head("t/missing") is None  # touching a missing key creates nothing

    def test_clock_is_the_buckets_own(self, bucket: BucketClient) -> None:
        bucket.put_bytes(b"x", "clock/probe")
        info = bucket.head("clock/probe")
        now = bucket.clock()
        assert info is not None and info.server_time is not None
        assert info.age is not None and 0 <= info.age < 30
        assert abs(now - info.last_modified) < 30  # same clock as last-modified times, to the second

    def test_if_none_match(self, bucket: BucketClient) -> None:
        bucket.put_bytes(b"first", "c", if_none_match="*")
        with pytest.raises(PreconditionFailed):
            bucket.put_bytes(b"second", "c", if_none_match="*")
        assert bucket.get_bytes("c") == b"first"

    def test_if_match(self, bucket: BucketClient) -> None:
        e1 = bucket.put_bytes(b"v1", "m")
        e2 = bucket.put_bytes(b"v2", "m", if_match=e1)
        with pytest.raises(PreconditionFailed):
            bucket.put_bytes(b"v3", "m", if_match=e1)  # stale
        assert bucket.get_bytes("m") == b"v2"
        bucket.put_bytes(b"v3", "m", if_match=e2)
        assert bucket.get_bytes("m") == b"v3"

    def test_if_match_on_missing_key_fails(self, bucket: BucketClient) -> None:
        with pytest.raises(PreconditionFailed):
            bucket.put_bytes(b"x", "absent", if_match='"0123456789abcdef0123456789abcdef"')
        assert not bucket.exists("absent")

    def test_conditional_large_stream(self, bucket: BucketClient) -> None:
        data = os.urandom(LARGE)
        e1 = bucket.put_stream(io.BytesIO(data), "cl", if_none_match="*")
        with pytest.raises(PreconditionFailed):
            bucket.put_stream(io.BytesIO(data), "cl", if_none_match="*")
        e2 = bucket.put_stream(io.BytesIO(data[::-1]), "cl", if_match=e1)
        with pytest.raises(PreconditionFailed):
            bucket.put_stream(io.BytesIO(data), "cl", if_match=e1)
        assert bucket.head("cl").etag == e2  # type: ignore[union-attr]
        assert bucket.get_bytes("cl") == data[::-1]

    def test_racing_creators_one_winner(self, bucket: BucketClient) -> None:
        winners: list[int] = []
        losers: list[int] = []
        barrier = threading.Barrier(8)

        def race(i: int) -> None:
            barrier.wait()
            try:
                bucket.put_bytes(f"writer {i}".encode(), "race", if_none_match="*")
                winners.append(i)
            except PreconditionFailed:
                losers.append(i)

        threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(winners) == 1 and len(losers) == 7
        assert bucket.get_bytes("race") == f"writer {winners[0]}".encode()

    # -- bad keys ---------------------------------------------------------------------------

    @pytest.mark.parametrize("key", ["", "..", "../x", "a/../b", "a//b", "/abs", "dir/", "./x", "a/./b", "nul\x00"])
    def test_bad_keys_refused(self, bucket: BucketClient, key: str) -> None:
        with pytest.raises(InvalidKey):
            bucket.put_bytes(b"x", key)
        with pytest.raises(InvalidKey):
            bucket.get_bytes(key)
        with pytest.raises(InvalidKey):
            bucket.delete(key)

    def test_non_str_key_refused(self, bucket: BucketClient) -> None:
        with pytest.raises(KeyTypeError):
            bucket.put_bytes(b"x", 42)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            bucket.exists(b"k")  # type: ignore[arg-type]
