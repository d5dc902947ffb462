"""The IPython magics: ``%bh_put``, ``%bh_get``, ``%bh_ls``, ``%%bh_kv`` and friends.

Registered by ``%load_ext bh_notebook``. They connect lazily (to what ``%bh_connect`` or the environment names,
else the local store), turn every mistake into a one-line UsageError, and flush the catalog in the background
after each cell that changed it.
"""

from __future__ import annotations

import argparse
import contextlib
import dis
import functools
import keyword
import logging
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from difflib import get_close_matches
from pathlib import Path
from typing import Any, TypeVar, cast

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Dict, Unicode

from ..config import BucketConfig, config_for
from ..database import BucketSQLite
from ..errors import BhError
from ..interfaces.registry import by_plural, listed_classes
from .display import human_bytes, human_seconds, timestamps, when
from .listing import kind_words, kinds_holding, listed_stores, listing, words

F = TypeVar("F", bound=Callable[..., Any])
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


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _words(line: str) -> list[str]:
    """Split a magic's line at whitespace outside quotes, like a shell, keeping each word's quotes.

    ``_unquote`` then gives a word's value with shell semantics; expressions (``%bh_put df[df.c == "x"] --as s``)
    keep their quotes.
    """
    words: list[str] = []
    word: list[str] = []
    quote = ""
    started = False
    i = 0
    while i < len(line):
        ch = line[i]
        if quote:
            word.append(ch)
            if ch == "\\" and quote == '"' and i + 1 < len(line):
                word.append(line[i + 1])
                i += 1
            elif ch == quote:
                quote = ""
        elif ch.isspace():
            if started:
                words.append("".join(word))
                word, started = [], False
        else:
            word.append(ch)
            started = True
            if ch in "'\"":
                quote = ch
            elif ch == "\\" and i + 1 < len(line):
                word.append(line[i + 1])
                i += 1
        i += 1
    if quote:
        raise UsageError(f"{line.strip()!r} has an unclosed {quote}; close the quote")
    if started:
        words.append("".join(word))
    return words


def _unquote(word: str) -> str:
    """A word's value with shell semantics: quotes removed, backslash escapes applied ('' is the empty string)."""
    if not any(ch in word for ch in "'\"\\"):
        return word
    try:
        return "".join(shlex.split(word))
    except ValueError as exc:  # a trailing backslash
        raise UsageError(f"{word!r}: {exc}; quote the word or escape the backslash (\\\\)") from None


#: Options whose value may start with '-' (``--rows -3:``); argparse would take it for an option.
_DASH_VALUES = ("--rows",)


def _parse(magic: Any, line: str, raw: tuple[str, ...] = ()) -> Any:
    """Parse a magic's line with its @magic_arguments parser, with shell quoting; ``raw`` names keep their quotes."""
    words = _words(line)
    merged: list[str] = []
    for word in words:
        if merged and merged[-1] in _DASH_VALUES and word.startswith("-"):
            merged[-1] = f"{merged[-1]}={word}"
        else:
            merged.append(word)
    args = magic.parser.parse_args(merged)
    for name, value in vars(args).items():
        if name in raw:
            continue
        if isinstance(value, str):
            setattr(args, name, _unquote(value))
        elif isinstance(value, list):
            setattr(args, name, [_unquote(v) if isinstance(v, str) else v for v in value])
    return args


def _kind_arg(text: str) -> str:
    """``--kind``: a kind as the listing shows it (frame, array, file, kv, ...), or its plural; gives the plural."""
    for cls in listed_classes():
        if text in (cls.kind, cls.plural):
            return cls.plural
    raise argparse.ArgumentTypeError(f"{text!r} is not a kind; use {kind_words()}")


def _singular(plural: str) -> str:
    return by_plural()[plural].kind


def _article(plural: str) -> str:
    return by_plural()[plural].article


