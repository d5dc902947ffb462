"""The IPython magics: ``%bh_put``, ``%bh_get``, ``%bh_ls``, ``%%bh_kv`` and friends.

Registered by ``%load_ext bh_notebook``. They connect lazily (to what ``%bh_connect`` or the environment names,
else the local store), turn every mistake into a one-line UsageError, and flush the catalog in the background
after each cell that changed it.
"""

from __future__ import annotations

import fnmatch
import functools
import keyword
import os
import re
import time
from collections.abc import Callable
from difflib import get_close_matches
from pathlib import Path
from typing import Any, TypeVar

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Bool, Unicode

from ..config import BucketConfig
from ..database import BucketSQLite
from ..errors import BhError
from .display import human_bytes, human_seconds, shape_text, when

F = TypeVar("F", bound=Callable[..., Any])

KINDS = ("frames", "arrays", "files", "kv")
_KIND_OF = {"frames": "frame", "arrays": "array", "files": "file", "kv": "kv"}
_KV_LINE = re.compile(r"^\s*([^=#][^=]*?)\s*=\s?(.*?)\s*$")


def _friendly(fn: F) -> F:
    """Turn our errors (and argument mistakes) into one-line UsageErrors: a user sees a message, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UsageError:
            raise
        except (BhError, UnicodeDecodeError) as exc:
            raise UsageError(_one_line(str(exc))) from None
        except (ValueError, TypeError, KeyError) as exc:
            if getattr(exc, "__module__", "").startswith("bh_notebook"):
                raise UsageError(_one_line(str(exc))) from None
            raise

    return wrapper  # type: ignore[return-value]


def versioned_stores(bh: BucketSQLite) -> dict[str, Any]:
    """The versioned stores by the kind names the listing shows: frame, array, file (kv has no versions)."""
    return {"frame": bh.frames, "array": bh.arrays, "file": bh.named_files}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _unquote(text: str) -> str:
    """IPython's argument splitter keeps quotes: --note "first rows" arrives as '"first rows"'."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _split_version(spec: str) -> tuple[str, int | None]:
    name, sep, version = spec.rpartition("@")
    if not sep:
        return spec, None
    if not version.isdigit() or int(version) < 1:
        raise UsageError(f"{spec!r}: the version after '@' must be a positive number, like {name}@2")
    return name, int(version)


def _parse_rows(text: str | None) -> slice | None:
    if text is None:
        return None
    m = re.fullmatch(r"\s*(-?\d*)\s*:\s*(-?\d*)\s*", text)
    if not m:
        raise UsageError(f"--rows {text!r}: use START:STOP, like --rows 0:100 or --rows :50")
    start, stop = (int(g) if g else None for g in m.groups())
    return slice(start, stop)


