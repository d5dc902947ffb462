"""The command line: ``bh-notebook`` (or ``python -m bh_notebook``), the magics' verbs for shells and scripts.

Every command opens the store the way the magics do (``--url``, else the ``BUCKETHEAD_*`` variables, else the
local store), does one thing, and commits what it changed before it exits (``BucketSQLite.stop()``). Our named
errors (``BhError``) end the command with a one-line message and exit code 1; click's usage errors exit 2;
``check`` exits 3 when it finds problems; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from .branches import MAIN, branch_key, root_key
from .config import config_for
from .database import BucketSQLite
from .errors import BhError, NotFound
from .notebook.display import human_bytes, when
from .notebook.listing import KIND_OF, KINDS, kinds_holding, listing, versioned_stores
from .storage import open_bucket
from .storage.snapshot import SnapshotConfig

#: Exit codes scripts can rely on.
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PROBLEMS = 0, 1, 2, 3

_KIND_OF = KIND_OF
_FRAME_SUFFIXES = (".parquet", ".pq", ".csv")

EXIT_CODES = """\b
Exit codes:
  0  ok
  1  an error of bh_notebook (a missing name, an unreachable bucket, a bad URL, ...): one line on stderr
  2  a usage error (an unknown option, a missing argument)
  3  check found problems
"""


def _one_line(text: str) -> str:
    return " ".join(text.split())


class Failed(click.ClickException):
    """A named error of ours, shown as one line on stderr; exit code 1."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


class _Cli(click.Group):
    """The group: turns our named errors into one-line messages (exit 1) wherever a command raises them."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BhError as exc:
            raise Failed(str(exc) or type(exc).__name__) from None


@contextlib.contextmanager
def _store(ctx: click.Context, *, restore_from: str = "latest") -> Iterator[BucketSQLite]:
    """The started store of ``--url`` (else the environment, else the local store), committed and closed after."""
    url = ctx.find_root().params.get("url")
    config = config_for(url)
    branch = ctx.find_root().params.get("branch")
    if branch is not None and branch != MAIN:
        config = dataclasses.replace(config, key=branch_key(root_key(config.key), branch))
        probe = open_bucket(config)
        try:
            if probe.head(config.key) is None:
                raise NotFound(f"no branch {branch!r} in {config.location}; 'bh-notebook branch create {branch}' "
                               "makes one from the main catalog")
        finally:
            probe.close()
    bh = BucketSQLite(config, SnapshotConfig(interval_seconds=0), restore_from=restore_from)
    # One command is one short session: refresh the whole catalog at the key at most once a minute, not per command.
    bh.checkpoint_at_stop_seconds = 60.0
    # Progress bars go to a terminal only: a script's stderr stays clean.
    bh.progress_factory = _terminal_progress if sys.stderr.isatty() else None
    bh.start()
    try:
        yield bh
    except BaseException:
        try:
            bh.stop()  # commit what was done before the failure, then report the failure itself
        except BhError:
            pass
        raise
    try:
        bh.stop()
    except BhError as exc:
        kept = f" (kept at {bh.unsaved_at}; the next command on this bucket pushes it)" if bh.unsaved_at else ""
        raise Failed(f"the catalog could not be committed: {exc}{kept}") from None


def _terminal_progress(label: str, total: int | None) -> Any:
    from .notebook.progress import Progress

    return Progress(label, total, widget=False)


def _emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


def _iso(ts: float | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat()


def _split_version(spec: str) -> tuple[str, int | None]:
    name, sep, version = spec.rpartition("@")
    if not sep:
        return spec, None
    if not version.isdigit() or int(version) < 1:
        raise click.BadParameter(f"{spec!r}: the version after '@' must be a positive number, like {name}@2")
    return name, int(version)


def _resolve_kind(bh: BucketSQLite, name: str, kind: str | None) -> str:
    """Which kind holds ``name`` (``--kind`` decides when several do)."""
    found = kinds_holding(bh, name)
    if kind is not None:
        if kind not in found:
            where = f"; it is {', '.join(_KIND_OF[k] for k in found)}" if found else ""
            raise NotFound(f"nothing named {name!r} among {kind}{where}")
        return kind
    if not found:
        raise NotFound(f"nothing named {name!r}; 'bh-notebook ls' lists what is stored")
    if len(found) > 1:
        raise click.UsageError(f"{name!r} is stored as several kinds ({', '.join(found)}); add --kind {found[0]}")
    return found[0]


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


_json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document (for scripts).")
_kind_option = click.option("--kind", type=click.Choice(KINDS), help="Which kind, when a name is in several.")


@click.group(cls=_Cli, epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", metavar="URL",
              help="file:///path, s3://bucket?endpoint_url=https://host or r2://<account_id>/<bucket> (as "
                   "%bh_connect takes). Default: the BUCKETHEAD_* variables, else the local store "
                   "($BH_NOTEBOOK_HOME or ~/.bh_notebook).")
@click.option("--branch", metavar="NAME", help="Work on this branch of the catalog ('bh-notebook branch list').")
@click.version_option(package_name="bh_notebook", message="%(prog)s %(version)s")
def main(url: str | None, branch: str | None) -> None:
    """Stash and fetch frames, arrays, files and settings in a bucket (or the local store) from a shell.

    \b
    Examples:
      bh-notebook put sales.parquet
      bh-notebook ls 'sales*' --kind frames
      bh-notebook get sales@2 -o sales_v2.csv
      bh-notebook --url 's3://team-data?endpoint_url=https://minio:9000' status --json
    """


# -- status / ls / history ------------------------------------------------------------------


@main.command()
@_json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Where the store is and what it holds (never a secret).

    \b
    Example:
      bh-notebook status --json
    """
    with _store(ctx) as bh:
        s = bh.status()
        if as_json:
            _emit_json(s)
            return
        click.echo("\n".join([
            f"backend:   {s['backend']}",
            f"location:  {s['location']}",
            f"catalog:   {s['snapshot_key']}",
            f"holds:     {s['frames']} frames, {s['arrays']} arrays, {s['named_files']} files, "
            f"{s['kv_keys']} kv keys; {s['blobs']} blobs, {human_bytes(s['blob_bytes'])}",
        ]))