def _taking(option: str) -> str:
    """The kinds whose load takes ``option``, for a message: 'arrays and frames'."""
    return words(sorted(c.plural for c in listed_classes() if option in c.load_options), "and")


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
    timeouts = Dict({}, help="Seconds for S3 requests, overriding the bucket URL's: any of connect_timeout, "
                             "read_timeout, deadline, max_attempts (tries), e.g. "
                             "%config BHMagics.timeouts = {'deadline': 60}. Applies from the next connection."
                    ).tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._bh: BucketSQLite | None = None
        self._config: BucketConfig | None = None
        self._base: BucketConfig | None = None  # the bucket %bh_connect URL chose, before any --branch
        self._merge_reports: list[Any] = []
        if shell is not None:
            shell.events.register("post_run_cell", self._post_run_cell)
        # The magics print merge reports in the cell that caused them; the same report logged as a warning
        # would reach the cell's stderr too (Python's last-resort handler), so the store's logger drops it.
        logging.getLogger("bh_notebook").addFilter(self._not_a_merge_report)

    # -- connection -------------------------------------------------------------------------

    @property
    def bh(self) -> BucketSQLite:
        """The store the magics use, connected on first use."""
        if self._bh is None or not self._bh.started:
            config = self._config
            if config is None:
                config = config_for(self.default_url)
            bh = BucketSQLite(self._with_timeouts(config)).start()
            bh.on_merge = self._merged
            bh.auto_pull = True  # an idle kernel sees teammates' entries (one HEAD per flush interval)
            self._bh = bh
            print(self._where(bh))
        return self._bh

    def _with_timeouts(self, config: BucketConfig) -> BucketConfig:
        """``config`` with the ``timeouts`` trait applied."""
        known = ("connect_timeout", "read_timeout", "deadline", "max_attempts")
        unknown = sorted(str(k) for k in self.timeouts if k not in known)
        if unknown:
            raise UsageError(f"BHMagics.timeouts: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
        if not self.timeouts:
            return config
        import dataclasses

        return dataclasses.replace(config, **self.timeouts)

    def _where(self, bh: BucketSQLite) -> str:
        from ..branches import MAIN, branch_of

        c = bh.config
        branch = branch_of(c.key)
        on = f", branch {branch!r}" if branch != MAIN else ""
        if c.backend == "local":
            hint = "; %bh_connect URL or BUCKETHEAD_* variables choose a bucket" if self._config is None else ""
            return f"bh_notebook: using the local store at {c.local_path}{on}{hint}"
        return f"bh_notebook: connected to {c.location} (catalog {c.key}{on})"

    def close(self) -> None:
        """Flush and stop the store (the extension is being unloaded)."""
        if self._bh is not None and self._bh.started:
            self._bh.stop()
        self._bh = None
        logging.getLogger("bh_notebook").removeFilter(self._not_a_merge_report)
        if self.shell is not None:
            try:
                self.shell.events.unregister("post_run_cell", self._post_run_cell)
            except ValueError:
                pass

    @staticmethod
    def _not_a_merge_report(record: logging.LogRecord) -> bool:
        from ..merge import MergeReport

        return not (isinstance(record.args, tuple) and record.args and isinstance(record.args[0], MergeReport))

    def _merged(self, report: Any) -> None:
        """Called (maybe from the flush thread) when another writer's catalog was merged into ours."""
        self._merge_reports.append(report)

    def _say_merges(self) -> None:
        while self._merge_reports:
            print(f"bh_notebook: {self._merge_reports.pop(0)}")

    def _post_run_cell(self, result: Any = None) -> None:
        bh = self._bh
        try:
            if self.autoflush and bh is not None and bh.started and bh.dirty:
                if bh.last_error is None:
                    # Durable when the cell has finished: the commit happens before the cell returns (it costs
                    # the cell one commit), so a kernel killed right after loses nothing the cell stored.
                    bh.force_flush()
                else:  # the bucket failed last time: retry in the background rather than hold every cell,
                    bh.keep_unsaved()  # and keep this cell's work on local disk meanwhile
                    bh.request_flush()
        except BhError as exc:  # never break the user's cell over a flush
            print(f"bh_notebook: the catalog could not be saved yet ({_one_line(str(exc))}); it is kept in "
                  "memory and saved by the next flush")
        self._say_merges()

    def _pull(self) -> None:
        """Take in other writers' commits before answering from the catalog (one HEAD when nothing is new)."""
        try:
            self.bh.pull()
        except BhError as exc:  # offline: answer from what this kernel has
            print(f"bh_notebook: could not check the bucket for other writers' changes ({_one_line(str(exc))}); "
                  "showing this kernel's catalog")

    def _name(self, name: str) -> str:
        return self.name_prefix + name

    # -- %bh_connect / %bh_status / %bh_flush / %bh_gc ----------------------------------------------

    @magic_arguments()
    @argument("url", nargs="?", help="file:///path, s3://bucket?endpoint_url=..., or r2://<account_id>/<bucket>; "
                                     "without it, the store in use (else the environment's bucket, BUCKETHEAD_*, "
                                     "or the local store)")
    @argument("--branch", help="a branch of the bucket's catalog (made from the main catalog if it is new); "
                               "see %%bh_branch")
    @line_magic
    @_friendly
    def bh_connect(self, line: str) -> BucketSQLite:
        """Choose the bucket the other magics use, connect to it, and return the store.

        ``bh = %bh_connect`` with no URL returns the store in use, as it is (no reconnect); the first time it
        connects to the environment's bucket or the local store. A connection that fails keeps the previous one.
        """
        args = _parse(self.bh_connect, line)
        if not args.url and args.branch is None:
            if self._bh is not None and self._bh.started:
                print(self._where(self._bh))
                return self._bh
            return self.bh
        if args.url:
            base = BucketConfig.from_url(args.url)
        elif self._base is not None:
            base = self._base
        else:
            base = config_for(self.default_url)
        config = base
        if args.branch is not None:
            if not args.branch.strip():
                raise UsageError("--branch needs a name, like --branch experiment; leave it out for the main catalog")
            import dataclasses

            from ..branches import MAIN, branch_key, check_branch_name

            branch = args.branch if args.branch == MAIN else check_branch_name(args.branch)
            config = dataclasses.replace(base, key=branch_key(base.key, branch))
            if branch != MAIN:
                self._ensure_branch(base, branch)
        return self._connect_to(config, base)

    def _ensure_branch(self, base: BucketConfig, name: str) -> None:
        """Make branch ``name`` from the main catalog of ``base`` when the bucket has no such branch yet."""
        current = self._bh if self._bh is not None and self._bh.started else None
        main = current if current is not None and current.config == self._with_timeouts(base) else None
        try:
            owner = main or BucketSQLite(self._with_timeouts(base)).start()
        except BhError as exc:
            raise UsageError(f"could not connect to {base.location}: {_one_line(str(exc))}") from None
        try:
            if name not in owner.branches:
                owner.branches.create(name)
                print(f"created branch {name!r} from the main catalog")
        finally:
            if owner is not main:
                owner.stop()

    def _connect_to(self, config: BucketConfig, base: BucketConfig) -> BucketSQLite:
        config = self._with_timeouts(config)
        old = self._bh if self._bh is not None and self._bh.started else None
        if old is not None and old.config == config:  # already connected there: nothing to do
            print(self._where(old))
            return old
        try:
            new = BucketSQLite(config).start()  # connect first: a failure leaves the working store in place
        except BhError as exc:
            still = (f"still connected to {old.config.location}" if old is not None
                     else "not connected; the other magics use the default store")
            raise UsageError(f"could not connect to {config.location}: {_one_line(str(exc))} ({still})") from None
        if old is not None:
            old.stop()
        new.on_merge = self._merged
        new.auto_pull = True
        self._base = base
        self._config = config
        self._bh = new
        print(self._where(new))
        return new

    @magic_arguments()
    @argument("action", choices=["list", "create", "switch", "delete", "merge"],
              help="list the branches; create NAME from the catalog in use; switch to NAME (or main); delete NAME; "
                   "merge NAME into the catalog in use")
    @argument("name", nargs="?", help="the branch (main is the main catalog)")
    @argument("--overwrite", action="store_true", help="with create: start an existing branch again from here")
    @line_magic
    @_friendly
    def bh_branch(self, line: str) -> Any:
        """Branches of the bucket's catalog: they share its blobs and commit on their own.

        ``%bh_branch create experiment`` then ``%bh_branch switch experiment``; work; ``%bh_branch switch main`` and
        ``%bh_branch merge experiment`` to take its changes in. ``%bh_branch list`` marks the one in use."""
        import dataclasses

        from ..branches import MAIN, branch_key, root_key

        args = _parse(self.bh_branch, line)
        bh = self.bh
        branches = bh.branches
        if args.action == "list":
            for name in branches.list():
                print(("* " if name == branches.current else "  ") + name)
            return None
        if not args.name:
            raise UsageError(f"%bh_branch {args.action} needs a branch name, like %bh_branch {args.action} "
                             "experiment")
        if args.action == "create":
            branches.create(args.name, overwrite=args.overwrite)
            print(f"created branch {args.name!r} from {branches.current!r}; %bh_branch switch {args.name} to "
                  "work on it")
            return None
        if args.action == "switch":
            if args.name != MAIN and args.name not in branches:
                raise UsageError(f"no branch {args.name!r}; %bh_branch create {args.name} makes one from the "
                                 "catalog in use")
            root = dataclasses.replace(bh.config, key=root_key(bh.config.key))
            return self._connect_to(dataclasses.replace(root, key=branch_key(root.key, args.name)),
                                    self._base or root)
        if args.action == "delete":
            existed = branches.delete(args.name)
            print(f"deleted branch {args.name!r}; its blobs stay until %bh_gc finds nothing uses them"
                  if existed else f"no branch {args.name!r}: nothing deleted")
            return None
        report = branches.merge(args.name)  # merge
        print(f"merged branch {args.name!r} into {branches.current!r}: {report}")
        return report

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
            f"holds:     {', '.join(f'{s[c.status_key]} {c.count_noun}' for c in listed_classes())}; "
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

    @line_magic
    @_friendly
    def bh_pull(self, line: str = "") -> Any:
        """Take in what other writers committed since this kernel last synced, and say what arrived.

        %bh_ls, %bh_history, the browser's Refresh and a %bh_get of a name not found here pull first on their own;
        an idle kernel also pulls on the flush timer.
        """
        if line.strip():
            raise UsageError("%bh_pull takes no arguments")
        report = self.bh.pull()
        if report is None:
            print("nothing new in the bucket")
            return None
        self._merge_reports = [r for r in self._merge_reports if r is not report]  # shown here, not again
        print(f"pulled: {report}")
        return report

    @magic_arguments()
    @argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    @argument("--grace", type=float, default=300.0, help="keep unreferenced blobs younger than this (seconds)")
    @line_magic
    @_friendly
    def bh_gc(self, line: str = "") -> None:
        """Delete blobs no entry uses any more (unused for longer than the grace period, by the bucket's clock).

        Teammates' commits are taken in and this kernel's changes committed first, so only the latest shared
        catalog decides. A grace under a few minutes is safe only while nobody else is putting."""
        args = _parse(self.bh_gc, line)
        if not args.grace >= 0:
            raise UsageError(f"--grace takes a number of seconds >= 0, not {args.grace:g}; the default is 300")
        self._pull()  # judge from the latest shared catalog, not only this kernel's
        r = self.bh.files.gc(args.grace, dry_run=args.dry_run)
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{r.orphans_found} unreferenced blobs: {verb} {r.orphans_deleted}, kept {r.orphans_skipped_grace} "
              f"younger than {args.grace:g} s; {r.dangling_rows_found} rows point at missing blobs (kept)"
              + (f"; {r.kept_for_other_catalogs} more kept for a branch or the previous snapshot"
                 if r.kept_for_other_catalogs else ""))

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
    @argument("--append", action="store_true",
              help="frames: add the rows after the latest version's, uploading only them")
    @line_magic
    @_friendly
    def bh_put(self, line: str) -> None:
        """Store variables: a DataFrame as a frame, an ndarray as an array, bytes or a Path as a file, a str in kv.

        Each put of changed data makes a new version; unchanged data uploads nothing. Examples::

            %bh_put df
            %bh_put df arr settings_text
            %bh_put df.head(100) --as sample --note "first rows" --tag stage=raw
            %bh_put today --as events --append
        """
        args = _parse(self.bh_put, line, raw=("items",))
        metadata: dict[str, str] = {}
        if args.note:
            metadata["note"] = args.note
        for tag in args.tag:
            key, sep, value = tag.partition("=")
            if not sep or not key:
                raise UsageError(f"--tag {tag!r}: use KEY=VALUE, like --tag stage=raw")
            metadata[key] = value
        items = [i for i in args.items]
        if args.as_name:
            expr = " ".join(items)
            value = self._evaluate(expr)
            self._put_one(args.as_name, value, metadata, append=args.append)
            return
        for item in items:
            if not item.isidentifier() or keyword.iskeyword(item):
                raise UsageError(f"{item!r} is not a variable name; to store an expression, give it a name: "
                                 f"%bh_put {item} --as NAME")
        values = [(item, self._lookup(item)) for item in items]
        for item, value in values:
            self._put_one(item, value, metadata, append=args.append)

    def _lookup(self, name: str) -> Any:
        assert self.shell is not None
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
            assert self.shell is not None
            return self.shell.ev(expr)
        except Exception as exc:  # noqa: BLE001 - the user's expression; report it in one line
            raise UsageError(f"could not evaluate {expr!r}: {type(exc).__name__}: {exc}") from None

    def _put_one(self, name: str, value: Any, metadata: dict[str, str], *, append: bool = False) -> None:
        import numpy as np

        full = self._name(name)
        bh = self.bh
        started = time.perf_counter()
        if isinstance(value, (np.str_, np.bytes_)):  # numpy scalars of text go where str and bytes go
            value = value.item()
        # The first listed kind that takes the value stores it: frame, array, file (bytes or a path), kv (a str).
        store: Any = next((s for s in listed_stores(bh).values() if s.accepts(value)), None)
        if store is None:
            raise UsageError(f"cannot store {name!r}, a {type(value).__name__}: %bh_put takes a DataFrame or "
                             "Series (pandas, polars) or a pyarrow Table, an ndarray, bytes, a pathlib.Path or a str")
        kind = store.kind
        if append and not hasattr(store, "append"):
            raise UsageError(f"--append adds rows to a frame; {name!r} is a {type(value).__name__}, stored as a "
                             f"{kind}. Drop --append to store it as a new version")
        if isinstance(value, os.PathLike) and not Path(value).is_file():
            raise UsageError(f"{os.fspath(value)!r} is not a file; give the path of an existing file")
        if not store.versioned:  # kv: the value is kept inline in the catalog
            unchanged = store.get(full) == value
            if not unchanged:
                store.set(full, value)
            outcome = "unchanged" if unchanged else f"{human_bytes(len(value.encode()))} saved"
            print(f"{full}  {kind}  -  {len(value):,} chars  {outcome}  "
                  f"{human_seconds(time.perf_counter() - started)}")
            return
        before = store.info(full).version if full in store else None
        with _counting_transfers(bh) as moved:  # the store's own progress bars show, and we learn the bytes sent
            if append:
                v = store.append(full, value, metadata=metadata or None)
            else:
                v = store.put(full, value, metadata=metadata)
        shape, caption = store.shape_text(v), store.caption(v)
        if shape:
            size = f"{shape} ({human_bytes(v.nbytes)})"
        else:  # a named file: its file name, if it came with one
            size = f"{caption + ', ' if caption else ''}{human_bytes(v.nbytes)}"
        if v.version == before:
            outcome = "unchanged"
        elif moved[0]:
            outcome = f"{human_bytes(moved[0])} uploaded"
        else:
            outcome = "new version, nothing uploaded (its bytes were already stored)"
        print(f"{full}  {kind}  v{v.version}  {size}  {outcome}  {human_seconds(time.perf_counter() - started)}")

    # -- %bh_get ------------------------------------------------------------------------------

    @magic_arguments()
    @argument("name", help="NAME or NAME@VERSION")
    @argument("--as", dest="as_name", metavar="VAR", help="the variable to bind (default: the name)")
    @argument("--columns", help="frames: only these columns, comma-separated")
    @argument("--rows", help="arrays and frames: only rows START:STOP")
    @argument("--kind", type=_kind_arg, help=f"{kind_words()}: which kind to look in, when a name is in several")
    @line_magic
    @_friendly
    def bh_get(self, line: str) -> Any:
        """Load a stored entry and return it; the statement form also binds it to a variable.

        ``%bh_get NAME`` binds the variable named after the entry (or ``--as VAR``). In the assignment form,
        ``x = %bh_get NAME``, only ``x`` is bound (and ``--as VAR`` if given): a live variable of the entry's
        name is never replaced behind your back. Examples::

            %bh_get df
            %bh_get df@2 --as df_v2
            sample = %bh_get df --columns price,qty --rows 0:1000
            last_rows = %bh_get arr --rows -3:
        """
        args = _parse(self.bh_get, line)
        name, version = _split_version(args.name)
        full = self._name(name)
        kind = self._resolve_kind(full, args.kind)
        var = args.as_name or full.rsplit("/", 1)[-1]
        if not var.isidentifier() or keyword.iskeyword(var):
            raise UsageError(f"{var!r} is not a valid variable name; choose one with --as VAR")
        rows = _parse_rows(args.rows)
        columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
        store = listed_stores(self.bh)[_singular(kind)]
        if columns and "columns" not in store.load_options:
            raise UsageError(f"--columns is for {_taking('columns')}; {full!r} is {store.article}")
        if not store.versioned and (version is not None or rows is not None):
            raise UsageError(f"{store.kind} values have no versions or rows")
        if rows is not None and "rows" not in store.load_options:
            raise UsageError(f"--rows is for {_taking('rows')}")
        options: dict[str, Any] = {}
        if columns:
            options["columns"] = columns
        if rows is not None:
            options["rows"] = rows
        value: Any = store.load(full, version, **options)
        assert self.shell is not None
        if args.as_name or not _result_is_assigned(self.shell):
            self.shell.user_ns[var] = value
        return value

    def _kinds_holding(self, full: str) -> list[str]:
        """The plurals of the listed kinds holding an entry named ``full``, in the registry's order."""
        return kinds_holding(self.bh, full)

    def _all_names(self) -> list[str]:
        names: set[str] = set()
        for store in listed_stores(self.bh).values():
            names.update(getattr(store, "names")())
        return sorted(names)

    def _resolve_kind(self, full: str, kind: str | None) -> str:
        found = self._kinds_holding(full)
        if not found or (kind is not None and kind not in found):
            self._pull()  # perhaps a teammate stored it since this kernel last synced
            found = self._kinds_holding(full)
        if kind is not None:
            if kind not in found:
                if found:  # stored, but as another kind: say which, no "did you mean" it
                    raise UsageError(f"{full!r} is {_article(found[0])}, not {_article(kind)}; use --kind "
                                     f"{_singular(found[0])} or leave --kind out")
                raise UsageError(self._unknown(full, f" among {kind}"))
            return kind
        if not found:
            raise UsageError(self._unknown(full, ""))
        if len(found) > 1:
            raise UsageError(f"{full!r} is stored as several kinds ({', '.join(found)}); add --kind {found[0]}")
        return found[0]

    def _unknown(self, full: str, where: str) -> str:
        close = get_close_matches(full, [n for n in self._all_names() if n != full], n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "; %bh_ls lists what is stored"
        return f"nothing named {full!r}{where}{hint}"

    # -- %bh_ls / %bh_history / %bh_rm --------------------------------------------------------

    @magic_arguments()
    @argument("pattern", nargs="?", help="a glob (sales_*) or a substring of names and notes")
    @argument("--kind", type=_kind_arg, help=f"only this kind: {kind_words()}")
    @line_magic
    @_friendly
    def bh_ls(self, line: str = "") -> Any:
        """List what is stored, newest first, as a DataFrame (served from the catalog: no download).

        Sizes are in human units (KiB, MiB); times are local, with their zone.
        """
        args = _parse(self.bh_ls, line)
        self._pull()
        frame = listing(self.bh, args.pattern, args.kind, self.name_prefix)
        frame["size"] = frame["size"].map(human_bytes).astype(object)  # the units %bh_history shows
        return frame

    @magic_arguments()
    @argument("name", help="the entry whose versions to list")
    @argument("--kind", type=_kind_arg, help=f"{kind_words(versioned=True)}: which kind, when the name is in several")
    @line_magic
    @_friendly
    def bh_history(self, line: str) -> Any:
        """Every version of an entry, newest first, as a DataFrame."""
        import pandas as pd

        args = _parse(self.bh_history, line)
        self._pull()
        full = self._name(args.name)
        kind = self._resolve_kind(full, args.kind)
        store: Any = listed_stores(self.bh)[_singular(kind)]
        if not store.versioned:
            raise UsageError(f"{full!r} is a {store.kind} key; {store.kind} keeps only the latest value")
        rows = [{
            "version": v.version, "created": v.created_at,
            "size": human_bytes(v.nbytes), "shape": store.shape_text(v),
            "note": v.metadata.get("note", ""),
            "tags": ", ".join(f"{k}={val}" for k, val in v.metadata.items() if k != "note"),
            "key": v.bh_key[:12],
        } for v in store.history(full)]
        frame = pd.DataFrame(rows, columns=["version", "created", "size", "shape", "note", "tags", "key"])
        frame["created"] = timestamps(frame["created"].astype("float64"))
        return frame

    @magic_arguments()
    @argument("name", help="the entry to remove")
    @argument("--version", type=int, help="remove only this version")
    @argument("--kind", type=_kind_arg, help=f"{kind_words()}: which kind, when the name is in several")
    @line_magic
    @_friendly
    def bh_rm(self, line: str) -> None:
        """Remove an entry (every version) or one version of it; blobs no version uses are deleted."""
        args = _parse(self.bh_rm, line)
        full = self._name(args.name)
        kind = self._resolve_kind(full, args.kind)
        store: Any = listed_stores(self.bh)[_singular(kind)]
        if not store.versioned:
            if args.version is not None:
                raise UsageError(f"{store.kind} values have no versions")
            store.delete(full)
            print(f"removed {store.kind} {full!r}")
            return
        removed = store.delete(full, args.version)
        versions = ", ".join(str(v.version) for v in removed)
        print(f"removed {store.kind} {full!r} version{'s' if len(removed) > 1 else ''} {versions}")

    # -- %bh_kv / %%bh_kv ---------------------------------------------------------------------

    @line_cell_magic
    @_friendly
    def bh_kv(self, line: str = "", cell: str | None = None) -> Any:
        """Small settings as text.

        ``%bh_kv`` lists the keys; ``%bh_kv KEY`` shows one value. As a cell magic, ``%%bh_kv`` sets every
        ``key = value`` line of the cell in one transaction (a malformed line stores nothing), and
        ``%%bh_kv KEY`` stores the whole cell text as KEY's value, untouched.

        In ``key = value`` lines, blank lines and lines starting with ``#`` are skipped; a ``#`` after whitespace
        outside quotes starts a comment (``lr = 0.01  # tuned``); a value wholly in matching quotes loses them
        (``name = "a # b"`` stores ``a # b``); a ``#`` inside a word stays (``url = http://h/#top``).
        """
        words = [_unquote(w) for w in _words(line)]
        if len(words) > 1:
            raise UsageError(f"%bh_kv takes one KEY (got {line.strip()!r}); quote a key that holds spaces")
        key = words[0] if words else ""
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
            pairs.append((self._name(m.group(1).strip()), _kv_value(m.group(2))))
        if not pairs:
            raise UsageError("the cell has no 'key = value' lines; nothing was stored")
        kv.update(pairs)
        print(f"{len(pairs)} kv key{'s' if len(pairs) != 1 else ''} saved: {', '.join(k for k, _ in pairs)}")
        return None


@contextlib.contextmanager
def _counting_transfers(bh: BucketSQLite) -> Iterator[list[int]]:
    """Count the bytes the store uploads, while its usual progress bars (``progress_factory``) still show."""
    moved = [0]
    files = bh.files
    factory = files.progress_factory

    def counting(label: str, total: int | None) -> Any:
        bar = factory(label, total) if factory is not None else None
        return _Counted(bar, moved)

    files.progress_factory = counting
    try:
        yield moved
    finally:
        files.progress_factory = factory


class _Counted:
    """A progress callback that adds the bytes to a counter and passes them on to a bar."""

    def __init__(self, bar: Any, moved: list[int]) -> None:
        self.bar = bar
        self.moved = moved

    def __call__(self, n: int) -> None:
        self.moved[0] += n
        if self.bar is not None:
            self.bar(n)

    def close(self) -> None:
        if self.bar is not None and hasattr(self.bar, "close"):
            self.bar.close()


def _kv_value(text: str) -> str:
    """The value of a ``key = value`` line: an inline ``  # comment`` dropped, then surrounding quotes."""
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            text = text[:i]
            break
    value = text.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return value


def _result_is_assigned(shell: Any) -> bool:
    """True when the code running this magic assigns its result, as in ``x = %bh_get df``.

    IPython runs that line as ``x = get_ipython().run_line_magic(...)`` inside code it compiled from the cell (or,
    under ``%time``, from the magic's line). In that code's bytecode the instructions after the call either store
    the result (an assignment) or discard or display it (the statement form). Calls of ``run_line_magic`` from
    ordinary Python code count as the statement form.
    """
    cells = getattr(getattr(shell, "compile", None), "_filename_map", None) or {}
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_code.co_name == "run_line_magic"
                                     and "IPython" in frame.f_code.co_filename):
        frame = frame.f_back  # type: ignore[assignment]
    caller = frame.f_back if frame is not None else None
    if caller is None:
        return False
    source = caller.f_code.co_filename
    if source not in cells and not (source.startswith("<") and not source.startswith("<decorator")):
        return False  # a module or a test calling run_line_magic
    for op in dis.get_instructions(caller.f_code):
        if op.offset <= caller.f_lasti:
            continue
        if op.opname.startswith(("STORE_", "UNPACK_")):  # x = ..., d[k] = ... (the target is loaded first)
            return True
        if op.opname in ("POP_TOP", "PRINT_EXPR", "RETURN_VALUE", "RETURN_CONST"):
            return False
    return False
