"""The command line (``bh-notebook``, ``python -m bh_notebook``): every command, its JSON, its exit codes.

Most tests drive the click group in-process with CliRunner on the local store and on moto (the environment
pointed at it as a user's would be); a few run real processes: ``python -m bh_notebook`` and the installed script.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result

from bh_notebook import BucketConfig, BucketSQLite
from bh_notebook import cli as cli_module
from bh_notebook.cli import main
from bh_notebook.config import config_for
from bh_notebook.testing.servers import ACCESS_KEY, SECRET_KEY, S3Server

from .conftest import set_bucket_env

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["status", "ls", "history", "get", "put", "kv get", "kv set", "kv delete", "files list", "files get",
            "files gc", "check", "restore", "share", "pull", "branch list", "branch create", "branch delete",
            "branch merge"]

Run = Callable[..., Result]


@pytest.fixture(params=["local", "moto"])
def where(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The store the commands use, chosen as a user would: no variable (the local store under $BH_NOTEBOOK_HOME),
    or the BUCKETHEAD_* variables naming a bucket on moto."""
    if request.param == "moto":
        server: S3Server = request.getfixturevalue("moto_server")
        set_bucket_env(monkeypatch, server, server.new_bucket())
    return str(request.param)


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    """``cli("ls", "--json")``: run the command line in-process from a scratch directory."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def run(*args: str, input: str | bytes | None = None) -> Result:
        return runner.invoke(main, list(args), input=input, prog_name="bh-notebook")

    return run


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def as_json(result: Result) -> Any:
    return json.loads(ok(result).stdout)


def failed(result: Result, code: int = 1) -> str:
    """The one-line message of a command that ended with ``code`` (no traceback)."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    if code == 1:
        assert isinstance(result.exception, SystemExit)  # a message, not an uncaught exception
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
        return lines[0]
    return str(result.stderr)


def _inputs(tmp_path: Path) -> dict[str, Any]:
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"], "c": [0.5, 1.5, np.nan]})
    df.to_parquet(tmp_path / "sales.parquet")
    df.to_csv(tmp_path / "table.csv", index=False)
    arr = np.arange(12, dtype="int32").reshape(3, 4)
    np.save(tmp_path / "weights.npy", arr)
    (tmp_path / "report.txt").write_bytes(b"quarterly numbers\x00\xff")
    return {"df": df, "arr": arr}


# -- every command, on the local store and on moto --------------------------------------------------


def test_put_then_get_round_trips_every_kind(where: str, cli: Run, tmp_path: Path) -> None:
    data = _inputs(tmp_path)
    ok(cli("put", "sales.parquet", "--note", "from the export", "--tag", "stage=raw"))
    ok(cli("put", "table.csv"))
    ok(cli("put", "weights.npy", "--as", "model/weights"))
    ok(cli("put", "report.txt"))
    ok(cli("kv", "set", "lr", "0.01"))
    ok(cli("kv", "set", "config", "-", input="a: 1\nb: two\n"))

    ok(cli("get", "sales", "-o", "back.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "back.parquet"), data["df"])
    ok(cli("get", "sales", "-o", "back.csv"))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "back.csv"), data["df"])
    assert ok(cli("get", "table")).stdout == (tmp_path / "table.csv").read_text()  # a frame to stdout is CSV
    ok(cli("get", "model/weights", "-o", "w.npy"))
    back = np.load(tmp_path / "w.npy")
    np.testing.assert_array_equal(back, data["arr"])
    assert back.dtype == data["arr"].dtype
    assert ok(cli("get", "report.txt")).stdout_bytes == b"quarterly numbers\x00\xff"
    ok(cli("get", "report.txt", "-o", "r.bin"))
    assert (tmp_path / "r.bin").read_bytes() == b"quarterly numbers\x00\xff"
    assert ok(cli("get", "lr")).stdout == "0.01\n"
    assert ok(cli("kv", "get", "lr")).stdout == "0.01\n"
    assert ok(cli("kv", "get", "config")).stdout == "a: 1\nb: two\n"  # as stored, no newline added
    ok(cli("kv", "set", "raw", "-", input="no newline"))
    assert ok(cli("kv", "get", "raw")).stdout == "no newline\n"
    ok(cli("get", "lr", "-o", "lr.txt"))
    assert (tmp_path / "lr.txt").read_text() == "0.01"

    # Each command committed before it exited: the library, started afresh, sees everything.
    with BucketSQLite(config_for(None)) as bh:
        assert sorted(bh.frames.names()) == ["sales", "table"]
        assert bh.arrays.names() == ["model/weights"]
        assert bh.named_files.names() == ["report.txt"]
        assert bh.kv.get("lr") == "0.01"
        assert bh.frames.info("sales").metadata == {"note": "from the export", "stage": "raw"}
        assert bh.status()["backend"] == ("local" if where == "local" else "s3")


