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
