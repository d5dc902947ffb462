"""Shared fixtures: real S3 servers on loopback (started once per session) and per-test buckets."""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bh_notebook import BucketSQLite, SnapshotConfig
from bh_notebook.config import ALL_ENV, ENV_HOME, BucketConfig
from bh_notebook.storage import open_bucket
from bh_notebook.testing.counting import CountingBucket
from bh_notebook.testing.servers import ACCESS_KEY, SECRET_KEY, MotoServer, S3Server, SeaweedServer

BACKENDS = ["local", "moto", "seaweedfs"]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test sees the developer's bucket settings or writes to their home store."""
    for name in ALL_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(ENV_HOME, str(tmp_path_factory.mktemp("bh-home")))


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def seaweed_server() -> Iterator[S3Server]:
    with SeaweedServer() as server:
        yield server


def _server(request: pytest.FixtureRequest, name: str) -> S3Server:
    return request.getfixturevalue("moto_server" if name == "moto" else "seaweed_server")  # type: ignore[no-any-return]


@pytest.fixture
def make_config(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., BucketConfig]:
    """``make_config(backend, **kw)``: a BucketConfig on a fresh bucket of that backend."""

    def make(backend: str, **kwargs: object) -> BucketConfig:
        if backend == "local":
            root = tmp_path / f"store-{len(list(tmp_path.iterdir()))}"
            return BucketConfig.for_local(root, **kwargs)
        server = _server(request, backend)
        return server.config(server.new_bucket(), **kwargs)  # type: ignore[no-any-return]

    return make


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend in turn: the embedded local directory, moto, SeaweedFS."""
    return str(request.param)


@pytest.fixture
def config(backend: str, make_config: Callable[..., BucketConfig]) -> BucketConfig:
    """A fresh bucket on the current backend."""
    return make_config(backend)


NO_TIMER = SnapshotConfig(interval_seconds=0)


@pytest.fixture
def counted(config: BucketConfig) -> Iterator[tuple[BucketSQLite, CountingBucket]]:
    """A started store on the current backend whose bucket counts requests and bytes."""
    counting = CountingBucket(open_bucket(config))
    with BucketSQLite(config, NO_TIMER, bucket_client=counting) as bh:
        yield bh, counting


@pytest.fixture
def bh(counted: tuple[BucketSQLite, CountingBucket]) -> BucketSQLite:
    """A started store on the current backend."""
    return counted[0]


@pytest.fixture(params=["local", "moto"])
def hyp_bh(request: pytest.FixtureRequest, make_config: Callable[..., BucketConfig]) -> Iterator[BucketSQLite]:
    """A store for property tests: the local backend and moto (SeaweedFS is slower per request)."""
    with BucketSQLite(make_config(request.param), NO_TIMER) as db:
        yield db


def set_bucket_env(monkeypatch: pytest.MonkeyPatch, server: S3Server, bucket: str) -> None:
    """Point BucketConfig.from_env() at ``bucket`` on ``server``, as a user's environment would."""
    monkeypatch.setenv("BUCKETHEAD_BUCKET__NAME", bucket)
    monkeypatch.setenv("BUCKETHEAD_BUCKET__ENDPOINT_URL", server.endpoint_url)
    monkeypatch.setenv("BUCKETHEAD_BUCKET__REGION", "us-east-1")
    monkeypatch.setenv("BUCKETHEAD_BUCKET__ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("BUCKETHEAD_BUCKET__SECRET_ACCESS_KEY", SECRET_KEY)


def open_shell(ipython_dir: Path) -> Any:
    """The IPython InteractiveShell singleton for a test: its own IPYTHONDIR, command history kept in memory.

    IPython saves history to a SQLite file and registers an exit hook that writes to it; a file in a test's
    temporary directory may be gone by then (temporary directories are pruned), which printed a traceback per
    shell when the interpreter exited. ``close_shell`` ends it at teardown instead.
    """
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    os.environ["IPYTHONDIR"] = str(ipython_dir)
    config = Config()
    config.HistoryManager.enabled = False
    return InteractiveShell.instance(config=config)


def close_shell(shell: Any) -> None:
    """End a shell from ``open_shell`` now, as interpreter exit would, and forget it."""
    from IPython.core.interactiveshell import InteractiveShell

    atexit.unregister(shell.atexit_operations)
    shell.atexit_operations()
    shell.cleanup()  # gives sys.modules["__main__"] back (the shell had put its own namespace there)
    InteractiveShell.clear_instance()


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A real InteractiveShell (history in memory), ended at teardown."""
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    sh = open_shell(tmp_path / "ipython")
    try:
        yield sh
    finally:
        close_shell(sh)
