"""The magics, driven through a real IPython InteractiveShell (run_line_magic / run_cell_magic / run_cell)."""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig
from bh_notebook.testing.servers import ACCESS_KEY, SECRET_KEY

from .conftest import set_bucket_env


@pytest.fixture
def ip(shell: InteractiveShell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    monkeypatch.chdir(tmp_path)
    shell.run_line_magic("load_ext", "bh_notebook")
    yield shell
    shell.run_line_magic("unload_ext", "bh_notebook")


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


def test_put_append_adds_rows_to_a_frame(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.user_ns["events"] = pd.DataFrame({"a": range(5), "b": list("abcde")})
    ip.run_line_magic("bh_put", "events --append")  # a new name: stored as it is
    ip.user_ns["today"] = pd.DataFrame({"a": [5, 6], "b": ["f", "g"]})
    capsys.readouterr()
    ip.run_line_magic("bh_put", "today --as events --append")
    out = capsys.readouterr().out
    assert out.startswith("events  frame  v2  7 x 2 in 2 parts") and "uploaded" in out
    got = ip.run_line_magic("bh_get", "events")
    pd.testing.assert_frame_equal(got, pd.DataFrame({"a": range(7), "b": list("abcdefg")}))
    ip.user_ns["wrong"] = pd.DataFrame({"a": [1.5]})
    with pytest.raises(UsageError, match="cannot append to frame 'events'@2: missing columns"):
        ip.run_line_magic("bh_put", "wrong --as events --append")
    ip.user_ns["arr"] = np.arange(3)
    with pytest.raises(UsageError, match="--append adds rows to a frame"):
        ip.run_line_magic("bh_put", "arr --append")


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
    assert list(magics(ip).bh.kv.keys()) == []


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
                 "bh_gc", "bh_kv", "bh_branch"]:
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
    with pytest.raises(UsageError, match="--grace takes a number of seconds >= 0"):
        ip.run_line_magic("bh_gc", "--grace -5")


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
    out = capsys.readouterr().out
    assert "created branch 'experiment' from the main catalog" in out
    assert "bucketsqlite/snap.db.branch.experiment, branch 'experiment'" in out
    assert magics(ip).bh.arrays.names() == ["arr"]  # the branch starts from the main catalog
    ip.user_ns["trial"] = np.ones(3)
    ip.run_line_magic("bh_put", "trial")
    ip.run_line_magic("bh_branch", "list")
    assert capsys.readouterr().out.splitlines()[-2:] == ["  main", "* experiment"]
    ip.run_line_magic("bh_connect", url)
    np.testing.assert_array_equal(ip.run_line_magic("bh_get", "arr"), np.arange(4))
    assert magics(ip).bh.arrays.names() == ["arr"]  # the branch's work stays on the branch ...
    ip.run_line_magic("bh_branch", "merge experiment")
    assert "merged branch 'experiment' into 'main'" in capsys.readouterr().out
    np.testing.assert_array_equal(ip.run_line_magic("bh_get", "trial"), np.ones(3))  # ... until it is merged
    with pytest.raises(UsageError, match="no branch 'nope'; %bh_branch create nope"):
        ip.run_line_magic("bh_branch", "switch nope")
    with pytest.raises(UsageError, match="branch names are 1-64 letters"):
        ip.run_line_magic("bh_branch", "create a/b")
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


def test_unload_flushes(shell: InteractiveShell) -> None:
    shell.run_line_magic("load_ext", "bh_notebook")
    shell.run_line_magic("config", "BHMagics.autoflush = False")
    shell.user_ns["s"] = "kept"
    shell.run_line_magic("bh_put", "s")
    config = shell._bh_magics.bh.config  # type: ignore[attr-defined]
    shell.run_line_magic("unload_ext", "bh_notebook")
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
    ip.run_cell_magic("bh_kv", "", "owner = me again\n")
    capsys.readouterr()
    ip.run_line_magic("bh_flush", "")
    captured = capsys.readouterr()
    out = captured.out
    assert "took in 1 commit of other writers" in out and "kv 'owner': kept ours over their value (committed later)" in out
    assert (out + captured.err).count("took in 1 commit of other writers") == 1  # once, not also as a log line
    assert ip.run_line_magic("bh_kv", "theirs") == "1"


def test_assignment_binds_only_its_target(ip: InteractiveShell) -> None:
    stored = pd.DataFrame({"x": [1, 2, 3], "y": [4, 5, 6]})
    ip.user_ns["df"] = stored
    ip.run_line_magic("bh_put", "df")
    live = pd.DataFrame({"x": [99]})  # unsaved work under the same name
    ip.user_ns["df"] = live
    for cell, target in [("x = %bh_get df@1", "x"), ("cols = %bh_get df --columns y", "cols"),
                         ("rows = %bh_get df --rows -2:", "rows"), ("if True:\n    inner = %bh_get df", "inner"),
                         ("d = {}\nd['k'] = %bh_get df", None), ("%time timed = %bh_get df", "timed")]:
        result = ip.run_cell(cell)
        assert result.success, (cell, result.error_in_exec)
        assert ip.user_ns["df"] is live, cell  # the live frame is untouched
        if target:
            assert target in ip.user_ns
    pd.testing.assert_frame_equal(ip.user_ns["cols"], stored[["y"]])
    pd.testing.assert_frame_equal(ip.user_ns["rows"], stored.iloc[-2:])
    assert ip.run_cell("x = %bh_get df --as also").success  # an explicit --as is bound too
    pd.testing.assert_frame_equal(ip.user_ns["also"], stored)
    assert ip.user_ns["df"] is live
    assert ip.run_cell("%bh_get df").success  # the statement form binds the entry's name
    pd.testing.assert_frame_equal(ip.user_ns["df"], stored)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab '\"\\#-=\t"), max_size=25))
def test_magic_lines_split_like_a_shell(line: str) -> None:
    from bh_notebook.notebook.magics import _unquote, _words

    try:
        expected = shlex.split(line)
    except ValueError:
        with pytest.raises(UsageError):
            [_unquote(w) for w in _words(line)]
        return
    assert [_unquote(w) for w in _words(line)] == expected


def test_quotes_follow_shell_rules(ip: InteractiveShell, tmp_path: Path) -> None:
    df = pd.DataFrame({"c": ["x y", "z"], "n": [1, 2]})
    ip.user_ns["df"] = df
    ip.run_line_magic("bh_put", "df --as 'my frame' --note \"first rows\" --tag owner='a b' --tag stage=raw")
    bh = magics(ip).bh
    assert bh.frames.info("my frame").metadata == {"note": "first rows", "owner": "a b", "stage": "raw"}
    ip.run_line_magic("bh_put", "df[df.c == \"x y\"] --as sub")  # an expression keeps its quotes
    assert bh.frames.info("sub").n_rows == 1
    pd.testing.assert_frame_equal(ip.run_line_magic("bh_get", "'my frame' --as 'back'"), df)
    assert "back" in ip.user_ns
    with pytest.raises(UsageError, match="unclosed"):
        ip.run_line_magic("bh_get", "'my frame")
    with pytest.raises(UsageError, match="--branch needs a name"):
        ip.run_line_magic("bh_connect", "--branch ''")
    spaced = tmp_path / "x y"
    ip.run_line_magic("bh_connect", f"'{spaced}'")
    assert magics(ip).bh.config.local_path == spaced
    assert not (tmp_path / f"'{spaced}'").exists() and not Path(f"'{spaced}'").exists()


def test_negative_row_slices(ip: InteractiveShell) -> None:
    arr = np.arange(50).reshape(10, 5)
    df = pd.DataFrame({"a": range(10)})
    ip.user_ns.update(arr=arr, df=df)
    ip.run_line_magic("bh_put", "arr df")
    for spec, sl in [("-3:", slice(-3, None)), ("-3:-1", slice(-3, -1)), (":-8", slice(None, -8)),
                     ("2:-2", slice(2, -2))]:
        np.testing.assert_array_equal(ip.run_line_magic("bh_get", f"arr --rows {spec} --as part"), arr[sl])
        pd.testing.assert_frame_equal(ip.run_line_magic("bh_get", f"df --rows {spec} --as part"), df.iloc[sl])


def test_kv_cell_comments_and_quotes(ip: InteractiveShell) -> None:
    ip.run_cell_magic("bh_kv", "", "lr = 0.01  # tuned by hand\nname = \"a # b\"  # quoted\n"
                                   "url = http://h/#top\ntitle = 'my run'\nempty = ''\nraw = it's\n")
    kv = magics(ip).bh.kv
    assert {k: kv[k] for k in kv.keys()} == {"lr": "0.01", "name": "a # b", "url": "http://h/#top",
                                             "title": "my run", "empty": "", "raw": "it's"}
    ip.run_cell_magic("bh_kv", "'my query'", "SELECT 1  # kept: a whole-cell value is stored as it is\n")
    assert ip.run_line_magic("bh_kv", "\"my query\"") == "SELECT 1  # kept: a whole-cell value is stored as it is\n"
    with pytest.raises(UsageError, match="takes one KEY"):
        ip.run_cell_magic("bh_kv", "my query", "x")


def test_store_handle_never_reconnects(ip: InteractiveShell, moto_server, tmp_path: Path,  # type: ignore[no-untyped-def]
                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import bh_notebook

    chosen = tmp_path / "chosen"
    ip.run_line_magic("bh_connect", str(chosen))
    live = magics(ip).bh
    assert ip.run_cell("bh = %bh_connect").success
    assert ip.user_ns["bh"] is live and live.started and live.config.local_path == chosen
    assert bh_notebook.current() is live
    ip.user_ns["arr"] = np.arange(3)
    ip.run_line_magic("bh_put", "arr")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    missing = f"s3://no-such-bucket-here?endpoint_url={moto_server.endpoint_url}&region=us-east-1"
    with pytest.raises(UsageError, match=f"could not connect to .*no-such-bucket-here.*still connected to {chosen}"):
        ip.run_line_magic("bh_connect", missing)
    assert magics(ip).bh is live and live.started  # the working connection was kept
    np.testing.assert_array_equal(ip.run_line_magic("bh_get", "arr --as again"), np.arange(3))
    assert ip.run_line_magic("bh_connect", "--branch exp") is not live  # a branch of the chosen bucket
    assert magics(ip).bh.config.local_path == chosen and not live.started


def test_current_outside_a_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bh_notebook

    monkeypatch.setattr(bh_notebook, "_current", None)
    first = bh_notebook.current()
    try:
        assert bh_notebook.current() is first and first.started
    finally:
        first.stop()


MERGE_SCRIPT = '''
import time
from IPython.core.interactiveshell import InteractiveShell
from bh_notebook import BucketSQLite, SnapshotConfig
ip = InteractiveShell.instance()
ip.run_cell("%load_ext bh_notebook")
ip.run_cell("%config BHMagics.autoflush = False")
ip.run_cell("%%bh_kv\\nowner = me\\n")
ip.run_cell("%bh_flush")
with BucketSQLite(ip._bh_magics.bh.config, SnapshotConfig(interval_seconds=0)) as other:
    other.kv["owner"] = "them"
time.sleep(0.01)
ip.run_cell("%%bh_kv\\nowner = me again\\n")
print("--- the cell that merges")
ip.run_cell("%bh_flush")
'''


def test_a_merge_is_reported_once_per_cell(tmp_path: Path) -> None:
    """In a kernel, nothing catches the store's log records: the report must not also come out as a log line."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, BH_NOTEBOOK_HOME=str(tmp_path / "home"), IPYTHONDIR=str(tmp_path / "ipython"))
    done = subprocess.run([sys.executable, "-c", MERGE_SCRIPT], env=env, capture_output=True, text=True, timeout=120,
                          check=True)
    cell = (done.stdout + done.stderr).split("--- the cell that merges", 1)[1]
    assert cell.count("took in 1 commit of other writers") == 1, cell


def test_put_shows_progress_like_get(ip: InteractiveShell, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from bh_notebook.notebook.progress import Progress

    monkeypatch.setattr(Progress.__init__, "__kwdefaults__", {"show_after": 0.0, "widget": False, "stream": None})
    ip.user_ns["big"] = np.zeros(1_000_000)
    ip.run_line_magic("bh_put", "big")
    captured = capsys.readouterr()
    assert "put big.npy: 100%" in captured.err  # the same bar %bh_get shows
    assert "big  array  v1  (1000000,) float64 (7.6 MiB)  7.6 MiB uploaded" in captured.out
    seen: list[tuple[str, int | None, int]] = []

    class Recorder:  # any progress_factory is honoured, as for the API's own transfers
        def __init__(self, label: str, total: int | None) -> None:
            self.label, self.total, self.n = label, total, 0

        def __call__(self, n: int) -> None:
            self.n += n

        def close(self) -> None:
            seen.append((self.label, self.total, self.n))

    magics(ip).bh.files.progress_factory = Recorder
    ip.user_ns["df"] = pd.DataFrame({"a": np.arange(100_000)})
    ip.run_line_magic("bh_put", "df")
    assert len(seen) == 1 and seen[0][0].startswith("put ") and seen[0][2] > 0
    assert f"{seen[0][2] / 1024:.1f} KiB uploaded" in capsys.readouterr().out
    assert magics(ip).bh.files.progress_factory is Recorder  # put back after the put


def test_times_are_local_with_their_zone(ip: InteractiveShell, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from bh_notebook.notebook.browser import Browser
    from bh_notebook.notebook.display import when

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        ip.user_ns["df"] = pd.DataFrame({"a": [1]})
        ip.run_line_magic("bh_put", "df")
        ip.run_line_magic("bh_flush", "")
        bh = magics(ip).bh
        created = bh.frames.info("df").created_at
        modified = ip.run_line_magic("bh_ls", "")["modified"][0]
        stamp = ip.run_line_magic("bh_history", "df")["created"][0]
        assert modified == stamp and modified.timestamp() == int(created)
        assert modified.utcoffset() == pd.Timedelta(hours=-5)  # November in New York
        assert when(created).endswith(" EST") and when(created)[11:19] == modified.strftime("%H:%M:%S")
        capsys.readouterr()
        ip.run_line_magic("bh_status", "")
        assert "EST" in capsys.readouterr().out.split("flushed:")[1].splitlines()[0]
        b = Browser(bh)
        label = b.entries.options[0][0]
        assert label.endswith(modified.strftime("%Y-%m-%d %H:%M EST")) and "local time" in b.header.value
        b.select("df")
        assert when(created) in b.preview_text()
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_wording(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = pd.DataFrame({"x": [1]}), pd.DataFrame({"x": [2]})
    for frame in (a, b, a, a):
        ip.user_ns["df"] = frame
        ip.run_line_magic("bh_put", "df")
    lines = capsys.readouterr().out.strip().splitlines()[-3:]
    assert " v2 " in lines[0] and "uploaded" in lines[0]
    assert " v3 " in lines[1] and "new version, nothing uploaded (its bytes were already stored)" in lines[1]
    assert " v3 " in lines[2] and lines[2].split("  ")[4] == "unchanged"
    ls = ip.run_line_magic("bh_ls", "")
    hist = ip.run_line_magic("bh_history", "df")
    assert ls["size"][0] == hist["size"][0] and ls["size"][0].endswith(("B", "KiB"))  # the same units
    for kind in ("frame", "frames"):
        assert list(ip.run_line_magic("bh_ls", f"--kind {kind}")["name"]) == ["df"]
        assert len(ip.run_line_magic("bh_history", f"df --kind {kind}")) == 3
    with pytest.raises(UsageError, match="'tables' is not a kind; use frame, array, file or kv"):
        ip.run_line_magic("bh_ls", "--kind tables")
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("bh_get", "df --kind array")
    assert "did you mean 'df'" not in str(info.value) and "'df' is a frame" in str(info.value)


def test_what_cannot_be_stored_says_what_can(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    polars = pytest.importorskip("polars")
    ip.user_ns["pldf"] = polars.DataFrame({"a": [1, 2]})
    ip.run_line_magic("bh_put", "pldf")  # a polars frame is a frame
    assert "pldf  frame  v1" in capsys.readouterr().out
    ip.user_ns["labels"] = {"a", "b"}
    with pytest.raises(UsageError, match=r"cannot store 'labels', a set: %bh_put takes a DataFrame or Series "
                                         r"\(pandas, polars\) or a pyarrow Table"):
        ip.run_line_magic("bh_put", "labels")


SHELLS_SCRIPT = '''
import shutil, sys, tempfile
from pathlib import Path
from tests.conftest import close_shell, open_shell
main = sys.modules["__main__"]
for _ in range(3):
    home = Path(tempfile.mkdtemp())
    shell = open_shell(home / "ipython")
    shell.run_cell("1 + 1")
    close_shell(shell)
    shutil.rmtree(home)  # a test's temporary directory, pruned before the interpreter exits
    assert sys.modules["__main__"] is main and hasattr(main, "__spec__")  # multiprocessing needs it back
'''


def test_test_shells_leave_nothing_for_exit() -> None:
    """The shells tests use end at teardown: no exit hook writes to a history file that may be gone by then."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", SHELLS_SCRIPT], cwd=root, capture_output=True, text=True,
                          timeout=120, check=True)
    assert "Traceback" not in done.stderr and "atexit" not in done.stderr, done.stderr


