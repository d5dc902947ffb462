"""Every version has an id from the moment it is put: merges match versions by it, numbers are only display
positions (a merge may move them, the id stays), and versions put before ids existed get the same legacy id on
every writer."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig
from bh_notebook.errors import ValueTypeError
from bh_notebook.interfaces.versioned import legacy_version_id
from bh_notebook.storage import open_bucket
from bh_notebook.storage.snapshot import backup_to_file

NO_TIMER = SnapshotConfig(interval_seconds=0)


def _ids(bh: BucketSQLite, name: str) -> dict[int, str]:
    return {v.version: v.version_id for v in bh.arrays.history(name)}


def test_ids_are_given_at_put_and_survive_renumbering(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as a, BucketSQLite(config, NO_TIMER) as b:
        first = a.arrays.put("w", np.arange(3))
        assert len(first.version_id) == 32 and first.version_id == a.arrays.info("w").version_id
        a.force_flush()
        b.pull()
        mine = a.arrays.put("w", np.arange(3) + 10)  # a's version 2
        a.force_flush()
        theirs = b.arrays.put("w", np.arange(3) + 20)  # b's version 2 as well: moved to 3 by its merge
        assert theirs.version == 2
        b.force_flush()
        assert b.last_merge is not None and b.last_merge.renumbered == ["w@2->3"]
        assert _ids(b, "w") == {1: first.version_id, 2: mine.version_id, 3: theirs.version_id}
        a.pull()
        assert _ids(a, "w") == _ids(b, "w")
        assert len(set(_ids(a, "w").values())) == 3
    with BucketSQLite(config, NO_TIMER) as fresh:
        ids = _ids(fresh, "w")
        assert ids[3] == theirs.version_id
        assert int(fresh.arrays.get("w", 3)[0]) == 20  # the id and the bytes moved together


def test_a_deleted_version_is_matched_by_id_not_by_number(config: BucketConfig) -> None:
    """One writer deletes x@2 while the other's own x@2 (renumbered later) is waiting: only the version with
    that id goes."""
    with BucketSQLite(config, NO_TIMER) as a, BucketSQLite(config, NO_TIMER) as b:
        a.arrays.put("x", np.zeros(2))
        gone = a.arrays.put("x", np.ones(2))
        a.force_flush()
        b.pull()
        kept = b.arrays.put("x", np.full(2, 7.0))  # b's x@3
        a.arrays.delete("x", 2)
        a.force_flush()
        b.force_flush()
        versions = {v.version_id: v.version for v in b.arrays.history("x")}
        assert gone.version_id not in versions and kept.version_id in versions
        assert float(b.arrays.get("x", versions[kept.version_id])[0]) == 7.0


def _legacy_catalog(tmp_path: Path) -> Path:
    """A catalog made before versions had ids: none in the rows' metadata (the snapshot layout, one file)."""
    scratch = BucketConfig.for_local(tmp_path / "scratch")
    with BucketSQLite(scratch, NO_TIMER) as bh:
        bh.arrays.put("old", np.arange(4))
        bh.arrays.put("old", np.arange(4) * 2)
        bh.frames.put("df", pd.DataFrame({"a": [1, 2]}))
        path = tmp_path / "legacy.db"
        backup_to_file(bh.connection, path)
    conn = sqlite3.connect(path)
    for table in ("bh_arrays", "bh_frames", "bh_named_files"):  # no id in the metadata, as before ids
        conn.execute(f"UPDATE {table} SET metadata = NULL")
    conn.commit()
    conn.close()
    return path


def _copy_blobs(src: Path, config: BucketConfig) -> None:
    bucket = open_bucket(config)
    for file in (src / "store-scratch").rglob("*"):  # the scratch store's blobs, under the same keys
        if file.is_file():
            bucket.upload(file, file.relative_to(src / "store-scratch").as_posix())


