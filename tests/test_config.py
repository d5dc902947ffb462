"""BucketConfig: constructors, URL and environment parsing, and secrets kept out of reprs."""

from __future__ import annotations

from pathlib import Path

import pytest

from bh_notebook import BucketConfig, BucketSQLite
from bh_notebook.errors import ConfigError

ACCOUNT = "0123456789abcdef0123456789abcdef"
SECRET = "SUPER-SECRET-VALUE-xyz"
KEY_ID = "AKIDVISIBLEONLYTOBOTO"


def test_defaults() -> None:
    c = BucketConfig(bucket="b")
    assert (c.key, c.region, c.files_prefix, c.endpoint_url, c.local_path) == (
        "bucketsqlite/snap.db", "auto", "files/", None, None)
    assert c.backend == "s3"


def test_for_r2() -> None:
    c = BucketConfig.for_r2(ACCOUNT, "data", KEY_ID, SECRET)
    assert c.endpoint_url == f"https://{ACCOUNT}.r2.cloudflarestorage.com"
    assert c.region == "auto" and c.bucket == "data"
    assert (c.access_key_id, c.secret_access_key) == (KEY_ID, SECRET)
    with pytest.raises(ConfigError, match="account id"):
        BucketConfig.for_r2("not-an-account", "data")


def test_for_local(tmp_path: Path) -> None:
    c = BucketConfig.for_local(tmp_path / "store")
    assert c.backend == "local" and c.local_path == tmp_path / "store" and c.bucket == "store"


def test_from_url_variants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    local = BucketConfig.from_url(f"file://{tmp_path}/x")
    assert local.local_path == tmp_path / "x"
    s3 = BucketConfig.from_url("s3://bkt?endpoint_url=http://127.0.0.1:9000&region=eu-west-1&key=team/snap.db")
    assert (s3.bucket, s3.endpoint_url, s3.region, s3.key) == ("bkt", "http://127.0.0.1:9000", "eu-west-1",
                                                               "team/snap.db")
    assert (s3.access_key_id, s3.secret_access_key) == ("env-key", "env-secret")
    r2 = BucketConfig.from_url(f"r2://{ACCOUNT}/bucket", access_key_id="arg-key", secret_access_key="arg-secret")
    assert r2.endpoint_url.startswith(f"https://{ACCOUNT}.")  # type: ignore[union-attr]
    assert (r2.access_key_id, r2.secret_access_key) == ("arg-key", "arg-secret")


@pytest.mark.parametrize("url, match", [
    ("", "expected a URL"),
    ("ftp://host/x", "unsupported URL scheme"),
    ("s3://", "no bucket"),
    ("s3://b/some/path", "path after the bucket"),
    ("s3://b?colour=red", "unknown option"),
    ("r2://onlyaccount", "r2://<account_id>/<bucket>"),
    ("file://remotehost/x", "names a host"),
])
def test_from_url_errors(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        BucketConfig.from_url(url)


def test_from_env_none_set_gives_local_home(tmp_path: Path) -> None:
    c = BucketConfig.from_env({"BH_NOTEBOOK_HOME": str(tmp_path / "home")})
    assert c.backend == "local" and c.local_path == tmp_path / "home"
    default = BucketConfig.from_env({})
    assert default.local_path == Path.home() / ".bh_notebook"


def test_from_env_reads_buckethead_names() -> None:
    env = {
        "BUCKETHEAD_BUCKET__NAME": "team",
        "BUCKETHEAD_BUCKET__ACCESS_KEY_ID": KEY_ID,
        "BUCKETHEAD_BUCKET__SECRET_ACCESS_KEY": SECRET,
        "BUCKETHEAD_CLOUDFLARE__ACCOUNT_ID": ACCOUNT,
        "BUCKETHEAD_SNAPSHOT__KEY": "nb/catalog.db",
    }
    c = BucketConfig.from_env(env)
    assert c.bucket == "team" and c.key == "nb/catalog.db" and c.region == "auto"
    assert c.endpoint_url == f"https://{ACCOUNT}.r2.cloudflarestorage.com"
    assert (c.access_key_id, c.secret_access_key) == (KEY_ID, SECRET)
    c2 = BucketConfig.from_env({"BUCKETHEAD_BUCKET__NAME": "m", "BUCKETHEAD_BUCKET__ENDPOINT_URL": "http://minio:9000",
                                "BUCKETHEAD_BUCKET__REGION": "us-east-1"})
    assert (c2.endpoint_url, c2.region) == ("http://minio:9000", "us-east-1")


def test_from_env_without_bucket_name_says_which() -> None:
    with pytest.raises(ConfigError, match="BUCKETHEAD_BUCKET__NAME"):
        BucketConfig.from_env({"BUCKETHEAD_BUCKET__ACCESS_KEY_ID": "k"})


def test_bad_fields() -> None:
    with pytest.raises(ConfigError, match="bucket"):
        BucketConfig()
    with pytest.raises(ConfigError, match="snapshot key"):
        BucketConfig(bucket="b", key="dir/")
    assert BucketConfig(bucket="b", files_prefix="blobs").files_prefix == "blobs/"


def test_no_secret_in_repr_str_or_status(moto_server) -> None:  # type: ignore[no-untyped-def]
    c = BucketConfig.for_r2(ACCOUNT, "data", KEY_ID, SECRET)
    for text in (repr(c), str(c), c.location, f"{c}", f"{c!r}"):
        assert SECRET not in text and KEY_ID not in text
    bucket = moto_server.new_bucket()
    live = BucketConfig.for_s3(bucket, endpoint_url=moto_server.endpoint_url, region="us-east-1",
                               access_key_id=KEY_ID, secret_access_key=SECRET)
    with BucketSQLite(live) as bh:
        shown = repr(bh) + str(bh.status()) + repr(bh.bucket) + repr(bh.config) + repr(bh.files) + repr(bh.kv)
    assert SECRET not in shown and KEY_ID not in shown
