"""The registry of kinds: a new kind is one store class and one line in STORE_CLASSES, and then the stores, status,
the listing, the magics, the browser, the merge and the blob references all know it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from bh_notebook import BucketConfig, BucketSQLite
from bh_notebook.errors import BlobInUse
from bh_notebook.interfaces import registry
from bh_notebook.interfaces.versioned import VersionedStore, check_metadata
from bh_notebook.merge import table_rules, versioned_tables
from bh_notebook.notebook.listing import listing
from bh_notebook.testing.stores import NO_TIMER


@dataclass(frozen=True)
class NoteVersion:
    name: str
    version: int
    bh_key: str
    nbytes: int
    created_at: float
    metadata: dict[str, str] = field(default_factory=dict)
    cover_key: str | None = None


class NoteStore(VersionedStore[NoteVersion]):
    """A tiny extra kind: text notes, each with an optional cover picture kept as a second blob."""

    table = "bh_test_notes"
    kind = "note"
    extra_columns = (("cover_key", "TEXT"),)

    @classmethod
    def blob_columns(cls) -> dict[str, tuple[str, ...]]:
        return {cls.table: ("bh_key", "cover_key")}

    def _to_version(self, row: dict[str, Any]) -> NoteVersion:
        return NoteVersion(name=row["name"], version=int(row["version"]), bh_key=row["bh_key"],
                           nbytes=int(row["nbytes"]), created_at=float(row["created_at"]),
                           metadata=json.loads(row["metadata"]) if row["metadata"] else {},
                           cover_key=row["cover_key"])

    def put(self, name: str, text: str, *, cover: bytes | None = None,
            metadata: dict[str, str] | None = None) -> NoteVersion:
        data = text.encode()
        bh_key = self._files.put(data, entry=("note", name))
        cover_key = self._files.put(cover) if cover is not None else None
        return self._add_version(name, bh_key, len(data), check_metadata(metadata), {"cover_key": cover_key})

    def get(self, name: str, version: int | None = None) -> str:
        return bytes(self._files.get(self.info(name, version).bh_key)).decode()


@pytest.fixture
def with_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the note kind: one more line in the list of store classes."""
    monkeypatch.setattr(registry, "STORE_CLASSES", [*registry.STORE_CLASSES, NoteStore])


@pytest.fixture
def bh(with_notes: None, tmp_path: Path) -> Iterator[BucketSQLite]:
    with BucketSQLite(BucketConfig.for_local(tmp_path / "store"), NO_TIMER) as store:
        yield store


def test_the_registered_kinds() -> None:
    assert [c.kind for c in registry.store_classes()] == ["blob", "frame", "array", "file", "kv"]
    assert [c.plural for c in registry.listed_classes()] == ["frames", "arrays", "files", "kv"]
    assert versioned_tables() == {"bh_frames", "bh_arrays", "bh_named_files"}
    assert table_rules() == {"bh_retired_versions": "retired", "filestore": "blobs", "bh_frames": "versioned",
                             "bh_frame_parts": "parts", "bh_arrays": "versioned", "bh_named_files": "versioned",
                             "bh_kv": "kv"}
    assert registry.blob_columns() == {"bh_frames": ("bh_key",), "bh_frame_parts": ("bh_key",),
                                       "bh_arrays": ("bh_key",), "bh_named_files": ("bh_key",)}


def test_stores_before_start_and_after_stop(tmp_path: Path) -> None:
    from bh_notebook.errors import NotStarted

    bh = BucketSQLite(BucketConfig.for_local(tmp_path / "s"), NO_TIMER)
    with pytest.raises(NotStarted):
        bh.stores
    with bh:
        assert list(bh.stores) == ["blob", "frame", "array", "file", "kv"]
        assert bh.stores["frame"] is bh.frames and bh.stores["blob"] is bh.files
        with pytest.raises(TypeError):
            bh.stores["x"] = bh.kv  # type: ignore[index]
    with pytest.raises(NotStarted):
        bh.stores


def test_a_new_kind_is_in_stores_and_status(bh: BucketSQLite) -> None:
    assert list(bh.stores) == ["blob", "frame", "array", "file", "kv", "note"]
    notes = bh.stores["note"]
    assert isinstance(notes, NoteStore) and notes.plural == "notes" and notes.article == "a note"
    notes.put("todo", "buy milk")
    status = bh.status()
    assert status["notes"] == 1 and status["frames"] == 0 and status["kv_keys"] == 0
    assert table_rules()["bh_test_notes"] == "versioned"


