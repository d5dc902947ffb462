"""Browser: an ipywidgets view of everything stored, with previews and actions.

``%bh_browse`` or ``bh_notebook.browse()`` returns one. The listing comes from the catalog alone (no bucket
request); a preview fetches no more than it shows (a frame's first row group, an array's first rows, a file's
first bytes) and is cached. Every button calls a public method (``refresh``, ``select``, ``load``, ``delete``,
``history``, ``copy_key``) that tests and code can call too.
"""

from __future__ import annotations

import fnmatch
import html
import re
import struct
import zlib
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
import numpy as np

from ..database import BucketSQLite
from ..errors import BhError
from .display import human_bytes, when
from ..interfaces.registry import listed_classes
from .listing import listed_stores, listing


def kind_filters() -> list[tuple[str, str | None]]:
    """The kind dropdown's choices: all, then every listed kind's plural (frames, arrays, files, kv, ...)."""
    return [("all", None), *((c.plural, c.plural) for c in listed_classes())]

SORT_COLUMNS = ["modified", "name", "kind", "version", "size", "shape"]
#: A preview reads at most this many bytes of an array or a file.
PREVIEW_BYTES = 4 * 1024 * 1024
#: Columns of a frame the preview shows (its schema and first rows); wider frames say how many more.
PREVIEW_COLUMNS = 200
TEXT_PREVIEW = 2000
IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif"}


