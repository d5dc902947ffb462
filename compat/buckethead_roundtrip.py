"""Round trip between bh_notebook and buckethead 0.4.1 on one real (moto, loopback) S3 bucket.

Run with a Python where both import, e.g.::

    /tmp/bhvenv/bin/python compat/buckethead_roundtrip.py

buckethead 0.4.1 declares Requires-Python >=3.13; on 3.11 it needs one change (core.py's PEP 695
``def _started[T](...)`` rewritten with a TypeVar); see the report that came with this script.

Scenarios (each on its own fresh bucket, same snapshot key ``bucketsqlite/snap.db``):
  A. bh_notebook writes first (kv, file, array, frame); buckethead reads and writes; bh_notebook reads back + check().
  B. buckethead writes first; bh_notebook reads and writes; buckethead reads back; bh_notebook reads back + check().
  C. branches both ways: buckethead's branches.create -> bh_notebook's branches.list/open; bh_notebook's
     branches.create -> buckethead's branches.list/switch.
  D. (beyond the hand-offs) both open at once, each commits once, in either order.
Prints a table: who did what in whose bucket, ok or failed with the error. Exit status 1 when anything failed.

Known failure with buckethead 0.4.1 (its design, not fixable from our side):
  D: buckethead commits with an unconditional PUT, so when bh_notebook commits first, buckethead's later flush
     replaces it (bh_notebook's commit survives only in ``<key>.prev``). bh_notebook committing second merges.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's bh_notebook, whatever the editable install points at

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import bh_notebook as bn  # noqa: E402
from bh_notebook.testing.servers import ACCESS_KEY, SECRET_KEY, MotoServer  # noqa: E402

import buckethead as bhd  # noqa: E402
from buckethead.observability.status import SilentReporter  # noqa: E402

assert Path(bn.__file__).resolve().is_relative_to(ROOT), f"bh_notebook imported from {bn.__file__}, not {ROOT}"

KEY = "bucketsqlite/snap.db"
ROWS: list[tuple[str, str, str, str]] = []  # (scenario, actor, action, result)
FAILED = 0


def step(scenario: str, actor: str, action: str, fn: Callable[[], Any], expect: Any = ...) -> Any:
    """Run one action; record ok, or failed with the error (or the mismatch). Returns fn()'s value or None."""
    global FAILED
    try:
        got = fn()
    except Exception as exc:  # noqa: BLE001 - every failure is a row of the table
        FAILED += 1
        msg = f"FAILED {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]
        ROWS.append((scenario, actor, action, msg))
        print(f"--- {scenario} / {actor} / {action}", file=sys.stderr)
        traceback.print_exc()
        return None
    if expect is not ... and not _equal(got, expect):
        FAILED += 1
        want = "" if callable(expect) and not isinstance(expect, (str, bytes)) else f", expected {expect!r:.70}"
        ROWS.append((scenario, actor, action, f"FAILED: got {got!r:.90}{want}"))
        return got
    ROWS.append((scenario, actor, action, "ok"))
    return got


def _equal(a: Any, b: Any) -> bool:
    if isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(b, pd.DataFrame):
        return isinstance(a, pd.DataFrame) and a.equals(b)
    if callable(b) and not isinstance(b, (str, bytes)):
        return bool(b(a))
    return bool(a == b)


# -- the two sides ------------------------------------------------------------------------------------------

def nb_open(server: MotoServer, bucket: str, key: str = KEY) -> bn.BucketSQLite:
    cfg = server.config(bucket, key=key)
    bh = bn.BucketSQLite(cfg, bn.SnapshotConfig(interval_seconds=0, min_interval_seconds=0))
    bh.progress_factory = None
    return bh.start()


def bhd_config(server: MotoServer, bucket: str, key: str = KEY) -> Any:
    return bhd.BucketConfig(bucket=bucket, key=key, endpoint_url=server.endpoint_url, region="us-east-1",
                            access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)


def bhd_open(server: MotoServer, bucket: str, key: str = KEY) -> Any:
    bh = bhd.BucketSQLite(bhd_config(server, bucket, key), bhd.SnapshotConfig(interval_seconds=3600,
                                                                              min_interval_seconds=1),
                          status_reporter=SilentReporter())
    bh.start()
    return bh


def bhd_commit(bh: Any) -> None:
    """buckethead's stop() logs and swallows a failing final flush; force_flush() first so a failure shows."""
    bh.force_flush()
    bh.stop()


def listing(server: MotoServer, bucket: str) -> list[str]:
    out = server.client().list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in out.get("Contents", []) if not o["Key"].startswith("files/"))


ARR = np.arange(12, dtype=np.int32).reshape(3, 4)
DF = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
ARR2 = np.linspace(0.0, 1.0, 5)
DF2 = pd.DataFrame({"n": [10.5, 11.5]})
NB_FILE = b"written by bh_notebook\n" * 10
BHD_FILE = b"written by buckethead\n" * 10


