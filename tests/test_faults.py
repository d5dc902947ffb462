"""Network faults between the store and its S3 server, injected by a proxy on loopback: retries with backoff,
then a clear error; the catalog stays dirty and the next flush succeeds once the endpoint is back; nothing lost."""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
from pathlib import Path
from collections.abc import Iterator

import numpy as np
import pytest

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig
from bh_notebook.errors import BackendError, EndpointUnreachable
from bh_notebook.storage.s3 import S3Bucket
from bh_notebook.testing.faults import FaultProxy
from bh_notebook.testing.servers import ACCESS_KEY, SECRET_KEY

NO_TIMER = SnapshotConfig(interval_seconds=0)


@pytest.fixture
def proxy(moto_server) -> Iterator[FaultProxy]:  # type: ignore[no-untyped-def]
    host, port = moto_server.endpoint_url.removeprefix("http://").split(":")
    with FaultProxy(host, int(port)) as p:
        yield p


@pytest.fixture
def through(proxy: FaultProxy, moto_server):  # type: ignore[no-untyped-def]
    """A store whose every request goes through the proxy; and a direct config to read the truth with."""
    bucket = moto_server.new_bucket()
    client = S3Bucket(bucket, endpoint_url=proxy.endpoint_url, region="us-east-1", access_key_id=ACCESS_KEY,
                      secret_access_key=SECRET_KEY, max_attempts=3, connect_timeout=1, read_timeout=1,
                      multipart_threshold=8 * 1024 * 1024, part_size=8 * 1024 * 1024)
    direct = moto_server.config(bucket)
    bh = BucketSQLite(direct, NO_TIMER, bucket_client=client).start()
    yield bh, direct
    proxy.set("pass")
    bh.stop()


def test_transient_503s_are_retried(through, proxy: FaultProxy) -> None:  # type: ignore[no-untyped-def]
    bh, _ = through
    arr = np.arange(1000.0)
    proxy.set("http503", count=2)
    bh.arrays.put("a", arr)
    assert proxy.faults == 2
    np.testing.assert_array_equal(bh.arrays.get("a"), arr)


def test_persistent_500_then_recovery(through, proxy: FaultProxy) -> None:  # type: ignore[no-untyped-def]
    bh, direct = through
    bh.kv["before"] = "kept"
    bh.force_flush()
    bh.kv["during"] = "waits"
    proxy.set("http500")
    with pytest.raises(BackendError, match="InternalError|500"):
        bh.force_flush()
    assert proxy.faults >= 3  # retried with backoff before giving up
    assert bh.dirty and bh.last_error is not None
    assert bh.kv["during"] == "waits"  # nothing lost in memory, and the store keeps working
    proxy.set("pass")
    assert bh.force_flush().uploaded and not bh.dirty
    with BucketSQLite(direct, NO_TIMER) as reader:
        assert (reader.kv["before"], reader.kv["during"]) == ("kept", "waits")


def test_endpoint_down_then_back(through, proxy: FaultProxy) -> None:  # type: ignore[no-untyped-def]
    bh, direct = through
    bh.arrays.put("first", np.arange(5))
    bh.force_flush()
    proxy.set("refuse")
    with pytest.raises(EndpointUnreachable, match="check endpoint_url and your network"):
        bh.arrays.put("second", np.arange(6))
    assert "second" not in bh.arrays and bh.started
    proxy.set("pass")
    bh.arrays.put("second", np.arange(6))
    bh.force_flush()
    with BucketSQLite(direct, NO_TIMER) as reader:
        assert reader.arrays.names() == ["first", "second"]
        assert reader.check().ok


def test_reset_mid_download_is_resumed(through, proxy: FaultProxy) -> None:  # type: ignore[no-untyped-def]
    bh, _ = through
    arr = np.random.default_rng(0).random(3 * 1024 * 1024)  # 24 MiB: three parallel ranged GETs
    bh.arrays.put("big", arr)
    proxy.set("reset", count=3, reset_after=1024 * 1024)
    np.testing.assert_array_equal(bh.arrays.get("big"), arr)  # verified against its SHA-256 too
    assert proxy.faults == 3


def test_reset_mid_upload_is_retried(through, proxy: FaultProxy) -> None:  # type: ignore[no-untyped-def]
    bh, _ = through
    arr = np.random.default_rng(1).random(2 * 1024 * 1024)  # 16 MiB: a multipart upload
    proxy.set("reset", count=2, reset_after=0)
    bh.arrays.put("up", arr)
    np.testing.assert_array_equal(bh.arrays.get("up"), arr)