class Browser(widgets.VBox):
    """Search, list, preview, load, delete and see the history of what a BucketSQLite holds."""

    def __init__(self, bh: BucketSQLite, *, shell: Any = None, page_size: int = 25) -> None:
        self.bh = bh
        self.shell = shell
        self.page_size = page_size
        self.page = 0
        self.sort_by = "modified"
        self.descending = True
        self._rows: list[dict[str, Any]] = []
        self._preview_cache: dict[tuple[str, str, int | None], widgets.Widget] = {}
        self._selected: dict[str, Any] | None = None
        self._version: int | None = None
        self.last_loaded: Any = None
        self.message = ""

        self.search = widgets.Text(placeholder="search names and notes (glob or substring)", continuous_update=True,
                                   layout=widgets.Layout(width="40%"))
        self.search.add_class("bh-search")
        self._kind_filters = dict(kind_filters())
        self.kind = widgets.Dropdown(options=list(self._kind_filters), value="all", description="kind",
                                     layout=widgets.Layout(width="180px"))
        self.kind.add_class("bh-kind")
        self.sort = widgets.Dropdown(options=SORT_COLUMNS, value="modified", description="sort",
                                     layout=widgets.Layout(width="180px"))
        self.order = widgets.ToggleButton(value=True, description="newest/largest first", icon="sort-amount-desc",
                                          layout=widgets.Layout(width="170px"))
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.state = widgets.HTML()
        # The listing's rows are fixed-width text: give the select a monospace font.
        self.header = widgets.HTML()
        self._style = widgets.HTML("<style>.bh-entries select, .bh-entries option "
                                   "{font-family: monospace; white-space: pre;}</style>")
        self.entries = widgets.Select(options=[], rows=12, layout=widgets.Layout(width="100%"))
        self.entries.add_class("bh-entries")
        self.prev_button = widgets.Button(description="<", layout=widgets.Layout(width="40px"))
        self.next_button = widgets.Button(description=">", layout=widgets.Layout(width="40px"))
        self.page_label = widgets.Label()
        self.preview = widgets.VBox()
        self.preview.add_class("bh-preview")
        self.var_name = widgets.Text(description="as", layout=widgets.Layout(width="220px"))
        self.var_name.add_class("bh-var")
        self.load_button = widgets.Button(description="Load", icon="download", button_style="primary")
        self.load_button.add_class("bh-load")
        self.delete_button = widgets.Button(description="Delete", icon="trash", button_style="danger")
        self.confirm_button = widgets.Button(description="Confirm delete", button_style="danger",
                                             layout=widgets.Layout(display="none"))
        self.cancel_button = widgets.Button(description="Cancel", layout=widgets.Layout(display="none"))
        self.history_button = widgets.Button(description="History", icon="history")
        for button, css in [(self.delete_button, "bh-delete"), (self.confirm_button, "bh-confirm"),
                            (self.cancel_button, "bh-cancel"), (self.history_button, "bh-history")]:
            button.add_class(css)
        self.copy_button = widgets.Button(description="Copy key", icon="copy")
        self.versions = widgets.Select(options=[], rows=5, layout=widgets.Layout(display="none", width="100%"))
        self.key_box = widgets.Textarea(layout=widgets.Layout(display="none", width="100%", height="60px"))
        self.status = widgets.HTML()
        self.status.add_class("bh-status")

        self.search.observe(lambda change: self._filters_changed(), names="value")
        self.kind.observe(lambda change: self._filters_changed(), names="value")
        self.sort.observe(lambda change: self._sort_changed(), names="value")
        self.order.observe(lambda change: self._sort_changed(), names="value")
        self.entries.observe(self._on_select, names="value")
        self.versions.observe(self._on_version, names="value")
        self.refresh_button.on_click(lambda b: self.pull())
        self.prev_button.on_click(lambda b: self._turn(-1))
        self.next_button.on_click(lambda b: self._turn(1))
        self.load_button.on_click(lambda b: self.load())
        self.delete_button.on_click(lambda b: self.delete())
        self.confirm_button.on_click(lambda b: self.delete(confirm=True))
        self.cancel_button.on_click(lambda b: self._cancel_delete())
        self.history_button.on_click(lambda b: self.history())
        self.copy_button.on_click(lambda b: self.copy_key())

        toolbar = widgets.HBox([self.search, self.kind, self.sort, self.order, self.refresh_button])
        pager = widgets.HBox([self.prev_button, self.page_label, self.next_button, self.state])
        actions = widgets.HBox([self.var_name, self.load_button, self.history_button, self.copy_button,
                                self.delete_button, self.confirm_button, self.cancel_button])
        super().__init__([self._style, toolbar, self.header, self.entries, pager, self.preview, actions, self.versions,
                          self.key_box, self.status])
        self.add_class("bh-browser")
        self.refresh()

    def __repr__(self) -> str:  # cheap: no catalog query
        return f"<Browser of {self.bh.config.backend} {self.bh.config.location!r}: {len(self._rows)} entries>"

    # -- listing --------------------------------------------------------------------------------

    def pull(self) -> None:
        """What Refresh does: take in other writers' commits (one HEAD when nothing is new), then redraw."""
        try:
            report = self.bh.pull()
        except BhError as exc:
            self._say(f"could not check the bucket for other writers' changes: {exc}", error=True)
        else:
            if report is not None:
                self._say(f"pulled: {report.taken} changes from other writers")
        self.refresh()

    def refresh(self) -> None:
        """Re-read the catalog (no bucket request) and redraw the listing."""
        kind = self._kind_filters[self.kind.value]
        frame = listing(self.bh, None, kind)
        rows = frame.to_dict("records")
        pattern = self.search.value.strip()
        if pattern:
            glob = any(ch in pattern for ch in "*?[")
            low = pattern.lower()
            rows = [r for r in rows if (fnmatch.fnmatchcase(r["name"], pattern) if glob else
                                        low in r["name"].lower() or low in str(r["note"]).lower())]
        key = self.sort_by

        def sort_key(r: dict[str, Any]) -> Any:
            value = r[key]
            if key == "version":
                return -1 if value is None or value != value else int(value)
            return value

        rows.sort(key=sort_key, reverse=self.descending)
        self._rows = rows
        self.page = min(self.page, max(0, (len(rows) - 1) // self.page_size))
        self._draw_page()
        self._draw_state()

    def _filters_changed(self) -> None:
        self.page = 0
        self.refresh()

    def _sort_changed(self) -> None:
        self.sort_by = self.sort.value
        self.descending = bool(self.order.value)
        self.refresh()

    def _turn(self, step: int) -> None:
        pages = max(1, -(-len(self._rows) // self.page_size))
        self.page = max(0, min(pages - 1, self.page + step))
        self._draw_page()

    @property
    def visible(self) -> list[dict[str, Any]]:
        """The entries on the current page, in order."""
        start = self.page * self.page_size
        return self._rows[start:start + self.page_size]

    @property
    def names(self) -> list[str]:
        """Names of all listed entries (every page), in order."""
        return [r["name"] for r in self._rows]

    def _draw_page(self) -> None:
        self.header.value = ("<pre style='margin:0'>" + html.escape(
            f"{'name':<28} {'kind':<6} {'ver':>4} {'size':>10}  {'shape':<22} modified (local time)") + "</pre>")
        options = []
        for r in self.visible:
            version = "-" if r["version"] is None or r["version"] != r["version"] else str(r["version"])
            modified = "-" if r["modified"] is None or r["modified"] != r["modified"] else \
                r["modified"].strftime("%Y-%m-%d %H:%M %Z")
            label = (f"{_clip(r['name'], 28):<28} {r['kind']:<6} {version:>4} {human_bytes(r['size']):>10}  "
                     f"{_clip(r['shape'], 22):<22} {modified}")
            options.append((label, (r["kind"], r["name"])))
        current = self.entries.value
        self.entries.options = options
        if current in [v for _, v in options]:
            self.entries.value = current
        else:  # nothing selected until the user picks: no preview is fetched unasked
            self.entries.index = None
        pages = max(1, -(-len(self._rows) // self.page_size))
        self.page_label.value = f"page {self.page + 1} of {pages} ({len(self._rows)} entries)"

    def _draw_state(self) -> None:
        c = self.bh.config
        dirty = "unsaved changes" if self.bh.dirty else "saved"
        self.state.value = (f"<span style='margin-left:1em'>{html.escape(c.backend)}: "
                            f"{html.escape(c.location)} &middot; {dirty}</span>")

    # -- selection and preview ------------------------------------------------------------------

    def select(self, name: str, kind: str | None = None) -> None:
        """Select an entry by name (the first listed one of that name unless ``kind`` is given)."""
        for i, r in enumerate(self._rows):
            if r["name"] == name and (kind is None or r["kind"] == kind):
                self.page = i // self.page_size
                self._draw_page()
                self.entries.value = (r["kind"], r["name"])
                return
        raise KeyError(f"no listed entry named {name!r}; refresh() or clear the search first")

    @property
    def selected(self) -> dict[str, Any] | None:
        """The selected entry's listing row (name, kind, version, size, shape, modified, note), or None."""
        return self._selected

    def _on_select(self, change: dict[str, Any]) -> None:
        value = change["new"]
        self._cancel_delete()
        self.versions.layout.display = "none"
        self.key_box.layout.display = "none"
        if value is None:
            self._selected = None
            self.preview.children = ()
            return
        kind, name = value
        self._selected = next((r for r in self._rows if r["name"] == name and r["kind"] == kind), None)
        self._version = None
        self.var_name.value = _variable_name(name)
        self._show_preview()

    def _on_version(self, change: dict[str, Any]) -> None:
        if change["new"] is not None and self._selected is not None:
            self._version = int(change["new"])
            self._show_preview()

    def _show_preview(self) -> None:
        sel = self._selected
        if sel is None:
            return
        key = (sel["kind"], sel["name"], self._version)
        if key not in self._preview_cache:
            try:
                self._preview_cache[key] = self._build_preview(sel["kind"], sel["name"], self._version)
            except Exception as exc:  # noqa: BLE001 - shown to the user in the widget
                self._preview_cache[key] = widgets.HTML(f"<i>no preview: {html.escape(str(exc))}</i>")
        self.preview.children = (self._preview_cache[key],)

    def preview_text(self) -> str:
        """The preview's text content (for tests and logs)."""
        parts: list[str] = []

        def walk(w: Any) -> None:
            if isinstance(w, widgets.HTML):
                parts.append(w.value)
            for child in getattr(w, "children", ()):
                walk(child)

        walk(self.preview)
        return "\n".join(parts)

    def _build_preview(self, kind: str, name: str, version: int | None) -> widgets.Widget:
        store = listed_stores(self.bh)[kind]
        build = PREVIEWS.get(kind, _preview_entry if store.versioned else _preview_value)
        return build(self.bh, store, name, version)

    # -- actions -----------------------------------------------------------------------------------

    def _require(self) -> dict[str, Any]:
        if self._selected is None:
            raise ValueError("select an entry first")
        return self._selected

    def load(self, var: str | None = None) -> Any:
        """Load the selected entry (the version chosen in History, else the latest) and return it.

        With a shell running it is also bound in the notebook under ``var`` (default: the name in the box).
        """
        sel = self._require()
        kind, name, version = sel["kind"], sel["name"], self._version
        value = listed_stores(self.bh)[kind].load(name, version)
        target = (var or self.var_name.value or _variable_name(name)).strip()
        shell = self.shell if self.shell is not None else _current_shell()
        if shell is not None:
            if not target.isidentifier():
                self._say(f"{target!r} is not a valid variable name", error=True)
                return value
            shell.user_ns[target] = value
            what = name if version is None else f"{name}@{version}"
            self._say_html(f"loaded {html.escape(what)} into <code>{html.escape(target)}</code>")
        else:
            self._say(f"loaded {name}")
        self.last_loaded = value
        return value

    def delete(self, confirm: bool = False) -> list[Any] | None:
        """Delete the selected entry (all versions, or the one chosen in History). The button asks first."""
        sel = self._require()
        if not confirm:
            self.confirm_button.layout.display = None
            self.cancel_button.layout.display = None
            what = sel["name"] if self._version is None else f"{sel['name']}@{self._version}"
            self._say(f"delete {what}? press Confirm delete")
            return None
        kind, name = sel["kind"], sel["name"]
        store: Any = listed_stores(self.bh)[kind]
        if store.versioned:
            removed: list[Any] = store.delete(name, self._version)
        else:  # kv: one value, no versions
            store.delete(name)
            removed = []
        self._cancel_delete()
        self._preview_cache = {k: v for k, v in self._preview_cache.items() if k[1] != name}
        self._say(f"deleted {name}" + (f" (versions {', '.join(str(v.version) for v in removed)})" if removed else ""))
        self._selected = None
        self.refresh()
        return removed

    def _cancel_delete(self) -> None:
        self.confirm_button.layout.display = "none"
        self.cancel_button.layout.display = "none"

    def history(self) -> list[Any]:
        """The selected entry's versions, newest first; they are listed, and choosing one previews and loads it."""
        sel = self._require()
        store: Any = listed_stores(self.bh)[sel["kind"]]
        if not store.versioned:
            self._say(f"{store.kind} values have no history")
            return []
        versions = store.history(sel["name"])
        self.versions.options = [(f"v{v.version}  {when(v.created_at)}  {human_bytes(v.nbytes)}"
                                  f"{'  ' + v.metadata['note'] if v.metadata.get('note') else ''}", v.version)
                                 for v in versions]
        self.versions.layout.display = None
        return versions

    def copy_key(self) -> str:
        """Show (and return) the selected entry's object key, with a presigned URL where the backend has them."""
        sel = self._require()
        store: Any = listed_stores(self.bh)[sel["kind"]]
        if not store.versioned:
            text = f"{store.kind} key: {sel['name']}"
        else:
            info = store.info(sel["name"], self._version)
            blobs = [p.bh_key for p in store.parts(sel["name"], info.version)] if getattr(info, "parts", 1) > 1 \
                else [info.bh_key]
            lines = []
            for bh_key in blobs:  # a frame of several parts: each part's key
                key = self.bh.files.object_key(bh_key)
                lines.append(key)
                url = self.bh.bucket.presigned_url(key, expires_in=3600)
                if url:
                    lines.append(url)
            text = "\n".join(lines)
            if len(lines) > len(blobs):
                text += "\n(the URLs work for one hour)"
        self.key_box.value = text
        self.key_box.layout.display = None
        return text

    def _say(self, message: str, error: bool = False) -> None:
        """Show a plain-text message in the status line (escaped: names come from every writer of the bucket)."""
        self._say_html(html.escape(message), error)

    def _say_html(self, markup: str, error: bool = False) -> None:
        """Show markup built by the caller, every string in it already escaped."""
        self.message = _plain(markup)
        color = "#b00" if error else "#070"
        self.status.value = f"<span style='color:{color}'>{markup}</span>"
        self._draw_state()


def _preview_frame(bh: BucketSQLite, store: Any, name: str, version: int | None) -> widgets.Widget:
    """A frame: its schema and first rows (only the row groups holding them are read)."""
    info = store.info(name, version)
    first_columns = info.columns[:PREVIEW_COLUMNS]  # a 20,000-column frame previews its first columns
    schema = "".join(f"<tr><td>{html.escape(c)}</td><td>{html.escape(info.dtypes.get(c, ''))}</td></tr>"
                     for c in first_columns)
    if len(info.columns) > len(first_columns):
        schema += f"<tr><td colspan=2>... {len(info.columns) - len(first_columns):,} more columns</td></tr>"
    head = store.head(name, 5, version, to="pandas") if len(first_columns) == len(info.columns) else \
        store.get(name, version, columns=first_columns, rows=slice(0, 5), to="pandas")
    if head.ndim == 1:  # a stored Series
        head = head.to_frame()
    box = widgets.VBox([
        widgets.HTML(f"<b>{html.escape(name)}</b> v{info.version}: {info.n_rows:,} rows x "
                     f"{len(info.columns)} columns, {human_bytes(info.nbytes)} stored, "
                     f"{when(info.created_at)}{_note(info.metadata)}"),
        widgets.HBox([widgets.HTML(f"<table><tr><th>column</th><th>dtype</th></tr>{schema}</table>"),
                      widgets.HTML(head.to_html(max_cols=12))]),
    ])
    return box


def _preview_array(bh: BucketSQLite, store: Any, name: str, version: int | None) -> widgets.Widget:
    """An array: shape, dtype, statistics and a picture of (at most PREVIEW_BYTES of) it."""
    info = store.info(name, version)
    row_bytes = info.nbytes // info.shape[0] if info.shape and info.shape[0] else info.nbytes
    partial = bool(info.shape) and info.nbytes > PREVIEW_BYTES and row_bytes > 0 and not info.fortran_order
    if partial:
        blob = bh.files.metadata(info.bh_key)
        header = blob.size - info.nbytes if blob is not None else 0
        # The rows that fit in the blob's first PREVIEW_BYTES: whole hash chunks, none fetched beyond.
        n = max(1, (PREVIEW_BYTES - header) // row_bytes)
        data = store.get(name, version, rows=slice(0, n))
        scope = f" (first {n:,} rows)"
    elif info.nbytes > PREVIEW_BYTES:
        return widgets.HTML(f"<b>{html.escape(name)}</b> v{info.version}: shape {tuple(info.shape)}, "
                            f"{html.escape(str(info.dtype))}, {human_bytes(info.nbytes)}")
    else:
        data = store.get(name, version)
        scope = ""
    text = (f"<b>{html.escape(name)}</b> v{info.version}: shape {tuple(info.shape)}, "
            f"{html.escape(str(info.dtype))}, "
            f"{human_bytes(info.nbytes)}{_note(info.metadata)}")
    children: list[widgets.Widget] = []
    if data.dtype.kind in "biuf" and data.size:
        finite = data[np.isfinite(data)] if data.dtype.kind == "f" else data
        if finite.size:
            text += (f"<br>min {finite.min():.6g} &middot; max {finite.max():.6g} &middot; "
                     f"mean {finite.mean():.6g}{scope}")
        png = array_picture(data)
        if png is not None:
            image = widgets.Image(value=png, format="png",
                                  layout=widgets.Layout(width="320px", height="auto"))
            image.add_class("bh-plot")
            children.append(image)
    return widgets.VBox([widgets.HTML(text), *children])


def _preview_file(bh: BucketSQLite, store: Any, name: str, version: int | None) -> widgets.Widget:
    """A named file: an image, the first characters of text, or the first bytes in hex."""
    info = store.info(name, version)
    text = (f"<b>{html.escape(name)}</b> v{info.version}: {html.escape(info.filename or 'bytes')}, "
            f"{html.escape(info.mime or 'unknown type')}, {human_bytes(info.nbytes)}, {when(info.created_at)}"
            f"{_note(info.metadata)}")
    body: list[widgets.Widget] = [widgets.HTML(text)]
    if info.mime in IMAGE_TYPES and info.nbytes <= PREVIEW_BYTES:
        body.append(widgets.Image(value=store.get(name, version), format=IMAGE_TYPES[info.mime],
                                  layout=widgets.Layout(max_width="480px", height="auto")))
    elif info.nbytes and (info.mime is None or _looks_textual(info.mime, info.filename)):
        raw = bh.files.get_range_verified(info.bh_key, 0, TEXT_PREVIEW)
        text_ok = _looks_textual(info.mime, info.filename) or _is_text(raw)
        if text_ok:
            head = raw.decode("utf-8", errors="replace")
            more = "\n..." if info.nbytes > TEXT_PREVIEW else ""
            body.append(widgets.HTML(f"<pre>{html.escape(head + more)}</pre>"))
        else:
            body.append(widgets.HTML(f"<pre>{html.escape(raw[:64].hex(' '))} ...</pre>"))
    return widgets.VBox(body)


def _preview_value(bh: BucketSQLite, store: Any, name: str, version: int | None) -> widgets.Widget:
    """A value kept inline (kv): its first characters."""
    value = store.get_bytes(name) or b""
    shown = value[:TEXT_PREVIEW].decode("utf-8", errors="replace")
    return widgets.HTML(f"<b>{html.escape(name)}</b> ({html.escape(store.kind)}, {len(value):,} bytes):"
                        f"<pre>{html.escape(shown)}</pre>")


def _preview_entry(bh: BucketSQLite, store: Any, name: str, version: int | None) -> widgets.Widget:
    """A versioned kind the browser has no preview of its own for: what its catalog record says."""
    info = store.info(name, version)
    shape = store.shape_text(info) or store.caption(info) or ""
    return widgets.HTML(f"<b>{html.escape(name)}</b> v{info.version} ({html.escape(store.kind)}): "
                        f"{html.escape(shape) + ', ' if shape else ''}{human_bytes(info.nbytes)}, "
                        f"{when(info.created_at)}{_note(info.metadata)}")


#: How the browser previews each kind (the store gives the data; the widgets are drawn here). A versioned kind
#: missing here is previewed from its catalog record, any other from its value's first characters.
PREVIEWS: dict[str, Callable[[BucketSQLite, Any, str, int | None], widgets.Widget]] = {
    "frame": _preview_frame, "array": _preview_array, "file": _preview_file,
}


def browse(bh: BucketSQLite | None = None, **kwargs: Any) -> Browser:
    """A Browser over ``bh``, or over the store the magics use (connecting to it if needed)."""
    shell = _current_shell()
    if bh is None:
        from .. import current

        bh = current()
    return Browser(bh, shell=shell, **kwargs)


def _current_shell() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return None
    return get_ipython()


def _variable_name(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    cleaned = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in base)
    if not cleaned or cleaned[0].isdigit():
        cleaned = "v_" + cleaned
    return cleaned


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _plain(markup: str) -> str:
    """The text a reader sees in escaped markup (tags dropped, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]*>", "", markup))


def _note(metadata: dict[str, str]) -> str:
    note = metadata.get("note")
    return f"<br><i>{html.escape(note)}</i>" if note else ""


def _is_text(raw: bytes) -> bool:
    """UTF-8 without NULs (allowing a character cut at the end)."""
    if b"\x00" in raw:
        return False
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:
        return exc.start >= len(raw) - 3


def _looks_textual(mime: str | None, filename: str | None) -> bool:
    if mime and (mime.startswith("text/") or mime in ("application/json", "application/xml", "application/x-yaml")):
        return True
    return bool(filename) and str(filename).rsplit(".", 1)[-1].lower() in {"txt", "md", "csv", "json", "yaml", "yml",
                                                                           "py", "sql", "log", "toml", "ini"}


# -- pictures: drawn by matplotlib when it is installed, else tiny PNGs from numpy and zlib ------------------------


def array_picture(data: np.ndarray, width: int = 320, height: int = 120) -> bytes | None:
    """A small PNG of a 1-D (a line; a histogram past 100k values) or 2-D (heatmap) numeric array; else None."""
    a = np.asarray(data)
    if a.dtype.kind not in "biuf" or a.size == 0 or a.ndim not in (1, 2):
        return None
    a = a.astype(np.float64)
    if a.ndim == 1:
        finite = a[np.isfinite(a)]
        if finite.size == 0:
            return None
        if a.size > 100_000:  # a large sample: its distribution says more than its trace
            return _plot("hist", finite, width, height) or _png(_histogram(finite, width, height))
        index = np.arange(a.size)
        if a.size > 2 * width:  # a signal: its trace, at two points per pixel
            index = np.linspace(0, a.size - 1, num=2 * width).astype(int)
            a = a[index]
        return _plot("line", a, width, height, index) or _png(_line(a, width, height))
    rows = np.linspace(0, a.shape[0] - 1, num=min(height, a.shape[0])).astype(int)
    cols = np.linspace(0, a.shape[1] - 1, num=min(width, a.shape[1])).astype(int)
    sample = a[np.ix_(rows, cols)]  # at most one value a pixel
    return _plot("heatmap", sample, width, height) or _png(_heatmap(sample, width, height))


def _plot(kind: str, a: np.ndarray, width: int, height: int, index: np.ndarray | None = None) -> bytes | None:
    """The picture drawn by matplotlib (its Agg canvas, no pyplot state), or None when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:  # optional: pip install matplotlib for axes and ticks
        return None
    import io

    fig = Figure(figsize=(width / 50, height / 50), dpi=100, layout="tight")  # twice the pixels shown: sharp
    ax = fig.add_subplot()
    if kind == "hist":
        ax.hist(a, bins=64, color="#1f77b4")
    elif kind == "line":
        ax.plot(np.arange(a.size) if index is None else index, a, color="#1f77b4", linewidth=1)
    else:
        ax.imshow(a, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.tick_params(labelsize=14)
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def _line(a: np.ndarray, width: int, height: int) -> np.ndarray:
    img = np.full((height, width, 3), 255, np.uint8)
    finite = np.isfinite(a)
    lo, hi = float(np.min(a[finite])), float(np.max(a[finite]))
    span = hi - lo or 1.0
    xs = np.linspace(0, width - 1, num=len(a))
    ys = (height - 1) - ((np.where(finite, a, lo) - lo) / span * (height - 1))
    # Draw segments by sampling densely between consecutive points.
    for i in range(len(a) - 1):
        if not (finite[i] and finite[i + 1]):
            continue
        steps = int(max(abs(xs[i + 1] - xs[i]), abs(ys[i + 1] - ys[i]))) + 1
        px = np.linspace(xs[i], xs[i + 1], steps).round().astype(int)
        py = np.linspace(ys[i], ys[i + 1], steps).round().astype(int)
        img[py, px] = (31, 119, 180)
    if len(a) == 1:
        img[int(ys[0]), int(xs[0])] = (31, 119, 180)
    return img


def _histogram(a: np.ndarray, width: int, height: int, bins: int = 64) -> np.ndarray:
    img = np.full((height, width, 3), 255, np.uint8)
    counts, _ = np.histogram(a, bins=bins)
    top = counts.max() or 1
    bar = width // bins
    for i, c in enumerate(counts):
        h = int(round(c / top * (height - 1)))
        if h:
            img[height - h:, i * bar:(i + 1) * bar - 1] = (31, 119, 180)
    return img


def _heatmap(sample: np.ndarray, width: int, height: int) -> np.ndarray:
    finite = np.isfinite(sample)
    lo = float(sample[finite].min()) if finite.any() else 0.0
    hi = float(sample[finite].max()) if finite.any() else 1.0
    t = np.clip((np.where(finite, sample, lo) - lo) / ((hi - lo) or 1.0), 0, 1)
    # A blue-to-yellow ramp.
    img = np.stack([t * 253 + (1 - t) * 68, t * 231 + (1 - t) * 1, t * 37 + (1 - t) * 84], axis=-1).astype(np.uint8)
    scale_y = max(1, height // img.shape[0])
    scale_x = max(1, width // img.shape[1])
    return np.repeat(np.repeat(img, scale_y, axis=0), scale_x, axis=1)


def _png(rgb: np.ndarray) -> bytes:
    """Encode an (h, w, 3) uint8 array as PNG."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
