"""The catalog's threads: a flush that merges another writer's catalog never breaks the notebook thread's work.

Shared-cache SQLite answers "database table is locked" at once while another connection of the process holds a
write transaction, so puts and ``dirty`` checks made while the flusher merged used to fail with a raw
``sqlite3.OperationalError``, and a DETACH that met such a check could leave the other catalog attached, failing
every later flush of the process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig
from bh_notebook.connection import CatalogConnection, connect_catalog
from bh_notebook.errors import CatalogBusy

NO_TIMER = SnapshotConfig(interval_seconds=0)


@pytest.mark.parametrize("backend_name", ["local", "moto"])
def test_puts_and_dirty_checks_during_merges(make_config: Callable[..., BucketConfig], backend_name: str) -> None:
    config = make_config(backend_name)
    with BucketSQLite(config, NO_TIMER) as seed:
        seed.kv["seed"] = "0"
    a = BucketSQLite(config, NO_TIMER).start()
    b = BucketSQLite(config, NO_TIMER).start()
    errors: list[BaseException] = []
    stop = threading.Event()
    written: list[str] = []
    try:
        def notebook_thread() -> None:
            i = 0
            while not stop.is_set():
                try:
                    a.kv[f"a{i}"] = "x"
                    written.append(f"a{i}")
                    a.dirty  # noqa: B018 - what the magics ask after every cell
                    if i % 50 == 0:
                        a.arrays.put(f"arr{i}", np.arange(i + 1))
                except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                    errors.append(exc)
                i += 1

        worker = threading.Thread(target=notebook_thread)
        worker.start()
        try:
            for round_ in range(4):
                b.kv.update({f"b{round_}-{j}": "y" * 40 for j in range(3000)})
                b.force_flush()
                a.force_flush()  # loses the race and merges b's 3000 new keys while the thread writes
        finally:
            stop.set()
            worker.join()
        assert errors == []
        assert a.last_merge is not None
        a.force_flush()  # nothing is left attached: the next flushes work
    finally:
        a.stop()
        b.stop()
    with BucketSQLite(config, NO_TIMER) as reader:
        keys = set(reader.kv.keys())
        assert set(written) <= keys
        assert {f"b3-{j}" for j in range(3000)} <= keys


def test_a_lock_held_too_long_is_a_named_error() -> None:
    uri = "file:bh-threads-test?mode=memory&cache=shared"
    holder = connect_catalog(uri, check_same_thread=False)
    waiter = connect_catalog(uri)
    try:
        holder.execute("CREATE TABLE t (x)")
        holder.commit()
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO t VALUES (1)")
        waiter.wait_seconds = 0.2
        with pytest.raises(CatalogBusy, match="try again"):
            waiter.execute("INSERT INTO t VALUES (2)")
        holder.commit()
        waiter.execute("INSERT INTO t VALUES (2)")  # the lock is gone: the same statement works
        waiter.commit()
        assert sorted(r[0] for r in waiter.execute("SELECT x FROM t")) == [1, 2]
    finally:
        holder.close()
        waiter.close()


def test_catalog_connections_are_catalog_connections(make_config: Callable[..., BucketConfig]) -> None:
    with BucketSQLite(make_config("local"), NO_TIMER) as bh:
        assert isinstance(bh.connection, CatalogConnection)
        assert isinstance(bh.connect(), CatalogConnection)
