"""A put never trusts a catalog row alone: when the row's object is gone, the bytes are uploaded again.

What went wrong before: writer B's catalog still listed blob K after writer A's delete and gc removed K's object;
B put identical bytes under a new name, nothing was uploaded, the put reported success and the data existed
nowhere. The cost aim stays: a blob this process uploaded or verified needs no request on a re-put; one known only
from the catalog costs one HEAD the first time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig
from bh_notebook.errors import BlobInUse
from bh_notebook.storage import open_bucket
from bh_notebook.testing.counting import CountingBucket

NO_TIMER = SnapshotConfig(interval_seconds=0)


def test_a_row_whose_object_is_gone_is_repaired_by_the_next_put(config: BucketConfig, tmp_path: Path) -> None:
    arr = np.arange(1000.0)
    doc = tmp_path / "doc.txt"
    doc.write_bytes(b"a named file")
    with BucketSQLite(config, NO_TIMER) as a:
        key = a.arrays.put("x", arr).bh_key
        doc_key = a.named_files.put("doc", doc).bh_key
    with BucketSQLite(config, NO_TIMER) as b:  # b's catalog lists both blobs
        bucket = open_bucket(config)
        for k in (key, doc_key):  # another writer's delete and gc took the objects
            bucket.delete(b.files.object_key(k))
        bucket.close()
        assert b.arrays.put("y", arr).bh_key == key  # the same bytes under a new name ...
        assert b.files.put(doc) == doc_key  # ... and a file put by path
        np.testing.assert_array_equal(b.arrays.get("y"), arr)  # uploaded again, not trusted
        assert b.named_files.get("doc") == b"a named file"
        assert b.check().ok


def test_re_puts_cost_nothing_once_known_and_one_head_the_first_time(config: BucketConfig) -> None:
    df = pd.DataFrame({"a": np.arange(100)})
    with BucketSQLite(config, NO_TIMER) as a:
        a.frames.put("f", df)
    counting = CountingBucket(open_bucket(config))
    with BucketSQLite(config, NO_TIMER, bucket_client=counting) as b:
        counting.reset()
        b.frames.put("f", df)  # known only from the catalog: one HEAD, no upload
        assert counting.calls == {"head": 1} and counting.bytes_out == 0
        counting.reset()
        b.frames.put("f", df)  # now known present in this session: no request at all
        b.frames.put("g", df)
        assert counting.calls == {} and counting.bytes_out == 0


def test_deleting_one_user_of_a_shared_blob_keeps_it_for_the_others(config: BucketConfig) -> None:
    arr = np.arange(50, dtype="int64")
    with BucketSQLite(config, NO_TIMER) as bh:
        key = bh.arrays.put("weights", arr).bh_key
        npy = bh.files.get(key)  # the same .npy bytes, stored again as a named file: one shared blob
        assert bh.named_files.put("weights.npy", npy).bh_key == key
        bh.named_files.delete("weights.npy")
        bh.files.gc(grace_seconds=0)
        np.testing.assert_array_equal(bh.arrays.get("weights"), arr)  # the array still has its bytes
        assert bh.check().ok


def test_files_delete_refuses_while_an_entry_uses_the_blob(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as bh:
        key = bh.arrays.put("x", np.arange(5)).bh_key
        with pytest.raises(BlobInUse, match=r"bh_arrays:x@1.*delete those entries"):
            bh.files.delete(key)
        np.testing.assert_array_equal(bh.arrays.get("x"), np.arange(5))
        loose = bh.files.put(b"a file nobody's entry uses")
        assert bh.files.delete(loose) is True  # the seed's verb, unchanged for blobs no entry uses
        assert bh.files.delete(key, force=True) is True  # on purpose: the entry is now broken ...
        report = bh.check()
        assert report.lost_blobs == [key] and not report.ok  # ... and check says so


def test_gc_never_takes_the_blob_of_an_entry_whose_file_row_was_lost(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as bh:
        key = bh.frames.put("f", pd.DataFrame({"a": [1, 2, 3]})).bh_key
        with bh.connection:
            bh.connection.execute("DELETE FROM filestore WHERE bh_key = ?", (key,))  # a lost file row
        assert bh.check().unregistered_blobs == [key]  # reported as repairable ...
        report = bh.files.gc(grace_seconds=0)  # ... and gc must not delete it meanwhile
        assert report.orphans_deleted == 0
        assert bh.check(fix=True).fixed
        assert bh.frames.get("f")["a"].tolist() == [1, 2, 3]
        assert bh.check().ok
