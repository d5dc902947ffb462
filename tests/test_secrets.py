"""A recognisable secret never shows up: not in reprs, status output, widgets, log records or error messages."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig
from bh_notebook.errors import AccessDenied
from bh_notebook.testing.servers import ACCESS_KEY, SECRET_KEY


def test_secret_never_shown(seaweed_server, caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
                            capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, botocore's included
    bucket = seaweed_server.new_bucket()
    config = seaweed_server.config(bucket)
    assert config.secret_access_key == SECRET_KEY
    seen: list[str] = [repr(config), str(config), config.location]
    with BucketSQLite(config, SnapshotConfig(interval_seconds=0)) as bh:
        bh.frames.put("f", pd.DataFrame({"a": [1, 2]}))
        bh.arrays.put("a", np.arange(3))
        bh.force_flush()
        seen += [repr(bh), str(bh.status()), repr(bh.bucket), repr(bh.files), repr(bh.frames), repr(bh.arrays)]
        from bh_notebook.notebook.browser import Browser

        browser = Browser(bh)
        browser.select("a")
        browser.copy_key()
        for widget in [browser, *browser.children, browser.preview, browser.key_box, browser.status]:
            seen.append(str(widget.get_state()))
        seen.append(str(browser.key_box.value))  # the presigned URL is signed, not the secret

    wrong = BucketConfig.for_s3(bucket, endpoint_url=seaweed_server.endpoint_url, region="us-east-1",
                                access_key_id=ACCESS_KEY, secret_access_key="WRONG-" + SECRET_KEY)
    with pytest.raises(AccessDenied) as info:
        BucketSQLite(wrong).start()
    seen += [str(info.value), repr(info.value)]
    seen += [r.getMessage() for r in caplog.records]
    captured = capsys.readouterr()
    seen += [captured.out, captured.err]
    leaks = [text for text in seen if SECRET_KEY in text]
    assert not leaks, leaks[:3]
    assert len(caplog.records) > 10  # the logs were really captured


PLANTED = "PLANTED-s3cr3t/Value+xyz"


def _leaks(texts: list[str], secret: str = PLANTED) -> list[str]:
    from urllib.parse import quote

    forms = {secret, quote(secret, safe=""), quote(secret)}
    return [t for t in texts if any(f in t for f in forms)]


@pytest.mark.parametrize("url", [
    f"s3://bucket?endpoint_url=http://127.0.0.1:9&secret_access_key={PLANTED}",
    f"s3://bucket?endpoint_url=http://127.0.0.1:9&password={PLANTED}&region=us-east-1",
    f"s3://bucket?{PLANTED}=1",
    f"s3://AKID@bucket?x={PLANTED}",
    "s3://AKID:" + PLANTED.replace("/", "%2F").replace("+", "%2B") + "@bucket/a/path",
    "s3://:" + PLANTED.replace("/", "%2F").replace("+", "%2B") + "@bucket",
    f"s3://bucket?endpoint_url=http://AKID:{PLANTED.replace('/', '%2F')}@127.0.0.1:9",
    "r2://AKID:" + PLANTED.replace("/", "%2F").replace("+", "%2B") + "@0123456789abcdef0123456789abcdef",
    "r2://AKID:" + PLANTED.replace("/", "%2F").replace("+", "%2B") + "@not-an-account/bucket",
    f"file:///tmp/x?token={PLANTED}",
    f"ftp://AKID:{PLANTED.replace('/', '%2F')}@host/bucket",
    f"s3://bucket?deadline={PLANTED}",
])
def test_bad_urls_never_echo_a_secret(url: str) -> None:
    from bh_notebook.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        BucketConfig.from_url(url)
    assert not _leaks([str(info.value), repr(info.value)]), str(info.value)


def test_userinfo_becomes_credentials_not_the_bucket_name(seaweed_server,  # type: ignore[no-untyped-def]
                                                           caplog: pytest.LogCaptureFixture) -> None:
    from urllib.parse import quote

    caplog.set_level(logging.DEBUG)
    bucket = seaweed_server.new_bucket()
    url = (f"s3://{ACCESS_KEY}:{quote(SECRET_KEY, safe='')}@{bucket}"
           f"?endpoint_url={seaweed_server.endpoint_url}&region=us-east-1")
    config = BucketConfig.from_url(url)
    assert (config.bucket, config.endpoint_url, config.access_key_id) == (bucket, seaweed_server.endpoint_url,
                                                                           ACCESS_KEY)
    assert config.secret_access_key == SECRET_KEY
    with BucketSQLite(config, SnapshotConfig(interval_seconds=0)) as bh:
        bh.kv["k"] = "v"
        bh.force_flush()
        seen = [repr(config), str(config), config.location, repr(bh), str(bh.status()), repr(bh.bucket)]
    seen += [r.getMessage() for r in caplog.records] + [str(r.args) for r in caplog.records]
    assert len(caplog.records) > 10
    assert not _leaks(seen, SECRET_KEY), _leaks(seen, SECRET_KEY)[:3]


def test_config_and_client_hold_the_secret_wrapped() -> None:
    from bh_notebook.config import Secret
    from bh_notebook.storage.s3 import S3Bucket

    config = BucketConfig.for_s3("bucket", endpoint_url="http://127.0.0.1:9", access_key_id="AKID",
                                 secret_access_key=PLANTED)
    assert isinstance(config.secret_access_key, Secret)
    assert config.secret_access_key.reveal() == PLANTED
    assert not _leaks([repr(config), str(config), repr(config.secret_access_key), f"{config.secret_access_key}",
                       str(vars(config)), repr(dataclasses_astuple(config))])
    client = S3Bucket.from_config(config)
    try:
        creds = client.client._get_credentials()
        frozen = creds.get_frozen_credentials()
        assert frozen.secret_key == PLANTED  # what the signer uses
        assert not _leaks([repr(creds), repr(frozen), str(frozen), repr(client), str(vars(client))])
    finally:
        client.close()


def dataclasses_astuple(config: BucketConfig) -> tuple[object, ...]:
    import dataclasses

    return tuple(getattr(config, f.name) for f in dataclasses.fields(config))


def test_verbose_traceback_of_a_failing_client_build_shows_no_secret(
        tmp_path, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
        capsys: pytest.CaptureFixture[str]) -> None:
    """``%xmode Verbose`` prints every frame's locals; building the S3 client fails deep inside botocore."""
    import botocore.client
    from IPython.core.interactiveshell import InteractiveShell

    def broken(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("client construction failed")

    monkeypatch.setattr(botocore.client.ClientCreator, "_get_client_args", broken)
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("BUCKETHEAD_BUCKET__NAME", "bucket")
    monkeypatch.setenv("BUCKETHEAD_BUCKET__ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("BUCKETHEAD_BUCKET__ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("BUCKETHEAD_BUCKET__SECRET_ACCESS_KEY", PLANTED)
    shell = InteractiveShell.instance()
    try:
        shell.run_line_magic("load_ext", "bh_notebook")
        shell.run_line_magic("xmode", "Verbose")
        shell.run_line_magic("colors", "nocolor")
        capsys.readouterr()
        shell.run_cell("%bh_connect")
        shell.run_cell("from bh_notebook.storage.s3 import S3Bucket\n"
                       "from bh_notebook import BucketConfig\n"
                       "S3Bucket.from_config(BucketConfig.from_env())")
        out = capsys.readouterr()
        text = out.out + out.err
        assert text.count("RuntimeError: client construction failed") == 2  # both cells printed a traceback
        assert "_get_client_args" in text and "secret_access_key" in text  # the frames were printed
        assert not _leaks([text]), [line for line in text.splitlines() if _leaks([line])][:5]
    finally:
        shell.run_line_magic("unload_ext", "bh_notebook")
        InteractiveShell.clear_instance()