@main.command(name="ls")
@click.argument("pattern", required=False)
@click.option("--kind", type=click.Choice(KINDS), help="Only this kind.")
@_json_option
@click.pass_context
def ls(ctx: click.Context, pattern: str | None, kind: str | None, as_json: bool) -> None:
    """List what is stored, newest first. PATTERN is a glob (sales_*) or a substring of names and notes.

    \b
    Examples:
      bh-notebook ls
      bh-notebook ls 'sales_*' --kind frames --json
    """
    with _store(ctx) as bh:
        import pandas as pd

        records: list[dict[str, Any]] = [{k: None if v is pd.NA or v is pd.NaT else v for k, v in r.items()}
                   for r in listing(bh, pattern, kind).to_dict("records")]
        if as_json:
            _emit_json([{"name": r["name"], "kind": r["kind"],
                         "version": None if r["version"] is None else int(r["version"]), "size": int(r["size"]),
                         "shape": r["shape"], "modified": None if r["modified"] is None else r["modified"].isoformat(),
                         "note": r["note"]} for r in records])
            return
        if not records:
            click.echo("nothing stored" + (" matches" if pattern or kind else " yet"))
            return
        rows = [[r["name"], r["kind"], "-" if r["version"] is None else str(r["version"]), human_bytes(r["size"]),
                 r["shape"], "-" if r["modified"] is None else str(r["modified"]), r["note"]] for r in records]
        click.echo(_table(rows, ["name", "kind", "version", "size", "shape", "modified", "note"]))


@main.command()
@click.argument("name")
@_kind_option
@_json_option
@click.pass_context
def history(ctx: click.Context, name: str, kind: str | None, as_json: bool) -> None:
    """Every version of a frame, array or file, newest first.

    \b
    Example:
      bh-notebook history sales
    """
    with _store(ctx) as bh:
        kind = _resolve_kind(bh, name, kind)
        if kind == "kv":
            raise click.UsageError(f"{name!r} is a kv key; kv keeps only the latest value")
        k = _KIND_OF[kind]
        shown = versioned_stores(bh)[k]
        versions = shown.history(name)
        if as_json:
            _emit_json([{"name": v.name, "kind": k, "version": v.version, "size": v.nbytes,
                         "shape": shown.shape_text(v), "created": _iso(v.created_at), "metadata": v.metadata,
                         "bh_key": v.bh_key, "version_id": getattr(v, "version_id", "")} for v in versions])
            return
        rows = [[str(v.version), when(v.created_at), human_bytes(v.nbytes), shown.shape_text(v),
                 v.metadata.get("note", ""), ", ".join(f"{a}={b}" for a, b in v.metadata.items() if a != "note"),
                 v.bh_key[:12]] for v in versions]
        click.echo(_table(rows, ["version", "created", "size", "shape", "note", "tags", "key"]))


