"""Every notebook in notebooks/ runs on a real kernel (nbclient), against the local store and against moto."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from bh_notebook.testing.servers import ACCESS_KEY, SECRET_KEY

from .conftest import set_bucket_env

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def run_notebook(path: Path, cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def cell_text(cell: nbformat.NotebookNode) -> str:
    parts: list[str] = []
    stream = None  # the stream the last part came from: a print may arrive in pieces, shown as one text
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream" and out.get("name") == stream:
            parts[-1] += out["text"]
            continue
        stream = out.get("name") if out.get("output_type") == "stream" else None
        if stream is not None:
            parts.append(out["text"])
        elif "data" in out and "text/plain" in out["data"]:
            parts.append(out["data"]["text/plain"])
        elif out.get("output_type") == "error":
            parts.append(f"ERROR {out['ename']}: {out['evalue']}")
    return "\n".join(parts)


def all_text(nb: nbformat.NotebookNode) -> str:
    return "\n".join(cell_text(c) for c in nb.cells)


def use_moto(monkeypatch: pytest.MonkeyPatch, server) -> str:  # type: ignore[no-untyped-def]
    bucket = str(server.new_bucket())
    set_bucket_env(monkeypatch, server, bucket)
    return bucket


def test_every_notebook_is_covered() -> None:
    assert {p.name for p in NOTEBOOKS.glob("*.ipynb")} == {"quickstart.ipynb", "team_bucket.ipynb", "browse.ipynb"}


def check_quickstart(nb: nbformat.NotebookNode) -> None:
    text = all_text(nb)
    assert "ERROR" not in text and "Traceback" not in text
    cells = {c.source.splitlines()[0]: cell_text(c) for c in nb.cells if c.cell_type == "code" and c.source}
    put = cells['%bh_put sales weights notes --note "quickstart"']
    assert "sales  frame  v1  3,000 x 3" in put and "weights  array  v1  (500, 8) float64" in put
    assert "notes  file  v1  quickstart-notes.txt, 29 B" in put
    assert "2 kv keys saved: learning_rate, epochs" in cells["%%bh_kv"]
    listing = cells["%bh_ls"]
    for name in ["sales", "weights", "notes", "epochs", "learning_rate"]:
        assert name in listing
    got = cells["del sales, weights"]
    assert "(3000, 3) (500, 8)" in got and "first results look promising" in got and "epochs = 20" in got
    assert "region  units" in cells["%bh_get sales --columns region,units --as two_columns"]
    assert "(5, 8)" in cells["rows = %bh_get weights --rows 100:105"]
    versions = cells['sales["price"] *= 1.1']
    assert "sales  frame  v2" in versions and versions.rstrip().endswith(versions.rstrip().split("  ")[-1])
    assert "unchanged" in versions.splitlines()[-1]
    assert "prices up 10%" in cells["%bh_history sales"]
    assert "price was 2.0 and is now 2.2" in cells["first = %bh_get sales@1 --as first"]
    # every cell that stored something saved the catalog as it finished: nothing is left for %bh_flush
    assert "catalog unchanged: nothing uploaded" in cells["%bh_flush"] and "holds:     1 frames" in cells["%bh_flush"]


def test_quickstart_on_local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("BH_NOTEBOOK_HOME", str(home))
    nb = run_notebook(NOTEBOOKS / "quickstart.ipynb", tmp_path)
    check_quickstart(nb)
    assert f"using the local store at {home}" in all_text(nb)
    assert (home / "bucketsqlite" / "snap.db").exists()
    assert not (tmp_path / "quickstart-notes.txt").exists()


def test_quickstart_on_moto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_server) -> None:  # type: ignore[no-untyped-def]
    bucket = use_moto(monkeypatch, moto_server)
    nb = run_notebook(NOTEBOOKS / "quickstart.ipynb", tmp_path)
    check_quickstart(nb)
    assert f"connected to s3://{bucket}" in all_text(nb)
    assert SECRET_KEY not in all_text(nb)


def test_team_bucket_on_moto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_server) -> None:  # type: ignore[no-untyped-def]
    bucket = use_moto(monkeypatch, moto_server)
    nb = run_notebook(NOTEBOOKS / "team_bucket.ipynb", tmp_path)
    text = all_text(nb)
    assert "ERROR" not in text
    assert "backend:   s3" in text and f"s3://{bucket}" in text
    assert "experiment  frame  v1  6 x 2" in text and "embedding  array  v1  (1000, 16) float32" in text
    assert "best score 0.8 | embedding float32 (1000, 16)" in text
    assert f"ObjectURL('s3://{bucket}/files/" in text and moto_server.endpoint_url in text
    assert SECRET_KEY not in text and ACCESS_KEY not in text


def test_browse_notebook_saves_widget_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BH_NOTEBOOK_HOME", str(tmp_path / "home"))
    nb = run_notebook(NOTEBOOKS / "browse.ipynb", tmp_path)
    text = all_text(nb)
    assert "ERROR" not in text
    assert "measurements frame 60 x 2" in text and "DataFrame (60, 2)" in text
    browser_cell = next(c for c in nb.cells if c.source.startswith("browser = %bh_browse"))
    views = [o for o in browser_cell.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(views) == 1
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    root = state[views[0]["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]]["state"]
    assert "bh-browser" in root["_dom_classes"]
    selects = [m["state"] for m in state.values() if "bh-entries" in m["state"].get("_dom_classes", [])]
    assert len(selects) == 1
    labels = selects[0]["_options_labels"]
    assert any(label.startswith("measurements") for label in labels) and any("spectrum" in x for x in labels)
    previews = [m["state"]["value"] for m in state.values() if m["model_name"] == "HTMLModel"]
    assert any("<b>measurements</b> v1: 60 rows x 2 columns" in v for v in previews)


def test_readme_first_command_prints_the_quickstart(tmp_path: Path) -> None:
    """The README's "Try it" command (after its pip line) shows the cells' outputs and leaves ~/.bh_notebook alone."""
    import os
    import re
    import shutil
    import subprocess

    readme = (NOTEBOOKS.parent / "README.md").read_text()
    section = readme.split("## Try it", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    commands = block.group(1).replace("\\\n", " ").strip().splitlines()
    assert commands[0].startswith("pip install -e .")
    assert "Python 3.10" in section
    shutil.copytree(NOTEBOOKS, tmp_path / "notebooks")
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               IPYTHONDIR=str(tmp_path / "ipython"))
    env.pop("BH_NOTEBOOK_HOME", None)
    done = subprocess.run(["bash", "-c", "\n".join(commands[1:])], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for shown in ["sales  frame  v1  3,000 x 3", "epochs = 20", "first results look promising",
                  "price was 2.0 and is now 2.2", "(5, 8)", "backend:   local"]:
        assert shown in out, shown
    assert not (home / ".bh_notebook").exists()  # a throwaway store, not the user's


def test_assignment_form_in_a_real_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ipykernel compiles cells its own way: x = %bh_get df still binds only x there."""
    monkeypatch.setenv("BH_NOTEBOOK_HOME", str(tmp_path / "store"))
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(src) for src in [
        "%load_ext bh_notebook\nimport pandas as pd\ndf = pd.DataFrame({'a': [1, 2, 3]})\n%bh_put df",
        "live = df = pd.DataFrame({'a': [99]})\nx = %bh_get df\ntail = %bh_get df --rows -1:",
        "print('live kept:', df is live, list(x['a']), list(tail['a']))",
        "%bh_get df\nprint('statement binds:', list(df['a']))",
    ]]
    path = tmp_path / "assign.ipynb"
    nbformat.write(nb, path)
    text = all_text(run_notebook(path, tmp_path))
    assert "live kept: True [1, 2, 3] [3]" in text and "statement binds: [1, 2, 3]" in text
