"""Branches: named catalogs beside the main one, sharing its blobs, committed on their own, merged back."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig
from bh_notebook.errors import InvalidKey, NotFound, PreconditionFailed
from bh_notebook.storage import open_bucket
from bh_notebook.testing.counting import CountingBucket

NO_TIMER = SnapshotConfig(interval_seconds=0)


def test_a_branch_starts_from_the_catalog_shares_its_blobs_and_commits_on_its_own(config: BucketConfig) -> None:
    big = np.arange(200_000.0)
    with BucketSQLite(config, NO_TIMER) as main:
        main.arrays.put("big", big)
        main.kv["lr"] = "0.1"
        counting = CountingBucket(open_bucket(config))
        key = main.branches.create("exp")
        assert key == config.key + ".branch.exp"  # buckethead's naming
        assert main.branches.list() == ["main", "exp"] and "exp" in main.branches and "nope" not in main.branches
        with pytest.raises(PreconditionFailed, match="exists already"):
            main.branches.create("exp")
        with main.branches.open("exp") as exp:
            assert exp.branches.current == "exp" and exp.files.prefix == main.files.prefix
            np.testing.assert_array_equal(exp.arrays.get("big"), big)
            exp.kv["lr"] = "0.5"
            exp.arrays.put("trial", np.ones(5))
        assert counting.bytes_out == 0  # nothing of the blobs was copied
        assert "trial" not in main.arrays and main.kv["lr"] == "0.1"  # the main catalog did not move
        # buckethead lists every key under <key>.branch. but .prev copies as a branch: nothing else may be there.
        under = [k for k in main.bucket.list_keys(config.key + ".branch.") if not k.endswith(".prev")]
        assert under == [config.key + ".branch.exp"]
        main.pull()
        assert "trial" not in main.arrays


def test_merging_a_branch_keeps_the_main_catalogs_numbers_and_takes_the_branchs_values(
        config: BucketConfig) -> None:
    df = pd.DataFrame({"a": [1, 2, 3]})
    with BucketSQLite(config, NO_TIMER) as main:
        main.frames.put("f", df)  # f@1 on both sides
        main.kv.set("mode", "fast")
        main.branches.create("exp")
        with main.branches.open("exp") as exp:
            exp.frames.put("f", df.assign(a=[7, 8, 9]))  # f@2 on the branch
            exp.kv.set("mode", "careful")
            exp.kv.set("only_on_branch", "yes")
        main.frames.put("f", df.assign(a=[4, 5, 6]))  # f@2 on main too: others may have read it already
        main.kv.set("mode", "quick")  # changed on both sides: the branch's value is what a merge asks for
        main.force_flush()
        report = main.branches.merge("exp")
        assert sorted(v.version for v in main.frames.history("f")) == [1, 2, 3]
        pd.testing.assert_frame_equal(main.frames.get("f", 2), df.assign(a=[4, 5, 6]))  # main's f@2 stays f@2
        pd.testing.assert_frame_equal(main.frames.get("f", 3), df.assign(a=[7, 8, 9]))  # the branch's moved on
        assert main.kv["mode"] == "careful" and main.kv["only_on_branch"] == "yes"
        assert any("mode" in c for c in report.conflicts) and any("f@2->3" in r for r in report.renumbered)
        assert not main.dirty  # the merge is committed
        # Merged once: merging again takes nothing new (the fork point moved to the branch as merged).
        again = main.branches.merge("exp")
        assert again.taken == 0 and not again.conflicts
        assert sorted(v.version for v in main.frames.history("f")) == [1, 2, 3]
    with BucketSQLite(config, NO_TIMER) as fresh:
        pd.testing.assert_frame_equal(fresh.frames.get("f", 3), df.assign(a=[7, 8, 9]))
        assert fresh.check().ok


def test_gc_spares_blobs_only_a_branch_uses(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as main:
        main.kv["k"] = "v"
        main.branches.create("exp")
        with main.branches.open("exp") as exp:
            key = exp.arrays.put("branch_only", np.arange(33)).bh_key
        report = main.files.gc(grace_seconds=0)  # the main catalog has never heard of the blob
        assert report.deleted == [] and report.kept_for_other_catalogs >= 1
        with main.branches.open("exp") as exp:
            np.testing.assert_array_equal(exp.arrays.get("branch_only"), np.arange(33))
        assert main.branches.delete("exp") is True and main.branches.list() == ["main"]
        assert main.files.gc(grace_seconds=0).deleted == [key]  # no catalog uses it any more


def test_branch_names_and_misuse_get_clear_errors(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as main:
        for bad in ["", "a/b", "a.b", "main", "x" * 65, 3]:
            with pytest.raises(InvalidKey):
                main.branches.create(bad)  # type: ignore[arg-type]
        with pytest.raises(NotFound, match="no branch 'nope'"):
            main.branches.open("nope")
        with pytest.raises(NotFound):
            main.branches.merge("nope")
        with pytest.raises(InvalidKey, match="catalog in use"):
            main.branches.merge("main")
        main.branches.create("exp")
        with main.branches.open("exp") as exp:
            with pytest.raises(InvalidKey, match="in use"):
                exp.branches.delete("exp")
            main.kv["on_main"] = "1"
            main.force_flush()
            exp.branches.merge("main")  # the main catalog's changes into the branch
            assert exp.kv["on_main"] == "1"
        assert main.branches.delete("nope") is False


def test_a_branch_merge_never_gives_out_a_number_main_already_gave(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as main:
        main.arrays.put("x", np.zeros(2))
        main.branches.create("exp")
        main.arrays.put("x", np.full(2, 2.0))  # x@2 on main: others may have read it ...
        main.arrays.delete("x", 2)  # ... and it was deleted: x@2 stays retired
        main.force_flush()
        with main.branches.open("exp") as exp:
            exp.arrays.put("x", np.full(2, 3.0))  # the branch's own x@2
        report = main.branches.merge("exp")
        assert sorted(v.version for v in main.arrays.history("x")) == [1, 3]
        np.testing.assert_array_equal(main.arrays.get("x", 3), np.full(2, 3.0))
        with pytest.raises(NotFound):
            main.arrays.get("x", 2)  # never anything but main's deleted x@2
        assert any("x@2->3" in r for r in report.renumbered)


def test_merging_main_into_a_branch_uses_the_two_writer_rules(config: BucketConfig) -> None:
    with BucketSQLite(config, NO_TIMER) as main:
        main.kv["lr"] = "0.1"
        main.arrays.put("x", np.zeros(2))
        main.branches.create("exp")
        with main.branches.open("exp") as exp:
            exp.kv["lr"] = "0.5"
            exp.arrays.put("x", np.full(2, 5.0))  # the branch's x@2
            main.kv["lr"] = "0.2"
            main.arrays.put("x", np.full(2, 2.0))  # main's x@2, which others read
            main.force_flush()
            exp.branches.merge("main")
            assert exp.kv["lr"] == "0.5"  # the branch's value: its commit is the later one
            np.testing.assert_array_equal(exp.arrays.get("x", 2), np.full(2, 2.0))  # main's numbers hold
            np.testing.assert_array_equal(exp.arrays.get("x", 3), np.full(2, 5.0))
            with pytest.raises(InvalidKey, match="branches merge with main only"):
                main.branches.create("other")
                exp.branches.merge("other")
        main.branches.merge("exp")  # back into main: only what the branch did since it took main in
        assert main.kv["lr"] == "0.5"
        assert sorted(v.version for v in main.arrays.history("x")) == [1, 2, 3]
        np.testing.assert_array_equal(main.arrays.get("x", 2), np.full(2, 2.0))


@pytest.mark.parametrize("how", ["delete", "overwrite"])
def test_a_branch_deleted_under_an_open_writer_takes_no_late_commit(config: BucketConfig, how: str) -> None:
    """A writer that still has a branch open when it is deleted (or created again) is told at its next flush;
    its late commits never reach the new branch's log."""
    from bh_notebook.errors import CatalogDeleted

    with BucketSQLite(config, NO_TIMER) as main:
        for i in range(3):
            main.kv[f"m{i}"] = "main"
            main.force_flush()
        main.branches.create("exp")
        teammate = main.branches.open("exp")
        try:
            teammate.kv["m0"] = "old branch"
            teammate.force_flush()
            if how == "delete":
                main.branches.delete("exp")
                main.branches.create("exp")
            else:
                main.branches.create("exp", overwrite=True)
            teammate.kv["m2"] = "late"
            with pytest.raises(CatalogDeleted, match="deleted"):
                teammate.force_flush()
            assert teammate.kv["m2"] == "late"  # still in memory
        finally:
            teammate._started = False  # abandoned: its stop() would only raise again
        with main.branches.open("exp") as fresh:
            for n in range(4):
                fresh.kv["new"] = str(n)
                fresh.force_flush()
        with main.branches.open("exp") as reader:
            assert (reader.kv["m0"], reader.kv["m2"], reader.kv["new"]) == ("main", "main", "3")