def scenario_a(server: MotoServer) -> str:
    s = "A nb-first"
    bucket = server.new_bucket("compat-a")
    nb = step(s, "bh_notebook", "start on empty bucket", lambda: nb_open(server, bucket))
    if nb is None:
        return bucket
    step(s, "bh_notebook", "kv write", lambda: (nb.kv.set("nb.greeting", "hello from nb"),
                                                 nb.kv.set_bytes("nb.bytes", b"\x00\x01\xff")))
    nb_key = step(s, "bh_notebook", "files.put", lambda: nb.files.put(NB_FILE, filename="nb.txt", mime="text/plain"))
    step(s, "bh_notebook", "arrays.put", lambda: nb.arrays.put("arr", ARR))
    step(s, "bh_notebook", "frames.put", lambda: nb.frames.put("df", DF))
    step(s, "bh_notebook", "stop (commit)", nb.stop)
    print(f"[A] objects after bh_notebook: {listing(server, bucket)}")

    b = step(s, "buckethead", "start on nb's bucket (restore)", lambda: bhd_open(server, bucket))
    if b is not None:
        step(s, "buckethead", "kv read nb's str", lambda: b.kv.get("nb.greeting"), "hello from nb")
        step(s, "buckethead", "kv read nb's bytes", lambda: b.kv.get_bytes("nb.bytes"), b"\x00\x01\xff")
        if nb_key:
            step(s, "buckethead", "files.get nb's file", lambda: b.files.get(nb_key), NB_FILE)
            step(s, "buckethead", "files.metadata nb's file",
                 lambda: (b.files.metadata(nb_key).filename, b.files.metadata(nb_key).size),
                 ("nb.txt", len(NB_FILE)))
        step(s, "buckethead", "files.list sees nb's file", lambda: [m.bh_key for m in b.files.list()],
             lambda keys: nb_key in keys)
        step(s, "buckethead", "kv write", lambda: (b.kv.set("bhd.greeting", "hello from buckethead"),
                                                    b.kv.set_bytes("bhd.bytes", b"\xfe\xed")))
        bhd_key = step(s, "buckethead", "files.put", lambda: b.files.put(BHD_FILE, filename="bhd.txt",
                                                                           mime="text/plain"))
        step(s, "buckethead", "files.gc(grace_seconds=0) deletes none of nb's blobs",
             lambda: b.files.gc(grace_seconds=0).orphans_deleted, 0)
        step(s, "buckethead", "force_flush + stop", lambda: bhd_commit(b))
    else:
        bhd_key = None
    print(f"[A] objects after buckethead: {listing(server, bucket)}")

    nb = step(s, "bh_notebook", "start again (restore bhd's snapshot)", lambda: nb_open(server, bucket))
    if nb is not None:
        step(s, "bh_notebook", "kv read bhd's str", lambda: nb.kv.get("bhd.greeting"), "hello from buckethead")
        step(s, "bh_notebook", "kv read bhd's bytes", lambda: nb.kv.get_bytes("bhd.bytes"), b"\xfe\xed")
        step(s, "bh_notebook", "kv read own (after bhd)", lambda: nb.kv.get("nb.greeting"), "hello from nb")
        if bhd_key:
            step(s, "bh_notebook", "files.get bhd's file", lambda: nb.files.get(bhd_key), BHD_FILE)
            step(s, "bh_notebook", "files.metadata bhd's file", lambda: nb.files.metadata(bhd_key).filename,
                 "bhd.txt")
            step(s, "bh_notebook", "files.get_range bhd's file (chunked read)",
                 lambda: nb.files.get_range_verified(bhd_key, 3, 20), BHD_FILE[3:20])
        if nb_key:
            step(s, "bh_notebook", "files.get own file (after bhd)", lambda: nb.files.get(nb_key), NB_FILE)
        step(s, "bh_notebook", "arrays.get own (after bhd)", lambda: nb.arrays.get("arr"), ARR)
        step(s, "bh_notebook", "frames.get own (after bhd)", lambda: nb.frames.get("df"), DF)
        rep = step(s, "bh_notebook", "check()", lambda: nb.check(), lambda r: r.ok)
        if rep is not None and not rep.ok:
            print(f"[A] check(): {rep}")
        step(s, "bh_notebook", "stop", nb.stop)
    return bucket