# -- get / put ------------------------------------------------------------------------------


def _write_target(path: str) -> Path:
    target = Path(path)
    if target.is_dir():
        raise click.BadParameter(f"{path!r} is a directory; give a file name", param_hint="'-o'")
    return target


@main.command()
@click.argument("spec", metavar="NAME[@VERSION]")
@click.option("-o", "--output", metavar="PATH",
              help="Write here: a frame as Parquet (.parquet, .pq) or CSV (.csv), an array as .npy, a file as its "
                   "bytes, a kv value as text. Without it the data goes to stdout (a frame as CSV).")
@_kind_option
@_json_option
@click.pass_context
def get(ctx: click.Context, spec: str, output: str | None, kind: str | None, as_json: bool) -> None:
    """Fetch an entry (the latest version, or NAME@VERSION).

    \b
    Examples:
      bh-notebook get sales -o sales.parquet
      bh-notebook get sales@1 -o sales_v1.csv
      bh-notebook get weights -o weights.npy
      bh-notebook get report > report.pdf
      bh-notebook get learning_rate
    """
    name, version = _split_version(spec)
    with _store(ctx) as bh:
        kind = _resolve_kind(bh, name, kind)
        if kind == "kv":
            if version is not None:
                raise click.UsageError("kv values have no versions")
            data = bh.kv.get_bytes(name)
            assert data is not None
            if output is not None:
                _write_target(output).write_bytes(data)
            if as_json:
                doc: dict[str, Any] = {"name": name, "kind": "kv", "size": len(data)}
                if output is None:
                    doc["value"] = data.decode("utf-8", errors="replace")
                else:
                    doc["path"] = str(Path(output).absolute())
                _emit_json(doc)
            elif output is None:
                _stdout_text_or_bytes(data)
            return
        if as_json and output is None:
            raise click.UsageError("--json describes what -o wrote; give -o PATH (the data itself is not JSON)")
        k = _KIND_OF[kind]
        store = versioned_stores(bh)[k]
        info = store.info(name, version)
        if kind == "frames":
            suffix = Path(output).suffix.lower() if output else ".csv"
            if suffix not in _FRAME_SUFFIXES:
                raise click.BadParameter(f"{output!r}: a frame is written as .parquet, .pq or .csv",
                                         param_hint="'-o'")
            import pandas as pd

            df = bh.frames.get(name, version, to="pandas")
            if isinstance(df, pd.Series):
                df = df.to_frame()
            index = not _plain_index(df)
            if output is None:
                df.to_csv(click.get_text_stream("stdout"), index=index)
            elif suffix == ".csv":
                df.to_csv(_write_target(output), index=index)
            else:
                df.to_parquet(_write_target(output), index=index)
        elif output is None:
            if kind == "arrays" and sys.stdout.isatty():
                raise click.UsageError("an array is written as .npy bytes; give -o PATH.npy or redirect stdout")
            out = click.get_binary_stream("stdout")
            out.write(bh.files.get(info.bh_key))
            out.flush()
        else:
            target = _write_target(output)
            if kind == "arrays" and target.suffix.lower() != ".npy":
                raise click.BadParameter(f"{output!r}: an array is written as .npy", param_hint="'-o'")
            bh.files.get(info.bh_key, dest=target)  # arrays are stored as .npy exactly as numpy.save writes
        if as_json:
            assert output is not None
            _emit_json({"name": name, "kind": k, "version": info.version, "size": info.nbytes,
                        "path": str(Path(output).absolute())})


def _plain_index(df: Any) -> bool:
    """True when the frame's index is the default 0..n-1 (then files are written without it)."""
    import pandas as pd

    idx = df.index
    return isinstance(idx, pd.RangeIndex) and idx.start == 0 and idx.step == 1 and idx.name is None