@magics_class
class BHMagics(Magics):
    """Stash data from the notebook into a bucket (or the local store) and get it back."""

    autoflush = Bool(True, help="Snapshot the catalog in the background after each cell that changed it.").tag(
        config=True)
    default_url = Unicode("", help="Bucket URL to connect to when %bh_connect was not used "
                                   "(file:///path, s3://bucket?endpoint_url=..., r2://account/bucket).").tag(config=True)
    name_prefix = Unicode("", help="Prepended to every name put and looked up, e.g. 'alice/'.").tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._bh: BucketSQLite | None = None
        self._config: BucketConfig | None = None
        self._merge_reports: list[Any] = []
        if shell is not None:
            shell.events.register("post_run_cell", self._post_run_cell)

    # -- connection -------------------------------------------------------------------------

    @property
    def bh(self) -> BucketSQLite:
        """The store the magics use, connected on first use."""
        if self._bh is None or not self._bh.started:
            config = self._config
            if config is None:
                config = BucketConfig.from_url(self.default_url) if self.default_url else BucketConfig.from_env()
            bh = BucketSQLite(config).start()
            bh.on_merge = self._merged
            self._bh = bh
            print(self._where(bh))
        return self._bh

    def _where(self, bh: BucketSQLite) -> str:
        c = bh.config
        if c.backend == "local":
            hint = "; %bh_connect URL or BUCKETHEAD_* variables choose a bucket" if self._config is None else ""
            return f"bh_notebook: using the local store at {c.local_path}{hint}"
        return f"bh_notebook: connected to {c.location} (catalog {c.key})"

    def close(self) -> None:
        """Flush and stop the store (the extension is being unloaded)."""
        if self._bh is not None and self._bh.started:
            self._bh.stop()
        self._bh = None
        if self.shell is not None:
            try:
                self.shell.events.unregister("post_run_cell", self._post_run_cell)
            except ValueError:
                pass

    def _merged(self, report: Any) -> None:
        """Called (maybe from the flush thread) when another writer's catalog was merged into ours."""
        self._merge_reports.append(report)

    def _say_merges(self) -> None:
        while self._merge_reports:
            print(f"bh_notebook: {self._merge_reports.pop(0)}")

    def _post_run_cell(self, result: Any = None) -> None:
        self._say_merges()
        bh = self._bh
        if not self.autoflush or bh is None or not bh.started:
            return
        try:
            if bh.dirty:
                bh.request_flush()
        except BhError as exc:  # never break the user's cell over a flush
            print(f"bh_notebook: the catalog could not be flushed yet: {_one_line(str(exc))}")

    def _name(self, name: str) -> str:
        return self.name_prefix + name

    # -- %bh_connect / %bh_status / %bh_flush / %bh_gc ----------------------------------------------

    @magic_arguments()
    @argument("url", nargs="?", help="file:///path, s3://bucket?endpoint_url=..., or r2://<account_id>/<bucket>; "
                                     "without it, the environment's bucket (BUCKETHEAD_*) or the local store")
    @argument("--branch", help="a separate catalog in the same bucket, e.g. for an experiment")
    @line_magic
    @_friendly
    def bh_connect(self, line: str) -> BucketSQLite:
        """Choose the bucket the other magics use, and connect to it."""
        args = parse_argstring(self.bh_connect, line)
        if args.url:
            config = BucketConfig.from_url(args.url)
        elif self.default_url:
            config = BucketConfig.from_url(self.default_url)
        else:
            config = BucketConfig.from_env()
        if args.branch:
            from ..interfaces.base import check_name

            branch = check_name(args.branch, "branch name")
            if "/" in branch:
                raise UsageError("branch names cannot contain '/'")
            import dataclasses

            config = dataclasses.replace(config, key=f"bucketsqlite/branches/{branch}/snap.db",
                                         files_prefix=f"branches/{branch}/files/")
        if self._bh is not None and self._bh.started:
            if self._bh.config == config:  # already connected there: nothing to do
                print(self._where(self._bh))
                return self._bh
            self._bh.stop()
        self._config = config
        self._bh = None
        return self.bh

    @line_magic
    @_friendly
    def bh_status(self, line: str = "") -> None:
        """Where the store is, whether the catalog has unsaved changes, and what it holds (never a secret)."""
        bh = self.bh
        s = bh.status()
        state = "dirty (changes not yet in the bucket)" if s["dirty"] else "clean"
        lines = [
            f"backend:   {s['backend']}",
            f"location:  {s['location']}",
            f"catalog:   {s['snapshot_key']}  [{state}]",
            f"flushed:   {when(s['last_flush'])}" + ("" if s["last_flush"] else " (not in this session)"),
            f"holds:     {s['frames']} frames, {s['arrays']} arrays, {s['named_files']} files, {s['kv_keys']} kv keys; "
            f"{s['blobs']} blobs, {human_bytes(s['blob_bytes'])}",
            f"autoflush: {'on' if self.autoflush else 'off'}",
        ]
        if "last_error" in s:
            lines.append(f"last flush error: {_one_line(s['last_error'])}")
        print("\n".join(lines))

    @line_magic
    @_friendly
    def bh_flush(self, line: str = "") -> None:
        """Snapshot the catalog to the bucket now (uploads nothing when nothing changed)."""
        result = self.bh.force_flush()
        self._say_merges()
        if result.uploaded:
            print(f"catalog saved: {human_bytes(result.nbytes)} in {human_seconds(result.seconds)}")
        else:
            print("catalog unchanged: nothing uploaded")

    @magic_arguments()
    @argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    @argument("--grace", type=float, default=300.0, help="keep unreferenced blobs younger than this (seconds)")
    @line_magic
    @_friendly
    def bh_gc(self, line: str = "") -> None:
        """Delete blobs in the bucket that no catalog row points at (older than the grace period)."""
        args = parse_argstring(self.bh_gc, line)
        r = self.bh.files.gc(args.grace, dry_run=args.dry_run)
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{r.orphans_found} unreferenced blobs: {verb} {r.orphans_deleted}, kept {r.orphans_skipped_grace} "
              f"younger than {args.grace:g} s; {r.dangling_rows_found} rows point at missing blobs (kept)")

    @line_magic
    @_friendly
    def bh_browse(self, line: str = "") -> Any:
        """Browse everything stored: search, sort, preview, then Load, Delete, History or Copy key."""
        from .browser import Browser

        return Browser(self.bh, shell=self.shell)

    # -- %bh_put ------------------------------------------------------------------------------

    @magic_arguments()
    @argument("items", nargs="+", help="variables to store; or one expression, with --as")
    @argument("--as", dest="as_name", metavar="NAME", help="the name to store under (needed for an expression)")
    @argument("--note", help="a note kept with this version")
    @argument("--tag", action="append", default=[], metavar="K=V", help="a tag kept with this version (repeatable)")
    @line_magic
    @_friendly
    def bh_put(self, line: str) -> None:
        """Store variables: a DataFrame as a frame, an ndarray as an array, bytes or a Path as a file, a str in kv.

        Each put of changed data makes a new version; unchanged data uploads nothing. Examples::

            %bh_put df
            %bh_put df arr settings_text
            %bh_put df.head(100) --as sample --note "first rows" --tag stage=raw
        """
        args = parse_argstring(self.bh_put, line)
        metadata: dict[str, str] = {}
        if args.note:
            metadata["note"] = _unquote(args.note)
        for tag in args.tag:
            key, sep, value = _unquote(tag).partition("=")
            if not sep or not key:
                raise UsageError(f"--tag {tag!r}: use KEY=VALUE, like --tag stage=raw")
            metadata[key] = _unquote(value)
        items = [i for i in args.items]
        if args.as_name:
            expr = " ".join(items)
            value = self._evaluate(expr)
            self._put_one(args.as_name, value, metadata)
            return
        for item in items:
            if not item.isidentifier() or keyword.iskeyword(item):
                raise UsageError(f"{item!r} is not a variable name; to store an expression, give it a name: "
                                 f"%bh_put {item} --as NAME")
        values = [(item, self._lookup(item)) for item in items]
        for item, value in values:
            self._put_one(item, value, metadata)

    def _lookup(self, name: str) -> Any:
        ns = self.shell.user_ns
        if name not in ns:
            close = get_close_matches(name, [k for k in ns if not k.startswith("_")], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UsageError(f"no variable named {name!r}{hint}")
        return ns[name]

    def _evaluate(self, expr: str) -> Any:
        if expr.isidentifier():
            return self._lookup(expr)
        try:
            return self.shell.ev(expr)
        except Exception as exc:  # noqa: BLE001 - the user's expression; report it in one line
            raise UsageError(f"could not evaluate {expr!r}: {type(exc).__name__}: {exc}") from None

    def _put_one(self, name: str, value: Any, metadata: dict[str, str]) -> None:
        import numpy as np
        import pandas as pd

        full = self._name(name)
        bh = self.bh
        moved = [0]

        def progress(n: int) -> None:
            moved[0] += n

        started = time.perf_counter()
        if isinstance(value, (np.str_, np.bytes_)):  # numpy scalars of text go where str and bytes go
            value = value.item()
        if _is_frame(value):
            v: Any = bh.frames.put(full, value, metadata=metadata, progress=progress)
            kind, version, size = "frame", f"v{v.version}", f"{shape_text('frame', v)} ({human_bytes(v.nbytes)})"
        elif isinstance(value, (np.ndarray, np.generic)):
            v = bh.arrays.put(full, value, metadata=metadata, progress=progress)
            kind, version, size = "array", f"v{v.version}", f"{shape_text('array', v)} ({human_bytes(v.nbytes)})"
        elif isinstance(value, (bytes, bytearray, memoryview, os.PathLike)):
            if isinstance(value, os.PathLike) and not Path(value).is_file():
                raise UsageError(f"{os.fspath(value)!r} is not a file; give the path of an existing file")
            v = bh.named_files.put(full, value, metadata=metadata, progress=progress)
            label = f"{v.filename}, " if v.filename else ""
            kind, version, size = "file", f"v{v.version}", f"{label}{human_bytes(v.nbytes)}"
        elif isinstance(value, str):
            unchanged = bh.kv.get(full) == value
            if not unchanged:
                bh.kv.set(full, value)
                moved[0] = len(value.encode())  # kept inline in the catalog
            kind, version, size = "kv", "-", f"{len(value):,} chars"
        else:
            raise UsageError(f"cannot store {name!r}, a {type(value).__name__}: %bh_put takes a DataFrame or "
                             "Series (pandas, polars) or a pyarrow Table, an ndarray, bytes, a pathlib.Path or a str")
        took = time.perf_counter() - started
        moved_text = "unchanged" if moved[0] == 0 else (
            f"{human_bytes(moved[0])} {'saved' if kind == 'kv' else 'uploaded'}")
        print(f"{full}  {kind}  {version}  {size}  {moved_text}  {human_seconds(took)}")

    # -- %bh_get ------------------------------------------------------------------------------

    @magic_arguments()
    @argument("name", help="NAME or NAME@VERSION")
    @argument("--as", dest="as_name", metavar="VAR", help="the variable to bind (default: the name)")
    @argument("--columns", help="frames: only these columns, comma-separated")
    @argument("--rows", help="arrays and frames: only rows START:STOP")
    @argument("--kind", choices=KINDS, help="which kind to look in, when a name is in several")
    @line_magic
    @_friendly
    def bh_get(self, line: str) -> Any:
        """Load a stored entry into a variable (named after it, or --as VAR), and return it.

        Examples::

            %bh_get df
            %bh_get df@2 --as df_v2
            sample = %bh_get df --columns price,qty --rows 0:1000
        """
        args = parse_argstring(self.bh_get, line)
        name, version = _split_version(args.name)
        full = self._name(name)
        kind = self._resolve_kind(full, args.kind)
        var = args.as_name or full.rsplit("/", 1)[-1]
        if not var.isidentifier() or keyword.iskeyword(var):
            raise UsageError(f"{var!r} is not a valid variable name; choose one with --as VAR")
        rows = _parse_rows(args.rows)
        columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
        if columns and kind != "frames":
            raise UsageError(f"--columns is for frames; {full!r} is {_article(kind)}")
        bh = self.bh
        if kind == "frames":
            value: Any = bh.frames.get(full, version, columns=columns, rows=rows)
        elif kind == "arrays":
            value = bh.arrays.get(full, version, rows=rows)
        elif kind == "files":
            if rows is not None:
                raise UsageError("--rows is for arrays and frames")
            value = bh.named_files.get(full, version)
        else:
            if version is not None or rows is not None:
                raise UsageError("kv values have no versions or rows")
            value = bh.kv[full]
        self.shell.user_ns[var] = value
        return value

    def _kinds_holding(self, full: str) -> list[str]:
        bh = self.bh
        found = []
        if full in bh.frames:
            found.append("frames")
        if full in bh.arrays:
            found.append("arrays")
        if full in bh.named_files:
            found.append("files")
        if full in bh.kv:
            found.append("kv")
        return found

    def _all_names(self) -> list[str]:
        bh = self.bh
        return sorted({*bh.frames.names(), *bh.arrays.names(), *bh.named_files.names(), *bh.kv.keys()})

    def _resolve_kind(self, full: str, kind: str | None) -> str:
        found = self._kinds_holding(full)
        if kind is not None:
            if kind not in found:
                raise UsageError(self._unknown(full, f" among {kind}"))
            return kind
        if not found:
            raise UsageError(self._unknown(full, ""))
        if len(found) > 1:
            raise UsageError(f"{full!r} is stored as several kinds ({', '.join(found)}); add --kind {found[0]}")
        return found[0]

    def _unknown(self, full: str, where: str) -> str:
        close = get_close_matches(full, self._all_names(), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "; %bh_ls lists what is stored"
        return f"nothing named {full!r}{where}{hint}"

    # -- %bh_ls / %bh_history / %bh_rm --------------------------------------------------------

    @magic_arguments()
    @argument("pattern", nargs="?", help="a glob (sales_*) or a substring of names and notes")
    @argument("--kind", choices=KINDS, help="only this kind")
    @line_magic
    @_friendly
    def bh_ls(self, line: str = "") -> Any:
        """List what is stored, newest first, as a DataFrame (served from the catalog: no download)."""
        args = parse_argstring(self.bh_ls, line)
        return listing(self.bh, args.pattern, args.kind, self.name_prefix)

    @magic_arguments()
    @argument("name", help="the entry whose versions to list")
    @argument("--kind", choices=KINDS[:3], help="which kind, when the name is in several")
    @line_magic
    @_friendly
    def bh_history(self, line: str) -> Any:
        """Every version of an entry, newest first, as a DataFrame."""
        import pandas as pd

        args = parse_argstring(self.bh_history, line)
        full = self._name(args.name)
        kind = self._resolve_kind(full, args.kind)
        if kind == "kv":
            raise UsageError(f"{full!r} is a kv key; kv keeps only the latest value")
        store = versioned_stores(self.bh)[_KIND_OF[kind]]
        rows = [{
            "version": v.version, "created": pd.Timestamp(v.created_at, unit="s").floor("s"),
            "size": human_bytes(v.nbytes), "shape": shape_text(_KIND_OF[kind], v),
            "note": v.metadata.get("note", ""),
            "tags": ", ".join(f"{k}={val}" for k, val in v.metadata.items() if k != "note"),
            "key": v.bh_key[:12],
        } for v in store.history(full)]
        return pd.DataFrame(rows)

    @magic_arguments()
    @argument("name", help="the entry to remove")
    @argument("--version", type=int, help="remove only this version")
    @argument("--kind", choices=KINDS, help="which kind, when the name is in several")
    @line_magic
    @_friendly
    def bh_rm(self, line: str) -> None:
        """Remove an entry (every version) or one version of it; blobs no version uses are deleted."""
        args = parse_argstring(self.bh_rm, line)
        full = self._name(args.name)
        kind = self._resolve_kind(full, args.kind)
        if kind == "kv":
            if args.version is not None:
                raise UsageError("kv values have no versions")
            self.bh.kv.delete(full)
            print(f"removed kv {full!r}")
            return
        store = versioned_stores(self.bh)[_KIND_OF[kind]]
        removed = store.delete(full, args.version)
        versions = ", ".join(str(v.version) for v in removed)
        print(f"removed {_KIND_OF[kind]} {full!r} version{'s' if len(removed) > 1 else ''} {versions}")

    # -- %bh_kv / %%bh_kv ---------------------------------------------------------------------

    @line_cell_magic
    @_friendly
    def bh_kv(self, line: str = "", cell: str | None = None) -> Any:
        """Small settings as text.

        ``%bh_kv`` lists the keys; ``%bh_kv KEY`` shows one value. As a cell magic, ``%%bh_kv`` sets every
        ``key = value`` line of the cell in one transaction (blank lines and # comments allowed; a malformed line
        stores nothing), and ``%%bh_kv KEY`` stores the whole cell text as KEY's value.
        """
        key = line.strip()
        kv = self.bh.kv
        if cell is None:
            if not key:
                keys = [k for k in kv.keys(self.name_prefix)]
                if not keys:
                    print("no kv keys yet; set some with %%bh_kv")
                else:
                    print("\n".join(keys))
                return None
            return kv[self._name(key)]
        if key:
            if " " in key:
                raise UsageError(f"%%bh_kv takes one KEY (got {key!r}); the cell's text becomes its value")
            kv.set(self._name(key), cell)
            print(f"{self._name(key)}  kv  {len(cell):,} chars saved")
            return None
        pairs: list[tuple[str, str]] = []
        for number, text in enumerate(cell.splitlines(), start=1):
            stripped = text.strip()
            if not stripped or stripped.startswith("#"):
                continue
            m = _KV_LINE.match(text)
            if not m or not m.group(1).strip():
                raise UsageError(f"line {number}: {stripped!r} is not 'key = value'; nothing was stored")
            pairs.append((self._name(m.group(1).strip()), m.group(2)))
        if not pairs:
            raise UsageError("the cell has no 'key = value' lines; nothing was stored")
        kv.update(pairs)
        print(f"{len(pairs)} kv key{'s' if len(pairs) != 1 else ''} saved: {', '.join(k for k, _ in pairs)}")
        return None


def _article(kind: str) -> str:
    return {"frames": "a frame", "arrays": "an array", "files": "a file", "kv": "a kv value"}[kind]


def listing(bh: BucketSQLite, pattern: str | None = None, kind: str | None = None, prefix: str = "") -> Any:
    """What is stored, newest first, as a DataFrame: name, kind, version, size, shape, modified, note."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for k, store in versioned_stores(bh).items():
        if kind not in (None, k + "s"):
            continue
        for v in store.latest():
            rows.append({"name": v.name, "kind": k, "version": v.version, "size": v.nbytes,
                         "shape": shape_text(k, v), "modified": v.created_at,
                         "note": v.metadata.get("note", "")})
    if kind in (None, "kv"):
        for key in bh.kv.keys(prefix):
            data = bh.kv.get_bytes(key) or b""
            rows.append({"name": key, "kind": "kv", "version": None, "size": len(data), "shape": "",
                         "modified": bh.kv.updated_at(key), "note": ""})
    if prefix:
        rows = [r for r in rows if r["name"].startswith(prefix)]
    if pattern:
        glob = any(ch in pattern for ch in "*?[")
        rows = [r for r in rows if (fnmatch.fnmatchcase(r["name"], pattern) if glob else
                                    pattern.lower() in r["name"].lower() or pattern.lower() in r["note"].lower())]
    df = pd.DataFrame(rows, columns=["name", "kind", "version", "size", "shape", "modified", "note"])
    df["version"] = df["version"].astype("Int64")
    df = df.sort_values("modified", ascending=False, kind="stable").reset_index(drop=True)  # exact times first
    df["modified"] = pd.to_datetime(df["modified"], unit="s").dt.floor("s")  # then shown to the second
    return df


def _is_frame(value: Any) -> bool:
    """A value %bh_put stores as a frame: a pandas DataFrame or Series, a polars DataFrame, LazyFrame or Series,
    a pyarrow Table (polars is never imported for this)."""
    import pandas as pd
    import pyarrow as pa

    if isinstance(value, (pd.DataFrame, pd.Series, pa.Table, pa.RecordBatch)):
        return True
    return type(value).__module__.split(".")[0] == "polars" and type(value).__name__ in (
        "DataFrame", "LazyFrame", "Series")