@pytest.mark.parametrize("backend", ["local", "moto"], indirect=True)
def test_versions_from_before_ids_get_the_same_id_on_every_writer(config: BucketConfig, tmp_path: Path) -> None:
    legacy = _legacy_catalog(tmp_path)
    scratch_bucket = open_bucket(BucketConfig.for_local(tmp_path / "scratch"))
    bucket = open_bucket(config)
    for key in scratch_bucket.list_keys("files/"):
        bucket.put_bytes(scratch_bucket.get_bytes(key), key)
    bucket.upload(legacy, config.key)
    conn = sqlite3.connect(legacy)
    rows = conn.execute("SELECT name, version, bh_key, created_at FROM bh_arrays ORDER BY version").fetchall()
    conn.close()
    expected = {v: legacy_version_id("bh_arrays", n, v, k, c) for n, v, k, c in rows}
    # Two writers open the legacy bucket and migrate it on their own, each putting a version of its own.
    a = BucketSQLite(config, NO_TIMER).start()
    b = BucketSQLite(config, NO_TIMER).start()
    try:
        assert _ids(a, "old") == _ids(b, "old") == expected
        new_a = a.arrays.put("old", np.arange(4) * 3)
        new_b = b.arrays.put("old", np.arange(4) * 4)
        a.force_flush()
        b.force_flush()
        a.pull()
        assert _ids(a, "old") == _ids(b, "old")
    finally:
        a.stop()
        b.stop()
    with BucketSQLite(config, NO_TIMER) as fresh:
        ids = _ids(fresh, "old")
        assert sorted(ids) == [1, 2, 3, 4]  # nothing doubled by the two migrations
        assert {ids[1], ids[2]} == set(expected.values())
        assert {ids[3], ids[4]} == {new_a.version_id, new_b.version_id}
        assert fresh.frames.get("df")["a"].tolist() == [1, 2]
        assert fresh.check().ok


def test_an_older_writer_that_rewrote_the_key_is_merged_by_id(make_config: Callable[..., BucketConfig],
                                                             tmp_path: Path) -> None:
    """A program from before ids rewrites the key with a version of its own: it copies the others' metadata
    (ids included) as it is, and its own row has none. That version is taken in with its legacy id, the others
    keep theirs, nothing is doubled."""
    config = make_config("local")
    with BucketSQLite(config, NO_TIMER) as bh:
        first = bh.arrays.put("m", np.arange(2))
    rewritten = tmp_path / "older.db"
    open_bucket(config).download(config.key, rewritten)
    conn = sqlite3.connect(rewritten)
    conn.execute("INSERT INTO bh_arrays (name, version, bh_key, nbytes, created_at, metadata, shape, dtype, descr, "
                 "fortran_order, header) SELECT name, 2, bh_key, nbytes, 12345.0, NULL, shape, dtype, descr, "
                 "fortran_order, header FROM bh_arrays WHERE version = 1")
    conn.commit()
    conn.close()
    open_bucket(config).upload(rewritten, config.key)
    with BucketSQLite(config, NO_TIMER) as bh:
        ids = _ids(bh, "m")
        assert ids == {1: first.version_id,
                       2: legacy_version_id("bh_arrays", "m", 2, bh.arrays.info("m", 2).bh_key, 12345.0)}
        assert bh.last_merge is not None and not bh.last_merge.conflicts and not bh.last_merge.renumbered
    with BucketSQLite(config, NO_TIMER) as fresh:
        assert _ids(fresh, "m") == ids


def test_ids_live_in_the_metadata_and_stay_out_of_the_users(config: BucketConfig) -> None:
    """No column is added to any table (an older writer merging the catalog keeps every version), and the
    metadata a user sees and sets is theirs alone."""
    with BucketSQLite(config, NO_TIMER) as bh:
        v = bh.arrays.put("a", np.arange(2), metadata={"note": "n"})
        assert v.metadata == {"note": "n"} and bh.arrays.info("a").metadata == {"note": "n"}
        cols = [r[1] for r in bh.connection.execute("PRAGMA table_info(bh_arrays)")]
        assert cols == ["name", "version", "bh_key", "nbytes", "created_at", "metadata", "shape", "dtype", "descr",
                        "fortran_order", "header"]
        with pytest.raises(ValueTypeError, match="'bh:' are bh_notebook's own"):
            bh.arrays.put("a", np.arange(3), metadata={"bh:id": "mine"})
        assert [x.version for x in bh.arrays.history("a")] == [1]
