"""A stateful model test of blob lifetimes: two writers on one bucket put, delete, flush, pull, gc and check.

Blobs are content-addressed and shared: the same bytes put as an array, a named file (the array's ``.npy`` bytes,
a frame's Parquet bytes) or under two names, by either writer, are one object. The model is a plain dict per
writer of what that writer put and has not deleted (names are disjoint between writers, payloads are shared);
after every step every entry a writer's model holds must read back on that writer with exactly its bytes.

``BlobLifetimes`` never lets time pass: a gc with the default grace then deletes nothing, and a gc with grace 0 runs
only at quiescence (both writers flushed and pulled), where everything is committed. ``AgedBlobLifetimes`` lets
time pass (every object in the bucket becomes older than the grace, as gc and check see it, instead of sleeping),
so that a gc with the default grace, run by a writer that pulled first as ``%bh_gc`` does, deletes real orphans
while the other writer holds a catalog a few steps old.

The shrunk sequences of the defects found are replayed as plain tests (``FIXED``), on the local backend and moto:
among them the two the aged machine found, where another writer's gc took a blob a put had just relied on.
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig
from bh_notebook.errors import NotFound
from bh_notebook.storage import open_bucket
from bh_notebook.storage.bucket import BucketClient, ObjectInfo, Readable
from bh_notebook.testing.counting import CountingBucket

NO_TIMER = SnapshotConfig(interval_seconds=0)
GRACE = 300.0  # FileStore.gc's and check's default grace period

ARRAYS = [np.arange(4, dtype=np.int64), np.arange(4, dtype=np.float64)]
FRAMES = [pd.DataFrame({"a": [1, 2, 3]}), pd.DataFrame({"b": [0.5], "c": ["x"]})]
#: Payload i is ARRAYS[i] or FRAMES[i - 2] for entries of that kind, and the bytes those store (or plain bytes, for
#: i = 4) for named files: a named file with payload 0 shares its blob with an array with payload 0.
PAYLOADS = 5


def _npy(arr: np.ndarray[Any, Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


_PARQUET: list[bytes] = []


def _parquet_bytes(tmp: Path) -> list[bytes]:
    """The bytes a FrameStore stores for each of FRAMES (found once, with a scratch local store)."""
    if not _PARQUET:
        with BucketSQLite(BucketConfig.for_local(tmp / "scratch-frames"), NO_TIMER) as scratch:
            for i, df in enumerate(FRAMES):
                _PARQUET.append(scratch.files.get(scratch.frames.put(f"f{i}", df).bh_key))
    return _PARQUET


class AgingBucket(CountingBucket):
    """A bucket whose objects look older than they are, by what ``ages`` says (seconds per key).

    gc and check judge an object's age by the LastModified its listing reports; a rule makes every object in the
    bucket older at once (time passing) instead of sleeping. Writing or deleting a key makes it new again.
    Both writers' buckets share one ``ages``.
    """

    def __init__(self, inner: BucketClient, ages: dict[str, float]) -> None:
        super().__init__(inner)
        self.ages = ages

    def _aged(self, info: ObjectInfo) -> ObjectInfo:
        return dataclasses.replace(info, last_modified=info.last_modified - self.ages.get(info.key, 0.0))

    def head(self, key: str) -> ObjectInfo | None:
        info = super().head(key)
        return None if info is None else self._aged(info)

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return (self._aged(info) for info in super().list_info(prefix))

    def put_stream(self, fileobj: Readable, key: str, **kw: Any) -> str:
        etag = super().put_stream(fileobj, key, **kw)
        self.ages.pop(key, None)
        return etag

    def copy(self, src_key: str, dst_key: str, *, if_match: str | None = None) -> None:
        super().copy(src_key, dst_key, if_match=if_match)
        self.ages.pop(dst_key, None)

    def delete(self, key: str) -> None:
        super().delete(key)
        self.ages.pop(key, None)

    def touch(self, key: str, **kw: Any) -> bool:
        found = super().touch(key, **kw)
        self.ages.pop(key, None)
        return found

    def age_all(self, seconds: float) -> None:
        """Every object now in the bucket becomes ``seconds`` older."""
        for info in self.inner.list_info():
            self.ages[info.key] = self.ages.get(info.key, 0.0) + seconds


def _kinds() -> dict[str, str]:
    return {"array": "arrays", "frame": "frames", "file": "named_files"}


Key = tuple[str, str, int]  # (kind, name, version)

STATS = {"examples": 0, "steps": 0}


class BlobLifetimes(RuleBasedStateMachine):
    """Two writers, W0 (names ``a_*``) and W1 (names ``b_*``), on one fresh bucket per example."""

    #: Set by the test before running: makes a fresh BucketConfig; where scratch files go.
    make_config: Callable[[], BucketConfig]
    tmp: Path
    #: Whether time passes in this machine (objects grow older than the grace period).
    aging = False

    def __init__(self) -> None:
        super().__init__()
        STATS["examples"] += 1
        config = type(self).make_config()
        self.ages: dict[str, float] = {}
        self.buckets = [AgingBucket(open_bucket(config), self.ages) for _ in (0, 1)]
        self.writers = [BucketSQLite(config, NO_TIMER, bucket_client=b).start() for b in self.buckets]
        # Each writer trusts a blob it checked for FileStore.trust_seconds of its monotonic clock: time passing
        # moves that clock too.
        self.skew = [0.0]
        for w in self.writers:
            w.files._clock = lambda: time.monotonic() + self.skew[0]
        self.models: list[dict[Key, Any]] = [{}, {}]
        self.lost_rows: set[str] = set()  # blobs whose file row was dropped on purpose, until check(fix=True)
        self.files = [_npy(a) for a in ARRAYS] + _parquet_bytes(type(self).tmp) + [b"plain bytes"]

    def teardown(self) -> None:
        for w in self.writers:
            try:
                w.stop()
            except Exception:  # noqa: BLE001 - a failed last flush must not hide the finding
                pass

    # -- helpers ------------------------------------------------------------------------------

    def _store(self, w: int, kind: str) -> Any:
        return getattr(self.writers[w], _kinds()[kind])

    def _step(self) -> None:
        STATS["steps"] += 1

    def _payload(self, kind: str, i: int) -> Any:
        if kind == "file":
            return self.files[i]
        return ARRAYS[i % 2] if kind == "array" else FRAMES[i % 2]

    def _name(self, w: int, i: int) -> str:
        return ("a_", "b_")[w] + ("x", "y")[i]

    def _bh_key(self, w: int, key: Key) -> str:
        kind, name, version = key
        return str(self._store(w, kind).info(name, version).bh_key)

    def _read_matches(self, w: int, key: Key, expected: Any) -> None:
        kind, name, version = key
        got = self._store(w, kind).get(name, version)
        if kind == "array":
            assert got.dtype == expected.dtype and np.array_equal(got, expected), (key, got, expected)
        elif kind == "frame":
            assert isinstance(got, pd.DataFrame) and got.equals(expected), (key, got, expected)
        else:
            assert got == expected, (key, got[:40], expected[:40])

    def _quiesce(self) -> None:
        """Both writers commit and take in the other's commits: both catalogs are the committed one."""
        for w in self.writers:
            w.force_flush()
        for w in self.writers:
            w.pull()

    # -- rules --------------------------------------------------------------------------------

    @rule(w=st.integers(0, 1), kind=st.sampled_from(["array", "frame", "file"]), name=st.integers(0, 1),
          payload=st.integers(0, PAYLOADS - 1))
    def put(self, w: int, kind: str, name: int, payload: int) -> None:
        self._step()
        value = self._payload(kind, payload)
        info = self._store(w, kind).put(self._name(w, name), value)
        self.models[w][(kind, info.name, info.version)] = value

    @precondition(lambda self: self.models[0] or self.models[1])
    @rule(data=st.data(), whole=st.booleans())
    def delete(self, data: st.DataObject, whole: bool) -> None:
        self._step()
        w = data.draw(st.sampled_from([i for i in (0, 1) if self.models[i]]), label="writer")
        self.delete_entry(w, data.draw(st.sampled_from(sorted(self.models[w])), label="entry"), whole)

    def delete_entry(self, w: int, key: Key, whole: bool) -> None:
        kind, name, version = key
        if whole:
            self._store(w, kind).delete(name)
            for k in [k for k in self.models[w] if k[:2] == (kind, name)]:
                del self.models[w][k]
        else:
            self._store(w, kind).delete(name, version)
            del self.models[w][(kind, name, version)]

    @precondition(lambda self: self.models[0] or self.models[1])
    @rule(data=st.data())
    def delete_blob_in_use(self, data: st.DataObject) -> None:
        """``files.delete`` of a blob an entry of this writer uses is refused (BlobInUse) and changes nothing."""
        self._step()
        w = data.draw(st.sampled_from([i for i in (0, 1) if self.models[i]]), label="writer")
        self.delete_used_blob(w, data.draw(st.sampled_from(sorted(self.models[w])), label="entry"))

    def delete_used_blob(self, w: int, key: Key) -> None:
        try:
            self.writers[w].files.delete(self._bh_key(w, key))
        except Exception as exc:  # noqa: BLE001 - BlobInUse, named so the test also runs where it did not exist
            assert type(exc).__name__ == "BlobInUse", exc

    @rule(w=st.integers(0, 1))
    def flush(self, w: int) -> None:
        self._step()
        self.writers[w].force_flush()

    @rule(w=st.integers(0, 1))
    def pull(self, w: int) -> None:
        self._step()
        self.writers[w].pull()

    @rule(w=st.integers(0, 1))
    def quiescent_gc(self, w: int) -> None:
        """Everything is committed and both writers hold it: a gc with grace 0 may take only true orphans."""
        self._step()
        self._quiesce()
        report = self.writers[w].files.gc(grace_seconds=0)
        assert report.dangling_rows_found == 0, report

    @rule(w=st.integers(0, 1))
    def concurrent_gc(self, w: int) -> None:
        """A gc with the default grace at any time, pulling first as ``%bh_gc`` does."""
        self._step()
        self.writers[w].pull()
        report = self.writers[w].files.gc(grace_seconds=GRACE)
        if not self.aging:  # no time passes in this machine: every object is younger than the grace
            assert report.orphans_deleted == 0, report

    @rule(w=st.integers(0, 1))
    def check_fix(self, w: int) -> None:
        """At quiescence ``check(fix=True)`` puts lost file rows back; then every entry of both writers reads."""
        self._step()
        self._quiesce()
        report = self.writers[w].check(fix=True)
        lost = getattr(report, "lost_blobs", [])  # entries whose blob is gone, row and object
        assert not lost and not report.dangling_rows and not report.corrupt_blobs, report
        self._quiesce()
        self.lost_rows.clear()
        for other in (0, 1):  # each writer sees the other's entries too
            for key, value in self.models[1 - other].items():
                self._read_matches(other, key, value)

    @precondition(lambda self: self.models[0] or self.models[1])
    @rule(data=st.data())
    def lose_file_row(self, data: st.DataObject) -> None:
        """Drop the file row of a blob an entry uses, as a crash or another tool might."""
        self._step()
        w = data.draw(st.sampled_from([i for i in (0, 1) if self.models[i]]), label="writer")
        self.drop_file_row(w, data.draw(st.sampled_from(sorted(self.models[w])), label="entry"))

    def drop_file_row(self, w: int, key: Key) -> None:
        bh_key = self._bh_key(w, key)
        conn = self.writers[w].connection
        with conn:
            conn.execute("DELETE FROM filestore WHERE bh_key = ?", (bh_key,))
        self.lost_rows.add(bh_key)

    # -- the invariant ------------------------------------------------------------------------

    @invariant()
    def every_entry_reads_back(self) -> None:
        for w in (0, 1):
            for key, value in self.models[w].items():
                try:
                    self._read_matches(w, key, value)
                except NotFound:
                    bh_key = self._bh_key(w, key)
                    if bh_key in self.lost_rows and bh_key not in self.writers[w].files:
                        # Its file row was dropped on purpose: readable again after check(fix=True), so the
                        # blob itself must still be in the bucket.
                        assert self.buckets[w].inner.exists(self.writers[w].files.object_key(bh_key)), key
                        continue
                    raise