def test_a_teammates_entries_show_up_without_a_restart(ip: InteractiveShell,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("config", "BHMagics.autoflush = False")
    ip.run_cell_magic("bh_kv", "", "mine = 1\n")
    ip.run_line_magic("bh_flush", "")
    bh: BucketSQLite = magics(ip).bh
    with BucketSQLite(bh.config, SnapshotConfig(interval_seconds=0)) as teammate:
        teammate.arrays.put("teammate_result", np.arange(5))
    listed = ip.run_line_magic("bh_ls", "")
    assert "teammate_result" in set(listed["name"])  # %bh_ls pulled first
    with BucketSQLite(bh.config, SnapshotConfig(interval_seconds=0)) as teammate:
        teammate.frames.put("later", pd.DataFrame({"a": [1, 2]}))
    got = ip.run_line_magic("bh_get", "later --as later_df")  # a miss pulls, then finds it
    assert got["a"].tolist() == [1, 2]
    capsys.readouterr()
    ip.run_line_magic("bh_pull", "")
    assert "nothing new in the bucket" in capsys.readouterr().out
    with BucketSQLite(bh.config, SnapshotConfig(interval_seconds=0)) as teammate:
        teammate.kv["note"] = "hello"
    report = ip.run_line_magic("bh_pull", "")
    assert report is not None and "pulled: took in 1 commit of other writers" in capsys.readouterr().out
    assert ip.run_line_magic("bh_kv", "note") == "hello"


KILL_AFTER_CELL = '''
import os, signal, sys, threading, time
from jupyter_client.manager import start_new_kernel
km, kc = start_new_kernel(kernel_name="python3")
reply = kc.execute_interactive(
    "%load_ext bh_notebook\\nimport numpy as np\\nfirst = np.arange(3)\\n%bh_put first", timeout=120)
assert reply["content"]["status"] == "ok", reply
reply = kc.execute_interactive("last_words = np.arange(9)\\n%bh_put last_words", timeout=120)  # within the old 5 s debounce
assert reply["content"]["status"] == "ok", reply
time.sleep(0.1)
os.kill(km.provisioner.process.pid, signal.SIGKILL)  # 0.1 s after the cell finished
kc.stop_channels()
print("killed", flush=True)
'''


def test_a_cell_is_durable_when_it_finishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real kernel, autoflush on (the default): SIGKILL 0.1 s after a cell that stored something finished,
    a moment after an earlier cell's flush (no debounce may hold the second back)."""
    import subprocess
    import sys

    home = tmp_path / "home"
    monkeypatch.setenv("BH_NOTEBOOK_HOME", str(home))
    out = subprocess.run([sys.executable, "-c", KILL_AFTER_CELL], capture_output=True, text=True, timeout=300)
    assert "killed" in out.stdout, out.stderr
    with BucketSQLite(BucketConfig.for_local(home)) as bh:
        np.testing.assert_array_equal(bh.arrays.get("last_words"), np.arange(9))