def test_versions_history_ls_and_status(where: str, cli: Run, tmp_path: Path) -> None:
    data = _inputs(tmp_path)
    ok(cli("put", "sales.parquet"))
    assert "unchanged" in ok(cli("put", "sales.parquet")).stdout  # the same bytes make no new version
    data["df"].head(2).to_parquet(tmp_path / "sales.parquet")
    assert "v2" in ok(cli("put", "sales.parquet")).stdout
    ok(cli("kv", "set", "sales_owner", "ana"))

    assert [v["version"] for v in as_json(cli("history", "sales", "--json"))] == [2, 1]
    ids = [v["version_id"] for v in as_json(cli("history", "sales", "--json"))]
    assert len(set(ids)) == 2 and all(len(i) == 32 for i in ids)
    text = ok(cli("history", "sales")).stdout
    assert text.splitlines()[0].split()[:3] == ["version", "created", "size"] and "3 x 3" in text
    ok(cli("get", "sales@1", "-o", "v1.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "v1.parquet"), data["df"])
    assert len(pd.read_csv(__import__("io").StringIO(ok(cli("get", "sales")).stdout))) == 2

    listed = as_json(cli("ls", "--json"))
    assert {(r["name"], r["kind"], r["version"]) for r in listed} == {("sales", "frame", 2), ("sales_owner", "kv", None)}
    assert [r["name"] for r in as_json(cli("ls", "sales*", "--kind", "kv", "--json"))] == ["sales_owner"]
    assert "sales_owner" in ok(cli("ls")).stdout
    assert ok(cli("ls", "nomatch")).stdout.strip() == "nothing stored matches"

    status = as_json(cli("status", "--json"))
    assert status["frames"] == 1 and status["kv_keys"] == 1
    text = ok(cli("status")).stdout
    assert "1 frames" in text and SECRET_KEY not in text and SECRET_KEY not in json.dumps(status)


def test_files_gc_check_and_pull(where: str, cli: Run, tmp_path: Path) -> None:
    _inputs(tmp_path)
    ok(cli("put", "report.txt"))
    blobs = as_json(cli("files", "list", "--json"))
    assert len(blobs) == 1 and blobs[0]["filename"] == "report.txt"
    key = blobs[0]["bh_key"]
    assert key[:12] in ok(cli("files", "list")).stdout
    assert "wrote" in ok(cli("files", "get", key, "-o", "blob.bin")).stdout
    assert (tmp_path / "blob.bin").read_bytes() == b"quarterly numbers\x00\xff"

    with BucketSQLite(config_for(None)) as bh:  # another writer deletes the entry: its blob is unused now
        bh.named_files.delete("report.txt")
        bh.force_flush()
        bh.kv["later"] = "a later commit"  # so the previous snapshot (kept for restore) no longer uses it either
    assert as_json(cli("pull", "--json")) == {"new": False, "report": None}  # a new process starts from the latest
    assert "nothing new" in ok(cli("pull")).stdout
    dry = as_json(cli("files", "gc", "--grace", "0", "--dry-run", "--json"))
    assert dry["orphans_found"] == 1 and dry["deleted"] == [key]
    report = as_json(cli("files", "gc", "--grace", "0", "--json"))
    assert report["orphans_deleted"] == 1
    assert "0 unused blobs" in ok(cli("files", "gc")).stdout

    checked = as_json(cli("check", "--json"))
    assert checked["ok"] is True
    assert ok(cli("check")).stdout.strip() == "catalog and bucket agree"


def test_prune_deletes_the_old_log_and_keeps_the_catalog(where: str, cli: Run,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BucketSQLite, "checkpoint_every", 3)
    monkeypatch.setattr(BucketSQLite, "log_retention_seconds", None)
    with BucketSQLite(config_for(None)) as bh:
        for i in range(10):  # checkpoints at 1, 3, 6, 9
            bh.kv[f"k{i}"] = str(i)
            bh.force_flush()
    assert "nothing to prune" in ok(cli("prune")).stdout  # all of it younger than a week
    assert "at least 3600" in failed(cli("prune", "--older-than", "60"), 2)
    monkeypatch.setattr(cli_module, "MIN_PRUNE_AGE", 0.0)  # (so the test need not wait an hour)
    report = as_json(cli("prune", "--older-than", "0", "--json"))
    assert report["floor"] >= 6 and report["commits"] >= 4 and report["checkpoints"] >= 2
    assert as_json(cli("kv", "get", "k9", "--json")) is not None
    assert ok(cli("check")).stdout.strip() == "catalog and bucket agree"
    failed(cli("prune", "--older-than", "-1"), 2)


def test_a_frame_of_several_parts_is_got_whole_not_shared(where: str, cli: Run, tmp_path: Path) -> None:
    with BucketSQLite(config_for(None)) as bh:
        bh.frames.put("log", pd.DataFrame({"a": [1, 2]}))
        bh.frames.append("log", pd.DataFrame({"a": [3]}))
    assert "2 Parquet parts" in failed(cli("share", "log"))
    ok(cli("get", "log", "-o", "log.parquet"))
    assert pd.read_parquet(tmp_path / "log.parquet")["a"].tolist() == [1, 2, 3]
    history = as_json(cli("history", "log", "--json"))
    assert [h["shape"] for h in history] == ["3 x 1 in 2 parts", "2 x 1"]


def test_restore_from_prev(where: str, cli: Run, tmp_path: Path) -> None:
    _inputs(tmp_path)
    ok(cli("put", "sales.parquet"))
    ok(cli("kv", "set", "mistake", "yes"))  # the commit to undo
    done = as_json(cli("restore", "--from", "prev", "--json"))
    assert "as of commit 1" in done["restored_from"] and done["frames"] == 1 and done["kv_keys"] == 0
    assert {r["name"] for r in as_json(cli("ls", "--json"))} == {"sales"}  # committed: the next command sees it
    assert "restored the catalog from" in ok(cli("restore", "--from", "prev")).stdout
    failed(cli("restore"), 2)  # --from is required
    failed(cli("restore", "--from", "latest"), 2)


def test_share_gives_a_url_on_s3_and_a_message_on_the_local_store(where: str, cli: Run, tmp_path: Path) -> None:
    data = _inputs(tmp_path)
    ok(cli("put", "weights.npy"))
    ok(cli("kv", "set", "k", "v"))
    if where == "local":
        message = failed(cli("share", "weights"))
        assert "no shareable URLs" in message and "get weights -o" in message
        return
    url = ok(cli("share", "weights", "--expires", "600")).stdout.strip()
    assert SECRET_KEY not in url
    with urllib.request.urlopen(url) as response:
        (tmp_path / "shared.npy").write_bytes(response.read())
    np.testing.assert_array_equal(np.load(tmp_path / "shared.npy"), data["arr"])
    doc = as_json(cli("share", "weights@1", "--json"))
    assert doc["version"] == 1 and doc["expires_in"] == 3600 and doc["url"].startswith("http")
    assert "kv value" in failed(cli("share", "k"))
    failed(cli("share", "weights", "--expires", "0"), 2)


def test_url_option_names_the_store(cli: Run, tmp_path: Path, moto_server: S3Server) -> None:
    """--url takes the forms %bh_connect takes and wins over the environment."""
    _inputs(tmp_path)
    local = f"file://{tmp_path / 'elsewhere'}"
    ok(cli("--url", local, "kv", "set", "where", "file-url"))
    assert ok(cli("--url", local, "kv", "get", "where")).stdout == "file-url\n"
    failed(cli("kv", "get", "where"))  # the default store is another one
    bucket = moto_server.new_bucket()
    s3 = f"s3://{ACCESS_KEY}:{SECRET_KEY}@{bucket}?endpoint_url={moto_server.endpoint_url}&region=us-east-1"
    ok(cli("--url", s3, "put", "weights.npy"))
    status = ok(cli("--url", s3, "status")).stdout
    assert f"s3://{bucket}" in status and SECRET_KEY not in status
    with BucketSQLite(moto_server.config(bucket)) as bh:
        assert bh.arrays.names() == ["weights"]


# -- exit codes --------------------------------------------------------------------------------------


def test_exit_codes(cli: Run, tmp_path: Path) -> None:
    _inputs(tmp_path)
    ok(cli("put", "weights.npy"))  # 0
    ok(cli("kv", "set", "weights", "also a key"))
    assert "nothing named 'nope'" in failed(cli("get", "nope"))  # 1: a named error, one line
    assert "no kv key 'nope'" in failed(cli("kv", "get", "nope"))
    assert "no kv key" in failed(cli("kv", "delete", "nope"))
    ok(cli("kv", "delete", "weights"))
    failed(cli("kv", "get", "weights"))
    assert "version" in failed(cli("get", "weights@7", "-o", "x.npy")).lower()
    failed(cli("ls", "--kind", "bad"), 2)  # 2: click's usage errors
    failed(cli("get"), 2)
    failed(cli("put", "missing.csv"), 2)
    failed(cli("nosuchcommand"), 2)
    failed(cli("get", "weights@x"), 2)
    failed(cli("files", "gc", "--grace", "-1"), 2)
    failed(cli("files", "get", "0" * 64), 2)  # -o is required
    assert "bh-key" in failed(cli("files", "get", "nothex", "-o", "x")).lower()

    # 3: check found problems. An object under files/ that no row knows is an orphan.
    store = BucketConfig.from_env().local_path
    assert store is not None
    stray = store / "files" / ("ab" * 32)
    stray.write_bytes(b"left behind")
    result = cli("check")
    assert result.exit_code == 3 and "1 blobs no row points at" in result.stdout
    result = cli("check", "--json")
    assert result.exit_code == 3 and json.loads(result.stdout)["orphan_blobs"] == ["ab" * 32]
    result = cli("check", "--fix")  # the orphan is younger than the grace: kept, still a problem
    assert result.exit_code == 3 and stray.exists()
    fixed = json.loads(ok(cli("check", "--fix", "--grace", "0", "--json")).stdout)
    assert fixed["ok"] is True and fixed["remaining"]["ok"] is True and not stray.exists()
    ok(cli("check"))


def test_two_kinds_under_one_name_need_kind(cli: Run, tmp_path: Path) -> None:
    _inputs(tmp_path)
    ok(cli("put", "weights.npy"))
    ok(cli("kv", "set", "weights", "fast"))
    assert "--kind" in failed(cli("get", "weights"), 2)
    assert ok(cli("get", "weights", "--kind", "kv")).stdout == "fast\n"
    ok(cli("get", "weights", "--kind", "arrays", "-o", "w.npy"))
    assert "kv key" in failed(cli("history", "weights", "--kind", "kv"), 2)
    assert len(as_json(cli("history", "weights", "--kind", "arrays", "--json"))) == 1


def test_bad_url_is_one_line_and_exit_1_without_the_secret(cli: Run) -> None:
    assert "unsupported URL scheme" in failed(cli("--url", "bogus://x", "ls"))
    message = failed(cli("--url", "s3://AKIDEXAMPLE:topsecret%2Fvalue@bucket/extra?endpoint_url=http://h", "status"))
    assert "path after the bucket" in message and "topsecret" not in message
    assert "not of the form" in failed(cli("--url", "r2://only-account", "ls"))
    # A well-formed URL whose endpoint does not answer: a named error, one line.
    message = failed(cli("--url", "s3://b?endpoint_url=http://127.0.0.1:9&deadline=1&connect_timeout=1", "ls"))
    assert "127.0.0.1:9" in message or "reach" in message.lower()


def test_json_parses_on_every_read_command(where: str, cli: Run, tmp_path: Path) -> None:
    _inputs(tmp_path)
    put = as_json(cli("put", "sales.parquet", "--json"))
    assert put["kind"] == "frame" and put["version"] == 1 and put["changed"] is True
    assert as_json(cli("put", "sales.parquet", "--json"))["changed"] is False
    ok(cli("kv", "set", "k", "v"))
    for args in (["status"], ["ls"], ["history", "sales"], ["kv", "get", "k"], ["get", "k"], ["files", "list"],
                 ["files", "gc", "--dry-run"], ["check"], ["pull"], ["get", "sales", "-o", "s.csv"]):
        json.loads(ok(cli(*args, "--json")).stdout)
    assert as_json(cli("get", "sales", "-o", "s.csv", "--json"))["path"] == str(tmp_path / "s.csv")
    assert "give -o" in failed(cli("get", "sales", "--json"), 2)


def test_help_documents_exit_codes_and_every_command_has_an_example(cli: Run) -> None:
    top = ok(cli("--help")).stdout
    for line in ("0  ok", "1  an error of bh_notebook", "2  a usage error", "3  check found problems"):
        assert line in top
    for command in COMMANDS:
        text = ok(cli(*command.split(), "--help")).stdout
        assert "Example" in text and f"bh-notebook {command.split()[0]}" in text, command
    for group in ("kv", "files", "branch"):
        assert "Example" in ok(cli(group, "--help")).stdout


def test_a_bug_of_ours_stays_a_traceback(cli: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    import bh_notebook.cli as cli_module

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli_module, "listing", broken)
    result = cli("ls")
    assert result.exit_code == 1 and isinstance(result.exception, ZeroDivisionError)  # not turned into a message


# -- real processes ------------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def test_python_m_bh_notebook_on_moto(moto_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bucket = moto_server.new_bucket()
    set_bucket_env(monkeypatch, moto_server, bucket)
    _inputs(tmp_path)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bh_notebook", *args], capture_output=True, text=True,
                              cwd=tmp_path, env=_env(), timeout=120)

    done = run("put", "sales.parquet", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == "sales"
    listed = run("ls", "--json")
    assert [r["name"] for r in json.loads(listed.stdout)] == ["sales"]
    missing = run("get", "nope")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr
    assert run("ls", "--kind", "nope").returncode == 2
    assert run("check").returncode == 0
    with BucketSQLite(moto_server.config(bucket)) as bh:
        assert bh.frames.names() == ["sales"]
    # Nothing of IPython is loaded to run a command.
    probe = subprocess.run([sys.executable, "-c", "import sys, bh_notebook.cli; "
                            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('IPython', 'ipywidgets')))"],
                           capture_output=True, text=True, env=_env(), timeout=120)
    assert probe.stdout.strip() == "[]", probe.stderr


def _installed_script() -> str | None:
    here = Path(sys.executable).parent / "bh-notebook"
    return str(here) if here.exists() else shutil.which("bh-notebook")


def test_installed_script_on_the_local_store(tmp_path: Path) -> None:
    script = _installed_script()
    if script is None:
        pytest.skip("the bh-notebook script is made by `pip install -e .` (as the CI does)")
    env = _env(BH_NOTEBOOK_HOME=str(tmp_path / "home"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([script, *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)

    helped = run("--help")
    assert helped.returncode == 0 and "Usage: bh-notebook" in helped.stdout and "3  check found problems" in helped.stdout
    assert run("kv", "set", "lr", "0.01").returncode == 0
    got = run("kv", "get", "lr")
    assert (got.returncode, got.stdout) == (0, "0.01\n")
    bad = run("--url", "bogus://x", "ls")
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and "Traceback" not in bad.stderr
    assert run("kv", "frobnicate").returncode == 2
    assert json.loads(run("status", "--json").stdout)["kv_keys"] == 1


def test_branches_from_the_command_line(where: str, cli: Run, tmp_path: Path) -> None:
    ok(cli("kv", "set", "mode", "fast"))
    assert "created branch 'exp' from 'main'" in ok(cli("branch", "create", "exp")).stdout
    assert as_json(cli("branch", "list", "--json")) == {"branches": ["main", "exp"], "current": "main"}
    ok(cli("--branch", "exp", "kv", "set", "mode", "careful"))
    assert ok(cli("kv", "get", "mode")).stdout.strip() == "fast"  # the main catalog did not move
    assert ok(cli("--branch", "exp", "kv", "get", "mode")).stdout.strip() == "careful"
    assert "* exp" in ok(cli("--branch", "exp", "branch", "list")).stdout
    merged = as_json(cli("branch", "merge", "exp", "--json"))
    assert merged["taken"] >= 1
    assert ok(cli("kv", "get", "mode")).stdout.strip() == "careful"
    assert "no branch 'nope'" in failed(cli("--branch", "nope", "status"))
    assert "branch names are 1-64 letters" in failed(cli("branch", "create", "a/b"))
    assert "deleted branch 'exp'" in ok(cli("branch", "delete", "exp")).stdout
    assert "no branch 'exp'" in failed(cli("branch", "delete", "exp"))
