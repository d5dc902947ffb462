"""SIGKILL a writer at random moments of a mixed workload (puts, deletes, commits, pulls, checkpoints), trial after trial on one
bucket: every operation acknowledged before the kill is there with its bytes, and the catalog and bucket agree.

The child acknowledges an operation on stdout only after ``force_flush()`` returned, which is the durability
promise of the Python API. The kill moment and the workload come from a seeded generator, so a failing trial can
be replayed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig
from bh_notebook.testing.servers import ACCESS_KEY, SECRET_KEY

TRIALS = 16  # per backend: 32 kills in all

CHILD = textwrap.dedent('''
    import random, sys
    import numpy as np, pandas as pd
    from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig

    url, trial, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    BucketSQLite.checkpoint_every = 3  # checkpoints often, so kills land in them too
    bh = BucketSQLite(BucketConfig.from_url(url), SnapshotConfig(interval_seconds=0)).start()
    print("ready", flush=True)
    arrays = []
    for i in range(10_000):
        name = f"t{trial}/e{i}"
        op = rng.choice(["kv", "array", "array", "frame", "file", "delete", "pull", "big"])
        if op == "kv":
            bh.kv[name] = f"v{i}"
        elif op in ("array", "big"):
            n = 2_000_000 if op == "big" else 50  # 16 MB: a kill often lands inside the upload
            bh.arrays.put(name, np.arange(n, dtype="float64") + i)
            arrays.append(name)
            op = "array"
        elif op == "frame":
            bh.frames.put(name, pd.DataFrame({"i": [i] * 3, "s": ["a", "b", "c"]}))
        elif op == "file":
            bh.named_files.put(name, f"file {i}".encode())
        elif op == "delete" and arrays:
            name = arrays.pop(rng.randrange(len(arrays)))
            print(f"try delete {name}", flush=True)  # committed or not, if the kill lands before its ack
            bh.arrays.delete(name)
        else:
            bh.pull()
            op = "pull"
        bh.force_flush()
        print(f"ack {op} {name} {i}", flush=True)
''')


def _url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "local":
        return f"file://{tmp_path / 'store'}"
    server = request.getfixturevalue("moto_server")
    return f"s3://{server.new_bucket()}?endpoint_url={server.endpoint_url}&region=us-east-1"


def _verify(config: BucketConfig, model: dict[tuple[str, str], int | None]) -> None:
    with BucketSQLite(config, SnapshotConfig(interval_seconds=0)) as r:
        for (kind, name), i in model.items():
            if kind == "kv":
                assert r.kv[name] == f"v{i}"
            elif kind == "array":
                if i is None:
                    assert name not in r.arrays, name
                else:
                    arr = r.arrays.get(name)  # verified against its SHA-256 while it downloads
                    assert arr[0] == i, name
            elif kind == "frame":
                pd.testing.assert_frame_equal(r.frames.get(name), pd.DataFrame({"i": [i] * 3, "s": ["a", "b", "c"]}))
            else:
                assert r.named_files.get(name) == f"file {i}".encode()
        report = r.check()
        assert not (report.dangling_rows or report.corrupt_blobs or report.unregistered_blobs), report
        r.files.gc(grace_seconds=0)  # what a killed put left behind (one writer here, so nothing is in flight)
        assert r.check().ok


@pytest.mark.slow
@pytest.mark.parametrize("backend_name", ["local", "moto"])
def test_random_kills_lose_nothing_acknowledged(backend_name: str, tmp_path: Path, request: pytest.FixtureRequest,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    url = _url(backend_name, tmp_path, request)
    config = BucketConfig.from_url(url)
    model: dict[tuple[str, str], int | None] = {}
    kills = 0
    acks = 0
    for trial in range(TRIALS):
        seed = 1000 * (backend_name == "moto") + trial
        rng = random.Random(seed)
        child = subprocess.Popen([sys.executable, "-c", CHILD, url, str(trial), str(seed)], stdout=subprocess.PIPE,
                                 text=True, env=os.environ.copy())
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        # The random moment counts from the first acknowledged operation, not from the start: on a loaded machine
        # a fixed delay from the start can end before anything was acknowledged, trial after trial.
        first = child.stdout.readline()
        time.sleep(rng.uniform(0.05, 1.5))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=60)
        out = first + out
        assert child.returncode == -signal.SIGKILL  # killed mid-workload, not finished
        kills += 1
        for line in out.splitlines():
            parts = line.split()
            if line.startswith("try delete ") and len(parts) == 3:
                model.pop(("array", parts[2]), None)  # in flight at the kill: present or not, both are right
                continue
            if not line.startswith("ack ") or len(parts) != 4:
                continue  # a line cut by the kill
            _, op, name, i = parts
            acks += 1
            if op == "delete":
                model[("array", name)] = None
            elif op != "pull":
                model[(op, name)] = int(i)
        _verify(config, model)
    assert kills == TRIALS
    assert acks >= TRIALS  # the kills landed after real work, trial after trial (the first acks are in the model)