def test_slow_endpoint_times_out_clearly(through, proxy: FaultProxy) -> None:  # type: ignore[no-untyped-def]
    bh, _ = through
    bh.kv["k"] = "v"
    bh.arrays.put("a", np.arange(10))
    proxy.set("slow", delay=3.0)
    with pytest.raises(EndpointUnreachable):
        bh.arrays.get("a")
    proxy.set("pass")
    np.testing.assert_array_equal(bh.arrays.get("a"), np.arange(10))


def _proxied_bucket(proxy: FaultProxy, moto_server) -> tuple[S3Bucket, BucketConfig]:  # type: ignore[no-untyped-def]
    """A fresh bucket: a client that reaches it through the proxy, and a config that reaches it directly."""
    bucket = moto_server.new_bucket()
    client = S3Bucket(bucket, endpoint_url=proxy.endpoint_url, region="us-east-1", access_key_id=ACCESS_KEY,
                      secret_access_key=SECRET_KEY, max_attempts=2, connect_timeout=1, read_timeout=1)
    return client, moto_server.config(bucket)


def test_endpoint_down_at_stop_keeps_the_work_for_the_next_start(proxy: FaultProxy, moto_server) -> None:  # type: ignore[no-untyped-def]
    client, direct = _proxied_bucket(proxy, moto_server)
    bh = BucketSQLite(direct, NO_TIMER, bucket_client=client).start()
    bh.kv["saved"] = "before"
    bh.force_flush()
    with BucketSQLite(direct, NO_TIMER) as other:  # another writer commits meanwhile
        other.kv["other"] = "theirs"
    bh.arrays.put("late", np.arange(7))  # its blob is uploaded now; the catalog row is not
    bh.kv["late"] = "unsaved"
    proxy.set("refuse")
    with pytest.raises(EndpointUnreachable):
        bh.stop()  # the final flush cannot reach the endpoint
    assert bh.unsaved_at is not None and (bh.unsaved_at / "catalog.db").exists()
    proxy.set("pass")
    with BucketSQLite(direct, NO_TIMER) as resumed:  # the next start on this bucket pushes it, merged
        assert resumed.restored_from is not None and "unsaved" in resumed.restored_from
        assert not resumed.dirty
        assert not bh.unsaved_at.exists()
    with BucketSQLite(direct, NO_TIMER) as reader:
        assert (reader.kv["saved"], reader.kv["late"], reader.kv["other"]) == ("before", "unsaved", "theirs")
        np.testing.assert_array_equal(reader.arrays.get("late"), np.arange(7))
        assert reader.check().ok
        assert reader.restored_from is not None and reader.restored_from.startswith(direct.key)  # nothing to resume


def test_unsaved_work_of_a_never_synced_store_is_kept_too(proxy: FaultProxy, moto_server) -> None:  # type: ignore[no-untyped-def]
    client, direct = _proxied_bucket(proxy, moto_server)
    bh = BucketSQLite(direct, NO_TIMER, bucket_client=client).start()
    bh.kv["first"] = "never flushed"
    proxy.set("refuse")
    with pytest.raises(EndpointUnreachable):
        bh.stop()
    proxy.set("pass")
    with BucketSQLite(direct, NO_TIMER) as resumed:  # this machine's next start resumes it
        assert resumed.kv["first"] == "never flushed"
    with BucketSQLite(direct, NO_TIMER) as reader:
        assert reader.kv["first"] == "never flushed"


def _writer_killed_while_offline(endpoint: str, bucket: str, direct: BucketConfig, conn) -> None:  # type: ignore[no-untyped-def]
    client = S3Bucket(bucket, endpoint_url=endpoint, region="us-east-1", access_key_id=ACCESS_KEY,
                      secret_access_key=SECRET_KEY, max_attempts=2, connect_timeout=1, read_timeout=1)
    bh = BucketSQLite(direct, NO_TIMER, bucket_client=client).start()
    bh.kv["saved"] = "before"
    bh.force_flush()
    conn.send("flushed")
    conn.recv()  # the endpoint is down now
    bh.kv["late"] = "acknowledged"
    try:
        bh.force_flush()
        conn.send("flush succeeded?!")
    except BackendError:
        conn.send(f"kept {bh.unsaved_at}")
    conn.recv()  # killed while waiting


def test_work_of_a_writer_killed_while_offline_is_pushed_by_the_next_start(proxy: FaultProxy, moto_server) -> None:  # type: ignore[no-untyped-def]
    """A flush that fails keeps the catalog on local disk at once: a kernel killed before the endpoint comes back
    loses nothing it acknowledged, and the next start on this machine commits it."""
    bucket = moto_server.new_bucket()
    direct = moto_server.config(bucket)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_writer_killed_while_offline, args=(proxy.endpoint_url, bucket, direct, child))
    proc.start()
    try:
        assert parent.recv() == "flushed"
        proxy.set("refuse")
        parent.send("go")
        answer = parent.recv()
        assert answer.startswith("kept "), answer
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
    proxy.set("pass")
    with BucketSQLite(direct, NO_TIMER) as resumed:
        assert "unsaved" in str(resumed.restored_from)
        assert resumed.kv["late"] == "acknowledged" and resumed.kv["saved"] == "before"
    with BucketSQLite(direct, NO_TIMER) as reader:
        assert reader.kv["late"] == "acknowledged"