def test_a_new_kind_is_listed(bh: BucketSQLite) -> None:
    notes: Any = bh.stores["note"]
    notes.put("todo", "buy milk", metadata={"note": "errands"})
    notes.put("todo", "buy oat milk")
    bh.arrays.put("a", np.arange(3))
    frame = listing(bh)
    assert set(frame["kind"]) == {"note", "array"}
    row = frame[frame["kind"] == "note"].iloc[0]
    assert (row["name"], row["version"], row["size"]) == ("todo", 2, len("buy oat milk"))
    assert list(listing(bh, kind="notes")["name"]) == ["todo"]


def test_a_new_kind_in_the_magics(with_notes: None, shell: InteractiveShell, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    shell.run_line_magic("load_ext", "bh_notebook")
    try:
        bh = shell._bh_magics.bh  # type: ignore[attr-defined]
        bh.stores["note"].put("todo", "buy milk")
        bh.stores["note"].put("todo", "buy oat milk")
        ls = shell.run_line_magic("bh_ls", "--kind note")
        assert list(ls["name"]) == ["todo"] and list(ls["kind"]) == ["note"]
        assert shell.run_line_magic("bh_get", "todo") == "buy oat milk"
        assert shell.run_line_magic("bh_get", "todo@1 --as first") == "buy milk" == shell.user_ns["first"]
        with pytest.raises(UsageError, match="--rows is for arrays and frames"):
            shell.run_line_magic("bh_get", "todo --rows 0:1")
        history = shell.run_line_magic("bh_history", "todo")
        assert list(history["version"]) == [2, 1]
        capsys.readouterr()
        shell.run_line_magic("bh_status", "")
        assert "0 kv keys, 1 notes;" in capsys.readouterr().out  # one name, two versions
        shell.run_line_magic("bh_rm", "todo --version 1")
        assert capsys.readouterr().out.strip() == "removed note 'todo' version 1"
        with pytest.raises(UsageError, match="use frame, array, file, kv or note"):
            shell.run_line_magic("bh_ls", "--kind nope")
    finally:
        shell.run_line_magic("unload_ext", "bh_notebook")


def test_a_new_kind_in_the_browser(bh: BucketSQLite) -> None:
    from bh_notebook.notebook.browser import Browser

    bh.stores["note"].put("todo", "buy milk")  # type: ignore[attr-defined]
    browser = Browser(bh)
    assert "notes" in browser.kind.options
    browser.select("todo")
    assert "todo" in browser.preview_text() and "(note)" in browser.preview_text()
    assert browser.load() == "buy milk"
    assert [v.version for v in browser.history()] == [1]
    assert [v.version for v in browser.delete(confirm=True) or []] == [1]
    assert "todo" not in bh.stores["note"]


def test_a_new_kinds_blob_columns_are_references(bh: BucketSQLite) -> None:
    notes: Any = bh.stores["note"]
    v = notes.put("todo", "buy milk", cover=b"\x89PNG a cover")
    assert v.cover_key is not None
    assert bh.files.references(v.cover_key) == ["bh_test_notes:todo@1"]  # found through cover_key, not bh_key
    assert v.cover_key in bh.files.referenced_keys()
    with pytest.raises(BlobInUse):
        bh.files.delete(v.cover_key)
    assert bh.check(verify=False).ok
    notes.delete("todo")
    assert bh.files.references(v.cover_key) == [] and v.cover_key not in bh.files  # released with its entry


def test_unknown_tables_with_a_bh_key_column_still_count(bh: BucketSQLite) -> None:
    key = bh.files.put(b"used by a user's table")
    with bh.connection as conn:
        conn.execute("CREATE TABLE my_runs (run TEXT, bh_key TEXT)")
        conn.execute("INSERT INTO my_runs VALUES ('r1', ?)", (key,))
    assert bh.files.references(key) == ["my_runs:row"]
    assert key in bh.files.referenced_keys()


def test_a_new_kind_merges_by_the_versioned_rule(with_notes: None, tmp_path: Path) -> None:
    config = BucketConfig.for_local(tmp_path / "shared")
    with BucketSQLite(config, NO_TIMER) as seed:
        seed.stores["note"].put("todo", "v1")  # type: ignore[attr-defined]
    a = BucketSQLite(config, NO_TIMER).start()
    b = BucketSQLite(config, NO_TIMER).start()
    try:
        a.stores["note"].put("todo", "from a")  # type: ignore[attr-defined]
        a.force_flush()
        b.stores["note"].put("todo", "from b")  # type: ignore[attr-defined]  # version 2 too: collides
        b.force_flush()
        assert b.last_merge is not None and b.last_merge.renumbered == ["todo@2->3"]
    finally:
        a.stop()
        b.stop()
    with BucketSQLite(config, NO_TIMER) as r:
        notes: Any = r.stores["note"]
        assert {v.version: notes.get("todo", v.version) for v in notes.history("todo")} == {
            1: "v1", 2: "from a", 3: "from b"}  # both writers' versions survive; the first committer keeps 2