def scenario_b(server: MotoServer) -> None:
    s = "B bhd-first"
    bucket = server.new_bucket("compat-b")
    b = step(s, "buckethead", "start on empty bucket", lambda: bhd_open(server, bucket))
    if b is None:
        return
    step(s, "buckethead", "kv write", lambda: b.kv.set("bhd.first", "buckethead was here first"))
    bhd_key = step(s, "buckethead", "files.put", lambda: b.files.put(BHD_FILE, filename="bhd.txt"))
    step(s, "buckethead", "force_flush + stop", lambda: bhd_commit(b))
    print(f"[B] objects after buckethead: {listing(server, bucket)}")

    nb = step(s, "bh_notebook", "start on bhd's bucket (restore)", lambda: nb_open(server, bucket))
    nb_key = None
    if nb is not None:
        step(s, "bh_notebook", "kv read bhd's str", lambda: nb.kv.get("bhd.first"), "buckethead was here first")
        if bhd_key:
            step(s, "bh_notebook", "files.get bhd's file", lambda: nb.files.get(bhd_key), BHD_FILE)
        step(s, "bh_notebook", "kv write", lambda: nb.kv.set("nb.second", "then bh_notebook"))
        nb_key = step(s, "bh_notebook", "files.put", lambda: nb.files.put(NB_FILE, filename="nb.txt"))
        step(s, "bh_notebook", "arrays.put", lambda: nb.arrays.put("arr2", ARR2))
        step(s, "bh_notebook", "frames.put", lambda: nb.frames.put("df2", DF2))
        rep = step(s, "bh_notebook", "check() on bhd's bucket", lambda: nb.check(), lambda r: r.ok)
        if rep is not None and not rep.ok:
            print(f"[B] check(): {rep}")
        step(s, "bh_notebook", "stop (commit)", nb.stop)
    print(f"[B] objects after bh_notebook: {listing(server, bucket)}")

    b = step(s, "buckethead", "start again (restore nb's snapshot)", lambda: bhd_open(server, bucket))
    if b is not None:
        step(s, "buckethead", "kv read nb's str", lambda: b.kv.get("nb.second"), "then bh_notebook")
        step(s, "buckethead", "kv read own (after nb)", lambda: b.kv.get("bhd.first"), "buckethead was here first")
        if nb_key:
            step(s, "buckethead", "files.get nb's file", lambda: b.files.get(nb_key), NB_FILE)
        if bhd_key:
            step(s, "buckethead", "files.get own file (after nb)", lambda: b.files.get(bhd_key), BHD_FILE)
        step(s, "buckethead", "kv write (2nd round)", lambda: b.kv.set("bhd.third", "buckethead again"))
        step(s, "buckethead", "force_flush + stop", lambda: bhd_commit(b))

    nb = step(s, "bh_notebook", "start again (restore bhd's rewrite)", lambda: nb_open(server, bucket))
    if nb is not None:
        step(s, "bh_notebook", "kv read bhd's 2nd-round str", lambda: nb.kv.get("bhd.third"), "buckethead again")
        step(s, "bh_notebook", "arrays.get own (after bhd)", lambda: nb.arrays.get("arr2"), ARR2)
        step(s, "bh_notebook", "frames.get own (after bhd)", lambda: nb.frames.get("df2"), DF2)
        if nb_key:
            step(s, "bh_notebook", "files.get own file (after bhd)", lambda: nb.files.get(nb_key), NB_FILE)
        rep = step(s, "bh_notebook", "check()", lambda: nb.check(), lambda r: r.ok)
        if rep is not None and not rep.ok:
            print(f"[B] check(): {rep}")
        step(s, "bh_notebook", "stop", nb.stop)


