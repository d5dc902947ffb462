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

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig
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
