"""SIGKILL a writer in the middle of a large put and in the middle of a flush: nothing committed is lost, no row
points at a missing blob, and gc removes what the killed write left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig
from bh_notebook.testing.servers import ACCESS_KEY, SECRET_KEY

CHILD = textwrap.dedent('''
    import sys
    import threading
    import numpy as np
    from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig

    mode, url, at = sys.argv[1], sys.argv[2], float(sys.argv[3])
    bh = BucketSQLite(BucketConfig.from_url(url), SnapshotConfig(interval_seconds=0)).start()
    bh.kv["committed"] = "yes"
    bh.arrays.put("small", np.arange(10))
    bh.force_flush()
    if mode == "put":
        big = np.random.default_rng(0).random(40_000_000)  # 320 MB
        sent = [0]
        lock = threading.Lock()

        def progress(n):
            # Once a share `at` of the bytes has gone, say so and stop here: the kill provably lands mid-upload,
            # however fast the disk or the network. Parts upload on several threads: only the first one says it.
            with lock:
                sent[0] += n
                first = sent[0] >= at * big.nbytes and sent[0] - n < at * big.nbytes
            if first:
                print("mid-put", flush=True)
            if sent[0] >= at * big.nbytes:
                threading.Event().wait()

        print("ready", flush=True)
        bh.arrays.put("big", big, progress=progress)
        bh.force_flush()
    else:
        print("ready", flush=True)
        for i in range(100000):  # a growing catalog flushed over and over: the kill lands mid-flush
            bh.kv.update({f"k{i}_{j}": "x" * 1000 for j in range(300)})
            bh.force_flush()
    print("done", flush=True)
''')


def url_for(backend: str, tmp_path: Path, moto_server) -> str:  # type: ignore[no-untyped-def]
    if backend == "local":
        return f"file://{tmp_path / 'store'}"
    bucket = moto_server.new_bucket()
    return f"s3://{bucket}?endpoint_url={moto_server.endpoint_url}&region=us-east-1"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["put", "flush"])
@pytest.mark.parametrize("at", [0.05, 0.3, 0.8])  # put: the share of bytes sent; flush: seconds into the loop
@pytest.mark.parametrize("where", ["local", "moto"])
def test_sigkill_loses_nothing_committed(where: str, mode: str, at: float, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    moto_server = request.getfixturevalue("moto_server") if where == "moto" else None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    url = url_for(where, tmp_path, moto_server)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), mode, url, str(at)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    if mode == "put":
        assert proc.stdout.readline().strip() == "mid-put"  # the child now waits inside the upload
    else:
        time.sleep(at)  # the flush loop runs far longer than this: the kill lands in one of its flushes
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL

    config = BucketConfig.from_url(url)
    with BucketSQLite(config, SnapshotConfig(interval_seconds=0)) as bh:
        assert bh.kv["committed"] == "yes"  # the last committed snapshot was restored
        np.testing.assert_array_equal(bh.arrays.get("small"), np.arange(10))
        if mode == "put":
            assert "big" not in bh.arrays  # killed mid-upload: never committed, so not listed
        report = bh.check()
        assert report.dangling_rows == [] and report.corrupt_blobs == [] and report.unregistered_blobs == []
        bh.files.gc(grace_seconds=0)
        assert bh.check(verify=False).orphan_blobs == []
    if where == "local":
        leftovers = [p for p in (tmp_path / "store").rglob(".bh-tmp-*")]
        assert leftovers == []  # gc removed the killed write's temp files
