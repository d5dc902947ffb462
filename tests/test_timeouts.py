"""Timeouts you can reason about: a dead endpoint fails after the deadline, a slow transfer that keeps moving is
never cut off, Ctrl-C stops a hung request at once. Faults come from a proxy on loopback in front of moto."""

from __future__ import annotations

import dataclasses
import signal
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from IPython.core.interactiveshell import InteractiveShell

from bh_notebook import BucketConfig
from bh_notebook.config import DEFAULT_DEADLINE, DEFAULT_READ_TIMEOUT
from bh_notebook.errors import ConfigError, EndpointUnreachable
from bh_notebook.storage.s3 import S3Bucket
from bh_notebook.testing.faults import FaultProxy
from bh_notebook.testing.servers import ACCESS_KEY, SECRET_KEY

MiB = 1024 * 1024


@pytest.fixture
def proxy(moto_server: Any) -> Iterator[FaultProxy]:
    host, port = moto_server.endpoint_url.removeprefix("http://").split(":")
    with FaultProxy(host, int(port)) as p:
        yield p


def _client(proxy: FaultProxy, bucket: str, **kwargs: Any) -> S3Bucket:
    options: dict[str, Any] = dict(endpoint_url=proxy.endpoint_url, region="us-east-1", access_key_id=ACCESS_KEY,
                                   secret_access_key=SECRET_KEY, connect_timeout=1.0)
    options.update(kwargs)
    return S3Bucket(bucket, **options)


def test_defaults_fail_a_dead_endpoint_well_under_a_minute() -> None:
    config = BucketConfig.for_s3("b", endpoint_url="http://127.0.0.1:9")
    # One attempt waits at most read_timeout; no new attempt starts after the deadline.
    assert DEFAULT_DEADLINE + DEFAULT_READ_TIMEOUT + config.connect_timeout <= 40
    client = S3Bucket.from_config(config)
    try:
        assert client.client.meta.config.read_timeout == config.read_timeout == DEFAULT_READ_TIMEOUT
        assert client.client.meta.config.connect_timeout == config.connect_timeout
        assert client.deadline == config.deadline == DEFAULT_DEADLINE
    finally:
        client.close()


def test_timeouts_from_the_url_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    c = BucketConfig.from_url("s3://b?endpoint_url=http://h:1&connect_timeout=2&read_timeout=3&deadline=4"
                              "&max_attempts=7")
    assert (c.connect_timeout, c.read_timeout, c.deadline, c.max_attempts) == (2.0, 3.0, 4.0, 7)
    monkeypatch.setenv("BUCKETHEAD_BUCKET__NAME", "b")
    monkeypatch.setenv("BH_NOTEBOOK_DEADLINE", "90")
    monkeypatch.setenv("BH_NOTEBOOK_READ_TIMEOUT", "30")
    e = BucketConfig.from_env()
    assert (e.read_timeout, e.deadline) == (30.0, 90.0)
    for bad in ("deadline=0", "read_timeout=-1", "connect_timeout=x", "max_attempts=0"):
        with pytest.raises(ConfigError):
            BucketConfig.from_url(f"s3://b?{bad}")


def test_a_dead_endpoint_is_retried_only_until_the_deadline(proxy: FaultProxy, moto_server: Any) -> None:
    bucket = moto_server.new_bucket()
    proxy.set("hang")
    client = _client(proxy, bucket, read_timeout=0.5, deadline=1.0, max_attempts=50)
    try:
        with pytest.raises(EndpointUnreachable) as info:
            client.head("k")
    finally:
        proxy.set("pass")
        client.close()
    # Every attempt waits read_timeout (0.5 s); none starts once 1 s has passed: at most 3, not 50.
    assert 1 <= proxy.connections <= 3
    assert "ReadTimeoutError" in str(info.value) and info.value.status is None


