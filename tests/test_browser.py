"""The kit in a real browser: JupyterLab runs the notebooks, the widgets draw, and they respond.

Drives Debian's chromium with Playwright (never a downloaded browser). Screenshots go to artifacts/browser/.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from processes import free_port, stop

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "artifacts" / "browser"
BROWSERS = [os.environ.get("CHROMIUM", ""), "/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
CHROMIUM = next((b for b in BROWSERS if b and Path(b).exists()), None)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
# Prompts of every code cell: how many exist, run, and are still running.
PROMPTS = """() => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.innerText);
  return {cells: p.length, done: p.filter(x => /\\d/.test(x)).length, running: p.filter(x => x.includes('*')).length}; }"""
MISSING_EXTENSION = (
    "widgets rendered as their static fallback (or not at all): the JupyterLab server has no widgets extension. "
    "Fix: install jupyterlab_widgets in the environment that runs `jupyter lab` (make lab does), then restart it."
)

pytestmark = [pytest.mark.slow,  # JupyterLab servers and a browser
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium: install Debian's chromium package (make test does, as root)")]


def _start_lab(home: Path, disabled_extensions: dict | None = None):
    """JupyterLab on a copy of the notebooks, with settings that keep every cell attached to the page."""
    shutil.copytree(ROOT / "notebooks", home / "notebooks")
    settings = home / "settings"
    for name, value in [("notebook-extension/tracker", {"windowingMode": "none"}),
                        ("apputils-extension/notification", {"fetchNews": "false", "checkForUpdates": False})]:
        path = settings / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    config = home / "config"
    if disabled_extensions:
        (config / "labconfig").mkdir(parents=True)
        (config / "labconfig" / "page_config.json").write_text(json.dumps({"disabledExtensions": disabled_extensions}))
    port = free_port()
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(home / "ws"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTER_CONFIG_DIR": str(config),
           "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           # One torch thread: on a 2-core machine the browser's own rendering takes a core, and torch's
           # threads would spin waiting for it (a notebook of 45 s then takes many minutes).
           "OMP_NUM_THREADS": "1"}
    lab = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--port={port}",
         "--ServerApp.token=", "--ServerApp.password=", "--ServerApp.ip=127.0.0.1",
         f"--notebook-dir={home / 'notebooks'}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert lab.poll() is None, "jupyter lab exited at start"
        try:
            urllib.request.urlopen(f"{url}/lab", timeout=3)
            return lab, url
        except OSError:
            time.sleep(1)
    os.killpg(lab.pid, signal.SIGKILL)
    raise AssertionError("JupyterLab did not answer within 90 s")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def lab_url(tmp_path_factory):
    lab, url = _start_lab(tmp_path_factory.mktemp("lab"))
    yield url
    stop(lab)


def _open(browser, url: str, notebook: str):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{url}/lab/tree/{notebook}?reset")  # ?reset: a fresh workspace, so no earlier notebook tab is restored
    page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=60_000)
    page.wait_for_function("() => document.body.innerText.includes('| Idle')", timeout=60_000)
    return page


def _menu(page, menu: str, item: str) -> None:
    page.get_by_role("menuitem", name=menu, exact=True).click()
    page.get_by_role("menuitem", name=item, exact=True).click()


def _run_all(page, timeout_s: int = 420, before_run: str | None = None) -> None:
    """Clear the stored outputs (so nothing old is mistaken for new), run every cell, wait for the last.

    before_run: JavaScript evaluated in the page once the outputs are cleared, just before the run starts.
    """
    try:
        _menu(page, "Edit", "Clear Outputs of All Cells")
        page.wait_for_function(f"() => ({PROMPTS})().done == 0", timeout=10_000)
        if before_run:
            page.evaluate(before_run)
        _menu(page, "Run", "Run All Cells")
        page.wait_for_function(f"() => {{ const s = ({PROMPTS})(); return s.running == 0 && s.done == s.cells; }}",
                               timeout=timeout_s * 1000)
    except Exception:
        _shot(page, "run_all_failed")  # what the page showed: a dialog, a stuck cell
        raise
    _assert_no_traceback(page)


def _assert_no_traceback(page) -> None:
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    tracebacks = [t for t in errors.all_inner_texts() if "Error" in t]
    assert not tracebacks, f"a cell failed in the browser: {tracebacks[0][:500]}"


# Whether every code cell above the cell numbered `arg` has run, and none is running.
DONE_ABOVE = """above => { const prompts = [...document.querySelectorAll('.jp-Notebook .jp-Cell')].slice(0, above)
  .filter(c => c.classList.contains('jp-CodeCell')).map(c => c.querySelector('.jp-InputPrompt').innerText);
  return prompts.length > 0 && prompts.every(x => /\\d/.test(x) && !x.includes('*')); }"""


def _run_above(page, heading: str, timeout_s: int = 420, before_run: str | None = None) -> None:
    """Like _run_all, but run only the cells above the markdown cell that holds `heading` (the sections before it)."""
    try:
        _menu(page, "Edit", "Clear Outputs of All Cells")
        page.wait_for_function(f"() => ({PROMPTS})().done == 0", timeout=10_000)
        cell = page.locator(".jp-Notebook .jp-MarkdownCell", has_text=heading).first
        above = cell.evaluate("c => [...document.querySelectorAll('.jp-Notebook .jp-Cell')].indexOf(c)")
        cell.click()  # selects the cell (a rendered markdown cell stays rendered)
        if before_run:
            page.evaluate(before_run)
        _menu(page, "Run", "Run All Above Selected Cell")
        page.wait_for_function(DONE_ABOVE, arg=above, timeout=timeout_s * 1000)
    except Exception:
        _shot(page, "run_above_failed")
        raise
    _assert_no_traceback(page)


# Whether the page loaded the widgets extension (from JupyterLab's own page config).
EXTENSION_LOADED = """() => { const c = JSON.parse(document.getElementById('jupyter-config-data').textContent);
  const name = '@jupyter-widgets/jupyterlab-manager';
  return (c.federated_extensions || []).some(e => e.name === name) &&
    !JSON.stringify(c.disabledExtensions || []).includes(name); }"""
# Widgets drawn, and no static fallback visible (JupyterLab shows the fallback when it cannot draw the widget).
WIDGETS_DRAWN = """() => document.querySelectorAll('.jupyter-widgets').length > 0 &&
  [...document.querySelectorAll('.wu-static')].every(e => e.offsetParent === null)"""


def assert_widgets_render(page, timeout_s: int = 30) -> None:
    """Fail at once with the fix when the widgets extension is missing; else wait for every widget view to draw."""
    if not page.evaluate(EXTENSION_LOADED):
        raise AssertionError(MISSING_EXTENSION)
    try:
        page.wait_for_function(WIDGETS_DRAWN, timeout=timeout_s * 1000)
    except Exception:
        _shot(page, "widgets_not_drawn")
        visible = page.evaluate("() => [...document.querySelectorAll('.wu-static')]"
                                ".filter(e => e.offsetParent !== null).map(e => e.innerText.slice(0, 80))")
        raise AssertionError(f"the widgets extension is loaded, but after {timeout_s} s these outputs still show "
                             f"their static fallback: {visible} (screenshot: artifacts/browser/widgets_not_drawn.png)"
                             ) from None


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def _press(page, slider_class: str, key: str, times: int) -> None:
    handle = page.locator(f".{slider_class} .noUi-handle").first
    handle.scroll_into_view_if_needed()
    handle.focus()
    for _ in range(times):
        page.keyboard.press(key)


def test_setup_check_widget_draws_and_talks_to_the_kernel(browser, lab_url):
    page = _open(browser, lab_url, "00_setup_check.ipynb")
    _run_all(page)
    assert_widgets_render(page)
    label = page.locator(".wu-setup-label")
    assert label.inner_text() == "The model would write 7 new tokens."  # where the notebook's check left it
    _press(page, "wu-setup-slider", "ArrowRight", 3)
    expected = "The model would write 10 new tokens."
    page.wait_for_function("e => document.querySelector('.wu-setup-label').innerText === e", arg=expected, timeout=10_000)
    _shot(page, "00_setup_check")
    page.close()


@pytest.mark.skipif(not (ROOT / "notebooks" / "03_manual_generation.ipynb").exists(), reason="notebook 03 not written yet")
def test_next_token_explorer_follows_the_temperature_slider(browser, lab_url):
    page = _open(browser, lab_url, "03_manual_generation.ipynb")
    _run_all(page)
    assert_widgets_render(page)
    chart = page.locator(".wu-explorer-chart").first
    before = chart.inner_text()
    _press(page, "wu-temperature", "ArrowRight", 5)
    page.wait_for_function("b => document.querySelector('.wu-explorer-chart').innerText !== b", arg=before, timeout=15_000)
    assert chart.inner_text() != before
    _shot(page, "03_next_token_explorer")
    page.close()


# Every text each chat view's reply showed, in order: one list per `.wu-chat` view, in order of appearance.
# The view redraws its whole HTML at each piece, so the reply element is new each time: read it from the nodes
# each mutation added (they keep their text after being replaced), so that no state is lost even when several
# redraws land before the observer runs.
RECORD_REPLIES = """() => {
  window.wuReplies = [];
  const views = new Map();
  new MutationObserver(records => { for (const record of records) {
    for (const node of record.addedNodes) {
      if (node.nodeType !== 1) continue;
      for (const reply of node.matches('.wu-reply') ? [node] : node.querySelectorAll('.wu-reply')) {
        // A reply already replaced is detached from its view; the mutation's target is still inside it.
        const view = reply.closest('.wu-chat') || (record.target.closest && record.target.closest('.wu-chat'));
        if (!view) continue;  // the static snapshot: not a live view
        if (!views.has(view)) { views.set(view, window.wuReplies.length); window.wuReplies.push([]); }
        const texts = window.wuReplies[views.get(view)];
        const text = reply.textContent === '\u2026' ? '' : reply.textContent;  // '…' stands for no text yet
        if (texts[texts.length - 1] !== text) texts.push(text);
      }
    }
  } }).observe(document.body, {childList: true, subtree: true});
}"""


@pytest.mark.skipif(not (ROOT / "notebooks" / "13_structured_output_and_streaming.ipynb").exists(),
                    reason="notebook 13 not written yet")
def test_chat_view_types_the_reply_token_by_token(browser, lab_url, model, tokenizer):
    page = _open(browser, lab_url, "13_structured_output_and_streaming.ipynb")
    _run_above(page, "3. Constrained decoding by hand", timeout_s=600, before_run=RECORD_REPLIES)  # sections 1 and 2
    assert_widgets_render(page)
    replies = page.evaluate("() => window.wuReplies")
    questions = page.locator(".wu-chat").evaluate_all(
        "views => views.map(v => v.querySelector('.wu-reply').previousElementSibling.textContent)")
    assert len(replies) == len(questions) == 2, f"expected the two chat views of section 2, saw {questions}"
    _shot(page, "13_chat_view")
    page.close()
    for question, texts in zip(questions, replies):
        # The generated text, from the model in this process: greedy, as both views in the notebook are.
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=40)
        assert out[0, -1] == tokenizer.eos_token_id, "the reply must end before the notebook's token limit"
        generated = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert texts[-1] == generated, f"{question!r}: the view ended with {texts[-1]!r}, the model wrote {generated!r}"
        grew = [t for t in texts if t]
        assert len(grew) >= 5, f"{question!r}: the reply was drawn in only {len(grew)} states {grew}, not typed"
        for before, after in zip(texts, texts[1:]):
            assert after.startswith(before) and after != before, f"{question!r}: {before!r} became {after!r}"


def test_missing_widgets_extension_fails_with_the_fix(browser, tmp_path):
    lab, url = _start_lab(tmp_path, disabled_extensions={"@jupyter-widgets/jupyterlab-manager": True})
    try:
        page = _open(browser, url, "00_setup_check.ipynb")
        page.wait_for_selector(".wu-static", timeout=30_000)  # the stored fallback is drawn instead
        started = time.monotonic()
        with pytest.raises(AssertionError, match="no widgets extension. Fix: install jupyterlab_widgets"):
            assert_widgets_render(page)
        assert time.monotonic() - started < 5, "the problem is reported at once, not after a timeout"
        page.locator(".wu-static").first.scroll_into_view_if_needed()
        _shot(page, "00_without_widgets_extension")
        page.close()
    finally:
        stop(lab)
