"""The bucket explains itself to a generic S3 tool: blobs carry a Content-Type and user metadata naming the entry
they were first stored for; keys stay content-addressed."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest

from bh_notebook import BucketSQLite, SnapshotConfig


@pytest.mark.parametrize("server_name", ["moto_server", "seaweed_server"])
def test_blobs_carry_content_type_and_the_entry_they_were_stored_for(
        request: pytest.FixtureRequest, server_name: str, tmp_path: Path) -> None:
    server: Any = request.getfixturevalue(server_name)
    bucket = server.new_bucket()
    report = tmp_path / "report.csv"
    report.write_text("a,b\n1,2\n")
    with BucketSQLite(server.config(bucket),
                      SnapshotConfig(interval_seconds=0)) as bh:
        frame = bh.frames.put("sales/données 2024", pd.DataFrame({"a": [1, 2]}))
        array = bh.arrays.put("weights", np.arange(5.0))
        csv = bh.named_files.put("report", report)
        raw = bh.named_files.put("blob", b"\x00\x01")
        keys = {"frame": frame.bh_key, "array": array.bh_key, "csv": csv.bh_key, "raw": raw.bh_key}
        assert keys["raw"] == hashlib.sha256(b"\x00\x01").hexdigest()
    s3 = server.client()  # a plain boto3 client, as any S3 tool would use
    heads = {what: s3.head_object(Bucket=bucket, Key=f"files/{key}") for what, key in keys.items()}
    expect = {
        "frame": ("application/vnd.apache.parquet", "frame", "sales/données 2024"),
        "array": ("application/x-npy", "array", "weights"),
        "csv": ("text/csv", "file", "report"),
        "raw": ("application/octet-stream", "file", "blob"),
    }
    for what, (content_type, kind, name) in expect.items():
        head = heads[what]
        assert head["ContentType"] == content_type, what
        assert head["Metadata"]["bh-kind"] == kind, what
        assert unquote(head["Metadata"]["bh-name"]) == name, what
        assert head["Metadata"]["bh-name"].isascii()


def test_a_multipart_blob_carries_them_too(moto_server: Any) -> None:
    from bh_notebook.storage.s3 import S3Bucket
    from bh_notebook.testing.servers import ACCESS_KEY, SECRET_KEY

    bucket = moto_server.new_bucket()
    client = S3Bucket(bucket, endpoint_url=moto_server.endpoint_url, region="us-east-1", access_key_id=ACCESS_KEY,
                      secret_access_key=SECRET_KEY, multipart_threshold=5 * 1024 * 1024, part_size=5 * 1024 * 1024)
    try:
        client.put_bytes(bytes(11 * 1024 * 1024), "big", content_type="application/x-npy",
                         metadata={"bh-kind": "array", "bh-name": "big"})
    finally:
        client.close()
    head = moto_server.client().head_object(Bucket=bucket, Key="big")
    assert head["ContentType"] == "application/x-npy"
    assert head["Metadata"] == {"bh-kind": "array", "bh-name": "big"}
    assert head["ETag"].endswith('-3"')  # it was a multipart upload


def test_the_local_backend_takes_and_ignores_them(tmp_path: Path) -> None:
    from bh_notebook.storage.local import LocalBucket

    bucket = LocalBucket(tmp_path / "store")
    bucket.put_bytes(b"x", "k", content_type="text/plain", metadata={"bh-kind": "file"})
    assert [info.key for info in bucket.list_info()] == ["k"]  # no sidecar objects
