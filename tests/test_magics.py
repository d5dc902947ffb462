"""The magics, driven through a real IPython InteractiveShell (run_line_magic / run_cell_magic / run_cell)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig
from bh_notebook.testing.servers import ACCESS_KEY, SECRET_KEY

from .conftest import set_bucket_env


@pytest.fixture
def ip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.chdir(tmp_path)
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "bh_notebook")
    yield shell
    shell.run_line_magic("unload_ext", "bh_notebook")
    InteractiveShell.clear_instance()


def magics(ip: InteractiveShell) -> Any:
    return ip._bh_magics  # type: ignore[attr-defined]


def test_put_get_roundtrip_of_every_kind(ip: InteractiveShell, capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    df = pd.DataFrame({"a": range(5), "b": list("abcde")})
    arr = np.arange(12.0).reshape(3, 4)
    report = tmp_path / "report.txt"
    report.write_text("quarterly numbers")
    ip.user_ns.update(df=df, arr=arr, text="hello", raw=b"\x00\x01", report=report)
    ip.run_line_magic("bh_put", "df arr text raw report")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("bh_notebook: using the local store at ")
    assert out[1].startswith("df  frame  v1  5 x 2") and "uploaded" in out[1]
    assert out[2].startswith("arr  array  v1  (3, 4) float64") and "uploaded" in out[2]
    assert out[3].startswith("text  kv  -  5 chars")
    assert out[4].startswith("raw  file  v1  2 B")
    assert out[5].startswith("report  file  v1  report.txt, 17 B")
    for name in ["df", "arr", "text", "raw", "report"]:
        del ip.user_ns[name]
    got = ip.run_line_magic("bh_get", "df")
    pd.testing.assert_frame_equal(got, df)
    pd.testing.assert_frame_equal(ip.user_ns["df"], df)  # bound in the namespace too
    np.testing.assert_array_equal(ip.run_line_magic("bh_get", "arr"), arr)
    assert ip.run_line_magic("bh_get", "text") == "hello"
    assert ip.run_line_magic("bh_get", "raw") == b"\x00\x01"
    assert ip.run_line_magic("bh_get", "report --as r") == b"quarterly numbers" == ip.user_ns["r"]


def test_assignment_form_and_versions(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.user_ns["df"] = pd.DataFrame({"x": [1, 2, 3]})
    ip.run_line_magic("bh_put", "df")
    ip.user_ns["df"] = pd.DataFrame({"x": [4, 5]})
    ip.run_line_magic("bh_put", "df")
    ip.run_line_magic("bh_put", "df")
    out = capsys.readouterr().out
    assert "df  frame  v2" in out and out.rstrip().splitlines()[-1].split("  ")[4] == "unchanged"
    ip.run_cell("old = %bh_get df@1")
    pd.testing.assert_frame_equal(ip.user_ns["old"], pd.DataFrame({"x": [1, 2, 3]}))
    hist = ip.run_line_magic("bh_history", "df")
    assert list(hist["version"]) == [2, 1]


def test_expression_with_as_and_metadata(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.user_ns["df"] = pd.DataFrame({"p": range(100), "q": ["u"] * 100})
    ip.run_line_magic("bh_put", "df.head(10) --as sample --note \"first rows\" --tag stage=raw --tag owner=me")
    out = capsys.readouterr().out
    assert out.startswith("bh_notebook:") and "sample  frame  v1  10 x 2" in out
    ip.run_line_magic("bh_put", "df[df.p > 90] --as tail")
    info = magics(ip).bh.frames.info("sample")
    assert info.metadata == {"note": "first rows", "stage": "raw", "owner": "me"}
    assert magics(ip).bh.frames.info("tail").n_rows == 9
    ls = ip.run_line_magic("bh_ls", "")
    assert list(ls.columns) == ["name", "kind", "version", "size", "shape", "modified", "note"]
    assert set(ls["name"]) == {"sample", "tail"}
    assert ls.loc[ls.name == "sample", "note"].item() == "first rows"
    assert list(ip.run_line_magic("bh_ls", "first")["name"]) == ["sample"]  # substring of the note
    assert list(ip.run_line_magic("bh_ls", "ta*")["name"]) == ["tail"]


def test_partial_gets(ip: InteractiveShell) -> None:
    df = pd.DataFrame({"a": range(10), "b": range(10, 20), "c": ["x"] * 10})
    ip.user_ns["df"] = df
    ip.user_ns["arr"] = np.arange(100).reshape(20, 5)
    ip.run_line_magic("bh_put", "df arr")
    sub = ip.run_line_magic("bh_get", "df --columns a,c --rows 2:5")
    pd.testing.assert_frame_equal(sub, df[["a", "c"]].iloc[2:5])
    rows = ip.run_line_magic("bh_get", "arr --rows 3:6 --as part")
    np.testing.assert_array_equal(rows, np.arange(100).reshape(20, 5)[3:6])
    assert "part" in ip.user_ns


def test_ls_kinds_and_rm(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.user_ns.update(df=pd.DataFrame({"a": [1]}), arr=np.zeros(3), s="v")
    ip.run_line_magic("bh_put", "df arr s")
    ls = ip.run_line_magic("bh_ls", "")
    assert list(ls["name"]) == ["s", "arr", "df"]  # newest first
    assert list(ls["kind"]) == ["kv", "array", "frame"]
    assert list(ip.run_line_magic("bh_ls", "--kind arrays")["name"]) == ["arr"]
    capsys.readouterr()
    ip.run_line_magic("bh_rm", "arr")
    assert capsys.readouterr().out.strip() == "removed array 'arr' version 1"
    ip.user_ns["df"] = pd.DataFrame({"a": [2]})
    ip.run_line_magic("bh_put", "df")
    ip.run_line_magic("bh_rm", "df --version 1")
    assert "removed frame 'df' version 1" in capsys.readouterr().out
    assert list(ip.run_line_magic("bh_history", "df")["version"]) == [2]
    empty = ip.run_line_magic("bh_ls", "--kind arrays")
    assert len(empty) == 0 and list(empty.columns)[0] == "name"


def test_kv_cell_magic(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_cell_magic("bh_kv", "", "# model settings\nlr = 0.01\n\nepochs=10\nname = my run = 2\n")
    assert "3 kv keys saved: lr, epochs, name" in capsys.readouterr().out
    assert ip.run_line_magic("bh_kv", "lr") == "0.01"
    assert ip.run_line_magic("bh_kv", "name") == "my run = 2"
    ip.run_line_magic("bh_kv", "")
    assert capsys.readouterr().out.split() == ["epochs", "lr", "name"]
    ip.run_cell_magic("bh_kv", "query", "SELECT *\nFROM t\n")
    assert ip.run_line_magic("bh_kv", "query") == "SELECT *\nFROM t\n"


def test_kv_malformed_line_stores_nothing(ip: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="line 3: 'oops' is not 'key = value'; nothing was stored"):
        ip.run_cell_magic("bh_kv", "", "a = 1\n\noops\nb = 2\n")
    with pytest.raises(UsageError, match="line 1"):
        ip.run_cell_magic("bh_kv", "", "= no key\n")
    assert magics(ip).bh.kv.keys() == []


@pytest.mark.parametrize("line, message", [
    ("bh_get nosuch", "nothing named 'nosuch'"),
    ("bh_get dff", "did you mean 'df'"),
    ("bh_get df@0", "positive number"),
    ("bh_get df@9", "has no version 9"),
    ("bh_get df --columns nope", "no column 'nope'"),
    ("bh_get arr --columns a", "--columns is for frames"),
    ("bh_get df --rows x", "START:STOP"),
    ("bh_get df --as 1abc", "not a valid variable name"),
    ("bh_put missing_var", "no variable named 'missing_var'"),
    ("bh_put df[0]", "--as NAME"),
    ("bh_put obj", "cannot store 'obj', a object"),
    ("bh_put objdf", "JSON strings"),
    ("bh_put badarr", "pickle"),
    ("bh_put nofile", "is not a file"),
    ("bh_put df --tag novalue", "KEY=VALUE"),
    ("bh_put 1/0 --as x", "ZeroDivisionError"),
    ("bh_put df --as a@b", "separates a name from a version"),
    ("bh_history s", "kv keeps only the latest value"),
    ("bh_connect ftp://nowhere", "unsupported URL scheme"),
    ("bh_connect r2://short", "r2://<account_id>/<bucket>"),
    ("bh_kv nosuchkey", "no KV key 'nosuchkey'"),
])
def test_misuse_is_a_one_line_usage_error(ip: InteractiveShell, line: str, message: str) -> None:
    ip.user_ns.update(df=pd.DataFrame({"a": [1]}), arr=np.zeros(2), obj=object(), objdf=pd.DataFrame({"cfg": [{"lr": 1}]}),
                      badarr=np.array([1, "x"], dtype=object), nofile=Path("does/not/exist.csv"), s="v")
    ip.run_line_magic("bh_put", "df arr s")
    name, _, rest = line.partition(" ")
    with pytest.raises(UsageError) as info:
        ip.run_line_magic(name, rest)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_errors_show_no_traceback(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_cell("%bh_get nothing_here")
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "UsageError: nothing named 'nothing_here'" in text
    assert "Traceback" not in text


def test_help_is_generated(ip: InteractiveShell) -> None:
    for name in ["bh_put", "bh_get", "bh_ls", "bh_history", "bh_rm", "bh_connect", "bh_status", "bh_flush",
                 "bh_gc", "bh_kv"]:
        doc = ip.find_line_magic(name).__doc__
        assert doc and len(doc.strip()) > 20, name
    put_doc = ip.find_line_magic("bh_put").__doc__
    assert "--as NAME" in put_doc and "--note" in put_doc and "--tag K=V" in put_doc
    assert "NAME or NAME@VERSION" in ip.find_line_magic("bh_get").__doc__


def test_autoflush_after_changing_cells(ip: InteractiveShell) -> None:
    ip.run_cell("import pandas as pd\ndf = pd.DataFrame({'a': [1, 2]})")
    ip.run_cell("%bh_put df")
    bh: BucketSQLite = magics(ip).bh
    deadline = time.monotonic() + 10
    while bh.dirty and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not bh.dirty  # flushed in the background, after the cell
    assert bh.bucket.exists(bh.config.key)
    flushes_before = bh.last_flush
    ip.run_cell("x = 1")  # a cell that changed nothing: no flush
    time.sleep(0.3)
    assert bh.last_flush == flushes_before


def test_autoflush_can_be_turned_off(ip: InteractiveShell) -> None:
    ip.run_line_magic("config", "BHMagics.autoflush = False")
    ip.run_cell("s = 'text'")
    ip.run_cell("%bh_put s")
    bh: BucketSQLite = magics(ip).bh
    time.sleep(0.5)
    assert bh.dirty and not bh.bucket.exists(bh.config.key)
    ip.run_line_magic("bh_flush", "")
    assert not bh.dirty


def test_name_prefix(ip: InteractiveShell) -> None:
    ip.run_line_magic("config", "BHMagics.name_prefix = 'alice/'")
    ip.user_ns["arr"] = np.arange(3)
    ip.run_line_magic("bh_put", "arr")
    assert magics(ip).bh.arrays.names() == ["alice/arr"]
    np.testing.assert_array_equal(ip.run_line_magic("bh_get", "arr --as back"), np.arange(3))


def test_status_flush_gc(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("config", "BHMagics.autoflush = False")
    ip.user_ns["arr"] = np.arange(3)
    ip.run_line_magic("bh_put", "arr")
    ip.run_line_magic("bh_status", "")
    out = capsys.readouterr().out
    assert "backend:   local" in out and "dirty" in out and "1 arrays" in out
    ip.run_line_magic("bh_flush", "")
    assert "catalog saved" in capsys.readouterr().out
    ip.run_line_magic("bh_flush", "")
    assert "catalog unchanged: nothing uploaded" in capsys.readouterr().out
    bh = magics(ip).bh
    bh.bucket.put_bytes(b"stray", bh.files.prefix + "f" * 64)
    ip.run_line_magic("bh_gc", "--dry-run --grace 0")
    assert "1 unreferenced blobs: would delete 1" in capsys.readouterr().out
    assert bh.bucket.exists(bh.files.prefix + "f" * 64)
    ip.run_line_magic("bh_gc", "--grace 0")
    assert "deleted 1" in capsys.readouterr().out
    assert not bh.bucket.exists(bh.files.prefix + "f" * 64)


def test_connect_to_s3_and_branches(ip: InteractiveShell, moto_server, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    bucket = moto_server.new_bucket()
    url = f"s3://{bucket}?endpoint_url={moto_server.endpoint_url}&region=us-east-1"
    ip.run_line_magic("bh_connect", url)
    out = capsys.readouterr().out
    assert f"connected to s3://{bucket} at {moto_server.endpoint_url}" in out and SECRET_KEY not in out
    ip.user_ns["arr"] = np.arange(4)
    ip.run_line_magic("bh_put", "arr")
    ip.run_line_magic("bh_connect", f"{url} --branch experiment")
    assert "bucketsqlite/branches/experiment/snap.db" in capsys.readouterr().out
    assert magics(ip).bh.arrays.names() == []  # a separate catalog
    ip.run_line_magic("bh_connect", url)
    np.testing.assert_array_equal(ip.run_line_magic("bh_get", "arr"), np.arange(4))
    ip.run_line_magic("bh_status", "")
    status = capsys.readouterr().out
    assert "backend:   s3" in status and SECRET_KEY not in status and ACCESS_KEY not in status


def test_environment_chooses_the_bucket(ip: InteractiveShell, moto_server, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                                        capsys: pytest.CaptureFixture[str]) -> None:
    bucket = moto_server.new_bucket()
    set_bucket_env(monkeypatch, moto_server, bucket)
    ip.user_ns["s"] = "x"
    ip.run_line_magic("bh_put", "s")
    assert f"connected to s3://{bucket}" in capsys.readouterr().out
    assert magics(ip).bh.config.backend == "s3"


def test_interrupted_put_leaves_store_consistent(ip: InteractiveShell) -> None:
    """A KeyboardInterrupt in the middle of an upload: no half entry, earlier versions intact, store usable."""
    ip.run_line_magic("config", "BHMagics.autoflush = False")
    bh: BucketSQLite = magics(ip).bh
    first = np.arange(1000.0)
    bh.arrays.put("big", first)

    calls = [0]

    def interrupt(n: int) -> None:
        calls[0] += 1
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bh.arrays.put("big", np.ones(5_000_000), progress=interrupt)
    assert calls[0] == 1
    assert [v.version for v in bh.arrays.history("big")] == [1]
    np.testing.assert_array_equal(bh.arrays.get("big"), first)
    assert bh.started
    ip.user_ns["big"] = np.zeros(10)
    ip.run_line_magic("bh_put", "big")
    assert bh.arrays.info("big").version == 2
    bh.force_flush()
    report = bh.files.gc(0)
    assert report.dangling_rows_found == 0


def test_unload_flushes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    shell = InteractiveShell.instance()
    try:
        shell.run_line_magic("load_ext", "bh_notebook")
        shell.run_line_magic("config", "BHMagics.autoflush = False")
        shell.user_ns["s"] = "kept"
        shell.run_line_magic("bh_put", "s")
        config = shell._bh_magics.bh.config  # type: ignore[attr-defined]
        shell.run_line_magic("unload_ext", "bh_notebook")
    finally:
        InteractiveShell.clear_instance()
    with BucketSQLite(config) as bh:
        assert bh.kv["s"] == "kept"


def test_kernel_shutdown_flushes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real kernel, autoflush off: what was put is in the bucket after the kernel is shut down."""
    from jupyter_client.manager import start_new_kernel

    home = tmp_path / "home"
    monkeypatch.setenv("BH_NOTEBOOK_HOME", str(home))
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        reply = kc.execute_interactive(
            "%load_ext bh_notebook\n%config BHMagics.autoflush = False\n"
            "import numpy as np\nlast_words = np.arange(7)\n%bh_put last_words", timeout=60)
        assert reply["content"]["status"] == "ok"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)  # a polite shutdown, as Jupyter's menu does
    with BucketSQLite(BucketConfig.for_local(home)) as bh:
        np.testing.assert_array_equal(bh.arrays.get("last_words"), np.arange(7))


def test_a_merge_with_another_writer_is_reported(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("config", "BHMagics.autoflush = False")
    ip.run_cell_magic("bh_kv", "", "owner = me\n")
    ip.run_line_magic("bh_flush", "")
    bh: BucketSQLite = magics(ip).bh
    with BucketSQLite(bh.config, SnapshotConfig(interval_seconds=0)) as other:  # a teammate's notebook
        other.kv["owner"] = "them"
        other.kv["theirs"] = "1"
    time.sleep(0.01)
    ip.run_cell_magic("bh_kv", "", "owner = me again\n")
    capsys.readouterr()
    ip.run_line_magic("bh_flush", "")
    out = capsys.readouterr().out
    assert "merged another writer's catalog" in out and "kv 'owner': kept ours (written later)" in out
    assert ip.run_line_magic("bh_kv", "theirs") == "1"
