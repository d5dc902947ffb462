"""One real-browser test: JupyterLab on loopback, Debian's headless Chromium driven by Playwright.

Open notebooks/browse.ipynb, run it, click an entry, see its preview, press Load, and check in the kernel that the
variable exists. A screenshot is kept in test-artifacts/.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bh_notebook.testing.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("chromium is missing; the README's test command installs it (apt-get install chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)

pytest.importorskip("playwright")
pytest.importorskip("jupyterlab")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A JupyterLab server on a free loopback port, isolated config, serving a copy of the notebooks."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(ROOT / "notebooks" / "browse.ipynb", root / "browse.ipynb")
    runtime = tmp_path / "runtime"
    env = dict(os.environ)
    for var, sub in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython"),
                     ("JUPYTERLAB_SETTINGS_DIR", "settings"), ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
                     ("BH_NOTEBOOK_HOME", "store")]:
        env[var] = str(tmp_path / sub)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--allow-root", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--IdentityProvider.token=",
         "--ServerApp.password=", f"--ServerApp.root_dir={root}", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
         "--LabApp.expose_app_in_browser=True"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lab.log", "wb"), start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=2):  # noqa: S310 - loopback
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("JupyterLab did not start: " + (tmp_path / "lab.log").read_text()[-2000:])
                time.sleep(0.2)
        yield url, runtime
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def kernel_value(runtime: Path, expression: str) -> str:
    """Evaluate an expression in the notebook's kernel through its connection file."""
    from jupyter_client import BlockingKernelClient

    files = sorted(runtime.glob("kernel-*.json"), key=lambda p: p.stat().st_mtime)
    assert files, "no kernel is running"
    client = BlockingKernelClient(connection_file=str(files[-1]))
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=30)
        msg_id = client.execute("", silent=False, user_expressions={"value": expression})
        while True:
            reply = client.get_shell_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        result = reply["content"]["user_expressions"]["value"]
        assert result["status"] == "ok", result
        return str(json.loads(json.dumps(result["data"]["text/plain"])))
    finally:
        client.stop_channels()


def test_browse_notebook_in_a_real_browser(lab: tuple[str, Path]) -> None:
    from playwright.sync_api import sync_playwright

    url, runtime = lab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/lab/tree/browse.ipynb")
            # The status bar says idle before a kernel exists: wait for a connected, idle kernel instead.
            page.wait_for_function(
                "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
                " return k && k.status === 'idle' && k.connectionStatus === 'connected'; }", timeout=60_000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            entries = page.locator(".bh-entries select")
            entries.wait_for(timeout=60_000)
            page.wait_for_function(
                "() => document.querySelectorAll('.bh-entries select option').length >= 2", timeout=30_000)
            option = page.locator(".bh-entries select option", has_text="spectrum")
            entries.select_option(value=option.get_attribute("value"))
            preview = page.locator(".bh-browser .bh-preview").first
            preview.get_by_text("shape (1025,)").wait_for(timeout=30_000)
            page.locator(".bh-browser .bh-plot").first.wait_for(timeout=30_000)
            var = page.locator(".bh-browser .bh-var input").first
            var.fill("from_the_browser")
            var.press("Enter")
            page.locator(".bh-browser .bh-load").first.click()
            status = page.locator(".bh-browser .bh-status").first
            status.get_by_text("from_the_browser").wait_for(timeout=30_000)
            no_news = page.get_by_role("button", name="No")
            if no_news.count():
                no_news.first.click()
            status.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "browser.png"), full_page=True)
        finally:
            browser.close()
    assert kernel_value(runtime, "type(from_the_browser).__name__ + str(from_the_browser.shape)") == \
        "'ndarray(1025,)'"


HOSTILE_NAME = '<img src=x onerror="window.__pwned=1;document.title=\'pwned\'">'


def test_hostile_names_stay_text_in_a_real_browser(lab: tuple[str, Path], tmp_path: Path) -> None:
    """An entry named like markup, from another writer of the bucket, shows as text and runs no script."""
    import nbformat
    from playwright.sync_api import sync_playwright

    from bh_notebook import BucketConfig, BucketSQLite, SnapshotConfig

    url, runtime = lab
    with BucketSQLite(BucketConfig.for_local(tmp_path / "store"), SnapshotConfig(interval_seconds=0)) as bh:
        import pandas as pd

        bh.frames.put(HOSTILE_NAME, pd.DataFrame({"<img src=y onerror=\"window.__pwned=2\">": [1, 2]}),
                      metadata={"note": "<script>window.__pwned=3</script>", "<b>": "<img src=z onerror=alert(1)>"})
        bh.kv["<img src=k onerror=\"window.__pwned=4\">"] = "<img src=v onerror=\"window.__pwned=5\">"
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell("%load_ext bh_notebook\nbrowser = %bh_browse\nbrowser")]
    nbformat.write(nb, tmp_path / "root" / "hostile.ipynb")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{url}/lab/tree/hostile.ipynb")
            page.wait_for_function(
                "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
                " return k && k.status === 'idle' && k.connectionStatus === 'connected'; }", timeout=60_000)
            title = page.title()
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            entries = page.locator(".bh-entries select")
            entries.wait_for(timeout=60_000)
            page.wait_for_function(
                "() => document.querySelectorAll('.bh-entries select option').length >= 2", timeout=30_000)
            browser_box = page.locator(".bh-browser").first
            status = browser_box.locator(".bh-status").first
            for listed in ("<img src=k", "<img src=x"):  # the kv entry, then the frame (left selected)
                option = page.locator(".bh-entries select option", has_text=listed)
                entries.select_option(value=option.get_attribute("value"))
                browser_box.locator(".bh-preview").first.get_by_text(listed, exact=False).first.wait_for(
                    timeout=30_000)
                browser_box.locator(".bh-history").first.click()
                browser_box.locator(".bh-delete").first.click()  # asks first, naming it
                status.get_by_text(f"delete {listed}", exact=False).wait_for(timeout=30_000)
                browser_box.locator(".bh-cancel").first.click()
            var = browser_box.locator(".bh-var input").first
            var.fill("hostile")
            var.press("Enter")
            browser_box.locator(".bh-load").first.click()
            status.get_by_text(f"loaded {HOSTILE_NAME} into", exact=False).wait_for(timeout=30_000)
            no_news = page.get_by_role("button", name="No")
            if no_news.count():
                no_news.first.click()
            status.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "browser-hostile.png"), full_page=True)
            assert page.evaluate("() => window.__pwned") is None
            assert page.title() == title != "pwned"
            # Literal text in the page, not elements: no <img> or <script> came from a stored string.
            assert page.evaluate("() => document.querySelectorAll('.bh-browser img, .bh-browser script').length") == 0
            assert HOSTILE_NAME in status.inner_text()
            preview_text = browser_box.locator(".bh-preview").first.inner_text()
            assert "<script>window.__pwned=3</script>" in preview_text
            assert '<img src=y onerror="window.__pwned=2">' in preview_text
        finally:
            browser.close()
    assert kernel_value(runtime, "hostile.columns[0]") == repr('<img src=y onerror="window.__pwned=2">')
