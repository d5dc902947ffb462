"""Every notebook in notebooks/ runs on a real kernel (nbclient) and shows what it promises."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def run_notebook(path: Path, cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def outputs_text(nb: nbformat.NotebookNode) -> str:
    parts: list[str] = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out["text"])
            elif "data" in out and "text/plain" in out["data"]:
                parts.append(out["data"]["text/plain"])
    return "\n".join(parts)


def test_every_notebook_is_covered() -> None:
    assert {p.name for p in NOTEBOOKS.glob("*.ipynb")} <= {"quickstart.ipynb"}


def test_quickstart_on_local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("BH_NOTEBOOK_HOME", str(home))
    nb = run_notebook(NOTEBOOKS / "quickstart.ipynb", tmp_path)
    text = outputs_text(nb)
    assert "baseline first results look promising" in text
    assert "['experiment', 'model.lr']" in text
    assert "FlushResult(uploaded=True" in text
    assert (home / "bucketsqlite" / "snap.db").exists()
    assert len(list((home / "files").iterdir())) == 1