def scenario_c(server: MotoServer, bucket: str) -> None:
    """Branches, on scenario A's bucket (both sides' data in main)."""
    s = "C branches"
    b = step(s, "buckethead", "start on main", lambda: bhd_open(server, bucket))
    if b is None:
        return
    step(s, "buckethead", "kv write on main", lambda: b.kv.set("bhd.branch-src", "main before bhd branch"))
    step(s, "buckethead", "branches.create('bhdbr')", lambda: b.branches.create("bhdbr"))
    step(s, "buckethead", "branches.switch('bhdbr') + kv write",
         lambda: (b.branches.switch("bhdbr"), b.kv.set("bhd.on-branch", "only on bhdbr")))
    step(s, "buckethead", "force_flush + stop", lambda: bhd_commit(b))
    print(f"[C] objects after buckethead branch: {listing(server, bucket)}")

    nb = step(s, "bh_notebook", "start on main", lambda: nb_open(server, bucket))
    if nb is None:
        return
    step(s, "bh_notebook", "branches.list() sees 'bhdbr'", lambda: nb.branches.list(), lambda names: "bhdbr" in names)
    step(s, "bh_notebook", "'bhdbr' in branches", lambda: "bhdbr" in nb.branches, True)
    br = step(s, "bh_notebook", "branches.open('bhdbr')", lambda: nb.branches.open("bhdbr"))
    if br is not None:
        step(s, "bh_notebook", "kv read on bhdbr (bhd's branch-only key)", lambda: br.kv.get("bhd.on-branch"),
             "only on bhdbr")
        step(s, "bh_notebook", "arrays.get on bhdbr", lambda: br.arrays.get("arr"), ARR)
        step(s, "bh_notebook", "write + stop on bhdbr",
             lambda: (br.kv.set("nb.on-bhdbr", "nb wrote on bhd's branch"), br.stop()))
    step(s, "bh_notebook", "kv write on main", lambda: nb.kv.set("nb.branch-src", "main before nb branch"))
    step(s, "bh_notebook", "branches.create('x')", lambda: nb.branches.create("x"))
    step(s, "bh_notebook", "branches.list() after create", lambda: nb.branches.list(),
         lambda names: "x" in names and "bhdbr" in names)
    step(s, "bh_notebook", "branches.merge('bhdbr') (bhd's branch, no fork point) into main",
         lambda: nb.branches.merge("bhdbr"))
    step(s, "bh_notebook", "kv read merged-in bhd branch key on main", lambda: nb.kv.get("bhd.on-branch"),
         "only on bhdbr")
    step(s, "bh_notebook", "stop", nb.stop)
    print(f"[C] objects after bh_notebook branch: {listing(server, bucket)}")

    b = step(s, "buckethead", "start on main again", lambda: bhd_open(server, bucket))
    if b is None:
        return
    names = step(s, "buckethead", "branches.list() sees 'x'", lambda: b.branches.list(), lambda n: "x" in n)
    step(s, "buckethead", "branches.list() == [bhdbr, main, x] exactly", lambda: b.branches.list(),
         ["bhdbr", "main", "x"])
    print(f"[C] buckethead branches.list(): {names}")
    step(s, "buckethead", "branches.switch('bhdbr'): nb's write there",
         lambda: (b.branches.switch("bhdbr"), b.kv.get("nb.on-bhdbr"))[1], "nb wrote on bhd's branch")
    step(s, "buckethead", "branches.switch('x'): nb's branch data",
         lambda: (b.branches.switch("x"), b.kv.get("nb.branch-src"))[1], "main before nb branch")
    step(s, "buckethead", "branches.switch('main')", lambda: b.branches.switch("main"))
    step(s, "buckethead", "branches.delete('x'), then list() has no x*",
         lambda: (b.branches.delete("x"), b.branches.list())[1], lambda n: not any(x.startswith("x") for x in n))
    step(s, "buckethead", "force_flush + stop", lambda: bhd_commit(b))
    print(f"[C] objects at the end: {listing(server, bucket)}")


def scenario_d(server: MotoServer) -> None:
    """Beyond the sequential hand-offs: both open at once, each commits once (either order)."""
    s = "D concurrent"
    for first in ("bh_notebook", "buckethead"):
        bucket = server.new_bucket("compat-d")
        nb0 = nb_open(server, bucket)
        nb0.kv.set("seed", "1")
        nb0.stop()
        nb = step(s, "bh_notebook", f"open (both open; {first} commits first)", lambda: nb_open(server, bucket))
        b = step(s, "buckethead", f"open (both open; {first} commits first)", lambda: bhd_open(server, bucket))
        if nb is None or b is None:
            continue
        nb.kv.set("nb.concurrent", "nb")
        b.kv.set("bhd.concurrent", "bhd")
        if first == "bh_notebook":
            step(s, "bh_notebook", "commit first", nb.stop)
            step(s, "buckethead", "commit second", lambda: bhd_commit(b))
        else:
            step(s, "buckethead", "commit first", lambda: bhd_commit(b))
            step(s, "bh_notebook", "commit second (merges)", nb.stop)
        after = nb_open(server, bucket)
        step(s, "both", f"{first} first: both writes survive",
             lambda: (after.kv.get("nb.concurrent"), after.kv.get("bhd.concurrent")), ("nb", "bhd"))
        after.stop()


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    print(f"bh_notebook {bn.__version__} from {Path(bn.__file__).parent}")
    print(f"buckethead from {Path(bhd.__file__).parent}; python {sys.version.split()[0]}")
    with MotoServer() as server:
        print(f"moto at {server.endpoint_url}")
        bucket_a = scenario_a(server)
        scenario_b(server)
        scenario_c(server, bucket_a)
        scenario_d(server)
    w = [max(len(r[i]) for r in ROWS) for i in range(3)]
    print()
    print(f"{'scenario':<{w[0]}} | {'actor':<{w[1]}} | {'action':<{w[2]}} | result")
    print("-" * (sum(w) + 20))
    for r in ROWS:
        print(f"{r[0]:<{w[0]}} | {r[1]:<{w[1]}} | {r[2]:<{w[2]}} | {r[3]}")
    print(f"\n{len(ROWS) - FAILED} ok, {FAILED} failed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