def test_a_slow_transfer_that_keeps_moving_is_not_cut_off(proxy: FaultProxy, moto_server: Any) -> None:
    """Each piece arrives within read_timeout; the whole takes several deadlines: it completes."""
    bucket = moto_server.new_bucket()
    data = np.random.default_rng(1).bytes(11 * MiB)
    client = _client(proxy, bucket, read_timeout=2.0, deadline=0.3, max_attempts=3, part_size=5 * MiB,
                     multipart_threshold=6 * MiB)
    try:
        proxy.set("trickle", trickle_bytes=256 * 1024, delay=0.05)  # ~5 MiB/s a connection: a part takes ~1 s
        client.put_bytes(data, "slow")
        buf = bytearray(len(data))
        client.get_into("slow", buf)
        assert bytes(buf) == data
        assert client.get_bytes("slow") == data
    finally:
        proxy.set("pass")
        client.close()


def test_a_read_that_keeps_breaking_but_moves_is_finished(proxy: FaultProxy, moto_server: Any) -> None:
    """Attempts that moved bytes do not count against max_attempts: 6+ breaks with max_attempts=3 still finish.
    (3, not 2: on a loaded machine a reset can drop bytes the client had not read yet, so one attempt in between
    may move nothing.)"""
    bucket = moto_server.new_bucket()
    data = np.random.default_rng(2).bytes(4 * MiB)
    client = _client(proxy, bucket, read_timeout=0.5, deadline=10.0, max_attempts=3)
    try:
        client.put_bytes(data, "breaks")
        proxy.set("reset", reset_after=600 * 1024)
        assert client.get_range("breaks", 0) == data
        assert proxy.faults >= 6
    finally:
        proxy.set("pass")
        client.close()


def _interrupt_when_connected(proxy: FaultProxy, connections: int) -> threading.Thread:
    main = threading.main_thread().ident
    assert main is not None

    def run() -> None:
        while proxy.connections < connections:
            threading.Event().wait(0.01)
        threading.Event().wait(0.2)  # let the request reach its blocking read
        signal.pthread_kill(main, signal.SIGINT)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["head", "parallel-get"])
def test_ctrl_c_stops_a_hung_request_at_once(proxy: FaultProxy, moto_server: Any, how: str) -> None:
    """With timeouts of an hour, only the interrupt can end these calls (the test's timeout catches a hang)."""
    bucket = moto_server.new_bucket()
    client = _client(proxy, bucket, read_timeout=3600.0, deadline=3600.0, part_size=MiB)
    proxy.set("hang")
    # Python's own Ctrl-C handler, as a notebook kernel and a terminal have (a pytest-xdist worker ignores SIGINT).
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    t = _interrupt_when_connected(proxy, 1 if how == "head" else 3)
    try:
        with pytest.raises(KeyboardInterrupt):
            if how == "head":
                client.head("k")
            else:
                client.get_into("k", bytearray(4 * MiB))
    finally:
        t.join()
        signal.signal(signal.SIGINT, handler)
        proxy.set("pass")  # closes the hung connections: the helper threads end
        client.close()


def test_the_magics_timeouts_trait_reaches_the_client(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                                     moto_server: Any) -> None:
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    shell = InteractiveShell.instance()
    try:
        shell.run_line_magic("load_ext", "bh_notebook")
        shell.run_line_magic("config", "BHMagics.timeouts = {'deadline': 7, 'read_timeout': 3}")
        config = moto_server.config(moto_server.new_bucket())
        url = (f"s3://{ACCESS_KEY}:{SECRET_KEY}@{config.bucket}?endpoint_url={config.endpoint_url}"
               "&region=us-east-1")
        bh = shell.run_line_magic("bh_connect", url)
        assert (bh.config.deadline, bh.config.read_timeout) == (7.0, 3.0)
        assert bh.bucket.deadline == 7.0
        assert bh.bucket.client.meta.config.read_timeout == 3.0
        assert dataclasses.replace(bh.config, deadline=DEFAULT_DEADLINE, read_timeout=DEFAULT_READ_TIMEOUT) == config
    finally:
        shell.run_line_magic("unload_ext", "bh_notebook")
        InteractiveShell.clear_instance()
