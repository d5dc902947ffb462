"""Named errors where a user meets a failure; our own bugs stay visible as themselves."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from botocore.exceptions import ParamValidationError

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig
from bh_notebook.errors import (
    AccessDenied,
    BhError,
    EndpointUnreachable,
    NotStarted,
    ObjectNotFound,
    PreconditionFailed,
    StoreFull,
    StoreNotWritable,
)
from bh_notebook.storage import open_bucket
from bh_notebook.storage.local import LocalBucket
from bh_notebook.storage.s3 import S3Bucket
from bh_notebook.testing.faults import FaultProxy
from bh_notebook.testing.servers import ACCESS_KEY, SECRET_KEY

NO_TIMER = SnapshotConfig(interval_seconds=0)

# -- NotStarted ----------------------------------------------------------------------------------

USES: dict[str, Callable[[BucketSQLite], object]] = {
    "kv": lambda bh: bh.kv["k"],
    "frames": lambda bh: bh.frames.put("f", pd.DataFrame({"a": [1]})),
    "arrays": lambda bh: bh.arrays.names(),
    "files": lambda bh: bh.files.list(),
    "named_files": lambda bh: bh.named_files.put("n", b"x"),
    "flush": lambda bh: bh.flush(),
    "force_flush": lambda bh: bh.force_flush(),
    "request_flush": lambda bh: bh.request_flush(),
    "check": lambda bh: bh.check(),
    "connect": lambda bh: bh.connect(),
    "bucket": lambda bh: bh.bucket,
}


@pytest.mark.parametrize("use", sorted(USES))
def test_before_start_and_after_stop_raise_not_started(tmp_path: Path, use: str) -> None:
    bh = BucketSQLite(BucketConfig.for_local(tmp_path / "s"), NO_TIMER)
    with pytest.raises(NotStarted):
        USES[use](bh)
    bh.start()
    bh.kv["k"] = "v"
    bh.stop()
    with pytest.raises(NotStarted):
        USES[use](bh)
    assert bh.status()["started"] is False  # status still answers, saying it is stopped


def test_a_store_handle_kept_past_stop_raises_not_started(tmp_path: Path) -> None:
    with BucketSQLite(BucketConfig.for_local(tmp_path / "s"), NO_TIMER) as bh:
        kv, frames, arrays, files = bh.kv, bh.frames, bh.arrays, bh.files
        kv["k"] = "v"
    for use in (lambda: kv["k"], lambda: frames.names(), lambda: arrays.put("a", np.arange(3)),
                lambda: files.list(), lambda: len(kv)):
        with pytest.raises(NotStarted, match="stopped"):
            use()


# -- the local store on a read-only or full disk ---------------------------------------------------

@settings(max_examples=12, deadline=None)
@given(err=st.sampled_from([errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT]),
       where=st.sampled_from(["mkstemp", "fsync", "replace", "mkdir"]))
def test_a_read_only_or_full_local_store_raises_a_named_error(err: int, where: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bucket = LocalBucket(Path(tmp) / "store")
        bucket.put_bytes(b"old", "k")

        def fail(*args: Any, **kwargs: Any) -> Any:
            raise OSError(err, os.strerror(err))

        target = {"mkstemp": (tempfile, "mkstemp"), "fsync": (os, "fsync"), "replace": (os, "replace"),
                  "mkdir": (Path, "mkdir")}[where]
        original = getattr(*target)
        setattr(*target, fail)
        try:
            with pytest.raises(StoreFull if err in (errno.ENOSPC, errno.EDQUOT) else StoreNotWritable) as info:
                bucket.put_bytes(b"new", "sub/k2" if where == "mkdir" else "k")
        finally:
            setattr(*target, original)
        assert isinstance(info.value, BhError) and isinstance(info.value, OSError)
        assert str(bucket.root) in str(info.value) and ("space" in str(info.value) or "writable" in str(info.value))
        assert info.value.code == errno.errorcode[err]
        assert bucket.get_bytes("k") == b"old"  # nothing half-written
        assert [i.key for i in bucket.list_info()] == ["k"]


def test_frames_put_on_a_full_disk_is_a_named_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with BucketSQLite(BucketConfig.for_local(tmp_path / "s"), NO_TIMER) as bh:
        def full(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(StoreFull, match="free some space"):
            bh.frames.put("f", pd.DataFrame({"a": range(10)}))
        monkeypatch.undo()
        assert "f" not in bh.frames


# -- fcntl is not needed (Windows) ---------------------------------------------------------------

def test_import_and_conditional_writes_work_without_fcntl(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['fcntl'] = None\n"  # 'import fcntl' now fails, as on Windows
        "import bh_notebook\n"
        "from bh_notebook.storage.local import LocalBucket\n"
        "from bh_notebook.errors import PreconditionFailed\n"
        f"b = LocalBucket({str(tmp_path / 'store')!r})\n"
        "e = b.put_bytes(b'1', 'k', if_none_match='*')\n"
        "try:\n    b.put_bytes(b'2', 'k', if_none_match='*')\nexcept PreconditionFailed:\n    print('refused')\n"
        "b.put_bytes(b'3', 'k', if_match=e)\n"
        "print(b.get_bytes('k').decode())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["refused", "3"]


# -- S3: translated by code and status; our bugs pass through ---------------------------------------

def _s3(server: Any, **kwargs: Any) -> S3Bucket:
    return S3Bucket(server.new_bucket(), endpoint_url=server.endpoint_url, region="us-east-1",
                    access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, **kwargs)


@pytest.mark.parametrize("server_name", ["moto_server", "seaweed_server"])
def test_errors_keep_the_s3_code_and_http_status(request: pytest.FixtureRequest, server_name: str) -> None:
    server = request.getfixturevalue(server_name)
    bucket = _s3(server)
    try:
        with pytest.raises(ObjectNotFound) as missing:
            bucket.open_read("nope")
        assert (missing.value.code, missing.value.status) == ("NoSuchKey", 404)
        bucket.put_bytes(b"x", "k")
        with pytest.raises(PreconditionFailed) as lost:
            bucket.put_bytes(b"y", "k", if_match='"0123456789abcdef0123456789abcdef"')
        assert lost.value.status == 412
    finally:
        bucket.close()
    if server_name == "moto_server":
        return  # moto does not check signatures
    wrong = S3Bucket(bucket.name, endpoint_url=server.endpoint_url, region="us-east-1",
                     access_key_id=ACCESS_KEY, secret_access_key="wrong-" + SECRET_KEY)
    try:
        with pytest.raises(AccessDenied) as denied:
            wrong.open_read("k")
        assert denied.value.status == 403 and denied.value.code in ("SignatureDoesNotMatch", "AccessDenied")
    finally:
        wrong.close()


def test_server_errors_keep_code_and_status(moto_server: Any) -> None:
    host, port = moto_server.endpoint_url.removeprefix("http://").split(":")
    with FaultProxy(host, int(port)) as proxy:
        bucket = S3Bucket(moto_server.new_bucket(), endpoint_url=proxy.endpoint_url, region="us-east-1",
                          access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, max_attempts=2)
        try:
            proxy.set("http503")
            with pytest.raises(EndpointUnreachable) as info:
                bucket.put_bytes(b"x", "k")
            assert (info.value.code, info.value.status) == ("SlowDown", 503)
        finally:
            proxy.set("pass")
            bucket.close()


def test_our_own_bugs_pass_through_call_unchanged(moto_server: Any) -> None:
    bucket = _s3(moto_server)
    try:
        def buggy(**kwargs: Any) -> None:
            raise TypeError("a bug of ours")

        with pytest.raises(TypeError, match="a bug of ours"):
            bucket._call("read", "k", buggy)
        with pytest.raises(AttributeError):
            bucket._call("read", "k", lambda **kw: None.missing)  # type: ignore[attr-defined]
        with pytest.raises(ParamValidationError):  # a malformed request we built
            bucket._call("read", "k", bucket.client.head_object, Bucket=bucket.name, Key="k", Bogus=1)
    finally:
        bucket.close()


def test_open_bucket_passes_timeouts(tmp_path: Path) -> None:
    config = BucketConfig.for_s3("b", endpoint_url="http://127.0.0.1:9", deadline=3.0, read_timeout=2.0)
    bucket = open_bucket(config)
    try:
        assert isinstance(bucket, S3Bucket) and bucket.deadline == 3.0
    finally:
        bucket.close()


# -- the magics: a one-line UsageError for named errors only ---------------------------------------

def test_magics_show_named_errors_in_one_line_and_our_bugs_as_tracebacks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell

    from bh_notebook.interfaces.frames import FrameStore

    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.chdir(tmp_path)
    shell = InteractiveShell.instance()
    try:
        shell.run_line_magic("load_ext", "bh_notebook")
        shell.user_ns["df"] = pd.DataFrame({"a": [1]})

        def full(*args: Any, **kwargs: Any) -> None:
            raise StoreFull("the disk is full; free some space")

        monkeypatch.setattr(FrameStore, "put", full)
        with pytest.raises(UsageError, match="free some space"):
            shell.run_line_magic("bh_put", "df")

        def buggy(*args: Any, **kwargs: Any) -> None:
            raise TypeError("a bug of ours")

        monkeypatch.setattr(FrameStore, "put", buggy)
        with pytest.raises(TypeError, match="a bug of ours"):
            shell.run_line_magic("bh_put", "df")
    finally:
        monkeypatch.undo()
        shell.run_line_magic("unload_ext", "bh_notebook")
        InteractiveShell.clear_instance()
