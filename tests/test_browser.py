"""The notebooks' widgets in a real browser: JupyterLab in headless Chromium, driven by playwright.

For every notebook that calls ``explore(`` (ftlab.widgets), in notebooks/ and tests/browser/: open a copy (cut after
its last widget cell, outputs cleared) in one JupyterLab server, run its cells in FAST mode, then change each
control of each widget and check, in the page, that

* the widget's result changed, and the cell still shows as many figures as before the change (one per result
  part, none inside the widget itself), so no figure is ever shown twice;
* no Python traceback appeared, and the browser logged no console error;

and save a screenshot of the widget's cell after each change (the folder is printed; FTLAB_SCREENSHOTS chooses it).

Run it alone:  python -m pytest -q tests/test_browser.py
It needs Chromium and playwright:  apt-get install -y chromium && pip install -r requirements-dev.txt
(.ci/run installs both and sets FTLAB_REQUIRE_BROWSER=1, so there a missing browser fails instead of skipping).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("FTLAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INSTALL = "apt-get install -y chromium && pip install -r requirements-dev.txt"
WIDGET_CALL = re.compile(r"\bexplore\(")  # explore(...) or widgets.explore(...), not my_explore(...)
KERNEL = "ftlab-browser-test"
KERNELSPEC = {"name": KERNEL, "display_name": "ftlab (browser test)", "language": "python"}
RUN_TIMEOUT_MS = 600_000     # running a notebook's cells (FAST mode)
UPDATE_TIMEOUT_MS = 300_000  # one widget update (a manual one may train)

# Lab settings: no news or update checks (they would reach the internet), every cell in the DOM, no autosave.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
}


def widget_notebooks() -> list[Path]:
    """Every notebook with a widget: a code cell that calls ``explore(``."""
    candidates = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "tests" / "browser").glob("*.ipynb"))
    return [path for path in candidates if widget_cells(json.loads(path.read_text()))]


def widget_cells(notebook: dict) -> list[int]:
    return [i for i, cell in enumerate(notebook["cells"])
            if cell["cell_type"] == "code" and WIDGET_CALL.search("".join(cell["source"]))]


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM}"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed"
    return None


def test_widget_cells_are_the_code_cells_that_call_explore():
    def cell(kind, source):
        return {"cell_type": kind, "source": [source]}

    notebook = {"cells": [cell("markdown", "Call `explore(f, r=[1, 2])`."), cell("code", "explore(f, r=[1, 2])"),
                          cell("code", "my_explore(f)"), cell("code", "x = 1\nftlab.widgets.explore(f, r=[1])")]}
    assert widget_cells(notebook) == [1, 3]
    assert ROOT / "tests" / "browser" / "widgets_demo.ipynb" in widget_notebooks()


@pytest.fixture(scope="module")
def lab(request, tmp_path_factory):
    """One JupyterLab server and one Chromium page for all notebooks: ``{"page", "errors", "root", "shots"}``."""
    why = missing_browser()
    if why:
        if os.environ.get("FTLAB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"FTLAB_REQUIRE_BROWSER=1 but {why}; install them with: {INSTALL}")
        say(request, f"browser tests skipped ({why}); to run them: {INSTALL}")
        pytest.skip(f"{why}; to run the browser tests: {INSTALL}")
    from playwright.sync_api import sync_playwright

    work = tmp_path_factory.mktemp("lab")
    root = work / "root"
    root.mkdir()
    shots = Path(os.environ.get("FTLAB_SCREENSHOTS") or work / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    say(request, f"browser test screenshots: {shots}")

    env = lab_environment(work)
    port, token = free_port(), secrets.token_hex(16)
    with open(work / "jupyterlab.log", "w") as log:  # the server writes to its own copy of the file descriptor
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
             "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None", "--LabApp.extension_manager=readonly",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_server(server, f"{base}/api/status?token={token}", work / "jupyterlab.log")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            errors = []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
            page.goto(f"{base}/lab?token={token}")
            page.wait_for_function("() => window.jupyterapp", timeout=120_000)
            page.evaluate("async () => { await window.jupyterapp.restored; window.jupyterapp.shell.collapseLeft(); }")
            yield {"page": page, "errors": errors, "root": root, "shots": shots}
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def say(request, line: str) -> None:
    """Write one line to the terminal, past pytest's output capture."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)


def lab_environment(work: Path) -> dict:
    """Jupyter's folders inside ``work`` (no user settings apply), a kernel running this Python on this tree's
    ftlab, FAST mode."""
    kernel_dir = work / "data" / "kernels" / KERNEL
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "ftlab (browser test)", "language": "python"}))
    for name, values in LAB_SETTINGS.items():
        path = work / "settings" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return dict(os.environ, FTLAB_FAST="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                JUPYTER_CONFIG_DIR=str(work / "config"), JUPYTER_DATA_DIR=str(work / "data"),
                JUPYTER_PATH=str(work / "data"), JUPYTER_RUNTIME_DIR=str(work / "runtime"),
                JUPYTERLAB_SETTINGS_DIR=str(work / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(work / "workspaces"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(server: subprocess.Popen, url: str, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"JupyterLab did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def prepare_copy(source: Path, root: Path) -> tuple[str, list[int]]:
    """Copy ``source`` into ``root`` up to its last widget cell, outputs cleared, on the test kernel."""
    notebook = json.loads(source.read_text())
    cells = widget_cells(notebook)
    notebook["cells"] = notebook["cells"][: cells[-1] + 1]
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    notebook["metadata"]["kernelspec"] = KERNELSPEC
    notebook["metadata"].pop("widgets", None)
    (root / source.name).write_text(json.dumps(notebook))
    return source.name, cells


# JavaScript run in the page. Cells are found by their index in the notebook.
OPEN_AND_RUN = """async ([path, timeout]) => {
    const app = window.jupyterapp;
    const panel = await app.commands.execute('docmanager:open', {path});
    await panel.context.ready;
    await panel.sessionContext.ready;
    app.shell.activateById(panel.id);
    const late = new Promise((_, reject) => setTimeout(
        () => reject(new Error(`the cells did not finish within ${timeout / 1000} s`)), timeout));
    return await Promise.race([app.commands.execute('notebook:run-all-cells'), late]);
}"""
CLOSE = """async () => {
    const panel = window.jupyterapp.shell.currentWidget;
    await panel.sessionContext.shutdown();
    panel.context.model.dirty = false;
    panel.dispose();
}"""
CELL = "(i) => window.jupyterapp.shell.currentWidget.content.widgets[i].node"
# What a cell shows outside its widget panels: [mime type, content] per output (an image's data URL, else its text).
RESULT = """(node) => Array.from(node.querySelectorAll('.jp-OutputArea-output'))
    .filter(out => !out.closest('.ftlab-explore') && !out.querySelector('.ftlab-explore'))
    .map(out => {
        const img = out.querySelector('img');
        return [out.dataset.mimeType || '', img ? img.src : out.innerText];
    })"""
# The text/plain of every output as it would be saved: a progress bar must have become its final line.
SAVED_TEXT = """() => window.jupyterapp.shell.currentWidget.context.model.toJSON().cells
    .flatMap(cell => cell.outputs || []).map(out => [].concat((out.data || {})['text/plain'] || []).join(''))"""
# Every error output of the notebook's model, whether or not its cell is drawn (JupyterLab renders only the cells
# near the view): [cell index, "Name: value\ntraceback"].
CELL_ERRORS = r"""() => window.jupyterapp.shell.currentWidget.context.model.toJSON().cells
    .flatMap((cell, i) => (cell.outputs || []).filter(out => out.output_type === 'error')
        .map(out => [i, `${out.ename}: ${out.evalue}\n${(out.traceback || []).join('\n')}`]))"""
ANSI = re.compile(r"\x1b\[[0-9;]*m")
FROZEN_BAR = re.compile(r"\d+%\||running \(a live bar")  # tqdm's "0%|", or an ftlab.progress bar never closed
IMAGES = "(node) => [node.querySelectorAll('img').length, node.querySelectorAll('.ftlab-explore img').length]"
UPDATES = """(panel) => Number(Array.from(panel.classList).find(c => c.startsWith('ftlab-updates-')).slice(14))"""


@pytest.mark.parametrize("source", widget_notebooks(), ids=lambda path: path.stem)
def test_widgets_update_in_the_browser(lab, source, request):
    """Every control of every widget changes the result, one figure per result part, no traceback, no console error."""
    page, errors = lab["page"], lab["errors"]
    errors.clear()
    name, cells = prepare_copy(source, lab["root"])
    start = time.perf_counter()
    ran = page.evaluate(OPEN_AND_RUN, [name, RUN_TIMEOUT_MS])
    run_seconds, updates = time.perf_counter() - start, 0
    try:
        failed = cell_errors(page)
        assert not failed, f"{name}: a cell raised while running all cells:\n" + "\n".join(failed)
        check_no_traceback(page, f"{name} after running its cells")
        assert ran, f"{name}: a cell failed while running all cells (no error output was recorded)"
        frozen = [text for text in page.evaluate(SAVED_TEXT) if FROZEN_BAR.search(text)]
        assert not frozen, f"{name}: progress bars that would be saved unfinished: {frozen[:3]}"
        for index in cells:
            cell = page.evaluate_handle(CELL, index).as_element()
            panels = cell.query_selector_all(".ftlab-explore")
            assert panels, f"{name}: cell {index} calls explore( but shows no widget panel"
            for k, panel in enumerate(panels):
                updates += drive_widget(page, cell, panel, f"{source.stem}-cell{index}-widget{k}", lab["shots"])
        assert not errors, f"{name}: the browser logged console errors: {errors}"
    finally:
        page.evaluate(CLOSE)
    say(request, f"{source.stem}: {cells[-1] + 1} cells run in {run_seconds:.1f} s, "
                 f"{updates} widget updates in {time.perf_counter() - start - run_seconds:.1f} s")


def cell_errors(page) -> list[str]:
    """``"cell <index>: <error name>: <message>"`` and the end of its traceback, for every cell of the open notebook
    that raised."""
    return [f"cell {i}: {ANSI.sub('', text)[-3000:]}" for i, text in page.evaluate(CELL_ERRORS)]


def test_a_cell_that_raises_is_reported_with_its_index_and_error(lab):
    page = lab["page"]
    cells = [{"cell_type": "code", "source": source, "metadata": {}, "outputs": [], "execution_count": None}
             for source in ["x = 1", "x / 0", "print('not reached')"]]
    notebook = {"cells": cells, "nbformat": 4, "nbformat_minor": 4, "metadata": {"kernelspec": KERNELSPEC}}
    (lab["root"] / "raises.ipynb").write_text(json.dumps(notebook))
    ran = page.evaluate(OPEN_AND_RUN, ["raises.ipynb", RUN_TIMEOUT_MS])
    try:
        failed = cell_errors(page)
    finally:
        page.evaluate(CLOSE)
    assert not ran
    assert len(failed) == 1 and failed[0].startswith("cell 1: ZeroDivisionError: division by zero\n"), failed
    assert "x / 0" in failed[0] and "\x1b[" not in failed[0]


def drive_widget(page, cell, panel, label: str, shots: Path) -> int:
    """Change each control of ``panel`` once (pressing its button when it has one), check the result after each
    change, and return the number of updates."""
    result = page.evaluate(RESULT, cell)
    assert result, f"{label}: the widget has no result output (its static copy)"
    images, inside = page.evaluate(IMAGES, cell)
    assert inside == 0, f"{label}: a figure is shown inside the widget panel"
    figures = [content for mime, content in result if mime.startswith("image/")]
    assert images == len(figures) and len(set(figures)) == len(figures), f"{label}: a figure is shown twice"
    button = panel.query_selector(":scope > .ftlab-run")
    controls = [child for child in panel.query_selector_all(":scope > *")
                if not child.evaluate("(e) => e.matches('.ftlab-run, .widget-output')")]
    assert controls, f"{label}: the widget has no controls"
    for number, control in enumerate(controls):
        updates = page.evaluate(UPDATES, panel)
        described = change_control(control)
        if button is not None:
            button.click()
        page.wait_for_function(f"(panel) => panel.classList.contains('ftlab-updates-{updates + 1}')", arg=panel,
                               timeout=UPDATE_TIMEOUT_MS)
        where = f"{label}, after changing {described}"
        check_no_traceback(page, where)
        after = page.evaluate(RESULT, cell)
        assert after != result, f"{where}: the result did not change"
        assert len(after) == len(result), f"{where}: {len(result)} result outputs became {len(after)}"
        assert page.evaluate(IMAGES, cell) == [images, 0], f"{where}: figures {images} -> {page.evaluate(IMAGES, cell)}"
        cell.scroll_into_view_if_needed()
        cell.query_selector(".jp-Cell-outputWrapper").screenshot(path=shots / f"{label}-{number}.png")
        result = after
    return len(controls)


def change_control(control) -> str:
    """Change one ipywidgets control the way a user would; return what was changed, for messages."""
    classes = control.get_attribute("class") or ""
    label = control.evaluate("(e) => (e.querySelector('.widget-label') || {}).innerText || ''").strip()
    if "widget-dropdown" in classes or "widget-select" in classes and "widget-select-multiple" not in classes:
        select = control.query_selector("select")
        count = select.evaluate("(s) => s.options.length")
        index = select.evaluate("(s) => s.selectedIndex")
        select.select_option(index=(index + 1) % count)
    elif "widget-select-multiple" in classes:
        select = control.query_selector("select")
        chosen = select.evaluate("(s) => Array.from(s.options).map(o => o.selected)")
        picked = [i for i, on in enumerate(chosen) if on]
        if len(picked) > 1:
            picked = picked[:-1]
        else:
            picked = picked + [next(i for i, on in enumerate(chosen) if not on)]
        select.select_option(index=picked)
    elif "widget-slider" in classes or "widget-hslider" in classes:
        handle = control.query_selector(".noUi-handle")
        now, low = (float(handle.get_attribute(a)) for a in ("aria-valuenow", "aria-valuemin"))
        handle.focus()
        handle.press("ArrowLeft" if now > low else "ArrowRight")
    elif "widget-checkbox" in classes:
        control.query_selector("input").click()
    elif "widget-toggle-buttons" in classes:
        control.query_selector("button:not(.mod-active)").click()
    elif "widget-radio" in classes:
        control.query_selector("input:not(:checked)").click()
    else:
        raise AssertionError(f"the browser test does not know how to change a control with classes {classes!r}: "
                             f"teach change_control() in tests/test_browser.py")
    return label or classes


def check_no_traceback(page, where: str) -> None:
    text = page.evaluate("() => document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)').innerText")
    assert "Traceback (most recent call last)" not in text, f"{where}: a Python traceback:\n{text[-3000:]}"