def _stdout_text_or_bytes(data: bytes) -> None:
    """A kv value on stdout: text with one newline at the end (none added when it has one), else its bytes."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        click.echo(text, nl=not text.endswith("\n"))
    else:
        out = click.get_binary_stream("stdout")
        out.write(data)
        out.flush()


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@click.option("--as", "as_name", metavar="NAME",
              help="The name to store under (default: the file name; without its suffix for frames and arrays).")
@click.option("--file", "as_file", is_flag=True, help="Store as a named file whatever the suffix (bytes as they are).")
@click.option("--note", help="A note kept with this version.")
@click.option("--tag", "tags", multiple=True, metavar="K=V", help="A tag kept with this version (repeatable).")
@_json_option
@click.pass_context
def put(ctx: click.Context, path: Path, as_name: str | None, as_file: bool, note: str | None,
        tags: tuple[str, ...], as_json: bool) -> None:
    """Store a file: .parquet/.pq/.csv as a frame, .npy as an array, anything else as a named file.

    Each put of changed data makes a new version; unchanged data uploads nothing.

    \b
    Examples:
      bh-notebook put sales.csv --note "from the CRM export"
      bh-notebook put weights.npy --as model/weights --tag stage=trained
      bh-notebook put report.pdf
    """
    metadata: dict[str, str] = {}
    if note:
        metadata["note"] = note
    for tag in tags:
        key, sep, text = tag.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{tag!r}: use KEY=VALUE, like --tag stage=raw", param_hint="'--tag'")
        metadata[key] = text
    suffix = path.suffix.lower()
    kind = "file" if as_file else "frame" if suffix in _FRAME_SUFFIXES else "array" if suffix == ".npy" else "file"
    name = as_name or (path.name if kind == "file" else path.stem)
    value: Any
    if kind == "frame":
        import pandas as pd

        value = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    elif kind == "array":
        import numpy as np

        value = np.load(path, mmap_mode="r", allow_pickle=False)
    else:
        value = path
    with _store(ctx) as bh:
        store: Any = versioned_stores(bh)[kind]
        before = store.info(name).version if name in store else None
        v = store.put(name, value, metadata=metadata)
        outcome = "unchanged" if v.version == before else "new version"
        if as_json:
            _emit_json({"name": v.name, "kind": kind, "version": v.version, "size": v.nbytes,
                        "shape": store.shape_text(v), "changed": v.version != before, "bh_key": v.bh_key})
            return
        shape = store.shape_text(v)
        click.echo(f"{v.name}  {kind}  v{v.version}  {shape + '  ' if shape else ''}{human_bytes(v.nbytes)}  {outcome}")


# -- kv ------------------------------------------------------------------------------------


@main.group(cls=_Cli)
def kv() -> None:
    """Small settings as text: get, set and delete keys.

    \b
    Examples:
      bh-notebook kv set learning_rate 0.01
      bh-notebook kv get learning_rate
      bh-notebook kv delete learning_rate
    """


@kv.command(name="get")
@click.argument("key")
@_json_option
@click.pass_context
def kv_get(ctx: click.Context, key: str, as_json: bool) -> None:
    """Print the value of KEY.

    \b
    Example:
      lr=$(bh-notebook kv get learning_rate)
    """
    with _store(ctx) as bh:
        data = bh.kv.get_bytes(key)
        if data is None:
            raise NotFound(f"no kv key {key!r}; 'bh-notebook ls --kind kv' lists them")
        if as_json:
            _emit_json({"key": key, "value": data.decode("utf-8", errors="replace"),
                        "updated": _iso(bh.kv.updated_at(key))})
        else:
            _stdout_text_or_bytes(data)


@kv.command(name="set")
@click.argument("key")
@click.argument("value")
@click.pass_context
def kv_set(ctx: click.Context, key: str, value: str) -> None:
    """Set KEY to VALUE (VALUE '-' reads the value from stdin).

    \b
    Examples:
      bh-notebook kv set learning_rate 0.01
      cat config.yaml | bh-notebook kv set config -
    """
    if value == "-":
        value = click.get_text_stream("stdin").read()
    with _store(ctx) as bh:
        bh.kv.set(key, value)
        click.echo(f"{key}  kv  {len(value):,} chars saved")


@kv.command(name="delete")
@click.argument("key")
@click.pass_context
def kv_delete(ctx: click.Context, key: str) -> None:
    """Delete KEY.

    \b
    Example:
      bh-notebook kv delete learning_rate
    """
    with _store(ctx) as bh:
        if not bh.kv.delete(key):
            raise NotFound(f"no kv key {key!r}; nothing deleted")
        click.echo(f"removed kv {key!r}")


# -- files ---------------------------------------------------------------------------------


@main.group(cls=_Cli)
def files() -> None:
    """The blobs under every entry, by content hash (bh-key): list, fetch, collect the unused.

    \b
    Examples:
      bh-notebook files list
      bh-notebook files get 3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b -o blob.bin
      bh-notebook files gc --dry-run
    """


@files.command(name="list")
@_json_option
@click.pass_context
def files_list(ctx: click.Context, as_json: bool) -> None:
    """Every blob: bh-key, size, type, file name, when stored.

    \b
    Example:
      bh-notebook files list --json
    """
    with _store(ctx) as bh:
        blobs = list(bh.files)
        if as_json:
            _emit_json([{"bh_key": b.bh_key, "size": b.size, "mime": b.mime, "filename": b.filename,
                         "created": _iso(b.created_at)} for b in blobs])
            return
        if not blobs:
            click.echo("no blobs stored yet")
            return
        rows = [[b.bh_key, human_bytes(b.size), b.mime or "-", b.filename or "-", when(b.created_at)] for b in blobs]
        click.echo(_table(rows, ["bh_key", "size", "type", "filename", "created"]))


@files.command(name="get")
@click.argument("bh_key")
@click.option("-o", "--output", metavar="PATH", required=True, help="Where to write the blob's bytes.")
@click.pass_context
def files_get(ctx: click.Context, bh_key: str, output: str) -> None:
    """Write the blob BH_KEY to PATH (its SHA-256 is checked on the way).

    \b
    Example:
      bh-notebook files get 3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b -o blob.bin
    """
    target = _write_target(output)
    with _store(ctx) as bh:
        bh.files.get(bh_key, dest=target)
        click.echo(f"wrote {target} ({human_bytes(target.stat().st_size)})")


@files.command(name="gc")
@click.option("--grace", type=click.FloatRange(min=0), default=300.0, show_default=True, metavar="S",
              help="Keep unused blobs written less than S seconds ago (by the bucket's clock).")
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
@_json_option
@click.pass_context
def files_gc(ctx: click.Context, grace: float, dry_run: bool, as_json: bool) -> None:
    """Delete blobs no entry uses any more.

    Other writers' commits are taken in and this one committed first, so only the latest shared catalog decides.
    A grace under a few minutes is safe only while nobody else is putting.

    \b
    Example:
      bh-notebook files gc --grace 3600 --dry-run
    """
    with _store(ctx) as bh:
        r = bh.files.gc(grace, dry_run=dry_run)
        if as_json:
            _emit_json({"dry_run": dry_run, "grace": grace, "orphans_found": r.orphans_found,
                        "orphans_deleted": r.orphans_deleted, "orphans_skipped_grace": r.orphans_skipped_grace,
                        "dangling_rows_found": r.dangling_rows_found, "incomplete_removed": r.incomplete_removed,
                        "deleted": r.deleted})
            return
        verb = "would delete" if dry_run else "deleted"
        click.echo(f"{r.orphans_found} unused blobs: {verb} {r.orphans_deleted}, kept {r.orphans_skipped_grace} "
                   f"younger than {grace:g} s; {r.dangling_rows_found} rows point at missing blobs (kept)")


# -- check / restore / share / pull ---------------------------------------------------------


@main.command()
@click.option("--fix", is_flag=True,
              help="Repair what is safe to repair (file rows; orphans older than the grace); then check again.")
@click.option("--grace", type=click.FloatRange(min=0), default=300.0, show_default=True, metavar="S",
              help="With --fix: orphans written less than S seconds ago are kept.")
@click.option("--no-verify", is_flag=True, help="Do not read the blobs to check their hashes (faster).")
@_json_option
@click.pass_context
def check(ctx: click.Context, fix: bool, grace: float, no_verify: bool, as_json: bool) -> None:
    """Compare the catalog with the bucket; exit 3 when something is wrong (with --fix: still wrong).

    \b
    Examples:
      bh-notebook check || echo "problems found"
      bh-notebook check --fix --json
    """
    with _store(ctx) as bh:
        report = bh.check(fix, verify=not no_verify, grace_seconds=grace)
        after = bh.check(False, verify=not no_verify) if fix and not report.ok else report
        if as_json:
            doc = _report_doc(report)
            if fix:
                doc["remaining"] = _report_doc(after)
            doc["ok"] = after.ok
            _emit_json(doc)
        else:
            click.echo(str(report))
            if fix and after is not report:
                click.echo(f"after the repairs: {after}")
    if not after.ok:
        ctx.exit(EXIT_PROBLEMS)


def _report_doc(report: Any) -> dict[str, Any]:
    return {"ok": report.ok, "dangling_rows": report.dangling_rows, "orphan_blobs": report.orphan_blobs,
            "corrupt_blobs": report.corrupt_blobs, "unregistered_blobs": report.unregistered_blobs,
            "lost_blobs": report.lost_blobs, "inconsistent_rows": report.inconsistent_rows, "fixed": report.fixed}


@main.command()
@click.option("--from", "source", type=click.Choice(["prev"]), required=True,
              help="prev: the catalog as it was before the newest commit.")
@_json_option
@click.pass_context
def restore(ctx: click.Context, source: str, as_json: bool) -> None:
    """Make the catalog as it was before the newest commit the current one (when that change was a mistake).

    \b
    Example:
      bh-notebook restore --from prev
    """
    with _store(ctx, restore_from=source) as bh:
        s = bh.status()
        bh.force_flush()
        if as_json:
            _emit_json({"restored_from": bh.restored_from, "frames": s["frames"], "arrays": s["arrays"],
                        "files": s["named_files"], "kv_keys": s["kv_keys"]})
            return
        click.echo(f"restored the catalog from {bh.restored_from}: {s['frames']} frames, {s['arrays']} arrays, "
                   f"{s['named_files']} files, {s['kv_keys']} kv keys")


@main.command()
@click.argument("spec", metavar="NAME[@VERSION]")
@click.option("--expires", type=click.IntRange(min=1, max=7 * 24 * 3600), default=3600, show_default=True,
              metavar="S", help="Seconds the URL works for (at most 7 days).")
@_kind_option
@_json_option
@click.pass_context
def share(ctx: click.Context, spec: str, expires: int, kind: str | None, as_json: bool) -> None:
    """Print a presigned URL anyone can download the entry's bytes with until it expires (S3 and R2 only).

    A frame downloads as Parquet, an array as .npy, a file as itself.

    \b
    Example:
      curl -o sales.parquet "$(bh-notebook share sales --expires 600)"
    """
    name, version = _split_version(spec)
    with _store(ctx) as bh:
        kind = _resolve_kind(bh, name, kind)
        if kind == "kv":
            raise Failed(f"{name!r} is a kv value, kept in the catalog: there is no object to share; "
                         "'bh-notebook kv get' prints it")
        info = versioned_stores(bh)[_KIND_OF[kind]].info(name, version)
        if getattr(info, "parts", 1) > 1:
            raise Failed(f"frame {name!r}@{info.version} is held in {info.parts} Parquet parts, so no one URL "
                         f"downloads it: 'bh-notebook get {spec} -o PATH' writes it as one file to pass on")
        url = bh.bucket.presigned_url(bh.files.object_key(info.bh_key), expires_in=expires)
        if url is None:
            raise Failed(f"the {bh.config.backend} store at {bh.config.location} has no shareable URLs; "
                         f"'bh-notebook get {spec} -o PATH' writes a copy to pass on instead")
        if as_json:
            _emit_json({"name": name, "kind": _KIND_OF[kind], "version": info.version, "url": url,
                        "expires_in": expires})
        else:
            click.echo(url)


@main.command()
@_json_option
@click.pass_context
def pull(ctx: click.Context, as_json: bool) -> None:
    """Take in what other writers committed, and commit this machine's unsaved work if any was kept.

    \b
    Example:
      bh-notebook pull
    """
    with _store(ctx) as bh:
        report = bh.pull()
        if as_json:
            _emit_json({"new": report is not None, "report": None if report is None else str(report)})
        else:
            click.echo("nothing new in the bucket" if report is None else f"pulled: {report}")


#: ``prune --older-than`` at least this: a writer between reading the log and committing, or a reader that only
#: pulls (it looks at the checkpoint every 10 minutes), must find the commits after its state.
MIN_PRUNE_AGE = 3600.0


@main.command()
@click.option("--older-than", "older_than", type=click.FloatRange(min=0), default=7 * 24 * 3600.0,
              show_default=True, metavar="S", help="Keep whatever was written less than S seconds ago (by the "
              "bucket's clock): a writer that read the log within S still finds every commit after its state.")
@_json_option
@click.pass_context
def prune(ctx: click.Context, older_than: float, as_json: bool) -> None:
    """Delete old commits and checkpoints of the catalog's log that no reader needs.

    The two newest checkpoints and every commit after the older of them are kept, and so is anything younger
    than --older-than. Blobs are not touched (``files gc``). A writer committing does this on its own after
    each periodic checkpoint.

    \b
    Example:
      bh-notebook prune --older-than 86400
    """
    if older_than < MIN_PRUNE_AGE:
        raise click.BadParameter(f"must be at least {MIN_PRUNE_AGE:g} seconds: younger commits may still be "
                                 "needed by a notebook that is about to commit", param_hint="--older-than")
    with _store(ctx) as bh:
        r = bh.prune_log(retention_seconds=older_than)
        if as_json:
            _emit_json({"commits": r.commits, "checkpoints": r.checkpoints, "states": r.states,
                        "bytes": r.nbytes, "floor": r.floor})
        else:
            click.echo(str(r))


# -- branch ---------------------------------------------------------------------------------


@main.group(cls=_Cli)
def branch() -> None:
    """Branches of the catalog: they share its blobs and commit on their own.

    \b
    Examples:
      bh-notebook branch create experiment
      bh-notebook --branch experiment put trial.parquet
      bh-notebook branch merge experiment
    """


@branch.command(name="list")
@_json_option
@click.pass_context
def branch_list(ctx: click.Context, as_json: bool) -> None:
    """The branches, the one in use marked with '*'.

    \b
    Example:
      bh-notebook branch list --json
    """
    with _store(ctx) as bh:
        names, current = bh.branches.list(), bh.branches.current
        if as_json:
            _emit_json({"branches": names, "current": current})
        else:
            for name in names:
                click.echo(("* " if name == current else "  ") + name)


@branch.command(name="create")
@click.argument("name")
@click.option("--overwrite", is_flag=True, help="Start an existing branch again from here.")
@click.pass_context
def branch_create(ctx: click.Context, name: str, overwrite: bool) -> None:
    """Make branch NAME from the catalog in use (the main one unless --branch says otherwise).

    \b
    Example:
      bh-notebook branch create experiment
    """
    with _store(ctx) as bh:
        key = bh.branches.create(name, overwrite=overwrite)
        click.echo(f"created branch {name!r} from {bh.branches.current!r} ({key})")


@branch.command(name="delete")
@click.argument("name")
@click.pass_context
def branch_delete(ctx: click.Context, name: str) -> None:
    """Delete branch NAME (its blobs stay until 'files gc' finds nothing uses them).

    \b
    Example:
      bh-notebook branch delete experiment
    """
    with _store(ctx) as bh:
        if not bh.branches.delete(name):
            raise NotFound(f"no branch {name!r}; 'bh-notebook branch list' shows them")
        click.echo(f"deleted branch {name!r}")


@branch.command(name="merge")
@click.argument("name")
@_json_option
@click.pass_context
def branch_merge(ctx: click.Context, name: str, as_json: bool) -> None:
    """Merge branch NAME into the catalog in use (the main one unless --branch says otherwise).

    \b
    Examples:
      bh-notebook branch merge experiment
      bh-notebook --branch experiment branch merge main
    """
    with _store(ctx) as bh:
        report = bh.branches.merge(name)
        if as_json:
            _emit_json({"taken": report.taken, "renumbered": report.renumbered, "conflicts": report.conflicts})
        else:
            click.echo(f"merged branch {name!r} into {bh.branches.current!r}: {report}")


__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_PROBLEMS", "EXIT_USAGE", "Failed", "main"]
