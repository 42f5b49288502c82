"""What a learner opens works in a real browser: JupyterLab, started as `make lab` starts it,
serves the lessons, and a widget cell shows one figure that its control redraws.

The browser is Debian's `chromium` (or any Chromium or Chrome on PATH, or the one that the
variable COURSE_CHROMIUM names), driven by Playwright's Python package; Playwright's own browser
download is not used. Without one these tests skip and say why, except on CI (CI=true), where
they fail: `.ci/run` installs the browser. Screenshots of the last run: build/screenshots/.
"""
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from _servers import free_port, stop_group

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "build" / "screenshots"
LESSON, WIDGET_CELL = "00_start_here.ipynb", 6   # cell 5 of the lesson, after the learner banner


def chromium_path() -> str | None:
    if os.environ.get("COURSE_CHROMIUM"):
        return os.environ["COURSE_CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def launch_chromium(playwright_cm):
    """(playwright, browser) from a started ``sync_playwright()``; skip (fail on CI) without one."""
    exe = chromium_path()
    if exe is None:
        why = ("no Chromium found (install Debian's package: apt-get install chromium; or name one "
               "in COURSE_CHROMIUM)")
        if os.environ.get("CI"):
            pytest.fail(why + " — CI must have one: .ci/run installs it")
        pytest.skip(why)
    return playwright_cm.chromium.launch(executable_path=exe)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        why = "the playwright package is missing (it is in pyproject.toml: run make venv)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


def lab_settings(folder: Path) -> Path:
    """JupyterLab user settings for the test: every cell in the page (no windowing, so a cell
    far down exists in the DOM) and no news pop-up over the notebook."""
    for plugin, text in {"notebook-extension/tracker": '{"windowingMode": "none"}',
                         "apputils-extension/notification": '{"fetchNews": "false", '
                                                            '"checkForUpdates": false}'}.items():
        path = folder / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


@pytest.fixture
def lab(tmp_path):
    """`make lab` with the learner copies in a git-ignored folder of the repository (JupyterLab
    serves only what is under the repository, and a test must not touch exercises/ or a tracked
    notebook); yields (base URL with token, folder relative to the repository)."""
    if shutil.which("make") is None:
        pytest.skip("needs make")
    rel = "build/browser-test"
    shutil.rmtree(ROOT / rel, ignore_errors=True)
    port, token = free_port(), "course-browser-test"
    flags = (f"--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port={port} "
             f"--ServerApp.token={token} --LabApp.workspaces_dir={tmp_path / 'workspaces'} "
             f"--LabApp.user_settings_dir={lab_settings(tmp_path / 'settings')}")
    log = open(tmp_path / "lab.log", "w+b")
    proc = subprocess.Popen(["make", "--no-print-directory", "lab", f"LAB_FLAGS={flags}",
                             f"EXERCISES={rel}"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        yield f"http://127.0.0.1:{port}", token, rel, proc, log
    finally:
        stop_group(proc)
        log.close()
        shutil.rmtree(ROOT / rel, ignore_errors=True)


def open_when_served(page, url: str, proc, log, deadline: float) -> None:
    while True:
        try:
            page.goto(url, timeout=20_000)
            return
        except Exception:  # noqa: BLE001 - the server is still starting
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"JupyterLab did not serve {url} (exit code {proc.poll()}):\n"
                            + log.read().decode(errors="replace")[-3000:])
            time.sleep(0.5)


def test_a_widget_redraws_its_one_figure_in_jupyterlab(browser, lab):
    base, token, rel, proc, log = lab
    shots = SHOTS / "lab"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # JupyterLab needs nothing from outside the machine; refuse anything that tries.
    page.route(lambda url: not url.startswith(base), lambda route: route.abort())
    open_when_served(page, f"{base}/lab/tree/{rel}/{LESSON}?token={token}", proc, log,
                     time.monotonic() + 90)
    cells = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")
    page.wait_for_function("document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')"
                           f".length > {WIDGET_CELL}", timeout=60_000)
    page.wait_for_function("/\\| Idle/.test(document.querySelector('.jp-StatusBar-Widget')"
                           "?.innerText || '')", timeout=60_000)   # the kernel has started
    widget = cells.nth(WIDGET_CELL)
    assert "interact_figure" in widget.inner_text(), "the widget cell moved: update WIDGET_CELL"
    cells.nth(0).click()
    for _ in range(WIDGET_CELL + 1):                  # run the cells down to the widget, in order
        page.keyboard.press("Shift+Enter")
    control = widget.locator(".jp-OutputArea-output select")
    control.wait_for(timeout=90_000)
    widget.locator(".jp-OutputArea-output img").first.wait_for(timeout=60_000)
    page.screenshot(path=shots / "notebook.png")
    figures = widget.locator(".jp-OutputArea-output img")
    assert figures.count() == 1, f"the widget cell shows {figures.count()} figures, not one"
    before_src = figures.first.get_attribute("src")
    widget.screenshot(path=shots / "widget-before.png")
    choice = next(v for v in control.locator("option").all_inner_texts() if v != control.input_value())
    control.select_option(choice)
    page.wait_for_function(
        "([i, src]) => { const c = document.querySelectorAll('.jp-NotebookPanel .jp-Notebook "
        ".jp-Cell')[i]; const img = c && c.querySelector('.jp-OutputArea-output img');"
        " return img && img.src !== src; }", arg=[WIDGET_CELL, before_src], timeout=60_000)
    widget.screenshot(path=shots / "widget-after.png")
    assert figures.count() == 1, f"after the change the cell shows {figures.count()} figures"
    assert (shots / "widget-before.png").read_bytes() != (shots / "widget-after.png").read_bytes()
    # No error (nor anything on stderr) in any cell that ran.
    stderr = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    assert stderr.count() == 0, stderr.all_inner_texts()
    assert not errors, errors
    page.close()
