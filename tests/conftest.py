"""Shared fixtures: real S3 servers on loopback (started once per session) and per-test buckets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bh_notebook.config import ALL_ENV, ENV_HOME, BucketConfig
from bh_notebook.testing.servers import MotoServer, S3Server, SeaweedServer

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
