"""Storage backends: the BucketClient core, S3Bucket (boto3) and LocalBucket (a directory)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .bucket import BucketClient, ChainReader, ObjectInfo, check_key
from .local import LocalBucket

if TYPE_CHECKING:
    from ..config import BucketConfig


def open_bucket(config: BucketConfig) -> BucketClient:
    """The BucketClient a config names: LocalBucket for ``local_path``, else S3Bucket."""
    if config.local_path is not None:
        return LocalBucket(config.local_path)
    from .s3 import S3Bucket  # boto3 is imported only when an S3 bucket is used

    return S3Bucket.from_config(config)


__all__ = ["BucketClient", "ChainReader", "LocalBucket", "ObjectInfo", "check_key", "open_bucket"]