@pytest.mark.parametrize("size", [256 * 1024, 12 * 1024 * 1024])
def test_a_body_changed_on_the_way_is_refused_not_stored(seaweed_server, size: int) -> None:  # type: ignore[no-untyped-def]
    """Every upload (PutObject, each UploadPart) carries Content-MD5: the server refuses a damaged body (and the
    retry stores the right one) instead of keeping the damage."""
    host, port = seaweed_server.endpoint_url.removeprefix("http://").split(":")
    with FaultProxy(host, int(port)) as proxy:
        bucket = seaweed_server.new_bucket()
        client = S3Bucket(bucket, endpoint_url=proxy.endpoint_url, region="us-east-1", access_key_id=ACCESS_KEY,
                          secret_access_key=SECRET_KEY, multipart_threshold=8 * 1024 * 1024,
                          part_size=5 * 1024 * 1024, max_concurrency=1)
        data = np.random.default_rng(size).bytes(size)
        try:
            proxy.set("corrupt", count=1, corrupt_at=100_000)
            client.put_bytes(data, "k")
            assert proxy.faults == 1
        finally:
            proxy.set("pass")
            client.close()
    stored = seaweed_server.client().get_object(Bucket=bucket, Key="k")["Body"].read()
    assert stored == data


@pytest.mark.parametrize(("server_name", "cut_body_at"), [("moto", 0), ("seaweedfs", 0), ("seaweedfs", 60)])
def test_uploads_cut_off_on_the_way_are_never_taken_as_valid(server_name: str, cut_body_at: int,
                                                             request: pytest.FixtureRequest,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kind of upload (a commit, a blob, a checkpoint, the checkpoint copy at the key) is cut off right
    after its request headers, or a few bytes into its body: nothing acknowledged is lost, and no empty or
    truncated object is ever read as a commit, a blob or a catalog."""
    from bh_notebook.storage import open_bucket
    from bh_notebook.storage.snapshot import file_sha256
    from bh_notebook.sync.changes import CorruptCommit, decode
    from bh_notebook.sync.log import CommitLog

    server = request.getfixturevalue("moto_server" if server_name == "moto" else "seaweed_server")
    host, port = server.endpoint_url.removeprefix("http://").split(":")
    monkeypatch.setattr(BucketSQLite, "checkpoint_every", 2)
    bucket_name = server.new_bucket()
    direct = server.config(bucket_name)
    targets = [b".log/", b"/files/", b".ckpt/", b"snap.db HTTP"]
    acknowledged: list[int] = []
    with FaultProxy(host, int(port)) as proxy:
        client = S3Bucket(bucket_name, endpoint_url=proxy.endpoint_url, region="us-east-1",
                          access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, max_attempts=3,
                          connect_timeout=1, read_timeout=2)
        with BucketSQLite(direct, NO_TIMER, bucket_client=client) as bh:
            for i, target in enumerate(targets):
                proxy.set("cut_request", None, cut_match=target, cut_times=1, cut_body_at=cut_body_at)
                bh.kv[f"k{i}"] = str(i)
                bh.arrays.put(f"a{i}", np.arange(i + 1000.0))
                bh.force_flush()  # the cut request is retried
                acknowledged.append(i)
                proxy.set("pass")
            assert proxy.faults >= len(targets) - 1  # each kind of upload was cut at least once
    with BucketSQLite(direct, NO_TIMER) as reader:
        for i in acknowledged:
            assert reader.kv[f"k{i}"] == str(i)
            np.testing.assert_array_equal(reader.arrays.get(f"a{i}"), np.arange(i + 1000.0))
        assert reader.check(verify=True).ok
    bucket = open_bucket(direct)
    log = CommitLog(bucket, direct.key)
    readable = 0
    for info in bucket.list_info(log.log_prefix):
        if info.key.endswith(".db"):
            continue
        try:
            decode(bucket.get_bytes(info.key), label=info.key)
            readable += 1
        except CorruptCommit:
            pass  # a cut-off commit may exist, but it is passed over by every reader (as the reader above did)
    assert readable >= len(targets)
    for _, key in log.checkpoints():
        path = Path(tempfile.mkdtemp()) / "ckpt.db"
        bucket.download(key, path)
        assert file_sha256(path) == key.rsplit("-", 1)[-1][:-3]  # a checkpoint is whole or absent