class AgedBlobLifetimes(BlobLifetimes):
    """BlobLifetimes with time passing: objects grow older than the grace while entries come and go."""

    aging = True

    @rule()
    def time_passes(self) -> None:
        """Both writers commit (nothing is in flight), then every object grows older than the grace period."""
        self._step()
        for w in self.writers:
            w.force_flush()
        self.buckets[0].age_all(GRACE + 1)
        self.skew[0] += GRACE + 1


@pytest.fixture(params=["local", "moto"])
def blob_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _configure(machine: type[BlobLifetimes], backend: str, make_config: Callable[..., BucketConfig],
               tmp_path: Path) -> None:
    machine.make_config = staticmethod(lambda: make_config(backend))
    machine.tmp = tmp_path


def _run(machine: type[BlobLifetimes], backend: str, make_config: Callable[..., BucketConfig], tmp_path: Path,
         examples: int, steps: int, shrink: bool = True) -> None:
    STATS.update(examples=0, steps=0)
    _configure(machine, backend, make_config, tmp_path)
    started = time.monotonic()
    try:
        run_state_machine_as_test(machine, settings=settings(
            max_examples=examples, stateful_step_count=steps, deadline=None,
            phases=list(Phase) if shrink else [Phase.explicit, Phase.reuse, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    finally:
        print(f"{machine.__name__} on {backend}: {STATS['examples']} examples, {STATS['steps']} steps, "
              f"{time.monotonic() - started:.1f} s")


def test_blob_lifetimes(blob_backend: str, make_config: Callable[..., BucketConfig], tmp_path: Path) -> None:
    """The machine without time passing, on the local backend and moto (fewer examples: each request costs more)."""
    local = blob_backend == "local"
    _run(BlobLifetimes, blob_backend, make_config, tmp_path, examples=30 if local else 8, steps=25 if local else 20)


def test_aged_blob_lifetimes(make_config: Callable[..., BucketConfig], tmp_path: Path) -> None:
    """The machine with time passing (local backend)."""
    _run(AgedBlobLifetimes, "local", make_config, tmp_path, examples=30, steps=25)


Step = tuple[Any, ...]  # (method of the machine, its arguments...)


def _replay(machine: type[BlobLifetimes], steps: list[Step]) -> None:
    """Run ``steps`` on a fresh machine, checking the invariant after each, as hypothesis would."""
    state = machine()
    try:
        for name, *args in steps:
            getattr(state, name)(*args)
            state.every_entry_reads_back()
    finally:
        state.teardown()


A, F = "array", "file"

#: The shrunk sequences of the defects fixed so far, kept as plain regression tests.
FIXED = {
    # An array and a named file with the same bytes share a blob; deleting one entry dropped the blob's row.
    "shared_across_kinds": [("put", 0, A, 0, 0), ("put", 0, F, 0, 0), ("delete_entry", 0, (A, "a_x", 1), False)],
    "files_delete_in_use": [("put", 0, A, 0, 0), ("delete_used_blob", 0, (A, "a_x", 1))],
    # W1's catalog still lists the blob after W0 deleted its last user and gc took the object: W1's put of the same
    # bytes under a new name reported success without uploading.
    "stale_catalog_row": [("put", 0, A, 0, 0), ("flush", 0), ("pull", 1), ("time_passes",),
                          ("delete_entry", 0, (A, "a_x", 1), True), ("flush", 0), ("concurrent_gc", 0),
                          ("put", 1, A, 1, 0)],
    # W1 deletes its entry using K (its file row goes) while W0 adds one using K; when W1's flush merges W0's commit,
    # the row W1 deleted went too, and W0's entry could not be read after its next pull (found by this machine;
    # the merge now keeps the rows of blobs the merged entries use).
    "merge_drops_a_used_row": [("put", 1, A, 0, 0), ("flush", 1), ("pull", 0),
                               ("delete_entry", 1, (A, "b_x", 1), True), ("put", 0, A, 0, 0), ("flush", 0),
                               ("flush", 1), ("pull", 0)],
    # An entry whose file row was lost: gc with grace 0 deleted its blob.
    "lost_file_row": [("put", 0, A, 0, 0), ("drop_file_row", 0, (A, "a_x", 1)), ("quiescent_gc", 0),
                      ("check_fix", 0)],
    # A pull kept a file row the other writer's commit had dropped (an entry still used it), but the catalog counted
    # as committed: its next flush saw the same bytes it had uploaded before and sent nothing, so the other writer
    # never got the row back (found by this machine; a kept row now makes the catalog dirty, and after a merge the
    # upload is skipped only when the catalog equals the one in the bucket).
    "pull_keeps_a_dropped_row": [("put", 0, A, 1, 4), ("drop_file_row", 0, (A, "a_y", 1)), ("quiescent_gc", 1),
                                 ("put", 0, F, 1, 0), ("drop_file_row", 0, (F, "a_y", 1)), ("check_fix", 1),
                                 ("drop_file_row", 0, (A, "a_y", 1)), ("flush", 0), ("concurrent_gc", 1),
                                 ("concurrent_gc", 0), ("drop_file_row", 0, (A, "a_y", 1)), ("quiescent_gc", 0),
                                 ("check_fix", 1)],
    # Found by the machine with time passing; fixed by touching a blob a put relies on when it is old, and by
    # trusting a checked blob for FileStore.trust_seconds only.
    # W1 deletes its only entry using blob K (its row goes, the old object waits for gc) and commits; W1 then puts
    # the same bytes again: the HEAD finds the object, so nothing is uploaded and the object stays old; W0 pulls
    # and runs gc with the default grace before W1's next commit: K is an orphan older than the grace and goes.
    "reuse_of_an_old_orphan": [("put", 1, A, 0, 0), ("flush", 1), ("time_passes",),
                               ("delete_entry", 1, (A, "b_x", 1), True), ("flush", 1), ("put", 1, A, 1, 0),
                               ("concurrent_gc", 0)],
    # Both writers use K; W1 deletes its entry (W0's still uses K, so W1 keeps K's row and its in-session "present"
    # mark); W0 deletes its entry and gc takes K; W1, not yet pulled, puts the same bytes: its catalog row and its
    # session say K is stored, so no request is sent and the new entry's data exists nowhere.
    "stale_row_seen_in_session": [("put", 0, A, 0, 0), ("flush", 0), ("pull", 1), ("put", 1, A, 0, 0),
                                  ("flush", 1), ("pull", 0), ("delete_entry", 1, (A, "b_x", 1), True), ("flush", 1),
                                  ("time_passes",), ("delete_entry", 0, (A, "a_x", 1), True), ("flush", 0),
                                  ("concurrent_gc", 0), ("put", 1, A, 1, 0)],
}


@pytest.mark.parametrize("sequence", sorted(FIXED))
def test_fixed_sequences(sequence: str, blob_backend: str, make_config: Callable[..., BucketConfig],
                         tmp_path: Path) -> None:
    _configure(AgedBlobLifetimes, blob_backend, make_config, tmp_path)
    _replay(AgedBlobLifetimes, FIXED[sequence])
